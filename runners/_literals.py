"""Encode Python values as safehub-arch Literals (docs/architecture-format.md).

Runs inside the sandbox (stdlib + torch only). The encoder is the producer's half
of the contract: anything it cannot express exactly raises ``LiteralError``, so
the caller can fall back (leaf -> trace through, fx -> aten) or fail clearly.
"""

from __future__ import annotations

import keyword
import math
import re
from typing import Any, Callable

import torch

from _contract import FACTORIES, GETATTR_ATTRS, METHOD_DENY

MAX_DEPTH = 32
MAX_STR = 65_536
INT_LIMIT = 2**63

IDENT_RE = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ATOM_RE = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")

DTYPES: dict[torch.dtype, str] = {
    torch.float64: "float64",
    torch.float32: "float32",
    torch.float16: "float16",
    torch.bfloat16: "bfloat16",
    torch.int64: "int64",
    torch.int32: "int32",
    torch.int16: "int16",
    torch.int8: "int8",
    torch.uint8: "uint8",
    torch.bool: "bool",
    torch.complex64: "complex64",
    torch.complex128: "complex128",
}
LAYOUTS = {torch.strided: "strided"}
MEMORY_FORMATS = {
    torch.contiguous_format: "contiguous_format",
    torch.channels_last: "channels_last",
    torch.preserve_format: "preserve_format",
    torch.channels_last_3d: "channels_last_3d",
}
DEVICES = {"cpu", "cuda", "meta"}


class LiteralError(TypeError):
    """A value has no exact Literal encoding."""


def is_ident(name: object) -> bool:
    return (
        isinstance(name, str)
        and len(name) <= 128
        and bool(IDENT_RE.match(name))
        and not keyword.iskeyword(name)
        and not (name.startswith("__") and name.endswith("__"))
    )


def is_path(path: object) -> bool:
    if not isinstance(path, str) or not path or len(path) > 1024:
        return False
    atoms = path.split(".")
    if len(atoms) > 64:
        return False
    for atom in atoms:
        if len(atom) > 128 or not ATOM_RE.match(atom) or keyword.iskeyword(atom):
            return False
        if atom.startswith("__") and atom.endswith("__"):
            return False
    return True


def encode_float(x: float) -> dict:
    if math.isnan(x):
        return {"float": "nan"}
    if math.isinf(x):
        return {"float": "inf" if x > 0 else "-inf"}
    return {"float": repr(float(x))}


def encode_device(dev: torch.device) -> dict:
    if dev.type not in DEVICES:
        raise LiteralError(f"device {dev} has no literal (only cpu, cuda, meta)")
    if dev.type == "cuda" and dev.index is not None:
        return {"device": f"cuda:{int(dev.index)}"}
    return {"device": dev.type}


def encode(value: Any, node_ref: Callable[[Any], str | None] | None = None, _depth: int = 0) -> Any:
    """Encode ``value``. ``node_ref(v)`` returns a node name when ``v`` is a graph
    node (fx.Node), else None; without it node references are refused."""
    if _depth > MAX_DEPTH:
        raise LiteralError(f"literal nested deeper than {MAX_DEPTH}")
    if node_ref is not None:
        ref = node_ref(value)
        if ref is not None:
            return {"node": ref}
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, int):
        if isinstance(value, torch.SymInt) or not -INT_LIMIT < int(value) < INT_LIMIT:
            raise LiteralError(f"integer {value!r} out of range")
        return int(value)
    if isinstance(value, float):
        return encode_float(value)
    if isinstance(value, complex):
        return {"complex": [encode_float(value.real)["float"], encode_float(value.imag)["float"]]}
    if isinstance(value, str):
        if len(value) > MAX_STR:
            raise LiteralError("string literal too long")
        return value
    if isinstance(value, torch.dtype):
        if value not in DTYPES:
            raise LiteralError(f"dtype {value} has no literal")
        return {"dtype": DTYPES[value]}
    if isinstance(value, torch.device):
        return encode_device(value)
    if isinstance(value, torch.layout):
        if value not in LAYOUTS:
            raise LiteralError(f"layout {value} has no literal")
        return {"layout": LAYOUTS[value]}
    if isinstance(value, torch.memory_format):
        if value not in MEMORY_FORMATS:
            raise LiteralError(f"memory format {value} has no literal")
        return {"memory_format": MEMORY_FORMATS[value]}
    if value is Ellipsis:
        return {"ellipsis": True}
    if isinstance(value, slice):
        return {"slice": [encode(p, node_ref, _depth + 1) for p in (value.start, value.stop, value.step)]}
    if isinstance(value, list):
        return {"list": [encode(v, node_ref, _depth + 1) for v in value]}
    if isinstance(value, tuple):  # includes torch.Size and namedtuples (field names dropped)
        return {"tuple": [encode(v, node_ref, _depth + 1) for v in value]}
    if isinstance(value, dict):
        out = {}
        for k, v in value.items():
            if not isinstance(k, str):
                raise LiteralError(f"dict key {k!r} is not a string")
            out[k] = encode(v, node_ref, _depth + 1)
        return {"dict": out}
    raise LiteralError(f"a value of type {type(value).__module__}.{type(value).__qualname__} has no literal encoding")


# ---------------------------------------------------------------------------
# Canonical names for call_function targets.

_NAME_SOURCES = (
    "torch",
    "torch.nn.functional",
    "torch.linalg",
    "torch.fft",
    "torch.special",
    "operator",
    "math",
)
_NAME_TABLE: dict[int, tuple[str, Any]] | None = None


def _name_table() -> dict[int, tuple[str, Any]]:
    """id(function) -> canonical "module.name"; the first module listed wins, and
    the object is kept alive in the table so ids stay valid."""
    global _NAME_TABLE
    if _NAME_TABLE is None:
        import builtins
        import importlib

        table: dict[int, tuple[str, Any]] = {}
        for modname in _NAME_SOURCES:
            mod = importlib.import_module(modname)
            for attr, obj in sorted(vars(mod).items()):
                if attr.startswith("__") or not callable(obj) or isinstance(obj, type):
                    continue
                if isinstance(obj, type(torch)):
                    continue
                table.setdefault(id(obj), (f"{modname}.{attr}", obj))
        table.setdefault(id(builtins.getattr), ("builtins.getattr", builtins.getattr))
        _NAME_TABLE = table
    return _NAME_TABLE


def canonical_name(fn: Any) -> str | None:
    """The canonical dotted name of ``fn``, or None when it has none."""
    if isinstance(fn, torch._ops.OpOverload):
        ns = fn.namespace
        if ns != "aten":
            return None
        packet = fn._schema.name.split("::", 1)[-1]
        overload = fn._overloadname or "default"
        return f"aten.{packet}.{overload}"
    hit = _name_table().get(id(fn))
    if hit is not None and hit[1] is fn:
        return hit[0]
    return None


# ---------------------------------------------------------------------------
# What the host will accept (mirrors docs/architecture-format.md). Checked in the
# sandbox so that an fx graph the host would refuse falls back to aten mode here
# instead of failing at load time.

# FACTORIES, GETATTR_ATTRS and METHOD_DENY are the host's own lists (_contract.py
# is the very file the host imports), so the two ends cannot drift apart.

# Kernels the host never rebuilds from an fx graph: backward kernels (any name with
# "backward"), kernels that trust the sizes of their statistics, and torch.lstm /
# torch._weight_norm (aten mode runs them behind checked wrappers). A copy of
# safehub/_channel/_allowlist.py (_KERNEL_DENY, _FX_FUNCTION_DENY), which is the source
# of truth; tests/test_kernel_allowlist.py keeps the two equal.
KERNEL_DENY = frozenset(
    {"native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
     "_native_batch_norm_legit_functional", "batch_norm_update_stats", "batch_norm_elemt", "batch_norm_stats",
     "batch_norm_gather_stats", "batch_norm_gather_stats_with_counts", "batch_norm_backward_elemt",
     "batch_norm_backward_reduce", "miopen_batch_norm", "cudnn_batch_norm", "embedding_renorm_",
     "_embedding_bag_forward_only", "_embedding_bag", "lstm", "_weight_norm", "grid_sampler", "grid_sampler_2d",
     "grid_sampler_3d", "_grid_sampler_2d_cpu_fallback", "cudnn_grid_sampler"}
)  # fmt: skip
_OVERRIDABLE: set[int] | None = None


def _overridable_ids() -> set[int]:
    global _OVERRIDABLE
    if _OVERRIDABLE is None:
        ids: set[int] = set()
        for key, fns in torch.overrides.get_overridable_functions().items():
            if isinstance(key, type(torch)):
                ids.update(id(f) for f in fns)
        for name in FACTORIES:
            ids.add(id(getattr(torch, name)))
        _OVERRIDABLE = ids
    return _OVERRIDABLE


def host_refuses_function(name: str, fn: Any, args: tuple) -> str | None:
    """Why the host's allowlist would refuse this call_function, or None."""
    if name.startswith(("torch.sym_", "torch._sym_")) or name == "torch._assert":
        return None
    if name.startswith("torch."):
        if id(fn) not in _overridable_ids():
            return f"{name} is not on the host's list of torch functions"
        short = name.rsplit(".", 1)[-1]
        if "backward" in short or short in KERNEL_DENY:
            return f"{name} is a kernel the host refuses in fx graphs (it trusts its arguments' sizes or index values)"
        return None
    if name == "builtins.getattr":
        attr = args[1] if len(args) > 1 else None
        if attr not in GETATTR_ATTRS:
            return f"getattr(..., {attr!r}) reads an attribute the host does not allow"
    return None


def host_refuses_method(name: str) -> str | None:
    if name in METHOD_DENY:
        return f"Tensor.{name}() is on the host's deny list (it leaves the graph or touches memory)"
    return None
