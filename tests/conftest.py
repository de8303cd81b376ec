"""Shared fixtures. Every test session gets its own SAFEHUB_HOME, so nothing a test
does touches the user's cache; environments built in it are reused across tests."""

from __future__ import annotations

import base64
import hashlib
import os
import shutil
import zipfile
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from safehub._sandbox import SandboxBackend

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPOS = FIXTURES / "repos"
DEMO = ROOT / "examples" / "demo-hub"
# Helper modules (spec writers, hostile cases, the numpy-free safetensors writer).
sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))


@pytest.fixture(scope="session", autouse=True)
def safehub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("safehub-home")
    old = {name: os.environ.get(name) for name in ("SAFEHUB_HOME", "SAFEHUB_ARTIFACT_CACHE")}
    os.environ["SAFEHUB_HOME"] = str(home)
    os.environ.setdefault("SAFEHUB_DISABLE_PROGRESS_BARS", "1")
    # One home per session: a load cached by one test would answer another's. Tests of
    # the artifact cache turn it on for themselves (tests/test_artifact_cache*.py).
    os.environ["SAFEHUB_ARTIFACT_CACHE"] = "0"
    # Warm workers (one per env and repo) outlive their test; let them go soon.
    os.environ.setdefault("SAFEHUB_WORKER_IDLE_S", "20")
    yield home
    for name, value in old.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


@pytest.fixture
def fake_github(monkeypatch: pytest.MonkeyPatch):
    """A loopback GitHub (tests/github_server.py) that safehub's fetcher and download
    broker are pointed at for the test."""
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from github_server import FakeGitHub

    with FakeGitHub() as gh:
        for key, value in gh.env().items():
            monkeypatch.setenv(key, value)
        yield gh


def checkpoint_bytes(state: dict) -> bytes:
    """``state`` as ``torch.save`` writes it, for a release asset."""
    import io

    raw = io.BytesIO()
    torch.save(state, raw)
    return raw.getvalue()


@pytest.fixture
def repo_copy(tmp_path: Path):
    """Copy a fixture repo to a fresh folder (tests that compare with torch.hub, which
    imports the repo in-process, must not leave state in the shared fixture folder)."""

    def make(src: Path) -> Path:
        dst = tmp_path / src.name
        shutil.copytree(src, dst, ignore=shutil.ignore_patterns("__pycache__"))
        return dst

    return make


def torch_hub_load_local(repo: Path, entry: str, *args, **kwargs):
    """The reference: torch.hub.load(source="local") in this process, with the repo's
    modules removed from sys.modules afterwards so later loads start clean."""
    import torch

    before = set(sys.modules)
    on_path = sys.path.count(str(repo))  # a test module's own entry stays
    try:
        return torch.hub.load(str(repo), entry, *args, source="local", **kwargs)
    finally:
        for name in set(sys.modules) - before:
            mod = sys.modules.get(name)
            if getattr(mod, "__file__", None) and str(getattr(mod, "__file__", "")).startswith(str(repo)):
                del sys.modules[name]
        sys.modules.pop("hubconf", None)
        while sys.path.count(str(repo)) > on_path:
            sys.path.remove(str(repo))


# ---------------------------------------------------------------------------
# Comparing a rebuilt model with its original (test_export, test_zoo_e2e).


def close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-5, atol=1e-6)
    if isinstance(a, (tuple, list)):
        return type(a) is type(b) and len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def outputs_of(model: torch.nn.Module, inputs: tuple, *, train: bool, seed: int = 0) -> Any:
    model.train(train)
    torch.manual_seed(seed)
    return model(*inputs)


# One row per single-module zoo entry: inputs for two batch sizes, expected mode.
ZOO_CASES = {
    "resnet": ((lambda b: (torch.randn(b, 3, 16, 16),)), "fx"),
    "mobilenet": ((lambda b: (torch.randn(b, 3, 16, 16),)), "fx"),
    "unet": ((lambda b: (torch.randn(b, 3, 16, 16),)), "fx"),
    "vit": ((lambda b: (torch.randn(b, 3, 16, 16),)), "fx"),
    "swin": ((lambda b: (torch.randn(b, 3, 16, 16),)), "fx"),
    "transformer": ((lambda b: (torch.randn(b, 5, 32),)), "fx"),
    "recurrent": ((lambda b: (torch.randn(b, 7, 6),)), "fx"),
    "tied": ((lambda b: (torch.randint(0, 20, (b, 5)),)), "fx"),
    "shared": ((lambda b: (torch.randn(b, 6),)), "fx"),
    "nonpersistent": ((lambda b: (torch.randn(b, 4),)), "fx"),
    "weightnorm": ((lambda b: (torch.randn(b, 2, 9),)), "fx"),
    "dict_output": ((lambda b: (torch.randn(b, 5),)), "fx"),
    "tuple_output": ((lambda b: (torch.randn(b, 3),)), "fx"),
    "functional": ((lambda b: (torch.randn(b, 6),)), "fx"),
    "stochastic_depth": ((lambda b: (torch.randn(b, 8),)), "fx"),
    "data_dependent": ((lambda b: (torch.randn(b, 3, 20),)), "aten"),
    "unnameable": ((lambda b: (torch.randn(b, 4),)), "aten"),
    "encoder": ((lambda b: (torch.randn(b, 6, 16),)), "fx"),
    "seq2seq": ((lambda b: (torch.randn(b, 5, 16), torch.randn(b, 4, 16))), "aten"),
}




# torch.export of these takes seconds each; the fast tier keeps "unnameable" as its aten case.
SLOW_EXPORTS = {"aten_cnn", "data_dependent", "seq2seq"}


def zoo_params(names: Any) -> list[Any]:
    """Zoo names as parameters, the ones whose export is slow marked slow."""
    return [pytest.param(n, marks=pytest.mark.slow) if n in SLOW_EXPORTS else n for n in sorted(names)]


def make_wheel(folder: Path, name: str, version: str, files: dict[str, str], requires: list[str] = ()) -> Path:
    """Write a minimal, valid pure-Python wheel."""
    norm = name.replace("-", "_")
    info = f"{norm}-{version}.dist-info"
    files = dict(files)
    files[f"{info}/METADATA"] = (
        f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(f"Requires-Dist: {r}\n" for r in requires)
    )
    files[f"{info}/WHEEL"] = "Wheel-Version: 1.0\nGenerator: safehub-tests\nRoot-Is-Purelib: true\nTag: py3-none-any\n"
    record = []
    for path, text in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(text.encode()).digest()).rstrip(b"=").decode()
        record.append(f"{path},sha256={digest},{len(text.encode())}")
    files[f"{info}/RECORD"] = "\n".join(record + [f"{info}/RECORD,,"]) + "\n"
    folder.mkdir(parents=True, exist_ok=True)
    out = folder / f"{norm}-{version}-py3-none-any.whl"
    with zipfile.ZipFile(out, "w") as z:
        for path, text in files.items():
            z.writestr(path, text)
    return out


class Recording(SandboxBackend):
    """Wraps a real sandbox backend and remembers its last SandboxResult (the sandbox
    tests read the run's stdout/stderr from it)."""

    def __init__(self, inner: Any) -> None:
        self.inner, self.name, self.last = inner, inner.name, None
        self.passes_fds = inner.passes_fds  # the weights memfd reaches the sandbox as in production

    def check(self) -> str | None:
        return self.inner.check()

    def confine_config(self, request: Any) -> dict[str, object]:
        return self.inner.confine_config(request)

    def describe(self) -> dict[str, object]:
        return self.inner.describe()

    def run(self, request: Any) -> Any:
        self.last = self.inner.run(request)
        return self.last



def no_ambient_policy(mp: pytest.MonkeyPatch, folder: Path) -> None:
    """Only the policy layers and lockfiles a test names apply: not this machine's
    /etc/safehub, user config dir or SAFEHUB_* variables (``folder`` holds none)."""
    mp.setattr("safehub._policy.SYSTEM_POLICY_PATH", folder / "no-system-policy.toml")
    mp.setattr("safehub._policy._user_config_policy", lambda: folder / "no-user-policy.toml")
    for var in ("SAFEHUB_SYSTEM_POLICY", "SAFEHUB_POLICY", "SAFEHUB_LOCK", "SAFEHUB_SANDBOX", "SAFEHUB_DEPENDENCIES"):
        mp.delenv(var, raising=False)
