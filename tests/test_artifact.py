"""safehub.save / safehub.load_artifact on models rebuilt from hand-written specs:
round trips (eval and train, containers, fine-tuned weights, tied weights), and
the refusals (modules safehub did not build, changed modules, tampered artifacts)."""

from __future__ import annotations

import copy
import functools
import json
import os
import pickle
import shutil
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import specgen  # noqa: E402
from test_channel import Net, Tied  # noqa: E402

import safehub  # noqa: E402
from safehub._artifact import inspect_artifact  # noqa: E402
from safehub._channel import rebuild_from_output  # noqa: E402
from safehub._errors import ArtifactError, ArtifactSaveError, ArtifactVersionError, UnsafeSpecError  # noqa: E402


def rebuilt(model: nn.Module, folder: Path):
    spec, weights = specgen.full_spec(model)
    return rebuild_from_output(specgen.write(folder, spec, weights))


def container(models: dict[str, nn.Module], folder: Path, kind: str = "dict"):
    """A spec whose root is a dict (or tuple) of several modules."""
    modules, weights = {}, {}
    for i, m in enumerate(models.values()):
        mspec, w = specgen.module_spec(m, mid=f"m{i}")
        modules[f"m{i}"] = mspec
        weights.update(w)
    refs = [{"module": f"m{i}"} for i in range(len(models))]
    root = {"dict": dict(zip(models, refs))} if kind == "dict" else {"tuple": refs}
    spec = {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": root, "modules": modules}
    return rebuild_from_output(specgen.write(folder, spec, weights))


def outputs(model: nn.Module, x: torch.Tensor, train: bool, seed: int = 0) -> torch.Tensor:
    model.train(train)
    torch.manual_seed(seed)
    return model(x)


@pytest.fixture
def net(tmp_path: Path):
    torch.manual_seed(0)
    return rebuilt(Net(), tmp_path / "out")


def test_round_trip_eval_and_train(net, tmp_path: Path) -> None:
    art = safehub.save(net, tmp_path / "art")
    assert sorted(os.listdir(art)) == ["provenance.json", "spec.json", "weights.safetensors"]
    # The spec written is byte for byte the one that was validated.
    assert (art / "spec.json").read_bytes() == (tmp_path / "out" / "spec.json").read_bytes()
    back = safehub.load_artifact(art)
    x = torch.randn(5, 4)
    for train in (False, True):
        assert torch.equal(outputs(net, x, train), outputs(back, x, train))
    assert isinstance(back.safehub_info, safehub.ArtifactInfo)
    prov = back.safehub_info.provenance
    assert prov["format"] == "safehub-artifact" and prov["version"] == 1
    assert prov["modules"] == {"m0": {"mode": "fx", "graphs": ["eval", "train"], "training": True}}
    assert prov["torch_version"] == torch.__version__ and prov["safehub_version"] == safehub.__version__


def test_fine_tuned_weights_are_saved(net, tmp_path: Path) -> None:
    opt = torch.optim.SGD(net.parameters(), lr=0.1)
    net.train()
    loss = net(torch.randn(8, 4)).square().mean()
    loss.backward()
    opt.step()
    back = safehub.load_artifact(safehub.save(net, tmp_path / "art"))
    for (name, a), (_, b) in zip(net.state_dict().items(), back.state_dict().items()):
        assert torch.equal(a, b), name
    # and the running stats the train step updated
    assert torch.equal(back.bn.running_mean, net.bn.running_mean) and int(back.bn.num_batches_tracked) == 1


def test_containers_and_parts_of_them(tmp_path: Path) -> None:
    torch.manual_seed(0)
    models = container({"a": Net(), "b": Tied()}, tmp_path / "out")
    back = safehub.load_artifact(safehub.save(models, tmp_path / "all"))
    assert set(back) == {"a", "b"} and isinstance(back["b"], nn.Module)
    assert back["b"].head.weight is back["b"].embed.weight  # tied weights stay tied
    idx = torch.tensor([[1, 2, 3]])
    assert torch.equal(back["b"].eval()(idx), models["b"].eval()(idx))
    # One module out of the container: a spec with that module only.
    part = safehub.load_artifact(safehub.save(models["b"], tmp_path / "part"))
    spec = json.loads((tmp_path / "part" / "spec.json").read_text())
    assert spec["root"] == {"module": "m1"} and list(spec["modules"]) == ["m1"]
    assert torch.equal(part.eval()(idx), models["b"].eval()(idx))
    # A new structure of the same load's modules.
    swapped = safehub.load_artifact(safehub.save([models["b"], models["a"]], tmp_path / "list"))
    assert isinstance(swapped, list) and torch.equal(swapped[0].eval()(idx), models["b"](idx))


def test_resave_and_deepcopy_keep_provenance(net, tmp_path: Path) -> None:
    first = safehub.load_artifact(safehub.save(net, tmp_path / "a1"))
    first.safehub_info.provenance  # noqa: B018
    clone = copy.deepcopy(first)
    second = safehub.load_artifact(safehub.save(clone, tmp_path / "a2"))
    assert (tmp_path / "a1" / "spec.json").read_bytes() == (tmp_path / "a2" / "spec.json").read_bytes()
    assert (tmp_path / "a1" / "weights.safetensors").read_bytes() == (tmp_path / "a2" / "weights.safetensors").read_bytes()
    assert second.safehub_info.sha == first.safehub_info.sha


def test_inspect(net, tmp_path: Path) -> None:
    report = inspect_artifact(safehub.save(net, tmp_path / "art"))
    assert report["parameters"] == sum(p.numel() for p in net.parameters())
    assert report["modules"]["m0"]["mode"] == "fx" and set(report["modules"]["m0"]["graphs"]) == {"eval", "train"}
    assert report["weights_bytes"] == (tmp_path / "art" / "weights.safetensors").stat().st_size


def test_provenance_from_load_is_recorded(net, tmp_path: Path) -> None:
    from safehub._artifact import note_load

    # note_load reads these fields of safehub.load's LoadInfo
    info = SimpleNamespace(repo="o/r", source="local", sha=None, entrypoint="net")
    note_load(net, info, repo_path=tmp_path, args=(3, "a\x1b[2J"), kwargs={"w": torch.zeros(2, 3), "f": 0.5},
              export="auto")
    prov = safehub.load_artifact(safehub.save(net, tmp_path / "art")).safehub_info.provenance
    assert prov["repo"] == "o/r" and prov["entrypoint"] == "net" and prov["export"] == "auto"
    assert prov["arguments"] == {"args": [3, "a\\x1b[2J"],
                                 "kwargs": {"w": {"tensor": {"dtype": "float32", "shape": [2, 3]}}, "f": {"float": "0.5"}}}


# --- refusals when saving ----------------------------------------------------


def test_refuses_a_module_safehub_did_not_build(tmp_path: Path) -> None:
    with pytest.raises(ArtifactSaveError, match="safehub did not build"):
        safehub.save(Net(), tmp_path / "art")
    with pytest.raises(ArtifactSaveError, match="safehub did not build"):
        safehub.save(torch.fx.symbolic_trace(Net()), tmp_path / "art")
    with pytest.raises(ArtifactSaveError, match="got a str"):
        safehub.save("model", tmp_path / "art")
    assert not (tmp_path / "art").exists()


def test_refuses_changed_models(net, tmp_path: Path) -> None:
    half = copy.deepcopy(net).half()
    with pytest.raises(ArtifactSaveError, match="float16"):
        safehub.save(half, tmp_path / "a")
    swapped = copy.deepcopy(net)
    swapped.fc2 = nn.Linear(8, 3, bias=False)
    with pytest.raises(ArtifactSaveError, match="removed"):
        safehub.save(swapped, tmp_path / "a")
    relayered = copy.deepcopy(net)
    relayered.drop = nn.Identity()
    with pytest.raises(ArtifactSaveError, match="Dropout"):
        safehub.save(relayered, tmp_path / "a")
    edited = copy.deepcopy(net)
    for node in edited.graph.nodes:
        if node.op == "call_function" and node.target is torch.nn.functional.relu:
            node.target = torch.sigmoid
    edited.recompile()
    with pytest.raises(ArtifactSaveError, match="graph was edited"):
        safehub.save(edited, tmp_path / "a")
    with pytest.raises(ArtifactSaveError, match="different modules"):
        safehub.save((net, copy.deepcopy(net)), tmp_path / "a")
    assert not (tmp_path / "a").exists()
    safehub.save(net, tmp_path / "a")
    with pytest.raises(ArtifactSaveError, match="already exists"):
        safehub.save(net, tmp_path / "a")


def test_refuses_untied_weights(tmp_path: Path) -> None:
    tied = rebuilt(Tied(), tmp_path / "out")
    tied.head.weight = nn.Parameter(tied.embed.weight.detach().clone())
    with pytest.raises(ArtifactSaveError, match="no longer tied"):
        safehub.save(tied, tmp_path / "a")


def test_pickle_and_torch_save_point_to_safehub_save(net, tmp_path: Path) -> None:
    with pytest.raises(TypeError, match="safehub.save"):
        pickle.dumps(net)
    with pytest.raises(TypeError, match="safehub.save"):
        torch.save(net, tmp_path / "m.pt")


# --- tampered artifacts ------------------------------------------------------


@pytest.fixture
def art(net, tmp_path: Path) -> Path:
    return safehub.save(net, tmp_path / "art")


def _flip(path: Path, offset: int) -> None:
    data = bytearray(path.read_bytes())
    data[offset] ^= 0x01
    path.write_bytes(bytes(data))


@pytest.mark.parametrize("name", ["spec.json", "weights.safetensors"])
@pytest.mark.parametrize("where", [0.5, -1])
def test_a_changed_byte_is_refused(art: Path, name: str, where: float) -> None:
    size = (art / name).stat().st_size
    _flip(art / name, int(size * where) if where > 0 else size - 1)
    with pytest.raises(ArtifactError, match=f"{name} has sha256"):
        safehub.load_artifact(art)


def test_truncated_and_extended_files_are_refused(art: Path) -> None:
    with open(art / "weights.safetensors", "ab") as f:
        f.write(b"\0")
    with pytest.raises(ArtifactError, match="bytes; provenance.json recorded"):
        safehub.load_artifact(art)


def _rehash(art: Path) -> None:
    """What a careful attacker does: fix the hashes after tampering."""
    import hashlib

    prov = json.loads((art / "provenance.json").read_text())
    for name in ("spec.json", "weights.safetensors"):
        data = (art / name).read_bytes()
        prov["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / "provenance.json").write_text(json.dumps(prov))


def test_a_swapped_spec_is_refused(art: Path, tmp_path: Path) -> None:
    torch.manual_seed(1)
    other = safehub.save(rebuilt(Tied(), tmp_path / "o"), tmp_path / "other")
    os.replace(other / "spec.json", art / "spec.json")
    with pytest.raises(ArtifactError, match="spec.json (has sha256|is [0-9]+ bytes)"):
        safehub.load_artifact(art)
    _rehash(art)  # hashes fixed: the spec no longer matches the weights
    with pytest.raises(UnsafeSpecError):
        safehub.load_artifact(art)


def test_a_spec_that_fails_validation_is_refused_even_with_good_hashes(art: Path) -> None:
    spec = json.loads((art / "spec.json").read_text())
    for node in spec["modules"]["m0"]["graphs"]["eval"]["nodes"]:
        if node["op"] == "call_function":
            node["target"] = "builtins.exec"
            break
    (art / "spec.json").write_text(json.dumps(spec))
    _rehash(art)
    with pytest.raises(UnsafeSpecError, match="builtins.exec"):
        safehub.load_artifact(art)


def test_provenance_that_misdescribes_the_spec_is_refused(art: Path) -> None:
    prov = json.loads((art / "provenance.json").read_text())
    prov["modules"]["m0"]["mode"] = "aten"
    (art / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ArtifactError, match="other modules"):
        safehub.load_artifact(art)


@pytest.mark.parametrize("version", [2, 0, "1", 1.0, None])
def test_unknown_format_version_is_refused(art: Path, version) -> None:
    prov = json.loads((art / "provenance.json").read_text())
    prov["version"] = version
    prov["new_field_of_v2"] = True  # the version is checked first, whatever else changed
    (art / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ArtifactVersionError, match="version"):
        safehub.load_artifact(art)


@pytest.mark.parametrize(
    "edit",
    [
        lambda p: p.update(extra=1),
        lambda p: p.pop("sha"),
        lambda p: p.update(format="safehub-arch"),
        lambda p: p.update(repo="evil\x1b[2J"),
        lambda p: p.update(sha="../../etc"),
        lambda p: p.update(entrypoint="os.system"),
        lambda p: p.update(arguments={"args": [1.5], "kwargs": {}}),
        lambda p: p.update(arguments={"args": ["\u202e"], "kwargs": {}}),
        lambda p: p.update(files={"spec.json": p["files"]["spec.json"]}),
        lambda p: p["files"]["spec.json"].update(bytes=-1),
        lambda p: p.update(modules={}),
        lambda p: p.update(arguments={"args": [functools.reduce(lambda a, _: [a], range(20), 0)], "kwargs": {}}),
        lambda p: p.update(arguments={"args": list(range(20_000)), "kwargs": {}}),
        lambda p: p.update(saved_at="yesterday"),
    ],
)
def test_invalid_provenance_is_refused(art: Path, edit) -> None:
    prov = json.loads((art / "provenance.json").read_text())
    edit(prov)
    (art / "provenance.json").write_text(json.dumps(prov))
    with pytest.raises(ArtifactError):
        safehub.load_artifact(art)


def test_duplicate_keys_and_junk_provenance_are_refused(art: Path) -> None:
    text = (art / "provenance.json").read_text()
    (art / "provenance.json").write_text(text.replace('"repo": null', '"repo": null, "repo": "x"'))
    with pytest.raises(ArtifactError, match="duplicate"):
        safehub.load_artifact(art)
    (art / "provenance.json").write_bytes(b"\xff" * 10)
    with pytest.raises(ArtifactError):
        safehub.load_artifact(art)


def test_extra_missing_and_linked_files_are_refused(art: Path, tmp_path: Path) -> None:
    (art / "hubconf.py").write_text("import os")
    with pytest.raises(ArtifactError, match="extra: .hubconf.py"):
        safehub.load_artifact(art)
    (art / "hubconf.py").unlink()
    (art / "sub").mkdir()
    with pytest.raises(ArtifactError, match="extra: .sub"):
        safehub.load_artifact(art)
    (art / "sub").rmdir()
    weights = art / "weights.safetensors"
    moved = tmp_path / "w.safetensors"
    os.replace(weights, moved)
    with pytest.raises(ArtifactError, match="missing: weights.safetensors"):
        safehub.load_artifact(art)
    weights.symlink_to(moved)
    with pytest.raises(ArtifactError, match="not a regular file"):
        safehub.load_artifact(art)
    weights.unlink()
    os.link(moved, weights)  # a hard link: another name can change the file under us
    shutil.copyfile(moved, tmp_path / "w2.safetensors")
    with pytest.raises(UnsafeSpecError, match="hard links"):
        safehub.load_artifact(art)
    moved.unlink()
    weights.unlink()
    os.mkfifo(weights)  # a reader of a FIFO would block forever
    with pytest.raises(ArtifactError, match="not a regular file"):
        safehub.load_artifact(art)
    weights.unlink()
    os.replace(tmp_path / "w2.safetensors", weights)
    link = tmp_path / "link"
    link.symlink_to(art)
    with pytest.raises(ArtifactError, match="cannot open artifact folder"):
        safehub.load_artifact(link)
    safehub.load_artifact(art)  # intact again


def test_cli_inspect(art: Path, capsys) -> None:
    from safehub._cli import main

    assert main(["inspect", str(art), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["provenance"]["format"] == "safehub-artifact" and report["modules"]["m0"]["mode"] == "fx"
    assert main(["inspect", str(art)]) == 0
    text = capsys.readouterr().out
    assert "m0: mode=fx" in text and "parameters" in text
    _flip(art / "weights.safetensors", 100)
    assert main(["inspect", str(art), "--json"]) == ArtifactError.exit_code
    assert json.loads(capsys.readouterr().out)["error"] == "ArtifactError"


def test_weights_truncated_after_the_header_check_are_refused(tmp_path: Path) -> None:
    """The loader reads each tensor's exact byte range with pread; a file that
    shrank after its header was checked fails with a typed error, nothing half-read."""
    from safehub._channel import ChannelLimits
    from safehub._channel._weights import load_tensors, read_header
    from safehub._errors import TensorMismatchError

    spec, weights = specgen.full_spec(Net())
    out = specgen.write(tmp_path / "out", spec, weights)
    fd = os.open(out / "weights.safetensors", os.O_RDWR)
    try:
        entries = read_header(fd, ChannelLimits())
        full = load_tensors(fd, entries, None)
        assert all(torch.equal(full[k], weights[k]) for k in weights)
        os.ftruncate(fd, os.fstat(fd).st_size - 5)
        with pytest.raises(TensorMismatchError, match="ended early"):
            load_tensors(fd, entries, None)
    finally:
        os.close(fd)


@pytest.mark.parametrize("name", ["_safehub_origin", "safehub_info"])
def test_attributes_safehub_sets_are_reserved_names(tmp_path: Path, name: str) -> None:
    """A tensor named like the attributes safehub puts on a rebuilt module would be
    shadowed by them in the generated forward (``self.safehub_info``)."""
    from safehub._errors import InvalidNameError

    class Model(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.register_buffer(name, torch.ones(2))

        def forward(self, x):
            return x + getattr(self, name)

    spec, weights = specgen.full_spec(Model())
    with pytest.raises(InvalidNameError, match=name):
        rebuild_from_output(specgen.write(tmp_path / "out", spec, weights))


def test_archive_hash_comes_from_the_cache_metadata(net, tmp_path: Path) -> None:
    from safehub._artifact import note_load

    sha, digest = "a" * 40, "b" * 64
    checkout = tmp_path / "repos" / "github.com" / "o" / "r" / sha
    checkout.mkdir(parents=True)
    (checkout.parent / f"{sha}.json").write_text(json.dumps({"sha": sha, "archive_sha256": digest}))
    info = SimpleNamespace(repo="o/r", source="github", sha=sha, entrypoint="net")
    note_load(net, info, repo_path=checkout, args=(), kwargs={}, export="fx")
    prov = inspect_artifact(safehub.save(net, tmp_path / "art"))["provenance"]
    assert (prov["sha"], prov["archive_sha256"], prov["source"], prov["export"]) == (sha, digest, "github", "fx")


def test_modes_come_from_the_spec_and_the_folder_is_readable(net, tmp_path: Path) -> None:
    assert net.training  # exported in train mode
    net.eval()
    art = safehub.save(net, tmp_path / "art")
    assert (art.stat().st_mode & 0o777) == 0o755
    back = safehub.load_artifact(art)
    assert back.training and back.safehub_info.provenance["modules"]["m0"]["training"] is True


def test_the_artifact_writer_starts_writeback_as_it_goes_and_the_file_reads_back(tmp_path: Path, monkeypatch) -> None:
    """write_safetensors kicks the disk writes every KICK_BYTES (sync_file_range), so
    the closing fsync has little left; the file is the same either way."""
    import hashlib

    from safehub import _artifact_format
    from safehub._channel import ChannelLimits
    from safehub._channel._weights import load_tensors, read_header

    kicks: list[tuple[int, int]] = []
    real = _artifact_format._Writeback.wrote

    def counting(self, n):
        before = self.start
        real(self, n)
        if self.start != before:
            kicks.append((before, self.start))

    monkeypatch.setattr(_artifact_format._Writeback, "KICK_BYTES", 1 << 20)
    monkeypatch.setattr(_artifact_format._Writeback, "wrote", counting)
    tensors = {f"t{i}": torch.randn(300_000) for i in range(4)}  # 1.2 MB each
    sha, size = _artifact_format.write_safetensors(tmp_path / "w.safetensors", tensors)
    raw = (tmp_path / "w.safetensors").read_bytes()
    assert (sha, size) == (hashlib.sha256(raw).hexdigest(), len(raw))
    assert len(kicks) >= 3 and all(b > a for a, b in kicks) and kicks[-1][1] <= size
    fd = os.open(tmp_path / "w.safetensors", os.O_RDONLY)
    try:
        back = load_tensors(fd, read_header(fd, ChannelLimits()), device=None)
    finally:
        os.close(fd)
    assert all(torch.equal(back[k], v) for k, v in tensors.items())
