"""Corpus-only: make the registry's torchvision wheel importable beside this host's torch.

The torchvision 0.28.0 wheel on PyPI is built against CUDA and its ``_C.so`` does not
load beside torch 2.13.0+cpu. Its pure-Python part works once the schemas of the
ops it registers fake kernels for (``torchvision::nms``, ``qnms``) exist. This script,
run against the corpus run's *own* host venv (never a user's, never safehub's
``.venv``), installs that wheel without dependencies' sdists, deletes its native
libraries (so nothing half-loads) and prepends a schema-only definition (no
kernel: ``ops.nms`` raises if a model calls it) to ``torchvision/extension.py``.

safehub then shares this torchvision with repo envs as part of the torch family
(it declares ``torch==2.13.0``), exactly as it would share a working one; the
torch.hub reference child imports the same files. Detection models that run NMS
in their forward fail the same way on both sides.

    python benchmarks/corpus/torchvision_shim.py /path/to/corpus-host-venv WHEEL
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

MARK = "# --- safehub corpus shim: op schemas without kernels (benchmarks/corpus/torchvision_shim.py) ---"
SHIM = f'''{MARK}
import torch as _torch

_corpus_shim_lib = _torch.library.Library("torchvision", "FRAGMENT")
for _schema in ("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor",
                "qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor"):
    try:
        _corpus_shim_lib.define(_schema)
    except RuntimeError:  # already defined (a real _C was loaded after all)
        pass
# --- end of shim ---
'''


def patch(venv: Path, wheel: Path) -> Path:
    py = venv / "bin" / "python"
    subprocess.run([str(py), "-m", "pip", "install", "-q", "--no-deps", "--force-reinstall", str(wheel)], check=True)
    site = Path(subprocess.run([str(py), "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                               check=True, capture_output=True, text=True).stdout.strip())
    pkg = site / "torchvision"
    for so in pkg.glob("*.so"):
        so.unlink()
    shutil.rmtree(site / "torchvision.libs", ignore_errors=True)
    ext = pkg / "extension.py"
    text = ext.read_text(encoding="utf-8")
    if MARK not in text:
        ext.write_text(SHIM + text, encoding="utf-8")
    subprocess.run([str(py), "-c", "import torchvision, torchvision.models as m; m.resnet18()"], check=True)
    return pkg


if __name__ == "__main__":
    print(patch(Path(sys.argv[1]), Path(sys.argv[2])))
