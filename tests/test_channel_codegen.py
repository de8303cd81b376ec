"""The generated forward is the graph that was validated (issue 18, items 1-2).

Two ways FX's printed source differed from its graph: a literal printed as a
name (``complex(0, inf)`` -> ``infj``, which read a placeholder called ``infj``)
and placeholder aliasing (``b = c; a = b``). Both are refused by the spec rules
*and*, independently, by the check of the generated source
(safehub/_channel/_codecheck.py), which these tests also drive directly with
graphs the spec rules would never let through.
"""

from __future__ import annotations

import dataclasses
import math
import operator
from pathlib import Path

import pytest
import torch
from torch import fx

import specgen
from safehub._channel import rebuild_from_output
from safehub._channel._codecheck import CheckedCodeGen, check_python_code
from safehub._errors import InvalidNameError, UnsafeSpecError


def _spec(nodes: list[dict]) -> dict:
    module = {"mode": "fx", "training": False, "tensors": {}, "graphs": {"eval": {"nodes": nodes}}}
    return {"format": "safehub-arch", "version": 1, "root": {"module": "m0"}, "modules": {"m0": module}}


def _load(tmp_path: Path, nodes: list[dict]):
    return rebuild_from_output(specgen.write(tmp_path / "out", _spec(nodes), {}))


def _ph(name: str, target: str | None = None) -> dict:
    return {"op": "placeholder", "name": name, "target": target or name}


def _fn(name: str, target: str, *args, **kwargs) -> dict:
    return {"op": "call_function", "name": name, "target": target, "args": list(args), "kwargs": kwargs}


def _out(value) -> dict:
    return {"op": "output", "name": "output", "target": "output", "args": [value]}


def _checked_graph() -> fx.Graph:
    g = fx.Graph()
    g.set_codegen(CheckedCodeGen("test graph"))
    return g


# --- the two attacks, through the spec ------------------------------------------


@pytest.mark.parametrize("imag", ["inf", "-inf", "nan"])
@pytest.mark.parametrize("real", ["0.0", "nan", "1.5"])
def test_non_finite_complex_literal_is_refused(tmp_path: Path, real: str, imag: str) -> None:
    nodes = [_ph("x"), _ph("infj"), _ph("nanj"),
             _fn("mul", "operator.mul", {"node": "x"}, {"complex": [real, imag]}), _out({"node": "mul"})]  # fmt: skip
    with pytest.raises(UnsafeSpecError, match="non-finite"):
        _load(tmp_path, nodes)


def test_placeholder_aliasing_is_refused(tmp_path: Path) -> None:
    # forward(self, c, b) with nodes b <- c and a <- b printed "b = c; a = b": a - b became c - c.
    nodes = [_ph("b", "c"), _ph("a", "b"), _fn("sub", "operator.sub", {"node": "a"}, {"node": "b"}), _out({"node": "sub"})]
    with pytest.raises(InvalidNameError, match="differs from its name"):
        _load(tmp_path, nodes)


@pytest.mark.parametrize("name,target", [("x_1", "x"), ("input_1", "y"), ("input_x", "input"), ("a", "input")])
def test_placeholder_name_must_be_its_target(tmp_path: Path, name: str, target: str) -> None:
    nodes = [_ph(name, target), _fn("r", "torch.relu", {"node": name}), _out({"node": "r"})]
    with pytest.raises(InvalidNameError, match="differs from its name"):
        _load(tmp_path, nodes)


def test_fx_renamed_builtin_argument_still_loads(tmp_path: Path) -> None:
    # forward(self, input): FX names the node input_1 and prints "input_1 = input".
    nodes = [_ph("input_1", "input"), _fn("r", "torch.relu", {"node": "input_1"}), _out({"node": "r"})]
    model = _load(tmp_path, nodes)
    x = torch.randn(5)
    assert torch.equal(model(x), torch.relu(x))
    assert torch.equal(model(input=x), torch.relu(x))


@pytest.mark.parametrize("arg", ["torch", "getattr", "inf", "nan", "device", "self", "slice", "Ellipsis"])
def test_argument_shadowing_a_global_is_refused(tmp_path: Path, arg: str) -> None:
    nodes = [_ph("x"), _ph(arg), _fn("r", "torch.relu", {"node": "x"}),
             _fn("m", "operator.mul", {"node": "r"}, {"float": "inf"}), _out({"node": "m"})]  # fmt: skip
    with pytest.raises(UnsafeSpecError):
        _load(tmp_path, nodes)


@pytest.mark.parametrize("name", ["torch", "getattr", "inf", "nan", "device", "slice", "Ellipsis", "infj", "len", "self_"])
def test_nodes_named_like_globals_compute_the_graph(tmp_path: Path, name: str) -> None:
    """FX renames nodes that would shadow a global; the model computes what the graph says."""
    nodes = [_ph("x"), _fn(name, "torch.relu", {"node": "x"}),
             _fn("m", "operator.mul", {"node": name}, {"float": "-inf"}),
             _fn("s", "operator.getitem", {"node": "m"}, {"tuple": [{"slice": [None, 2, None]}, {"ellipsis": True}]}),
             _out({"tuple": [{"node": "s"}, {"node": name}]})]  # fmt: skip
    model = _load(tmp_path, nodes)
    x = torch.tensor([1.0, 3.0, 2.0])
    s, r = model(x)
    assert torch.equal(r, torch.relu(x))
    assert torch.equal(s, (torch.relu(x) * -math.inf)[:2, ...])


@pytest.mark.parametrize("value", ["inf", "-inf", "nan", "-0.0", "1e-300", "-1.5e+300"])
def test_non_finite_and_signed_floats_arrive_exactly(tmp_path: Path, value: str) -> None:
    nodes = [_ph("x"), _ph("y", None), _fn("f", "torch.full_like", {"node": "x"}, {"float": value}), _out({"node": "f"})]
    nodes[1]["args"] = [{"float": value}]
    model = _load(tmp_path, nodes)
    got = model(torch.zeros(2, dtype=torch.float64))
    want = torch.full((2,), float(value), dtype=torch.float64)
    assert torch.equal(got.isnan(), want.isnan()) and torch.equal(got.nan_to_num(), want.nan_to_num())
    assert torch.equal(torch.signbit(got), torch.signbit(want))
    assert model.code.count("def forward(self, x, y = ") == 1


# --- the check itself, on graphs the spec rules would refuse -----------------------


def test_check_refuses_a_literal_printed_as_a_name() -> None:
    g = _checked_graph()
    x, infj = g.placeholder("x"), g.placeholder("infj")
    g.output(g.call_function(operator.mul, (x, complex(0.0, math.inf))))
    assert "infj" in fx.Graph.python_code(_plain(g), "self").src  # what FX prints without the check
    with pytest.raises(UnsafeSpecError, match="does not compute the validated graph"):
        g.python_code("self")
    del infj


@pytest.mark.parametrize("value", [complex(0, math.nan), complex(1, -math.inf), complex(math.inf, math.nan)])
def test_check_refuses_non_finite_complex_even_without_a_matching_name(value: complex) -> None:
    g = _checked_graph()
    x = g.placeholder("x")
    g.output(g.call_function(operator.add, (x, value)))
    with pytest.raises(UnsafeSpecError):
        g.python_code("self")


def test_check_refuses_placeholder_aliasing() -> None:
    g = _checked_graph()
    b = g.create_node("placeholder", "c", name="b")
    a = g.create_node("placeholder", "b", name="a")
    g.output(g.call_function(operator.sub, (a, b)))
    assert "a = b" in fx.Graph.python_code(_plain(g), "self").src
    with pytest.raises(UnsafeSpecError, match="placeholder reads"):
        g.python_code("self")


def test_check_refuses_a_shadowed_global() -> None:
    g = _checked_graph()
    x = g.placeholder("x")
    g.placeholder("torch")
    g.output(g.call_function(torch.relu, (x,)))
    with pytest.raises(UnsafeSpecError):
        g.python_code("self")


def _plain(g: fx.Graph) -> fx.Graph:
    """The same graph with FX's own, unchecked code generator."""
    out = fx.Graph()
    env: dict = {}
    out.graph_copy(g, env)
    out.output(fx.map_arg(next(n for n in reversed(g.nodes) if n.op == "output").args[0], lambda n: env[n]))
    return out


def _valid_code():
    g = fx.Graph()
    x = g.placeholder("x")
    y = g.create_node("placeholder", "y", args=(2.5,), name="y")
    r = g.call_function(torch.relu, (x,))
    m = g.call_function(operator.mul, (r, y))
    s = g.call_method("sum", (m,), {"dim": -1})
    w = g.get_attr("layer1.0.weight")
    o = g.call_function(torch.add, (s, w), {"alpha": 2})
    g.output((o, [s]))
    code = g.python_code("self")
    return g, code


def test_check_accepts_fx_output_unchanged() -> None:
    g, code = _valid_code()
    check_python_code(code, list(g.nodes))


@pytest.mark.parametrize(
    "old,new",
    [
        ("relu = torch.relu(x)", "relu = torch.relu(x); import os"),  # an extra statement
        ("relu = torch.relu(x)", "relu = torch.relu(y)"),  # another operand
        ("relu = torch.relu(x)", "relu = torch.sigmoid(x)"),  # another function
        ("mul = relu * y", "mul = relu * y * 2"),  # a nested operation
        ("mul = relu * y", "mul = relu * z"),  # an unknown name
        ("mul = relu * y", "mul = relu * __builtins__"),  # a builtin that is not allowed
        ("y = 2.5", "y = 3.5"),  # another default
        ("sum_1 = mul.sum(dim = -1)", "sum_1 = mul.sum(dim = 1)"),  # another literal
        ("sum_1 = mul.sum(dim = -1)", "sum_1 = mul.mean(dim = -1)"),  # another method
        ("getattr(self.layer1, \"0\").weight", "getattr(self.layer1, \"1\").weight"),  # another attribute
        ("add = torch.add(sum_1, layer1_0_weight, alpha = 2)", "add = torch.add(layer1_0_weight, sum_1, alpha = 2)"),
        ("return (add, [sum_1])", "return (add, [add])"),  # another output
        ("return (add, [sum_1])", "return (add, (sum_1,))"),  # another container
        ("def forward(self, x, y = 2.5):", "def forward(self, x, y = 2.5, *rest):"),  # another signature
        ("mul = relu * y", "mul = relu * y;  relu = None;  relu = relu"),  # read after deletion
    ],
)
def test_check_refuses_any_difference(old: str, new: str) -> None:
    g, code = _valid_code()
    assert old in code.src, code.src
    bad = dataclasses.replace(code, src=code.src.replace(old, new))
    with pytest.raises(UnsafeSpecError, match="does not compute the validated graph"):
        check_python_code(bad, list(g.nodes))


def test_rebuilt_model_recompiles_through_the_check(tmp_path: Path) -> None:
    nodes = [_ph("x"), _fn("r", "torch.relu", {"node": "x"}), _out({"node": "r"})]
    model = _load(tmp_path, nodes)
    assert isinstance(model.graph._codegen, CheckedCodeGen)
    model.recompile()  # regenerated, checked again
    # Tampering with the graph after the build is caught at the next recompile.
    relu = next(n for n in model.graph.nodes if n.op == "call_function")
    relu.args = (complex(0, math.inf),)
    with pytest.raises(UnsafeSpecError):
        model.recompile()


def test_operator_precedence_that_fx_prints_wrong_is_refused(tmp_path: Path) -> None:
    """operator.pow(-2.0, x) prints as "-2.0 ** x", which Python reads as -(2.0 ** x)."""
    g = fx.Graph()
    x = g.placeholder("x")
    g.output(g.call_function(operator.pow, (-2.0, x)))
    assert "= -2.0 ** x" in g.python_code("self").src
    nodes = [_ph("x"), _fn("p", "operator.pow", {"float": "-2.0"}, {"node": "x"}), _out({"node": "p"})]
    with pytest.raises(UnsafeSpecError, match="does not compute the validated graph"):
        _load(tmp_path, nodes)


@pytest.mark.parametrize("attr", ["w", "T"])
def test_node_named_self_cannot_stand_in_for_the_module(tmp_path: Path, attr: str) -> None:
    """A node named "self" prints "self = torch.relu(x)"; the next "self.T" would then read
    the node's transpose instead of the module's tensor T."""
    nodes = [_ph("x"), _fn("self", "torch.relu", {"node": "x"}), {"op": "get_attr", "name": "w", "target": attr},
             _fn("a", "operator.add", {"node": "self"}, {"node": "w"}), _out({"node": "a"})]  # fmt: skip
    module = {"mode": "fx", "training": False, "tensors": {attr: {"dtype": "float32", "shape": [2], "kind": "buffer"}},
              "graphs": {"eval": {"nodes": nodes}}}  # fmt: skip
    spec = {"format": "safehub-arch", "version": 1, "root": {"module": "m0"}, "modules": {"m0": module}}
    with pytest.raises(UnsafeSpecError, match="no longer holds the module"):
        rebuild_from_output(specgen.write(tmp_path / "o", spec, {f"m0.{attr}": torch.ones(2)}))
