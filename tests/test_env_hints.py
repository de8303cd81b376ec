"""The dependency plan through load/list/help, and import errors that say what to do,
with a fake sandbox backend (runs nothing; a handler plays the runner) and a fake env
(the host interpreter stands in for the repo's venv; real envs: test_env*.py)."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from torch import nn

import safehub
import specgen
from safehub._env import UnknownImportError, host_env
from safehub._env._hints import missing_module, missing_module_hint
from safehub._errors import EntrypointFailedError, HubconfError
from safehub._sandbox import FakeBackend, FakeJob

HUBCONF = '''
dependencies = ["yaml"]
import os

def tiny():
    """A tiny model."""
    import numpy
    import einops
'''


@pytest.fixture
def calls(monkeypatch: pytest.MonkeyPatch) -> list:
    seen: list = []

    def fake_ensure_env(entries, **kwargs):
        seen.append((tuple(entries), kwargs.get("mode")))
        return host_env()

    monkeypatch.setattr("safehub._env.ensure_env", fake_ensure_env)
    return seen


def make_repo(tmp_path: Path, source: str = HUBCONF) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "hubconf.py").write_text(source)
    return d


def ok_handler(job: FakeJob) -> None:
    spec, weights = specgen.full_spec(nn.Linear(2, 2))
    specgen.write(job.out_dir, spec, weights)
    job.write_result({"status": "ok", "summary": {"root": "module", "modules": {}}})


def failing(category: str, type_: str, message: str):
    def handler(job: FakeJob) -> None:
        job.write_result({"status": "error", "error": {"category": category, "type": type_, "message": message,
                                                        "traceback": "tb"}})
    return handler


def test_default_load_adds_scanned_imports(tmp_path, calls, monkeypatch):
    monkeypatch.delenv("SAFEHUB_DEPENDENCIES", raising=False)
    repo = make_repo(tmp_path)
    m = safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(ok_handler), verbose=False)
    assert calls == [(("yaml", "einops", "numpy"), "scan")]
    assert set(m.safehub_info.dependencies) == {"mode", "distributions", "records"}


def test_mode_argument_and_environment_variable(tmp_path, calls, monkeypatch):
    repo = make_repo(tmp_path)
    safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(ok_handler), verbose=False,
                 dependencies_mode="declared", extra_dependencies=["timm>=0.9"])
    monkeypatch.setenv("SAFEHUB_DEPENDENCIES", "declared")
    safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(ok_handler), verbose=False)
    assert calls == [(("yaml", "timm>=0.9"), "declared"), (("yaml",), "declared")]


def test_unknown_import_fails_before_any_env_or_sandbox(tmp_path, calls, monkeypatch):
    monkeypatch.delenv("SAFEHUB_DEPENDENCIES", raising=False)
    repo = make_repo(tmp_path, "def tiny():\n    import numpyy\n")
    backend = FakeBackend(ok_handler)
    with pytest.raises(UnknownImportError, match="numpyy") as info:
        safehub.load(str(repo), "tiny", source="local", sandbox=backend, verbose=False)
    assert "extra_dependencies=" in info.value.hint
    assert calls == [] and backend.jobs == []


def test_list_passes_the_mode_through(tmp_path, calls):
    repo = make_repo(tmp_path, "from models import *\ndependencies = []\n")

    def lister(job: FakeJob) -> None:
        job.write_result({"status": "ok", "entrypoints": [{"name": "m", "doc": None}]})

    assert safehub.list(str(repo), source="local", sandbox=FakeBackend(lister), dependencies_mode="declared",
                        extra_dependencies=["einops"]) == ["m"]
    assert calls == [(("einops",), "declared")]


@pytest.mark.parametrize("category, error", [("entrypoint", EntrypointFailedError), ("hubconf", HubconfError)])
def test_import_error_inside_the_sandbox_names_the_fix(tmp_path, calls, category, error):
    repo = make_repo(tmp_path)
    handler = failing(category, "ModuleNotFoundError", "No module named 'skimage.io'")
    with pytest.raises(error) as info:
        safehub.load(str(repo), "tiny", source="local", sandbox=FakeBackend(handler), verbose=False,
                     dependencies_mode="declared")
    assert "skimage.io" in info.value.hint and "scikit-image" in info.value.hint
    assert "extra_dependencies=['scikit-image']" in info.value.hint


@pytest.mark.parametrize("type_, message, module", [
    ("ModuleNotFoundError", "No module named 'cv2'", "cv2"),
    ("ImportError", "No module named 'a.b'; 'a' is not a package", "a.b"),
    ("ModuleNotFoundError", "No module named 'x\n--index-url http://evil'", None),  # not an identifier: ignored
    ("ModuleNotFoundError", "No module named '../../etc'", None),
    ("ValueError", "No module named 'cv2'", None),
])
def test_missing_module_parsing_is_strict(type_, message, module):
    assert missing_module(type_, message) == module


def test_hints_for_family_and_unknown_modules():
    assert "on the host" in missing_module_hint("ModuleNotFoundError", "No module named 'torchvision'")
    hint = missing_module_hint("ModuleNotFoundError", "No module named 'zzz_unknown'")
    assert "cannot name" in hint and "extra_dependencies=" in hint
    assert missing_module_hint("RuntimeError", "boom") is None


# --- safehub cache envs / rm-env ------------------------------------------------------


def _fake_env(hub: Path, name: str, mode: str, used: float) -> Path:
    """An env folder as ensure_env leaves it (marker + bin/python), without building one."""
    import json
    import os

    root = hub / "envs" / name
    (root / "bin").mkdir(parents=True)
    (root / "bin" / "python").write_text("")
    (root / "lib").mkdir()
    (root / "lib" / "blob").write_bytes(b"x" * 5000)
    marker = {"key": name + "0" * 48, "backend": "uv", "distributions": ["six==1.17.0"], "created": 1.0,
              "inputs": {"mode": mode}}
    (root / "safehub-env.json").write_text(json.dumps(marker))
    os.utime(root, (used, used))
    return root


def test_cache_envs_lists_size_and_last_use_and_rm_env_removes(tmp_path):
    import json
    import os
    import subprocess
    import sys
    import time

    hub = tmp_path / "hub"
    now = time.time()
    _fake_env(hub, "a" * 16, "scan", now - 40 * 86400)
    _fake_env(hub, "b" * 16, "declared", now)
    env = {**os.environ, "SAFEHUB_HOME": str(hub)}

    def cli(*args):
        proc = subprocess.run([sys.executable, "-m", "safehub", "cache", *args], capture_output=True, text=True,
                              env=env, timeout=120)
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    listed = json.loads(cli("envs", "--json"))
    rows = {r["name"]: r for r in listed["envs"]}
    assert set(rows) == {"a" * 16, "b" * 16}
    assert rows["a" * 16]["mode"] == "scan" and rows["a" * 16]["size_bytes"] >= 5000
    assert rows["a" * 16]["last_used"] < rows["b" * 16]["last_used"]
    assert "six==1.17.0" in cli("envs")
    out = json.loads(cli("rm-env", "--unused-days", "30", "--json"))
    assert out["removed"] == ["a" * 16] and out["freed_bytes"] >= 5000
    assert not (hub / "envs" / ("a" * 16)).exists() and (hub / "envs" / ("b" * 16)).exists()
    assert json.loads(cli("rm-env", "--all", "--dry-run", "--json"))["removed"] == []
    assert (hub / "envs" / ("b" * 16)).exists()


def test_cli_unknown_import_exits_with_the_fix(tmp_path):
    import json
    import os
    import subprocess
    import sys

    repo = make_repo(tmp_path, "def tiny():\n    import numpyy\n")
    env = {**os.environ, "SAFEHUB_HOME": str(tmp_path / "hub")}
    env.pop("SAFEHUB_DEPENDENCIES", None)
    proc = subprocess.run([sys.executable, "-m", "safehub", "load", str(repo), "tiny", "--json"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 7, proc.stderr
    assert "numpyy" in proc.stdout + proc.stderr
    # the hint in CLI spelling (issue 16): the flag, not the keyword argument
    assert "name the distribution yourself: -d '<package>', or use --dependencies declared" in proc.stdout
    assert "extra_dependencies=" not in proc.stdout + proc.stderr
    assert not (tmp_path / "hub" / "envs").exists()  # refused before building anything
    proc = subprocess.run([sys.executable, "-m", "safehub", "load", str(repo), "tiny", "--dependencies", "bogus"],
                          capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 2 and "invalid choice" in proc.stderr


def test_a_source_only_dependency_is_named_with_the_wheelhouse_fix():
    """fvcore and prefetch_generator (corpus: ResNeSt, pytorchvideo, YOLOP) publish only
    sdists; uv's refusal under --no-build becomes an error naming the package."""
    import subprocess

    from safehub._env._installers import _fail
    from safehub._env._resolve import resolve_dependencies
    from safehub._errors import EnvironmentBuildError

    said = ("  x No solution found when resolving dependencies:\n  `-> Because all versions of fvcore have no "
            "usable wheels and you require fvcore, we can conclude that your requirements are unsatisfiable.\n")
    proc = subprocess.CompletedProcess(["uv"], 1, stdout="", stderr=said)
    err = _fail(proc, "uv", resolve_dependencies(["fvcore", "numpy"]), offline=False)
    assert isinstance(err, EnvironmentBuildError)
    assert "fvcore publishes no wheel" in str(err) and "never builds source on the host" in str(err)
    assert err.hint is not None and "UV_FIND_LINKS" in err.hint and "pip wheel --no-deps fvcore" in err.hint
    # Any other failure keeps the general message.
    other = _fail(subprocess.CompletedProcess(["uv"], 1, stdout="", stderr="network down"), "uv",
                  resolve_dependencies(["numpy"]), offline=False)
    assert "publishes no wheel" not in str(other) and other.hint and "wheels only" in other.hint
