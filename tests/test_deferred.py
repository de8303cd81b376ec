"""Deferred export (issue 11), the parts that need no sandbox: the load-time
spec, the host-side DeferredModule before any forward, the call structure, and
the sandbox-side export job run in-process. The real round trip is in
tests/test_deferred_e2e.py (slow)."""

from __future__ import annotations

import copy
import json
import sys
from pathlib import Path

import pytest
import torch

ROOT = Path(__file__).resolve().parent.parent
for p in (str(ROOT / "runners"), str(ROOT / "tests" / "zoo")):
    if p not in sys.path:
        sys.path.insert(0, p)

import _export  # noqa: E402
import zoo_fxfail  # noqa: E402
from safehub._channel import rebuild_from_output  # noqa: E402
from safehub._deferred import DeferredModule, call_signature  # noqa: E402
from safehub._errors import ExportError, UnsafeSpecError  # noqa: E402


def _load_deferred(model: torch.nn.Module, out: Path) -> DeferredModule:
    summary = _export.export_object(model, str(out), options={"mode": "auto", "deferred": True},
                                    example_inputs=None, hubconf=None, entrypoint="x")
    assert summary["modules"]["m0"]["mode"] == "deferred" and "fx_error" in summary["modules"]["m0"]
    built = rebuild_from_output(out)
    assert isinstance(built, DeferredModule)
    return built


def test_deferred_module_works_before_any_forward(tmp_path: Path) -> None:
    torch.manual_seed(0)
    model = zoo_fxfail.SizeBranch()
    model.bn.running_mean.add_(1.5)
    ours = _load_deferred(model, tmp_path / "o")
    assert ours.state_dict().keys() == model.state_dict().keys()
    for k, v in model.state_dict().items():
        assert torch.equal(ours.state_dict()[k], v), k
    assert [n for n, _ in ours.named_parameters()] == [n for n, _ in model.named_parameters()]
    assert [n for n, _ in ours.named_modules()] == [n for n, _ in model.named_modules()]
    assert ours.training is True and ours.eval().training is False and ours.bn.training is False
    ours.to(torch.float64)
    assert all(p.dtype == torch.float64 for p in ours.parameters())
    ours.load_state_dict(model.state_dict())  # float32 values copy into the float64 tensors
    assert all(p.requires_grad for p in ours.parameters())
    twin = copy.deepcopy(ours)
    assert twin.state_dict().keys() == ours.state_dict().keys()


def test_without_a_load_job_the_first_forward_explains(tmp_path: Path) -> None:
    ours = _load_deferred(zoo_fxfail.LenOfTensor(), tmp_path / "o")
    with pytest.raises(ExportError, match="never exported"):
        ours(torch.randn(2, 6))


def test_explicit_fx_mode_still_fails_at_load(tmp_path: Path) -> None:
    with pytest.raises(_export.ExportFailed, match="fx mode failed"):
        _export.export_object(zoo_fxfail.LenOfTensor(), str(tmp_path / "o"), options={"mode": "fx", "deferred": True},
                              example_inputs=None, hubconf=None, entrypoint="x")


def test_call_structure_carries_no_data() -> None:
    x = torch.randn(3, 4)
    key, structure = call_signature((x, 2, None, 0.5, True), {})
    assert structure == [{"tensor": {"dtype": "float32", "shape": [3, 4]}}, {"int": 2}, {"none": None},
                         {"float": 0.5}, {"bool": True}]
    assert key[0] == ("tensor", "float32", (3, 4))
    with pytest.raises(ExportError, match="positional arguments only"):
        call_signature((x,), {"mask": x})
    with pytest.raises(ExportError, match="argument 0 is a list"):
        call_signature(([x, x],), {})
    with pytest.raises(ExportError, match="argument 0 is a str"):
        call_signature(("x",), {})


# --- hostile specs ---------------------------------------------------------------


def _tamper(out: Path, edit) -> None:
    spec = json.loads((out / "spec.json").read_text())
    edit(spec["modules"]["m0"])
    (out / "spec.json").write_text(json.dumps(spec))


def test_deferred_spec_with_graphs_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    _load_deferred(zoo_fxfail.LenOfTensor(), out)
    _tamper(out, lambda m: m.update(graphs={"eval": {"nodes": []}}))
    with pytest.raises(UnsafeSpecError, match="deferred module carries no graphs"):
        rebuild_from_output(out)


def test_deferred_spec_with_leaves_is_refused(tmp_path: Path) -> None:
    out = tmp_path / "o"
    _load_deferred(zoo_fxfail.LenOfTensor(), out)
    _tamper(out, lambda m: m.update(leaves={"lin": {"cls": "torch.nn.Linear", "kwargs": {}}}))
    with pytest.raises(UnsafeSpecError, match="deferred-mode modules have no leaves"):
        rebuild_from_output(out)


# --- the sandbox side of the export job, in-process -------------------------------


def _export_job(model: torch.nn.Module, weights_of: torch.nn.Module, tmp_path: Path, args: list, training: bool) -> Path:
    from _safetensors_write import write_safetensors

    in_dir = tmp_path / "in"
    in_dir.mkdir(exist_ok=True)
    write_safetensors(str(in_dir / "weights.safetensors"), {f"m0.{k}": v for k, v in weights_of.state_dict().items()})
    out = tmp_path / "out"
    _export.export_call(model, str(out), {"mid": "m0", "training": training, "args": args}, str(in_dir))
    return out


def test_export_job_loads_the_first_weights_and_exports_for_the_structure(tmp_path: Path) -> None:
    torch.manual_seed(1)
    first = zoo_fxfail.ScriptHelper()
    torch.manual_seed(2)
    rerun = zoo_fxfail.ScriptHelper()  # a different random init: the first load's weights win
    out = _export_job(rerun, first, tmp_path, [{"tensor": {"dtype": "float32", "shape": [3, 5]}}], training=True)
    spec = json.loads((out / "spec.json").read_text())
    assert sorted(spec["modules"]["m0"]["graphs"]) == ["eval", "train"] and spec["modules"]["m0"]["mode"] == "aten"
    gm = rebuild_from_output(out)
    x = torch.randn(4, 5)
    first.eval()
    gm.eval()
    assert torch.allclose(gm(x), first(x), atol=1e-6)


def test_export_job_refuses_a_different_module(tmp_path: Path) -> None:
    with pytest.raises(_export.ExportFailed, match="different module"):
        _export_job(zoo_fxfail.ScalarArg(), zoo_fxfail.ScriptHelper(), tmp_path,
                    [{"tensor": {"dtype": "float32", "shape": [3, 4]}}], training=False)


@pytest.mark.parametrize("args", [
    [{"tensor": {"dtype": "float32", "shape": [3, -4]}}],
    [{"tensor": {"dtype": "object", "shape": [3]}}],
    [{"tensor": {"dtype": "float32", "shape": [1 << 20, 1 << 20]}}],
    [{"code": "print(1)"}],
    [{"int": 1.5}],
])
def test_export_job_refuses_bad_structures(tmp_path: Path, args: list) -> None:
    model = zoo_fxfail.ScalarArg()
    with pytest.raises(_export.ExportFailed, match="argument 0"):
        _export_job(model, model, tmp_path, args, training=False)


# --- objects that hold modules ------------------------------------------------------


def test_object_holding_modules_comes_back_as_a_read_only_namespace(tmp_path: Path) -> None:
    from safehub._namespace import SafehubNamespace

    torch.manual_seed(0)
    gan = zoo_fxfail.GANWrapper()
    summary = _export.export_object(gan, str(tmp_path / "g"), options={"deferred": True}, example_inputs=None,
                                    hubconf=None, entrypoint="gan")
    assert summary["root"] == "object"
    ns = rebuild_from_output(tmp_path / "g")
    assert isinstance(ns, SafehubNamespace) and ns.safehub_type == "GANWrapper"
    assert sorted(dir(ns)) == ["flags", "heads", "image_size", "name", "netD", "netG", "scale"]
    assert (ns.image_size, ns.name, ns.scale, ns.flags) == (16, "pix2pix", 0.5, (True, None, (1, 2)))
    assert isinstance(ns.netD, DeferredModule) and isinstance(ns.heads, list)
    z = torch.randn(3, 4)
    assert torch.allclose(ns.netG(z), gan.netG(z))
    with pytest.raises(AttributeError, match="read-only"):
        ns.netG = None
    with pytest.raises(AttributeError, match="methods are code"):
        ns.generate


@pytest.mark.parametrize("value, match", [
    (lambda x: x, "a function is code"),
    (len, "a function is code"),
    (torch.jit.script(torch.nn.Linear(2, 2)), "TorchScript is compiled code"),
    (object(), "object of type builtins.object"),
])
def test_code_stays_refused_with_a_reason(tmp_path: Path, value, match: str) -> None:
    with pytest.raises(_export.UnsupportedReturn, match=match):
        _export.export_object(value, str(tmp_path / "x"), options={}, example_inputs=None, hubconf=None, entrypoint="x")


def test_object_without_modules_is_refused(tmp_path: Path) -> None:
    class Config:
        def __init__(self) -> None:
            self.size = 3

    with pytest.raises(_export.UnsupportedReturn, match="no nn.Module attributes"):
        _export.export_object(Config(), str(tmp_path / "x"), options={}, example_inputs=None, hubconf=None, entrypoint="x")


@pytest.mark.parametrize("attrs, match", [
    ({"__class__": {"value": 1}}, "not a plain identifier"),
    ({"_hidden": {"value": 1}}, "private"),
    ({"x": {"value": [1, 2]}}, "plain data"),
    ({"x": {"value": {"tuple": [{"code": 1}]}}}, "plain data"),
    ({"x": {"value": "a" * 2000}}, "longer than"),
    ({"x": {"value": 2**70}}, "out of range"),
    ({"x": {"module": "m9"}}, "unknown module"),
])
def test_hostile_object_roots_are_refused(tmp_path: Path, attrs: dict, match: str) -> None:
    out = tmp_path / "o"
    _export.export_object(zoo_fxfail.GANWrapper(), str(out), options={"deferred": True}, example_inputs=None,
                          hubconf=None, entrypoint="gan")
    spec = json.loads((out / "spec.json").read_text())
    spec["root"]["object"]["attrs"] = attrs
    (out / "spec.json").write_text(json.dumps(spec))
    with pytest.raises(UnsafeSpecError, match=match):
        rebuild_from_output(out)


def test_a_graph_for_another_tensor_tree_is_not_swapped_in(tmp_path: Path) -> None:
    """What an export job returns is checked against the loaded tree before use."""
    from safehub._deferred import _bindings
    from safehub._errors import TensorMismatchError

    ours = _load_deferred(zoo_fxfail.ScriptHelper(), tmp_path / "o")
    out = _export_job(zoo_fxfail.ScalarArg(), zoo_fxfail.ScalarArg(), tmp_path,
                      [{"tensor": {"dtype": "float32", "shape": [3, 4]}}], training=False)
    other = rebuild_from_output(out)
    with pytest.raises(TensorMismatchError, match="does not match"):
        _bindings(ours, other)


def test_non_finite_scalars_are_refused() -> None:
    with pytest.raises(ExportError, match="finite"):
        call_signature((torch.zeros(1), float("nan")), {})


def test_numpy_style_scalars_travel_as_their_python_value() -> None:
    class Int64:  # what numpy.int64 offers: __index__, not an int subclass
        def __index__(self) -> int:
            return 3

    class Float64(float):  # numpy.float64 subclasses float
        pass

    key, structure = call_signature((torch.zeros(2), Int64(), Float64(0.25)), {})
    assert structure[1:] == [{"int": 3}, {"float": 0.25}] and key[1] == ("int", 3)


def test_namespace_copies_keep_their_modules_apart() -> None:
    from safehub._namespace import SafehubNamespace

    ns = SafehubNamespace("GAN", {"netG": torch.nn.Linear(2, 2), "size": 3})
    twin = copy.deepcopy(ns)
    assert twin.size == 3 and twin.netG is not ns.netG
    assert torch.equal(twin.netG.weight, ns.netG.weight)
    assert copy.copy(ns).netG is ns.netG


def test_export_after_the_repo_folder_is_gone_explains(tmp_path: Path) -> None:
    from safehub._deferred_jobs import DeferredJob, run_export
    from safehub._jobs import JobRequest

    job = DeferredJob(request=JobRequest(action="load", repo_dir=tmp_path / "gone", entrypoint="x", args_pickle=b""),
                      sha=None, python_env=None, backend=None, hub_dir=tmp_path, weights=tmp_path / "w.safetensors")
    with pytest.raises(ExportError, match="is gone"):
        run_export(job, "m0", False, [], torch.device("cpu"))


def test_the_artifact_cache_keeps_a_deferred_module_and_load_artifact_refuses_it(tmp_path: Path) -> None:
    """The cache's writer keeps a deferred module's tree and tensors (no graph yet);
    safehub.save refuses it, saying why, and so does load_artifact on such a folder:
    without the load that made it, no graph can ever be exported."""
    import json

    import safehub
    from safehub._artifact import _save, load_checked
    from safehub._errors import ArtifactError, ArtifactSaveError

    torch.manual_seed(1)
    ours = _load_deferred(zoo_fxfail.LenOfTensor(), tmp_path / "o")
    with pytest.raises(ArtifactSaveError, match="deferred export") as info:
        safehub.save(ours, tmp_path / "public")
    assert "example_inputs" in str(info.value.hint)
    folder = _save(ours, tmp_path / "entry", deferred=True)
    back, provenance = load_checked(folder)
    assert isinstance(back, DeferredModule)
    assert provenance["modules"] == {"m0": {"mode": "deferred", "graphs": [], "training": True}}
    assert back.state_dict().keys() == ours.state_dict().keys()
    assert all(torch.equal(back.state_dict()[k], v) for k, v in ours.state_dict().items())
    with pytest.raises(ArtifactError, match="artifact-cache entry"):
        safehub.load_artifact(folder)
    with pytest.raises(ExportError, match="never exported"):  # no job: fails closed at the first call
        back(torch.randn(2, 6))
    # A provenance that calls it another mode, or gives a deferred module graphs, is refused.
    prov = folder / "provenance.json"
    good = json.loads(prov.read_text())
    for mode, graphs in (("fx", []), ("deferred", ["eval"])):
        doc = json.loads(json.dumps(good))
        doc["modules"]["m0"].update(mode=mode, graphs=graphs)
        prov.write_text(json.dumps(doc))
        with pytest.raises(ArtifactError, match="invalid mode, graphs"):
            load_checked(folder)


def test_the_artifact_cache_keeps_a_namespace_whole(tmp_path: Path) -> None:
    """A load that returned an object (a namespace of modules and plain data) is kept
    by the cache's writer as the load's own spec; it comes back as the same namespace.
    safehub.save and load_artifact still refuse it, as for deferred modules."""
    import safehub
    from safehub._artifact import _save, load_checked, load_record
    from safehub._errors import ArtifactError, ArtifactSaveError
    from safehub._namespace import SafehubNamespace

    torch.manual_seed(0)
    gan = zoo_fxfail.GANWrapper()
    _export.export_object(gan, str(tmp_path / "g"), options={"deferred": True}, example_inputs=None,
                          hubconf=None, entrypoint="gan")
    ns = rebuild_from_output(tmp_path / "g")
    with pytest.raises(ArtifactSaveError, match="SafehubNamespace"):
        safehub.save(ns, tmp_path / "public")
    spec_raw, provenance = load_record(ns)
    assert spec_raw == (tmp_path / "g" / "spec.json").read_bytes() and provenance["root"] == "object"
    with pytest.raises(ArtifactSaveError, match="not what its load returned"):  # a part of it is not the load
        _save(SafehubNamespace("GANWrapper", {"netG": ns.netG}), tmp_path / "part", deferred=True)
    folder = _save(ns, tmp_path / "entry", deferred=True)
    back, provenance = load_checked(folder)
    assert isinstance(back, SafehubNamespace) and dir(back) == dir(ns)
    assert (back.image_size, back.name, back.scale, back.flags) == (ns.image_size, ns.name, ns.scale, ns.flags)
    assert isinstance(back.netD, DeferredModule)
    z = torch.randn(3, 4)
    assert torch.equal(back.netG(z), ns.netG(z))
    with pytest.raises(ArtifactError, match="artifact-cache entry"):
        safehub.load_artifact(folder)
