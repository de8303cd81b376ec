"""The command line, run as a user would: a real subprocess."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from conftest import DEMO, REPOS


def run_cli(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run([sys.executable, "-m", "safehub", *args], capture_output=True, text=True,
                          timeout=600, env=dict(os.environ))
    if check:
        assert proc.returncode == 0, proc.stderr[-3000:]
    return proc


@pytest.mark.slow
def test_load_with_no_arguments_loads_the_bundled_demo():
    proc = run_cli("load", "--json")
    report = json.loads(proc.stdout)
    assert report["entrypoint"] == "tinynet"
    (module,) = report["modules"]
    assert module["parameters"] > 50_000
    assert module["training"] is False
    assert report["info"]["backend"] in {"bwrap", "landlock", "process"}


@pytest.mark.slow
def test_load_human_output_and_kwargs():
    proc = run_cli("load", str(DEMO), "tinynet", "-k", "num_classes=4", "-k", "pretrained=false")
    assert "loaded tinynet" in proc.stdout
    assert "sandbox:" in proc.stdout


@pytest.mark.slow
def test_list_and_help_json():
    listing = json.loads(run_cli("list", str(REPOS / "spine"), "--json").stdout)
    # Like torch.hub.list: the classes hubconf imports are public callables too.
    assert listing["entrypoints"] == ["FunctionalNet", "ResidualCNN", "TransformerBlock",
                                      "functional_net", "residual_cnn", "transformer_block"]
    doc = json.loads(run_cli("help", str(DEMO), "tinynet", "--json").stdout)["doc"]
    assert "TinyNet" in doc


@pytest.mark.slow
def test_errors_carry_their_exit_code_and_json():
    proc = run_cli("load", str(REPOS / "spine"), "missing_entry", "--json", check=False)
    assert proc.returncode == 6
    err = json.loads(proc.stdout)
    assert err["error"] == "EntrypointNotFoundError"
    assert "missing_entry" in err["message"]
    proc = run_cli("load", str(REPOS / "spine"), "missing_entry", check=False)
    assert proc.returncode == 6 and "Cannot find callable missing_entry" in proc.stderr


@pytest.mark.slow  # a fresh interpreter loads the demo repo in a sandbox
def test_a_torch_folder_in_the_working_directory_is_never_imported(tmp_path):
    """`python -m safehub` puts the working directory first on sys.path: run in an
    untrusted checkout, its `torch/` would be the host's `import torch`. The command
    takes it off (safehub/__main__.py)."""
    planted = tmp_path / "torch"
    planted.mkdir()
    marker = tmp_path / "ran"
    (planted / "__init__.py").write_text(f"open({str(marker)!r}, 'w').close()\nraise SystemExit(99)\n")
    proc = subprocess.run([sys.executable, "-m", "safehub", "load", str(DEMO), "tinynet", "-k", "num_classes=6",
                           "--json"], capture_output=True, text=True, timeout=600, env=dict(os.environ), cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert not marker.exists(), "the working directory's torch/ ran in the host"
    assert json.loads(proc.stdout)["entrypoint"] == "tinynet"
