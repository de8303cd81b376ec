"""Where a fresh process's own CPU goes: the main thread's CPU per phase of a load, and
the host's import-torch thread, per safehub checkout. Run by hand:

    python benchmarks/bench_fresh_phases.py [--repeat 9] [--baseline CHECKOUT]

Each run is a new ``python`` process that loads bench_fresh's 11.7 M model (env built,
warm worker, a new tag so no artifact-cache hit) and reports ``time.thread_time()``
of its main thread for: ``import safehub``; the load up to the sandbox start; the
wait for the sandbox; and the work after the host's ``import torch`` (validation and
build); plus the import thread's own CPU and the process's. It times the phases by
wrapping ``safehub._host_torch``'s three hooks, so a ``--baseline`` checkout must have
them (round 5 on). With ``--baseline`` the two checkouts run in alternating rounds,
each with its own SAFEHUB_HOME. Prints the median milliseconds of each figure.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _report import print_report  # noqa: E402
from bench_fresh import make_sized_repo, settle  # noqa: E402

# The phases, timed inside the fresh process (argv: repo, tag).
PHASES = '''
import sys, time, json
c0 = time.thread_time()
import safehub, safehub._host_torch as ht
c_imp = time.thread_time()
marks = {}
started, waited, importer = ht.sandbox_started, ht.wait, ht._import
def sandbox_started():
    marks.setdefault("at_sandbox", time.thread_time()); started()
def wait():
    marks["at_wait"] = time.thread_time(); waited()
def import_torch():  # the thread's CPU: its native preload (round 8 on) and the import; waiting costs none
    t = time.thread_time()
    importer()
    marks["torch_thread"] = time.thread_time() - t
ht.sandbox_started, ht.wait, ht._import = sandbox_started, wait, import_torch
safehub.load(sys.argv[1], "resnet18", source="local", verbose=False, width=64, tag=int(sys.argv[2]))
c_end = time.thread_time()
print(json.dumps({"import_safehub": c_imp - c0, "to_sandbox_start": marks["at_sandbox"] - c_imp,
                  "sandbox_wait": marks["at_wait"] - marks["at_sandbox"], "after_import_torch": c_end - marks["at_wait"],
                  "torch_thread": marks["torch_thread"], "process_cpu": time.process_time()}))
'''


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=9)
    parser.add_argument("--baseline", metavar="CHECKOUT", help="another checkout's safehub/, on PYTHONPATH")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    # Bytecode for both sides, as an install leaves it (without it each process compiles its modules again).
    for checkout in [HERE.parent] + ([Path(args.baseline).resolve()] if args.baseline else []):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "safehub"), str(checkout / "runners")],
                       check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        repo = make_sized_repo(root, [64])
        variants = {"safehub": {"SAFEHUB_HOME": str(root / "home")}}
        if args.baseline:
            variants["baseline"] = {"SAFEHUB_HOME": str(root / "home-baseline"),
                                    "PYTHONPATH": str(Path(args.baseline).resolve())}
        tag = int(time.time() * 1000)
        runs: dict[str, list[dict[str, float]]] = {name: [] for name in variants}
        for i in range(args.repeat + 1):  # the first round builds each env and starts each worker
            for name, extra in variants.items():
                tag += 1
                done = subprocess.run([sys.executable, "-c", PHASES, str(repo), str(tag)], env={**os.environ, **extra},
                                      cwd=root, check=True, capture_output=True, text=True)  # cwd: not the checkout
                settle()
                if i:
                    runs[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    report = {name: {k: round(statistics.median(r[k] for r in values) * 1000, 1) for k in values[0]}
              for name, values in runs.items()}
    print_report({"repeat": args.repeat, "unit": "ms (medians)", **report}, as_json=args.json)


if __name__ == "__main__":
    main()
