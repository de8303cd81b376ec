"""Timings of safehub's parts, each on its own. Run by hand:

    python benchmarks/bench_parts.py [--json]

* env: ``ensure_env(["yaml"])`` into an empty hub (uv's own cache as it is), then again cached;
* sandbox: ``python -c pass`` bare and under each usable backend (median of 5);
* fetch: ``get_repo`` of a small repo from the tests' loopback GitHub, first and cached;
* channel: validating + rebuilding a 100 000-node spec; rebuilding 1 GiB of weights;
* export: the sandbox-side exporter on each zoo model (in this process, warm).
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

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _report import print_report  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def bench_env(tmp: Path) -> dict[str, float]:
    from safehub._env import ensure_env

    hub = tmp / "env-hub"
    cold = timed(lambda: ensure_env(["yaml"], hub_dir=hub, verbose=False))
    warm = timed(lambda: ensure_env(["yaml"], hub_dir=hub, verbose=False))
    return {"yaml_cold_s": round(cold, 3), "yaml_cached_s": round(warm, 4)}


def bench_sandbox(tmp: Path) -> dict[str, float]:
    from safehub._env import host_env
    from safehub._sandbox import SandboxRequest, get_backend

    py = str(host_env().python)
    out = {"bare_s": round(statistics.median(
        timed(lambda: subprocess.run([py, "-I", "-c", "pass"], check=True)) for _ in range(5)), 4)}
    for name in ("bwrap", "landlock"):
        try:
            backend = get_backend(name)
        except Exception as exc:  # noqa: BLE001 - report what this machine lacks
            out[f"{name}_s"] = f"unavailable: {exc}"  # type: ignore[assignment]
            continue
        work = tmp / f"sb-{name}"
        (work / "out").mkdir(parents=True)
        (work / "tmp").mkdir()
        req = SandboxRequest(argv=[py, "-I", "-c", "pass"], env={"PATH": "/usr/bin:/bin"}, cwd=work / "tmp",
                             ro_paths=host_env().ro_paths, rw_paths=(work / "out",), scratch_paths=(work / "tmp",))
        out[f"{name}_s"] = round(statistics.median(timed(lambda: backend.run(req)) for _ in range(5)), 4)
    return out


def bench_fetch(tmp: Path) -> dict[str, float]:
    sys.path.insert(0, str(ROOT / "tests"))
    from github_server import FakeGitHub

    from safehub._fetch import get_repo

    with FakeGitHub() as gh:
        gh.add_repo("alice", "model").commit({"hubconf.py": b"dependencies = []\ndef m():\n    pass\n"})
        hub = tmp / "fetch-hub"
        first = timed(lambda: get_repo("alice/model", hub_dir=hub, env=gh.env(), trust_repo=True, verbose=False))
        cached = timed(lambda: get_repo("alice/model", hub_dir=hub, env=gh.env(), trust_repo=True, verbose=False))
    return {"small_repo_first_s": round(first, 3), "small_repo_cached_s": round(cached, 4)}


def _spec(mode_nodes: list[dict], tensors: dict) -> dict:
    import torch

    return {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": {"module": "m0"},
            "modules": {"m0": {"mode": "fx", "training": False, "tensors": tensors, "aliases": {}, "leaves": {},
                               "submodules": {}, "graphs": {"eval": {"nodes": mode_nodes}}}}}


def bench_channel(tmp: Path) -> dict[str, float]:
    import torch
    from safetensors.torch import save_file

    from safehub._channel import rebuild_from_output

    n = 100_000
    nodes = [{"op": "placeholder", "name": "x", "target": "x"}]
    prev = "x"
    for i in range(n):
        nodes.append({"op": "call_function", "name": f"n{i}", "target": "torch.relu", "args": [{"node": prev}]})
        prev = f"n{i}"
    nodes.append({"op": "output", "name": "output", "target": "output", "args": [{"node": prev}]})
    big_graph = tmp / "graph"
    big_graph.mkdir()
    (big_graph / "spec.json").write_text(json.dumps(_spec(nodes, {})))
    save_file({}, str(big_graph / "weights.safetensors"))
    graph_s = timed(lambda: rebuild_from_output(big_graph))

    weights = tmp / "weights"
    weights.mkdir()
    tensors = {f"w{i}": torch.zeros(64, 1024, 1024) for i in range(4)}  # 4 x 256 MiB float32
    info = {"dtype": "float32", "shape": [64, 1024, 1024], "kind": "parameter", "requires_grad": True, "persistent": True}
    nodes = [{"op": "placeholder", "name": "x", "target": "x"}, {"op": "get_attr", "name": "g", "target": "w0"},
             {"op": "output", "name": "output", "target": "output", "args": [{"node": "g"}]}]
    (weights / "spec.json").write_text(json.dumps(_spec(nodes, {k: dict(info) for k in tensors})))
    save_file({f"m0.{k}": v for k, v in tensors.items()}, str(weights / "weights.safetensors"))
    del tensors
    weights_s = timed(lambda: rebuild_from_output(weights))
    return {"graph_100k_nodes_s": round(graph_s, 2), "weights_1GiB_s": round(weights_s, 2)}


def bench_export(tmp: Path) -> dict[str, object]:
    import importlib.util

    sys.path[:0] = [str(ROOT / "runners"), str(ROOT / "tests"), str(ROOT / "tests" / "zoo")]
    import _export  # the sandbox-side exporter, run here on our own trusted zoo
    from test_export import ZOO_CASES

    spec = importlib.util.spec_from_file_location("zoo_hubconf", ROOT / "tests" / "zoo" / "hubconf.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)  # type: ignore[union-attr]
    out: dict[str, object] = {}
    for name in sorted(ZOO_CASES):
        summary = _export.export_object(getattr(zoo, name)(), str(tmp / f"zoo-{name}"), options={},
                                        example_inputs=None, hubconf=zoo, entrypoint=name)
        m0 = summary["modules"]["m0"]
        out[name] = f"{m0['mode']} {m0['seconds']:.3f}s"
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as d:
        tmp = Path(d)
        os.environ["SAFEHUB_HOME"] = str(tmp / "home")
        report = {"env": bench_env(tmp), "sandbox": bench_sandbox(tmp), "fetch": bench_fetch(tmp),
                  "channel": bench_channel(tmp), "export": bench_export(tmp)}
    print_report(report, as_json=args.json, width=30)


if __name__ == "__main__":
    main()
