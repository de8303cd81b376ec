"""The shipped fx function and Tensor method allowlists (safehub/_channel/function_allowlist.json)
against the lists computed from the installed torch, and the fallback for any other torch build."""

from __future__ import annotations

import importlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from safehub._channel import _allowlist
from safehub._channel._allowlist import (
    _FUNCTION_NAMESPACES,
    _ZEROED_NAMES,
    allowed_function,
    allowed_method,
    derive_shipped,
    function_allowlist,
    method_allowlist,
)

ROOT = Path(__file__).resolve().parent.parent
SHIPPED = ROOT / "safehub" / "_channel" / "function_allowlist.json"


def test_the_shipped_lists_are_the_installed_torchs():
    shipped = json.loads(SHIPPED.read_text(encoding="utf-8"))
    assert shipped["torch"] == _allowlist.torch_build(), (
        "function_allowlist.json was derived for another torch build: review the deny lists in "
        "safehub/_channel/_allowlist.py, then run .venv/bin/python scripts/derive_function_allowlist.py"
    )
    assert shipped == json.loads(json.dumps(derive_shipped())), "run scripts/derive_function_allowlist.py"
    assert _allowlist._shipped() is not None  # so every load here takes the shipped path


def _candidates() -> set[str]:
    """Names a spec could send: every attribute of the function namespaces and of a few
    modules next to them, FX's qualified name of every callable there, and crafted ones."""
    names = set(function_allowlist())
    for modname in (*_FUNCTION_NAMESPACES, "torch.nn", "torch.fx", "torch.ops", "os", "builtins", "operator", "math"):
        mod = importlib.import_module(modname)
        for attr, obj in vars(mod).items():
            names.add(f"{modname}.{attr}")
            if callable(obj):
                try:
                    names.add(torch.fx.node._get_qualified_name(obj))
                except Exception:  # noqa: BLE001 - no qualified name
                    pass
    names |= {"torch.load", "torch.save", "torch.from_file", "torch.os.system", "builtins.eval", "builtins.exec",
              "operator.attrgetter", "torch.nn.functional.torch", "torch.fft", "torch", "", ".", "torch.",
              "torch._C._nn.gelu", "torch.empty:x", "torch.fft:fft", "torch.Tensor.add", "math.os"}
    return names


def test_the_shipped_lookup_answers_exactly_as_the_computed_table():
    table = function_allowlist()
    names = _candidates()
    assert len(names) > 2 * len(table)
    for name in sorted(names):
        got = allowed_function(name)
        if name in table:
            assert got is table[name], name
        else:
            assert got is None, name
    methods = method_allowlist()
    for name in sorted(methods | {n.rsplit(".", 1)[-1] for n in names}):
        assert allowed_method(name) == (name in methods), name


def test_names_that_are_not_listed_are_not_remembered():
    """A spec's unknown names (up to the node cap per graph, in every load of a
    long-running process) must not grow the lookup's memo."""
    before = dict(_allowlist._resolved)
    for i in range(1000):
        assert allowed_function(f"torch.not_a_function_{i}") is None
    assert _allowlist._resolved == before
    assert set(_allowlist._resolved) <= set(function_allowlist())


@pytest.mark.parametrize("src", [("os", "system"), ("torch", "_sparse_coo_tensor_unsafe"),
                                 ("torch.nn.functional", "__builtins__"), ("torch", "lstm"),
                                 ("torch", "batch_norm_backward_elemt")])
def test_a_wrong_shipped_entry_still_resolves_to_nothing_refused(monkeypatch, src):
    """Defence in depth: were the shipped file wrong, a name outside the fixed namespaces
    or in a refused family still resolves to nothing. (A public torch function that is
    not overridable, torch.load, is kept out by the file being exactly the computed list
    for this build, the first test here, and by the build check, not by this.)"""
    shipped = _allowlist._shipped()
    assert shipped is not None
    monkeypatch.setattr(_allowlist, "_shipped", lambda: ({"torch.crafted": src}, shipped[1]))
    monkeypatch.setattr(_allowlist, "_resolved", {})
    assert allowed_function("torch.crafted") is None


def test_the_zero_filled_forms_are_what_the_lookup_gives():
    from safehub._channel._kernels import ZEROED_FUNCTIONS

    assert _ZEROED_NAMES == frozenset(ZEROED_FUNCTIONS)
    assert allowed_function("torch.empty") is ZEROED_FUNCTIONS["empty"]
    assert allowed_function("torch.empty") is not torch.empty


def test_another_torch_build_computes_the_lists(monkeypatch):
    """A file derived for another build is not used: the lookup answers from the computed
    table. Checked in a subprocess, where nothing is cached yet and the computed table is
    never built unless the fallback asks for it."""
    code = (
        "import torch, safehub._channel._allowlist as a\n"
        "a.torch_build = lambda: {'version': '0.0.0', 'git_version': 'x'}\n"
        "assert a._shipped() is None\n"
        "assert a.function_allowlist.cache_info().currsize == 0\n"
        "assert a.allowed_function('torch.relu') is torch.relu\n"
        "assert a.allowed_function('torch.load') is None\n"
        "assert a.function_allowlist.cache_info().currsize == 1\n"
        "assert a.allowed_method('add') and not a.allowed_method('storage')\n"
        "print('ok')\n"
    )
    _run_fresh(code)


def _run_fresh(code: str) -> None:
    """``code`` in a new interpreter, where no allowlist is cached yet; it prints ok."""
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT, timeout=120)
    assert done.returncode == 0, done.stderr[-2000:]
    assert done.stdout.strip().endswith("ok")


def test_a_load_builds_no_whole_table():
    """With the shipped names, validating a graph resolves its targets one by one: the
    computed table (and torch.overrides' own tables) are never built."""
    code = (
        "import torch, torch.overrides, safehub._channel._allowlist as a\n"
        "from safehub._channel._graphspec import parse_graph\n"
        "from safehub._channel._limits import ChannelLimits\n"
        "nodes = [{'op': 'placeholder', 'name': 'x', 'target': 'x'},\n"
        "         {'op': 'call_function', 'name': 'r', 'target': 'torch.relu', 'args': [{'node': 'x'}]},\n"
        "         {'op': 'call_method', 'name': 's', 'target': 'sum', 'args': [{'node': 'r'}]},\n"
        "         {'op': 'output', 'name': 'output', 'target': 'output', 'args': [{'node': 's'}]}]\n"
        "g = parse_graph({'nodes': nodes}, 'g', 'fx', {}, {}, {}, ChannelLimits(), None)\n"
        "assert g.nodes[1].target is torch.relu\n"
        "assert a.function_allowlist.cache_info().currsize == 0\n"
        "assert a.method_allowlist.cache_info().currsize == 0\n"
        "assert torch.overrides._get_overridable_functions.cache_info().currsize == 0\n"
        "print('ok')\n"
    )
    _run_fresh(code)


@pytest.mark.parametrize("bad", ["torch.load", "torch.os.system", "builtins.eval", "torch.fft:fft"])
def test_a_graph_calling_what_is_not_listed_is_refused(bad):
    from safehub._channel._graphspec import parse_graph
    from safehub._channel._limits import ChannelLimits
    from safehub._errors import DisallowedTargetError

    nodes = [{"op": "placeholder", "name": "x", "target": "x"},
             {"op": "call_function", "name": "r", "target": bad, "args": [{"node": "x"}]},
             {"op": "output", "name": "output", "target": "output", "args": [{"node": "r"}]}]
    with pytest.raises(DisallowedTargetError, match="not on safehub's allowlist"):
        parse_graph({"nodes": nodes}, "g", "fx", {}, {}, {}, ChannelLimits(), None)
