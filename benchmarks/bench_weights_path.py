"""Weights along the whole path a load moves them: the runner writes
weights.safetensors (runners/_safetensors_write.py), the host checks its header
and reads every tensor into memory it owns (safehub/_channel/_weights.py), and
the module takes the tensors without a copy. Run by hand:

    python benchmarks/bench_weights_path.py [--mib 256] [--repeat 5]

Prints the median seconds and GB/s of the write, the read and both, against a
memcpy of the same bytes (``Tensor.copy_`` into fresh tensors) in the same run;
the goal is >= 50% of memcpy for write + read. The host reads with ``preadv``
into fresh memory rather than mapping the file: the file belongs to the sandbox,
and a mapped page would follow a later write to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "runners"))

import torch  # noqa: E402

from _safetensors_write import write_safetensors  # noqa: E402

from safehub._channel._limits import ChannelLimits  # noqa: E402
from safehub._channel._weights import load_tensors, read_header  # noqa: E402


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--mib", type=int, default=256)
    ap.add_argument("--repeat", type=int, default=5)
    args = ap.parse_args()
    per = 4 * 2**20  # 16 MiB float32 tensors
    n = args.mib * 2**20 // 4
    sd = {f"m0.layer{i}.weight": torch.randn(min(per, n - i * per)) for i in range((n + per - 1) // per)}
    gb = sum(t.numel() * t.element_size() for t in sd.values()) / 1e9
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "weights.safetensors")
        dst = {k: torch.empty_like(v) for k, v in sd.items()}
        memcpy = timed(lambda: [dst[k].copy_(v) for k, v in sd.items()], args.repeat)
        write = timed(lambda: write_safetensors(path, sd), args.repeat)

        def read() -> None:
            fd = os.open(path, os.O_RDONLY)
            try:
                load_tensors(fd, read_header(fd, ChannelLimits()), None)
            finally:
                os.close(fd)

        read_s = timed(read, args.repeat)
    both = write + read_s
    print(f"{gb:.2f} GB; memcpy {memcpy:.3f} s ({gb / memcpy:.2f} GB/s)")
    for name, s in (("runner write", write), ("host check + read", read_s), ("write + read", both)):
        print(f"{name:18s} {s:.3f} s ({gb / s:.2f} GB/s, {memcpy / s:.0%} of memcpy)")


if __name__ == "__main__":
    main()
