"""Validating the runner's answer to a ``list`` job (hostile input like any other)."""

from __future__ import annotations

import keyword
import re
from typing import Any

from .._contract import Result
from .._errors import SpecTooLargeError, UnsafeSpecError

__all__ = ["read_listing", "MAX_ENTRYPOINTS", "MAX_DOC_CHARS"]

MAX_ENTRYPOINTS = 10_000
MAX_DOC_CHARS = 64 * 1024
_IDENT = re.compile(r"[A-Za-z][A-Za-z0-9_]{0,127}")


def read_listing(result: Result) -> list[dict[str, Any]]:
    """Return ``[{"name": str, "doc": str | None}, ...]`` sorted by name, or raise."""
    entries: Any = result.get("entrypoints")
    if not isinstance(entries, list):
        raise UnsafeSpecError("the runner's listing has no entrypoints list")
    if len(entries) > MAX_ENTRYPOINTS:
        raise SpecTooLargeError(f"the runner listed {len(entries)} entrypoints (max {MAX_ENTRYPOINTS})")
    out: dict[str, dict[str, Any]] = {}
    for entry in entries:
        if not isinstance(entry, dict) or set(entry) - {"name", "doc"}:
            raise UnsafeSpecError("a listing entry is not {name, doc}")
        name, doc = entry.get("name"), entry.get("doc")
        if not isinstance(name, str) or not _IDENT.fullmatch(name) or keyword.iskeyword(name):
            raise UnsafeSpecError("the runner listed an entrypoint whose name is not a public identifier")
        if doc is not None and (not isinstance(doc, str) or len(doc) > MAX_DOC_CHARS):
            raise UnsafeSpecError(f"the docstring of {name} is not a string of at most {MAX_DOC_CHARS} characters")
        out[name] = {"name": name, "doc": doc}
    return [out[k] for k in sorted(out)]
