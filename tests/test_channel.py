"""rebuild_from_output on hand-written specs: equivalence with the original
module in eval and train, gradients, tied weights, flags, devices, copying."""

from __future__ import annotations

import copy
import json
import pickle
import sys
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import specgen  # noqa: E402

from safehub._channel import ChannelLimits, rebuild_from_output  # noqa: E402
from safehub._channel._module import SafehubGraphModule  # noqa: E402
from safehub._errors import UnsafeSpecError  # noqa: E402


class Net(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.fc1 = nn.Linear(4, 8)
        self.bn = nn.BatchNorm1d(8)
        self.drop = nn.Dropout(0.5)
        self.block = nn.Module()
        self.block.proj = nn.Linear(8, 8)
        self.block.gain = nn.Parameter(torch.full((8,), 0.5))
        self.fc2 = nn.Linear(8, 3)
        self.register_buffer("offset", torch.arange(3.0), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn(self.fc1(x)))
        h = self.drop(h)
        h = self.block.proj(h) * self.block.gain
        y = self.fc2(h) + self.offset
        return y.view(x.shape[0], -1)


class Tied(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 6)
        self.head = nn.Linear(6, 10, bias=False)
        self.head.weight = self.embed.weight

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        return self.head(self.embed(idx))


def rebuild(model: nn.Module, tmp_path: Path, **kw):
    spec, weights = specgen.full_spec(model)
    return rebuild_from_output(specgen.write(tmp_path / "out", spec, weights), **kw)


def outputs(model: nn.Module, x: torch.Tensor, train: bool) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(0)
    return model(x)


def test_eval_and_train_match_original(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = Net()
    original.bn.running_mean.uniform_()
    original.eval()
    rebuilt = rebuild(original, tmp_path)
    assert isinstance(rebuilt, SafehubGraphModule) and isinstance(rebuilt, torch.fx.GraphModule)
    assert rebuilt.training is False
    x = torch.randn(5, 4)
    for train in (False, True):
        assert torch.allclose(outputs(original, x, train), outputs(rebuilt, x, train))
    # train mode really runs dropout and updates the BatchNorm running stats
    rebuilt.train()
    before = rebuilt.bn.running_mean.clone()
    count = int(rebuilt.bn.num_batches_tracked)
    rebuilt(x)
    assert not torch.equal(before, rebuilt.bn.running_mean)
    assert int(rebuilt.bn.num_batches_tracked) == count + 1


def test_gradients_flow_to_every_parameter(tmp_path: Path) -> None:
    torch.manual_seed(0)
    original = Net()
    rebuilt = rebuild(original, tmp_path)
    x = torch.randn(5, 4)
    outputs(original, x, True).pow(2).sum().backward()
    outputs(rebuilt, x, True).pow(2).sum().backward()
    grads = dict(original.named_parameters())
    for name, p in rebuilt.named_parameters():
        assert p.grad is not None, name
        assert torch.allclose(p.grad, grads[name].grad, atol=1e-6), name


def test_state_dict_and_persistence(tmp_path: Path) -> None:
    original = Net()
    rebuilt = rebuild(original, tmp_path)
    assert rebuilt.state_dict().keys() == original.state_dict().keys()
    assert "offset" not in rebuilt.state_dict()
    assert torch.equal(rebuilt.offset, torch.arange(3.0))
    for key, value in original.state_dict().items():
        assert torch.equal(rebuilt.state_dict()[key], value)
    assert isinstance(rebuilt.block, nn.Module) and isinstance(rebuilt.block.gain, nn.Parameter)


def test_leaf_replacement_applies_to_both_graphs(tmp_path: Path) -> None:
    rebuilt = rebuild(Net(), tmp_path)
    rebuilt.fc2 = nn.Linear(8, 3)
    nn.init.zeros_(rebuilt.fc2.weight)
    nn.init.zeros_(rebuilt.fc2.bias)
    x = torch.randn(2, 4)
    expected = torch.arange(3.0).expand(2, 3)  # only the offset buffer is left
    assert torch.equal(rebuilt.eval()(x), expected)
    assert torch.equal(rebuilt.train()(x), expected)


def test_tied_weights_share_one_parameter(tmp_path: Path) -> None:
    original = Tied()
    rebuilt = rebuild(original, tmp_path)
    assert rebuilt.head.weight is rebuilt.embed.weight
    assert len(list(rebuilt.parameters())) == 1
    idx = torch.randint(0, 10, (3, 4))
    assert torch.allclose(rebuilt(idx), original(idx))


def test_flags_round_trip(tmp_path: Path) -> None:
    original = Net()
    original.train()
    original.block.eval()  # a mixed-mode model
    original.fc1.weight.requires_grad_(False)
    rebuilt = rebuild(original, tmp_path)
    assert rebuilt.training is True
    assert rebuilt.block.training is False and rebuilt.block.proj.training is False
    assert rebuilt.fc1.training is True
    assert rebuilt.fc1.weight.requires_grad is False and rebuilt.fc2.weight.requires_grad is True


def test_half_precision_leaves(tmp_path: Path) -> None:
    original = Net().to(torch.float64)
    rebuilt = rebuild(original, tmp_path)
    assert rebuilt.fc1.weight.dtype == torch.float64
    x = torch.randn(3, 4, dtype=torch.float64)
    assert torch.allclose(outputs(original, x, False), outputs(rebuilt, x, False))


def test_deepcopy_keeps_both_graphs_and_pickle_refuses(tmp_path: Path) -> None:
    rebuilt = rebuild(Net(), tmp_path)
    clone = copy.deepcopy(rebuilt)
    assert isinstance(clone, SafehubGraphModule)
    assert clone.fc1.weight is not rebuilt.fc1.weight
    assert "offset" not in clone.state_dict()
    x = torch.randn(2, 4)
    assert torch.allclose(clone.eval()(x), rebuilt.eval()(x))
    clone.train()(x)  # the train graph survived the copy
    with pytest.raises(TypeError, match="state_dict"):
        pickle.dumps(rebuilt)


def _device_spec(device_literal: str) -> tuple[dict, dict]:
    graph = {
        "nodes": [
            {"op": "placeholder", "name": "x", "target": "x"},
            {"op": "get_attr", "name": "w", "target": "w"},
            {"op": "call_function", "name": "r", "target": "torch.arange", "args": [3],
             "kwargs": {"device": {"device": device_literal}, "dtype": {"dtype": "float32"}}},
            {"op": "call_function", "name": "a", "target": "operator.add", "args": [{"node": "x"}, {"node": "r"}]},
            {"op": "call_method", "name": "m", "target": "mul", "args": [{"node": "a"}, {"node": "w"}]},
            {"op": "output", "name": "output", "target": "output", "args": [{"tuple": [{"node": "m"}, None]}]},
        ]
    }  # fmt: skip
    module = {
        "mode": "fx", "training": False,
        "tensors": {"w": {"dtype": "float32", "shape": [3], "kind": "parameter", "requires_grad": True}},
        "graphs": {"eval": graph},
    }  # fmt: skip
    spec = {"format": "safehub-arch", "version": 1, "root": {"module": "m0"}, "modules": {"m0": module}}
    return spec, {"m0.w": torch.tensor([1.0, 2.0, 3.0])}


def test_device_literals_are_repointed(tmp_path: Path) -> None:
    spec, weights = _device_spec("cuda:0")  # traced on a GPU, rebuilt here on CPU
    rebuilt = rebuild_from_output(specgen.write(tmp_path / "o", spec, weights))
    out, none = rebuilt(torch.zeros(3))
    assert none is None
    assert torch.equal(out, torch.tensor([0.0, 2.0, 6.0]))
    # the same spec rebuilt for another device: tensors and literals follow it
    meta = rebuild_from_output(tmp_path / "o", device="meta")
    assert meta.w.is_meta
    assert "device(type='meta')" in meta.code
    assert meta(torch.zeros(3, device="meta"))[0].is_meta


def test_cuda_device_literal_rewrite_without_gpu() -> None:
    from safehub._channel._literals import LiteralContext, decode_literal

    ctx = LiteralContext(ChannelLimits(), "test", device=torch.device("cuda", 1))
    assert decode_literal({"device": "cpu"}, ctx) == torch.device("cuda", 1)
    assert decode_literal({"tuple": [{"device": "meta"}, 2]}, ctx) == (torch.device("cuda", 1), 2)


def test_aten_mode_graph(tmp_path: Path) -> None:
    graph = {
        "nodes": [
            {"op": "get_attr", "name": "w", "target": "lin.weight"},
            {"op": "placeholder", "name": "x", "target": "x"},
            {"op": "call_function", "name": "t", "target": "aten.t.default", "args": [{"node": "w"}]},
            {"op": "call_function", "name": "mm", "target": "aten.mm.default", "args": [{"node": "x"}, {"node": "t"}]},
            {"op": "call_function", "name": "relu", "target": "aten.relu.default", "args": [{"node": "mm"}]},
            {"op": "call_function", "name": "sz", "target": "aten.sym_size.int", "args": [{"node": "x"}, 0]},
            {"op": "call_function", "name": "v", "target": "aten.view.default", "args": [{"node": "relu"}, {"list": [{"node": "sz"}, -1]}]},
            {"op": "output", "name": "output", "target": "output", "args": [{"node": "v"}]},
        ]
    }  # fmt: skip
    module = {
        "mode": "aten", "training": False, "submodules": {"lin": {"training": False}},
        "tensors": {"lin.weight": {"dtype": "float32", "shape": [2, 3], "kind": "parameter", "requires_grad": True}},
        "graphs": {"eval": graph, "train": graph},
    }  # fmt: skip
    spec = {"format": "safehub-arch", "version": 1, "root": {"list": [{"module": "m0"}]}, "modules": {"m0": module}}
    w = torch.randn(2, 3)
    (rebuilt,) = rebuild_from_output(specgen.write(tmp_path / "o", spec, {"m0.lin.weight": w}))
    x = torch.randn(4, 3)
    assert torch.allclose(rebuilt(x), torch.relu(x @ w.t()))
    assert rebuilt.lin.training is False


def test_output_files_are_not_modified(tmp_path: Path) -> None:
    out = specgen.write(tmp_path / "o", *specgen.full_spec(Net()))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    rebuild_from_output(out)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before


def test_limits_validate_themselves() -> None:
    with pytest.raises(ValueError):
        ChannelLimits(nodes=-1)
    spec, weights = specgen.full_spec(Net())
    assert len(json.dumps(spec)) > 100


def test_small_limits_reject(tmp_path: Path) -> None:
    out = specgen.write(tmp_path / "o", *specgen.full_spec(Net()))
    with pytest.raises(UnsafeSpecError):
        rebuild_from_output(out, limits=ChannelLimits(nodes=3))
    with pytest.raises(UnsafeSpecError):
        rebuild_from_output(out, limits=ChannelLimits(weights_bytes=100))


def test_weights_do_not_follow_the_file_after_loading(tmp_path: Path) -> None:
    """Loaded tensors own their memory: rewriting or truncating the sandbox's file
    afterwards changes nothing (a copy-on-write mapping would follow it, or SIGBUS)."""
    out = specgen.write(tmp_path / "o", *specgen.full_spec(Tied()))
    rebuilt = rebuild_from_output(out)
    before = rebuilt.embed.weight.detach().clone()
    path = out / "weights.safetensors"
    size = path.stat().st_size
    with open(path, "r+b") as f:
        f.seek(size - 64)
        f.write(b"\xff" * 64)
        f.truncate(16)
    assert torch.equal(rebuilt.embed.weight.detach(), before)


def test_leaf_dtype_kwarg_and_placeholder_default(tmp_path: Path) -> None:
    graph = {
        "nodes": [
            {"op": "placeholder", "name": "x", "target": "x"},
            {"op": "placeholder", "name": "gain", "target": "gain", "args": [{"float": "2.0"}]},
            {"op": "call_module", "name": "fc", "target": "fc", "args": [{"node": "x"}]},
            {"op": "call_function", "name": "mul", "target": "operator.mul", "args": [{"node": "fc"}, {"node": "gain"}]},
            {"op": "output", "name": "output", "target": "output", "args": [{"node": "mul"}]},
        ]
    }  # fmt: skip
    module = {
        "mode": "fx", "training": False,
        "tensors": {
            "fc.weight": {"dtype": "float16", "shape": [2, 2], "kind": "parameter", "requires_grad": True},
            "fc.bias": {"dtype": "float16", "shape": [2], "kind": "parameter", "requires_grad": True},
        },
        "leaves": {"fc": {"cls": "Linear", "kwargs": {"in_features": 2, "out_features": 2, "dtype": {"dtype": "float16"}}}},
        "graphs": {"eval": graph},
    }  # fmt: skip
    spec = {"format": "safehub-arch", "version": 1, "root": {"module": "m0"}, "modules": {"m0": module}}
    weights = {"m0.fc.weight": torch.eye(2, dtype=torch.float16), "m0.fc.bias": torch.zeros(2, dtype=torch.float16)}
    rebuilt = rebuild_from_output(specgen.write(tmp_path / "o", spec, weights))
    x = torch.tensor([[1.0, 3.0]], dtype=torch.float16)
    assert torch.equal(rebuilt(x), x * 2)
    assert torch.equal(rebuilt(x, 0.5), x * 0.5)
    assert rebuilt.fc.weight.dtype == torch.float16


def test_importing_the_channel_does_not_import_torch() -> None:
    import subprocess

    code = "import sys, safehub._channel as c; assert 'torch' not in sys.modules; c.ChannelLimits(); print('ok')"
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=False)
    assert done.returncode == 0 and done.stdout.strip() == "ok", done.stderr
