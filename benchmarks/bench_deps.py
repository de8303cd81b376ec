"""Timings of dependency planning and env builds (issue 12/13). Run by hand:

    python benchmarks/bench_deps.py [--json]

* scan: the import scan of the demo repo and of a synthetic 300-module repo, cold and cached;
* plan: ``plan_for_repo`` (mode scan) warm, i.e. what every load pays before the env;
* env: ``ensure_env`` of an existing env; a fresh env of one small package from uv's warm
  cache, offline (no index round trip) and online (with the "far older release" check).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))


def median_of(fn, n: int = 5) -> float:
    times = []
    for _ in range(n):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def synthetic_repo(root: Path, modules: int = 300) -> Path:
    root.mkdir(parents=True)
    (root / "hubconf.py").write_text("import numpy\nfrom pkg import m0\n")
    (root / "pkg").mkdir()
    (root / "pkg" / "__init__.py").write_text("")
    for i in range(modules):
        nxt = f"from pkg import m{i + 1}\n" if i + 1 < modules else ""
        (root / "pkg" / f"m{i}.py").write_text("import os, json\nimport torch\n" + nxt + "def f():\n    return 1\n" * 20)
    return root


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    from safehub._env import ensure_env, plan_for_repo
    from safehub._env._plan import FAMILY_IMPORTS
    from safehub._env._scan import cached_scan, scan_repo

    out: dict[str, float] = {}
    with tempfile.TemporaryDirectory() as tmp:
        tmp_path = Path(tmp)
        hub = tmp_path / "hub"
        demo = ROOT / "examples" / "demo-hub"
        big = synthetic_repo(tmp_path / "big")
        out["scan_demo_cold_s"] = median_of(lambda: scan_repo(demo, family=FAMILY_IMPORTS))
        out["scan_300_modules_cold_s"] = median_of(lambda: scan_repo(big, family=FAMILY_IMPORTS))
        cached_scan(big, hub / "scans", family=FAMILY_IMPORTS)
        out["scan_300_modules_cached_s"] = median_of(lambda: cached_scan(big, hub / "scans", family=FAMILY_IMPORTS))
        out["scan_300_modules_pinned_cached_s"] = median_of(
            lambda: cached_scan(big, hub / "scans", family=FAMILY_IMPORTS, immutable=True))
        plan_for_repo(demo, ["torch", "yaml"], hub_dir=hub)
        out["plan_demo_warm_s"] = median_of(lambda: plan_for_repo(demo, ["torch", "yaml"], hub_dir=hub))
        ensure_env(["yaml"], hub_dir=hub, verbose=False)  # fills uv's cache if needed
        out["ensure_env_existing_s"] = median_of(lambda: ensure_env(["yaml"], hub_dir=hub, verbose=False))
        for label, extra in (("offline", {"SAFEHUB_OFFLINE": "1"}), ("online", {})):
            def fresh() -> None:
                shutil.rmtree(hub / "envs", ignore_errors=True)
                ensure_env(["yaml"], hub_dir=hub, verbose=False, env={**os.environ, **extra})
            out[f"ensure_env_fresh_from_uv_cache_{label}_s"] = median_of(fresh, n=3)
    if args.json:
        print(json.dumps(out, indent=1))
    else:
        for k, v in out.items():
            print(f"{k:45s} {v * 1000:8.1f} ms")


if __name__ == "__main__":
    main()
