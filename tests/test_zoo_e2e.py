"""The whole zoo through the real path (uv venv, sandbox, host rebuild), compared with
torch.hub.load(source="local") on the same repo: eval outputs at two batch sizes, train
outputs under one seed, and gradients."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import safehub
from conftest import ZOO_CASES, close, outputs_of, torch_hub_load_local

# Runs real sandboxes (or a torch subprocess per case): the slow tier.
pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parent / "zoo"


@pytest.fixture(scope="module")
def zoo_loads():
    """Every zoo model loaded once through safehub (each one is a sandboxed run)."""
    return {name: safehub.load(str(ZOO), name, source="local", verbose=False) for name in sorted(ZOO_CASES)}


def _grads(model: torch.nn.Module, y) -> dict[str, torch.Tensor]:
    leaves = [t for t in (y if isinstance(y, (tuple, list)) else y.values() if isinstance(y, dict) else [y])]
    sum(t.float().square().sum() for t in leaves if isinstance(t, torch.Tensor) and t.is_floating_point()).backward()
    return {n: p.grad.clone() for n, p in model.named_parameters() if p.grad is not None}


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_model_matches_torch_hub(zoo_loads, name):
    make_inputs, expected_mode = ZOO_CASES[name]
    ours = zoo_loads[name]
    assert ours.safehub_info.summary["modules"]["m0"]["mode"] == expected_mode
    ref = torch_hub_load_local(ZOO, name)
    assert ours.training == ref.training
    for batch in (2, 5):  # a changed batch size works
        x = make_inputs(batch)
        with torch.no_grad():
            assert close(outputs_of(ref, x, train=False), outputs_of(ours, x, train=False)), (name, batch)
    x = make_inputs(4)
    y_ref = outputs_of(ref, x, train=True, seed=7)
    y_ours = outputs_of(ours, x, train=True, seed=7)
    assert close(y_ref, y_ours), name
    g_ref, g_ours = _grads(ref, y_ref), _grads(ours, y_ours)
    assert g_ref
    for key, grad in g_ours.items():
        assert key in g_ref, (name, key)
        torch.testing.assert_close(grad, g_ref[key], rtol=1e-4, atol=1e-6, msg=f"{name}: gradient of {key}")


def test_containers_of_modules_come_back_as_containers():
    pair = safehub.load(str(ZOO), "pair", source="local", verbose=False)
    ref_pair = torch_hub_load_local(ZOO, "pair")
    assert isinstance(pair, tuple) and len(pair) == len(ref_pair)
    for ours, ref in zip(pair, ref_pair):
        assert sum(p.numel() for p in ours.parameters()) == sum(p.numel() for p in ref.parameters())
        assert ours.safehub_info.entrypoint == "pair"
    sep = safehub.load(str(ZOO), "separator", source="local", verbose=False)
    ref_sep = torch_hub_load_local(ZOO, "separator")
    assert isinstance(sep, dict) and set(sep) == set(ref_sep)
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert close(outputs_of(ref_sep["vocals"], (x,), train=False), outputs_of(sep["vocals"], (x,), train=False))


@pytest.mark.parametrize("name, kind", [("plain_function", "function"), ("scripted", "Script")])
def test_unsupported_returns_name_the_type(name, kind):
    with pytest.raises(safehub.UnsupportedReturnError) as info:
        safehub.load(str(ZOO), name, source="local", verbose=False)
    assert kind in str(info.value)
    assert isinstance(info.value, TypeError)


def test_export_aten_on_request_with_caller_example_inputs():
    model = safehub.load(str(ZOO), "resnet", source="local", verbose=False, export="aten",
                         example_inputs=(torch.randn(2, 3, 16, 16),))
    assert model.safehub_info.summary["modules"]["m0"]["mode"] == "aten"
    ref = torch_hub_load_local(ZOO, "resnet")
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        assert close(outputs_of(ref, (x,), train=False), outputs_of(model, (x,), train=False))
