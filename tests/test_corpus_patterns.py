"""Forward patterns the real-repo corpus (benchmarks/corpus) found refused by the
host's aten allowlist, as small fixtures: each exports in aten mode (as a deferred or
aten load does), rebuilds on the host and computes what the model computes."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch
from torch import nn
from torch.nn import functional as F

ROOT = Path(__file__).resolve().parent.parent


class PosEmbedResize(nn.Module):
    """dinov2's interpolate_pos_encoding: position embeddings resized with antialias=True."""

    def __init__(self) -> None:
        super().__init__()
        self.pos = nn.Parameter(torch.randn(1, 8, 6, 6))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        small = F.interpolate(self.pos, size=(4, 4), mode="bicubic", antialias=True, align_corners=False)
        lin = F.interpolate(self.pos, size=(3, 5), mode="bilinear", antialias=True)
        return x + small.flatten(1).sum() + lin.mean()


class InplaceActs(nn.Module):
    """timm's mobilenetv3 (MEAL-V2): activations with inplace=True."""

    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3, padding=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.conv(x)
        y = F.hardswish(y, inplace=True)
        y = F.hardsigmoid(y.clone(), inplace=True) + F.leaky_relu(y.clone(), inplace=True)
        return F.elu(y, inplace=True) + F.mish(y.clone(), inplace=True)


class MaskToDevice(nn.Module):
    """xcit's PositionalEncodingFourier: a mask built in forward, moved to the weights' device."""

    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(4))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        mask = torch.zeros(x.shape[0], 4).bool().to(self.w.device)
        return (~mask).cumsum(1, dtype=torch.float32) * self.w + x.to(x.device, torch.float64).float()


class AnchorGrid(nn.Module):
    """yolov5's Detect._make_grid: a meshgrid of the feature map's size, built in forward."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        ny, nx = x.shape[2], x.shape[3]
        yv, xv = torch.meshgrid(torch.arange(ny), torch.arange(nx), indexing="ij")
        return x + torch.stack((xv, yv), 2).float().sum(-1)


@pytest.mark.slow  # torch.export of each model
@pytest.mark.parametrize("make, shape", [(PosEmbedResize, (2, 1)), (InplaceActs, (2, 3, 8, 8)), (MaskToDevice, (2, 4)),
                                          (AnchorGrid, (2, 3, 4, 5))],
                         ids=["interpolate_antialias", "inplace_activations", "to_device", "meshgrid"])
def test_corpus_ops_rebuild_in_aten_mode_and_match(make, shape, tmp_path):
    if str(ROOT / "runners") not in sys.path:
        sys.path.insert(0, str(ROOT / "runners"))
    import _export  # runners/_export.py: what the sandbox runs

    from safehub._channel import rebuild_from_output

    torch.manual_seed(0)
    model = make().eval()
    x = torch.randn(*shape)
    _export.export_object(model, str(tmp_path), options={"mode": "aten"}, example_inputs=(x,), hubconf=None,
                          entrypoint=make.__name__)
    rebuilt = rebuild_from_output(tmp_path)  # refused before: _upsample_*_aa, hardswish_ ... not allowlisted
    with torch.no_grad():
        torch.testing.assert_close(rebuilt(x), model(x))
        x2 = torch.randn(3, *shape[1:])
        torch.testing.assert_close(rebuilt(x2), model(x2))
