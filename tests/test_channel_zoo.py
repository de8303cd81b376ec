"""The producer (runners/_export*.py, run in-process) feeding the real consumer
(safehub._channel.rebuild_from_output) on every zoo model: outputs, gradients and
train/eval behaviour of the rebuilt module must match the original."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

from conftest import zoo_params
from safehub._channel import rebuild_from_output
from safehub._channel._allowlist import function_allowlist
from safehub._channel._kernels import CHECKED
from safehub._channel._module import SafehubGraphModule

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT / "runners"), str(ROOT / "tests" / "zoo")):
    if p not in sys.path:
        sys.path.insert(0, p)

import _export  # noqa: E402  (runners/_export.py)

INPUTS = {
    "aten_cnn": lambda b: (torch.randn(b, 3, 16, 16),),
    "resnet": lambda b: (torch.randn(b, 3, 16, 16),),
    "mobilenet": lambda b: (torch.randn(b, 3, 16, 16),),
    "unet": lambda b: (torch.randn(b, 3, 16, 16),),
    "vit": lambda b: (torch.randn(b, 3, 16, 16),),
    "swin": lambda b: (torch.randn(b, 3, 16, 16),),
    "transformer": lambda b: (torch.randn(b, 5, 32),),
    "recurrent": lambda b: (torch.randn(b, 7, 6),),
    "tied": lambda b: (torch.randint(0, 20, (b, 5)),),
    "shared": lambda b: (torch.randn(b, 6),),
    "nonpersistent": lambda b: (torch.randn(b, 4),),
    "weightnorm": lambda b: (torch.randn(b, 2, 9),),
    "dict_output": lambda b: (torch.randn(b, 5),),
    "tuple_output": lambda b: (torch.randn(b, 3),),
    "functional": lambda b: (torch.randn(b, 6),),
    "stochastic_depth": lambda b: (torch.randn(b, 8),),
    "data_dependent": lambda b: (torch.randn(b, 3, 20),),
    "unnameable": lambda b: (torch.randn(b, 4),),
}


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("safehub_channel_zoo_hubconf", ROOT / "tests" / "zoo" / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def assert_only_allowlisted_globals(gm: SafehubGraphModule) -> None:
    """The code FX generates for both graphs reaches nothing but allowlisted
    callables, FX's fixed builtins and the torch module itself."""
    from torch.fx.graph import _custom_builtins

    allowed = {id(fn) for fn in function_allowlist().values()}
    allowed |= {id(b.obj) for b in _custom_builtins.values()} | {id(torch)}
    allowed |= {id(fn) for fn in CHECKED.values()}  # checked wrappers of shape-trusting aten kernels
    for graph in (gm.graph, gm.train_graph):
        for name, obj in graph.python_code(root_module="self").globals.items():
            ok = id(obj) in allowed or (isinstance(obj, torch._ops.OpOverload) and obj.namespace == "aten")
            assert ok, f"generated code global {name} = {obj!r} is not allowlisted"


def close(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor):
        return isinstance(b, torch.Tensor) and a.shape == b.shape and torch.allclose(a, b, rtol=1e-4, atol=1e-5)
    if isinstance(a, (tuple, list)):
        return len(a) == len(b) and all(close(x, y) for x, y in zip(a, b))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(close(a[k], b[k]) for k in a)
    return a == b


def flat(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in flat(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in flat(v)]
    return []


def run(model: torch.nn.Module, inputs: tuple, train: bool) -> Any:
    model.train(train)
    torch.manual_seed(0)
    return model(*inputs)


@pytest.mark.parametrize("name", zoo_params(INPUTS))
def test_zoo_model_rebuilds_and_matches(zoo, tmp_path: Path, name: str) -> None:
    original = getattr(zoo, name)()
    _export.export_object(original, str(tmp_path), options={}, example_inputs=None, hubconf=zoo, entrypoint=name)
    rebuilt = rebuild_from_output(tmp_path)
    assert isinstance(rebuilt, SafehubGraphModule)
    assert rebuilt.training == original.training
    assert rebuilt.state_dict().keys() == original.state_dict().keys()
    for key, value in original.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value), key
    assert_only_allowlisted_globals(rebuilt)
    torch.manual_seed(1)
    inputs = INPUTS[name](3)
    for train in (False, True):
        with torch.no_grad():
            assert close(run(original, inputs, train), run(rebuilt, inputs, train)), f"{name} train={train}"
    # gradients reach the same parameters with the same values
    out_o, out_r = run(original, inputs, True), run(rebuilt, inputs, True)
    loss_o = sum((t.float() ** 2).sum() for t in flat(out_o) if t.is_floating_point())
    loss_r = sum((t.float() ** 2).sum() for t in flat(out_r) if t.is_floating_point())
    loss_o.backward()
    loss_r.backward()
    grads_o = {n: p.grad for n, p in original.named_parameters() if p.grad is not None}
    grads_r = {n: p.grad for n, p in rebuilt.named_parameters() if p.grad is not None}
    assert grads_o.keys() == grads_r.keys()
    for n in grads_o:
        assert torch.allclose(grads_o[n], grads_r[n], rtol=1e-4, atol=1e-5), n


def test_zoo_containers(zoo, tmp_path: Path) -> None:
    for name, kind in (("pair", tuple), ("separator", dict)):
        original = getattr(zoo, name)()
        out = tmp_path / name
        _export.export_object(original, str(out), options={}, example_inputs=None, hubconf=zoo, entrypoint=name)
        rebuilt = rebuild_from_output(out)
        assert isinstance(rebuilt, kind)
        items = modules_in(rebuilt)
        assert items and all(isinstance(m, SafehubGraphModule) for m in items)


def modules_in(x: Any) -> list[Any]:
    if isinstance(x, (tuple, list)):
        return [m for v in x for m in modules_in(v)]
    if isinstance(x, dict):
        return [m for v in x.values() for m in modules_in(v)]
    return [x]
