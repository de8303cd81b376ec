"""The weights memfd (safehub/_channel/_memfd.py, runners/_safetensors_write.py),
attacked without a sandbox: the runner's writer into a real memfd, the host's seal,
size cap, strict header and copy-on-write mapping, and the warm worker's bounded
descriptor passing. A real bubblewrap and warm-worker load through the memfd is in
tests/test_weights_memfd_e2e.py (slow)."""

from __future__ import annotations

import fcntl
import gc
import hashlib
import json
import mmap
import os
import socket
import struct
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import specgen  # noqa: E402  (puts runners/ on sys.path)
from _safetensors_write import write_safetensors_fd  # noqa: E402

from safehub._channel import ChannelLimits, rebuild_from_output  # noqa: E402
from safehub._channel._memfd import F_ADD_SEALS, F_GET_SEALS, F_SEAL_SEAL, F_SEAL_WRITE, WeightsMemfd  # noqa: E402
from safehub._channel import _weights  # noqa: E402
from safehub._channel._weights import load_tensors, read_header, read_header_bytes  # noqa: E402
from safehub._errors import SpecTooLargeError, UnsafeSpecError, WeightsSealError  # noqa: E402

RUNNERS = Path(__file__).resolve().parents[1] / "runners"


def _tensors() -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return {  # odd sizes in every element size, so unordered they would misalign
        "u8": torch.randint(0, 255, (5,), dtype=torch.uint8, generator=g),
        "f32": torch.randn(3, 7, generator=g),
        "f16": torch.randn(3, generator=g).half(),
        "bool": torch.tensor([True, False, True]),
        "i64": torch.arange(3, dtype=torch.int64),
        "bf16": torch.randn(5, generator=g).bfloat16(),
        "f64": torch.randn(2, generator=g).double(),
        "empty": torch.zeros(0, 4),
    }


def _raw_memfd(data: bytes) -> WeightsMemfd:
    w = WeightsMemfd()
    os.pwrite(w.fd, data, 0)
    return w


def _st_bytes(header: dict, data: bytes) -> bytes:
    raw = json.dumps(header).encode()
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw + data


def test_round_trip_is_aligned_zero_copy_and_copy_on_write() -> None:
    sd = _tensors()
    w = WeightsMemfd()
    try:
        write_safetensors_fd(w.fd, sd)
        fd = w.sealed_fd(ChannelLimits())
        entries, header_raw = read_header_bytes(fd, ChannelLimits())
        assert entries["f32"].data_start % 8 == 0
        for key, e in entries.items():  # the runner's layout: every tensor on its element size
            assert (e.data_start + e.begin) % sd[key].element_size() == 0, key
        digest = hashlib.sha256(header_raw)
        loaded = load_tensors(fd, entries, None, digest=digest, mapped=True)
        for key, t in sd.items():
            assert loaded[key].dtype == t.dtype and torch.equal(loaded[key], t), key
        size = os.fstat(fd).st_size
        assert digest.hexdigest() == hashlib.sha256(os.pread(fd, size, 0)).hexdigest()  # the bytes built from
        # Views of one mapping, not copies: their addresses are their file offsets apart.
        a, b = loaded["i64"], loaded["f32"]
        assert b.data_ptr() - a.data_ptr() == entries["f32"].begin - entries["i64"].begin
        # The model trains in place: private pages; the sealed file is untouched.
        before = os.pread(fd, size, 0)
        with torch.no_grad():
            nn.Parameter(loaded["f32"]).add_(1.0)
        assert torch.equal(loaded["f32"], sd["f32"] + 1.0)
        assert os.pread(fd, size, 0) == before
        assert torch.equal(load_tensors(fd, entries, None, mapped=True)["f32"], sd["f32"])
        # ...and nobody can write it any more, by any route.
        with pytest.raises(PermissionError):
            os.pwrite(fd, b"x", 0)
        with pytest.raises(PermissionError):
            os.ftruncate(fd, 0)
        with pytest.raises(PermissionError):
            mmap.mmap(fd, size, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
        with pytest.raises(PermissionError):
            fcntl.fcntl(fd, F_ADD_SEALS, 0)  # F_SEAL_SEAL: not even the seals can change
        assert w.sealed_fd(ChannelLimits()) == fd  # sealing once, checking again, is fine
    finally:
        w.close()


def test_a_sandbox_that_sealed_the_memfd_itself_is_refused() -> None:
    w = _raw_memfd(b"x" * 16)
    try:
        fcntl.fcntl(w.fd, F_ADD_SEALS, F_SEAL_SEAL)  # no write seal, and none can be added now
        with pytest.raises(WeightsSealError, match="F_SEAL_SEAL"):
            w.sealed_fd(ChannelLimits())
    finally:
        w.close()


def test_a_live_writable_shared_mapping_is_refused() -> None:
    """A sandbox process that outlived the job and still maps the memfd writable
    could change the weights under the model: the kernel refuses the write seal (EBUSY)."""
    w = _raw_memfd(b"x" * 4096)
    child = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c",
         f"import mmap, sys; m = mmap.mmap({w.fd}, 4096, flags=mmap.MAP_SHARED); print('mapped', flush=True); sys.stdin.read()"],
        pass_fds=(w.fd,), stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert child.stdout is not None and child.stdout.readline() == b"mapped\n"
        with pytest.raises(WeightsSealError, match="mapped writable"):
            w.sealed_fd(ChannelLimits())
    finally:
        child.kill()
        child.wait()
        w.close()


def test_an_oversized_memfd_fails_before_anything_is_mapped(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = nn.Linear(64, 64)
    spec, weights = specgen.full_spec(model)
    out = specgen.write(tmp_path / "out", spec, weights)
    w = WeightsMemfd()
    try:
        write_safetensors_fd(w.fd, weights)

        def no_map(*a: object, **k: object) -> None:
            raise AssertionError("mapped before the size check")

        monkeypatch.setattr(_weights, "_map_private", no_map)
        with pytest.raises(SpecTooLargeError, match="over the 1000-byte cap"):
            rebuild_from_output(out, weights=w, limits=ChannelLimits(weights_bytes=1000))
    finally:
        w.close()


def test_the_memfd_is_the_only_source_when_the_host_passed_one(tmp_path: Path) -> None:
    """out/weights.safetensors holds other values: the model has the memfd's; and with
    no file at all, the memfd is enough. No descriptor is left open."""
    model = nn.Linear(3, 2)
    spec, weights = specgen.full_spec(model)
    out = specgen.write(tmp_path / "out", spec, {k: torch.zeros_like(v) for k, v in weights.items()})
    rebuild_from_output(out)  # (torch's first use opens descriptors of its own)
    fds_before = sorted(os.listdir("/proc/self/fd"))
    w = WeightsMemfd()
    try:
        write_safetensors_fd(w.fd, weights)
        rebuilt = rebuild_from_output(out, weights=w)
        assert rebuilt.state_dict()
        for name, t in rebuilt.state_dict().items():
            assert torch.equal(t, weights[f"m0.{name}"]), name
        (out / "weights.safetensors").unlink()
        again = rebuild_from_output(out, weights=w)
        assert all(torch.equal(t, weights[f"m0.{n}"]) for n, t in again.state_dict().items())
    finally:
        w.close()
    assert "safehub-weights" in Path("/proc/self/maps").read_text()  # the model maps it, the fd is gone
    assert sorted(os.listdir("/proc/self/fd")) == fds_before
    del rebuilt, again, t
    gc.collect()
    assert "safehub-weights" not in Path("/proc/self/maps").read_text()  # unmapped with the last tensor
    w.close()  # idempotent


@pytest.mark.parametrize("case", ["no_weights", "header_longer_than_file", "gap", "short_tensor"])
def test_header_lies_in_a_memfd_fail_as_for_a_file(case: str) -> None:
    f32 = {"dtype": "F32", "shape": [2], "data_offsets": [0, 8]}
    data = {
        "no_weights": b"",
        "header_longer_than_file": struct.pack("<Q", 1 << 20) + b"{}",
        "gap": _st_bytes({"a": {"dtype": "F32", "shape": [2], "data_offsets": [4, 12]}}, b"\0" * 12),
        "short_tensor": _st_bytes({"a": f32}, b"\0" * 4),
    }[case]
    w = _raw_memfd(data)
    try:
        with pytest.raises(UnsafeSpecError):
            read_header(w.sealed_fd(ChannelLimits()), ChannelLimits())
    finally:
        w.close()


def test_a_misaligned_tensor_is_copied_into_aligned_memory() -> None:
    """A hostile runner may put a float32 at an odd offset: that tensor is copied
    (a misaligned view is undefined behaviour for many kernels), the rest stay views."""
    vals = torch.tensor([1.5, -2.0, 3.25])
    header = {"a": {"dtype": "U8", "shape": [1], "data_offsets": [0, 1]},
              "b": {"dtype": "F32", "shape": [3], "data_offsets": [1, 13]}}
    w = _raw_memfd(_st_bytes(header, b"\x07" + bytes(vals.untyped_storage())))
    try:
        fd = w.sealed_fd(ChannelLimits())
        entries = read_header(fd, ChannelLimits())
        assert (entries["b"].data_start + entries["b"].begin) % 4 == 1
        loaded = load_tensors(fd, entries, None, mapped=True)
        assert torch.equal(loaded["b"], vals) and loaded["b"].data_ptr() % 4 == 0
        assert loaded["a"].tolist() == [7]
    finally:
        w.close()


def test_the_runner_keeps_exactly_the_weights_fd_past_close_fds() -> None:
    """runners/_confine.py close_fds with keep_fd, in a child process (it closes fds)."""
    w = WeightsMemfd()
    r, x = os.pipe()
    code = (f"import os, sys; sys.path.insert(0, {str(RUNNERS)!r}); import _confine; "
            f"_confine.apply({{'close_fds': True, 'keep_fd': {w.fd}}}); "
            f"print(sorted(int(f) for f in os.listdir('/proc/self/fd') if int(f) > 2))")
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", code], pass_fds=(r, x, w.fd),
                              capture_output=True, text=True, check=True)
        kept = json.loads(done.stdout)
        assert w.fd in kept and r not in kept and x not in kept and len(kept) <= 2  # (+ listdir's own)
        bad = code.replace(f"'keep_fd': {w.fd}", "'keep_fd': 2")
        refused = subprocess.run([sys.executable, "-I", "-S", "-c", bad], capture_output=True, text=True)
        assert refused.returncode != 0 and "keep_fd" in refused.stderr
        # The runner accepts SAFEHUB_WEIGHTS_FD only for a memfd.
        check = (f"import sys; sys.path.insert(0, {str(RUNNERS)!r}); import _safetensors_write as w; "
                 "print(w.weights_fd())")
        ok = subprocess.run([sys.executable, "-I", "-S", "-c", check], pass_fds=(w.fd, r),
                            env={"SAFEHUB_WEIGHTS_FD": str(w.fd)}, capture_output=True, text=True)
        assert ok.stdout.strip() == str(w.fd)
        pipe = subprocess.run([sys.executable, "-I", "-S", "-c", check], pass_fds=(w.fd, r),
                              env={"SAFEHUB_WEIGHTS_FD": str(r)}, capture_output=True, text=True)
        assert pipe.returncode != 0 and "not an open memfd" in pipe.stderr
    finally:
        for fd in (r, x):
            os.close(fd)
        w.close()


def _worker_module():
    if str(RUNNERS) not in sys.path:
        sys.path.insert(0, str(RUNNERS))
    import safehub_worker

    return safehub_worker


@pytest.mark.parametrize("case", ["two_fds", "fd_not_announced", "fd_missing", "not_a_memfd"])
def test_the_worker_accepts_exactly_one_announced_memfd(case: str) -> None:
    worker = _worker_module()
    host, mine = socket.socketpair()
    memfds = [WeightsMemfd(), WeightsMemfd()]
    r, x = os.pipe()
    fds_before = sorted(os.listdir("/proc/self/fd"))
    try:
        line = {"two_fds": {"weights_fd": True}, "fd_not_announced": {}, "fd_missing": {"weights_fd": True},
                "not_a_memfd": {"weights_fd": True}}[case]
        data = json.dumps({"job": "x", **line}).encode() + b"\n"
        send = {"two_fds": [memfds[0].fd, memfds[1].fd], "fd_not_announced": [memfds[0].fd], "fd_missing": [],
                "not_a_memfd": [r]}[case]
        socket.send_fds(host, [data], send) if send else host.sendall(data)
        with pytest.raises((ValueError, OSError)):
            worker._read_message(mine)
        assert sorted(os.listdir("/proc/self/fd")) == fds_before  # every received descriptor closed
        # The well-formed case on the same connection: one memfd, announced.
        socket.send_fds(host, [json.dumps({"job": "x", "weights_fd": True}).encode() + b"\n"], [memfds[0].fd])
        message, fd = worker._read_message(mine)
        assert message["weights_fd"] is True and fd is not None
        assert os.fstat(fd).st_ino == os.fstat(memfds[0].fd).st_ino
        assert fcntl.fcntl(fd, fcntl.F_GETFD) & fcntl.FD_CLOEXEC
        os.close(fd)
    finally:
        host.close()
        mine.close()
        for fd in (r, x):
            os.close(fd)
        for m in memfds:
            m.close()


def test_seal_constants_match_the_kernel() -> None:
    assert F_ADD_SEALS == 1033 and F_GET_SEALS == 1034 and F_SEAL_WRITE == 8


def test_rlimit_fsize_bounds_what_a_job_can_put_in_the_memfd() -> None:
    """The memfd is memory the sandbox's RLIMIT_AS does not count: its size is capped
    by RLIMIT_FSIZE (Limits.max_file_bytes), as a file on disk is. Checked on this
    kernel, in a child with a 1 MiB cap (SIGXFSZ ignored: the call fails with EFBIG)."""
    w = WeightsMemfd()
    code = (f"import os, resource, signal; signal.signal(signal.SIGXFSZ, signal.SIG_IGN); "
            f"resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20)); fd = {w.fd}\n"
            "for call in (lambda: os.ftruncate(fd, 2 << 20), lambda: os.pwrite(fd, b'x', 2 << 20)):\n"
            "    try:\n        call(); print('allowed')\n    except OSError as exc:\n        print(exc.errno)\n"
            "print(os.pwrite(fd, b'x' * 4096, (1 << 20) - 1024))")
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", code], pass_fds=(w.fd,), capture_output=True,
                              text=True, check=True)
        assert done.stdout.split() == ["27", "27", "1024"]  # EFBIG, EFBIG, a short write up to the cap
        assert os.fstat(w.fd).st_size == 1 << 20
    finally:
        w.close()


def test_another_device_gets_a_copy_from_the_mapping() -> None:
    """device= other than cpu: ``.to(device)`` straight from the mapping (meta here:
    this machine has no GPU); nothing keeps the mapping alive afterwards."""
    w = WeightsMemfd()
    try:
        write_safetensors_fd(w.fd, {"a": torch.randn(8)})
        fd = w.sealed_fd(ChannelLimits())
        loaded = load_tensors(fd, read_header(fd, ChannelLimits()), "meta", mapped=True)
        assert loaded["a"].device.type == "meta" and loaded["a"].shape == (8,)
    finally:
        w.close()
    gc.collect()
    assert "safehub-weights" not in Path("/proc/self/maps").read_text()


def test_an_empty_memfd_never_falls_back_to_the_file(tmp_path: Path) -> None:
    """The runner wrote out/weights.safetensors instead of the memfd the host gave it:
    the load fails; the host never reads 'whatever file is there'."""
    model = nn.Linear(3, 2)
    spec, weights = specgen.full_spec(model)
    out = specgen.write(tmp_path / "out", spec, weights)
    assert rebuild_from_output(out).state_dict()  # the file alone would do
    w = WeightsMemfd()
    try:
        with pytest.raises(UnsafeSpecError, match="no weights into the job's memfd"):
            rebuild_from_output(out, weights=w)
    finally:
        w.close()


def test_doctor_reports_the_channel_and_the_shmem_huge_page_setting(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    from safehub._channel import _huge_tmpfs
    from safehub._channel._memfd import shmem_huge_setting
    from safehub._doctor import _weights_report

    fake = tmp_path / "shmem_enabled"
    fake.write_text("always [within_size] advise never deny force\n")
    assert shmem_huge_setting(str(fake)) == "within_size"
    assert shmem_huge_setting(str(tmp_path / "missing")) is None
    monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, "1")
    report = _weights_report()
    assert report["shmem_enabled"] == shmem_huge_setting()
    assert report["huge_tmpfs"] == _huge_tmpfs.status()
    assert report["channel"].startswith(
        "a file on safehub's own huge-page tmpfs" if report["huge_tmpfs"]["huge_tmpfs"] else "sealed memfd")
    assert "warm spare" in report["channel"] and "from a process's third bwrap job on" in report["note"]  # the default pool
    monkeypatch.setenv(_huge_tmpfs.ENV_FLAG, "0")  # turned off: 4 KiB pages unless root set shmem_enabled; no pool
    report = _weights_report()
    assert report["channel"].startswith("sealed memfd") and report["huge_tmpfs"]["why_not"] == "SAFEHUB_HUGE_TMPFS=0"
    assert "warm spare" not in report["channel"]
    assert (report["note"] is None) == (report["shmem_enabled"] not in ("never", "deny", None))
    monkeypatch.delenv(_huge_tmpfs.ENV_FLAG)  # automatic, on a VM that reports free pages: only the pool's spares
    monkeypatch.setattr(_huge_tmpfs, "reports_free_pages", lambda: True)
    report = _weights_report()
    assert report["channel"].startswith("sealed memfd, or the weights pool's warm spare")
    monkeypatch.setenv("SAFEHUB_WEIGHTS_POOL_MB", "0")  # the pool off there: it is the hint
    report = _weights_report()
    assert report["channel"].startswith("sealed memfd (") and "SAFEHUB_WEIGHTS_POOL_MB=0, as here" in report["note"]
    monkeypatch.setenv("SAFEHUB_WEIGHTS_POOL_MB", "64")
    report = _weights_report()
    assert "warm spare" in report["channel"] and "up to 64 MiB held" in report["note"] and "process's second bwrap job" in report["note"]
