"""Writing a 1 GiB state dict as safetensors: the runner's numpy-free writer against
safetensors' own ``save_file`` (which needs numpy). Run by hand:

    python benchmarks/bench_weights_write.py [--gib 1] [--repeat 3]

Prints the median seconds and GB/s of each, and a memcpy of the same bytes as the floor.
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


def state_dict(gib: float) -> dict[str, torch.Tensor]:
    n = int(gib * 2**30) // 4
    per = 4 * 2**20  # 16 MiB float32 tensors, as big layers are
    out: dict[str, torch.Tensor] = {}
    i = 0
    while n > 0:
        k = min(per, n)
        out[f"layer{i}.weight"] = torch.randn(k)
        n -= k
        i += 1
    return out


def timed(fn, repeat: int) -> float:
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=float, default=1.0)
    ap.add_argument("--repeat", type=int, default=3)
    args = ap.parse_args()
    sd = state_dict(args.gib)
    nbytes = sum(t.numel() * t.element_size() for t in sd.values())
    gb = nbytes / 1e9
    with tempfile.TemporaryDirectory() as d:
        path = os.path.join(d, "w.safetensors")

        def ours() -> None:
            write_safetensors(path, sd)
            os.unlink(path)

        dst = {k: torch.empty_like(v) for k, v in sd.items()}
        floor = timed(lambda: [dst[k].copy_(v) for k, v in sd.items()], args.repeat)
        t_ours = timed(ours, args.repeat)
        print(f"{gb:.2f} GB; memcpy {floor:.3f} s ({gb / floor:.2f} GB/s)")
        print(f"runner writer (no numpy): {t_ours:.3f} s ({gb / t_ours:.2f} GB/s)")
        try:
            import numpy  # noqa: F401
            from safetensors.torch import save_file
        except ImportError as exc:
            print(f"safetensors.save_file: not measured ({exc}); install numpy to compare")
            return

        def theirs() -> None:
            save_file(sd, path)
            os.unlink(path)

        t_theirs = timed(theirs, args.repeat)
        print(f"safetensors.save_file (numpy): {t_theirs:.3f} s ({gb / t_theirs:.2f} GB/s); "
              f"ratio ours/theirs {t_ours / t_theirs:.2f}")
        from safetensors.torch import load_file

        write_safetensors(path, sd)
        back = load_file(path)
        assert all(torch.equal(back[k], v) for k, v in sd.items()), "round trip differs"
        print("round trip through safetensors.load_file: identical")


if __name__ == "__main__":
    main()
