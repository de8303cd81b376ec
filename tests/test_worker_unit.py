"""The host end of the warm worker without a sandbox: who may use it, the lock
that keeps it to one job at a time, the bounded reading of what it answers, and
socket addresses under deep cache folders. The real worker is attacked in
tests/test_worker.py (slow)."""

from __future__ import annotations

import fcntl
import os
import socket
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

from safehub import Limits
from safehub._sandbox import BwrapBackend, ProcessBackend
from safehub._worker import MAX_STAGED_COPY_BYTES, _Address, _read_line, eligible, enabled, idle_seconds, run_in_worker


def _env(tmp_path: Path) -> SimpleNamespace:
    return SimpleNamespace(python=Path(sys.executable), ro_paths=(), hidden_paths=(), key="k")


def test_who_may_use_the_worker(monkeypatch: pytest.MonkeyPatch) -> None:
    bwrap = BwrapBackend(env={})
    ok = dict(backend=bwrap, limits=Limits(), allow_gpu=False, checkpoint=False)
    assert eligible("load", **ok) is None
    assert eligible("export", **ok) is None
    assert "convert" in str(eligible("convert", **ok))
    assert "process" in str(eligible("load", **{**ok, "backend": ProcessBackend(env={})}))
    assert "GPU" in str(eligible("load", **{**ok, "allow_gpu": True}))
    # in/ is writable in a worker job: what it stages (downloads, a deferred export's
    # weights) is copied there, up to a size; past it the job runs cold, with links.
    assert eligible("export", **ok, staged_bytes=MAX_STAGED_COPY_BYTES) is None
    assert "MiB of host files" in str(eligible("export", **ok, staged_bytes=MAX_STAGED_COPY_BYTES + 1))
    assert "turned off" in str(eligible("load", **{**ok, "limits": Limits(warm_worker=False)}))
    monkeypatch.setenv("SAFEHUB_WORKER", "0")
    assert not enabled(Limits()) and "turned off" in str(eligible("load", **ok))
    assert idle_seconds({"SAFEHUB_WORKER_IDLE_S": "junk"}) == 300 and idle_seconds({"SAFEHUB_WORKER_IDLE_S": "0"}) == 1


def test_a_busy_worker_is_not_waited_for(tmp_path: Path) -> None:
    """Another process holds the worker's lock: the job runs cold (None), and
    nothing is started or laid out."""
    from safehub._worker import _worker_key

    env = _env(tmp_path)
    backend = BwrapBackend(env={})
    repo = tmp_path / "repo"  # its own folder: making workers/ beside it leaves its identity alone
    repo.mkdir()
    wdir = tmp_path / "workers" / _worker_key(env, repo, backend, Limits().tmpfs_bytes)  # type: ignore[arg-type]
    wdir.mkdir(parents=True, mode=0o700)
    held = os.open(wdir / "lock", os.O_RDWR | os.O_CREAT, 0o600)
    fcntl.flock(held, fcntl.LOCK_EX)
    laid_out: list[Path] = []
    try:
        got = run_in_worker(limits=Limits(), python_env=env, repo_dir=repo, backend=backend,  # type: ignore[arg-type]
                            hub_dir=tmp_path, layout=lambda root, confine: laid_out.append(root),
                            environment=lambda root: {})
    finally:
        os.close(held)
    assert got is None and laid_out == [] and sorted(p.name for p in wdir.iterdir()) == ["lock"]


@pytest.mark.parametrize("sent, error", [
    (b"x" * 5000, ValueError),  # no newline within the bound
    (b"[1, 2]\n", ValueError),  # not an object
    (b"{\"exit\": 0\n", ValueError),  # not JSON
])
def test_what_a_worker_answers_is_bounded_and_checked(sent: bytes, error: type) -> None:
    a, b = socket.socketpair()
    with a, b:
        b.sendall(sent)
        with pytest.raises(error):
            _read_line(a, bytearray(), 5.0)


def test_a_worker_that_hangs_up_answers_nothing() -> None:
    a, b = socket.socketpair()
    with a:
        b.sendall(b'{"started": true}\n{"exi')
        b.close()
        buf = bytearray()
        assert _read_line(a, buf, 5.0) == {"started": True}
        assert _read_line(a, buf, 5.0) is None


def test_socket_addresses_fit_under_a_deep_cache(tmp_path: Path) -> None:
    deep = tmp_path / ("d" * 60) / ("e" * 60)
    deep.mkdir(parents=True)
    path = deep / "sock"
    server = socket.socket(socket.AF_UNIX)
    with server, _Address(path) as address:
        assert len(address) < 100
        server.bind(address)
        server.listen(1)
        assert path.exists()
        with socket.socket(socket.AF_UNIX) as client, _Address(path) as again:
            client.connect(again)


def test_the_worker_key_names_the_folder_not_only_its_path(tmp_path: Path) -> None:
    """A worker keeps the folder it was started with mounted: a folder deleted and made
    again at the same path (which on ext4 usually gets the same inode back) needs a
    new key, and so does a folder renamed away and replaced."""
    import shutil

    from safehub._worker import _worker_key

    env, backend = _env(tmp_path), BwrapBackend(env={})
    repo = tmp_path / "repo"
    repo.mkdir()
    (repo / "hubconf.py").write_text("dependencies = []\n")

    def key() -> str:
        return _worker_key(env, repo, backend, Limits().tmpfs_bytes)  # type: ignore[arg-type]

    first = key()
    assert key() == first
    (repo / "hubconf.py").write_text("dependencies = ['torch']\n")  # edited in place: the same folder
    assert key() == first
    shutil.rmtree(repo)
    repo.mkdir()
    (repo / "hubconf.py").write_text("dependencies = []\n")
    second = key()
    assert second != first
    repo.rename(tmp_path / "old")
    shutil.copytree(tmp_path / "old", repo)
    assert key() not in (first, second)
