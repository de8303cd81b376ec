"""Resolution modes and the static import scan (pure: repos written to tmp_path, nothing run)."""

from __future__ import annotations

import logging
import textwrap
from pathlib import Path

import pytest

from safehub._env import resolve_dependencies
from safehub._env._plan import (
    FAMILY_IMPORTS,
    UnknownImportError,
    choose_mode,
    dist_for_import,
    plan_dependencies,
    read_requirements,
)
from safehub._env._scan import cached_scan, scan_repo

FAMILY = FAMILY_IMPORTS | {"sympy", "typing_extensions", "jinja2"}


def write(repo: Path, files: dict[str, str]) -> Path:
    for rel, text in files.items():
        path = repo / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(textwrap.dedent(text))
    return repo


REPO = {
    "hubconf.py": """
        dependencies = ['torch', 'yaml', 'math']
        import os
        from models.net import Net
        from utils import helpers
        try:
            import apex
        except ImportError:
            apex = None

        def model(pretrained=False):
            import timm                      # function-local: only at run time
            from fvcore.nn import FlopCountAnalysis
            return Net()
        """,
    "models/__init__.py": "from .net import Net\n",
    "models/net.py": """
        import torch.nn as nn
        import numpy as np
        from . import blocks
        class Net(nn.Module):
            pass
        """,
    "models/blocks.py": "import einops\nimport typing_extensions\n",
    "utils/helpers.py": "from scipy import ndimage\nimport gdown\n",
    "unused/never.py": "import pandas\n",  # not reachable from hubconf
    "src/vendored.py": "X = 1\n",
}


def test_scan_follows_the_repo_modules_hubconf_imports(tmp_path):
    repo = write(tmp_path / "r", REPO)
    scan = scan_repo(repo, family=FAMILY)
    assert scan.third_party == {"timm", "fvcore", "numpy", "einops", "scipy", "gdown"}
    assert scan.optional == {"apex"}
    assert {"models", "utils"} <= scan.local
    assert {"torch", "typing_extensions"} <= scan.family
    assert "os" in scan.stdlib
    assert "pandas" not in scan.third_party  # unreachable module: not scanned
    assert scan.where["timm"] == "hubconf.py:12"  # the dedented text starts with a newline


def test_scan_mode_adds_known_imports_and_declared_mode_does_not(tmp_path):
    repo = write(tmp_path / "r", REPO)
    declared = ["torch", "yaml", "math"]
    plan = plan_dependencies(repo, declared, mode="declared", family=FAMILY)
    assert plan.entries == tuple(declared)
    plan = plan_dependencies(repo, declared, mode="scan", family=FAMILY)
    assert set(plan.scanned) == {"einops", "fvcore", "gdown", "numpy", "scipy", "timm"}
    assert plan.optional == ("apex",)
    res = resolve_dependencies(plan.entries)
    assert {r.distribution for r in res.install} == {"PyYAML", "einops", "fvcore", "gdown", "numpy", "scipy", "timm"}


def test_unknown_import_is_reported_never_guessed(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": "def m():\n    import reqeusts_squat\n    import numpy\n"})
    with pytest.raises(UnknownImportError) as info:
        plan_dependencies(repo, [], mode="scan", family=FAMILY)
    text = str(info.value)
    assert "reqeusts_squat (hubconf.py:2)" in text and "extra_dependencies=" in text
    # The caller names the package: a list entry of the same name, or a dict for a differing one.
    plan = plan_dependencies(repo, [], mode="scan", family=FAMILY, extra=["reqeusts_squat==1.0"])
    assert "reqeusts_squat==1.0" in plan.entries and "numpy" in plan.entries
    plan = plan_dependencies(repo, [], mode="scan", family=FAMILY, extra={"reqeusts_squat": "real-pkg>=2"})
    assert "real-pkg>=2" in plan.entries
    # Declared by the repo itself: the author named it.
    assert "reqeusts_squat" in plan_dependencies(repo, ["reqeusts_squat"], mode="scan", family=FAMILY).entries


def test_optional_and_type_checking_imports_are_not_installed(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": """
        from typing import TYPE_CHECKING
        if TYPE_CHECKING:
            import unknown_typing_only
        try:
            import unknown_accel
            import torchvision
        except (ImportError, OSError):
            pass
        try:
            import numpy
        except Exception:
            numpy = None
        def m():
            import numpy
        """})
    scan = scan_repo(repo, family=FAMILY)
    assert scan.third_party == {"numpy"}  # required in m() even though optional above
    assert scan.optional == {"unknown_typing_only", "unknown_accel"}
    assert scan.family_optional == {"torchvision"} and "torchvision" not in scan.family
    plan = plan_dependencies(repo, [], mode="scan", family=FAMILY)
    assert plan.entries == ("numpy",)


def test_required_torch_family_import_is_checked_against_the_host(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": "import torchvision\nimport torch\n"})
    plan = plan_dependencies(repo, [], mode="scan", family=FAMILY)
    assert plan.entries == ("torchvision",)
    assert resolve_dependencies(plan.entries).host[0].distribution == "torchvision"


def test_local_names_anywhere_in_the_repo_are_not_installed(tmp_path):
    # Repos put subfolders on sys.path: `import yolo` finds lib/yolo/.
    repo = write(tmp_path / "r", {"hubconf.py": "import sys\nsys.path.insert(0, 'lib')\nimport yolo\n",
                                  "lib/yolo/__init__.py": "import einops\n"})
    scan = scan_repo(repo, family=FAMILY)
    assert "yolo" in scan.local and scan.third_party == {"einops"}


def test_scan_is_cached_by_file_contents_and_stays_correct(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": "import numpy\n"})
    cache = tmp_path / "scans"
    assert cached_scan(repo, cache, family=FAMILY).third_party == {"numpy"}
    assert len(list(cache.glob("*.json"))) == 1
    assert cached_scan(repo, cache, family=FAMILY).third_party == {"numpy"}  # from the cache
    (repo / "hubconf.py").write_text("import numpy\nimport scipy  # changed\n")
    assert cached_scan(repo, cache, family=FAMILY).third_party == {"numpy", "scipy"}


def test_hostile_sources_are_bounded_and_skipped(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": "import a\nimport b\n", "a.py": "def (\n",
                                  "b.py": "x = " + "(" * 200_000 + ")" * 200_000 + "\n"})
    scan = scan_repo(repo, family=FAMILY)
    assert scan.local == {"a", "b"} and scan.third_party == set()
    (repo / "c.py").write_bytes(b"import numpy\n" + b"#" * (3 * 1024 * 1024))
    (repo / "hubconf.py").write_text("import c\n")
    assert scan_repo(repo, family=FAMILY).truncated


def test_requirements_mode_reads_names_and_specifiers_only(tmp_path, caplog):
    caplog.set_level(logging.WARNING, logger="safehub")
    repo = write(tmp_path / "r", {"hubconf.py": "dependencies = []\n", "requirements.txt": """
        # comment
        numpy>=1.20  # trailing comment
        opencv-python
        torch==1.7.1
        PyYAML[libyaml]>=5
        --extra-index-url http://evil.example/simple
        -e git+https://example.invalid/x.git#egg=x
        evil @ https://example.invalid/evil.whl
        oldpkg; python_version < "3.0"
        -r other.txt
        """})
    reqs, skipped = read_requirements(repo)
    assert reqs == ["numpy>=1.20", "opencv-python", "torch", "PyYAML>=5"]
    assert len(skipped) == 5
    plan = plan_dependencies(repo, ["yaml"], mode="requirements", family=FAMILY)
    assert plan.entries == ("yaml", *reqs)
    assert any("evil.example" in r.getMessage() for r in caplog.records)


def test_requirements_mode_reads_pyproject(tmp_path):
    repo = write(tmp_path / "r", {"pyproject.toml": '[project]\nname = "x"\ndependencies = ["einops>=0.6", "timm"]\n'})
    assert read_requirements(repo) == (["einops>=0.6", "timm"], [])


def test_mode_comes_from_argument_then_environment(monkeypatch):
    assert choose_mode(None, {}) == "scan"
    assert choose_mode(None, {"SAFEHUB_DEPENDENCIES": "Declared"}) == "declared"
    assert choose_mode("requirements", {"SAFEHUB_DEPENDENCIES": "declared"}) == "requirements"
    with pytest.raises(ValueError, match="SAFEHUB_DEPENDENCIES"):
        choose_mode(None, {"SAFEHUB_DEPENDENCIES": "guess"})
    with pytest.raises(ValueError, match="dependencies_mode"):
        choose_mode("all", {})


@pytest.mark.parametrize("name, dist", [("yaml", "PyYAML"), ("cv2", "opencv-python-headless"), ("numpy", "numpy"),
                                        ("prefetch_generator", "prefetch-generator"), ("sklearn", "scikit-learn"),
                                        ("google.protobuf", "protobuf"), ("nonexistent_pkg_xyz", None)])
def test_import_names_map_to_known_distributions(name, dist):
    assert dist_for_import(name) == dist


def test_bad_extra_dependencies_are_refused(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": ""})
    with pytest.raises(ValueError):
        plan_dependencies(repo, [], mode="declared", extra="numpy")
    with pytest.raises(Exception, match="not acceptable"):
        plan_dependencies(repo, [], mode="declared", extra=["numpy --index-url http://x"])
    with pytest.raises(ValueError):
        plan_dependencies(repo, [], mode="declared", extra={"not an import": "numpy"})


def test_links_out_of_the_repo_and_fifos_are_not_read(tmp_path):
    import os

    outside = write(tmp_path / "outside", {"secret.py": "import leaked_name_outside\n"})
    repo = write(tmp_path / "r", {"hubconf.py": "import secret\nimport pipe\n"})
    os.symlink(outside / "secret.py", repo / "secret.py")
    os.mkfifo(repo / "pipe.py")  # reading it would block the host forever
    scan = scan_repo(repo, family=FAMILY)
    assert scan.third_party == set() and scan.local == {"secret", "pipe"}


def test_a_pinned_checkout_is_cached_by_path_alone(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": "import numpy\n"})
    cache = tmp_path / "scans"
    assert cached_scan(repo, cache, family=FAMILY, immutable=True).third_party == {"numpy"}
    (repo / "hubconf.py").write_text("import scipy\n")  # a pinned checkout never changes; if it did...
    assert cached_scan(repo, cache, family=FAMILY, immutable=True).third_party == {"numpy"}  # ...path is the key
    assert cached_scan(repo, cache, family=FAMILY).third_party == {"scipy"}  # unpinned: by file stat


def test_total_bytes_parsed_are_bounded(tmp_path, monkeypatch):
    import safehub._env._scan as scan_mod

    monkeypatch.setattr(scan_mod, "MAX_TOTAL_BYTES", 150)  # hubconf and one of a, b
    repo = write(tmp_path / "r", {"hubconf.py": "import a\nimport b\n", "a.py": "import numpy\n" + "#" * 80,
                                  "b.py": "import scipy\n" + "#" * 80})
    scan = scan_repo(repo, family=FAMILY)
    assert scan.truncated and len(scan.third_party) == 1


def test_private_names_are_never_packages(tmp_path):
    # `import _export` (the runner's own module) or a C helper: no distribution can be named so.
    repo = write(tmp_path / "r", {"hubconf.py": "def m():\n    import _export\n    import _speedups\n"})
    assert plan_dependencies(repo, [], mode="scan", family=FAMILY).entries == ()


# Patterns from real repos (benchmarks/corpus): timm's weight converters import jax and
# tensorflow inside functions, yolov5's exporters coremltools, ResNeSt's rfconv sits in a
# method behind a flag; silero's entrypoint lives in src/ and imports omegaconf inside.
LAZY_REPO = {
    "hubconf.py": """
        from lib.models import build
        from src import stt
        def m():
            return build()
        """,
    "lib/__init__.py": "",
    "lib/models.py": """
        import einops
        def build():
            import timm
            return _helper()
        def _helper():
            from scipy import ndimage
        def export_tf(model):
            import tensorflow
            import coremltools_like_unknown
            from lib import exporters
        class Net:
            def __init__(self, rectify=False):
                if rectify:
                    from rfconv import RFConv2d
        """,
    "lib/exporters.py": "import onnx_only_here\n",
    "src/__init__.py": "from .core import stt\n",
    "src/core.py": """
        def stt(language="en"):
            from omegaconf import OmegaConf
        def unrelated():
            import pandas
        """,
}


def test_imports_inside_library_functions_are_lazy_unless_an_entrypoint_calls_them(tmp_path):
    repo = write(tmp_path / "r", LAZY_REPO)
    scan = scan_repo(repo, family=FAMILY)
    # Module level, the entry functions hubconf imports (through re-exports) and what they call.
    assert scan.third_party == {"einops", "timm", "scipy", "omegaconf"}
    assert scan.lazy == {"tensorflow", "coremltools_like_unknown", "rfconv", "onnx_only_here", "pandas"}
    assert scan.where["omegaconf"] == "src/core.py:3"
    plan = plan_dependencies(repo, [], mode="scan", family=FAMILY)  # no UnknownImportError for lazy names
    assert set(plan.scanned) == {"einops", "timm", "scipy", "omegaconf"}


def test_a_lazy_import_becomes_required_where_an_entrypoint_imports_it(tmp_path):
    repo = write(tmp_path / "r", {**LAZY_REPO, "hubconf.py": LAZY_REPO["hubconf.py"] + "import tensorflow\n"})
    scan = scan_repo(repo, family=FAMILY)
    assert "tensorflow" in scan.third_party and "tensorflow" not in scan.lazy
    assert scan.where["tensorflow"] == "hubconf.py:6"


def test_star_imports_make_every_function_an_entry(tmp_path):
    repo = write(tmp_path / "r", {"hubconf.py": "from models import *\n",
                                  "models.py": "def net():\n    import yacs\n"})
    assert scan_repo(repo, family=FAMILY).third_party == {"yacs"}


def test_a_module_at_the_repo_root_shadows_same_named_ones_deeper(tmp_path):
    # facebookresearch/xcit: `from xcit import *` is xcit.py, not detection/backbone/xcit.py.
    repo = write(tmp_path / "r", {"hubconf.py": "from xcit import *\n", "xcit.py": "import timm\n",
                                  "detection/backbone/xcit.py": "import mmdet\n"})
    scan = scan_repo(repo, family=FAMILY)
    assert scan.third_party == {"timm"} and "mmdet" not in scan.lazy
    # Without a root module the deeper ones are followed (repos put subfolders on sys.path).
    (repo / "xcit.py").unlink()
    assert scan_repo(repo, family=FAMILY).third_party == {"mmdet"}


def test_scan_results_round_trip_with_lazy_names(tmp_path):
    repo = write(tmp_path / "r", LAZY_REPO)
    cache = tmp_path / "scans"
    first = cached_scan(repo, cache, family=FAMILY)
    again = cached_scan(repo, cache, family=FAMILY)
    assert again.lazy == first.lazy and again.third_party == first.third_party


def test_functorch_is_part_of_torch_and_lazy_family_imports_are_not_required(tmp_path):
    # timm: `from functorch import vmap` inside a helper; torch's own wheel ships functorch.
    repo = write(tmp_path / "r", {"hubconf.py": "from lib import net\nimport functorch\n",
                                  "lib.py": "def net():\n    pass\ndef helper():\n    import torchvision\n"})
    scan = scan_repo(repo, family=FAMILY)
    assert "functorch" in scan.family
    assert "torchvision" in scan.family_optional and "torchvision" not in scan.family
    assert plan_dependencies(repo, [], mode="scan", family=FAMILY).entries == ()
