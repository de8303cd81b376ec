"""Artifacts end to end: load in the real sandbox, save, then load_artifact in a fresh
process where no sandbox backend is available (SAFEHUB_SANDBOX=landlock with
Landlock forced off); outputs must be identical in eval and in train mode. And the
CLI: export (a real sandboxed load) and inspect."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import safehub
from conftest import DEMO, outputs_of

pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parent / "zoo"
# mobilenet: Dropout + BatchNorm (train differs from eval); unnameable: aten mode; pair: a tuple.
CASES = {
    "mobilenet": lambda: (torch.randn(3, 3, 16, 16),),
    "unnameable": lambda: (torch.randn(3, 4),),
    "pair": (lambda: torch.randn(3, 3, 16, 16), lambda: torch.randn(3, 4)),
}

_CHILD = textwrap.dedent(
    """
    import sys, torch, safehub
    from safehub._sandbox import get_backend
    from safehub._errors import SandboxUnavailableError
    try:
        get_backend()
    except SandboxUnavailableError:
        pass
    else:
        raise SystemExit("a sandbox backend is available; this test needs none")
    inputs = torch.load(sys.argv[1], weights_only=True)
    results = {}
    for key, x in inputs.items():
        name, mode, index = key.split("/")
        model = safehub.load_artifact(sys.argv[2] + "/" + name)
        if index != "-":
            model = model[int(index)]
        model.train(mode == "train")
        torch.manual_seed(7)
        results[key] = model(x)
        assert model.safehub_info.entrypoint == name
    assert "safehub._jobs" not in sys.modules and "safehub._env" not in sys.modules
    torch.save(results, sys.argv[3])
    """
)


def _outputs(model: torch.nn.Module, x: torch.Tensor, mode: str) -> torch.Tensor:
    with torch.no_grad():
        return outputs_of(model, (x,), train=mode == "train", seed=7)


def test_export_then_load_without_a_sandbox(tmp_path: Path) -> None:
    arts = tmp_path / "artifacts"
    arts.mkdir()
    inputs, expected = {}, {}
    for name, make in CASES.items():
        loaded = safehub.load(str(ZOO), name, source="local", verbose=False)
        safehub.save(loaded, arts / name)
        if isinstance(make, tuple):  # a container: one input maker per module
            models = {str(i): (m, mk) for i, (m, mk) in enumerate(zip(loaded, make))}
        else:
            models = {"-": (loaded, lambda: make()[0])}
        for index, (model, make_x) in models.items():
            x = make_x()
            for mode in ("eval", "train"):
                key = f"{name}/{mode}/{index}"
                inputs[key] = x
                expected[key] = _outputs(model, x, mode)
    torch.save(inputs, tmp_path / "inputs.pt")
    env = {**os.environ, "SAFEHUB_SANDBOX": "landlock", "SAFEHUB_LANDLOCK_ABI": "0"}
    proc = subprocess.run([sys.executable, "-c", _CHILD, str(tmp_path / "inputs.pt"), str(arts), str(tmp_path / "out.pt")],
                          capture_output=True, text=True, env=env, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    got = torch.load(tmp_path / "out.pt", weights_only=True)
    assert got.keys() == expected.keys()
    for key, value in expected.items():
        assert torch.equal(got[key], value), key
    prov = json.loads((arts / "mobilenet" / "provenance.json").read_text())
    assert prov["entrypoint"] == "mobilenet" and prov["source"] == "local" and prov["export"] == "auto"
    assert prov["arguments"] == {"args": [], "kwargs": {}}
    assert prov["modules"]["m0"]["mode"] == "fx" and "eval" in prov["modules"]["m0"]["graphs"]


def test_cli_export_and_inspect(tmp_path: Path) -> None:
    out = tmp_path / "tinynet"
    cmd = [sys.executable, "-m", "safehub", "export", str(DEMO), "tinynet", "-k", "num_classes=4", "-o", str(out), "--json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    report = json.loads(proc.stdout)
    assert report["provenance"]["arguments"] == {"args": [], "kwargs": {"num_classes": 4}}
    assert report["parameters"] > 50_000
    proc = subprocess.run([sys.executable, "-m", "safehub", "inspect", str(out)], capture_output=True, text=True,
                          timeout=600)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert "entrypoint: tinynet" in proc.stdout and "parameters" in proc.stdout
    # Exporting onto an existing folder is refused before any sandbox runs.
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 1 and "already exists" in proc.stdout
