"""Clean the export fields of the runner's summary that are richer than ints.

The summary comes from the sandbox: only known keys of known types survive,
strings are escaped and capped, lists are capped.
"""

from __future__ import annotations

from typing import Any

from ._errors import escape_untrusted

MAX_ATTEMPTS = 12
MAX_ERROR_CHARS = 400


def clean_attempts(raw: Any) -> list[dict[str, Any]]:
    """``[{"graph": "eval"|"train", "dynamic": bool, "strict": bool, "error": str|None}]``."""
    out: list[dict[str, Any]] = []
    if not isinstance(raw, list):
        return out
    for item in raw[:MAX_ATTEMPTS]:
        if not isinstance(item, dict):
            continue
        clean: dict[str, Any] = {}
        if item.get("graph") in ("eval", "train"):
            clean["graph"] = item["graph"]
        for key in ("dynamic", "strict"):
            if isinstance(item.get(key), bool):
                clean[key] = item[key]
        error = item.get("error")
        clean["error"] = escape_untrusted(error, limit=MAX_ERROR_CHARS) if isinstance(error, str) else None
        out.append(clean)
    return out


def clean_text(raw: Any, limit: int = 500) -> str | None:
    return escape_untrusted(raw, limit=limit) if isinstance(raw, str) else None
