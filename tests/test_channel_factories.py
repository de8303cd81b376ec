"""Literal-sized factory calls are bounded before anything is built: a validated
graph must not be able to ask for torch.empty(10**12) at its first forward."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from st_save import save_file

from safehub import SpecTooLargeError
from safehub._channel import ChannelLimits, rebuild_from_output


def _write(out: Path, mode: str, call: dict) -> Path:
    out.mkdir()
    nodes = [
        {"op": "placeholder", "name": "x", "target": "x"},
        {"name": "made", **call},
        {"op": "call_function", "name": "s", "target": "torch.sum" if mode == "fx" else "aten.sum.default",
         "args": [{"node": "made"}]},
        {"op": "call_function", "name": "y", "target": "operator.add" if mode == "fx" else "aten.add.Tensor",
         "args": [{"node": "x"}, {"node": "s"}]},
        {"op": "output", "name": "output", "target": "output", "args": [{"node": "y"}]},
    ]
    spec = {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": {"module": "m0"},
            "modules": {"m0": {"mode": mode, "training": False, "tensors": {}, "aliases": {}, "leaves": {},
                               "submodules": {}, "graphs": {"eval": {"nodes": nodes}}}}}
    (out / "spec.json").write_text(json.dumps(spec))
    save_file({}, str(out / "weights.safetensors"))
    return out


BOMBS = {
    "torch.empty varargs": ("fx", {"op": "call_function", "target": "torch.empty", "args": [1000000, 1000000]}),
    "torch.zeros size list": ("fx", {"op": "call_function", "target": "torch.zeros", "args": [{"list": [100000, 100000]}]}),
    "torch.arange end": ("fx", {"op": "call_function", "target": "torch.arange", "args": [0, 10**12]}),
    "new_ones method": ("fx", {"op": "call_method", "target": "new_ones", "args": [{"node": "x"}, {"tuple": [65536, 65536]}]}),
    "aten.full": ("aten", {"op": "call_function", "target": "aten.full.default",
                           "args": [{"list": [1 << 20, 1 << 20]}, {"float": "1.0"}]}),
}


@pytest.mark.parametrize("case", sorted(BOMBS))
def test_literal_factory_bombs_are_refused_before_build(case, tmp_path):
    mode, call = BOMBS[case]
    with pytest.raises(SpecTooLargeError, match="literal sizes"):
        rebuild_from_output(_write(tmp_path / "out", mode, call))


def test_small_factories_build_and_run_and_the_cap_is_configurable(tmp_path):
    call = {"op": "call_function", "target": "torch.ones", "args": [{"list": [2, 3]}]}
    model = rebuild_from_output(_write(tmp_path / "ok", "fx", call))
    assert torch.equal(model(torch.zeros(1)), torch.full((1,), 6.0))
    with pytest.raises(SpecTooLargeError):
        rebuild_from_output(_write(tmp_path / "tight", "fx", call), limits=ChannelLimits(factory_numel=5))
