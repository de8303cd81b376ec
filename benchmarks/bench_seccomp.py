"""What the seccomp filter costs per system call, and what building it costs.

Run by hand:  python benchmarks/bench_seccomp.py [--repeat 3]

Each variant runs in a fresh interpreter that applies runners/_confine.py with
no_new_privs only ("none"), with the process backend's filter ("filter"), and
with the filter installed twice ("stacked": what the Landlock and process
backends get, since the runner re-applies the supervisor's confinement), then
times os.getppid() (a syscall with no work) and os.stat("/"). Reported: the best
of ``--repeat`` runs, in ns per call including Python's own overhead. Compare
ratios from one run: shared machines are noisy.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safehub._sandbox import _seccomp  # noqa: E402

CODE = (
    "import sys, json, os, time; sys.path.insert(0, sys.argv[1]); import _confine\n"
    "for _ in range(int(sys.argv[3])): _confine.apply(json.loads(sys.argv[2]))\n"
    "t = time.perf_counter()\nfor _ in range(300000): os.getppid()\n"
    "a = time.perf_counter() - t; t = time.perf_counter()\nfor _ in range(100000): os.stat('/')\n"
    "print(a / 300000 * 1e9, (time.perf_counter() - t) / 100000 * 1e9)"
)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args()
    t = time.perf_counter()
    _seccomp.build.cache_clear()
    entry = _seccomp.confine_entry("process")
    print(f"build (libseccomp, one variant): {(time.perf_counter() - t) * 1e3:.1f} ms;"
          f" {len(_seccomp.build('process')) // 8} BPF instructions")
    variants = [("none", {"no_new_privs": True}, 1), ("filter", {"no_new_privs": True, "seccomp": entry}, 1),
                ("stacked", {"no_new_privs": True, "seccomp": entry}, 2)]
    for label, config, times in variants:
        runs = []
        for _ in range(args.repeat):
            done = subprocess.run([sys.executable, "-I", "-S", "-c", CODE, str(ROOT / "runners"), json.dumps(config), str(times)],
                                  capture_output=True, text=True, check=True)
            runs.append([float(x) for x in done.stdout.split()])
        print(f"{label:8s} getppid {min(r[0] for r in runs):7.0f} ns/call   stat('/') {min(r[1] for r in runs):7.0f} ns/call")


if __name__ == "__main__":
    main()
