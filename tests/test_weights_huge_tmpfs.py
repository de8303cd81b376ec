"""The weights file on the host's huge-page tmpfs (safehub/_channel/_huge_tmpfs.py),
attacked without a sandbox, with real processes: the helper's mount really gives
2 MiB pages; the host's "no writer left" proof refuses while any other process
can still write the file (its descriptor, a reopened descriptor, a writable shared
mapping alone) and holds once that process is gone; a descriptor to the file leads
nowhere else on the mount; which backends get it, and what happens without it.
Real bubblewrap and warm-worker loads through it are in
tests/test_weights_memfd_e2e.py (slow)."""

from __future__ import annotations

import json
import os
import time
import subprocess
import sys
import textwrap
import threading
from collections.abc import Iterator
from typing import Any
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import specgen  # noqa: E402,F401  (puts runners/ on sys.path)
from _safetensors_write import write_safetensors_fd  # noqa: E402

from safehub import _jobs  # noqa: E402
from safehub._channel import ChannelLimits, _huge_tmpfs, _weights_pool  # noqa: E402
from safehub._channel._huge_tmpfs import WeightsTmpfile  # noqa: E402
from safehub._channel._memfd import WeightsMemfd  # noqa: E402
from safehub._channel._weights import load_tensors, read_header  # noqa: E402
from safehub._errors import WeightsSealError  # noqa: E402
from safehub._sandbox._limits import Limits  # noqa: E402
from safehub._sandbox._base import SandboxResult  # noqa: E402
from safehub._sandbox._bwrap import BwrapBackend  # noqa: E402
from safehub._sandbox._landlock import LandlockBackend  # noqa: E402
from safehub._sandbox._process import ProcessBackend  # noqa: E402


@pytest.fixture(autouse=True)
def _on(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Used wherever it can be mounted: this VM's balloon reports free pages, which
    turns it off by default (test_a_vm_that_reports_free_pages_keeps_the_memfd).
    Each test starts and ends with an empty weights pool (no spare another made)."""
    monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, "1")
    _weights_pool.discard()
    yield
    _weights_pool.discard()


def _tmpfile() -> WeightsTmpfile:
    w = _huge_tmpfs.weights_tmpfile()
    assert w is not None, (
        f"no huge-page tmpfs on this machine: {_huge_tmpfs.status()}. It needs unprivileged user namespaces "
        "and Linux >= 5.2; CI's machine has both, so this is a regression there")
    return w


def test_this_machine_has_the_mount() -> None:
    assert _huge_tmpfs.status() == {"huge_tmpfs": True, "weights_pool_mb": _weights_pool.pool_bytes() >> 20}, (
        _huge_tmpfs.status())


def test_the_mount_gives_2_mib_pages_mapped_whole() -> None:
    """8 MiB written and mapped as a load does: the host's private mapping is made of
    2 MiB pages (ShmemPmdMapped in its smaps), which is the point of the mount."""
    w = _tmpfile()
    try:
        n = 8 << 20
        write_safetensors_fd(w.fd, {"x": torch.ones(n // 4)})
        fd = w.sealed_fd(ChannelLimits())
        tensors = load_tensors(fd, read_header(fd, ChannelLimits()), None, mapped=True)
        assert float(tensors["x"][:: 1024].sum()) == n // 4 // 1024  # every page read once
        start = tensors["x"].untyped_storage().data_ptr()
        pmd_kb = None
        lines = Path("/proc/self/smaps").read_text().splitlines()
        for i, line in enumerate(lines):
            lo, _, hi = line.partition(" ")[0].partition("-")
            if hi and int(lo, 16) <= start < int(hi, 16):
                pmd_kb = next(int(x.split()[1]) for x in lines[i + 1:] if x.startswith("ShmemPmdMapped:"))
                break
        assert pmd_kb is not None, "the weights' mapping is not in /proc/self/smaps"
        assert pmd_kb >= 2048, (f"the weights are mapped in 4 KiB pages only (ShmemPmdMapped {pmd_kb} kB): no free "
                                "2 MiB page (see /proc/buddyinfo), or the mount lost huge=within_size")
        del tensors
    finally:
        w.close()


HOLDER = textwrap.dedent('''
    import mmap, os, sys
    fd, how = int(sys.argv[1]), sys.argv[2]
    if how == "reopened":  # a new open file description of its own, the inherited one closed
        mine = os.open(f"/proc/self/fd/{fd}", os.O_RDWR)
        os.close(fd)
    elif how == "mapping":  # only a writable shared mapping is left, no descriptor
        m = mmap.mmap(fd, 4096, flags=mmap.MAP_SHARED)
        os.close(fd)
    print("ready", flush=True)
    sys.stdin.read()  # until the test closes our stdin
    if how == "mapping":
        m[:5] = b"later"  # what the proof must prevent: bytes changed under the model
''')


@pytest.mark.parametrize("how", ["descriptor", "reopened", "mapping"])
def test_no_writer_left_is_proven_only_once_every_writer_is_gone(how: str) -> None:
    w = _tmpfile()
    try:
        os.ftruncate(w.fd, 4096)
        os.pwrite(w.fd, b"x" * 4096, 0)
        holder = subprocess.Popen([sys.executable, "-c", HOLDER, str(w.fd), how], pass_fds=(w.fd,),
                                  stdin=subprocess.PIPE, stdout=subprocess.PIPE)
        try:
            assert holder.stdout is not None and holder.stdout.readline() == b"ready\n"
            with pytest.raises(WeightsSealError, match="still open for writing, or mapped writable"):
                w.sealed_fd(ChannelLimits())
            assert w.fd == -1  # the host's own read-write descriptor is gone already
        finally:
            holder.kill()
            holder.wait()
        fd = w.sealed_fd(ChannelLimits())  # the holder has ended: now proven
        assert os.pread(fd, 5, 0) == b"xxxxx"
        with pytest.raises(OSError):  # and the host's descriptor writes nothing
            os.pwrite(fd, b"y", 0)
    finally:
        w.close()


def test_the_sandbox_s_descriptor_leads_nowhere_else_on_the_mount(tmp_path: Path) -> None:
    """All a job gets is its file's read-write descriptor: no name, no directory, no
    way up to the mount and another job's file."""
    other, w = _tmpfile(), _tmpfile()
    try:
        probe = textwrap.dedent('''
            import json, os, sys
            fd = int(sys.argv[1])
            tries = {
                "openat ..": lambda: os.open("..", os.O_RDONLY, dir_fd=fd),
                "openat new": lambda: os.open("x", os.O_CREAT | os.O_RDWR, 0o600, dir_fd=fd),
                "proc ..": lambda: os.listdir(f"/proc/self/fd/{fd}/.."),
                "link it": lambda: os.link(f"/proc/self/fd/{fd}", "/tmp/kept", follow_symlinks=True),
                "seal it": lambda: __import__("fcntl").fcntl(fd, 1033, 1),
            }
            worked = []
            for name, attempt in tries.items():
                try:
                    attempt()
                    worked.append(name)
                except OSError:
                    pass
            print(json.dumps({"link": os.readlink(f"/proc/self/fd/{fd}"), "worked": worked}))
        ''')
        out = json.loads(subprocess.run([sys.executable, "-c", probe, str(w.fd)], pass_fds=(w.fd,),
                                        capture_output=True, text=True, timeout=60, check=True).stdout)
        assert out["worked"] == [], out
        assert out["link"].endswith("(deleted)"), out  # unnamed (O_TMPFILE)
    finally:
        w.close()
        other.close()


def test_only_a_backend_that_ends_every_process_gets_the_file(monkeypatch: pytest.MonkeyPatch) -> None:
    job = _jobs.JobRequest(action="load", repo_dir=None, entrypoint="m")
    for backend, kind in ((BwrapBackend(), WeightsTmpfile), (LandlockBackend(), WeightsMemfd),
                          (ProcessBackend(), WeightsMemfd)):
        w = _jobs._weights_memfd(job, backend)
        try:
            assert type(w) is kind, backend.name
        finally:
            w.close()
    monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, "0")
    w = _jobs._weights_memfd(job, BwrapBackend())
    assert type(w) is WeightsMemfd
    w.close()
    assert _huge_tmpfs.status() == {"huge_tmpfs": False, "why_not": f"{_huge_tmpfs.ENV_FLAG}=0"}


def test_a_failed_helper_means_a_memfd_and_says_why(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    broken = tmp_path / "helper.py"
    broken.write_text("import sys; sys.stderr.write('unshare(CLONE_NEWUSER | CLONE_NEWNS): Operation not permitted\\n');"
                      " sys.exit(2)\n")
    monkeypatch.setattr(_huge_tmpfs, "HELPER", broken)
    monkeypatch.setattr(_huge_tmpfs, "_mount", None)  # this process's mount, made again with the broken helper
    assert _huge_tmpfs.weights_tmpfile() is None
    status = _huge_tmpfs.status()
    assert status["huge_tmpfs"] is False and "Operation not permitted" in status["why_not"], status
    w = _jobs._weights_memfd(_jobs.JobRequest(action="load", repo_dir=None, entrypoint="m"), BwrapBackend())
    assert type(w) is WeightsMemfd
    w.close()


def test_memfds_with_huge_pages_already_keep_the_memfd(monkeypatch: pytest.MonkeyPatch) -> None:
    """Root set shmem_enabled: a memfd is as fast, and its seals are the simpler proof."""
    monkeypatch.setattr(_huge_tmpfs, "shmem_huge_setting", lambda: "within_size")
    assert _huge_tmpfs.weights_tmpfile() is None
    assert "shmem_enabled" in _huge_tmpfs.status()["why_not"]


def test_the_runner_writes_into_it_as_into_a_memfd() -> None:
    """runners/_safetensors_write.weights_fd accepts it (F_GET_SEALS answers on every
    shmem file), and the bytes come back mapped, copy-on-write."""
    code = ("import os, sys; sys.path.insert(0, sys.argv[1]); import _safetensors_write as w; "
            "import torch; fd = w.weights_fd(); w.write_safetensors_fd(fd, {'a': torch.arange(6.0)})")
    w = _tmpfile()
    try:
        env = {**os.environ, "SAFEHUB_WEIGHTS_FD": str(w.fd)}
        subprocess.run([sys.executable, "-c", code, str(Path(_huge_tmpfs.__file__).parents[2] / "runners")],
                       pass_fds=(w.fd,), env=env, check=True, timeout=120)
        fd = w.sealed_fd(ChannelLimits())
        tensors = load_tensors(fd, read_header(fd, ChannelLimits()), None, mapped=True)
        assert torch.equal(tensors["a"], torch.arange(6.0))
        tensors["a"].add_(1)  # the model's own pages
        again = load_tensors(fd, read_header(fd, ChannelLimits()), None, mapped=True)
        assert torch.equal(again["a"], torch.arange(6.0))
    finally:
        w.close()


def _virtio(root: Path, name: str, device: str, features: str) -> None:
    (root / name).mkdir(parents=True)
    (root / name / "device").write_text(device + "\n")
    (root / name / "features").write_text(features + "\n")


def test_free_page_reporting_is_read_from_the_balloon_s_feature_bits(tmp_path: Path) -> None:
    bits = "0" * 64
    with_reporting = bits[:5] + "1" + bits[6:]
    _virtio(tmp_path / "a", "virtio0", "0x0001", with_reporting)  # a network card: bit 5 means something else
    _virtio(tmp_path / "a", "virtio1", "0x0005", bits)  # a balloon without reporting
    assert _huge_tmpfs.reports_free_pages(str(tmp_path / "a")) is False
    _virtio(tmp_path / "b", "virtio3", "0x0005", with_reporting)
    assert _huge_tmpfs.reports_free_pages(str(tmp_path / "b")) is True
    assert _huge_tmpfs.reports_free_pages(str(tmp_path / "missing")) is False


@pytest.mark.parametrize("setting, reports, used", [
    ("", True, False), ("", False, True), ("1", True, True), ("0", False, False)])
def test_a_vm_that_reports_free_pages_keeps_the_memfd(
        monkeypatch: pytest.MonkeyPatch, setting: str, reports: bool, used: bool) -> None:
    """Unset: automatic, off where free pages are reported; 1 and 0 decide."""
    monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, setting)
    monkeypatch.setattr(_huge_tmpfs, "reports_free_pages", lambda: reports)
    w = _jobs._weights_memfd(_jobs.JobRequest(action="load", repo_dir=None, entrypoint="m"), BwrapBackend())
    try:
        assert type(w) is (WeightsTmpfile if used else WeightsMemfd)
    finally:
        w.close()
    status = _huge_tmpfs.status()
    assert status["huge_tmpfs"] is used
    if not used:
        assert ("free page reporting" in status["why_not"]) == (setting == ""), status


def test_the_weights_pool_hands_out_a_warm_spare_then_makes_another(monkeypatch: pytest.MonkeyPatch) -> None:
    """SAFEHUB_WEIGHTS_POOL_MB: the first job finds no spare; once its weights are
    written one is made, their size in whole 2 MiB pages (at most the cap); the next
    job gets it, every page already there; the runner's ftruncate cuts it to the
    weights' size, and the proof holds as for any file; then another spare is made."""
    monkeypatch.setenv(_weights_pool.ENV, "64")
    _weights_pool.discard()
    jobs = []

    def written(w: WeightsTmpfile, floats: int) -> int:
        write_safetensors_fd(w.fd, {"a": torch.arange(float(floats))})
        _huge_tmpfs.note_job_weights(w.size())  # as Job.cleanup does
        fd = w.sealed_fd(ChannelLimits())
        tensors = load_tensors(fd, read_header(fd, ChannelLimits()), None, mapped=True)
        assert torch.equal(tensors["a"], torch.arange(float(floats)))
        return fd

    try:
        first = _tmpfile()
        jobs.append(first)
        assert os.fstat(first.fd).st_size == 0 and not first.warm_spare  # a new file: no spare yet
        written(first, (3 << 20) // 4)  # 3 MiB and a header
        assert _weights_pool.wait_ready(60), "the pool made no spare in 60 s"
        spare = _tmpfile()
        jobs.append(spare)
        st = os.fstat(spare.fd)
        assert spare.warm_spare and st.st_size == 4 << 20 and st.st_blocks * 512 >= 4 << 20  # allocated, not sparse
        fd = written(spare, 10)
        assert os.fstat(fd).st_size < 4096  # cut to the weights' size
        assert _weights_pool.wait_ready(60)
        again = _tmpfile()
        jobs.append(again)
        assert again.warm_spare and os.fstat(again.fd).st_size == 2 << 20  # sized after the last job
        assert os.fstat(again.fd).st_ino != os.fstat(fd).st_ino  # never a file another job had
        monkeypatch.setenv(_weights_pool.ENV, "2")
        written(again, (5 << 20) // 4)
        assert _weights_pool.wait_ready(60)
        capped = _tmpfile()
        jobs.append(capped)
        assert capped.warm_spare and os.fstat(capped.fd).st_size == 2 << 20  # at most the cap
    finally:
        for w in jobs:
            w.close()
        _weights_pool.discard()


def test_where_free_pages_are_reported_a_pool_s_spares_are_the_only_files(monkeypatch: pytest.MonkeyPatch) -> None:
    """There a new file is cold (slower than a memfd) and a warm spare is not: with
    the pool on, a job gets the spare when one is ready, else a memfd."""
    monkeypatch.delenv(_huge_tmpfs.ENV_FLAG)
    monkeypatch.setattr(_huge_tmpfs, "reports_free_pages", lambda: True)
    assert _huge_tmpfs.status()["huge_tmpfs"] is False
    monkeypatch.setenv(_weights_pool.ENV, "2")
    _weights_pool.discard()
    status = _huge_tmpfs.status()
    assert status["huge_tmpfs"] is False and status["weights_pool_mb"] == 2 and "free page reporting" in status["why_not"]
    job = _jobs.JobRequest(action="load", repo_dir=None, entrypoint="m")
    memfd = _jobs._weights_memfd(job, BwrapBackend())
    assert type(memfd) is WeightsMemfd  # no spare yet: not a cold new file
    try:
        os.pwrite(memfd.fd, b"x" * 100, 0)
        _huge_tmpfs.note_job_weights(memfd.size())  # a memfd job's size seeds the pool too
        assert _weights_pool.wait_ready(60)
        spare = _jobs._weights_memfd(job, BwrapBackend())
        assert type(spare) is WeightsTmpfile and spare.warm_spare
        spare.close()
    finally:
        memfd.close()
        _weights_pool.discard()
    monkeypatch.setenv(_weights_pool.ENV, "lots")  # not a number: no pool, and a warning
    assert _weights_pool.pool_bytes() == 0


def _mem_total() -> int:
    with open("/proc/meminfo", encoding="ascii") as f:
        for line in f:
            if line.startswith("MemTotal:"):
                return int(line.split()[1]) << 10
    raise AssertionError("no MemTotal in /proc/meminfo")


def test_by_default_the_pool_holds_at_most_1_gib_or_a_sixteenth_of_memory(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv(_weights_pool.ENV, raising=False)
    expected = min(1 << 30, _mem_total() // 16) // (2 << 20) * (2 << 20)
    assert _weights_pool.pool_bytes() == expected > 0
    assert _huge_tmpfs.status()["weights_pool_mb"] == expected >> 20
    monkeypatch.setenv(_weights_pool.ENV, "0")
    assert _weights_pool.pool_bytes() == 0 and "weights_pool_mb" not in _huge_tmpfs.status()


def test_a_cgroup_s_memory_limit_lowers_the_default_cap(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """In a container the machine's memory is not what the process may use: the
    lowest memory limit on its cgroup or above (v2 memory.max, v1
    memory.limit_in_bytes) counts instead, where lower."""
    from safehub import _cgroupfs as _cgroup

    v2 = tmp_path / "unified"
    (v2 / "slice" / "job").mkdir(parents=True)
    (v2 / "slice" / "job" / "memory.max").write_text("max\n")  # no limit here...
    (v2 / "slice" / "memory.max").write_text(f"{8 << 30}\n")  # ...but 8 GiB above
    (v2 / "memory.max").write_text("junk\n")
    v1 = tmp_path / "memory"
    (v1 / "x").mkdir(parents=True)
    (v1 / "x" / "memory.limit_in_bytes").write_text("9223372036854771712\n")  # v1's "no limit"
    (v1 / "memory.limit_in_bytes").write_text(f"{6 << 30}\n")
    for outside in ("memory.max", "memory.limit_in_bytes"):  # above the mounts: not a cgroup, never read
        (tmp_path / outside).write_text(f"{1 << 30}\n")
    own = {"v2": "/slice/job", "memory": "/x"}
    assert _cgroup.memory_limit([(str(v2), "cgroup2", ["rw"])], own) == 8 << 30
    assert _cgroup.memory_limit([(str(v2), "cgroup2", ["rw"]), (str(v1), "cgroup", ["rw", "memory"])], own) == 6 << 30
    assert _cgroup.memory_limit([(str(v1), "cgroup", ["rw", "pids"])], own) is None  # not the memory hierarchy
    assert _cgroup.memory_limit([(str(v2), "cgroup2", ["rw"])], {"v2": "/elsewhere"}) is None
    real = _cgroup.memory_limit()
    assert real is None or real > 0

    monkeypatch.delenv(_weights_pool.ENV, raising=False)
    monkeypatch.setattr(_cgroup, "memory_limit", lambda: 8 << 30)
    _weights_pool._default_bytes.cache_clear()
    try:
        assert _weights_pool.pool_bytes() == min(512 << 20, _mem_total() // 16 // (2 << 20) * (2 << 20))
    finally:
        _weights_pool._default_bytes.cache_clear()


def _job_done(root: Path, backend: Any, nbytes: int = 100) -> Any:
    """One job as _jobs runs it, less the sandbox: its weights file from the backend's
    channel, ``nbytes`` written into it, the channel noted once the sandbox has
    ended, then the host done with it (Job.cleanup: where the pool hears its size).
    Returns the weights object (closed)."""
    job = _jobs.JobRequest(action="load", repo_dir=None, entrypoint="m")
    result = SandboxResult(returncode=0, stdout=b"", stderr=b"", backend=backend.name, limits=Limits())
    weights = _jobs._weights_memfd(job, backend)
    os.pwrite(weights.fd, b"x" * nbytes, 0)
    root.mkdir()
    done = _jobs.Job(root=root, result={}, sandbox=result, weights=weights,
                     sizes_pool=_jobs._note_channel(job, backend, result, weights))
    done.cleanup()
    assert not root.exists() and weights.fd < 0
    return weights


def test_by_default_the_first_spare_waits_for_a_process_s_second_job(
        monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """Unset, a process that runs one job never makes a spare (a script that loads
    one model pays nothing); its second job's weights size the first, once the host
    is done with that job; set, the first job's do. Only jobs on a backend that
    takes the files count."""
    monkeypatch.delenv(_weights_pool.ENV, raising=False)
    for i, backend in enumerate((LandlockBackend(), ProcessBackend(), LandlockBackend())):  # never take spares
        _job_done(tmp_path / f"other{i}", backend)
    first = _job_done(tmp_path / "first", BwrapBackend())
    assert not first.warm_spare
    assert not _weights_pool.wait_ready(1.0), "a spare after a process's first job, with the pool unset"
    second = _job_done(tmp_path / "second", BwrapBackend(), nbytes=3 << 20)
    assert not second.warm_spare
    assert _weights_pool.wait_ready(60), "no spare after a process's second job"
    third = _huge_tmpfs.weights_tmpfile()
    try:
        assert third is not None and third.warm_spare and os.fstat(third.fd).st_size == 4 << 20  # sized after it
    finally:
        if third is not None:
            third.close()
    _weights_pool.discard()  # as a new process
    monkeypatch.setenv(_weights_pool.ENV, "4")
    _job_done(tmp_path / "set", BwrapBackend())
    assert _weights_pool.wait_ready(60), "set, the first job's weights make a spare"


def test_a_one_load_process_starts_no_helper_where_new_files_are_cold(tmp_path: Path) -> None:
    """Where free pages are reported (this VM; forced here so that the test means
    the same on any machine), a process's first job gets a memfd, and with the pool
    at its default nothing else happens: no mount helper, no pool thread. Its second
    job's spare mounts the tmpfs, on the pool's thread."""
    script = tmp_path / "one_load.py"
    script.write_text(textwrap.dedent('''
        import json, os, sys, threading
        from pathlib import Path
        from safehub import _jobs
        from safehub._channel import _huge_tmpfs, _weights_pool
        from safehub._sandbox._base import SandboxResult
        from safehub._sandbox._bwrap import BwrapBackend
        from safehub._sandbox._limits import Limits
        _huge_tmpfs.reports_free_pages = lambda: True
        job = _jobs.JobRequest(action="load", repo_dir=None, entrypoint="m")
        result = SandboxResult(returncode=0, stdout=b"", stderr=b"", backend="bwrap", limits=Limits())
        _huge_tmpfs.prepare()
        def job_done(root):
            w = _jobs._weights_memfd(job, BwrapBackend())
            os.pwrite(w.fd, b"x" * 100, 0)
            os.mkdir(root)
            done = _jobs.Job(root=Path(root), result={}, sandbox=result, weights=w,
                             sizes_pool=_jobs._note_channel(job, BwrapBackend(), result, w))
            done.cleanup()
            return w
        w = job_done(sys.argv[1] + "/one")
        after_one = {"channel": w.channel, "mount": _huge_tmpfs._mount is not None,
                     "threads": sorted(t.name for t in threading.enumerate() if t.name.startswith("safehub"))}
        job_done(sys.argv[1] + "/two")
        ready = _weights_pool.wait_ready(60)
        print(json.dumps({"after_one": after_one, "ready": ready, "mount": _huge_tmpfs._mount is not None}))
    '''))
    env = {k: v for k, v in os.environ.items() if k not in (_huge_tmpfs.ENV_FLAG, _weights_pool.ENV)}
    out = subprocess.run([sys.executable, str(script), str(tmp_path)], capture_output=True, text=True, env=env,
                         timeout=120,
                         cwd=Path(__file__).resolve().parent.parent)
    assert out.returncode == 0, out.stderr
    got = json.loads(out.stdout)
    assert got["after_one"] == {"channel": "memfd", "mount": False, "threads": []}, got
    assert got["ready"] is True and got["mount"] is True, got


def test_a_spare_no_job_takes_is_freed_after_the_idle_time(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_weights_pool.ENV, "4")
    monkeypatch.setattr(_weights_pool, "IDLE_S", 0.3)
    w = _tmpfile()
    try:
        write_safetensors_fd(w.fd, {"a": torch.zeros(1000)})
        _huge_tmpfs.note_job_weights(w.size())
        assert _weights_pool.wait_ready(60)
        spare = _weights_pool._current().spare
        assert spare is not None and spare.read_fd >= 0
        deadline = time.monotonic() + 30
        while _weights_pool._current().spare is not None and time.monotonic() < deadline:
            time.sleep(0.05)
        assert _weights_pool._current().spare is None, "the idle spare was kept"
        assert spare.read_fd < 0 and spare.fd < 0  # closed: its memory is freed
        assert _weights_pool.take() is None
        _huge_tmpfs.note_job_weights(w.size())  # the next job makes another
        assert _weights_pool.wait_ready(60)
        monkeypatch.setattr(_weights_pool, "IDLE_S", 300.0)
        for _ in range(5):  # a spare taken cancels its timer: one idle thread at most, however many loads
            taken = _weights_pool.take()
            assert taken is not None
            taken.close()
            _huge_tmpfs.note_job_weights(w.size())
            assert _weights_pool.wait_ready(60)
        idle = [t for t in threading.enumerate() if t.name == "safehub-weights-pool-idle" and t.is_alive()]
        deadline = time.monotonic() + 10
        while len(idle) > 1 and time.monotonic() < deadline:  # a cancelled timer's thread ends at once
            time.sleep(0.05)
            idle = [t for t in idle if t.is_alive()]
        assert len(idle) == 1, idle
    finally:
        w.close()


def test_a_job_that_starts_during_a_fill_stops_it(monkeypatch: pytest.MonkeyPatch) -> None:
    """Loads back to back: the next job's start (its take) stops the spare's fill,
    which would only slow that job down (hypervisor faults on a reporting VM); the
    partial spare is freed, and the next job's end starts another."""
    monkeypatch.setenv(_weights_pool.ENV, "1024")
    _huge_tmpfs.mount_fd()  # the helper's first run is not what this times
    _huge_tmpfs.note_job_weights(1 << 30)  # a 1 GiB spare: a fill of tens of ms at the very least
    assert _weights_pool.take() is None  # a job starts at once: no spare yet, and the fill stops
    pool = _weights_pool._current()
    filling = pool.filling
    if filling is not None:
        filling.join(60)
    assert pool.filling is None and pool.spare is None and not pool.ready.is_set(), "the fill ran to the end"
    _huge_tmpfs.note_job_weights(2 << 20)  # that job's end: a new spare, filled in full
    assert _weights_pool.wait_ready(60)
    spare = _weights_pool.take()
    assert spare is not None and os.fstat(spare.read_fd).st_size == 2 << 20
    spare.close()


def _fork_lingering() -> int:
    pid = os.fork()
    if pid == 0:  # holds whatever descriptors it inherited, until killed
        time.sleep(60)
        os._exit(0)
    return pid


@pytest.mark.parametrize("fork", ["after the handover", "before it"])
def test_a_child_forked_from_the_host_during_a_job(fork: str) -> None:
    """A fork while a job runs (multiprocessing, a DataLoader's workers) copies the
    host's descriptors. The host drops its read-write one once the sandbox has its
    copy (drop_writer, right after the spawn), so a later fork holds none and the
    proof holds while the child lives; a fork in the moment before still holds it,
    and the load fails closed, saying what may have happened."""
    w = _tmpfile()
    children = []
    try:
        if fork == "before it":
            children.append(_fork_lingering())
        writer = subprocess.Popen([sys.executable, "-c", f"import os; os.pwrite({w.fd}, b'weights', 0)"],
                                  pass_fds=(w.fd,))
        w.drop_writer()  # as the bwrap backend's after_spawn does
        if fork == "after the handover":
            children.append(_fork_lingering())
        assert writer.wait(60) == 0
        if fork == "before it":
            with pytest.raises(WeightsSealError, match="forked while it started the job"):
                w.sealed_fd(ChannelLimits())
        else:
            assert os.pread(w.sealed_fd(ChannelLimits()), 7, 0) == b"weights"
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        w.close()


def test_a_spare_waiting_in_the_pool_has_no_writer_a_fork_could_copy(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv(_weights_pool.ENV, "4")
    _weights_pool.discard()
    children = []
    jobs = []
    try:
        first = _tmpfile()
        jobs.append(first)
        write_safetensors_fd(first.fd, {"a": torch.zeros(10)})
        _huge_tmpfs.note_job_weights(first.size())
        first.sealed_fd(ChannelLimits())
        assert _weights_pool.wait_ready(60)
        children.append(_fork_lingering())  # a fork while the spare waits
        spare = _tmpfile()
        jobs.append(spare)
        assert spare.warm_spare and spare.fd >= 0  # a read-write descriptor again, for its job
        write_safetensors_fd(spare.fd, {"a": torch.ones(10)})
        fd = spare.sealed_fd(ChannelLimits())
        assert torch.equal(load_tensors(fd, read_header(fd, ChannelLimits()), None, mapped=True)["a"], torch.ones(10))
    finally:
        for pid in children:
            os.kill(pid, 9)
            os.waitpid(pid, 0)
        for w in jobs:
            w.close()
        _weights_pool.discard()
