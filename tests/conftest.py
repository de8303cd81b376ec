"""Shared fixtures. Every test session gets its own SAFEHUB_HOME, so nothing a test
does touches the user's cache; environments built in it are reused across tests."""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
FIXTURES = Path(__file__).resolve().parent / "fixtures"
REPOS = FIXTURES / "repos"
DEMO = ROOT / "examples" / "demo-hub"
# Helper modules (spec writers, hostile cases, the numpy-free safetensors writer).
sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))


@pytest.fixture(scope="session", autouse=True)
def safehub_home(tmp_path_factory: pytest.TempPathFactory) -> Path:
    home = tmp_path_factory.mktemp("safehub-home")
    old = os.environ.get("SAFEHUB_HOME")
    os.environ["SAFEHUB_HOME"] = str(home)
    os.environ.setdefault("SAFEHUB_DISABLE_PROGRESS_BARS", "1")
    yield home
    if old is None:
        os.environ.pop("SAFEHUB_HOME", None)
    else:
        os.environ["SAFEHUB_HOME"] = old


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
    try:
        return torch.hub.load(str(repo), entry, *args, source="local", **kwargs)
    finally:
        for name in set(sys.modules) - before:
            mod = sys.modules.get(name)
            if getattr(mod, "__file__", None) and str(getattr(mod, "__file__", "")).startswith(str(repo)):
                del sys.modules[name]
        sys.modules.pop("hubconf", None)
        while str(repo) in sys.path:
            sys.path.remove(str(repo))
