"""safehub.load vs torch.hub.load on the same model, in the same run.

Run by hand:  python benchmarks/bench_load.py [--repeat 3] [--json]

The model is a ResNet-18-shaped network (11.7 M parameters) in a local hub repo
that this script writes to a temporary folder, with its weights as a pickled
checkpoint in the repo (as real repos ship them). Reported:

* torch.hub.load in this process (warm: torch already imported) and in a fresh
  process (what a CLI pays), the baselines;
* safehub.load warm (env built, cached): the steady-state cost of the sandbox;
* safehub.load cold (first load, env build included) once.

Ratios are safehub / torch.hub from this run only: shared machines are noisy.
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
from resnet import resnet18 as _resnet18

def resnet18(pretrained=True):
    """ResNet-18-shaped benchmark model."""
    m = _resnet18()
    if pretrained:
        m.load_state_dict(torch.load(os.path.join(os.path.dirname(__file__), "resnet18.pth"), weights_only=True))
    return m.eval()
'''

RESNET = '''
import torch
from torch import nn
import torch.nn.functional as F

class Basic(nn.Module):
    def __init__(self, cin, cout, stride):
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False); self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False); self.bn2 = nn.BatchNorm2d(cout)
        self.down = None
        if stride != 1 or cin != cout:
            self.down = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))
    def forward(self, x):
        y = F.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return F.relu(y + (x if self.down is None else self.down(x)))

class ResNet(nn.Module):
    def __init__(self, num_classes=1000):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, 7, 2, 3, bias=False); self.bn1 = nn.BatchNorm2d(64)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        layers, cin = [], 64
        for i, w in enumerate([64, 128, 256, 512]):
            layers.append(nn.Sequential(Basic(cin, w, 1 if i == 0 else 2), Basic(w, w, 1)))
            cin = w
        self.layer1, self.layer2, self.layer3, self.layer4 = layers
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(512, num_classes)
    def forward(self, x):
        x = self.maxpool(F.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))

def resnet18():
    return ResNet()
'''

FRESH_TORCH_HUB = "import sys, torch; torch.hub.load(sys.argv[1], 'resnet18', source='local', trust_repo=True)"


def make_repo(root: Path) -> Path:
    import torch

    repo = root / "bench-hub"
    repo.mkdir()
    (repo / "hubconf.py").write_text(textwrap.dedent(HUBCONF))
    (repo / "resnet.py").write_text(textwrap.dedent(RESNET))
    sys.path.insert(0, str(repo))
    import resnet  # noqa: E402  (the benchmark's own trusted model file)

    torch.manual_seed(0)
    torch.save(resnet.resnet18().state_dict(), repo / "resnet18.pth")
    sys.path.remove(str(repo))
    sys.modules.pop("resnet", None)
    return repo


def timed(fn) -> float:
    start = time.perf_counter()
    fn()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json", action="store_true")
    args = parser.parse_args()

    import torch

    import safehub

    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        os.environ["SAFEHUB_HOME"] = str(root / "home")
        repo = make_repo(root)

        def torch_hub_inproc() -> None:
            torch.hub.load(str(repo), "resnet18", source="local", trust_repo=True)
            for name in ("hubconf", "resnet"):
                sys.modules.pop(name, None)

        def torch_hub_fresh() -> None:
            subprocess.run([sys.executable, "-c", FRESH_TORCH_HUB, str(repo)], check=True)

        def safehub_load() -> None:
            safehub.load(str(repo), "resnet18", source="local", verbose=False)

        results: dict[str, float | list[float]] = {}
        results["safehub_cold_s"] = timed(safehub_load)
        runs: dict[str, list[float]] = {"torch_hub_inprocess": [], "torch_hub_fresh_process": [], "safehub_warm": []}
        for _ in range(args.repeat):
            runs["torch_hub_inprocess"].append(timed(torch_hub_inproc))
            runs["torch_hub_fresh_process"].append(timed(torch_hub_fresh))
            runs["safehub_warm"].append(timed(safehub_load))
        med = {k: statistics.median(v) for k, v in runs.items()}
        report = {
            "model": "resnet18-shaped, 11.7M params",
            "repeat": args.repeat,
            "median_s": {k: round(v, 3) for k, v in med.items()},
            "safehub_cold_s": round(results["safehub_cold_s"], 3),  # type: ignore[arg-type]
            "ratio_warm_vs_torch_hub_inprocess": round(med["safehub_warm"] / med["torch_hub_inprocess"], 2),
            "ratio_warm_vs_torch_hub_fresh_process": round(med["safehub_warm"] / med["torch_hub_fresh_process"], 2),
            "sandbox": safehub.load(str(repo), "resnet18", source="local", verbose=False).safehub_info.backend,
        }
    if args.json:
        print(json.dumps(report, indent=2))
    else:
        for key, value in report.items():
            print(f"{key:45s} {value}")


if __name__ == "__main__":
    main()
