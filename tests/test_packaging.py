"""The wheel as a new user gets it: built from this checkout, installed into a fresh
venv (no system site-packages, torch 2.13.0 first so nothing pulls a CUDA build), and
run from a folder outside the checkout, so nothing here can stand in for what the
wheel forgot to ship (runners/, the demo repo) or declare (a dependency)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import ROOT

pytestmark = pytest.mark.slow


def _run(argv: list[str], cwd: Path, env: dict[str, str] | None = None, timeout: int = 600) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(argv, cwd=cwd, capture_output=True, text=True, timeout=timeout, env=env)
    assert proc.returncode == 0, f"{' '.join(argv)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    work = tmp_path_factory.mktemp("wheel")
    _run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"), str(ROOT)], cwd=work)
    (wheel,) = (work / "dist").glob("safehub-*.whl")
    venv = work / "venv"
    _run([sys.executable, "-m", "venv", str(venv)], cwd=work)
    py = venv / "bin" / "python"
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", "torch==2.13.0"], cwd=work)
    _run([str(py), "-m", "pip", "install", "-q", "--disable-pip-version-check", str(wheel)], cwd=work)
    return py, work


def _env(work: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}
    env["SAFEHUB_HOME"] = str(work / "home")
    return env


def test_the_wheel_ships_the_runner_and_the_demo(installed: tuple[Path, Path]) -> None:
    py, work = installed
    code = (
        "import safehub, safehub._jobs as j, safehub._resources as r, sys;"
        "print(safehub.__file__); print(j.runner_dir());"
        "print(r.shipped_folder('safehub._demo', 'examples/demo-hub', 'hubconf.py'))"
    )
    out = _run([str(py), "-c", code], cwd=work, env=_env(work)).stdout.split()
    site = str(py.parent.parent)
    assert all(line.startswith(site) for line in out), f"not everything came from the installed wheel: {out}"
    # safehub audit: its package and the runner's audit hook are in the wheel too
    code = "import safehub._audit._cli as c, safehub._jobs as j; print(c.__file__); print(j.runner_dir() / '_audit_hook.py')"
    audit_cli, hook = _run([str(py), "-c", code], cwd=work, env=_env(work)).stdout.split()
    assert audit_cli.startswith(site) and Path(hook).is_file(), (audit_cli, hook)


def test_doctor_from_the_wheel(installed: tuple[Path, Path]) -> None:
    py, work = installed
    report = json.loads(_run([str(py), "-m", "safehub", "doctor", "--json"], cwd=work, env=_env(work)).stdout)
    assert report["ok"] is True and report["auto_backend"] == "bwrap", report
    # pip compiles what it installs: the runner (a data package in the wheel) included, counted once.
    bytecode = report["bytecode"]
    assert bytecode["stale"] == 0 and bytecode["note"] is None, bytecode
    assert bytecode["modules"] == len(list((ROOT / "safehub").rglob("*.py"))) + len(list((ROOT / "runners").glob("*.py")))


def test_demo_load_from_the_wheel(installed: tuple[Path, Path]) -> None:
    py, work = installed
    proc = _run([str(py), "-m", "safehub", "load", "--json"], cwd=work, env=_env(work))
    doc = json.loads(proc.stdout)
    assert doc["entrypoint"] == "tinynet" and doc["info"]["backend"] == "bwrap", doc
    assert "numpy" not in proc.stderr.lower(), proc.stderr
