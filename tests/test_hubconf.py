"""Reading hubconf.py statically, and agreeing with torch.hub.list."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import safehub
from safehub._hubconf import parse_hubconf, read_hubconf


def _repo(tmp_path: Path, hubconf: str, **files: str) -> Path:
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(hubconf))
    for name, text in files.items():
        (repo / f"{name}.py").write_text(textwrap.dedent(text))
    return repo


TORCH_LIST = """
import json, sys, torch.hub
repo = sys.argv[1]
sys.path.insert(0, repo)  # what torch.hub does before importing hubconf
hub = torch.hub._import_module("hubconf", repo + "/hubconf.py")
print(json.dumps([f for f in dir(hub) if callable(getattr(hub, f)) and not f.startswith("_")]))
"""


def _torch_list(repo: Path) -> list[str]:
    """torch.hub.list's rule (torch 2.13 `list` has no source="local"), applied in a fresh
    process so that modules cached by other tests cannot change the answer."""
    out = subprocess.run([sys.executable, "-c", TORCH_LIST, str(repo)], capture_output=True, text=True, check=True)
    return json.loads(out.stdout)


STATIC_CASES = {
    "defs_and_classes": """
        dependencies = ['torch']
        import torch
        import os.path
        VERSION = 2
        NAME = 'x' + 'y'
        def resnet(pretrained=False, **kwargs):
            '''A resnet.'''
        class Wrapper:
            def __init__(self, a, b=1):
                pass
        make = lambda: 1
        def _private(): pass
        """,
}

DYNAMIC_CASES = {
    "imported_callables": (
        """
        dependencies = ['torch']
        from helpers import build, CONSTANT, Klass
        from torch.hub import load_state_dict_from_url
        """,
        {"helpers": "CONSTANT = 3\ndef build(): pass\nclass Klass: pass\n"},
    ),
    "star_import": (
        """
        from helpers import *
        """,
        {"helpers": "def alpha(): pass\ndef beta(): pass\nGAMMA = 1\n__all__ = ['alpha', 'GAMMA']\n"},
    ),
    "conditional": (
        """
        import sys
        if sys.version_info >= (3, 8):
            def new_model(): pass
        else:
            old_model = 3
        try:
            from helpers import maybe
        except ImportError:
            maybe = None
        """,
        {"helpers": "def maybe(): pass\n"},
    ),
}


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(STATIC_CASES))
def test_static_listing_equals_torch_hub_list(tmp_path, name):
    repo = _repo(tmp_path, STATIC_CASES[name])
    hub = read_hubconf(repo)
    assert hub.static_list_is_exact
    assert hub.names() == _torch_list(repo)
    assert safehub.list(str(repo), source="local") == _torch_list(repo)


@pytest.mark.slow
@pytest.mark.parametrize("name", sorted(DYNAMIC_CASES))
def test_sandbox_listing_equals_torch_hub_list(tmp_path, name):
    hubconf, files = DYNAMIC_CASES[name]
    repo = _repo(tmp_path, hubconf, **files)
    hub = read_hubconf(repo)
    assert not hub.static_list_is_exact, "these cases need the sandbox"
    assert safehub.list(str(repo), source="local", verbose=False) == _torch_list(repo)


def test_help_returns_the_raw_docstring_like_torch_hub(tmp_path):
    repo = _repo(tmp_path, STATIC_CASES["defs_and_classes"])
    assert safehub.help(str(repo), "resnet", source="local") == "A resnet."
    hub = read_hubconf(repo)
    assert hub.find("resnet").signature == "(pretrained=False, **kwargs)"
    assert hub.find("Wrapper").signature == "(a, b=1)"


@pytest.mark.slow
def test_help_of_an_imported_entrypoint_asks_the_sandbox(tmp_path):
    repo = _repo(tmp_path, "from helpers import build\n", helpers="def build():\n    '''Built in helpers.'''\n")
    assert safehub.help(str(repo), "build", source="local") == "Built in helpers."


@pytest.mark.parametrize(
    "source, message",
    [
        ("dependencies = ['torch'] + extra\n", "must be a literal list"),
        ("dependencies = get_deps()\n", "must be a literal list"),
        ("dependencies = ['torch', name]\n", "string literal"),
        ("dependencies = ['torch\\n']\n", None),
        ("def broken(:\n", "not valid Python"),
        ("dependencies = ['" + "x" * 300 + "']\n", "not a valid name"),
    ],
)
def test_bad_dependencies_are_clear_errors(source, message):
    if message is None:
        # surrounding whitespace is stripped, and what remains is a fine name
        assert parse_hubconf(source).dependencies == ["torch"]
        return
    with pytest.raises(safehub.HubconfError, match=message):
        parse_hubconf(source)


def test_missing_hubconf_and_missing_dependencies(tmp_path):
    with pytest.raises(safehub.HubconfError, match="no hubconf.py"):
        read_hubconf(tmp_path)
    assert parse_hubconf("def a(): pass\n").dependencies == []


def test_static_missing_entrypoint_fails_before_any_env_is_built(tmp_path, safehub_home):
    repo = _repo(tmp_path, STATIC_CASES["defs_and_classes"])
    envs_before = set((safehub_home / "envs").glob("*")) if (safehub_home / "envs").exists() else set()
    with pytest.raises(safehub.EntrypointNotFoundError, match="Cannot find callable absent"):
        safehub.load(str(repo), "absent", source="local")
    envs_after = set((safehub_home / "envs").glob("*")) if (safehub_home / "envs").exists() else set()
    assert envs_after == envs_before
