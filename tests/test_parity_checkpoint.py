"""torch.hub parity for checkpoints (issue 16): what common training scripts save
must come back, through the real converter (runners/_convert.py, run in process by
a FakeBackend handler: no sandbox here, the slow tier covers the real one) and the
host's reader (safehub/_channel/_checkpoint.py)."""

from __future__ import annotations

import argparse
import enum
import json
import sys
import types
from pathlib import Path

import pytest
import torch

from safehub._errors import UnsafeSpecError
from safehub._checkpoints import load_checkpoint_file
from safehub._sandbox import FakeBackend, FakeJob

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))
import _convert  # noqa: E402  (the runner's own module, stdlib + torch only)


class F64(float):
    """Stands in for numpy.float64 (numpy is not installed): a float subclass whose
    repr is not a float literal, as numpy 2 prints np.float64(0.5)."""

    def __repr__(self) -> str:
        return f"np.float64({float(self)})"


class Color(enum.IntEnum):
    RED = 3


class Text(str):
    def __repr__(self) -> str:
        return "np.str_('x')"


def _runner(job: FakeJob) -> None:
    req = job.request
    (job.root / "scratch").mkdir(exist_ok=True)
    summary = _convert.convert(req["checkpoint"], str(job.out_dir), weights_only=req["weights_only"],
                               scratch=str(job.root / "scratch"))
    job.write_result({"status": "ok", **summary})


def _roundtrip(tmp_path: Path, obj: object, **kw: object) -> object:
    path = tmp_path / "ckpt.pth"
    torch.save(obj, path)
    (tmp_path / "scratch").mkdir(exist_ok=True)
    return load_checkpoint_file(path, sandbox=FakeBackend(_runner), **kw)


def _convert_only(tmp_path: Path, obj: object) -> dict:
    path = tmp_path / "c.pth"
    torch.save(obj, path)
    out = tmp_path / "out"
    out.mkdir()
    _convert.convert(str(path), str(out), weights_only=False, scratch=str(tmp_path))
    return json.loads((out / "checkpoint.json").read_text())["root"]


def test_float_subclass_is_written_as_a_float_literal(tmp_path: Path) -> None:
    root = _convert_only(tmp_path, {"lr": F64(0.5), "best": F64(float("inf"))})
    assert root == {"dict": [["lr", {"float": "0.5"}], ["best", {"float": "inf"}]]}


def test_number_and_string_subclasses_round_trip_as_plain_values(tmp_path: Path) -> None:
    got = _roundtrip(tmp_path, {"lr": F64(0.125), "color": Color.RED, "name": Text("x"), "w": torch.ones(2)})
    assert got["lr"] == 0.125 and type(got["lr"]) is float
    assert got["color"] == 3 and type(got["color"]) is int
    assert got["name"] == "x" and type(got["name"]) is str
    assert torch.equal(got["w"], torch.ones(2))


def test_argparse_namespace_comes_back_as_a_namespace(tmp_path: Path) -> None:
    args = argparse.Namespace(lr=F64(0.1), epochs=3, arch="resnet", milestones=[1, 2], nested=types.SimpleNamespace(a=1))
    got = _roundtrip(tmp_path, {"args": args, "state_dict": {"w": torch.zeros(3)}})
    ns = got["args"]
    assert isinstance(ns, argparse.Namespace)
    assert (ns.lr, ns.epochs, ns.arch, ns.milestones) == (0.1, 3, "resnet", [1, 2])
    # the host never resolves a class by name: a SimpleNamespace also becomes argparse.Namespace
    assert type(ns.nested) is argparse.Namespace and ns.nested.a == 1


def _forged(tmp_path: Path, root: object) -> object:
    """A converter taken over by the checkpoint writes checkpoint.json itself."""

    def handler(job: FakeJob) -> None:
        from _safetensors_write import write_safetensors

        write_safetensors(str(job.out_dir / "weights.safetensors"), {})
        (job.out_dir / "checkpoint.json").write_text(json.dumps({"format": "safehub-checkpoint", "version": 1, "root": root}))
        job.write_result({"status": "ok", "tensors": 0})

    path = tmp_path / "x.pth"
    torch.save({}, path)
    return load_checkpoint_file(path, sandbox=FakeBackend(handler))


@pytest.mark.parametrize("name", ["__class__", "__dict__", "__init__", "_get_kwargs", "_get_args", "", "a b", "x" * 129,
                                  "é", 3, None])
def test_forged_namespace_attribute_names_are_refused(tmp_path: Path, name: object) -> None:
    with pytest.raises(UnsafeSpecError, match="namespace attribute name"):
        _forged(tmp_path, {"namespace": [[name, 1]]})


def test_forged_namespace_duplicate_and_malformed(tmp_path: Path) -> None:
    with pytest.raises(UnsafeSpecError, match="namespace attribute name"):
        _forged(tmp_path, {"namespace": [["a", 1], ["a", 2]]})
    with pytest.raises(UnsafeSpecError, match="bad namespace"):
        _forged(tmp_path, {"namespace": {"a": 1}})
    with pytest.raises(UnsafeSpecError, match="bad namespace item"):
        _forged(tmp_path, {"namespace": [["a"]]})


def test_callable_map_location_is_applied_on_the_host(tmp_path: Path) -> None:
    calls: list[str] = []

    def to_meta(storage: object, location: str) -> object:
        calls.append(location)
        return torch.empty(0, device="meta").untyped_storage()

    got = _roundtrip(tmp_path, {"a": torch.ones(2), "b": [torch.zeros(1)]}, map_location=to_meta)
    assert calls == ["cpu", "cpu"]
    assert got["a"].device.type == "meta" and got["b"][0].device.type == "meta"
    # torch.load's identity idiom: lambda storage, loc: storage
    same = _roundtrip(tmp_path, {"a": torch.ones(2)}, map_location=lambda storage, loc: storage)
    assert torch.equal(same["a"], torch.ones(2))
    # None means "where it was loaded": CPU
    assert _roundtrip(tmp_path, {"a": torch.ones(1)}, map_location=lambda s, loc: None)["a"].device.type == "cpu"
    with pytest.raises(TypeError, match="map_location returned str"):
        _roundtrip(tmp_path, {"a": torch.ones(1)}, map_location=lambda s, loc: "cuda")


@pytest.mark.parametrize("entry", ["../../escape.pth", "/abs/ckpt.pth", "plain.pth"])
def test_legacy_zip_with_any_entry_name_loads(tmp_path: Path, entry: str) -> None:
    # torch.hub's pre-1.6 format: a zip holding one pickled checkpoint. The entry
    # name used to be joined onto scratch raw ("../..": a confusing "not a torch.save file").
    import io
    import zipfile

    buf = io.BytesIO()
    torch.save({"w": torch.ones(3)}, buf, _use_new_zipfile_serialization=False)
    path = tmp_path / "legacy.zip"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr(entry, buf.getvalue())
    (tmp_path / "scratch").mkdir()
    with pytest.warns(FutureWarning, match="old format < 1.6"):
        got = load_checkpoint_file(path, sandbox=FakeBackend(_runner))
    assert torch.equal(got["w"], torch.ones(3))
    assert not (tmp_path.parent / "escape.pth").exists()
