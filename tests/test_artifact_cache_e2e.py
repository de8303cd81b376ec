"""The artifact cache for real: a sandboxed load stored and answered again without a
sandbox; a deferred export cached per call signature; writers killed mid-write
(SIGKILL, a real process) and two processes storing the same key at once."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

import safehub
from conftest import outputs_of
from safehub._artifact_cache import ArtifactCache
from safehub._deferred import DeferredModule

pytestmark = pytest.mark.slow

ZOO = Path(__file__).resolve().parent / "zoo"
HOSTILE = Path(__file__).resolve().parent / "hostile"


@pytest.fixture
def cached(monkeypatch: pytest.MonkeyPatch, repo_copy) -> Path:
    """The zoo in a folder of its own (its own tree hash, so its own keys), cache on."""
    monkeypatch.setenv("SAFEHUB_ARTIFACT_CACHE", "1")
    return repo_copy(ZOO)


def test_a_sandboxed_load_is_stored_and_answered_without_a_sandbox(cached: Path) -> None:
    first = safehub.load(str(cached), "mobilenet", source="local", verbose=False)
    assert first.safehub_info.cache["stored"] is True and first.safehub_info.backend != "artifact-cache"
    assert first.safehub_info.sandbox_details["weights_channel"] in ("huge-tmpfs", "memfd")  # sealed/proven either way
    assert first.safehub_info.cache["background"] is True  # a writer process copies the sealed memfd
    timings = first.safehub_info.timings  # storing is part of the load, and of its total
    assert 0 < timings["cache_store"] < timings["total"] and timings["total"] >= timings["sandbox"] + timings["cache_store"]
    second = safehub.load(str(cached), "mobilenet", source="local", verbose=False)
    info = second.safehub_info
    assert info.cache == {"hit": True, "key": first.safehub_info.cache["key"], "weights_hashed": True}  # a new file: hashed
    assert info.backend == "artifact-cache" and not info.sandbox_details and "sandbox" not in info.timings
    assert info.env_key == first.safehub_info.env_key and info.sha is None and info.source == "local"
    x = torch.randn(3, 3, 16, 16)
    for train in (False, True):  # Dropout and BatchNorm: both graphs came back
        with torch.no_grad():
            assert torch.equal(outputs_of(first, (x,), train=train, seed=5), outputs_of(second, (x,), train=train, seed=5))
    assert first.state_dict().keys() == second.state_dict().keys()


def test_a_process_that_exits_right_after_its_load_still_leaves_the_entry(cached: Path) -> None:
    """The writer outlives the loading process; the next process's lookup waits for it
    (the key's lock) and hits."""
    code = ("import safehub, sys; m = safehub.load(sys.argv[1], 'resnet', source='local', verbose=False); "
            "print(m.safehub_info.cache['key'], m.safehub_info.cache['background'])")
    proc = subprocess.run([sys.executable, "-c", code, str(cached)], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    key, background = proc.stdout.split()
    assert background == "True"
    again = safehub.load(str(cached), "resnet", source="local", verbose=False)
    assert again.safehub_info.cache["hit"] is True and again.safehub_info.cache["key"] == key
    log = Path(os.environ["SAFEHUB_HOME"]) / "artifacts" / "writer.log"
    assert not log.exists() or not log.read_text(), log.read_text()  # the writer logs failures only


def test_deferred_graphs_are_cached_per_call_signature(cached: Path) -> None:
    x = torch.randn(4, 6)
    first = safehub.load(str(cached), "len_of_tensor", source="local", verbose=False)
    assert isinstance(first, DeferredModule)
    assert first.safehub_info.cache.get("stored") is True  # its tree and tensors: no graph yet
    first.eval()
    with torch.no_grad():
        y1 = first(x)
    assert [g["cached"] for g in first.safehub_graphs] == [False]
    again = safehub.load(str(cached), "len_of_tensor", source="local", verbose=False).eval()
    assert isinstance(again, DeferredModule) and again.safehub_info.backend == "artifact-cache"
    assert again.safehub_info.cache["hit"] is True and "sandbox" not in again.safehub_info.timings
    with torch.no_grad():
        y2 = again(x)
    assert [g["cached"] for g in again.safehub_graphs] == [True]  # exported by the first load, checked again here
    assert torch.equal(y1, y2)
    # A signature no load exported yet: the hit has no job of its own, so it runs the
    # entrypoint again in the sandbox (from the load's arguments and the entry's weights,
    # through a hard link: the entry removed meanwhile does not matter).
    assert ArtifactCache(Path(os.environ["SAFEHUB_HOME"])).remove(again.safehub_info.cache["key"])
    z = torch.randn(2, 3, 6)
    with torch.no_grad():
        assert torch.allclose(again(z), first(z))
    assert [g["cached"] for g in again.safehub_graphs] == [True, False]
    assert again.safehub_info.summary["modules"]["m0"]["exports"][1]["cached"] is False
    kinds = [ArtifactCache(Path(os.environ["SAFEHUB_HOME"])).describe(k).repo for k in
             ArtifactCache(Path(os.environ["SAFEHUB_HOME"])).keys()]
    assert any(str(k).startswith("graph of load") for k in kinds)
    with pytest.raises(safehub.ArtifactSaveError, match="deferred export"):  # no graph to save yet
        safehub.save(again, cached.parent / "saved")


def test_a_cached_deferred_load_fetches_what_its_export_asks_for(monkeypatch: pytest.MonkeyPatch,
                                                                 tmp_path: Path) -> None:
    """A hit never ran the entrypoint, so it does not know its downloads: the export job
    of a new call signature asks for them, and the host fetches them (here from the
    loopback GitHub, the checkpoint cache emptied first) and runs the job again."""
    import io
    import shutil

    sys.path.insert(0, str(Path(__file__).resolve().parent))
    from github_server import FakeGitHub

    monkeypatch.setenv("SAFEHUB_ARTIFACT_CACHE", "1")
    torch.manual_seed(3)
    state = {"lin.weight": torch.randn(5, 6), "lin.bias": torch.randn(5)}
    raw = io.BytesIO()
    torch.save(state, raw)
    with FakeGitHub() as gh:
        for key, value in gh.env().items():
            monkeypatch.setenv(key, value)
        url = gh.url + gh.add_repo("alice", "weights").release_asset("v1", "len.pt", raw.getvalue())
        repo = tmp_path / "repo"
        repo.mkdir()
        (repo / "hubconf.py").write_text(textwrap.dedent(f"""
            import torch
            from torch import nn
            dependencies = ["torch"]

            class LenNet(nn.Module):
                def __init__(self):
                    super().__init__()
                    self.lin = nn.Linear(6, 5)

                def forward(self, x):
                    return self.lin(x) / len(x)  # fx cannot trace len(): exported at the first call

            def pretrained():
                m = LenNet()
                m.load_state_dict(torch.hub.load_state_dict_from_url({url!r}))
                return m
        """))
        first = safehub.load(str(repo), "pretrained", source="local", verbose=False).eval()
        assert isinstance(first, DeferredModule) and first.safehub_info.cache["stored"] is True
        assert [d["url"] for d in first.safehub_info.downloads] == [url]
        assert torch.equal(first.lin.weight, state["lin.weight"])
        x, z = torch.randn(4, 6), torch.randn(2, 3, 6)
        with torch.no_grad():
            y1, w1 = first(x), first(z)
        shutil.rmtree(Path(os.environ["SAFEHUB_HOME"]) / "checkpoints")  # the hit must fetch for real
        again = safehub.load(str(repo), "pretrained", source="local", verbose=False).eval()
        assert again.safehub_info.backend == "artifact-cache" and not again.safehub_info.downloads
        with torch.no_grad():
            assert torch.equal(again(x), y1)  # both graphs were cached by the first load's exports
            assert torch.equal(again(z), w1)
        assert [g["cached"] for g in again.safehub_graphs] == [True, True]
        v = torch.randn(7, 6)  # a signature nobody exported: the sandbox, which asks for the weights again
        with torch.no_grad():
            assert torch.allclose(again(v), first(v))
        assert [g["cached"] for g in again.safehub_graphs] == [True, True, False]
        assert any((Path(os.environ["SAFEHUB_HOME"]) / "checkpoints").rglob("*")), "fetched again on the host"


def test_a_namespace_is_cached_whole(cached: Path) -> None:
    """An entrypoint that returns an object holding modules (a GAN wrapper): the hit is
    the same read-only namespace, its deferred module exporting as on a first load."""
    from safehub._namespace import SafehubNamespace

    first = safehub.load(str(cached), "gan", source="local", verbose=False)
    assert isinstance(first, SafehubNamespace) and first.netG.safehub_info.cache["stored"] is True
    again = safehub.load(str(cached), "gan", source="local", verbose=False)
    assert isinstance(again, SafehubNamespace) and dir(again) == dir(first)
    assert again.netG.safehub_info.backend == "artifact-cache"
    z = torch.randn(2, 4)
    with torch.no_grad():
        assert torch.equal(again.netG(z), first.netG(z))
    assert isinstance(again.netD, DeferredModule)  # fx cannot trace it: exported at its first call
    x = torch.randn(2, 3, 16, 16)
    with torch.no_grad():
        assert torch.allclose(again.netD.eval()(x), first.netD.eval()(x))


_WRITER = textwrap.dedent(
    """
    import os, signal, sys, time
    from pathlib import Path
    sys.path.insert(0, sys.argv[1])
    import torch, specgen
    from torch import nn
    from safehub._artifact_cache import ArtifactCache
    from safehub._channel import rebuild_from_output

    home, out, seed, mode = Path(sys.argv[2]), Path(sys.argv[3]), int(sys.argv[4]), sys.argv[5]
    torch.manual_seed(seed)
    spec, weights = specgen.full_spec(nn.Sequential(nn.Linear(64, 64), nn.ReLU(), nn.Linear(64, 8)).eval())
    model = rebuild_from_output(specgen.write(out, spec, weights))
    model._safehub_origin.record.provenance.update(entrypoint="tiny", export="auto")
    inputs = {"repo": {"source": "local", "tree": "t"}, "entrypoint": "tiny", "export": "auto"}
    from safehub._cache_key import key_digest
    key = key_digest(inputs)
    if mode == "kill":  # die for real, half way through writing the entry
        calls = []
        real = os.fsync
        def fsync(fd):
            calls.append(fd)
            if len(calls) == 2:
                os.kill(os.getpid(), signal.SIGKILL)
            real(fd)
        os.fsync = fsync
    else:  # both writers start storing at the same moment
        while not (home / "go").exists():
            time.sleep(0.005)
    print(ArtifactCache(home).store(key, inputs, model), flush=True)
    """
)


def _writer(tmp: Path, home: Path, seed: int, mode: str) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-c", _WRITER, str(HOSTILE), str(home), str(tmp / f"out{seed}"),
                             str(seed), mode], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_killed_and_concurrent_writers(tmp_path: Path) -> None:
    home = tmp_path / "home"
    cache = ArtifactCache(home)
    killed = _writer(tmp_path, home, 0, "kill")
    writers = [_writer(tmp_path, home, seed, "race") for seed in (1, 2)]  # they import torch meanwhile
    assert killed.wait(timeout=120) == -signal.SIGKILL, killed.stderr.read() if killed.stderr else ""
    assert cache.keys() == [], "a killed writer must leave no entry"
    assert list((home / "artifacts" / "tmp").iterdir()), "its partial folder stays in tmp/, never read"
    assert cache.load(cache.keys()[0] if cache.keys() else "0" * 64) is None  # a miss, not an error

    (home / "go").touch()
    results = []
    for w in writers:
        out, err = w.communicate(timeout=120)
        assert w.returncode == 0, err
        results.append(out.strip())
    assert sorted(results) == ["False", "True"], "one stores, the other finds it stored"
    (key,) = cache.keys()
    cache.verify(key)
    model, provenance = cache.load(key)
    assert provenance["entrypoint"] == "tiny"
    doc = json.loads((cache.entry_path(key) / "key.json").read_text())
    assert doc["key"] == key
