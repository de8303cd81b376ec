"""safehub.load_artifact and a warm safehub.load (artifact-cache hit) vs
torch.hub.load(source="local") of the same model, same run.

Run by hand:  python benchmarks/bench_artifact.py [--repeat 15] [--sizes 5,10] [--json]

The models are ViT-shaped networks (patch embedding, pre-norm blocks with
attention and an MLP, a head; 5 blocks: 9.0 M parameters, 10 blocks: 17.9 M) in
a local hub repo that this script writes to a temporary folder, with their
weights as pickled checkpoints in the repo (as real repos ship them). The
artifact and the cache entry are made the real way, once per model: a sandboxed
``safehub.load`` (env build included; it stores the cache entry), then
``safehub.save``.

Timed, each as the median of ``--repeat`` runs in this process (torch imported),
wall time and process CPU time (all threads; steadier on a shared machine):

* ``torch_hub_cached``: torch.hub.load with the repo's model module already
  imported (hubconf is re-executed, the model built with its random init, the
  checkpoint ``torch.load``-ed and loaded); the harder baseline;
* ``torch_hub_fresh_import``: the same with the repo's modules dropped first;
* ``load_artifact``: hashes checked, spec validated, leaves built on meta,
  tensors read and the module built;
* ``safehub_load_hit``: ``safehub.load`` answered by the artifact cache: the
  repo found and its hubconf read, the env key, the cache key (the local tree's
  hash through its stat cache), then the entry checked exactly like
  ``load_artifact`` checks an artifact.

Also, in a new interpreter each (``FRESH_RUNS`` times, imports included): a
script that runs torch.hub.load against one that runs safehub.load answered by
the artifact cache.

Goals: load_artifact <= 0.5 x torch.hub.load (issue 17); a warm load (cache
hit) <= 0.5 x torch.hub.load (issue 13). Shared machines are noisy: CPU time
is reported next to wall time.
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

HUBCONF = '''
dependencies = ["torch"]
import os, torch
from vitnet import ViT

def vit(pretrained=True, depth=5):
    """ViT-shaped benchmark model (5 blocks: 9.0 M parameters)."""
    m = ViT(depth=depth)
    if pretrained:
        m.load_state_dict(torch.load(os.path.join(os.path.dirname(__file__), f"vit{depth}.pth"), weights_only=True))
    return m.eval()
'''

VIT = '''
import torch
from torch import nn
import torch.nn.functional as F

class Block(nn.Module):
    def __init__(self, dim, heads, hidden):
        super().__init__()
        self.heads = heads
        self.norm1 = nn.LayerNorm(dim)
        self.qkv = nn.Linear(dim, 3 * dim)
        self.proj = nn.Linear(dim, dim)
        self.norm2 = nn.LayerNorm(dim)
        self.fc1 = nn.Linear(dim, hidden)
        self.fc2 = nn.Linear(hidden, dim)
        self.drop = nn.Dropout(0.1)

    def forward(self, x):
        b, n, d = x.shape
        q, k, v = self.qkv(self.norm1(x)).reshape(b, n, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4).unbind(0)
        a = F.scaled_dot_product_attention(q, k, v).transpose(1, 2).reshape(b, n, d)
        x = x + self.drop(self.proj(a))
        return x + self.drop(self.fc2(F.gelu(self.fc1(self.norm2(x)))))

class ViT(nn.Module):
    def __init__(self, image=64, patch=8, dim=384, depth=5, heads=6, hidden=1536, classes=100):
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        self.pos = nn.Parameter(torch.zeros(1, (image // patch) ** 2, dim))
        self.blocks = nn.Sequential(*[Block(dim, heads, hidden) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2) + self.pos
        x = self.norm(self.blocks(x))
        return self.head(x.mean(1))
'''


FRESH_RUNS = 3


def make_repo(root: Path, depths: tuple[int, ...] = (5,)) -> Path:
    import torch

    repo = root / "bench-hub"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (repo / "vitnet.py").write_text(textwrap.dedent(VIT))
    sys.path.insert(0, str(repo))
    import vitnet  # noqa: E402  (the benchmark's own trusted model file)

    for depth in depths:
        torch.manual_seed(0)
        torch.save(vitnet.ViT(depth=depth).state_dict(), repo / f"vit{depth}.pth")
    sys.path.remove(str(repo))
    sys.modules.pop("vitnet", None)
    return repo


def timed(fn) -> tuple[float, float]:
    """(wall seconds, CPU seconds of this process, all threads): CPU time is less
    disturbed by other work on a shared machine."""
    start, cpu = time.perf_counter(), time.process_time()
    fn()
    return time.perf_counter() - start, time.process_time() - cpu


def bench_model(root: Path, repo: Path, depth: int, repeat: int) -> dict:
    import torch

    import safehub

    start = time.perf_counter()
    loaded = safehub.load(str(repo), "vit", depth=depth, source="local", verbose=False)
    export_s = time.perf_counter() - start
    assert loaded.safehub_info.cache.get("stored"), loaded.safehub_info.cache
    art = safehub.save(loaded, root / f"vit{depth}-artifact")
    params = sum(p.numel() for p in loaded.parameters())

    def torch_hub_cached() -> None:
        torch.hub.load(str(repo), "vit", depth=depth, source="local", trust_repo=True)
        sys.modules.pop("hubconf", None)

    def torch_hub_fresh_import() -> None:
        torch_hub_cached()
        sys.modules.pop("vitnet", None)

    def load_artifact() -> None:
        safehub.load_artifact(art)

    def safehub_load_hit() -> None:
        m = safehub.load(str(repo), "vit", depth=depth, source="local", verbose=False)
        assert m.safehub_info.cache["hit"]

    fresh = {"torch_hub": [], "safehub_load_hit": []}
    child = {
        "torch_hub": f"import torch; torch.hub.load({str(repo)!r}, 'vit', depth={depth}, source='local', trust_repo=True)",
        "safehub_load_hit": f"import safehub; m = safehub.load({str(repo)!r}, 'vit', depth={depth}, source='local', "
                            "verbose=False); assert m.safehub_info.cache['hit']",
    }
    for _ in range(FRESH_RUNS):  # a new interpreter each time: imports included
        for name, code in child.items():
            start = time.perf_counter()
            subprocess.run([sys.executable, "-c", code], check=True, capture_output=True)
            fresh[name].append(time.perf_counter() - start)

    # Same outputs (eval), checked once before timing.
    ref = torch.hub.load(str(repo), "vit", depth=depth, source="local", trust_repo=True)
    sys.modules.pop("hubconf", None)
    hit = safehub.load(str(repo), "vit", depth=depth, source="local", verbose=False)
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        same = torch.equal(ref(x), safehub.load_artifact(art)(x)) and torch.equal(ref(x), hit(x))
    first_hit = hit.safehub_info.timings
    fns = {"torch_hub_cached": torch_hub_cached, "torch_hub_fresh_import": torch_hub_fresh_import,
           "load_artifact": load_artifact, "safehub_load_hit": safehub_load_hit}
    runs: dict[str, list[tuple[float, float]]] = {k: [] for k in fns}
    for _ in range(repeat):  # interleaved, so drift hits all alike
        for name, fn in fns.items():
            runs[name].append(timed(fn))
    med = {k: statistics.median(w for w, _ in v) for k, v in runs.items()}
    cpu = {k: statistics.median(c for _, c in v) for k, v in runs.items()}
    base = med["torch_hub_cached"]
    return {
        "model": f"ViT-shaped, {depth} blocks, {params / 1e6:.2f} M parameters",
        "weights_mib": round((art / "weights.safetensors").stat().st_size / 2**20, 1),
        "median_s": {k: round(v, 4) for k, v in med.items()},
        "ratio_vs_torch_hub_cached": {k: round(v / base, 3) for k, v in med.items() if k != "torch_hub_cached"},
        "median_cpu_s": {k: round(v, 4) for k, v in cpu.items()},
        "cpu_ratio_vs_torch_hub_cached": {k: round(v / cpu["torch_hub_cached"], 3)
                                          for k, v in cpu.items() if k != "torch_hub_cached"},
        "fresh_process_median_s": {k: round(statistics.median(v), 3) for k, v in fresh.items()},
        "fresh_process_ratio_hit_vs_torch_hub": round(statistics.median(fresh["safehub_load_hit"])
                                                      / statistics.median(fresh["torch_hub"]), 3),
        "same_eval_output": same,
        "sandboxed_export_s": round(export_s, 2),
        "first_hit_timings": first_hit,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=15)
    parser.add_argument("--sizes", default="5,10", help="ViT depths to measure (5: 9.0 M parameters)")
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--threads", type=int, default=0,
                        help="torch intra-op threads (0: torch's default); 1 steadies runs on a busy machine")
    args = parser.parse_args()

    import torch

    if args.threads:
        torch.set_num_threads(args.threads)
    depths = tuple(int(d) for d in args.sizes.split(","))
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SAFEHUB_HOME"] = str(root / "home")
        os.environ["SAFEHUB_ARTIFACT_CACHE"] = "1"
        repo = make_repo(root, depths)
        report = {"repeat": args.repeat, "torch_threads": torch.get_num_threads(), "goal": "<= 0.5",
                  "models": [bench_model(root, repo, depth, args.repeat) for depth in depths]}
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            if key != "models":
                print(f"{key:30s} {value}")
        for model in report["models"]:
            print()
            for key, value in model.items():
                print(f"{key:30s} {value}")


if __name__ == "__main__":
    main()
