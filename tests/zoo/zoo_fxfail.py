"""Models fx cannot trace, one per failure kind seen on real hub repos (issue 11).

Each loads with the plain call (no example inputs): safehub defers the export to
the first forward. All have BatchNorm or Dropout so eval and train differ.
"""

from __future__ import annotations

import torch
from torch import nn


class SizeBranch(nn.Module):
    """Python control flow on sizes: pools only inputs wider than 8."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)
        self.bn = nn.BatchNorm2d(4)

    def forward(self, x):
        y = torch.relu(self.bn(self.conv(x)))
        if x.shape[-1] > 8:
            y = nn.functional.avg_pool2d(y, 2)
        return y.flatten(1)


class LenOfTensor(nn.Module):
    """len() of a tensor."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(6, 5)
        self.drop = nn.Dropout(0.3)

    def forward(self, x):
        n = len(x)
        return self.drop(self.lin(x)) / n


@torch.jit.script
def _scripted_gelu(x: torch.Tensor) -> torch.Tensor:
    return x * 0.5 * (1.0 + torch.erf(x / 1.41421356))


class IterProxy(nn.Module):
    """Iterating over a tensor (fx: a Proxy cannot be iterated)."""

    def __init__(self) -> None:
        super().__init__()
        self.heads = nn.ModuleList(nn.Linear(3, 4) for _ in range(2))
        self.norm = nn.LayerNorm(4)

    def forward(self, x):
        parts = []
        for head, chunk in zip(self.heads, x.chunk(2, dim=1)):
            parts.append(self.norm(head(chunk)))
        return torch.cat(parts, dim=1)


class ScriptHelper(nn.Module):
    """A TorchScript function called inside forward."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(5, 5)
        self.bn = nn.BatchNorm1d(5)

    def forward(self, x):
        return self.bn(_scripted_gelu(self.lin(x)))


class ScalarArg(nn.Module):
    """A plain Python scalar argument drives a loop (no numpy in the sandbox)."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.bn = nn.BatchNorm1d(4)

    def forward(self, x, steps: int = 2):
        for _ in range(steps):
            x = torch.tanh(self.bn(self.lin(x)))
        return x


class GANWrapper:
    """Not a module: an object exposing its networks as attributes (a pix2pix-style GAN)."""

    def __init__(self) -> None:
        self.netG = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 4))
        self.netD = SizeBranch()  # fx cannot trace it: deferred
        self.heads = [nn.Linear(2, 2)]
        self.image_size = 16
        self.name = "pix2pix"
        self.scale = 0.5
        self.flags = (True, None, (1, 2))
        self.device = torch.device("cpu")  # not plain data: left behind
        self._private = nn.Linear(1, 1)  # private: left behind
        self.optimizer = lambda: None  # code: left behind

    def generate(self, z):
        return self.netG(z)
