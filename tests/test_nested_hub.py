"""Nested hub loads: an entrypoint that calls torch.hub.load on another GitHub repo
(MiDaS and ZoeDepth load their backbones so) gets a clear error naming the repo,
not a network error from inside the sandbox. A local-source load of a folder the
sandbox can see still works (it runs in the same sandbox)."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safehub._channel import raise_for_runner_error
from safehub._channel._result import NESTED_HUB_HINT
from safehub._errors import EntrypointFailedError

ROOT = Path(__file__).resolve().parent.parent

HUBCONF = """
import os
import torch
dependencies = ["torch"]

def nested(backbone="rwightman/gen-efficientnet-pytorch"):
    return torch.hub.load(backbone, "tf_efficientnet_lite3", pretrained=False)

def nested_with_fallback():
    try:
        return torch.hub.load("someone/backbone", "net")
    except Exception:  # a repo's own fallback still gets the chance to run
        return torch.nn.Linear(2, 3)

def listed():
    return torch.hub.list("someone/backbone")

def local_inner():
    inner = os.path.join(os.path.dirname(__file__), "inner")
    return torch.hub.load(inner, "tiny", source="local")
"""


def _run_runner(tmp_path: Path, repo: Path, entrypoint: str) -> dict:
    job = tmp_path / f"job-{entrypoint}"
    for sub in ("in", "out", "tmp"):
        (job / sub).mkdir(parents=True)
    (job / "in" / "request.json").write_text(json.dumps(
        {"protocol": 1, "action": "load", "repo_dir": str(repo), "entrypoint": entrypoint, "export": {},
         "confine": {}}))
    proc = subprocess.run([sys.executable, "-I", "-B", str(ROOT / "runners" / "safehub_runner.py"), str(job)],
                          capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads((job / "out" / "result.json").read_text())


@pytest.mark.slow
def test_runner_refuses_nested_github_hub_loads_with_a_clear_error(tmp_path):
    """The real runner (no sandbox backend; one process per entrypoint)."""
    repo = tmp_path / "repo"
    (repo / "inner").mkdir(parents=True)
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (repo / "inner" / "hubconf.py").write_text("import torch\ndef tiny():\n    return torch.nn.Linear(2, 2)\n")

    result = _run_runner(tmp_path, repo, "nested")
    assert result["status"] == "error"
    error = result["error"]
    assert error["category"] == "entrypoint"
    assert error["type"] == "_downloads.NestedHubLoad"
    assert "torch.hub.load('rwightman/gen-efficientnet-pytorch', 'tf_efficientnet_lite3'" in error["message"]
    assert "nested hub load" in error["message"]

    listed = _run_runner(tmp_path, repo, "listed")["error"]
    assert listed["type"] == "_downloads.NestedHubLoad" and "torch.hub.list('someone/backbone'" in listed["message"]

    # The repo's own fallback runs; a local folder inside the sandbox loads as in torch.hub.
    assert _run_runner(tmp_path, repo, "nested_with_fallback")["status"] == "ok"
    assert _run_runner(tmp_path, repo, "local_inner")["status"] == "ok"


def test_host_gives_the_nested_hub_hint():
    result = {"protocol": 1, "status": "error", "error": {
        "category": "entrypoint", "type": "_downloads.NestedHubLoad",
        "message": "this repo's code calls torch.hub.load('a/b', 'c', ...) on another GitHub repo (a nested hub load)",
        "traceback": ""}}
    with pytest.raises(EntrypointFailedError) as info:
        raise_for_runner_error(result, entrypoint="nested", repo="owner/repo",
                               import_hint=lambda *_: "install something")
    assert info.value.hint == NESTED_HUB_HINT
    assert "torch.hub.load('a/b'" in str(info.value)


def test_a_repo_error_of_another_type_keeps_the_import_hint():
    result = {"protocol": 1, "status": "error", "error": {
        "category": "entrypoint", "type": "mypkg.NestedHubLoad", "message": "m", "traceback": ""}}
    with pytest.raises(EntrypointFailedError) as info:
        raise_for_runner_error(result, entrypoint="e", repo="owner/repo", import_hint=lambda *_: None)
    assert info.value.hint != NESTED_HUB_HINT
