"""Collect a module's tensors, aliases and submodule flags for the spec."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn

import _literals


class StateExportError(RuntimeError):
    """A tensor cannot travel in the v1 format."""


@dataclass
class ModuleState:
    tensors: dict[str, torch.Tensor] = field(default_factory=dict)
    infos: dict[str, dict] = field(default_factory=dict)
    aliases: dict[str, str] = field(default_factory=dict)


def same_tensor(a: Any, b: Any) -> bool:
    """Both tensors, with equal shape, dtype and values."""
    return (
        isinstance(a, torch.Tensor)
        and isinstance(b, torch.Tensor)
        and a.shape == b.shape
        and a.dtype == b.dtype
        and bool(torch.equal(a, b))
    )


def _check_tensor(path: str, t: torch.Tensor) -> None:
    if not _literals.is_path(path):
        raise StateExportError(f"tensor path {path!r} is not a valid path (atoms must match [A-Za-z0-9_][A-Za-z0-9_-]*)")
    if t.dtype not in _literals.DTYPES:
        raise StateExportError(f"tensor {path} has dtype {t.dtype}, which the format does not carry")
    if t.layout != torch.strided:
        raise StateExportError(f"tensor {path} is {t.layout} (only dense tensors are carried)")
    if t.is_meta:
        raise StateExportError(f"tensor {path} is on the meta device (the model has no weights to return)")
    if t.dim() > 16:
        raise StateExportError(f"tensor {path} has {t.dim()} dims (limit 16)")


def _info(t: torch.Tensor, kind: str, requires_grad: bool, persistent: bool) -> dict:
    return {
        "dtype": _literals.DTYPES[t.dtype],
        "shape": [int(s) for s in t.shape],
        "kind": kind,
        "requires_grad": bool(requires_grad) if kind == "parameter" else False,
        "persistent": bool(persistent) if kind == "buffer" else False,
    }


def _non_persistent(model: nn.Module) -> set[str]:
    out = set()
    for mpath, mod in model.named_modules(remove_duplicate=False):
        for b in getattr(mod, "_non_persistent_buffers_set", ()):
            out.add(f"{mpath}.{b}" if mpath else b)
    return out


def collect_state(
    model: nn.Module,
    *,
    requires_grad_of: dict[str, bool] | None = None,
    persistent_of: dict[str, bool] | None = None,
) -> ModuleState:
    """Parameters and buffers of ``model``; tied tensors become aliases of the
    first path that holds them (that is the path fx/export use for get_attr)."""
    state = ModuleState()
    by_id: dict[int, str] = {}
    nonpers = _non_persistent(model)

    def add(path: str, t: torch.Tensor, kind: str, rg: bool, pers: bool) -> None:
        first = by_id.get(id(t))
        if first is not None:
            state.aliases[path] = first
            return
        _check_tensor(path, t)
        by_id[id(t)] = path
        state.tensors[path] = t
        state.infos[path] = _info(t, kind, rg, pers)

    for path, p in model.named_parameters(remove_duplicate=False):
        rg = p.requires_grad if requires_grad_of is None else requires_grad_of.get(path, p.requires_grad)
        add(path, p, "parameter", rg, True)
    for path, b in model.named_buffers(remove_duplicate=False):
        pers = path not in nonpers if persistent_of is None else persistent_of.get(path, path not in nonpers)
        add(path, b, "buffer", False, pers)
    return state


def add_constant(state: ModuleState, path: str, value: Any) -> None:
    if path in state.tensors or path in state.aliases:
        return
    if not isinstance(value, torch.Tensor):
        raise StateExportError(f"graph reads attribute {path!r}, which is a {type(value).__name__}, not a tensor")
    if isinstance(value, nn.Parameter):
        value = value.data
    _check_tensor(path, value)
    state.tensors[path] = value
    state.infos[path] = _info(value, "constant", False, False)


def resolve_attr(root: nn.Module, path: str) -> Any:
    obj: Any = root
    for atom in path.split("."):
        obj = getattr(obj, atom)
    return obj


def submodule_flags(model: nn.Module, leaves: set[str]) -> dict[str, dict]:
    """Training flags of intermediate modules (not the root, not inside leaves)."""
    out: dict[str, dict] = {}
    for path, mod in model.named_modules():
        if not path or path in leaves:
            continue
        if any(path.startswith(leaf + ".") for leaf in leaves):
            continue
        if not _literals.is_path(path):
            raise StateExportError(f"submodule path {path!r} is not a valid path")
        out[path] = {"training": bool(mod.training)}
    return out


class training_mode:
    """Put every submodule in one mode; restore each module's own flag after."""

    def __init__(self, model: nn.Module, training: bool) -> None:
        self.model = model
        self.training = training
        self.saved: list[tuple[nn.Module, bool]] = []

    def __enter__(self) -> None:
        self.saved = [(m, m.training) for m in self.model.modules()]
        self.model.train(self.training)

    def __exit__(self, *exc: object) -> None:
        for m, flag in self.saved:
            m.training = flag
