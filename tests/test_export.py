"""The sandbox-side producer (runners/_export*.py) on the zoo (tests/zoo).

The producer runs in-process here (it is plain torch code; the sandbox is tested
elsewhere), plus one run through the real runner in a subprocess. Every written
spec is checked against docs/architecture-format.md and rebuilt by a test-only
reference consumer (tests/zoo/_reference_rebuild.py) that resolves targets
through the host's allowlists, so outputs can be compared with the original.
"""

from __future__ import annotations

import copy
import importlib.util
import json
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
RUNNERS = ROOT / "runners"
ZOO = ROOT / "tests" / "zoo"

for p in (str(RUNNERS), str(ZOO)):
    if p not in sys.path:
        sys.path.insert(0, p)

import _export  # noqa: E402  (runners/_export.py)
import _reference_rebuild as ref  # noqa: E402
from conftest import ZOO_CASES, close, outputs_of, zoo_params  # noqa: E402


@pytest.fixture(scope="module")
def zoo():
    spec = importlib.util.spec_from_file_location("safehub_test_zoo_hubconf", ZOO / "hubconf.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def export(zoo, name: str, tmp_path: Path, **kw: Any) -> tuple[Any, Path, dict]:
    obj = getattr(zoo, name)()
    out = tmp_path / name
    summary = _export.export_object(
        obj,
        str(out),
        options=kw.pop("options", {}),
        example_inputs=kw.pop("example_inputs", None),
        hubconf=zoo,
        entrypoint=name,
    )
    assert not kw
    return obj, out, summary


def tensors_in(x: Any) -> list[torch.Tensor]:
    if isinstance(x, torch.Tensor):
        return [x]
    if isinstance(x, (tuple, list)):
        return [t for v in x for t in tensors_in(v)]
    if isinstance(x, dict):
        return [t for v in x.values() for t in tensors_in(v)]
    return []


def grads(model: torch.nn.Module, out: Any) -> dict[str, torch.Tensor]:
    model.zero_grad()
    loss = sum((t.float() ** 2).sum() for t in tensors_in(out) if t.is_floating_point())
    loss.backward()
    named = {}
    for name, p in model.named_parameters():
        if p.grad is not None:
            named[name] = p.grad.detach().clone()
    return named


def module_tree(rebuilt: torch.nn.Module) -> torch.nn.Module:
    """The module holding the parameters (the reference wraps its tree)."""
    return rebuilt.root if isinstance(rebuilt, ref.Dispatch) else rebuilt


def reference_rebuild(out: Path) -> tuple[dict, Any]:
    return ref.check_and_rebuild(out)


def check_roundtrip(zoo, tmp_path: Path, name: str, rebuild) -> dict:
    """Export ``name``, rebuild it, and compare with the original: eval outputs at
    two batch sizes, train outputs under one seed, gradients, running stats."""
    make_inputs, expected_mode = ZOO_CASES[name]
    original, out, summary = export(zoo, name, tmp_path)
    assert summary["modules"]["m0"]["mode"] == expected_mode, summary
    spec, rebuilt = rebuild(out)
    assert spec["root"] == {"module": "m0"}
    assert rebuilt.training == original.training
    # A copy keeps the original's running statistics for the train-mode comparison.
    twin = copy.deepcopy(original)
    for batch in (2, 5):
        x = make_inputs(batch)
        with torch.no_grad():
            assert close(outputs_of(original, x, train=False), outputs_of(rebuilt, x, train=False)), (name, batch)
    # Train mode with identical seeds: dropout masks, stochastic depth and
    # BatchNorm batch statistics must all match the original exactly.
    x = make_inputs(4)
    y_orig = outputs_of(twin, x, train=True, seed=123)
    y_new = outputs_of(rebuilt, x, train=True, seed=123)
    assert close(y_orig, y_new), name
    tree = module_tree(rebuilt)
    g_orig, g_new = grads(twin, y_orig), grads(tree, y_new)
    assert g_orig, name
    aliases = spec["modules"]["m0"]["aliases"]
    for k, g in g_orig.items():
        key = aliases.get(k, k)  # tied parameters report their grad once
        assert key in g_new, (name, k)
        assert torch.allclose(g, g_new[key], rtol=1e-4, atol=1e-6), (name, k)
    # Running statistics were updated the same way.
    buffers_new = dict(tree.named_buffers())
    checked = 0
    for k, b in twin.named_buffers():
        if k in buffers_new:
            assert torch.allclose(b.float(), buffers_new[k].float()), (name, k)
            checked += 1
    assert checked == sum(1 for _ in twin.named_buffers()), name
    return spec


@pytest.mark.parametrize("name", zoo_params(ZOO_CASES))
def test_zoo_roundtrip(zoo, tmp_path: Path, name: str) -> None:
    check_roundtrip(zoo, tmp_path, name, reference_rebuild)


def test_resnet_spec_shape(zoo, tmp_path: Path) -> None:
    model, out, summary = export(zoo, "resnet", tmp_path)
    spec = json.loads((out / "spec.json").read_text())
    m = spec["modules"]["m0"]
    assert m["mode"] == "fx"
    assert m["leaves"]["stem.0"]["cls"] == "Conv2d"
    assert m["leaves"]["stem.0"]["kwargs"]["kernel_size"] == {"tuple": [3, 3]}
    assert m["leaves"]["layer1.0.bn1"]["cls"] == "BatchNorm2d"
    assert m["tensors"]["layer1.0.bn1.num_batches_tracked"] == {
        "dtype": "int64", "shape": [], "kind": "buffer", "requires_grad": False, "persistent": True,
    }  # fmt: skip
    assert m["tensors"]["fc.weight"]["kind"] == "parameter" and m["tensors"]["fc.weight"]["requires_grad"]
    assert set(m["tensors"]) == set(model.state_dict())
    assert m["submodules"]["layer1.0"] == {"training": True}
    # BatchNorm leaves carry the train behaviour, so one graph serves both modes.
    assert list(m["graphs"]) == ["eval"]
    assert summary == {
        "root": "module", "weight_bytes": summary["weight_bytes"],
        "modules": {"m0": {**summary["modules"]["m0"], "mode": "fx", "graphs": ["eval"], "tensors": len(m["tensors"])}},
    }  # fmt: skip


def test_flags_round_trip(zoo, tmp_path: Path) -> None:
    model = zoo.resnet()
    model.eval()
    model.layer1.train()
    model.fc.weight.requires_grad_(False)
    out = tmp_path / "flags"
    _export.export_object(model, str(out), options={}, example_inputs=None, hubconf=zoo, entrypoint="resnet")
    spec, rebuilt = ref.check_and_rebuild(out)
    m = spec["modules"]["m0"]
    assert m["training"] is False
    assert m["submodules"]["layer1"]["training"] is True
    assert m["leaves"]["layer1.0.bn1"]["training"] is True and m["leaves"]["stem.1"]["training"] is False
    assert m["tensors"]["fc.weight"]["requires_grad"] is False and m["tensors"]["fc.bias"]["requires_grad"] is True
    assert model.training is False and model.layer1.training is True  # the exporter restored the flags


def test_stochastic_depth_has_train_graph(zoo, tmp_path: Path) -> None:
    _, out, summary = export(zoo, "stochastic_depth", tmp_path)
    m = json.loads((out / "spec.json").read_text())["modules"]["m0"]
    assert set(m["graphs"]) == {"eval", "train"}
    train_targets = {n["target"] for n in m["graphs"]["train"]["nodes"]}
    eval_targets = {n["target"] for n in m["graphs"]["eval"]["nodes"]}
    assert "bernoulli_" in train_targets and "bernoulli_" not in eval_targets  # traced through torch.fx.wrap
    _, rebuilt = ref.check_and_rebuild(out)
    rebuilt.train()
    x = torch.randn(4000, 8)
    torch.manual_seed(0)
    a = rebuilt(x)
    b = rebuilt(x)
    assert not torch.equal(a, b)  # stochastic in train mode
    rebuilt.eval()
    assert torch.equal(rebuilt(x), rebuilt(x))


def test_tied_weights_become_aliases(zoo, tmp_path: Path) -> None:
    _, out, _ = export(zoo, "tied", tmp_path)
    spec, rebuilt = ref.check_and_rebuild(out)
    m = spec["modules"]["m0"]
    assert m["aliases"] == {"lm_head.weight": "embed.weight"}
    assert "lm_head.weight" not in m["tensors"]
    assert rebuilt.root.lm_head.weight is rebuilt.root.embed.weight


def test_shared_submodule(zoo, tmp_path: Path) -> None:
    _, out, _ = export(zoo, "shared", tmp_path)
    m = json.loads((out / "spec.json").read_text())["modules"]["m0"]
    assert "block.0" in m["leaves"] and "again.0" not in m["leaves"]
    assert m["aliases"] == {"again.0.weight": "block.0.weight", "again.0.bias": "block.0.bias"}
    calls = [n["target"] for n in m["graphs"]["eval"]["nodes"] if n["op"] == "call_module"]
    assert calls.count("block.0") == 3


def test_nonpersistent_buffers_and_constants(zoo, tmp_path: Path) -> None:
    model, out, _ = export(zoo, "nonpersistent", tmp_path)
    m = json.loads((out / "spec.json").read_text())["modules"]["m0"]
    assert m["tensors"]["scale"]["kind"] == "buffer" and m["tensors"]["scale"]["persistent"] is False
    assert m["tensors"]["shift"]["persistent"] is True
    assert m["tensors"]["table"]["kind"] == "constant"
    assert not any(k.startswith("_tensor_constant") for k in vars(model))  # the model was left untouched


def test_weight_norm_exports_original_tensors(zoo, tmp_path: Path) -> None:
    _, out, _ = export(zoo, "weightnorm", tmp_path)
    m = json.loads((out / "spec.json").read_text())["modules"]["m0"]
    assert {"conv.parametrizations.weight.original0", "conv.parametrizations.weight.original1"} <= set(m["tensors"])
    assert "conv.weight" not in m["tensors"] and not m["leaves"]


def test_recurrent_leaves(zoo, tmp_path: Path) -> None:
    _, out, _ = export(zoo, "recurrent", tmp_path)
    m = json.loads((out / "spec.json").read_text())["modules"]["m0"]
    assert m["leaves"]["lstm"] == {
        "cls": "LSTM",
        "kwargs": {"input_size": 6, "hidden_size": 8, "num_layers": 2, "batch_first": True, "bidirectional": True},
        "training": True,
    }
    assert m["leaves"]["gru"]["cls"] == "GRU"


def test_transformer_leaf_kwargs(zoo, tmp_path: Path) -> None:
    _, out, _ = export(zoo, "transformer", tmp_path)
    m = json.loads((out / "spec.json").read_text())["modules"]["m0"]
    assert m["leaves"]["attn"]["cls"] == "MultiheadAttention"
    assert m["leaves"]["attn"]["kwargs"]["batch_first"] is True
    assert m["leaves"]["attn"]["kwargs"]["dropout"] == {"float": "0.1"}
    assert m["leaves"]["ln2"]["kwargs"]["bias"] is False


def test_containers(zoo, tmp_path: Path) -> None:
    (cnn, head), out, summary = export(zoo, "pair", tmp_path)
    spec, (r_cnn, r_head) = ref.check_and_rebuild(out)
    assert spec["root"] == {"tuple": [{"module": "m0"}, {"module": "m1"}]}
    x = torch.randn(2, 3, 16, 16)
    cnn.eval(), head.eval(), r_cnn.eval(), r_head.eval()
    with torch.no_grad():
        assert close(head(cnn(x)), r_head(r_cnn(x)))

    obj, out, summary = export(zoo, "separator", tmp_path)
    spec, rebuilt = ref.check_and_rebuild(out)
    assert spec["root"] == {"dict": {"vocals": {"module": "m0"}, "others": {"list": [{"module": "m1"}, {"module": "m2"}]}}}
    assert set(summary["modules"]) == {"m0", "m1", "m2"}
    with torch.no_grad():
        v = torch.randn(2, 3)
        assert close(obj["others"][1](v), rebuilt["others"][1](v))


def test_same_module_twice_in_container(tmp_path: Path) -> None:
    lin = torch.nn.Linear(2, 2)
    _export.export_object((lin, {"again": lin}), str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    spec = json.loads((tmp_path / "spec.json").read_text())
    assert spec["root"] == {"tuple": [{"module": "m0"}, {"dict": {"again": {"module": "m0"}}}]}
    assert list(spec["modules"]) == ["m0"]


@pytest.mark.parametrize("name", ["plain_function", "scripted"])
def test_unsupported_returns(zoo, tmp_path: Path, name: str) -> None:
    with pytest.raises(_export.UnsupportedReturn) as info:
        export(zoo, name, tmp_path)
    assert isinstance(info.value, TypeError)
    assert ("function" in str(info.value)) if name == "plain_function" else ("TorchScript" in str(info.value))
    assert not (tmp_path / name / "spec.json").exists()


def test_unsupported_objects_name_their_type(tmp_path: Path) -> None:
    class Wrapper:
        pass

    with pytest.raises(_export.UnsupportedReturn, match="Wrapper"):
        _export.export_object(Wrapper(), str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    with pytest.raises(_export.UnsupportedReturn, match="key 3"):
        _export.export_object({3: torch.nn.Linear(1, 1)}, str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")


def test_data_dependent_without_examples_explains(tmp_path: Path) -> None:
    import zoo_models

    with pytest.raises(_export.ExportFailed) as info:
        _export.export_object(zoo_models.DataDependent(), str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    msg = str(info.value)
    assert "fx tracing failed" in msg and "example_inputs" in msg


def test_mode_fx_is_strict(zoo, tmp_path: Path) -> None:
    with pytest.raises(_export.ExportFailed, match="fx mode failed.*export='aten'"):
        export(zoo, "data_dependent", tmp_path, options={"mode": "fx"})
    with pytest.raises(_export.ExportFailed, match="unknown export mode"):
        export(zoo, "resnet", tmp_path, options={"mode": "pickle"})


@pytest.mark.slow
def test_aten_mode_cnn_train_graph(zoo, tmp_path: Path) -> None:
    model, out, summary = export(zoo, "aten_cnn", tmp_path, options={"mode": "aten"})
    assert summary["modules"]["m0"]["mode"] == "aten" and summary["modules"]["m0"]["dynamic_batch"] is True
    spec, rebuilt = ref.check_and_rebuild(out)
    m = spec["modules"]["m0"]
    assert set(m["graphs"]) == {"eval", "train"} and not m["leaves"]
    train_targets = {n["target"] for n in m["graphs"]["train"]["nodes"]}
    assert "aten.add_.Tensor" in train_targets  # num_batches_tracked += 1
    assert all(n["target"].startswith(("aten.", "operator.", "torch.sym", "output")) or n["op"] in ("placeholder", "get_attr")
               for g in m["graphs"].values() for n in g["nodes"])  # fmt: skip
    twin = copy.deepcopy(model)
    x = torch.randn(3, 3, 16, 16)
    assert close(outputs_of(twin, x if isinstance(x, tuple) else (x,), train=True), outputs_of(rebuilt, (x,), train=True))
    assert torch.equal(twin.stem[1].running_mean, rebuilt.root.get_submodule("stem.1").running_mean)
    assert int(rebuilt.root.get_submodule("stem.1").num_batches_tracked) == 1
    with torch.no_grad():
        for b in (1, 7):
            x = torch.randn(b, 3, 16, 16)
            assert close(outputs_of(twin, (x,), train=False), outputs_of(rebuilt, (x,), train=False))


def test_explicit_example_inputs_win_and_batch_one_is_widened(zoo, tmp_path: Path) -> None:
    _, out, summary = export(zoo, "data_dependent", tmp_path, example_inputs=(torch.randn(1, 3, 8),))
    assert summary["modules"]["m0"]["dynamic_batch"] is True
    spec, rebuilt = ref.check_and_rebuild(out)
    rebuilt.eval()
    original = zoo.data_dependent().eval()
    with torch.no_grad():
        for b in (1, 4):
            x = torch.randn(b, 3, 8)  # the short branch: traced with length 8
            assert close(original(x), rebuilt(x))


@pytest.mark.parametrize(
    "entry, example, mode",
    [("resnet", None, "fx"), ("data_dependent", None, "aten"), ("tuple_output", (torch.randn(2, 3),), "fx")],
)
@pytest.mark.slow
def test_through_the_runner(tmp_path: Path, entry: str, example: Any, mode: str) -> None:
    """The real runner script in a fresh interpreter, as the sandbox runs it: the
    hubconf's example_inputs dict (data_dependent) and host-sent example inputs."""
    import pickle

    job = tmp_path / "job"
    (job / "in").mkdir(parents=True)
    (job / "out").mkdir()
    request = {"protocol": 1, "action": "load", "repo_dir": str(ZOO), "entrypoint": entry, "export": {}, "confine": {}}
    (job / "in" / "request.json").write_text(json.dumps(request))
    if example is not None:
        (job / "in" / "example_inputs.pkl").write_bytes(pickle.dumps(example))
    proc = subprocess.run(
        [sys.executable, "-I", "-B", str(RUNNERS / "safehub_runner.py"), str(job)],
        capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    result = json.loads((job / "out" / "result.json").read_text())
    assert result["status"] == "ok", result
    assert result["summary"]["modules"]["m0"]["mode"] == mode
    ref.check_and_rebuild(job / "out")
    assert sorted(p.name for p in (job / "out").iterdir()) == ["result.json", "spec.json", "weights.safetensors"]


@pytest.mark.slow
def test_runner_reports_unsupported_return(tmp_path: Path) -> None:
    job = tmp_path / "job"
    (job / "in").mkdir(parents=True)
    (job / "out").mkdir()
    request = {"protocol": 1, "action": "load", "repo_dir": str(ZOO), "entrypoint": "plain_function", "export": {}, "confine": {}}
    (job / "in" / "request.json").write_text(json.dumps(request))
    proc = subprocess.run([sys.executable, "-I", "-B", str(RUNNERS / "safehub_runner.py"), str(job)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    result = json.loads((job / "out" / "result.json").read_text())
    assert result["status"] == "error" and result["error"]["category"] == "unsupported_return"
    assert "function" in result["error"]["message"]
    assert not (job / "out" / "spec.json").exists()


class _ItemScale(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        return self.lin(x) * 2.0


def test_host_refused_method_falls_back_to_aten(tmp_path: Path) -> None:
    class UsesItem(_ItemScale):
        def forward(self, x):
            return self.lin(x) * x.abs().max().item()

    model = UsesItem()
    with pytest.raises(_export.ExportFailed, match="item"):
        _export.export_object(model, str(tmp_path / "a"), options={"mode": "fx"}, example_inputs=None, hubconf=None, entrypoint="x")
    x = torch.randn(2, 3)
    summary = _export.export_object(model, str(tmp_path / "b"), options={}, example_inputs=(x,), hubconf=None, entrypoint="x")
    assert summary["modules"]["m0"]["mode"] == "aten" and "item" in summary["modules"]["m0"]["fx_error"]
    _, rebuilt = ref.check_and_rebuild(tmp_path / "b")
    with torch.no_grad():
        assert close(model(x), rebuilt(x))


def test_root_forward_hooks_are_not_dropped(tmp_path: Path) -> None:
    model = _ItemScale()
    model.register_forward_hook(lambda mod, args, out: out + 100.0)
    x = torch.randn(2, 3)
    with pytest.raises(_export.ExportFailed, match="hooks"):
        _export.export_object(model, str(tmp_path / "a"), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    _export.export_object(model, str(tmp_path / "b"), options={}, example_inputs=(x,), hubconf=None, entrypoint="x")
    _, rebuilt = ref.check_and_rebuild(tmp_path / "b")
    with torch.no_grad():
        assert close(model(x), rebuilt(x))


def test_leaf_hooks_trace_through(tmp_path: Path) -> None:
    model = _ItemScale()
    model.lin.register_forward_hook(lambda mod, args, out: out * 0.0 + 7.0)
    _export.export_object(model, str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    spec, rebuilt = ref.check_and_rebuild(tmp_path)
    assert "lin" not in spec["modules"]["m0"]["leaves"]
    with torch.no_grad():
        x = torch.randn(2, 3)
        assert close(model(x), rebuilt(x))


def test_non_default_dtype_leaves(tmp_path: Path) -> None:
    model = torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.LayerNorm(4)).to(torch.float64)
    _export.export_object(model, str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    spec, rebuilt = ref.check_and_rebuild(tmp_path)
    assert spec["modules"]["m0"]["leaves"]["0"]["kwargs"]["dtype"] == {"dtype": "float64"}
    x = torch.randn(2, 4, dtype=torch.float64)
    with torch.no_grad():
        assert close(model(x), rebuilt(x))


@pytest.mark.slow
def test_export_leaves_model_state_alone(zoo) -> None:
    model = zoo.aten_cnn()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    import tempfile

    with tempfile.TemporaryDirectory() as d:
        _export.export_object(model, d, options={"mode": "aten"}, example_inputs=None, hubconf=zoo, entrypoint="aten_cnn")
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert model.training is True


def test_tensors_sharing_storage_are_written_separately(tmp_path: Path) -> None:
    class Views(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            base = torch.arange(6.0)
            self.register_buffer("a", base[:3])
            self.register_buffer("b", base[3:])
            self.w = torch.nn.Parameter(torch.randn(3, 2))
            self.register_buffer("wt", self.w.detach().t())  # non-contiguous view of a parameter

        def forward(self, x):
            return x * self.a + self.b + self.wt.sum()

    model = Views()
    _export.export_object(model, str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    spec, rebuilt = ref.check_and_rebuild(tmp_path)
    assert spec["modules"]["m0"]["aliases"] == {}
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert close(model(x), rebuilt(x))


def test_bad_example_inputs_are_reported_as_such(zoo, tmp_path: Path) -> None:
    with pytest.raises(_export.ExportFailed, match="fails on the example inputs.*example_inputs"):
        export(zoo, "resnet", tmp_path, example_inputs=(torch.randn(2, 5),))


def test_module_without_forward(tmp_path: Path) -> None:
    class Holder(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.netG = torch.nn.Linear(2, 2)

    with pytest.raises(_export.ExportFailed, match="no forward"):
        _export.export_object(Holder(), str(tmp_path), options={}, example_inputs=None, hubconf=None, entrypoint="x")


def test_no_grad_regions_keep_their_gradients(tmp_path: Path) -> None:
    """fx cannot record `with torch.no_grad()`; values leaving such a region are
    detached, so gradients match the original (none for the frozen part)."""

    class Frozen(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.backbone = torch.nn.Linear(3, 3)
            self.rnn = torch.nn.GRU(3, 3, batch_first=True)
            self.head = torch.nn.Linear(3, 3)

        def forward(self, x):
            with torch.no_grad():
                feats = self.backbone(x)
                width = feats.shape[-1]
                seq, _ = self.rnn(feats.unsqueeze(1))
            return self.head(feats) * width + seq.squeeze(1)

    model = Frozen()
    _export.export_object(model, str(tmp_path), options={"mode": "fx"}, example_inputs=None, hubconf=None, entrypoint="x")
    spec, rebuilt = ref.check_and_rebuild(tmp_path)
    detaches = [n for n in spec["modules"]["m0"]["graphs"]["eval"]["nodes"] if n["target"] == "detach"]
    assert len(detaches) == 2  # feats and seq leave the region; width is an int
    x = torch.randn(2, 3)
    y_orig, y_new = model(x), rebuilt(x)
    assert close(y_orig, y_new)
    g_orig, g_new = grads(model, y_orig), grads(rebuilt.root, y_new)
    assert set(g_orig) == set(g_new) == {"head.weight", "head.bias"}
    assert all(torch.allclose(g_orig[k], g_new[k]) for k in g_orig)


def test_module_containers_and_depth(tmp_path: Path) -> None:
    heads = torch.nn.ModuleList([torch.nn.Linear(2, 2), torch.nn.Linear(2, 3)])
    table = torch.nn.ModuleDict({"a": torch.nn.Linear(2, 2)})
    _export.export_object((heads, table), str(tmp_path / "c"), options={}, example_inputs=None, hubconf=None, entrypoint="x")
    spec = json.loads((tmp_path / "c" / "spec.json").read_text())
    assert spec["root"] == {"tuple": [{"list": [{"module": "m0"}, {"module": "m1"}]}, {"dict": {"a": {"module": "m2"}}}]}
    deep: Any = torch.nn.Linear(1, 1)
    for _ in range(9):
        deep = [deep]
    with pytest.raises(_export.UnsupportedReturn, match="deeper than 8"):
        _export.export_object(deep, str(tmp_path / "d"), options={}, example_inputs=None, hubconf=None, entrypoint="x")


def test_hubconf_example_inputs_that_fail(tmp_path: Path) -> None:
    class Hub:
        example_inputs = {"entry": lambda: 1 / 0}

    with pytest.raises(_export.ExportFailed, match=r"example_inputs\['entry'\].*ZeroDivisionError"):
        _export.export_object(torch.nn.Linear(2, 2), str(tmp_path), options={}, example_inputs=None, hubconf=Hub, entrypoint="entry")


@pytest.mark.slow
def test_aten_graphs_refuse_inputs_they_were_not_traced_for(zoo, tmp_path: Path) -> None:
    """export's input guards do not survive ep.module(); the producer re-emits
    them as graph asserts so the host fails loudly instead of answering wrongly."""

    class BatchBranch(torch.nn.Module):
        def forward(self, x):
            if x.shape[0] > 4:
                return x * 2
            return x.view(x.shape[0], -1) + 1

    _export.export_object(BatchBranch(), str(tmp_path / "b"), options={"mode": "aten"}, example_inputs=(torch.randn(6, 3),), hubconf=None, entrypoint="x")
    _, rebuilt = ref.check_and_rebuild(tmp_path / "b")
    assert close(rebuilt(torch.ones(9, 3)), torch.full((9, 3), 2.0))
    with pytest.raises(RuntimeError, match="dim 0 must be >= 5"):
        rebuilt(torch.ones(2, 3))  # the model would take the other branch

    # data_dependent unrolls a loop over the length: another length must not run.
    _, out, _ = export(zoo, "data_dependent", tmp_path)
    _, rebuilt = ref.check_and_rebuild(out)
    rebuilt.eval()
    assert rebuilt(torch.randn(3, 3, 20)).shape == (3, 2)
    with pytest.raises(RuntimeError, match="dim 2 must be 20"):
        rebuilt(torch.randn(3, 3, 30))


# ---------------------------------------------------------------------------
# Producer -> host consumer round trips: the zoo rebuilt by safehub._channel.rebuild_from_output
# (the real host path).


def consumer_rebuild(out: Path):
    from safehub._channel import rebuild_from_output

    return json.loads((out / "spec.json").read_text()), rebuild_from_output(out)


@pytest.mark.parametrize("name", zoo_params(ZOO_CASES))
def test_zoo_roundtrip_through_host_consumer(zoo, tmp_path: Path, name: str) -> None:
    check_roundtrip(zoo, tmp_path, name, consumer_rebuild)


def test_containers_through_host_consumer(zoo, tmp_path: Path) -> None:
    obj, out, _ = export(zoo, "separator", tmp_path)
    _, rebuilt = consumer_rebuild(out)
    assert set(rebuilt) == {"vocals", "others"} and len(rebuilt["others"]) == 2
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert close(outputs_of(obj["vocals"], (x,), train=False), outputs_of(rebuilt["vocals"], (x,), train=False))


@pytest.mark.slow
def test_aten_cnn_through_host_consumer(zoo, tmp_path: Path) -> None:
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


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo_params(ZOO_CASES))
def test_zoo_in_aten_mode_through_host_consumer(zoo, tmp_path: Path, name: str) -> None:
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


# --- issue 11: retries, hints, .data -------------------------------------------


class _VarArgs(torch.nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, *args):
        return self.lin(args[0]) + args[1]


def test_forward_star_args_exports_with_a_dynamic_batch(tmp_path: Path) -> None:
    """A flat dynamic_shapes tuple has the wrong structure for forward(*args)."""
    model = _VarArgs().eval()
    x, y = torch.randn(2, 3), torch.randn(2, 3)
    summary = _export.export_object(model, str(tmp_path / "v"), options={"mode": "aten"}, example_inputs=(x, y),
                                    hubconf=None, entrypoint="v")
    info = summary["modules"]["m0"]
    assert info["dynamic_batch"] is True
    assert info["attempts"][0] == {"dynamic": True, "strict": False, "error": None, "graph": "eval"}
    from safehub._channel import rebuild_from_output

    rebuilt = rebuild_from_output(tmp_path / "v")
    for b in (1, 3, 5):
        x, y = torch.randn(b, 3), torch.randn(b, 3)
        assert close(rebuilt(x, y), model(x, y))


class _StrictOnly(torch.nn.Module):
    """Fails non-strict export only (a Python-side check that reads a global
    counter the non-strict tracer cannot see through), to exercise the retry order."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = torch.nn.Linear(3, 3)

    def forward(self, x):
        if not torch.compiler.is_dynamo_compiling():
            raise RuntimeError("only under strict export")
        return self.lin(x)


def test_retries_record_every_attempt(tmp_path: Path) -> None:
    model = _StrictOnly().eval()
    summary = _export.export_object(model, str(tmp_path / "s"), options={"mode": "aten"},
                                    example_inputs=(torch.randn(2, 3),), hubconf=None, entrypoint="s")
    attempts = [a for a in summary["modules"]["m0"]["attempts"] if a["graph"] == "eval"]
    assert [(a["dynamic"], a["strict"]) for a in attempts] == [(True, False), (False, False), (False, True)]
    assert "only under strict export" in attempts[0]["error"] and attempts[-1]["error"] is None


def test_aten_failure_hint_names_export_and_spares_good_inputs(tmp_path: Path) -> None:
    class Bad(torch.nn.Module):
        def forward(self, x):
            raise ValueError("broken model")

    with pytest.raises(_export.ExportFailed) as err:
        _export.export_object(Bad(), str(tmp_path / "b"), options={"mode": "aten"},
                              example_inputs=(torch.randn(2, 3),), hubconf=None, entrypoint="b")
    msg = str(err.value)
    assert "mode=" not in msg.replace("export='", "")
    assert "export='fx'" in msg and "rejected every attempt" in msg


def test_fx_graph_reading_dot_data_is_carried(tmp_path: Path) -> None:
    class UsesData(torch.nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.lin = torch.nn.Linear(3, 3)

        def forward(self, x):
            return self.lin(x.data) + self.lin.weight.data.sum()

    model = UsesData()
    summary = _export.export_object(model, str(tmp_path / "d"), options={"mode": "fx"}, example_inputs=None,
                                    hubconf=None, entrypoint="d")
    assert summary["modules"]["m0"]["mode"] == "fx"
    from safehub._channel import rebuild_from_output

    rebuilt = rebuild_from_output(tmp_path / "d")
    x = torch.randn(4, 3)
    assert close(rebuilt(x), model(x))


def test_batch_specialised_by_len_is_guarded(tmp_path: Path) -> None:
    """len(x) specialises the batch to a SymInt with a constant value and no range
    constraint: the graph must still refuse another batch instead of dividing by 2."""
    import zoo_fxfail
    from safehub._channel import rebuild_from_output

    model = zoo_fxfail.LenOfTensor().eval()
    summary = _export.export_object(model, str(tmp_path / "l"), options={"mode": "aten"},
                                    example_inputs=(torch.randn(2, 6),), hubconf=None, entrypoint="l")
    assert summary["modules"]["m0"]["dynamic_batch"] is False
    rebuilt = rebuild_from_output(tmp_path / "l").eval()
    x = torch.randn(2, 6)
    assert close(rebuilt(x), model(x))
    with pytest.raises(RuntimeError, match="dim 0 must be 2"):
        rebuilt(torch.randn(5, 6))
