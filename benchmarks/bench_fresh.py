"""A fresh process that loads a model: safehub vs torch.hub, side by side in one run.

Run by hand:  python benchmarks/bench_fresh.py [--repeat 5] [--json] [--widths 64,96] [--baseline CHECKOUT] [--diagnostics]

Each figure is a new ``python`` process that imports the library and loads a
ResNet-shaped model from a local hub repo (weights in the repo as a checkpoint).
safehub runs with its env already built (one load first) but new keyword
arguments each time, so no artifact-cache hit can answer it. Reported per model
size: the median wall time of torch.hub and of safehub with the warm worker on
(the default) and off (``SAFEHUB_WORKER=0``), their ratios (of the medians, and
the median of each round's ratio), and safehub's per-part breakdown
(``LoadInfo.timings``) of the median run.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import print_report  # noqa: E402
from bench_load import RESNET, make_repo  # noqa: E402  (the same model and repo as bench_load)

# A tag keyword makes every safehub run a new call (no artifact-cache hit).
HUBCONF = '''
dependencies = ["torch"]
import os, torch
from resnet import resnet18 as _resnet18

def resnet18(pretrained=True, width=64, tag=0):
    """ResNet-shaped benchmark model; ``width`` scales it, ``tag`` is ignored."""
    m = _resnet18(width)
    if pretrained:
        m.load_state_dict(torch.load(os.path.join(os.path.dirname(__file__), f"resnet{width}.pth"), weights_only=True))
    return m.eval()
'''

# Each script also prints its own wall and CPU seconds from its first line to its last
# (interpreter start and exit excluded; the same on both sides): a second view of the
# same runs, far less noisy on this VM than whole-process wall time (--diagnostics).
_CLOCK = "import time; _w, _c = time.perf_counter(), time.process_time(); "
_SPENT = "'in_script_s': time.perf_counter() - _w, 'cpu_s': time.process_time() - _c"
FRESH_TORCH_HUB = (_CLOCK + "import sys, json, torch; "
                   "torch.hub.load(sys.argv[1], 'resnet18', source='local', trust_repo=True, width=int(sys.argv[2])); "
                   "print(json.dumps({" + _SPENT + "}))")
FRESH_SAFEHUB = (_CLOCK + "import sys, json, safehub; "
                 "m = safehub.load(sys.argv[1], 'resnet18', source='local', verbose=False, width=int(sys.argv[2]), "
                 "tag=int(sys.argv[3])); print(json.dumps({'timings': m.safehub_info.timings, " + _SPENT + "}))")


def make_sized_repo(root: Path, widths: list[int]) -> Path:
    import torch

    repo = make_repo(root)
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (repo / "resnet.py").write_text(textwrap.dedent(RESNET).replace(
        "def __init__(self, num_classes=1000):", "def __init__(self, num_classes=1000, base=64):").replace(
        "[64, 128, 256, 512]", "[base, base * 2, base * 4, base * 8]").replace(
        "nn.Linear(512, num_classes)", "nn.Linear(base * 8, num_classes)").replace(
        "def resnet18():\n    return ResNet()", "def resnet18(width=64):\n    return ResNet(base=width)"))
    sys.path.insert(0, str(repo))
    import resnet  # noqa: E402  (the benchmark's own model file)

    params = {}
    for width in widths:
        torch.manual_seed(0)
        model = resnet.resnet18(width)
        params[width] = sum(p.numel() for p in model.parameters())
        torch.save(model.state_dict(), repo / f"resnet{width}.pth")
    sys.path.remove(str(repo))
    sys.modules.pop("resnet", None)
    return repo


def timed_run(argv: list[str], env: dict[str, str], cwd: Path | None = None) -> tuple[float, str]:
    start = time.perf_counter()
    # cwd outside the checkout: `python -c` puts the cwd first on sys.path, ahead of
    # PYTHONPATH, so a --baseline run started in the checkout would import this one.
    done = subprocess.run(argv, env=env, check=True, capture_output=True, text=True, cwd=cwd)
    elapsed = time.perf_counter() - start
    settle()
    return elapsed, done.stdout


def settle(timeout_s: float = 30.0) -> None:
    """Wait (untimed) until no artifact-cache writer is running: a safehub load's
    entry is written after its process exits (safehub/_cache_writer.py), and that
    writer must not slow down the next run, whichever side it is."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        busy = False
        for pid in os.listdir("/proc"):
            if pid.isdigit():
                try:
                    busy = b"_cache_writer.py" in Path(f"/proc/{pid}/cmdline").read_bytes()
                except OSError:
                    continue
                if busy:
                    break
        if not busy:
            return
        time.sleep(0.01)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--widths", default="64,96", help="ResNet base widths (64: 11.7 M params, 96: 26 M)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--no-worker-off", action="store_true", help="skip the SAFEHUB_WORKER=0 runs")
    parser.add_argument("--diagnostics", action="store_true",
                        help="also report each side's seconds inside its script (wall and CPU), and their paired ratios")
    parser.add_argument("--variant", action="append", default=[], metavar="NAME:VAR=VALUE",
                        help="one more safehub variant in each round, with an environment variable set "
                             "(an A/B in the same run, e.g. inline_store:SAFEHUB_CACHE_WRITER=0)")
    parser.add_argument("--baseline", metavar="CHECKOUT",
                        help="one more safehub variant in each round: the safehub/ of another checkout (e.g. "
                             "`git worktree add /tmp/base <commit>`), on PYTHONPATH, with a SAFEHUB_HOME of its own")
    args = parser.parse_args()
    widths = [int(w) for w in args.widths.split(",")]

    # Bytecode as a wheel install (and scripts/setup.sh) leaves it; torch's is there too.
    # Without it each safehub process compiles its modules again (~0.1 s).
    here = Path(__file__).resolve().parent.parent
    for checkout in [here] + ([Path(args.baseline).resolve()] if args.baseline else []):
        subprocess.run([sys.executable, "-m", "compileall", "-q", str(checkout / "safehub"), str(checkout / "runners")],
                       check=True, capture_output=True)
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        env = {**os.environ, "SAFEHUB_HOME": str(root / "home")}
        repo = make_sized_repo(root, widths)
        report: dict[str, object] = {"repeat": args.repeat}
        tag = 0
        for width in widths:
            tag += 1
            variants = {"torch_hub": (FRESH_TORCH_HUB, {}), "safehub": (FRESH_SAFEHUB, {})}
            if args.baseline:
                variants["safehub_baseline"] = (FRESH_SAFEHUB, {"PYTHONPATH": str(Path(args.baseline).resolve()),
                                                                "SAFEHUB_HOME": str(root / "home-baseline")})
            if not args.no_worker_off:
                variants["safehub_no_worker"] = (FRESH_SAFEHUB, {"SAFEHUB_WORKER": "0"})
            for spec in args.variant:
                name, _, setting = spec.partition(":")
                var, _, value = setting.partition("=")
                variants[f"safehub_{name}"] = (FRESH_SAFEHUB, {var: value})
            for name, (script, extra) in variants.items():  # builds each env, starts each worker
                if script is FRESH_SAFEHUB:
                    tag += 1
                    timed_run([sys.executable, "-c", script, str(repo), str(width), str(tag)], {**env, **extra}, root)
            runs: dict[str, list[tuple[float, str]]] = {name: [] for name in variants}
            for _ in range(args.repeat):
                for name, (script, extra) in variants.items():
                    tag += 1
                    argv = [sys.executable, "-c", script, str(repo), str(width)]
                    if script is FRESH_SAFEHUB:
                        argv.append(str(tag))
                    runs[name].append(timed_run(argv, {**env, **extra}, root))
            entry: dict[str, object] = {}
            spent = {name: [json.loads(out.strip().splitlines()[-1]) for _, out in values] for name, values in runs.items()}
            for name, values in runs.items():
                ordered = sorted(values)
                median_s, stdout = ordered[len(ordered) // 2]
                entry[f"{name}_median_s"] = round(statistics.median(v for v, _ in values), 3)
                if name != "torch_hub":
                    entry[f"ratio_{name}_vs_torch_hub"] = round(median_s / entry["torch_hub_median_s"], 2)  # type: ignore[operator]
                    # Each round runs torch.hub and safehub back to back: the median of the
                    # per-round ratios cancels the machine's drift between rounds.
                    paired = [v / t for (v, _), (t, _) in zip(values, runs["torch_hub"])]
                    entry[f"paired_ratio_{name}_vs_torch_hub"] = round(statistics.median(paired), 2)
                    entry[f"{name}_parts"] = json.loads(stdout.strip().splitlines()[-1])["timings"]
                if args.diagnostics:
                    for what in ("in_script_s", "cpu_s"):
                        mine = [d[what] for d in spent[name]]
                        entry[f"{name}_{what}"] = round(statistics.median(mine), 3)
                        if name != "torch_hub":
                            theirs = [d[what] for d in spent["torch_hub"]]
                            entry[f"paired_ratio_{name}_{what}"] = round(
                                statistics.median(a / b for a, b in zip(mine, theirs)), 3)
            report[f"width{width}"] = entry
    print_report(report, as_json=args.json, width=40)


if __name__ == "__main__":
    main()
