"""Ways to put weights into fresh memory on this machine, against a memcpy between warm
tensors in the same run: what bounds the weights goal (>= 50% of memcpy) without
shared-memory huge pages. Run by hand:

    python benchmarks/bench_weights_ways.py [--mib 256] [--repeat 5]

Each way moves ``--mib`` MiB into memory that was never touched (a new memfd, a new
anonymous mapping), as a load's weights arrive; the medians are printed as GB/s and
as a share of the memcpy:

* memfd, the pages' allocation alone (``posix_fallocate``): the floor of any writer;
* memfd, ``pwrite`` into it (what the runner does), and into pages allocated before
  the clock starts (what a pool filled while idle would give);
* one process copying into a fresh anonymous mapping, with and without
  ``MADV_HUGEPAGE`` (THP for anonymous memory is ``madvise`` on this kernel);
* another process's memory read with ``process_vm_readv`` into a fresh mapping
  (with and without ``MADV_HUGEPAGE``), and a pipe from another process.

The other processes are forks that only read or write bytes (no torch call after
the fork). Linux only.
"""

from __future__ import annotations

import argparse
import ctypes
import mmap
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Callable

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import print_report  # noqa: E402

_LIBC = ctypes.CDLL(None, use_errno=True)
_F_SETPIPE_SZ = 1031


class _IoVec(ctypes.Structure):
    _fields_ = [("base", ctypes.c_void_p), ("len", ctypes.c_size_t)]


def _fresh_mapping(n: int, huge: bool) -> mmap.mmap:
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS)
    if huge:
        m.madvise(mmap.MADV_HUGEPAGE)
    return m


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--mib", type=int, default=256)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    n = args.mib * 2**20
    src = torch.randn(n // 4)
    dst = torch.empty_like(src)
    src_bytes = memoryview((ctypes.c_char * n).from_address(src.data_ptr())).cast("B")

    def median(fn: Callable[[], float]) -> float:
        return statistics.median(fn() for _ in range(args.repeat))

    def memcpy() -> float:
        start = time.perf_counter()
        dst.copy_(src)
        return time.perf_counter() - start

    def memfd(preallocate: bool, write: bool) -> float:
        fd = os.memfd_create("w", os.MFD_ALLOW_SEALING)
        try:
            os.ftruncate(fd, n)
            if preallocate:
                os.posix_fallocate(fd, 0, n)
            start = time.perf_counter()
            if not write:
                os.posix_fallocate(fd, 0, n)
            off = 0
            while write and off < n:
                off += os.pwrite(fd, src_bytes[off:off + (16 << 20)], off)
            return time.perf_counter() - start
        finally:
            os.close(fd)

    def anon_copy(huge: bool) -> float:
        start = time.perf_counter()
        m = _fresh_mapping(n, huge)
        torch.frombuffer(m, dtype=torch.float32).copy_(src)
        return time.perf_counter() - start

    # One child holds a copy of src (pages shared after fork, only read) for process_vm_readv.
    ready_r, ready_w = os.pipe()
    holder = os.fork()
    if holder == 0:
        os.write(ready_w, b"x")
        time.sleep(3600)
        os._exit(0)
    os.read(ready_r, 1)
    _LIBC.process_vm_readv.argtypes = [ctypes.c_int, ctypes.POINTER(_IoVec), ctypes.c_ulong,
                                       ctypes.POINTER(_IoVec), ctypes.c_ulong, ctypes.c_ulong]
    _LIBC.process_vm_readv.restype = ctypes.c_ssize_t

    def vm_read(huge: bool) -> float:
        start = time.perf_counter()
        m = _fresh_mapping(n, huge)
        local = _IoVec(ctypes.addressof(ctypes.c_char.from_buffer(m)), n)
        remote = _IoVec(src.data_ptr(), n)
        if _LIBC.process_vm_readv(holder, ctypes.byref(local), 1, ctypes.byref(remote), 1, 0) != n:
            raise OSError(ctypes.get_errno(), "process_vm_readv")
        return time.perf_counter() - start

    def pipe(huge: bool) -> float:
        import fcntl

        r, w = os.pipe()
        fcntl.fcntl(w, _F_SETPIPE_SZ, 1 << 20)  # the largest an unprivileged process may ask for
        writer = os.fork()
        if writer == 0:
            os.close(r)
            off = 0
            while off < n:
                off += os.write(w, src_bytes[off:off + (1 << 20)])
            os._exit(0)
        os.close(w)
        start = time.perf_counter()
        m = _fresh_mapping(n, huge)
        view, off = memoryview(m), 0
        while off < n:
            got = os.readv(r, [view[off:off + (1 << 20)]])
            if not got:
                break
            off += got
        elapsed = time.perf_counter() - start
        view.release()
        os.waitpid(writer, 0)
        os.close(r)
        return elapsed

    try:
        ways = {
            "memfd_allocation_only": lambda: memfd(preallocate=False, write=False),
            "memfd_pwrite": lambda: memfd(preallocate=False, write=True),
            "memfd_pwrite_preallocated": lambda: memfd(preallocate=True, write=True),
            "anonymous_copy": lambda: anon_copy(False),
            "anonymous_copy_hugepage": lambda: anon_copy(True),
            "process_vm_readv": lambda: vm_read(False),
            "process_vm_readv_hugepage": lambda: vm_read(True),
            "pipe_hugepage": lambda: pipe(True),
        }
        memcpy_s = median(memcpy)
        report: dict[str, object] = {"mib": args.mib, "repeat": args.repeat,
                                     "memcpy_gb_s": round(n / memcpy_s / 1e9, 2)}
        for name, fn in ways.items():
            seconds = median(fn)
            report[name] = {"gb_s": round(n / seconds / 1e9, 2), "share_of_memcpy": f"{memcpy_s / seconds:.0%}"}
    finally:
        os.kill(holder, 9)
        os.waitpid(holder, 0)
    print_report(report, as_json=args.json)


if __name__ == "__main__":
    main()
