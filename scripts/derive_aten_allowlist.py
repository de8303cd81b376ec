"""Derive the aten ops that torch.export emits for forward graphs of real models.

Exports every model below with safehub's own aten exporter (runners/_export_aten.py:
torch.export, eval and train mode, dynamic batch) and records which aten op
overloads each graph calls. The output is the evidence behind the host's kernel
allowlist (safehub/_channel/aten_forward_ops.json, read by
safehub/_channel/_allowlist.py). The host allows an op only if it is in that file
and passes the kernel criterion in _allowlist.py (no backward kernels, no kernels
that index memory by tensor values without a bounds check).

Sources: safehub's own zoo (tests/zoo), one tiny model per standard torch.nn layer
that hub models are built from, one per tensor function they commonly call in
forward, and a corpus of public hub repos fetched
into a folder outside this repository (``--corpus``; one sub-folder per repo,
named ``owner+name``, at the commits listed in CORPUS). Repos whose hubconf needs a
package this venv lacks are loaded through the module the hubconf would import.
Each source runs in its own subprocess (repos reuse module names like ``models``).
pytorch/vision is not in the corpus: its snapshot (1.4 GB) was over the fetch limit;
its layer vocabulary is covered by the torch.nn source and the repos above.

    .venv/bin/python scripts/derive_aten_allowlist.py --corpus /path/to/corpus
    .venv/bin/python scripts/derive_aten_allowlist.py --corpus DIR --check   # compare, write nothing

Most corpus repos import numpy at module level, which safehub's own venv lacks on
purpose (the runners must work without it). Run the script from a separate venv
with torch and numpy only (``SAFEHUB_VENV=DIR bash scripts/setup.sh`` then
``DIR/bin/pip install numpy``). Nothing else of a repo's dependencies is installed:
the corpus is read as plain source and models get random weights (no downloads).
"""

from __future__ import annotations

import argparse
import importlib
import json
import logging
import os
import subprocess
import sys
import types
from pathlib import Path
from typing import Any, Callable

ROOT = Path(__file__).resolve().parent.parent
OUT = ROOT / "safehub" / "_channel" / "aten_forward_ops.json"
log = logging.getLogger("derive_aten_allowlist")

# owner+name -> commit the corpus was read at (for provenance; fetched by the search tool's fetch).
CORPUS = {
    "chenyaofo+pytorch-cifar-models": "786c16252c0fc58ee9adac063f8337cc4a7a497a",
    "facebookresearch+dinov2": "b8931f7bf91576930313be2c6d6af376033b35f0",
    "facebookresearch+pytorch_GAN_zoo": "b75dee40918caabb4fe7ec561522717bf096a8cb",
    "huawei-noah+ghostnet": "bce852040fe7685d1a14ef73afe17417a31f51b1",
    "karpathy+nanoGPT": "3adf61e154c3fe3fca428ad6bc3818b27a3b8291",
    "lukemelas+EfficientNet-PyTorch": "7e8b0d312162f335785fb5dcfa1df29a75a1783a",
    "mateuszbuda+brain-segmentation-pytorch": "d45f8908ab2f0246ba204c702a6161c9eb25f902",
    "rwightman+gen-efficientnet-pytorch": "771ce082b2ce6d033f55b3d47c1f77389ad3c180",
    "pytorch+examples": "77f55b912142e11fcfdf5b530231fb9c52f181e8",
}

Model = tuple[str, Callable[[], Any], Callable[[], tuple]]


def _img(c: int = 3, h: int = 32, w: int | None = None) -> Callable[[], tuple]:
    import torch

    return lambda: (torch.randn(2, c, h, w or h),)


def _hubconf(repo: Path) -> types.ModuleType:
    """Import a repo's hubconf the way torch.hub does (repo folder first on sys.path)."""
    sys.path.insert(0, str(repo))
    spec = importlib.util.spec_from_file_location("hubconf", repo / "hubconf.py")
    assert spec and spec.loader
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _zoo_models(_: Path | None) -> list[Model]:
    import torch

    hub = _hubconf(ROOT / "tests" / "zoo")
    inputs = {
        "resnet": _img(h=16), "mobilenet": _img(h=16), "unet": _img(h=16), "vit": _img(h=16), "swin": _img(h=16),
        "transformer": lambda: (torch.randn(2, 5, 32),), "recurrent": lambda: (torch.randn(2, 7, 6),),
        "tied": lambda: (torch.randint(0, 20, (2, 5)),), "shared": lambda: (torch.randn(2, 6),),
        "nonpersistent": lambda: (torch.randn(2, 4),), "weightnorm": lambda: (torch.randn(2, 2, 9),),
        "dict_output": lambda: (torch.randn(2, 5),), "tuple_output": lambda: (torch.randn(2, 3),),
        "functional": lambda: (torch.randn(2, 6),), "stochastic_depth": lambda: (torch.randn(2, 8),),
        "data_dependent": lambda: (torch.randn(2, 3, 20),), "unnameable": lambda: (torch.randn(2, 4),),
        "encoder": lambda: (torch.randn(2, 6, 16),),
        "seq2seq": lambda: (torch.randn(2, 5, 16), torch.randn(2, 4, 16)),
    }  # fmt: skip
    return [(f"zoo:{name}", getattr(hub, name), make) for name, make in inputs.items()]


def _nn_models(_: Path | None) -> list[Model]:
    """One tiny model per standard torch.nn layer that hub models are built from (the
    fx path already rebuilds these layers as leaves; aten mode must carry them too)."""
    import torch
    from torch import nn

    def r(*shape: int) -> Callable[[], tuple]:
        return lambda: (torch.randn(2, *shape),)

    class Two(nn.Module):  # layers taking two inputs, fed the same tensor twice
        def __init__(self, m: nn.Module) -> None:
            super().__init__()
            self.m = m

        def forward(self, x: Any) -> Any:
            return self.m(x, x)

    class Attn(nn.Module):
        def __init__(self) -> None:
            super().__init__()
            self.m = nn.MultiheadAttention(8, 2, batch_first=True)

        def forward(self, x: Any) -> Any:
            return self.m(x, x, x, need_weights=True)[0]

    class Unpool(nn.Module):  # SegNet-style: pooling indices feed the decoder's unpooling
        def __init__(self) -> None:
            super().__init__()
            self.pool, self.unpool = nn.MaxPool2d(2, return_indices=True), nn.MaxUnpool2d(2)

        def forward(self, x: Any) -> Any:
            y, idx = self.pool(x)
            return self.unpool(y, idx)

    class Bag(nn.Module):  # fastText / DLRM style: flat token ids with per-sample offsets
        def __init__(self) -> None:
            super().__init__()
            self.m = nn.EmbeddingBag(20, 4, mode="mean")

        def forward(self, x: Any) -> Any:
            return self.m(x.flatten(), torch.arange(0, x.numel(), x.shape[1]))

    layers: list[tuple[str, Callable[[], Any], Callable[[], tuple]]] = [
        ("Conv1d", lambda: nn.Conv1d(3, 4, 3, padding=1), r(3, 10)),
        ("Conv3d", lambda: nn.Conv3d(2, 3, 3, padding=1), r(2, 4, 4, 4)),
        ("ConvTranspose1d", lambda: nn.ConvTranspose1d(3, 2, 2, stride=2), r(3, 5)),
        ("ConvTranspose3d", lambda: nn.ConvTranspose3d(2, 2, 2, stride=2), r(2, 2, 2, 2)),
        ("MaxPool1d", lambda: nn.MaxPool1d(2), r(3, 10)),
        ("MaxPool3d", lambda: nn.MaxPool3d(2), r(2, 4, 4, 4)),
        ("AvgPool1d", lambda: nn.AvgPool1d(2), r(3, 10)),
        ("AvgPool2d", lambda: nn.AvgPool2d(2), r(3, 8, 8)),
        ("AvgPool3d", lambda: nn.AvgPool3d(2), r(2, 4, 4, 4)),
        ("AdaptiveAvgPool1d", lambda: nn.AdaptiveAvgPool1d(3), r(3, 10)),
        ("AdaptiveMaxPool2d", lambda: nn.AdaptiveMaxPool2d(3), r(3, 8, 8)),
        ("AdaptiveAvgPool3d", lambda: nn.AdaptiveAvgPool3d(2), r(2, 4, 4, 4)),
        ("Upsample.nearest", lambda: nn.Upsample(scale_factor=2), r(3, 4, 4)),
        ("Upsample.bilinear", lambda: nn.Upsample(scale_factor=2, mode="bilinear", align_corners=False), r(3, 4, 4)),
        ("Upsample.bicubic", lambda: nn.Upsample(size=(7, 7), mode="bicubic", align_corners=True), r(3, 4, 4)),
        ("Upsample.trilinear", lambda: nn.Upsample(scale_factor=2, mode="trilinear"), r(2, 2, 2, 2)),
        ("Upsample.linear", lambda: nn.Upsample(scale_factor=2, mode="linear"), r(3, 4)),
        ("PixelShuffle", lambda: nn.PixelShuffle(2), r(8, 3, 3)),
        ("PixelUnshuffle", lambda: nn.PixelUnshuffle(2), r(2, 4, 4)),
        ("BatchNorm1d", lambda: nn.BatchNorm1d(3), r(3, 5)),
        ("BatchNorm3d", lambda: nn.BatchNorm3d(2), r(2, 3, 3, 3)),
        ("InstanceNorm2d", lambda: nn.InstanceNorm2d(3, affine=True), r(3, 4, 4)),
        ("LayerNorm", lambda: nn.LayerNorm(5), r(3, 5)),
        ("RMSNorm", lambda: nn.RMSNorm(5), r(3, 5)),
        ("LocalResponseNorm", lambda: nn.LocalResponseNorm(2), r(4, 3, 3)),
        ("Embedding", lambda: nn.Embedding(20, 4, padding_idx=0), lambda: (torch.randint(0, 20, (2, 5)),)),
        ("EmbeddingBag", Bag, lambda: (torch.randint(0, 20, (2, 5)),)),
        ("MaxUnpool2d", Unpool, r(3, 4, 4)),
        ("ReflectionPad2d", lambda: nn.ReflectionPad2d(1), r(3, 4, 4)),
        ("ReplicationPad2d", lambda: nn.ReplicationPad2d(1), r(3, 4, 4)),
        ("ZeroPad2d", lambda: nn.ZeroPad2d(1), r(3, 4, 4)),
        ("CircularPad1d", lambda: nn.CircularPad1d(1), r(3, 4)),
        ("Dropout2d", lambda: nn.Dropout2d(0.3), r(3, 4, 4)),
        ("AlphaDropout", lambda: nn.AlphaDropout(0.3), r(5)),
        ("Bilinear", lambda: Two(nn.Bilinear(4, 4, 3)), r(4)),
        ("CosineSimilarity", lambda: Two(nn.CosineSimilarity()), r(4)),
        ("PairwiseDistance", lambda: Two(nn.PairwiseDistance()), r(4)),
        ("Unfold", lambda: nn.Unfold(2), r(3, 4, 4)),
        ("Fold", lambda: nn.Fold((3, 3), 2), r(12, 4)),
        ("ChannelShuffle", lambda: nn.ChannelShuffle(2), r(4, 2, 2)),
        ("RNN", lambda: nn.RNN(4, 3, batch_first=True), r(5, 4)),
        ("LSTM.proj_bidirectional", lambda: nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, proj_size=3), r(5, 4)),
        ("LSTMCell", lambda: nn.LSTMCell(4, 3), r(4)),
        ("GRUCell", lambda: nn.GRUCell(4, 3), r(4)),
        ("MultiheadAttention", Attn, r(5, 8)),
        ("TransformerDecoderLayer", lambda: Two(nn.TransformerDecoderLayer(8, 2, 16, batch_first=True)), r(5, 8)),
    ]
    acts = ("ELU", "LeakyReLU", "PReLU", "Softplus", "Mish", "Softmax", "LogSoftmax", "Sigmoid", "Tanh",
            "Hardsigmoid", "Hardtanh", "SELU", "CELU", "GLU", "LogSigmoid", "Softsign", "Tanhshrink", "ReLU6",
            "Softmin", "Hardshrink", "Softshrink")  # fmt: skip
    layers += [(a, getattr(nn, a), r(4)) for a in acts]
    layers += [("GELU.tanh", lambda: nn.GELU(approximate="tanh"), r(4)), ("Threshold", lambda: nn.Threshold(0.1, 2.0), r(4))]
    return [(f"torch.nn:{name}", make, inputs) for name, make, inputs in layers]


def _functional_models(_: Path | None) -> list[Model]:
    """Tensor functions hub models call in forward outside any layer (masks, top-k
    heads, gathers of token positions, reductions), one tiny forward each."""
    import torch

    class F(torch.nn.Module):
        def __init__(self, fn: Callable[[Any], Any]) -> None:
            super().__init__()
            self.fn = fn
            self.w = torch.nn.Parameter(torch.randn(6, 6))

        def forward(self, x: Any) -> Any:
            return self.fn(self, x)

    def _assign_first_column(x: Any, value: Any) -> Any:
        x = x * 2  # a new tensor: the input itself is never written
        x[:, 0:1] = value
        return x

    fns: dict[str, Callable[[Any, Any], Any]] = {
        "mm": lambda m, x: torch.mm(x, m.w.t()),
        "matmul_bmm": lambda m, x: torch.bmm(x[:, None], torch.matmul(x, m.w)[:, :, None]),
        "einsum": lambda m, x: torch.einsum("bi,ij->bj", x, m.w),
        "full_mask": lambda m, x: x[:, None].masked_fill(torch.full((6, 6), 1.0).tril_(0) > 0, 0.0).sum(),
        "tril_mask": lambda m, x: x[:, :, None].expand(-1, -1, 6).masked_fill(torch.tril(torch.ones(6, 6)) == 0, float("-inf")),
        "topk_sort_argmax": lambda m, x: (torch.topk(x, 2).values, torch.sort(x).indices, x.argmax(-1), x.max(-1).values),
        "cumsum_logsumexp": lambda m, x: (x.cumsum(-1), x.logsumexp(-1), x.std(-1), x.var(-1), x.norm(dim=-1), x.prod(-1)),
        "gather": lambda m, x: x.gather(1, x.argsort(-1)),
        "index_select": lambda m, x: x.index_select(1, torch.tensor([0, 2, 4])),
        "index_put": lambda m, x: x.clone().index_put_((torch.tensor([0]),), torch.zeros(6)),
        "setitem_mask": lambda m, x: torch.where(x > 0, x, torch.zeros_like(x)).clamp(-1, 1),
        "scatter_onehot": lambda m, x: torch.zeros_like(x).scatter(1, x.argmax(-1, keepdim=True), 1.0),
        "elementwise": lambda m, x: (x.exp() + x.abs().log1p() + x.abs().sqrt() + x.abs().add(1).rsqrt() + x.sin()
                                     + x.cos() + x.erf() + x.sign() + x.reciprocal() + x.round() + x.ceil()),
        "compare_logic": lambda m, x: ((x > 0) & (x < 1) | (x == 0)).float().mean(),
        "shape_ops": lambda m, x: (x.flip(0), x.repeat(2, 1), x.narrow(1, 0, 2), x.chunk(2, 1), x.unsqueeze(0).squeeze(0),
                                   x.T.contiguous(), x.new_full((2,), 1.0), torch.ones_like(x), x.minimum(x), x.maximum(x)),
        "item_scale": lambda m, x: x * x.abs().max().item(),
        "normalize": lambda m, x: torch.nn.functional.normalize(x, dim=-1),
        "type_ops": lambda m, x: (x.to(torch.float64).float(), x.long().float(), x.detach(), x.type_as(x)),
        # timm's activations run in place (MEAL-V2's tf_mobilenetv3: hard_swish(x, inplace=True))
        "inplace_activations": lambda m, x: tuple(
            fn(x.clone(), inplace=True) for fn in (torch.nn.functional.hardswish, torch.nn.functional.hardsigmoid,
                                                   torch.nn.functional.leaky_relu, torch.nn.functional.elu,
                                                   torch.nn.functional.mish)),
        # masks moved to the weights' device (xcit's PositionalEncodingFourier): to(device), to(device, dtype)
        "to_device": lambda m, x: ((~torch.zeros(x.shape[0], 6).bool().to(m.w.device)).float() + x.to(device=x.device)
                                   + x.to(x.device, torch.float64).float()),
        # tensor // number (xcit's PositionalEncodingFourier: dim_t // 2)
        "floor_divide": lambda m, x: x + torch.arange(6, dtype=torch.float32) // 2,
        # number ** tensor (xcit's PositionalEncodingFourier: temperature ** (2 * (dim_t // 2) / dim))
        "scalar_pow": lambda m, x: x * 10000 ** (2 * (torch.arange(6, dtype=torch.float32) // 2) / 6),
        # a slice assigned in place (xcit's ClassAttentionBlock: x[:, 0:1] = self.norm2(x[:, 0:1]))
        "slice_assign": lambda m, x: _assign_first_column(x, torch.nn.functional.layer_norm(x[:, 0:1], (1,))),
        # detection heads build anchor grids in forward (yolov5's Detect._make_grid)
        "meshgrid": lambda m, x: torch.stack(torch.meshgrid(torch.arange(x.shape[1]), torch.arange(3), indexing="ij"), 2)
        .float().sum() + x,
        # ViTs resize position embeddings with antialias=True (dinov2's interpolate_pos_encoding)
        "interpolate_antialias": lambda m, x: tuple(
            torch.nn.functional.interpolate(x.reshape(1, 1, 3, 4), size=(2, 3), mode=mode, antialias=True)
            for mode in ("bicubic", "bilinear")),
    }  # fmt: skip
    return [(f"torch.functions:{name}", (lambda fn=fn: F(fn)), lambda: (torch.randn(2, 6),)) for name, fn in fns.items()]


def _corpus_models(repo_name: str, corpus: Path) -> list[Model]:
    import torch

    repo = corpus / repo_name
    if repo_name == "chenyaofo+pytorch-cifar-models":
        hub = _hubconf(repo)
        names = ("cifar10_resnet20", "cifar10_vgg11_bn", "cifar10_mobilenetv2_x0_5", "cifar10_shufflenetv2_x0_5",
                 "cifar10_repvgg_a0")  # fmt: skip
        return [(f"{repo_name}:{n}", (lambda n=n: getattr(hub, n)(pretrained=False)), _img()) for n in names]
    if repo_name == "rwightman+gen-efficientnet-pytorch":
        hub = _hubconf(repo)
        names = ("efficientnet_b0", "mobilenetv3_large_100", "mixnet_s", "tf_efficientnet_b0", "mnasnet_a1")
        return [(f"{repo_name}:{n}", (lambda n=n: getattr(hub, n)(pretrained=False)), _img(h=64)) for n in names]
    if repo_name == "lukemelas+EfficientNet-PyTorch":
        hub = _hubconf(repo)

        def effnet() -> Any:
            m = hub._EfficientNet.from_name("efficientnet-b0")  # what hub.efficientnet_b0(pretrained=None) means
            m.set_swish(memory_efficient=False)  # the custom autograd.Function swish is for training memory only
            return m

        return [(f"{repo_name}:efficientnet_b0", effnet, _img(h=64))]
    if repo_name == "huawei-noah+ghostnet":
        hub = _hubconf(repo)
        return [(f"{repo_name}:ghostnet_1x", lambda: hub.ghostnet_1x(pretrained=False), _img(h=64))]
    if repo_name == "mateuszbuda+brain-segmentation-pytorch":
        hub = _hubconf(repo)
        return [(f"{repo_name}:unet", lambda: hub.unet(pretrained=False, init_features=4), _img(h=32))]
    if repo_name == "facebookresearch+pytorch_GAN_zoo":
        hub = _hubconf(repo)

        def dcgan_g() -> Any:
            return hub.DCGAN(pretrained=False, useGPU=False).getOriginalG()

        return [(f"{repo_name}:DCGAN.G", dcgan_g, lambda: (torch.randn(2, 64),))]
    if repo_name == "facebookresearch+dinov2":
        hub = _hubconf(repo)

        class Dinov2(torch.nn.Module):  # its forward(*args, **kwargs) hides the arity from torch.export
            def __init__(self) -> None:
                super().__init__()
                self.m = hub.dinov2_vits14(pretrained=False)

            def forward(self, x: Any) -> Any:
                return self.m(x)

        return [(f"{repo_name}:dinov2_vits14", Dinov2, _img(h=56))]
    if repo_name == "karpathy+nanoGPT":
        sys.path.insert(0, str(repo))
        gpt = importlib.import_module("model")

        def nanogpt() -> Any:
            return gpt.GPT(gpt.GPTConfig(block_size=32, vocab_size=101, n_layer=2, n_head=2, n_embd=32, dropout=0.1))

        return [(f"{repo_name}:GPT", nanogpt, lambda: (torch.randint(0, 101, (2, 16)),))]
    if repo_name == "pytorch+examples":
        out: list[Model] = []
        sys.path.insert(0, str(repo / "word_language_model"))
        wlm = importlib.import_module("model")
        tokens = lambda: (torch.randint(0, 50, (7, 2)),)  # noqa: E731 - (seq, batch)

        class LSTMLM(torch.nn.Module):  # the example's forward(input, hidden) with a zero hidden state
            def __init__(self, kind: str) -> None:
                super().__init__()
                self.m = wlm.RNNModel(kind, 50, 16, 16, 2, dropout=0.2, tie_weights=True)

            def forward(self, x: Any) -> Any:
                return self.m(x, self.m.init_hidden(x.shape[1]))

        out.append((f"{repo_name}:word_language_model.LSTM", lambda: LSTMLM("LSTM"), tokens))
        out.append((f"{repo_name}:word_language_model.GRU", lambda: LSTMLM("GRU"), tokens))
        out.append((f"{repo_name}:word_language_model.Transformer",
                    lambda: wlm.TransformerModel(50, 16, 2, 16, 2, dropout=0.2), tokens))  # fmt: skip
        for sub, modname, label, make, inputs in (
            ("fast_neural_style/neural_style", "transformer_net", "fast_neural_style",
             lambda m: m.TransformerNet(), _img(h=32)),
            ("super_resolution", "model", "super_resolution", lambda m: m.Net(upscale_factor=3), _img(c=1, h=16)),
        ):  # fmt: skip
            sys.path.insert(0, str(repo / sub))
            sys.modules.pop("model", None)
            mod = importlib.import_module(modname)
            out.append((f"{repo_name}:{label}", (lambda m=mod, mk=make: mk(m)), inputs))
        return out
    raise SystemExit(f"unknown corpus repo {repo_name}")


def _export_ops(model: Any, inputs: tuple) -> set[str]:
    """The aten call_function targets of safehub's eval and train graphs."""
    sys.path.insert(0, str(ROOT / "runners"))
    import _export_aten  # runners/_export_aten.py: what the sandbox ships to the host

    spec, _, _ = _export_aten.export_aten(model, inputs)
    return {
        n["target"]
        for g in spec["graphs"].values()
        for n in g["nodes"]
        if n["op"] == "call_function" and n["target"].startswith("aten.")
    }


def worker(source: str, corpus: Path | None) -> dict[str, Any]:
    import torch

    torch.manual_seed(0)
    builtin = {"zoo": _zoo_models, "torch.nn": _nn_models, "torch.functions": _functional_models}
    if source in builtin:
        models = builtin[source](corpus)
    else:
        models = _corpus_models(source, corpus)  # type: ignore[arg-type]
    ops: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for label, make, inputs in models:
        try:
            model = make()
            ops[label] = sorted(_export_ops(model, inputs()))
        except Exception as exc:  # noqa: BLE001 - recorded: a model the exporter cannot carry adds no ops
            failed[label] = f"{type(exc).__name__}: {str(exc)[:300]}"
    return {"ops": ops, "failed": failed}


def derive(corpus: Path | None) -> dict[str, Any]:
    sources = ["zoo", "torch.nn", "torch.functions"]
    if corpus is not None:
        missing = [r for r in CORPUS if not (corpus / r).is_dir()]
        if missing:
            raise SystemExit(f"corpus {corpus} lacks {missing}: fetch them (owner/name at the commits in CORPUS)")
        sources += sorted(CORPUS)
    by_model: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for source in sources:
        log.info("exporting %s", source)
        cmd = [sys.executable, __file__, "--worker", source] + (["--corpus", str(corpus)] if corpus else [])
        proc = subprocess.run(cmd, capture_output=True, text=True, cwd=ROOT, timeout=1800)
        if proc.returncode != 0:
            failed[source] = proc.stderr[-500:]
            continue
        result = json.loads(proc.stdout.strip().splitlines()[-1])
        by_model.update(result["ops"])
        failed.update(result["failed"])
    ops: dict[str, list[str]] = {}
    for label, names in sorted(by_model.items()):
        for name in names:
            ops.setdefault(name, []).append(label)
    import torch

    return {
        "comment": "aten ops torch.export emitted for forward graphs (eval+train) of real models; "
        "generated by scripts/derive_aten_allowlist.py, do not edit by hand",
        "torch_version": torch.__version__.split("+")[0],
        "corpus": {k.replace("+", "/"): v for k, v in CORPUS.items()} if corpus else {},
        "models": sorted(by_model),
        "failed": failed,
        "ops": dict(sorted(ops.items())),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--corpus", type=Path, help="folder holding the fetched hub repos (owner+name sub-folders)")
    parser.add_argument("--out", type=Path, default=OUT)
    parser.add_argument("--check", action="store_true", help="compare with --out instead of writing it")
    parser.add_argument("--worker", help=argparse.SUPPRESS)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.worker:
        logging.disable(logging.WARNING)
        print(json.dumps(worker(args.worker, args.corpus)))
        return 0
    result = derive(args.corpus)
    text = json.dumps(result, indent=1) + "\n"
    for label, why in result["failed"].items():
        log.warning("not exported: %s: %s", label, why)
    log.info("%d models, %d ops", len(result["models"]), len(result["ops"]))
    if args.check:
        old = json.loads(args.out.read_text())
        added, dropped = set(result["ops"]) - set(old["ops"]), set(old["ops"]) - set(result["ops"])
        log.info("new ops: %s; ops no longer emitted: %s", sorted(added), sorted(dropped))
        return 1 if added or dropped else 0
    args.out.write_text(text)
    log.info("wrote %s", args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
