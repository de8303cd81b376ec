"""The artifact cache (safehub/_artifact_cache.py, _cache_key.py): hits and misses,
what the key depends on, and the attacks on a cache entry (kept as tests).

What is faked, and why: the sandbox (FakeBackend plays the runner, as in
test_api_fake.py) and the env (the host interpreter stands in for the repo's
venv). The cache itself (keys, files, locks, every check a hit gets) is real;
a real sandboxed load that stores and hits is in test_artifact_cache_e2e.py.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch
from torch import nn

import safehub
import specgen
from safehub import _cache_key
from safehub._artifact_cache import ArtifactCache, plan_cache
from safehub._cache_key import NotCanonical, canonical_value, local_tree_digest
from safehub._env import host_env
from safehub._errors import ArtifactCacheError
from safehub._sandbox import FakeBackend, FakeJob

HUBCONF = '''
dependencies = []


def tiny(depth=1, width=4, **options):
    """A tiny model."""
    raise AssertionError("the host never imports this")


def other(depth=1):
    raise AssertionError("the host never imports this")
'''


def model(seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return nn.Sequential(nn.Linear(3, 4), nn.ReLU(), nn.Linear(4, 2)).eval()


def handler_for(seed: int = 0):
    def handler(job: FakeJob) -> None:
        spec, weights = specgen.full_spec(model(seed))
        specgen.write(job.out_dir, spec, weights)
        job.write_result({"status": "ok", "summary": {"root": "module", "modules": {"m0": {"mode": "fx", "graphs": ["eval"]}}}})

    return handler


@pytest.fixture
def home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    h = tmp_path / "home"
    monkeypatch.setenv("SAFEHUB_HOME", str(h))
    monkeypatch.setenv("SAFEHUB_ARTIFACT_CACHE", "1")
    monkeypatch.setattr("safehub._env.ensure_env", lambda *a, **k: host_env())
    return h


@pytest.fixture
def repo(tmp_path: Path, home: Path) -> Path:
    d = tmp_path / "repo"
    d.mkdir()
    (d / "hubconf.py").write_text(HUBCONF)
    (d / "weights.bin").write_bytes(b"\0" * 1000)
    return d


def load(repo: Path, backend: FakeBackend, *args, **kwargs):
    return safehub.load(str(repo), kwargs.pop("entry", "tiny"), *args, source="local", sandbox=backend, verbose=False,
                        **kwargs)


def entry_of(home: Path) -> Path:
    (entry,) = (home / "artifacts" / "entries").iterdir()
    return entry


# --- hits and misses -----------------------------------------------------------


def test_a_second_load_is_a_hit_that_runs_nothing(repo: Path, home: Path) -> None:
    backend = FakeBackend(handler_for())
    first = load(repo, backend, width=5)
    assert first.safehub_info.cache["hit"] is False and first.safehub_info.cache["stored"] is True
    second = load(repo, backend, width=5)
    assert len(backend.jobs) == 1, "a hit must not run the sandbox"
    info = second.safehub_info
    assert info.cache["hit"] is True and info.cache["key"] == first.safehub_info.cache["key"]
    assert info.backend == "artifact-cache" and {"validation", "weights_and_build", "cache_key"} <= set(info.timings)
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(first(x), second(x))
    w = "0.weight"
    assert dict(second.named_parameters())[w] is not dict(first.named_parameters())[w]
    # A hit can be saved as an artifact like any load.
    safehub.save(second, home / "saved")


def test_force_reload_bypasses_and_replaces_the_entry(repo: Path, home: Path) -> None:
    load(repo, FakeBackend(handler_for(0)))
    backend = FakeBackend(handler_for(1))  # the repo's output changed (say, its download did)
    fresh = load(repo, backend, force_reload=True)
    assert len(backend.jobs) == 1 and fresh.safehub_info.cache["hit"] is False
    assert fresh.safehub_info.cache["reason"] == "force_reload=True" and fresh.safehub_info.cache["stored"] is True
    again = load(repo, backend)
    assert again.safehub_info.cache["hit"] is True and len(backend.jobs) == 1
    assert torch.equal(dict(again.named_parameters())["0.weight"], model(1)[0].weight)


def test_arguments_that_cannot_be_canonical_are_never_cached(repo: Path, home: Path) -> None:
    backend = FakeBackend(handler_for())
    got = load(repo, backend, options=object())
    assert got.safehub_info.cache["key"] is None and "builtins.object" in got.safehub_info.cache["reason"]
    load(repo, backend, options=object())
    assert len(backend.jobs) == 2 and not (home / "artifacts" / "entries").exists()


def test_the_cache_can_be_turned_off(repo: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SAFEHUB_ARTIFACT_CACHE", "0")
    backend = FakeBackend(handler_for())
    load(repo, backend)
    assert load(repo, backend).safehub_info.cache == {"hit": False, "key": None, "reason": "SAFEHUB_ARTIFACT_CACHE=0"}
    assert len(backend.jobs) == 2


def test_a_local_repo_edited_after_a_load_misses(repo: Path, home: Path) -> None:
    backend = FakeBackend(handler_for())
    load(repo, backend)
    with open(repo / "weights.bin", "r+b") as f:  # same size, same name: only the content differs
        f.write(b"\1")
    assert load(repo, backend).safehub_info.cache["hit"] is False and len(backend.jobs) == 2


# --- the key -------------------------------------------------------------------


def _key(repo: Path, home: Path, **changes):
    base = dict(entrypoint="tiny", args=(1,), kwargs={"width": 4}, example_inputs=None, export="auto",
                env_key="env-a", force_reload=False)
    base.update(changes)
    checkout = SimpleNamespace(source="local", path=repo, sha=None)
    return plan_cache(home, repo=checkout, **base).key


def test_each_key_input_changes_the_key(repo: Path, home: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    base = _key(repo, home)
    assert base is not None and base == _key(repo, home), "the key is deterministic"
    changed = {
        "entrypoint": _key(repo, home, entrypoint="other"),
        "args": _key(repo, home, args=(2,)),
        "arg type": _key(repo, home, args=(1.0,)),
        "bool for int": _key(repo, home, args=(True,)),
        "kwargs": _key(repo, home, kwargs={"width": 5}),
        "kwarg name": _key(repo, home, kwargs={"depth": 4}),
        "example_inputs": _key(repo, home, example_inputs=(torch.zeros(2, 3),)),
        "export": _key(repo, home, export="aten"),
        "env": _key(repo, home, env_key="env-b"),
    }
    t = torch.zeros(2, 3)
    with_t = _key(repo, home, example_inputs=(t,))
    t[0, 0] = 1.0
    changed["example input values"] = _key(repo, home, example_inputs=(t,))
    assert changed["example input values"] != with_t
    with monkeypatch.context() as m:
        m.setattr(torch, "__version__", "0.0.0-other")
        changed["torch"] = _key(repo, home)
    with monkeypatch.context() as m:
        m.setattr(_cache_key, "CACHE_FORMAT", 2)
        changed["format"] = _key(repo, home)
    (repo / "new.py").write_text("")
    changed["a new file"] = _key(repo, home)
    os.chmod(repo / "new.py", 0o755)
    changed["an exec bit"] = _key(repo, home)
    os.symlink("hubconf.py", repo / "link")
    changed["a link"] = _key(repo, home)
    assert all(k is not None for k in changed.values())
    assert len({base, *changed.values()}) == len(changed) + 1, changed


def test_a_github_key_names_the_commit(home: Path, tmp_path: Path) -> None:
    def key(sha: str, owner: str = "alice") -> str | None:
        checkout = SimpleNamespace(source="github", path=tmp_path, sha=sha, host="github.com", owner=owner, name="m")
        return plan_cache(home, repo=checkout, entrypoint="tiny", args=(), kwargs={}, example_inputs=None,
                          export="auto", env_key="e", force_reload=False).key

    assert key("a" * 40) != key("b" * 40) and key("a" * 40) != key("a" * 40, owner="bob")


@pytest.mark.parametrize("value", [object(), {1: 2}, nn.Parameter(torch.zeros(1)), torch.zeros(2).to_sparse(),
                                   type("MyInt", (int,), {})(3), lambda: 0, [0] * 20_000])
def test_values_that_are_not_canonical(value) -> None:
    with pytest.raises(NotCanonical):
        canonical_value(value)


def test_canonical_values_are_exact() -> None:
    assert canonical_value(0.0) != canonical_value(-0.0)
    assert canonical_value((1, 2)) != canonical_value([1, 2])
    assert canonical_value({"a": 1, "b": 2}) != canonical_value({"b": 2, "a": 1})  # **kwargs order is visible
    assert canonical_value(torch.float32) != canonical_value(torch.float16)
    assert canonical_value(torch.zeros(2, dtype=torch.int32)) != canonical_value(torch.zeros(2, dtype=torch.int64))


def test_the_stat_cache_skips_rehashing_but_not_changes(repo: Path, tmp_path: Path, monkeypatch) -> None:
    stat_dir = tmp_path / "stat"
    hashed: list[str] = []
    real = _cache_key._hash_file
    monkeypatch.setattr(_cache_key, "_hash_file", lambda fd, name, st: hashed.append(name) or real(fd, name, st))
    first = local_tree_digest(repo, stat_dir)
    assert local_tree_digest(repo, stat_dir) == first and len(hashed) == 4, "files written just now are not remembered"
    monkeypatch.setattr(_cache_key, "_RACY_NS", -1)  # as if they were written long ago
    local_tree_digest(repo, stat_dir)
    hashed.clear()
    assert local_tree_digest(repo, stat_dir) == first and hashed == []
    (repo / "weights.bin").write_bytes(b"\1" * 1000)
    assert local_tree_digest(repo, stat_dir) != first and hashed == ["weights.bin"]
    # A stat cache that is garbage (host data) is ignored, never trusted or fatal.
    for f in stat_dir.iterdir():
        f.write_text("{not json")
    assert local_tree_digest(repo, stat_dir) == local_tree_digest(repo, None)


def test_a_fifo_in_a_local_repo_makes_it_uncacheable(repo: Path, tmp_path: Path) -> None:
    os.mkfifo(repo / "pipe")
    with pytest.raises(NotCanonical, match="not a file"):
        local_tree_digest(repo, tmp_path / "stat")


# --- entries that were changed (the cache is host data) --------------------------


def _rehash(entry: Path) -> None:
    """Make an edited entry consistent again: what someone who can write the cache can do."""
    art = entry / "artifact"
    prov = json.loads((art / "provenance.json").read_text())
    for name in ("spec.json", "weights.safetensors"):
        data = (art / name).read_bytes()
        prov["files"][name] = {"sha256": hashlib.sha256(data).hexdigest(), "bytes": len(data)}
    (art / "provenance.json").write_text(json.dumps(prov))
    key = json.loads((entry / "key.json").read_text())
    key["provenance_sha256"] = hashlib.sha256((art / "provenance.json").read_bytes()).hexdigest()
    (entry / "key.json").write_text(json.dumps(key))


def _refused(repo: Path, match: str) -> ArtifactCacheError:
    backend = FakeBackend(handler_for())
    with pytest.raises(ArtifactCacheError, match=match) as info:
        load(repo, backend)
    assert not backend.jobs
    assert "force_reload=True" in str(info.value) and "cache rm --artifacts" in str(info.value)
    return info.value


def test_a_flipped_weights_byte_is_refused_and_force_reload_recovers(repo: Path, home: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    weights = entry_of(home) / "artifact" / "weights.safetensors"
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40  # tensor data, not the header: only the hash can tell
    weights.write_bytes(bytes(data))
    _refused(repo, "weights.safetensors has sha256")
    assert load(repo, FakeBackend(handler_for()), force_reload=True).safehub_info.cache["stored"]
    assert load(repo, FakeBackend(handler_for())).safehub_info.cache["hit"]


def test_a_swapped_spec_is_refused(repo: Path, home: Path, tmp_path: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    spec, _ = specgen.full_spec(nn.Sequential(nn.Linear(3, 4)))
    (entry_of(home) / "artifact" / "spec.json").write_text(json.dumps(spec))
    _refused(repo, "spec.json")


def test_a_rehashed_spec_that_fails_validation_is_refused(repo: Path, home: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    entry = entry_of(home)
    spec = json.loads((entry / "artifact" / "spec.json").read_text())
    node = next(n for n in spec["modules"]["m0"]["graphs"]["eval"]["nodes"] if n["op"] == "call_module")
    node.update(op="call_function", target="os.system")
    (entry / "artifact" / "spec.json").write_text(json.dumps(spec))
    _rehash(entry)
    err = _refused(repo, "os.system")
    assert isinstance(err, safehub.UnsafeSpecError)


def test_cache_rm_is_the_other_way_out(repo: Path, home: Path, capsys) -> None:
    from safehub._cli import main

    load(repo, FakeBackend(handler_for()))
    entry = entry_of(home)
    (entry / "artifact" / "weights.safetensors").write_bytes(b"garbage")
    assert main(["cache", "verify"]) == 1
    assert "CORRUPT  artifact " + entry.name[:16] in capsys.readouterr().out
    assert main(["cache", "ls", "--json"]) == 0
    assert json.loads(capsys.readouterr().out)["artifacts"]["count"] == 1
    assert main(["cache", "rm", "--artifacts", entry.name[:16]]) == 0
    assert not entry.exists()
    assert load(repo, FakeBackend(handler_for())).safehub_info.cache["stored"]
    assert main(["cache", "verify"]) == 0
    assert main(["cache", "artifacts"]) == 0 and "1 entries" in capsys.readouterr().out


# --- red team: links, planted entries, changes while reading ------------------------


def test_an_entry_folder_swapped_for_a_link_is_refused(repo: Path, home: Path, tmp_path: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    entry = entry_of(home)
    elsewhere = tmp_path / "elsewhere"
    shutil.move(entry, elsewhere)
    os.symlink(elsewhere, entry)  # even to the right content: an entry is a real folder
    _refused(repo, "not a real directory")


def test_an_artifact_folder_swapped_for_a_link_is_refused(repo: Path, home: Path, tmp_path: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    art = entry_of(home) / "artifact"
    shutil.move(art, tmp_path / "art")
    os.symlink(tmp_path / "art", art)
    _refused(repo, "artifact is not a real directory")


def test_a_weights_file_linked_in_is_refused(repo: Path, home: Path, tmp_path: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    weights = entry_of(home) / "artifact" / "weights.safetensors"
    os.link(weights, tmp_path / "other-name")  # a second name: someone else can change it
    _refused(repo, "hard links")


def test_an_entry_of_another_key_planted_under_this_key_is_refused(repo: Path, home: Path) -> None:
    backend = FakeBackend(handler_for(1))
    load(repo, backend, width=9)  # another key, another model
    other = entry_of(home)
    key = _key(repo, home, args=(), kwargs={}, env_key="host")
    shutil.copytree(other, other.parent / key, symlinks=True)
    _refused(repo, "belongs to another key")
    # Its record rewritten to claim this key: the inputs no longer hash to it.
    record = json.loads((other.parent / key / "key.json").read_text())
    record["key"] = key
    (other.parent / key / "key.json").write_text(json.dumps(record))
    _refused(repo, "belongs to another key")


def test_an_artifact_from_another_entry_is_refused(repo: Path, home: Path) -> None:
    load(repo, FakeBackend(handler_for(1)), width=9)
    (other,) = (home / "artifacts" / "entries").iterdir()
    load(repo, FakeBackend(handler_for(0)))
    mine = next(e for e in (home / "artifacts" / "entries").iterdir() if e != other)
    shutil.rmtree(mine / "artifact")
    shutil.copytree(other / "artifact", mine / "artifact")  # a valid artifact, of the other load
    _refused(repo, "provenance.json is not the one its record names")


def test_weights_changed_while_being_read_are_refused(repo: Path, home: Path, monkeypatch) -> None:
    """TOCTOU: the hash covers the bytes the tensors were read into, not a second read."""
    from safehub._channel import _weights

    load(repo, FakeBackend(handler_for()))
    weights = entry_of(home) / "artifact" / "weights.safetensors"
    real = _weights.read_header_bytes

    def then_change(fd, limits):
        out = real(fd, limits)  # checked and hashed; now the file changes under the reader
        with open(weights, "r+b") as f:
            f.seek(-4, os.SEEK_END)
            f.write(b"\x7f\x7f\x7f\x7f")
        return out

    monkeypatch.setattr(_weights, "read_header_bytes", then_change)
    _refused(repo, "weights.safetensors has sha256")


def test_a_killed_writer_leaves_nothing_that_is_read(repo: Path, home: Path, monkeypatch) -> None:
    """A write that dies half way (here: an error at the final fsync of key.json) leaves a
    folder in tmp/ only; the next load misses, runs, and stores a whole entry."""
    from safehub import _artifact_cache

    real_fsync_dir = _artifact_cache._fsync_dir
    monkeypatch.setattr(_artifact_cache, "_fsync_dir", lambda p: (_ for _ in ()).throw(OSError("disk gone")))
    got = load(repo, FakeBackend(handler_for()))
    assert got.safehub_info.cache["stored"] is False and "disk gone" in got.safehub_info.cache["reason"]
    assert not (home / "artifacts" / "entries").exists() or not any((home / "artifacts" / "entries").iterdir())
    monkeypatch.setattr(_artifact_cache, "_fsync_dir", real_fsync_dir)
    backend = FakeBackend(handler_for())
    assert load(repo, backend).safehub_info.cache["stored"] and len(backend.jobs) == 1
    assert load(repo, backend).safehub_info.cache["hit"]


def test_verify_checks_every_entry(home: Path, repo: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    cache = ArtifactCache(home)
    (key,) = cache.keys()
    cache.verify(key)
    assert cache.describe(key).entrypoint == "tiny"


@pytest.mark.parametrize("change, match", [
    ("key-link", "cannot be opened"),  # key.json a link (even to the right content)
    ("extra-file", "must hold exactly"),  # something more in the entry folder
    ("entry-file", "not a real directory"),  # a file where the entry folder should be
    ("key-garbage", "key.json"),  # not JSON
])
def test_other_changes_to_an_entry_are_refused(repo: Path, home: Path, tmp_path: Path, change: str, match: str) -> None:
    load(repo, FakeBackend(handler_for()))
    entry = entry_of(home)
    if change == "key-link":
        shutil.move(entry / "key.json", tmp_path / "key.json")
        os.symlink(tmp_path / "key.json", entry / "key.json")
    elif change == "extra-file":
        (entry / "notes.txt").write_text("x")
    elif change == "entry-file":
        shutil.rmtree(entry)
        entry.write_text("x")
    else:
        (entry / "key.json").write_bytes(b"\xff{")
    _refused(repo, match)


def test_the_key_names_torch_without_importing_it() -> None:
    """A fresh process computes the key while its `import torch` still runs on a thread;
    the version read from torch/version.py must be exactly what torch itself says, or a
    key made before and after the import would differ."""
    import subprocess
    import sys

    code = ("import sys; from safehub._cache_key import torch_identity; a = torch_identity(); "
            "assert 'torch' not in sys.modules, 'torch was imported'; import torch; "
            "b = f'{torch.__version__} {torch.version.git_version}'; assert a == b == torch_identity(), (a, b); print(a)")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert len(proc.stdout.split()) == 2


# --- the weights' stat memo: mapped, hashed until their stat is known ---------------


def _mapping_of(t: torch.Tensor) -> str | None:
    """The /proc/self/maps line whose range holds ``t``'s data, if any."""
    addr = t.data_ptr()
    with open("/proc/self/maps") as f:
        for line in f:
            lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
            if lo <= addr < hi:
                return line
    return None


@pytest.fixture
def no_racy_window(monkeypatch: pytest.MonkeyPatch) -> None:
    """A file is recorded only once its ctime is RACY_S old; the tests' files are new."""
    from safehub import _artifact_stat_memo

    monkeypatch.setattr(_artifact_stat_memo, "RACY_S", 0.0)


def test_a_hit_maps_its_weights_and_stops_hashing_once_their_stat_is_known(repo: Path, home: Path,
                                                                           no_racy_window: None) -> None:
    load(repo, FakeBackend(handler_for()))
    first = load(repo, FakeBackend(handler_for()))
    assert first.safehub_info.cache["weights_hashed"] is True
    entry = entry_of(home)
    assert (home / "artifacts" / "verified" / f"{entry.name}.json").is_file()
    second = load(repo, FakeBackend(handler_for()))
    assert second.safehub_info.cache["weights_hashed"] is False
    line = _mapping_of(dict(second.named_parameters())["0.weight"])
    assert line is not None and line.rstrip().endswith("weights.safetensors"), line
    # Copy-on-write: the model's own writes never reach the cache file.
    before = (entry / "artifact" / "weights.safetensors").read_bytes()
    with torch.no_grad():
        for p in second.parameters():
            p.add_(1.0)
    assert (entry / "artifact" / "weights.safetensors").read_bytes() == before
    x = torch.randn(2, 3)
    with torch.no_grad():
        assert torch.equal(first(x), load(repo, FakeBackend(handler_for()))(x))


def test_a_weights_file_changed_in_place_is_hashed_again_even_with_its_times_put_back(
        repo: Path, home: Path, no_racy_window: None) -> None:
    load(repo, FakeBackend(handler_for()))
    load(repo, FakeBackend(handler_for()))  # hashed; its stat is recorded
    assert load(repo, FakeBackend(handler_for())).safehub_info.cache["weights_hashed"] is False
    weights = entry_of(home) / "artifact" / "weights.safetensors"
    st = os.stat(weights)
    with open(weights, "r+b") as f:  # same inode, same size
        f.seek(-3, os.SEEK_END)
        byte = f.read(1)
        f.seek(-3, os.SEEK_END)
        f.write(bytes([byte[0] ^ 0x40]))
    os.utime(weights, ns=(st.st_atime_ns, st.st_mtime_ns))  # mtime back; the ctime cannot go back
    _refused(repo, "weights.safetensors has sha256")


def test_a_new_weights_file_is_not_recorded_inside_the_racy_window(repo: Path, home: Path) -> None:
    load(repo, FakeBackend(handler_for()))
    hit = load(repo, FakeBackend(handler_for()))
    assert hit.safehub_info.cache["weights_hashed"] is True
    assert not (home / "artifacts" / "verified").exists(), "a file as new as its ctime's tick must not be recorded"


def test_a_forged_memo_skips_only_the_hash_never_the_checks(repo: Path, home: Path, no_racy_window: None) -> None:
    """Whoever can write the cache can forge the memo, as they can re-hash an entry
    (_rehash above): the memo may skip the hash, never a structural check. And
    `cache verify` always hashes."""
    from safehub._artifact_stat_memo import _fingerprint

    load(repo, FakeBackend(handler_for()))
    load(repo, FakeBackend(handler_for()))
    entry = entry_of(home)
    memo_path = home / "artifacts" / "verified" / f"{entry.name}.json"
    weights = entry / "artifact" / "weights.safetensors"

    def forge(rehash: bool = False) -> None:
        memo = json.loads(memo_path.read_text())
        if rehash:  # the recorded hashes too, so that only the checks stand in the way
            _rehash(entry)
            memo["sha256"] = hashlib.sha256(weights.read_bytes()).hexdigest()
        memo["stat"] = _fingerprint(os.stat(weights))
        memo_path.write_text(json.dumps(memo))

    # Tensor bytes changed, memo forged: the hash is skipped (the documented limit) ...
    data = bytearray(weights.read_bytes())
    data[-3] ^= 0x40
    weights.write_bytes(bytes(data))
    forge()
    assert load(repo, FakeBackend(handler_for())).safehub_info.cache["weights_hashed"] is False
    # ... but `cache verify` hashes, and says so.
    with pytest.raises(ArtifactCacheError, match="weights.safetensors has sha256"):
        ArtifactCache(home).verify(entry.name)
    # A weights header that lies about a tensor, memo forged: refused by the checks.
    header_len = int.from_bytes(data[:8], "little")
    header = json.loads(data[8:8 + header_len])
    name = next(iter(header))
    header[name]["shape"] = [int(d) + 1 for d in header[name]["shape"]]
    raw = json.dumps(header, separators=(",", ":")).encode()
    raw += b" " * (header_len - len(raw))
    assert len(raw) == header_len
    weights.write_bytes(bytes(data[:8]) + raw + bytes(data[8 + header_len:]))
    forge(rehash=True)
    _refused(repo, "the shape needs")
    # Garbage, memo forged: refused.
    weights.write_bytes(b"\xff" * len(data))
    forge(rehash=True)
    _refused(repo, "byte header, over the")
