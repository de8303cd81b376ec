"""Deferred export: a module fx cannot trace, with no example inputs at load time.

At load (``deferred_module_spec``) only the module tree and its tensors travel:
mode "deferred", no graphs. At the module's first forward the host starts a new
job (action "export") with the *structure* of the call (dtypes and shapes, never
data); ``export_for_call`` runs in that job: it loads the weights the first load
returned into the freshly built module, checks the tensor tree matches, makes
inputs of that structure and exports in aten mode. See docs/architecture-format.md.
"""

from __future__ import annotations

import os
from typing import Any

import torch
from torch import nn

import _export_aten
import _export_state
from _literals import DTYPES

MAX_ARGS = 64
MAX_DIMS = 16
MAX_ELEMENTS = 1 << 31
_BY_NAME = {name: dtype for dtype, name in DTYPES.items()}


class DeferredExportError(RuntimeError):
    """The call structure or the re-run module does not fit the first load."""


def deferred_module_spec(model: nn.Module) -> tuple[dict, _export_state.ModuleState, dict]:
    state = _export_state.collect_state(model)
    spec = {
        "mode": "deferred",
        "training": bool(model.training),
        "tensors": state.infos,
        "aliases": state.aliases,
        "leaves": {},
        "submodules": _export_state.submodule_flags(model, set()),
        "graphs": {},
    }
    return spec, state, {"deferred": True}


def _make_arg(desc: Any, i: int) -> Any:
    if not isinstance(desc, dict) or len(desc) != 1:
        raise DeferredExportError(f"argument {i}: malformed description")
    (kind, value), = desc.items()
    if kind == "tensor":
        dtype = _BY_NAME.get(value.get("dtype"))
        shape = value.get("shape")
        if dtype is None or not isinstance(shape, list) or len(shape) > MAX_DIMS:
            raise DeferredExportError(f"argument {i}: unsupported tensor description")
        if not all(type(s) is int and 0 <= s for s in shape):
            raise DeferredExportError(f"argument {i}: shape {shape!r} is not a list of sizes")
        n = 1
        for s in shape:
            n *= s
        if n > MAX_ELEMENTS:
            raise DeferredExportError(f"argument {i}: {n} elements is over the cap")
        if dtype.is_floating_point or dtype.is_complex:
            return torch.randn(shape, dtype=dtype)
        return torch.zeros(shape, dtype=dtype)
    if kind in ("int", "float", "bool") and type(value).__name__ == kind:
        return value
    if kind == "none" and value is None:
        return None
    raise DeferredExportError(f"argument {i}: unsupported kind {kind!r}")


def _check_tree(model: nn.Module, weights: dict[str, Any], mid: str) -> None:
    state = _export_state.collect_state(model)
    prefix = mid + "."
    want = {k[len(prefix):]: v for k, v in weights.items() if k.startswith(prefix)}
    if set(want) != set(state.tensors):
        missing = sorted(set(want) - set(state.tensors))[:5]
        extra = sorted(set(state.tensors) - set(want))[:5]
        raise DeferredExportError(
            f"the entrypoint built a different module this time (tensors only in the first load: {missing}, "
            f"only now: {extra}); does it depend on randomness or on files that changed?"
        )
    with torch.no_grad():
        for path, t in state.tensors.items():
            w = want[path]
            if tuple(w.shape) != tuple(t.shape) or w.dtype != t.dtype:
                raise DeferredExportError(
                    f"the entrypoint built a different module this time: tensor {path} is {tuple(t.shape)} {t.dtype} "
                    f"now but was {tuple(w.shape)} {w.dtype} at load"
                )
            t.copy_(w)


def export_for_call(found: dict[int, tuple[str, nn.Module]], request: dict, in_dir: str) -> tuple[dict, Any, dict]:
    """Return ``(module spec, state, info)`` of module ``request['mid']`` exported for the call structure."""
    from _safetensors_read import read_safetensors

    mid = str(request.get("mid"))
    by_mid = {m: mod for m, mod in found.values()}
    model = by_mid.get(mid)
    if model is None:
        raise DeferredExportError(f"the entrypoint no longer returns a module {mid!r}")
    args = request.get("args")
    if not isinstance(args, list) or len(args) > MAX_ARGS:
        raise DeferredExportError(f"the call structure must list at most {MAX_ARGS} arguments")
    examples = tuple(_make_arg(a, i) for i, a in enumerate(args))
    _check_tree(model, read_safetensors(os.path.join(in_dir, "weights.safetensors")), mid)
    training = bool(request.get("training"))
    modes = _export_aten.MODES if training else _export_aten.MODES[:1]
    spec, state, info = _export_aten.export_aten(model, examples, modes=modes)
    spec["training"] = training
    return spec, state, info
