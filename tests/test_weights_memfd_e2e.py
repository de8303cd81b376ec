"""A real bubblewrap load and a real warm-worker load bring their weights back
through the host's huge-page tmpfs file (safehub/_channel/_huge_tmpfs.py) and, with
it turned off, through the sealed memfd (safehub/_channel/_memfd.py): safehub_info
says which, nothing is written to out/weights.safetensors, the values (in every
element size, so the runner's alignment is exercised) are right, and no descriptor
or mapping is left. Both are attacked without a sandbox in
tests/test_weights_memfd.py and tests/test_weights_huge_tmpfs.py."""

from __future__ import annotations

import gc
import os
import textwrap
from pathlib import Path
from typing import Any

import pytest
import torch

import safehub
from safehub import Limits, _jobs
from safehub._channel import _huge_tmpfs, _weights_pool
from safehub._errors import WeightsSealError

pytestmark = pytest.mark.slow

HUBCONF = textwrap.dedent('''
    import torch
    from torch import nn

    dependencies = []


    class Mixed(nn.Module):
        def __init__(self):
            super().__init__()
            self.lin = nn.Linear(5, 3)
            self.h16 = nn.Parameter(torch.arange(5, dtype=torch.float16))
            self.register_buffer("steps", torch.tensor([7, 8, 9], dtype=torch.int64))
            self.register_buffer("flags", torch.tensor([True, False, True]))
            self.register_buffer("small", torch.arange(3, dtype=torch.uint8))

        def forward(self, x):
            return self.lin(x) + self.steps.sum()


    def mixed(hub=""):
        torch.manual_seed(0)
        return Mixed()


    def seal_it(hub=""):
        """Add F_SEAL_SEAL to the host's memfd: the host can no longer seal it."""
        import fcntl, os
        fcntl.fcntl(int(os.environ["SAFEHUB_WEIGHTS_FD"]), 1033, 1)
        return nn.Linear(2, 2)


    def linger(hub=""):
        """A daemon that keeps the memfd mapped shared and writable, to rewrite the
        weights under the host's model later: it dies with the sandbox."""
        import mmap, os, select, time
        fd = int(os.environ["SAFEHUB_WEIGHTS_FD"])
        os.ftruncate(fd, 4096)
        r, w = os.pipe()
        if os.fork() == 0:
            os.setsid()
            if os.fork() == 0:
                m = mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED)
                os.write(w, b"m")
                while True:
                    time.sleep(1)
            os._exit(0)
        mapped = bool(select.select([r], [], [], 30)[0]) and os.read(r, 1) == b"m"
        out = nn.Linear(2, 2)
        with torch.no_grad():
            out.weight.fill_(float(mapped))  # the host checks the daemon really held the mapping
        return out


    def reach_out(hub=""):
        """From its weights file's descriptor, try for the host's mount (another job's
        file), a name, seals, or a file handle; and look for any other descriptor on
        the same mount (the host's mount itself): the weight says how many worked."""
        import ctypes, fcntl, os
        fd = int(os.environ["SAFEHUB_WEIGHTS_FD"])
        libc = ctypes.CDLL(None, use_errno=True)

        def by_handle():
            handle = ctypes.create_string_buffer(8 + 128)
            ctypes.c_uint.from_buffer(handle).value = 128
            mount_id = ctypes.c_int()
            if libc.name_to_handle_at(fd, b"", handle, ctypes.byref(mount_id), 0x1000) != 0:  # AT_EMPTY_PATH
                raise OSError(ctypes.get_errno(), "name_to_handle_at")
            if libc.open_by_handle_at(fd, handle, os.O_RDONLY) < 0:
                raise OSError(ctypes.get_errno(), "open_by_handle_at")

        tries = [lambda: os.open("..", os.O_RDONLY, dir_fd=fd),
                 lambda: os.open("x", os.O_CREAT | os.O_RDWR, 0o600, dir_fd=fd),
                 lambda: os.listdir(f"/proc/self/fd/{fd}/.."),
                 lambda: os.link(f"/proc/self/fd/{fd}", "/tmp/kept", follow_symlinks=True),
                 lambda: fcntl.fcntl(fd, 1033, 1),
                 by_handle]
        worked = 0
        for attempt in tries:
            try:
                attempt()
                worked += 1
            except OSError:
                pass
        dev = os.fstat(fd).st_dev
        for other in os.listdir("/proc/self/fd"):
            try:
                if int(other) != fd and os.fstat(int(other)).st_dev == dev:
                    worked += 100
            except OSError:
                pass
        out = nn.Linear(2, 2)
        with torch.no_grad():
            out.weight.fill_(float(worked))
        return out
''')


@pytest.fixture(params=["huge-tmpfs", "memfd"])
def channel(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """The weights channel a bubblewrap job gets: the huge-page tmpfs file (turned on:
    this VM's balloon reports free pages, which turns it off by default), or the
    memfd with it turned off."""
    if request.param == "memfd":
        monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, "0")
    else:
        monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, "1")
        assert _huge_tmpfs.status()["huge_tmpfs"] is True, _huge_tmpfs.status()
    return str(request.param)


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("memfd-repo")
    folder.chmod(0o755)  # as root, the sandbox runs as another uid
    (folder / "hubconf.py").write_text(HUBCONF)
    return folder


def _expected() -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    lin = torch.nn.Linear(5, 3)
    return {"lin.weight": lin.weight.detach(), "lin.bias": lin.bias.detach(),
            "h16": torch.arange(5, dtype=torch.float16), "steps": torch.tensor([7, 8, 9]),
            "flags": torch.tensor([True, False, True]), "small": torch.arange(3, dtype=torch.uint8)}


def _fds() -> dict[str, str]:
    """Every open descriptor and what it points at (a socket or memfd's inode included)."""
    gc.collect()  # an earlier test's garbage closes its descriptors now, not mid-test
    found = {}
    for fd in os.listdir("/proc/self/fd"):
        try:
            found[fd] = os.readlink(f"/proc/self/fd/{fd}")
        except FileNotFoundError:  # the listing's own descriptor, gone already
            pass
    return found


def _opened_since(before: dict[str, str]) -> dict[str, str]:
    # Descriptors closed meanwhile (another test's leftovers) are no leak; a number
    # reused for something new is, since its target (inode) differs.
    return {fd: target for fd, target in _fds().items() if before.get(fd) != target}


def _mapped_from_tmpfs() -> list[str]:
    """Mappings in this process of files on the huge-page tmpfs (its device)."""
    mount = _huge_tmpfs.mount_fd()
    if mount is None:
        return []
    dev = os.fstat(mount).st_dev
    tag = f"{os.major(dev):02x}:{os.minor(dev):02x}"
    return [line for line in Path("/proc/self/maps").read_text().splitlines() if line.split()[3] == tag]


def test_bwrap_and_the_warm_worker_return_weights_through_the_host_s_memory(
        repo: Path, safehub_home: Path, monkeypatch: pytest.MonkeyPatch, channel: str) -> None:
    seen: list[list[str]] = []
    finish = _jobs._finish

    def spy(job: Any, root: Path, *args: Any, **kwargs: Any) -> Any:
        seen.append(sorted(os.listdir(root / "out")))  # what the sandbox left in out/, before it is judged
        return finish(job, root, *args, **kwargs)

    monkeypatch.setattr(_jobs, "_finish", spy)
    hub = str(safehub_home)

    def load(**limits: Any) -> Any:
        return safehub.load(str(repo), "mixed", source="local", hub=hub, verbose=False, force_reload=True,
                            limits=Limits(timeout_s=120, **limits))

    cold = load(warm_worker=False)
    assert cold.safehub_info.backend == "bwrap"
    details = cold.safehub_info.sandbox_details
    assert details["weights_channel"] == channel and details["worker"]["used"] is False
    fds = _fds()
    warm = load()
    details = warm.safehub_info.sandbox_details
    assert details["weights_channel"] == channel and details["worker"]["used"] is True
    assert seen == [["result.json", "spec.json"]] * 2  # no weights.safetensors in out/, either way
    for model in (cold, warm):
        state = model.state_dict()
        for key, value in _expected().items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
        with torch.no_grad():  # trained in place: copy-on-write pages of the model's own
            model.lin.weight.add_(1.0)
        assert torch.equal(model.lin.weight, _expected()["lin.weight"] + 1.0)
    assert not torch.equal(cold.lin.weight, _expected()["lin.weight"])
    del cold, warm, model, state
    gc.collect()
    _weights_pool.discard()  # the pool's spare, made after a process's second job, is kept on purpose
    assert _opened_since(fds) == {}  # the worker load left no other descriptor open (its weights, its sockets)
    assert "safehub-weights" not in Path("/proc/self/maps").read_text()
    assert _mapped_from_tmpfs() == []


@pytest.mark.parametrize("warm_worker", [False, True], ids=["bwrap", "worker"])
def test_a_job_cannot_keep_its_weights_writable_or_unsealable(repo: Path, warm_worker: bool, channel: str) -> None:
    """The host seals the memfd, or proves the tmpfs file has no writer, only once
    every process of the job is gone: a lingering daemon's writable mapping is gone
    with it (the load succeeds). A job that sealed the memfd itself fails the load;
    from the tmpfs file's descriptor a job reaches nothing else."""
    def load(entry: str) -> Any:
        return safehub.load(str(repo), entry, source="local", verbose=False, force_reload=True,
                            limits=Limits(timeout_s=120, warm_worker=warm_worker))

    model = load("linger")
    assert torch.equal(model.weight, torch.ones(2, 2))  # the daemon had the memfd mapped
    assert model.safehub_info.sandbox_details["weights_channel"] == channel
    assert model.safehub_info.sandbox_details["worker"]["used"] is warm_worker
    if channel == "memfd":
        with pytest.raises(WeightsSealError, match="F_SEAL_SEAL"):
            load("seal_it")
    else:
        assert torch.equal(load("reach_out").weight, torch.zeros(2, 2))


def test_a_load_takes_the_weights_pool_s_warm_spare(repo: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    """The weights pool at its default, through a real warm worker: a process's
    first two loads find no spare, the second's weights size one, and the third's
    weights go into it and come back right."""
    monkeypatch.delenv(_huge_tmpfs.ENV_FLAG, raising=False)  # the pool alone turns the tmpfs on, even here
    monkeypatch.delenv(_weights_pool.ENV, raising=False)
    _weights_pool.discard()  # as in a new process
    try:
        def load() -> Any:
            return safehub.load(str(repo), "mixed", source="local", verbose=False, force_reload=True,
                                limits=Limits(timeout_s=120))

        for _ in range(2):  # no spare yet: a new file, or where those are cold (this VM), a memfd
            first = load()
            assert first.safehub_info.sandbox_details["weights_channel"] == (
                "memfd" if _huge_tmpfs.reports_free_pages() else "huge-tmpfs")
            assert "weights_warm_spare" not in first.safehub_info.sandbox_details
        assert _weights_pool.wait_ready(60)
        second = load()
        assert second.safehub_info.sandbox_details["weights_channel"] == "huge-tmpfs"
        assert second.safehub_info.sandbox_details["weights_warm_spare"] is True
        state = second.state_dict()
        for key, value in _expected().items():
            assert state[key].dtype == value.dtype and torch.equal(state[key], value), key
    finally:
        _weights_pool.discard()
