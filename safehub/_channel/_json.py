"""Strict JSON for everything the sandbox writes, and small shape helpers."""

from __future__ import annotations

import json
from typing import Any

from .._errors import SpecTooLargeError, UnsafeSpecError
from ._names import show

__all__ = ["load_json", "obj", "boolean", "dict_capped"]


# --- JSON --------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in safehub JSON")


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:80]!r}")
        out[k] = v
    return out


def load_json(raw: bytes, what: str) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity, no duplicate keys, bounded nesting."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeSpecError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise SpecTooLargeError(f"{what} is nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, duplicates, huge ints
        raise UnsafeSpecError(f"{what} is not valid safehub JSON: {show(str(exc), 200)}") from None


def obj(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsafeSpecError(f"{where} must be a JSON object")
    missing = [k for k in required if k not in value]
    if missing:
        raise UnsafeSpecError(f"{where} lacks {', '.join(missing)}")
    extra = [k for k in value if k not in required and k not in optional]
    if extra:
        raise UnsafeSpecError(f"{where} has unknown keys {show(sorted(extra)[:5])}", hint="the producer and host disagree on the format version")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UnsafeSpecError(f"{where} must be true or false")
    return value


def dict_capped(value: Any, where: str, cap: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsafeSpecError(f"{where} must be a JSON object")
    if len(value) > cap:
        raise SpecTooLargeError(f"{where} has {len(value)} entries, over the cap of {cap}")
    return value
