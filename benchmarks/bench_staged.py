"""Jobs that stage host files, in fresh processes: safehub vs torch.hub (and vs
another checkout of safehub with ``--baseline``), side by side in one run.

Run by hand:  python benchmarks/bench_staged.py [--repeat 7] [--baseline CHECKOUT]

* **download**: a ResNet-shaped model (11.7 M) whose entrypoint fetches its
  checkpoint with ``torch.hub.load_state_dict_from_url`` from a release asset on
  the loopback GitHub (tests/github_server.py), already in each side's checkpoint
  cache after the first run. A fresh process per load, new keyword arguments each
  time (no artifact-cache hit).
* **deferred**: a model fx cannot trace (``len(x)`` in forward), answered by the
  artifact cache; the figure is its first call with an input signature nobody has
  exported, in a fresh process (an export job in the sandbox).

``--baseline``: the safehub/ of another checkout (``git worktree add /tmp/base
<commit>``) on PYTHONPATH with a SAFEHUB_HOME of its own; every run starts outside
this checkout (``python -c`` puts the cwd ahead of PYTHONPATH on sys.path).
"""

from __future__ import annotations

import argparse
import io
import json
import os
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(HERE.parent / "tests"))
from _report import print_report  # noqa: E402
from bench_fresh import make_sized_repo, settle  # noqa: E402

DOWNLOAD_HUBCONF = '''
dependencies = ["torch"]
import torch
from resnet import resnet18 as _resnet18

def resnet18(tag=0):
    m = _resnet18(64)
    m.load_state_dict(torch.hub.load_state_dict_from_url(URL, weights_only=True))
    return m.eval()
'''
DEFERRED_HUBCONF = '''
import torch
from torch import nn
dependencies = ["torch"]

class LenNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.lin = nn.Sequential(nn.Linear(1024, 2048), nn.ReLU(), nn.Linear(2048, 2048), nn.ReLU(),
                                 nn.Linear(2048, 1024))

    def forward(self, x):
        return self.lin(x) / len(x)  # fx cannot trace len(): exported at the first call

def lennet():
    torch.manual_seed(0)
    return LenNet()
'''
SAFEHUB_DOWNLOAD = ("import sys, json, safehub; m = safehub.load(sys.argv[1], 'resnet18', source='local', "
                    "verbose=False, tag=int(sys.argv[2])); print(json.dumps(m.safehub_info.sandbox_details['worker']))")
TORCH_HUB_DOWNLOAD = ("import sys, torch; torch.hub.load(sys.argv[1], 'resnet18', source='local', trust_repo=True); "
                      "print('{}')")
SAFEHUB_DEFERRED = textwrap.dedent("""
    import sys, time, json, torch, safehub
    m = safehub.load(sys.argv[1], "lennet", source="local", verbose=False).eval()
    t = time.perf_counter()
    with torch.no_grad():
        m(torch.randn(2, int(sys.argv[2]), 1024))  # a new middle dimension: a new signature
    print(json.dumps({"first_call_s": time.perf_counter() - t, "export_s": m.safehub_graphs[-1]["seconds"],
                      "hit": m.safehub_info.backend == "artifact-cache"}))
""")


def _run(code: str, args: list[str], env: dict[str, str], cwd: Path) -> tuple[float, dict]:
    start = time.perf_counter()
    done = subprocess.run([sys.executable, "-c", code, *args], env=env, cwd=cwd, capture_output=True, text=True)
    elapsed = time.perf_counter() - start
    if done.returncode:
        raise SystemExit(done.stderr[-3000:])
    settle()
    return elapsed, json.loads(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--baseline", metavar="CHECKOUT")
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    import torch
    from github_server import FakeGitHub

    subprocess.run([sys.executable, "-m", "compileall", "-q", str(HERE.parent / "safehub"), str(HERE.parent / "runners")],
                   check=True, capture_output=True)
    report: dict[str, dict] = {}
    with tempfile.TemporaryDirectory() as tmp, FakeGitHub() as gh:
        root = Path(tmp)
        base_env = {**os.environ, **gh.env(), "SAFEHUB_ARTIFACT_CACHE": "1", "TORCH_HOME": str(root / "torch-home")}
        sides = {"safehub": {"SAFEHUB_HOME": str(root / "home")}}
        if args.baseline:
            sides["safehub_baseline"] = {"SAFEHUB_HOME": str(root / "home-baseline"),
                                         "PYTHONPATH": str(Path(args.baseline).resolve())}
        repo = make_sized_repo(root, [64])
        raw = io.BytesIO()
        torch.save(torch.load(repo / "resnet64.pth", weights_only=True), raw)
        url = gh.url + gh.add_repo("alice", "weights").release_asset("v1", "resnet64.pth", raw.getvalue())
        (repo / "hubconf.py").write_text(DOWNLOAD_HUBCONF.replace("URL", repr(url)))
        deferred = root / "deferred"
        deferred.mkdir()
        (deferred / "hubconf.py").write_text(DEFERRED_HUBCONF)

        tag = 0
        download: dict[str, list[float]] = {"torch_hub": [], **{k: [] for k in sides}}
        for _ in range(2):  # builds the envs, starts the workers, fills the checkpoint caches
            _run(TORCH_HUB_DOWNLOAD, [str(repo)], base_env, root)
            for name, extra in sides.items():
                tag += 1
                _run(SAFEHUB_DOWNLOAD, [str(repo), str(tag)], {**base_env, **extra}, root)
        used: dict[str, set] = {k: set() for k in sides}
        for _ in range(args.repeat):
            download["torch_hub"].append(_run(TORCH_HUB_DOWNLOAD, [str(repo)], base_env, root)[0])
            for name, extra in sides.items():
                tag += 1
                elapsed, worker = _run(SAFEHUB_DOWNLOAD, [str(repo), str(tag)], {**base_env, **extra}, root)
                download[name].append(elapsed)
                used[name].add(bool(worker.get("used")))
        th = statistics.median(download["torch_hub"])
        report["download"] = {"torch_hub_median_s": round(th, 3)}
        for name in sides:
            median = statistics.median(download[name])
            report["download"].update({f"{name}_median_s": round(median, 3), f"ratio_{name}_vs_torch_hub": round(median / th, 2),
                                       f"{name}_worker_used": sorted(used[name])})

        for extra in sides.values():  # the first loads: cached, their first signatures exported
            for warm in (3, 4):
                _run(SAFEHUB_DEFERRED, [str(deferred), str(warm)], {**base_env, **extra}, root)
        calls: dict[str, list[dict]] = {k: [] for k in sides}
        for i in range(args.repeat):
            for name, extra in sides.items():
                calls[name].append(_run(SAFEHUB_DEFERRED, [str(deferred), str(100 + i)], {**base_env, **extra}, root)[1])
        report["deferred"] = {}
        for name, values in calls.items():
            report["deferred"][f"{name}_first_call_s"] = round(statistics.median(v["first_call_s"] for v in values), 3)
            report["deferred"][f"{name}_export_job_s"] = round(statistics.median(v["export_s"] for v in values), 3)
            report["deferred"][f"{name}_cache_hits"] = f"{sum(v['hit'] for v in values)}/{len(values)}"
    print_report(report, as_json=args.json, width=44)


if __name__ == "__main__":
    main()
