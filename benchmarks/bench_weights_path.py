"""Weights along the whole path a load moves them, every way safehub has, against
memcpy, in one run:

* **huge tmpfs** (bubblewrap and its warm worker, where the host could mount one):
  as the memfd below, but the file is on the host's own tmpfs mounted with
  ``huge=within_size`` in a user namespace (safehub/_channel/_huge_tmpfs.py), so its
  pages are 2 MiB whatever ``shmem_enabled`` says; the host proves no writer is left
  (a write lease) instead of sealing. Timed the same two ways, and both again into
  the weights pool's warm spare (at its default: from a process's third job on, a
  file whose pages were allocated and touched beforehand, on a thread, off the
  clock; _weights_pool.py), which is what a long-running process's loads get.
* **memfd** (bubblewrap, the warm worker, landlock, process): the runner writes
  the safetensors bytes into a memfd the host created (ftruncate + pwrite,
  runners/_safetensors_write.py), the host seals it, checks the header and maps
  it copy-on-write; the tensors are views of the mapping (safehub/_channel/_memfd.py,
  ``_weights.map_tensors``). Timed twice: up to the tensors (what a load does), and
  with a first read of every page (the minor faults a first forward pays).
* **file** (the fallback for backends that cannot pass a descriptor): the runner
  writes out/weights.safetensors, the host checks its header and ``preadv``s every
  tensor into memory it owns.

Run by hand:

    python benchmarks/bench_weights_path.py [--mib 256] [--repeat 5] [--idle-s 0]

``--idle-s 5`` waits before each run: on a VM whose balloon reports free pages to
its hypervisor (the 2-core test machine), what was freed seconds ago is slow to use
again, so back-to-back runs (the default) show each way at its best, and spaced
runs show it as loads that come seconds apart meet it.

Prints the median seconds and GB/s of each part and of each whole path, as a
share of a memcpy of the same bytes (``Tensor.copy_`` into warm tensors) measured
in the same run (the fastest of three medians: before, between and after the
paths); the goal is >= 50% of memcpy. Also prints
/sys/kernel/mm/transparent_hugepage/shmem_enabled: with ``never`` (the usual
default) the memfd's pages are 4 KiB and page allocation bounds the write; with
``always`` or ``within_size`` they are 2 MiB.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))

import torch  # noqa: E402

from _safetensors_write import write_safetensors, write_safetensors_fd  # noqa: E402

from safehub._channel import _huge_tmpfs, _weights_pool  # noqa: E402
from safehub._channel._limits import ChannelLimits  # noqa: E402
from safehub._channel._memfd import WeightsMemfd, shmem_huge_setting  # noqa: E402
from safehub._channel._weights import load_tensors, read_header  # noqa: E402


IDLE_S = 0.0  # --idle-s


def timed(fn, repeat: int, setup=None, teardown=None) -> float:
    """Median seconds of ``fn`` (given ``setup()``'s value, if any). What it returns is
    dropped after the clock stops: freeing the last run's tensors (and for a memfd,
    its pages) is the cost of dropping a model, not of loading one. With --idle-s,
    each run first waits that long, off the clock, as loads come apart in real use."""
    times = []
    for _ in range(repeat):
        time.sleep(IDLE_S)
        state = setup() if setup is not None else None
        t0 = time.perf_counter()
        result = fn(state) if setup is not None else fn()
        times.append(time.perf_counter() - t0)
        if teardown is not None:
            teardown(state, result)
        del result
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    ap.add_argument("--idle-s", type=float, default=0.0,
                    help="wait this long before each run (off the clock): on a VM whose balloon reports free pages, "
                         "memory freed that long ago is slow to use again, 2 MiB pages above all")
    args = ap.parse_args()
    global IDLE_S
    IDLE_S = args.idle_s
    os.environ[_huge_tmpfs.ENV_FLAG] = "1"  # measured wherever it can be mounted (off by default on such a VM)
    per = 4 * 2**20  # 16 MiB float32 tensors
    n = args.mib * 2**20 // 4
    sd = {f"m0.layer{i}.weight": torch.randn(min(per, n - i * per)) for i in range((n + per - 1) // per)}
    gb = sum(t.numel() * t.element_size() for t in sd.values()) / 1e9
    limits = ChannelLimits()
    dst = {k: torch.empty_like(v) for k, v in sd.items()}
    memcpys: list[float] = []

    def measure_memcpy() -> None:  # before, between and after the paths: this machine's memcpy varies
        memcpys.append(timed(lambda: [dst[k].copy_(v) for k, v in sd.items()], args.repeat))

    measure_memcpy()

    # memfd: the runner's write, then the host's seal + header + map.
    def memfd_write(w: Any) -> None:  # a WeightsMemfd or a WeightsTmpfile: the same calls
        write_safetensors_fd(w.fd, sd)

    def memfd_written() -> WeightsMemfd:
        w = WeightsMemfd()
        write_safetensors_fd(w.fd, sd)
        return w

    def memfd_map(w: Any) -> dict:
        fd = w.sealed_fd(limits)
        return load_tensors(fd, read_header(fd, limits), None, mapped=True)

    def memfd_both(w: Any) -> dict:
        write_safetensors_fd(w.fd, sd)
        return memfd_map(w)

    def memfd_both_touched(w: Any) -> dict:
        out = memfd_both(w)
        for t in out.values():  # one read per 4 KiB page: every page mapped in
            t.view(-1)[:: 1024].sum()
        return out

    def close(w: Any, _result: object) -> None:
        w.close()

    def tmpfile() -> Any:
        w = _huge_tmpfs.weights_tmpfile()
        if w is None:
            sys.exit(f"no huge-page tmpfs here: {_huge_tmpfs.status()}")
        return w

    def tmpfile_written() -> Any:
        w = tmpfile()
        write_safetensors_fd(w.fd, sd)
        return w

    def spare() -> Any:  # the weights pool's warm spare (made on its thread, off the clock)
        if not _weights_pool.wait_ready(120):
            sys.exit("the weights pool made no spare in 120 s")
        w = tmpfile()
        assert w.warm_spare
        return w

    _huge_tmpfs.mount_fd()  # the helper runs once per process: not a per-load cost
    os.environ.pop(_weights_pool.ENV, None)  # the pool at its default
    if _weights_pool.pool_bytes() < (args.mib + 1) << 20:  # the header fits too
        sys.exit(f"--mib {args.mib} is more than the weights pool's default cap here "
                 f"({_weights_pool.pool_bytes() >> 20} MiB): try a smaller --mib")
    _weights_pool.discard()  # as in a new process: by default, a spare from its second job on
    for _ in range(2):
        seed = tmpfile()
        memfd_both(seed)  # the process's first jobs: the second's weights size the first spare
        _huge_tmpfs.note_job_weights(seed.size())
        seed.close()

    def close_noted(w: Any, _result: object) -> None:  # as Job.cleanup does once the host is done with a job
        _huge_tmpfs.note_job_weights(w.size())
        w.close()

    p_both = timed(memfd_both, args.repeat, setup=spare, teardown=close_noted)
    p_touched = timed(memfd_both_touched, args.repeat, setup=spare, teardown=close_noted)
    os.environ[_weights_pool.ENV] = "0"  # the rows below are new files and memfds
    _weights_pool.discard()
    measure_memcpy()

    h_write = timed(memfd_write, args.repeat, setup=tmpfile, teardown=close)
    h_map = timed(memfd_map, args.repeat, setup=tmpfile_written, teardown=close)
    h_both = timed(memfd_both, args.repeat, setup=tmpfile, teardown=close)
    h_touched = timed(memfd_both_touched, args.repeat, setup=tmpfile, teardown=close)
    measure_memcpy()

    m_write = timed(memfd_write, args.repeat, setup=WeightsMemfd, teardown=close)
    m_map = timed(memfd_map, args.repeat, setup=memfd_written, teardown=close)
    m_both = timed(memfd_both, args.repeat, setup=WeightsMemfd, teardown=close)
    m_touched = timed(memfd_both_touched, args.repeat, setup=WeightsMemfd, teardown=close)
    measure_memcpy()

    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "weights.safetensors")
        f_write = timed(lambda: write_safetensors(path, sd), args.repeat)

        def read() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                load_tensors(fd, read_header(fd, limits), None)
            finally:
                os.close(fd)

        f_read = timed(read, args.repeat)
        f_both = timed(lambda: (write_safetensors(path, sd), read()), args.repeat)
    measure_memcpy()
    memcpy = min(memcpys)  # the fastest: shares below are conservative
    print(f"{gb:.2f} GB in {len(sd)} float32 tensors; memcpy {memcpy:.3f} s ({gb / memcpy:.2f} GB/s; medians before, "
          f"between, after: {', '.join(f'{gb / m:.1f}' for m in memcpys)} GB/s); shmem_enabled={shmem_huge_setting() or 'unknown'}; "
          f"load average {os.getloadavg()[0]:.2f}; free page reporting: {_huge_tmpfs.reports_free_pages()}; "
          f"idle before each run: {IDLE_S} s")
    rows = (
        ("huge tmpfs: runner write", h_write), ("huge tmpfs: host proof + check + map", h_map),
        ("huge tmpfs: whole path", h_both), ("huge tmpfs: whole path + first touch", h_touched),
        ("huge tmpfs, pool's spare: whole path", p_both), ("huge tmpfs, pool's spare: + first touch", p_touched),
        ("memfd: runner write", m_write), ("memfd: host seal + check + map", m_map),
        ("memfd: whole path", m_both), ("memfd: whole path + first touch", m_touched),
        ("file: runner write", f_write), ("file: host check + read", f_read), ("file: whole path", f_both),
    )
    for name, s in rows:
        print(f"{name:40s} {s:.3f} s ({gb / s:6.2f} GB/s, {memcpy / s:4.0%} of memcpy)")


if __name__ == "__main__":
    main()
