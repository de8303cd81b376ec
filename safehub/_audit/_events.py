"""Reading the runner's audit telemetry (out/audit.jsonl) as the hostile input it is.

Repo code runs in the interpreter that writes the file, so anything may be in it:
huge lines, floods, invalid JSON, kinds or fields the contract does not name,
control and bidi characters. Every line is parsed on its own, and only the kinds
and fields of ``_contract.AUDIT_FIELDS`` survive, strings cut to MAX_AUDIT_STRING,
at most MAX_AUDIT_EVENTS events. What was skipped is counted, never shown raw.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

from .._contract import (
    AUDIT_FIELDS,
    AUDIT_FILE,
    AUDIT_KINDS,
    AUDIT_PHASES,
    MAX_AUDIT_EVENTS,
    MAX_AUDIT_FILE_BYTES,
    MAX_AUDIT_LINE_BYTES,
    MAX_AUDIT_STRING,
)
from .._errors import UnsafeSpecError

__all__ = ["read_audit_events", "empty_telemetry"]

_INT_FIELDS = frozenset({"count", "total"})
_MAX_INT = 1 << 53
_EVENT_KINDS = frozenset(AUDIT_KINDS) - {"summary", "dropped"}


def empty_telemetry() -> dict[str, Any]:
    return {"events": [], "counts": {}, "total": 0, "dropped": 0, "complete": False, "skipped_lines": 0,
            "truncated": False}


def _string(value: Any) -> str | None:
    if not isinstance(value, str):
        return None
    if len(value) > MAX_AUDIT_STRING:
        value = value[: MAX_AUDIT_STRING - 3] + "..."
    return value


def _event(raw: Any) -> dict[str, Any] | None:
    """One validated event, or None."""
    if not isinstance(raw, dict):
        return None
    kind = raw.get("kind")
    if kind not in AUDIT_FIELDS:
        return None
    phase = raw.get("phase")
    event: dict[str, Any] = {"kind": kind, "phase": phase if phase in AUDIT_PHASES else "unknown"}
    for name in AUDIT_FIELDS[kind]:
        value = raw.get(name)
        if name in _INT_FIELDS:
            if type(value) is not int or not 0 <= value < _MAX_INT:
                return None
            event[name] = value
        elif name == "counts":
            if not isinstance(value, dict):
                return None
            event[name] = {k: v for k, v in value.items()
                           if k in _EVENT_KINDS and type(v) is int and 0 <= v < _MAX_INT}
        else:
            text = _string(value)
            if text is None:
                return None
            event[name] = text
    return event


def read_audit_events(out_dir: Path) -> dict[str, Any]:
    """The telemetry of one run: ``events`` (validated, first occurrences, in order),
    ``counts`` per kind and ``total`` (from the runner's closing line: absent when the
    run was killed), ``dropped`` (events past the runner's cap), ``complete`` (the
    closing line was seen), ``skipped_lines`` (lines that broke a rule), ``truncated``
    (the file was longer than MAX_AUDIT_FILE_BYTES)."""
    from .._channel._files import open_output_file

    telemetry = empty_telemetry()
    try:
        # The size is checked below, by reading at most the cap: a flood is cut, not refused.
        fd = open_output_file(Path(out_dir), AUDIT_FILE, max_bytes=1 << 62)
    except UnsafeSpecError as exc:
        telemetry["unreadable"] = exc.message[:200]
        return telemetry
    with os.fdopen(fd, "rb") as f:
        data = f.read(MAX_AUDIT_FILE_BYTES + 1)
    if len(data) > MAX_AUDIT_FILE_BYTES:
        telemetry["truncated"] = True
        data = data[:MAX_AUDIT_FILE_BYTES]
    events: list[dict[str, Any]] = telemetry["events"]
    seen: set[str] = set()
    for line in data.split(b"\n"):
        if not line:
            continue
        if len(line) > MAX_AUDIT_LINE_BYTES:
            telemetry["skipped_lines"] += 1
            continue
        try:
            event = _event(json.loads(line))
        except (ValueError, RecursionError):
            event = None
        if event is None:
            telemetry["skipped_lines"] += 1
            continue
        if event["kind"] == "summary":
            telemetry.update(counts=event["counts"], total=event["total"], complete=True)
            continue
        if event["kind"] == "dropped":
            telemetry["dropped"] = max(telemetry["dropped"], event["count"])
            continue
        key = json.dumps(event, sort_keys=True)
        if key in seen:  # the runner writes each event once; repeats are someone else's lines
            continue
        if len(events) >= MAX_AUDIT_EVENTS:
            telemetry["dropped"] += 1
            continue
        seen.add(key)
        events.append(event)
    if not telemetry["complete"]:  # killed, or the closing line never came: count what is listed
        counts: dict[str, int] = {}
        for event in events:
            counts[event["kind"]] = counts.get(event["kind"], 0) + 1
        telemetry["counts"] = counts
        telemetry["total"] = len(events)
    return telemetry
