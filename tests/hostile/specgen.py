"""Test helper: write valid safehub-arch specs (docs/architecture-format.md) for
small models, independently of the sandbox producer, plus raw spec editing.

This is a deliberately small encoder: a fixed recipe table for a few leaf
classes, fx.symbolic_trace in both modes, the Literal encoding from the doc.
"""

from __future__ import annotations

import copy
import json
import math
import operator
from pathlib import Path
from typing import Any

import torch
from st_save import save_file
from torch import fx, nn

DTYPE_NAMES = {
    torch.float64: "float64", torch.float32: "float32", torch.float16: "float16", torch.bfloat16: "bfloat16",
    torch.int64: "int64", torch.int32: "int32", torch.int16: "int16", torch.int8: "int8", torch.uint8: "uint8",
    torch.bool: "bool", torch.complex64: "complex64",
}  # fmt: skip

RECIPES = {
    nn.Linear: lambda m: {"in_features": m.in_features, "out_features": m.out_features, "bias": m.bias is not None},
    nn.Conv2d: lambda m: {
        "in_channels": m.in_channels, "out_channels": m.out_channels, "kernel_size": {"tuple": list(m.kernel_size)},
        "stride": {"tuple": list(m.stride)}, "padding": {"tuple": list(m.padding)}, "bias": m.bias is not None,
    },
    nn.BatchNorm1d: lambda m: {"num_features": m.num_features, "eps": {"float": repr(m.eps)}},
    nn.BatchNorm2d: lambda m: {"num_features": m.num_features, "eps": {"float": repr(m.eps)}},
    nn.LayerNorm: lambda m: {"normalized_shape": {"tuple": list(m.normalized_shape)}},
    nn.Embedding: lambda m: {"num_embeddings": m.num_embeddings, "embedding_dim": m.embedding_dim},
    nn.ReLU: lambda m: {},
    nn.Dropout: lambda m: {"p": {"float": repr(m.p)}},
    nn.LSTM: lambda m: {"input_size": m.input_size, "hidden_size": m.hidden_size, "num_layers": m.num_layers, "batch_first": m.batch_first},
}  # fmt: skip


def _fn_name(fn: Any) -> str:
    for modname, mod in (("torch", torch), ("torch.nn.functional", torch.nn.functional), ("operator", operator), ("math", math)):
        for attr, obj in vars(mod).items():
            if obj is fn and not attr.startswith("__"):
                return f"{modname}.{attr}"
    if fn is getattr:
        return "builtins.getattr"
    raise ValueError(f"no name for {fn}")


def literal(v: Any) -> Any:
    if isinstance(v, fx.Node):
        return {"node": v.name}
    if v is None or isinstance(v, (bool, int, str)):
        return v
    if isinstance(v, float):
        return {"float": repr(v)}
    if isinstance(v, torch.dtype):
        return {"dtype": DTYPE_NAMES[v]}
    if isinstance(v, torch.device):
        return {"device": str(v)}
    if isinstance(v, tuple):
        return {"tuple": [literal(x) for x in v]}
    if isinstance(v, list):
        return {"list": [literal(x) for x in v]}
    if isinstance(v, dict):
        return {"dict": {k: literal(x) for k, x in v.items()}}
    if isinstance(v, slice):
        return {"slice": [literal(v.start), literal(v.stop), literal(v.step)]}
    if v is Ellipsis:
        return {"ellipsis": True}
    raise TypeError(type(v))


class _Tracer(fx.Tracer):
    def is_leaf_module(self, m: nn.Module, qualname: str) -> bool:
        return type(m) in RECIPES


def _graph(model: nn.Module) -> dict:
    graph = _Tracer().trace(model)
    nodes = []
    for n in graph.nodes:
        target = n.target if isinstance(n.target, str) else _fn_name(n.target)
        nodes.append(
            {
                "op": n.op,
                "name": n.name,
                "target": target,
                "args": [literal(a) for a in n.args],
                "kwargs": {k: literal(v) for k, v in n.kwargs.items()},
            }
        )
    return {"nodes": nodes}


def module_spec(model: nn.Module, mid: str = "m0") -> tuple[dict, dict[str, torch.Tensor]]:
    """(module spec dict, safetensors dict) for ``model``."""
    flags = {m: m.training for m in model.modules()}
    graphs = {}
    for mode in ("eval", "train"):
        model.train(mode == "train")
        graphs[mode] = _graph(model)
    for m, flag in flags.items():
        m.training = flag
    leaves, submodules = {}, {}
    for name, m in model.named_modules():
        if not name:
            continue
        if type(m) in RECIPES:
            leaves[name] = {"cls": type(m).__name__, "kwargs": RECIPES[type(m)](m), "training": m.training}
        elif not any(name.startswith(leaf + ".") for leaf in leaves):
            submodules[name] = {"training": m.training}
    tensors, weights, seen = {}, {}, {}
    aliases = {}
    for prefix, m in model.named_modules(remove_duplicate=False):
        pre = f"{prefix}." if prefix else ""
        for n, p in m._parameters.items():
            if p is None:
                continue
            if id(p) in seen:
                aliases[pre + n] = seen[id(p)]
                continue
            seen[id(p)] = pre + n
            tensors[pre + n] = {"dtype": DTYPE_NAMES[p.dtype], "shape": list(p.shape), "kind": "parameter", "requires_grad": p.requires_grad}
            weights[f"{mid}.{pre}{n}"] = p.detach().contiguous()
        for n, b in m._buffers.items():
            if b is None:
                continue
            tensors[pre + n] = {"dtype": DTYPE_NAMES[b.dtype], "shape": list(b.shape), "kind": "buffer", "persistent": n not in m._non_persistent_buffers_set}
            weights[f"{mid}.{pre}{n}"] = b.detach().contiguous()
    spec = {"mode": "fx", "training": model.training, "tensors": tensors, "aliases": aliases, "leaves": leaves,
            "submodules": submodules, "graphs": graphs}  # fmt: skip
    return spec, weights


def full_spec(model: nn.Module) -> tuple[dict, dict[str, torch.Tensor]]:
    mspec, weights = module_spec(model)
    spec = {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": {"module": "m0"}, "modules": {"m0": mspec}}
    return spec, weights


def write(out: Path, spec: Any, weights: dict[str, torch.Tensor], *, raw_spec: bytes | None = None) -> Path:
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_bytes(raw_spec if raw_spec is not None else json.dumps(spec).encode())
    save_file({k: v.contiguous() for k, v in weights.items()}, str(out / "weights.safetensors"))
    return out


def clone(spec: Any) -> Any:
    return copy.deepcopy(spec)
