"""Property test (issue 18, item 6): a random valid graph, built by the host and run,
computes exactly what a reference interpreter computes by walking the same spec
node by node, without code generation. Any difference is a bug.

Graphs: 1-3 tensor arguments (one may have a float default), then random
elementwise, broadcasting, slicing, reduction, comparison and method nodes with
random literals (non-finite and signed-zero floats, ints, finite complex), under
names that FX must rename (``input``, ``torch``, ``sum``, ``inf``, ``getattr``...).
Bounded to a few seconds: it runs in the fast tier.
"""

from __future__ import annotations

import json
import math
import operator
import tempfile
from pathlib import Path
from typing import Any

import torch
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import specgen
from safehub._channel import rebuild_from_output

# The reference interpreter's own table: spec target -> callable (test code, trusted).
FUNCTIONS = {
    "operator.add": operator.add, "operator.sub": operator.sub, "operator.mul": operator.mul,
    "operator.truediv": operator.truediv, "operator.neg": operator.neg, "operator.gt": operator.gt,
    "operator.getitem": operator.getitem, "operator.pow": operator.pow,
    "torch.add": torch.add, "torch.mul": torch.mul, "torch.relu": torch.relu, "torch.tanh": torch.tanh,
    "torch.abs": torch.abs, "torch.clamp": torch.clamp, "torch.where": torch.where,
    "torch.nn.functional.leaky_relu": torch.nn.functional.leaky_relu,
}  # fmt: skip
SPECIAL_NAMES = ["input", "torch", "sum", "inf", "nan", "getattr", "slice", "device", "infj", "self_", "Ellipsis",
                 "len", "abs", "x", "output_1"]  # fmt: skip
SHAPE = (3, 4)

floats = st.floats(allow_nan=True, allow_infinity=True, width=64) | st.sampled_from([-0.0, 0.0, math.inf, -math.inf, math.nan])
ints = st.integers(-5, 5)


def f(v: float) -> dict:
    return {"float": repr(v)}


def decode(v: Any, env: dict) -> Any:
    """The reference decoder of the Literal table in docs/architecture-format.md."""
    if isinstance(v, list):
        return [decode(x, env) for x in v]
    if not isinstance(v, dict):
        return v
    (tag, val), = v.items()
    if tag == "node":
        return env[val]
    if tag == "float":
        return float(val)
    if tag == "complex":
        return complex(float(val[0]), float(val[1]))
    if tag in ("tuple", "list"):
        items = [decode(x, env) for x in val]
        return tuple(items) if tag == "tuple" else items
    if tag == "slice":
        return slice(*(decode(x, env) for x in val))
    if tag == "ellipsis":
        return Ellipsis
    if tag == "dtype":
        return getattr(torch, val)
    raise AssertionError(tag)


def reference(nodes: list[dict], args: tuple) -> Any:
    env: dict[str, Any] = {}
    it = iter(args)
    for n in nodes:
        op = n["op"]
        a = [decode(x, env) for x in n.get("args", [])]
        kw = {k: decode(x, env) for k, x in n.get("kwargs", {}).items()}
        if op == "placeholder":
            env[n["name"]] = next(it, None)
            if env[n["name"]] is None:
                env[n["name"]] = a[0]
        elif op == "call_function":
            env[n["name"]] = FUNCTIONS[n["target"]](*a, **kw)
        elif op == "call_method":
            env[n["name"]] = getattr(a[0], n["target"])(*a[1:], **kw)
        elif op == "output":
            return a[0]
    raise AssertionError("no output")


@st.composite
def graphs(draw) -> tuple[list[dict], int]:
    n_inputs = draw(st.integers(1, 3))
    names = iter(draw(st.permutations(SPECIAL_NAMES)) + [f"n{i}" for i in range(40)])
    nodes: list[dict] = []
    real: list[str] = []  # nodes holding real float64 tensors of a shape broadcastable to SHAPE
    scalars: list[str] = []  # a placeholder with a float default
    for i in range(n_inputs):
        name = "input_1" if i == 0 and draw(st.booleans()) else f"arg{i}"
        node = {"op": "placeholder", "name": name, "target": "input" if name == "input_1" else name}
        nodes.append(node)
        if i == n_inputs - 1 and n_inputs > 1 and draw(st.booleans()):
            node["args"] = [f(draw(floats))]  # a float default the caller does not pass
            scalars.append(name)
        else:
            real.append(name)
    passed = n_inputs - sum(1 for n in nodes if n.get("args"))
    extra: list[str] = []  # complex or bool results: returned, not reused
    for _ in range(draw(st.integers(1, 8))):
        name = next(names)
        ref = lambda: {"node": draw(st.sampled_from(real))}  # noqa: E731
        def lit() -> Any:
            if scalars and draw(st.booleans()):
                return {"node": scalars[0]}
            return f(draw(floats)) if draw(st.booleans()) else draw(ints)

        kind = draw(st.sampled_from(["binop", "binop_lit", "lit_binop", "torch_add", "unary", "clamp", "slice",
                                     "reduce", "method", "compare", "complex", "leaky", "pow"]))
        if kind == "binop":
            node = {"op": "call_function", "target": draw(st.sampled_from(["operator.add", "operator.sub", "operator.mul", "operator.truediv"])), "args": [ref(), ref()]}
        elif kind == "binop_lit":
            node = {"op": "call_function", "target": draw(st.sampled_from(["operator.add", "operator.sub", "operator.mul", "operator.truediv"])), "args": [ref(), lit()]}
        elif kind == "lit_binop":
            node = {"op": "call_function", "target": draw(st.sampled_from(["operator.add", "operator.sub", "operator.mul"])), "args": [lit(), ref()]}
        elif kind == "torch_add":
            node = {"op": "call_function", "target": "torch.add", "args": [ref(), draw(st.sampled_from([ref(), lit()]))], "kwargs": {"alpha": lit()}}
        elif kind == "unary":
            node = {"op": "call_function", "target": draw(st.sampled_from(["torch.relu", "torch.tanh", "torch.abs", "operator.neg"])), "args": [ref()]}
        elif kind == "clamp":
            node = {"op": "call_function", "target": "torch.clamp", "args": [ref()], "kwargs": {"min": f(draw(floats)), "max": f(draw(floats))}}
        elif kind == "slice":
            rows = {"slice": [draw(st.sampled_from([None, 0, 1, -1])), draw(st.sampled_from([None, 1, 2, 3])), None]}
            idx = draw(st.sampled_from([{"tuple": [rows, {"ellipsis": True}]}, {"tuple": [{"slice": [None, None, None]}, {"slice": [0, 1, None]}]}]))
            node = {"op": "call_function", "target": "operator.getitem", "args": [ref(), idx]}
            if draw(st.booleans()):  # sliced shapes may not broadcast: return, don't reuse
                node["name"] = name
                nodes.append(node)
                extra.append(name)
                continue
            node["args"][1] = {"tuple": [{"slice": [None, None, None]}, {"slice": [None, None, None]}]}
        elif kind == "reduce":
            node = {"op": "call_method", "target": draw(st.sampled_from(["sum", "amax", "mean"])), "args": [ref()],
                    "kwargs": {"dim": draw(st.sampled_from([-1, 0, 1])), "keepdim": True}}
        elif kind == "method":
            node = {"op": "call_method", "target": draw(st.sampled_from(["clamp_min", "mul", "add"])), "args": [ref(), lit()]}
        elif kind == "compare":
            node = {"op": "call_function", "target": "operator.gt", "args": [ref(), lit()]}
            cast = next(names)
            nodes.append({**node, "name": name})
            node, name = {"op": "call_method", "target": "to", "args": [{"node": name}], "kwargs": {"dtype": {"dtype": "float64"}}}, cast
        elif kind == "complex":
            c = [repr(draw(st.floats(allow_nan=False, allow_infinity=False))) for _ in range(2)]
            node = {"op": "call_function", "target": "torch.mul", "args": [ref(), {"complex": c}]}
            nodes.append({**node, "name": name})
            extra.append(name)
            continue
        elif kind == "leaky":
            node = {"op": "call_function", "target": "torch.nn.functional.leaky_relu", "args": [ref()], "kwargs": {"negative_slope": f(draw(floats))}}
        else:  # pow with a literal exponent (FX prints "{} ** {}")
            node = {"op": "call_function", "target": "operator.pow", "args": [ref(), draw(st.sampled_from([2, f(0.5), -1, f(draw(floats))]))]}
        nodes.append({**node, "name": name})
        real.append(name)
    out = {"tuple": [{"node": n} for n in real[n_inputs:] + extra] or [{"node": real[0]}]}
    nodes.append({"op": "output", "name": "output", "target": "output", "args": [out]})
    return nodes, passed


def _same(got: Any, want: Any) -> None:
    if isinstance(want, (tuple, list)):
        assert type(got) is type(want) and len(got) == len(want)
        for g, w in zip(got, want):
            _same(g, w)
        return
    assert isinstance(got, torch.Tensor) and got.dtype == want.dtype and got.shape == want.shape
    torch.testing.assert_close(got, want, rtol=0, atol=0, equal_nan=True)
    if want.is_floating_point():
        both = ~(want.isnan() | got.isnan())
        assert torch.equal(torch.signbit(got[both]), torch.signbit(want[both])), "signed zeros differ"


@settings(max_examples=60, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
@given(graphs(), st.integers(0, 2**32 - 1))
def test_built_graph_computes_what_the_reference_interpreter_computes(case: tuple[list[dict], int], seed: int) -> None:
    nodes, passed = case
    gen = torch.Generator().manual_seed(seed)
    args = tuple(torch.randn(SHAPE, generator=gen, dtype=torch.float64) * 3 for _ in range(passed))
    module = {"mode": "fx", "training": False, "tensors": {}, "graphs": {"eval": {"nodes": nodes}}}
    spec = {"format": "safehub-arch", "version": 1, "root": {"module": "m0"}, "modules": {"m0": module}}
    with tempfile.TemporaryDirectory() as tmp:
        model = rebuild_from_output(specgen.write(Path(tmp) / "o", spec, {}))
    want = reference(json.loads(json.dumps(nodes)), args)
    _same(model(*args), want)
