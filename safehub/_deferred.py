"""Deferred export: a module whose graph is exported at its first forward.

When fx cannot trace a model and no example inputs were given, the load job
returns only the module tree and its tensors (mode "deferred"). ``load`` returns
a :class:`DeferredModule` at once: ``state_dict()``, ``parameters()``, ``.to()``,
``.train()``/``.eval()`` and ``named_modules()`` work before any forward.

At a forward whose signature has no graph yet, the host sends the *structure* of
the call (dtypes, shapes, scalar values; never tensor data) to a new sandboxed
job that runs the same entrypoint again (same repo folder, env, pickled args),
loads the weights the first load returned, checks the tensor tree matches and
exports in aten mode (runners/_export_deferred.py). What comes back is validated
and built like any load (``rebuild_from_output``), and runs on this module's own
parameters and buffers. Nothing here imports or runs repo code.
"""

from __future__ import annotations

import copy
import logging
import math
import threading
import time
from pathlib import Path
from typing import Any, Protocol

import torch
from torch import nn

from ._errors import ExportError, TensorMismatchError

__all__ = ["DeferredModule", "Exporter", "MAX_GRAPHS", "call_signature", "deferred_modules"]

logger = logging.getLogger("safehub")

MAX_GRAPHS = 8  # per module, like torch.compile's recompile limit
MAX_ARGS = 64
_SCALARS = (bool, int, float)


class Exporter(Protocol):
    """Runs one export job (safehub/_deferred_jobs.py); holds no repo code or objects."""

    @property
    def entrypoint(self) -> str: ...

    def export(self, mid: str, training: bool, structure: list[dict], device: torch.device) -> tuple[Any, dict]: ...


def call_signature(args: tuple, kwargs: dict) -> tuple[tuple, list[dict]]:
    """``(cache key, call structure for the job)``; only flat positional tensors
    and plain scalars are described (aten mode's input rule)."""
    key, structure, _ = _signature(args, kwargs)
    return key, structure


def _signature(args: tuple, kwargs: dict) -> tuple[tuple, list[dict], tuple]:
    """Also the arguments to call the graph with (numpy-style scalars as Python values)."""
    if kwargs:
        raise ExportError(
            f"this model's graph is exported at its first call, which takes positional arguments only "
            f"(got keyword arguments {sorted(kwargs)[:5]})",
            hint="call model(x, ...) positionally, or load with example_inputs=(...) to export at load time",
        )
    if len(args) > MAX_ARGS:
        raise ExportError(f"the call has {len(args)} arguments; deferred export takes at most {MAX_ARGS}")
    from ._contract import CALL_DTYPES as DTYPE_NAMES

    key: list[Any] = []
    structure: list[dict] = []
    plain: list[Any] = []
    for i, a in enumerate(args):
        if isinstance(a, torch.Tensor):
            dtype = str(a.dtype).removeprefix("torch.")
            if dtype not in DTYPE_NAMES or a.layout != torch.strided:
                raise ExportError(f"argument {i} is a {a.dtype} {a.layout} tensor, which deferred export does not carry")
            shape = [int(s) for s in a.shape]
            key.append(("tensor", dtype, tuple(shape)))
            structure.append({"tensor": {"dtype": dtype, "shape": shape}})
            plain.append(a)
        elif a is None or type(a) in _SCALARS or _scalar_like(a) is not None:
            if a is not None and type(a) not in _SCALARS:
                a = _scalar_like(a)  # numpy-style scalars: their Python value
            if type(a) is float and not math.isfinite(a):
                raise ExportError(f"argument {i} is {a}; deferred export carries finite floats only")
            kind = "none" if a is None else type(a).__name__
            key.append((kind, a))
            structure.append({kind: a})
            plain.append(a)
        else:
            raise ExportError(
                f"argument {i} is a {type(a).__name__}; deferred export carries tensors, int, float, bool and None",
                hint="pass tensors as separate positional arguments, or load with example_inputs=(...)",
            )
    return tuple(key), structure, tuple(plain)


def _scalar_like(a: Any) -> int | float | None:
    """The Python value of a scalar of another type (numpy.float64 subclasses
    float; numpy.int64 has __index__), or None. Never a tensor or a bool-like."""
    import operator

    if isinstance(a, (torch.Tensor, bool, str, bytes)):
        return None
    if isinstance(a, float):
        return float(a)
    if isinstance(a, int):
        return int(a)
    if hasattr(type(a), "__index__"):
        try:
            return operator.index(a)
        except TypeError:
            return None
    return None


def _general(sig: tuple) -> tuple:
    """A signature without tensor sizes: sizes are left to each graph's own guards."""
    return tuple(("tensor", k[1], len(k[2])) if k[0] == "tensor" else k for k in sig)


def _is_guard_miss(exc: BaseException) -> bool:
    """The input guards runners/_export_aten.py adds before any other node."""
    text = str(exc)
    return isinstance(exc, RuntimeError) and " dim " in text and "must be" in text


class _Graph:
    def __init__(self, gm: nn.Module, owner: "DeferredModule", key: tuple, device: torch.device) -> None:
        self.gm = gm
        self.key = key
        self.device = device
        self.bindings = _bindings(owner, gm)

    def bind(self, owner: "DeferredModule") -> None:
        for dst, src, name in self.bindings:
            dst[name] = src[name]
        self.gm.training = owner.training


def _bindings(owner: nn.Module, gm: nn.Module) -> list[tuple[dict, dict, str]]:
    """(gm dict, owner dict, name) for every parameter and buffer: the graph runs
    on the owner's current tensors (after .to(), training, load_state_dict)."""
    out = []
    for mpath, mod in owner.named_modules(remove_duplicate=False):
        try:
            target = gm.get_submodule(mpath) if mpath else gm
        except AttributeError:
            raise TensorMismatchError(f"the exported graph has no submodule {mpath!r}") from None
        for kind in ("_parameters", "_buffers"):
            src, dst = getattr(mod, kind), getattr(target, kind)
            for name, t in src.items():
                got = dst.get(name)
                if got is None or t is None or got.shape != t.shape or got.dtype != t.dtype:
                    raise TensorMismatchError(
                        f"the exported graph's tensor {mpath + '.' if mpath else ''}{name} does not match the loaded one"
                    )
                out.append((dst, src, name))
    return out


class DeferredModule(nn.Module):
    """The loaded module tree; its graph is exported per call signature."""

    # Plain attributes, set with object.__setattr__ (never submodules or tensors).
    _safehub_job: Exporter | None
    _safehub_mid: str
    _safehub_graphs: list[_Graph]
    _safehub_exports: list[dict]
    _safehub_lock: threading.Lock
    _safehub_keep: Any

    def __init__(self, root: nn.Module, mid: str = "m0") -> None:
        super().__init__()
        for name, child in root._modules.items():
            self.add_module(name, child)
        for name, p in root._parameters.items():
            self.register_parameter(name, p)
        nonpers = root._non_persistent_buffers_set
        for name, b in root._buffers.items():
            self.register_buffer(name, b, persistent=name not in nonpers)
        self.training = root.training
        # Plain attributes (object.__setattr__): not submodules, not in state_dict.
        object.__setattr__(self, "_safehub_job", None)
        object.__setattr__(self, "_safehub_mid", mid)
        object.__setattr__(self, "_safehub_graphs", [])
        object.__setattr__(self, "_safehub_exports", [])
        object.__setattr__(self, "_safehub_lock", threading.Lock())
        object.__setattr__(self, "_safehub_keep", None)

    def attach(self, job: Exporter, mid: str, keep: Any, exports: list) -> None:
        object.__setattr__(self, "_safehub_job", job)
        object.__setattr__(self, "_safehub_mid", mid)
        object.__setattr__(self, "_safehub_keep", keep)
        object.__setattr__(self, "_safehub_exports", exports)

    @property
    def safehub_graphs(self) -> list[dict]:
        """One entry per exported graph: signature, training, device, seconds."""
        return [dict(e) for e in self._safehub_exports]

    def _device(self) -> torch.device:
        for p in self.parameters():
            return p.device
        for b in self.buffers():
            return b.device
        return torch.device("cpu")

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        sig, structure, args = _signature(args, kwargs)
        device = self._device()
        key = (bool(self.training), str(device), sig)
        with self._safehub_lock:
            tried = [g for g in self._safehub_graphs
                     if g.key[:2] == key[:2] and _general(g.key[2]) == _general(sig) and g.device == device]
        for g in tried:
            with self._safehub_lock:
                g.bind(self)
            try:
                return g.gm(*args)
            except RuntimeError as exc:
                if not _is_guard_miss(exc):
                    raise
        with self._safehub_lock:
            # Another thread may have exported this signature meanwhile.
            for g in self._safehub_graphs:
                if g.key == key:
                    g.bind(self)
                    break
            else:
                g = self._export(key, structure, device)
        return g.gm(*args)

    def _export(self, key: tuple, structure: list[dict], device: torch.device) -> _Graph:
        job = self._safehub_job
        if job is None:
            raise ExportError(
                "this module's graph was never exported and it has no load to export from",
                hint="load it again with safehub.load (copies of a deferred module cannot export)",
            )
        if len(self._safehub_graphs) >= MAX_GRAPHS:
            raise ExportError(
                f"this model was exported for {MAX_GRAPHS} call signatures already; safehub keeps at most {MAX_GRAPHS}",
                hint="call it with fewer distinct input shapes/dtypes, or load with example_inputs=(...) of the batch you use",
            )
        t0 = time.perf_counter()
        gm, summary = job.export(self._safehub_mid, bool(self.training), structure, device)
        graph = _Graph(gm, self, key, device)
        graph.bind(self)
        self._safehub_graphs.append(graph)
        seconds = round(time.perf_counter() - t0, 3)
        self._safehub_exports.append({
            "signature": [[k[0], k[1], list(k[2])] if k[0] == "tensor" else list(k) for k in key[2]],
            "training": key[0],
            "device": key[1],
            "seconds": seconds,
            "dynamic_batch": summary.get("dynamic_batch"),
            "attempts": summary.get("attempts", []),
            "cached": bool(summary.get("cached")),  # from the artifact cache: no sandbox ran
        })
        logger.info("exported a %s graph for %s in %.1f s", "train" if key[0] else "eval", job.entrypoint, seconds)
        return graph

    def __deepcopy__(self, memo: dict) -> "DeferredModule":
        # Tensors and tree copy; graphs are rebuilt on demand from the same load.
        root = nn.Module()
        for name, child in self._modules.items():
            root.add_module(name, copy.deepcopy(child, memo))
        for name, p in self._parameters.items():
            root.register_parameter(name, copy.deepcopy(p, memo))
        for name, b in self._buffers.items():
            root.register_buffer(name, copy.deepcopy(b, memo), persistent=name not in self._non_persistent_buffers_set)
        root.training = self.training
        new = DeferredModule(root, self._safehub_mid)
        if self._safehub_job is not None:
            new.attach(self._safehub_job, self._safehub_mid, self._safehub_keep, [])
        info = self.__dict__.get("safehub_info")
        if info is not None:
            object.__setattr__(new, "safehub_info", info)
        return new


def deferred_modules(obj: Any) -> list[DeferredModule]:
    out: list[DeferredModule] = []

    def visit(v: Any) -> None:
        if isinstance(v, DeferredModule):
            out.append(v)
        elif isinstance(v, (tuple, list)):
            for x in v:
                visit(x)
        elif isinstance(v, dict):
            for x in v.values():
                visit(x)
        elif isinstance(v, SafehubNamespace):
            for x in v.safehub_attrs().values():
                visit(x)

    from ._namespace import SafehubNamespace

    visit(obj)
    return out
