"""Small models for the export zoo (tests/zoo/hubconf.py). Sizes are tiny on purpose."""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn


class BasicBlock(nn.Module):
    def __init__(self, cin: int, cout: int, stride: int = 1) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.downsample = None
        if stride != 1 or cin != cout:
            self.downsample = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x):
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class CNN(nn.Module):
    def __init__(self, num_classes: int = 10) -> None:
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.layer1 = nn.Sequential(BasicBlock(8, 8), BasicBlock(8, 16, 2))
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(16, num_classes)

    def forward(self, x):
        x = self.layer1(self.stem(x))
        return self.fc(torch.flatten(self.pool(x), 1))


class MobileNetish(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        layers = [nn.Conv2d(3, 8, 3, 2, 1), nn.BatchNorm2d(8), nn.ReLU6(inplace=True)]
        for cin, cout in ((8, 16), (16, 16)):
            layers += [
                nn.Conv2d(cin, cin, 3, 1, 1, groups=cin, bias=False),
                nn.BatchNorm2d(cin),
                nn.Hardswish(),
                nn.Conv2d(cin, cout, 1, bias=False),
                nn.BatchNorm2d(cout),
            ]
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(16, 5))

    def forward(self, x):
        x = self.features(x)
        x = F.adaptive_avg_pool2d(x, 1).flatten(1)
        return self.classifier(x)


class UNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.down1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.GroupNorm(2, 8), nn.SiLU())
        self.down2 = nn.Sequential(nn.Conv2d(8, 16, 3, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.up = nn.ConvTranspose2d(16, 8, 2, stride=2)
        self.out = nn.Conv2d(16, 2, 1)

    def forward(self, x):
        d1 = self.down1(x)
        d2 = self.down2(F.max_pool2d(d1, 2))
        u = self.up(d2)
        return self.out(torch.cat([u, d1], dim=1))


class ViT(nn.Module):
    def __init__(self, image: int = 16, patch: int = 4, dim: int = 32, heads: int = 4, classes: int = 10) -> None:
        super().__init__()
        self.patch = nn.Conv2d(3, dim, patch, patch)
        n = (image // patch) ** 2
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, n + 1, dim) * 0.02)
        self.blocks = nn.Sequential(TransformerBlock(dim, heads), TransformerBlock(dim, heads))
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, classes)

    def forward(self, x):
        x = self.patch(x).flatten(2).transpose(1, 2)
        b = x.shape[0]
        cls = self.cls_token.expand(b, -1, -1)
        x = torch.cat((cls, x), dim=1) + self.pos_embed[:, : x.size(1) + 1]
        x = self.norm(self.blocks(x))
        return self.head(x[:, 0])


class TransformerBlock(nn.Module):
    def __init__(self, dim: int = 32, heads: int = 4) -> None:
        super().__init__()
        self.ln1 = nn.LayerNorm(dim)
        self.attn = nn.MultiheadAttention(dim, heads, dropout=0.1, batch_first=True)
        self.ln2 = nn.LayerNorm(dim, bias=False)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * 2), nn.GELU(approximate="tanh"), nn.Dropout(0.1), nn.Linear(dim * 2, dim))

    def forward(self, x):
        h = self.ln1(x)
        x = x + self.attn(h, h, h, need_weights=False)[0]
        return x + self.mlp(self.ln2(x))


class SwinShuffle(nn.Module):
    """Window partition, a shifted roll and window reverse (Swin's shape logic)."""

    def __init__(self, dim: int = 8, window: int = 4) -> None:
        super().__init__()
        self.window = window
        self.embed = nn.Conv2d(3, dim, 2, 2)
        self.norm = nn.LayerNorm(dim)
        self.proj = nn.Linear(dim, dim)
        self.head = nn.Linear(dim, 3)

    def forward(self, x):
        x = self.embed(x).permute(0, 2, 3, 1)  # B H W C
        B, H, W, C = x.shape
        ws = self.window
        x = torch.roll(x, shifts=(-ws // 2, -ws // 2), dims=(1, 2))
        w = x.view(B, H // ws, ws, W // ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(-1, ws * ws, C)
        w = self.proj(self.norm(w))
        x = w.view(B, H // ws, W // ws, ws, ws, C).permute(0, 1, 3, 2, 4, 5).reshape(B, H, W, C)
        x = torch.roll(x, shifts=(ws // 2, ws // 2), dims=(1, 2))
        return self.head(x.mean(dim=(1, 2)))


class RecurrentNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lstm = nn.LSTM(6, 8, num_layers=2, batch_first=True, bidirectional=True)
        self.gru = nn.GRU(16, 8, batch_first=True)
        self.out = nn.Linear(8, 2)

    def forward(self, x):
        y, _ = self.lstm(x)
        y, h = self.gru(y)
        return self.out(y[:, -1]) + h[-1].sum(-1, keepdim=True)


class TiedLM(nn.Module):
    def __init__(self, vocab: int = 20, dim: int = 8) -> None:
        super().__init__()
        self.embed = nn.Embedding(vocab, dim)
        self.mix = nn.Linear(dim, dim)
        self.lm_head = nn.Linear(dim, vocab, bias=False)
        self.lm_head.weight = self.embed.weight

    def forward(self, tokens):
        return self.lm_head(torch.tanh(self.mix(self.embed(tokens))))


class SharedBlock(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.block = nn.Sequential(nn.Linear(6, 6), nn.ReLU())
        self.again = self.block  # the same object under a second name
        self.head = nn.Linear(6, 2)

    def forward(self, x):
        return self.head(self.again(self.block(x)) + self.block(x))


class NonPersistent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)
        self.register_buffer("scale", torch.full((4,), 0.5), persistent=False)
        self.register_buffer("shift", torch.arange(4.0))
        self.table = torch.linspace(0, 1, 4)  # plain tensor attribute: a graph constant

    def forward(self, x):
        return self.lin(x) * self.scale + self.shift + self.table


class WeightNormNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.utils.parametrizations.weight_norm(nn.Conv1d(2, 4, 3, padding=1))
        self.fc = nn.utils.parametrizations.weight_norm(nn.Linear(4, 3), dim=None)

    def forward(self, x):
        return self.fc(F.relu(self.conv(x)).mean(-1))


class DictOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.backbone = nn.Linear(5, 6)
        self.cls = nn.Linear(6, 3)
        self.box = nn.Linear(6, 4)

    def forward(self, x):
        f = F.relu(self.backbone(x))
        return {"logits": self.cls(f), "boxes": self.box(f).sigmoid(), "aux": [f.mean(-1), f.amax(-1)]}


class TupleOutput(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.a = nn.Linear(3, 3)

    def forward(self, x, scale: float = 2.0):
        y = self.a(x)
        return y, y * scale, x.shape[0]


class DataDependent(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.conv = nn.Conv1d(3, 4, 3, padding=1)
        self.long = nn.Linear(4, 2)
        self.short = nn.Linear(4, 2)

    def forward(self, x):
        y = self.conv(x)
        acc = torch.zeros_like(y[:, :, 0])
        for i in range(y.size(2)):
            acc = acc + y[:, :, i] * (i + 1)
        if x.shape[-1] > 16:
            return self.long(acc)
        return self.short(acc)


class Functional(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.w = nn.Parameter(torch.randn(6, 6) * 0.1)
        self.b = nn.Parameter(torch.zeros(6))
        self.eps = 1e-3

    def forward(self, x):
        y = F.linear(x, self.w, self.b)
        y = F.layer_norm(y, (6,), eps=self.eps)
        y = torch.where(y > 0, y, y * 0.1)
        y = y.clamp(min=-3.0, max=3.0).pow(2) + math.sqrt(2.0) * y.abs()
        z = torch.stack([y, y.flip(-1)], dim=1).reshape(x.shape[0], -1)
        z = z.softmax(dim=-1).to(torch.float64).to(torch.float32)
        return z[..., ::2] + z.new_ones(1) * F.gelu(y).sum(-1, keepdim=True).expand(-1, 6)


def stochastic_depth(x: torch.Tensor, p: float, training: bool) -> torch.Tensor:
    if not training or p == 0.0:
        return x
    keep = 1.0 - p
    mask = torch.empty([x.shape[0]] + [1] * (x.ndim - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
    return x * mask / keep


torch.fx.wrap("stochastic_depth")  # as torchvision does; the exporter must trace through it


class StochasticDepthNet(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.inp = nn.Linear(8, 16)
        self.bn = nn.BatchNorm1d(16)
        self.drop = nn.Dropout(0.5)
        self.body = nn.Linear(16, 16)
        self.out = nn.Linear(16, 4)
        self.p = 0.3

    def forward(self, x):
        x = self.drop(F.relu(self.bn(self.inp(x))))
        x = x + stochastic_depth(self.body(x), self.p, self.training)
        return self.out(F.dropout(x, 0.1, self.training))


class Unnameable(nn.Module):
    """Calls a function FX records but that has no canonical torch name."""

    def __init__(self) -> None:
        super().__init__()
        self.lin = nn.Linear(4, 4)

    def forward(self, x):
        return torch.Tensor.add(self.lin(x), 1.0)


class Encoder(nn.Module):
    """nn.TransformerEncoder (layers become leaves) with a learned position table."""

    def __init__(self) -> None:
        super().__init__()
        layer = nn.TransformerEncoderLayer(16, 4, 32, dropout=0.1, batch_first=True)
        self.enc = nn.TransformerEncoder(layer, 2, enable_nested_tensor=False)
        self.pos = nn.Embedding(10, 16)

    def forward(self, x):
        pos = torch.arange(x.size(1), device=x.device)
        return self.enc(x + self.pos(pos))


class Seq2Seq(nn.Module):
    """nn.Transformer: its forward checks shapes in Python, so fx cannot trace it."""

    def __init__(self) -> None:
        super().__init__()
        self.tr = nn.Transformer(16, 2, 1, 1, 32, dropout=0.0, batch_first=True)

    def forward(self, src, tgt):
        return self.tr(src, tgt)
