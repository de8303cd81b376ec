"""Producer -> host consumer round trips: the zoo exported by runners/_export*.py
and rebuilt by safehub._channel.rebuild_from_output (the real host path)."""

from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest
import torch

from test_export import ZOO_CASES, check_roundtrip, close, export, outputs_of, zoo  # noqa: F401  (fixture)


def consumer_rebuild(out: Path):
    from safehub._channel import rebuild_from_output

    return json.loads((out / "spec.json").read_text()), rebuild_from_output(out)


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_roundtrip_through_host_consumer(zoo, tmp_path: Path, name: str) -> None:  # noqa: F811
    check_roundtrip(zoo, tmp_path, name, consumer_rebuild)


def test_containers_through_host_consumer(zoo, tmp_path: Path) -> None:  # noqa: F811
    obj, out, _ = export(zoo, "separator", tmp_path)
    _, rebuilt = consumer_rebuild(out)
    assert set(rebuilt) == {"vocals", "others"} and len(rebuilt["others"]) == 2
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert close(outputs_of(obj["vocals"], (x,), train=False), outputs_of(rebuilt["vocals"], (x,), train=False))


def test_aten_cnn_through_host_consumer(zoo, tmp_path: Path) -> None:  # noqa: F811
    model, out, _ = export(zoo, "aten_cnn", tmp_path, options={"mode": "aten"})
    _, rebuilt = consumer_rebuild(out)
    twin = copy.deepcopy(model)
    x = torch.randn(3, 3, 16, 16)
    assert close(outputs_of(twin, (x,), train=True), outputs_of(rebuilt, (x,), train=True))
    assert torch.equal(twin.get_submodule("stem.1").running_var, rebuilt.get_submodule("stem.1").running_var)
    with torch.no_grad():
        for b in (1, 6):
            x = torch.randn(b, 3, 16, 16)
            assert close(outputs_of(twin, (x,), train=False), outputs_of(rebuilt, (x,), train=False))


@pytest.mark.parametrize("name", sorted(ZOO_CASES))
def test_zoo_in_aten_mode_through_host_consumer(zoo, tmp_path: Path, name: str) -> None:  # noqa: F811
    """Every zoo model also survives aten mode, with a dynamic batch dimension."""
    make_inputs, _ = ZOO_CASES[name]
    model, out, summary = export(zoo, name, tmp_path, options={"mode": "aten"}, example_inputs=make_inputs(2))
    assert summary["modules"]["m0"]["mode"] == "aten" and summary["modules"]["m0"]["dynamic_batch"] is True
    _, rebuilt = consumer_rebuild(out)
    twin = copy.deepcopy(model)
    with torch.no_grad():
        for b in (1, 3):
            x = make_inputs(b)
            assert close(outputs_of(model, x, train=False), outputs_of(rebuilt, x, train=False)), (name, b)
    x = make_inputs(4)
    assert close(outputs_of(twin, x, train=True, seed=5), outputs_of(rebuilt, x, train=True, seed=5)), name
    for k, b in twin.named_buffers():
        assert torch.allclose(b.float(), rebuilt.get_buffer(k).float()), (name, k)
