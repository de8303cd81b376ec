"""The JSON pre-scan (safehub/_channel/_json.py): speed, and what it costs and
saves on the red team's junk. Run by hand:

    python benchmarks/bench_prescan.py

* graph: a spec of N relu nodes (the shape of bench_parts' graph), pre-scan MB/s
  next to json.loads MB/s, the pre-scan's memory bound and the parse's real peak;
* junk: the red team's 64 MiB junk spec.json ('{},' repeated) and 100 MiB junk
  safetensors header, each in a fresh process: refused or not, and the peak RSS.
"""

from __future__ import annotations

import json
import subprocess
import sys
import tempfile
import time
import tracemalloc
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from safehub._channel._json import _no_duplicates, _reject_constant, prescan  # noqa: E402
from safehub._channel._limits import ChannelLimits  # noqa: E402


def graph_spec(n: int) -> bytes:
    nodes = [{"op": "placeholder", "name": "x", "target": "x"}]
    prev = "x"
    for i in range(n):
        nodes.append({"op": "call_function", "name": f"n{i}", "target": "torch.relu", "args": [{"node": prev}]})
        prev = f"n{i}"
    return json.dumps({"format": "safehub-arch", "modules": {"m0": {"graphs": {"eval": {"nodes": nodes}}}}}).encode()


def bench_graph(n: int) -> dict:
    raw = graph_spec(n)
    cap = ChannelLimits().spec_bytes
    start = time.perf_counter()
    try:
        bound = prescan(raw, "spec.json", cap_bytes=cap).memory_bytes
    except Exception as exc:  # noqa: BLE001 - reported
        bound = repr(exc)[:80]
    scan_s = time.perf_counter() - start
    start = time.perf_counter()
    json.loads(raw.decode(), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    parse_s = time.perf_counter() - start
    tracemalloc.start()
    json.loads(raw.decode(), parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    peak = tracemalloc.get_traced_memory()[1] + len(raw)
    tracemalloc.stop()
    return {"nodes": n, "bytes": len(raw), "prescan_MB_s": round(len(raw) / scan_s / 1e6),
            "json_loads_MB_s": round(len(raw) / parse_s / 1e6), "bound_MiB": bound if isinstance(bound, str) else bound >> 20,
            "real_peak_MiB": peak >> 20, "budget_MiB": 4 * cap >> 20}


JUNK = r"""
import os, sys, time
sys.path.insert(0, sys.argv[1])
from safehub._channel._limits import ChannelLimits
from safehub._channel._files import read_output_file
from safehub._channel._spec import parse_spec
from safehub._channel._weights import read_header
from safehub._errors import SafehubError
path, mode = sys.argv[2], sys.argv[3]
def status(field):  # kB; ru_maxrss would carry the parent's peak over exec
    with open("/proc/self/status") as f:
        return int(f.read().split(field + ":")[1].split()[0])
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")
base = status("VmRSS")
start = time.perf_counter()
try:
    if mode == "spec":
        parse_spec(read_output_file(os.path.dirname(path), os.path.basename(path), max_bytes=64 << 20),
                   limits=ChannelLimits())
    else:
        fd = os.open(path, os.O_RDONLY)
        read_header(fd, ChannelLimits())
    outcome = "accepted"
except SafehubError as exc:
    outcome = type(exc).__name__ + ": " + str(exc)[:90]
print(f"{mode}: {outcome}; {time.perf_counter() - start:.2f} s; "
      f"peak RSS +{(status('VmHWM') - base) >> 10} MiB")
"""


def bench_junk() -> None:
    with tempfile.TemporaryDirectory() as tmp:
        spec = Path(tmp) / "spec.json"
        spec.write_bytes(b"[" + b",".join([b"{}"] * ((64 << 20) // 3 - 1)) + b"]")
        header = Path(tmp) / "weights.safetensors"
        junk = b"[" + b",".join([b"{}"] * ((100 << 20) // 3 - 1)) + b"]"
        header.write_bytes(len(junk).to_bytes(8, "little") + junk)
        for path, mode in ((spec, "spec"), (header, "header")):
            subprocess.run([sys.executable, "-c", JUNK, str(ROOT), str(path), mode], check=True)


if __name__ == "__main__":
    for n in (10_000, 100_000):
        print(bench_graph(n))
    bench_junk()
