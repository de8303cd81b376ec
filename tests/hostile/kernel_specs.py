"""Test helper: aten-mode specs that call kernels trusting their arguments
(tests/test_redteam_kernels.py). ``write(out, mode, variant)`` writes spec.json and
weights.safetensors into ``out`` and returns the forward input shape. The weights
are what an attacker ships: index values far out of range, one-element stats."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from st_save import save_file


def N(name: str) -> dict:
    return {"node": name}


def L(*values: Any) -> dict:
    return {"list": list(values)}


def F(value: float) -> dict:
    return {"float": repr(value)}


def _table() -> dict[str, tuple[dict, str, list, list[int]]]:
    big = 100_000_000
    return {
        "embedding_backward": ({"idx": torch.tensor([[3, big]]), "g": torch.ones(1, 2, 4)},
                               "aten.embedding_dense_backward.default", [N("g"), N("idx"), 10, -1, False], [10, 4]),
        "maxpool_backward": ({"g": torch.ones(1, 1, 2, 2), "idx": torch.full((1, 1, 2, 2), big)},
                             "aten.max_pool2d_with_indices_backward.default",
                             [N("g"), N("x"), L(2, 2), L(2, 2), L(0, 0), L(1, 1), False, N("idx")], [1, 1, 4, 4]),
        "batchnorm_backward": ({"g": torch.ones(2, 64, 3), "w": torch.ones(64), "m": torch.zeros(1), "v": torch.ones(1)},
                               "aten.native_batch_norm_backward.default",
                               [N("g"), N("x"), N("w"), N("m"), N("v"), N("m"), N("v"), False, F(1e-5), L(True, False, False)],
                               [2, 64, 3]),
        "layernorm_backward": ({"g": torch.ones(64, 8), "m": torch.zeros(1, 1), "r": torch.ones(1, 1)},
                               "aten.native_layer_norm_backward.default",
                               [N("g"), N("x"), L(8), N("m"), N("r"), None, None, L(True, False, False)], [64, 8]),
        "batchnorm_forward": ({"m": torch.zeros(1), "v": torch.ones(1)}, "aten.native_batch_norm.default",
                              [N("x"), None, None, N("m"), N("v"), False, F(0.1), F(1e-5)], [2, 64, 3]),
        "batchnorm_legit": ({"m": torch.zeros(1), "v": torch.ones(1)},
                            "aten._native_batch_norm_legit_no_training.default",
                            [N("x"), None, None, N("m"), N("v"), F(0.1), F(1e-5)], [2, 64, 3]),
        "batchnorm_update_stats": ({"m": torch.zeros(1), "v": torch.ones(1)}, "aten.batch_norm_update_stats.default",
                                   [N("x"), N("m"), N("v"), F(0.1)], [2, 64, 3]),
        "batchnorm_fx_function": ({"m": torch.zeros(1), "v": torch.ones(1)}, "torch.native_batch_norm",
                                  [N("x"), None, None, N("m"), N("v"), False, F(0.1), F(1e-5)], [2, 64, 3]),
        "weight_norm_short_g": ({"v": torch.ones(64, 3), "gg": torch.ones(2, 1)}, "aten._weight_norm.default",
                                [N("v"), N("gg"), 0], [64, 3]),
        "lstm_short_params": ({"wi": torch.randn(12, 4), "wh": torch.randn(12, 1), "bi": torch.randn(12), "bh": torch.randn(12),
                               "h": torch.zeros(1, 2, 3)},
                              "aten.lstm.input",
                              [N("x"), L(N("h"), N("h")), L(N("wi"), N("wh"), N("bi"), N("bh")), True, 1, F(0.0), False, False, True],
                              [2, 5, 4]),
    }


VARIANTS = tuple(_table())


def write(out: Path, mode: str, variant: str) -> list[int]:
    tensors, target, args, shape = _table()[variant]
    const = {"kind": "constant", "requires_grad": False, "persistent": False}
    nodes = [{"op": "placeholder", "name": "x", "target": "x"}]
    nodes += [{"op": "get_attr", "name": n, "target": n} for n in tensors]
    nodes += [{"op": "call_function", "name": "k", "target": target, "args": args},
              {"op": "output", "name": "output", "target": "output", "args": [N("k")]}]  # fmt: skip
    infos = {n: {"dtype": str(t.dtype).split(".")[1], "shape": list(t.shape), **const} for n, t in tensors.items()}
    spec = {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": {"module": "m0"},
            "modules": {"m0": {"mode": mode, "training": False, "tensors": infos, "aliases": {}, "leaves": {},
                               "submodules": {}, "graphs": {"eval": {"nodes": nodes}}}}}  # fmt: skip
    out.mkdir(parents=True)
    (out / "spec.json").write_text(json.dumps(spec))
    save_file({f"m0.{n}": t for n, t in tensors.items()}, str(out / "weights.safetensors"))
    return shape
