"""The closed set of tagged Literals (docs/architecture-format.md, *Literals*).

A Literal is decoded into a plain Python value, a torch enum value from a fixed
table, or a :class:`NodeRef`. Nothing is looked up by name outside these tables.
"""

from __future__ import annotations

import math
import re
from typing import Any, Callable

from .._errors import InvalidNameError, SpecTooLargeError, UnsafeSpecError
from .._records import record
from ._limits import ChannelLimits
from ._names import show

__all__ = ["NodeRef", "LiteralContext", "decode_literal", "DTYPE_NAMES", "dtype_table", "INT_LIMIT"]

INT_LIMIT = 2**63
_FLOAT_RE = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf|nan")
_CONTROL_RE = re.compile(r"[\x00-\x1f\x7f-\x9f]")
_DEVICE_RE = re.compile(r"(?:cpu|meta|cuda(?::[0-9]{1,3})?)")
DTYPE_NAMES = (
    "float64", "float32", "float16", "bfloat16", "int64", "int32", "int16", "int8", "uint8", "bool",
    "complex64", "complex128",
)  # fmt: skip
_MEMORY_FORMATS = ("contiguous_format", "channels_last", "preserve_format", "channels_last_3d")


@record(frozen=True)
class NodeRef:
    """A reference to an earlier node of the same graph."""

    name: str


def dtype_table() -> dict[str, Any]:
    import torch

    return {name: getattr(torch, name) for name in DTYPE_NAMES}  # fixed names, not spec strings


@record
class LiteralContext:
    """Where a literal is being parsed, and what it may refer to."""

    limits: ChannelLimits
    where: str
    # Called with a referenced node name; raises if the name is not an earlier node.
    # None means node references are not allowed here.
    resolve_ref: Callable[[str], None] | None = None
    # The device that device literals are re-pointed to (None: keep as written).
    device: Any = None
    allow_device: bool = True


def _float(text: object, ctx: LiteralContext) -> float:
    if not isinstance(text, str) or len(text) > 64 or not _FLOAT_RE.fullmatch(text):
        raise UnsafeSpecError(f"{ctx.where}: {show(text)} is not a float literal", hint="floats are written as decimal strings, e.g. {\"float\": \"1e-05\"}")
    return float(text)


def decode_literal(obj: Any, ctx: LiteralContext, depth: int = 0) -> Any:
    limits = ctx.limits
    if depth > limits.literal_depth:
        raise SpecTooLargeError(f"{ctx.where}: literal nested deeper than {limits.literal_depth}")
    if obj is None or isinstance(obj, bool):
        return obj
    if isinstance(obj, int):
        if not -INT_LIMIT < obj < INT_LIMIT:
            raise UnsafeSpecError(f"{ctx.where}: integer literal out of the 64-bit range")
        return obj
    if isinstance(obj, float):  # the format writes floats as {"float": "..."}
        raise UnsafeSpecError(f"{ctx.where}: bare JSON number {show(obj)} is not a literal", hint="write floats as {\"float\": \"<repr>\"}")
    if isinstance(obj, str):
        if len(obj) > limits.string_chars:
            raise SpecTooLargeError(f"{ctx.where}: string literal longer than {limits.string_chars} characters")
        return obj
    if isinstance(obj, list):
        raise UnsafeSpecError(f"{ctx.where}: bare JSON array is not a literal", hint="write {\"list\": [...]} or {\"tuple\": [...]}")
    if not isinstance(obj, dict) or len(obj) != 1:
        raise UnsafeSpecError(f"{ctx.where}: a literal object must have exactly one tag, got {show(sorted(obj) if isinstance(obj, dict) else obj)}")
    (tag, val), = obj.items()
    if tag == "node":
        if ctx.resolve_ref is None:
            raise UnsafeSpecError(f"{ctx.where}: node references are not allowed here")
        if not isinstance(val, str):
            raise InvalidNameError(f"{ctx.where}: node reference must be a string")
        ctx.resolve_ref(val)
        return NodeRef(val)
    if tag in ("tuple", "list"):
        if not isinstance(val, list):
            raise UnsafeSpecError(f"{ctx.where}: {tag} literal must hold a JSON array")
        if len(val) > limits.literal_items:
            raise SpecTooLargeError(f"{ctx.where}: {tag} literal has {len(val)} items")
        items = [decode_literal(v, ctx, depth + 1) for v in val]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict":
        if not isinstance(val, dict):
            raise UnsafeSpecError(f"{ctx.where}: dict literal must hold a JSON object")
        if len(val) > limits.literal_items:
            raise SpecTooLargeError(f"{ctx.where}: dict literal has {len(val)} items")
        out = {}
        for k, v in val.items():
            if len(k) > 256 or _CONTROL_RE.search(k):
                raise InvalidNameError(f"{ctx.where}: dict key {show(k)} is longer than 256 characters or holds control characters")
            out[k] = decode_literal(v, ctx, depth + 1)
        return out
    if tag == "float":
        return _float(val, ctx)
    if tag == "complex":
        if not isinstance(val, list) or len(val) != 2:
            raise UnsafeSpecError(f"{ctx.where}: complex literal must be [re, im]")
        value = complex(_float(val[0], ctx), _float(val[1], ctx))
        if not (math.isfinite(value.real) and math.isfinite(value.imag)):
            # repr() prints such a value as text that is not a literal ("infj", "(nan+nanj)"),
            # which the generated forward would read as a name.
            raise UnsafeSpecError(f"{ctx.where}: complex literal {show(val)} has a non-finite part", hint="complex literals must be finite")
        return value
    if tag == "slice":
        if not isinstance(val, list) or len(val) != 3:
            raise UnsafeSpecError(f"{ctx.where}: slice literal must be [start, stop, step]")
        parts = [decode_literal(v, ctx, depth + 1) for v in val]
        for p in parts:
            if not (p is None or isinstance(p, (int, NodeRef))):
                raise UnsafeSpecError(f"{ctx.where}: slice bounds must be ints, None or node references")
        return slice(*parts)
    if tag == "ellipsis":
        if val is not True:
            raise UnsafeSpecError(f"{ctx.where}: ellipsis literal must be true")
        return Ellipsis
    if tag == "dtype":
        if val not in DTYPE_NAMES:
            raise UnsafeSpecError(f"{ctx.where}: unknown dtype {show(val)}")
        return dtype_table()[val]
    if tag == "device":
        if not ctx.allow_device:
            raise UnsafeSpecError(f"{ctx.where}: device literals are not allowed here", hint="leaf modules are always built on the host's device")
        if not isinstance(val, str) or not _DEVICE_RE.fullmatch(val):
            raise UnsafeSpecError(f"{ctx.where}: unknown device {show(val)}", hint="devices are cpu, cuda, cuda:N or meta")
        import torch

        return ctx.device if ctx.device is not None else torch.device(val)
    if tag == "layout":
        if val != "strided":
            raise UnsafeSpecError(f"{ctx.where}: unknown layout {show(val)}")
        import torch

        return torch.strided
    if tag == "memory_format":
        if val not in _MEMORY_FORMATS:
            raise UnsafeSpecError(f"{ctx.where}: unknown memory format {show(val)}")
        import torch

        return {
            "contiguous_format": torch.contiguous_format,
            "channels_last": torch.channels_last,
            "preserve_format": torch.preserve_format,
            "channels_last_3d": torch.channels_last_3d,
        }[val]
    raise UnsafeSpecError(f"{ctx.where}: unknown literal tag {show(tag)}", hint="see docs/architecture-format.md, Literals")
