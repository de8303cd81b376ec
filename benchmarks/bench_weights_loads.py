"""The weights pool through real loads: a long-running process's sandboxed loads
(no artifact-cache hit: ``force_reload=True``, the warm worker on), seconds apart,
with the pool at its default against ``SAFEHUB_WEIGHTS_POOL_MB=0``, and
torch.hub.load of the same model in the same run.

Run by hand:  python benchmarks/bench_weights_loads.py [--repeat 3] [--depths 10,20] [--idle-s 5] [--parts] [--json]

The models are bench_artifact.py's ViT-shaped networks (10 blocks: 17.9 M
parameters, 72 MB of float32 weights; 20 blocks: 35.6 M, 143 MB). Each round
starts the pool as in a new process (``_weights_pool.discard``) and runs
``LOADS`` loads, ``--idle-s`` apart (off the clock: on a VM whose balloon reports
free pages, what was freed seconds ago is slow to use again, which is how loads
come); with the pool at its default the first two find no spare and the rest
take one. The settings alternate first from round to round. Reported, as medians
over the loads that come after a process's first two:

* ``runner_export``: the runner's export, which includes writing the weights
  into the host's file (the part the pool speeds up);
* ``total``: the whole ``safehub.load`` call;
* ``warm_spare``: how many of those loads took the pool's spare;
* ``torch_hub``: ``torch.hub.load`` in this process, the repo's module imported
  (bench_artifact.py's harder baseline), and each total as a ratio to it.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from _report import print_report  # noqa: E402
from bench_artifact import make_repo  # noqa: E402

LOADS = 5  # per round: two without a spare (the default's rule), three after
SETTINGS = {"pool default": None, "pool off": "0"}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--repeat", type=int, default=3, help="rounds per setting")
    parser.add_argument("--depths", default="10,20")
    parser.add_argument("--idle-s", type=float, default=5.0)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--parts", action="store_true", help="also the median of every part of safehub_info.timings")
    args = parser.parse_args()
    depths = tuple(int(d) for d in args.depths.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SAFEHUB_HOME"] = str(root / "home")
        os.environ.setdefault("SAFEHUB_DISABLE_PROGRESS_BARS", "1")
        repo = make_repo(root, depths)

        import torch

        import safehub
        from safehub._channel import _weights_pool

        report: dict[str, object] = {"repeat": args.repeat, "idle_s": args.idle_s, "loads_per_round": LOADS}
        for depth in depths:
            safehub.load(str(repo), "vit", depth=depth, source="local", verbose=False)  # env built, worker warm
            sys.path.insert(0, str(repo))
            torch.hub.load(str(repo), "vit", depth=depth, source="local", trust_repo=True)
            hub_times = []
            for _ in range(5):
                start = time.perf_counter()
                torch.hub.load(str(repo), "vit", depth=depth, source="local", trust_repo=True)
                hub_times.append(time.perf_counter() - start)
            sys.path.remove(str(repo))
            hub = statistics.median(hub_times)
            seen: dict[str, dict[str, list[float]]] = {name: {"runner_export": [], "total": [], "warm_spare": []}
                                                        for name in SETTINGS}
            parts: dict[str, dict[str, list[float]]] = {name: {} for name in SETTINGS}
            for round_ in range(args.repeat):
                order = list(SETTINGS) if round_ % 2 == 0 else list(reversed(SETTINGS))
                for name in order:
                    value = SETTINGS[name]
                    if value is None:
                        os.environ.pop(_weights_pool.ENV, None)
                    else:
                        os.environ[_weights_pool.ENV] = value
                    _weights_pool.discard()  # as in a new process
                    for i in range(LOADS):
                        time.sleep(args.idle_s)
                        model = safehub.load(str(repo), "vit", depth=depth, source="local", verbose=False,
                                             force_reload=True)
                        info = model.safehub_info
                        if i >= 2:
                            seen[name]["runner_export"].append(info.timings["runner_export"])
                            seen[name]["total"].append(info.timings["total"])
                            seen[name]["warm_spare"].append(float(bool(info.sandbox_details.get("weights_warm_spare"))))
                            for part, value in info.timings.items():
                                parts[name].setdefault(part, []).append(value)
                        del model
            os.environ.pop(_weights_pool.ENV, None)
            _weights_pool.discard()
            params = sum(t.numel() for t in torch.hub.load(str(repo), "vit", depth=depth, source="local",
                                                           trust_repo=True).state_dict().values())
            section: dict[str, object] = {"params": f"{params / 1e6:.1f} M", "torch_hub": f"{hub:.3f} s"}
            for name, figures in seen.items():
                total = statistics.median(figures["total"])
                section[f"{name}: runner_export"] = f"{statistics.median(figures['runner_export']):.3f} s"
                section[f"{name}: total"] = f"{total:.3f} s ({total / hub:.2f}x torch.hub)"
                section[f"{name}: warm_spare"] = f"{int(sum(figures['warm_spare']))}/{len(figures['warm_spare'])}"
                if args.parts:
                    section[f"{name}: parts"] = {k: round(statistics.median(v), 4) for k, v in parts[name].items()}
            report[f"vit depth {depth}"] = section
        _stop_workers()
        print_report(report, as_json=args.json, width=44)


def _stop_workers() -> None:
    """The warm workers this run started write under the temporary SAFEHUB_HOME: take
    them down before it is removed."""
    from safehub._config import get_dir
    from safehub._worker import _kill, _load_state

    workers = Path(get_dir()) / "workers"
    for wdir in sorted(workers.iterdir()) if workers.is_dir() else ():
        _kill(wdir, _load_state(wdir))


if __name__ == "__main__":
    main()
