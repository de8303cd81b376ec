"""The artifact cache's background writer (safehub/_cache_writer.py), for real: a
real writer process copies a real sealed weights memfd into an entry that then
passes every check a hit gets; a lookup waits for a writer that holds the key's
lock; a writer killed part way (SIGKILL) leaves nothing that is read and no lock.
The sandbox is not involved: the model is rebuilt from files the test writes, as
the channel tests do. A real sandboxed load stored this way is in
tests/test_artifact_cache_e2e.py."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import specgen  # noqa: E402  (puts runners/ on sys.path)
from _safetensors_write import write_safetensors_fd  # noqa: E402

from safehub import _cache_writer  # noqa: E402
from safehub._artifact_cache import ArtifactCache  # noqa: E402
from safehub._cache_key import key_digest  # noqa: E402
from safehub._channel import ChannelLimits, rebuild_from_output  # noqa: E402
from safehub._channel._memfd import WeightsMemfd  # noqa: E402
from safehub._fsutil import FileLock  # noqa: E402

INPUTS = {"repo": {"source": "local", "tree": "t"}, "entrypoint": "tiny", "export": "auto"}
KEY = key_digest(INPUTS)


def test_the_writer_names_what_the_reader_reads() -> None:
    """The writer imports nothing of safehub's (it runs under -I -S), so its copies of
    the format's names must equal the ones the reader checks."""
    from safehub import _artifact_cache, _artifact_format, _contract

    assert (_cache_writer.SPEC_FILE, _cache_writer.WEIGHTS_FILE) == (_contract.SPEC_FILE, _contract.WEIGHTS_FILE)
    assert _cache_writer.PROVENANCE_FILE == _artifact_format.PROVENANCE_FILE
    for name in ("KEY_FILE", "ARTIFACT_DIR", "KEY_FORMAT", "KEY_VERSION"):
        assert getattr(_cache_writer, name) == getattr(_artifact_cache, name), name
    import ast

    tree = ast.parse(Path(_cache_writer.__file__).read_text())
    imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
    imported |= {str(n.module).split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom) and not n.level}
    assert not any(isinstance(n, ast.ImportFrom) and n.level for n in ast.walk(tree)), "a relative import"
    assert imported <= set(sys.stdlib_module_names) | {"__future__"}, imported - set(sys.stdlib_module_names)


@pytest.fixture
def built(tmp_path: Path):
    """A model built from a sealed weights memfd, as a load builds it."""
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 32), nn.ReLU(), nn.Linear(32, 8)).eval()
    spec, weights = specgen.full_spec(model)
    out = specgen.write(tmp_path / "out", spec, weights)
    memfd = WeightsMemfd()
    write_safetensors_fd(memfd.fd, weights)
    rebuilt = rebuild_from_output(out, weights=memfd)
    rebuilt._safehub_origin.record.provenance.update(entrypoint="tiny", export="auto")
    yield rebuilt, memfd
    memfd.close()


def _wait_for_entry(cache: ArtifactCache) -> tuple[nn.Module, dict]:
    found = cache.load(KEY)  # waits for the writer, which holds the key's lock until the entry is in
    assert found is not None, (cache.root / "writer.log").read_text() if (cache.root / "writer.log").exists() else ""
    return found


def test_a_background_writer_stores_the_bytes_the_model_was_built_from(built, tmp_path: Path) -> None:
    model, memfd = built
    cache = ArtifactCache(tmp_path / "home")
    assert cache.store_in_background(KEY, INPUTS, model, memfd.sealed_fd(ChannelLimits())) is True
    back, provenance = _wait_for_entry(cache)
    assert provenance["entrypoint"] == "tiny" and provenance["modules"]["m0"]["mode"] == "fx"
    for name, t in model.state_dict().items():
        assert torch.equal(back.state_dict()[name], t), name
    x = torch.randn(4, 64)
    assert torch.equal(back(x), model(x))
    weights = cache.entry_path(KEY) / "artifact" / "weights.safetensors"
    assert weights.read_bytes() == os.pread(memfd.fd, os.fstat(memfd.fd).st_size, 0)  # the sealed bytes, as they are
    cache.verify(KEY)  # every check, weights hashed again
    assert not list(cache.tmp_dir.iterdir())
    # An entry is there: another writer is not started (and force_reload's replace is).
    assert cache.store_in_background(KEY, INPUTS, model, memfd.fd) is False
    assert cache.store_in_background(KEY, INPUTS, model, memfd.fd, replace=True) is True
    _wait_for_entry(cache)
    cache.verify(KEY)


def test_a_writer_is_reaped_and_leaves_no_warning_or_descriptor(built, tmp_path: Path) -> None:
    """No Popen object warns that its child outlives it (ResourceWarning, an error under
    -W error), no descriptor of ours stays open, and the exited writer is reaped."""
    import gc
    import warnings

    model, memfd = built
    cache = ArtifactCache(tmp_path / "home")
    sealed = memfd.sealed_fd(ChannelLimits())
    gc.collect()  # what earlier tests in this worker left for the collector closes its files now, not below
    before = sorted(os.listdir("/proc/self/fd"))
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        assert cache.store_in_background(KEY, INPUTS, model, sealed) is True
        gc.collect()
    assert [w for w in caught if issubclass(w.category, ResourceWarning)] == []
    assert sorted(os.listdir("/proc/self/fd")) == before  # the doc memfd, lock and copies are closed
    (pid,) = _cache_writer._STARTED
    _wait_for_entry(cache)
    deadline = time.monotonic() + 60
    while _cache_writer._STARTED and time.monotonic() < deadline:  # the lock goes just before the exit
        _cache_writer.reap()
        time.sleep(0.01)
    assert _cache_writer._STARTED == []
    with pytest.raises(ChildProcessError):
        os.waitpid(pid, os.WNOHANG)  # reaped: no zombie left


def test_a_part_of_a_load_is_left_to_the_inline_store(built, tmp_path: Path) -> None:
    model, memfd = built
    cache = ArtifactCache(tmp_path / "home")
    assert cache.store_in_background(KEY, INPUTS, (model, model), memfd.fd) is None  # not the load's own root


def test_a_busy_key_starts_no_second_writer(built, tmp_path: Path) -> None:
    model, memfd = built
    cache = ArtifactCache(tmp_path / "home")
    with cache._lock(KEY):
        assert cache.store_in_background(KEY, INPUTS, model, memfd.fd) is False
    assert cache.keys() == []


def test_a_lookup_waits_for_the_writer_that_holds_the_lock(built, tmp_path: Path) -> None:
    """No entry yet, but a writer holds the key's lock: the lookup waits and finds the
    entry the writer put in place, rather than missing (and running the sandbox)."""
    model, memfd = built
    staging = ArtifactCache(tmp_path / "staging")
    assert staging.store(KEY, INPUTS, model)
    cache = ArtifactCache(tmp_path / "home")
    cache.entries_dir.mkdir(parents=True)
    held = threading.Event()

    def writer() -> None:
        with cache._lock(KEY):
            held.set()
            time.sleep(0.5)  # the lookup below starts meanwhile and must wait, not miss
            os.rename(staging.entry_path(KEY), cache.entry_path(KEY))

    t = threading.Thread(target=writer)
    t.start()
    held.wait()
    assert not cache.entry_path(KEY).exists()
    found = cache.load(KEY)
    t.join()
    assert found is not None
    # With no writer, a missing entry is a miss at once.
    assert cache.load("0" * 64) is None


_KILLED = """
import os, runpy, signal, sys
calls = []
real = os.fsync
def fsync(fd):
    calls.append(fd)
    if len(calls) == 2:  # the spec is written, the weights are not yet fsynced
        os.kill(os.getpid(), signal.SIGKILL)
    real(fd)
os.fsync = fsync
sys.argv = sys.argv[1:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def test_a_killed_writer_leaves_no_entry_and_no_lock(built, tmp_path: Path) -> None:
    """The writer for real (-I -S, the three descriptors), killed with SIGKILL between
    two files: no entry appears, the lock goes with the process, and the next
    lookup is a plain miss."""
    model, memfd = built
    cache = ArtifactCache(tmp_path / "home")
    cache.entries_dir.mkdir(parents=True)
    cache.tmp_dir.mkdir(parents=True)
    from safehub._artifact import load_record

    spec_raw, provenance = load_record(model)
    doc = {"key": KEY, "inputs": INPUTS, "entries_dir": str(cache.entries_dir), "tmp_dir": str(cache.tmp_dir),
           "spec": spec_raw.decode("ascii"), "provenance": provenance, "replace": False}
    doc_fd = os.memfd_create("doc")
    os.write(doc_fd, json.dumps(doc).encode())
    os.lseek(doc_fd, 0, os.SEEK_SET)
    lock = cache._lock(KEY).acquire()
    assert lock._fd is not None
    proc = subprocess.run([sys.executable, "-I", "-S", "-c", _KILLED, _cache_writer.__file__,
                           str(doc_fd), str(memfd.sealed_fd(ChannelLimits())), str(lock._fd)],
                          pass_fds=(doc_fd, memfd.fd, lock._fd), capture_output=True, text=True, timeout=120)
    os.close(doc_fd)
    os.close(lock._fd)  # ours; the writer's copy died with it
    lock._fd = None
    assert proc.returncode == -signal.SIGKILL, proc.stderr
    assert cache.keys() == []
    assert list(cache.tmp_dir.iterdir()), "its partial folder stays in tmp/, never read"
    assert cache.load(KEY) is None
    FileLock(str(cache.hub / "locks" / f"artifact-{KEY[:32]}.lock"), timeout=0).acquire().release()  # free


@pytest.mark.parametrize("setting", ["1", "0"])
def test_the_plan_uses_the_writer_unless_turned_off(built, tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                    setting: str) -> None:
    from safehub._artifact_cache import CachePlan

    model, memfd = built
    monkeypatch.setenv("SAFEHUB_CACHE_WRITER", setting)
    plan = CachePlan(ArtifactCache(tmp_path / "home"), KEY, INPUTS, False)
    plan.store(model, weights_fd=memfd.sealed_fd(ChannelLimits()))
    assert plan.info["stored"] is True and plan.info.get("background", False) is (setting == "1")
    assert plan.lookup(device="cpu") is not None


def test_a_writer_that_fails_logs_it_and_cache_artifacts_says_so(built, tmp_path: Path, monkeypatch, capsys) -> None:
    """The real writer, handed a descriptor it cannot map (a folder, not the weights):
    no entry, the lock is free again (the lookup after it is a miss, not a wait), one
    line in writer.log, and `safehub cache artifacts` (text and --json) reports it."""
    from safehub._cli import main

    model, _memfd = built
    home = tmp_path / "home"
    cache = ArtifactCache(home)
    not_weights = os.open(tmp_path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        assert cache.store_in_background(KEY, INPUTS, model, not_weights) is True
    finally:
        os.close(not_weights)
    assert cache.load(KEY) is None  # waited for the writer, which left no entry
    log = (cache.root / "writer.log").read_text()
    assert "could not write an artifact-cache entry" in log and len(log.splitlines()) == 1
    assert not list(cache.tmp_dir.iterdir())  # its tmp folder went with the failure
    monkeypatch.setenv("SAFEHUB_HOME", str(home))
    assert main(["cache", "artifacts"]) == 0
    assert "the background writer could not store 1 load(s)" in capsys.readouterr().out
    assert main(["cache", "artifacts", "--json"]) == 0
    doc = json.loads(capsys.readouterr().out)
    assert doc["writer_failures"]["recent_failures"] == 1 and doc["entries"] == []
