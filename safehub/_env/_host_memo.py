"""``host_info`` remembered on disk between processes: ``<hub>/memo/host-info-<interpreter>.json``.

Inspecting the host parses the METADATA of the torch family and its requirement
closure through ``importlib.metadata``, which stats every ``sys.path`` folder per
lookup: about 0.45 s, paid by every fresh process before its sandbox can start.
The memo keeps the result with the stat fingerprint of everything that was read
(``sys.path``, its folders, each METADATA file), so a fresh process checks a few
dozen stats instead.

The file is host data that anything running as the user can change, and what it
says decides which host folders are bound into sandboxes. So it is read
fail-closed: any mismatch, any shape it should not have, or a shared folder that
is not on this interpreter's ``sys.path`` and the memo is ignored and the host is
inspected again. What the memo can decide is limited to what an inspection of
this ``sys.path`` could have found; everything cheap (interpreter paths, platform,
base package folders) is computed live, never read from it.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._fsutil import read_memo, write_memo

__all__ = ["memo_name", "load_memo", "save_memo"]

logger = logging.getLogger("safehub")

MEMO_VERSION = 1
MAX_BYTES = 1 << 20
_NAME = re.compile(r"[a-z0-9][a-z0-9._-]{0,99}")
_VERSION = re.compile(r"[A-Za-z0-9.+!_-]{1,64}")

Fingerprint = Callable[[list[str]], Any]


def memo_name() -> str:
    """One file per interpreter (venvs sharing a SAFEHUB_HOME would otherwise
    overwrite each other's memo on every load): ``host-info-<12 hex>.json``."""
    import hashlib

    digest = hashlib.sha256(f"{sys.executable}\0{sys.prefix}".encode("utf-8", "surrogateescape")).hexdigest()
    return f"host-info-{digest[:12]}.json"


def _jsonable(value: Any) -> Any:
    return json.loads(json.dumps(value))


def _interpreter() -> dict[str, str]:
    """What the memo is only valid for: this interpreter, this safehub."""
    # The package is always imported before its submodules (no import edge up to it).
    version = str(getattr(sys.modules.get("safehub"), "__version__", "unknown"))
    return {"executable": sys.executable, "version": sys.version, "prefix": sys.prefix,
            "base_prefix": sys.base_prefix, "safehub": version}


def save_memo(path: Path, read: list[str], fingerprint: Any, fields: dict[str, Any]) -> None:
    """Write the memo (atomically, best effort: see ``write_memo``)."""
    payload = {"version": MEMO_VERSION, "interpreter": _interpreter(), "read": read,
               "fingerprint": _jsonable(fingerprint), "fields": _jsonable(fields)}
    write_memo(path, payload)


def load_memo(path: Path, fingerprint: Fingerprint,
              verify: Callable[[dict[str, Any]], None] | None = None) -> tuple[list[str], dict[str, Any]] | None:
    """(the METADATA files the inspection read, its fields) if the memo is current
    for this interpreter and checks out (see the module docstring), else None.
    ``verify(fields)`` raises ValueError for fields an inspection could not have found."""
    payload = read_memo(path, MAX_BYTES)
    if payload is None:
        return None
    try:
        fields = _check(payload, fingerprint)
        if verify is not None:
            verify(fields)
    except (TypeError, ValueError, KeyError) as exc:
        logger.debug("not using the host memo %s: %s", path, exc)
        return None
    return payload["read"], fields


def _check(payload: Any, fingerprint: Fingerprint) -> dict[str, Any]:
    if not isinstance(payload, dict) or payload.get("version") != MEMO_VERSION:
        raise ValueError("another format")
    if payload.get("interpreter") != _interpreter():
        raise ValueError("written by another interpreter or safehub")
    read = payload["read"]
    if not isinstance(read, list) or not all(isinstance(f, str) and f.endswith("/METADATA") for f in read):
        raise ValueError("bad list of files read")
    if _jsonable(fingerprint(read)) != payload["fingerprint"]:
        raise ValueError("the host changed since")
    fields = payload["fields"]
    if not isinstance(fields, dict) or set(fields) != {"packages", "share_paths", "constraints", "family_dists"}:
        raise ValueError("bad fields")
    from ._resolve import TORCH_FAMILY

    packages = fields["packages"]
    if not isinstance(packages, dict) or not all(
            k in TORCH_FAMILY and isinstance(v, str) and _VERSION.fullmatch(v) for k, v in packages.items()):
        raise ValueError("bad packages")
    # Only folders this interpreter's own sys.path names may be shared with sandboxes.
    on_path = {os.path.realpath(p) for p in sys.path if p}
    shares = fields["share_paths"]
    if not isinstance(shares, list) or not all(isinstance(p, str) and p in on_path for p in shares):
        raise ValueError("a shared folder is not on sys.path")
    constraints = fields["constraints"]
    if not isinstance(constraints, list) or not all(isinstance(c, str) and len(c) < 500 for c in constraints):
        raise ValueError("bad constraints")
    dists = fields["family_dists"]
    if not isinstance(dists, list):
        raise ValueError("bad family_dists")
    for item in dists:
        if not (isinstance(item, list) and len(item) == 3 and all(isinstance(x, str) for x in item)):
            raise ValueError("bad family_dists entry")
        name, version, where = item
        if not (_NAME.fullmatch(name) and _VERSION.fullmatch(version) and where.endswith(".dist-info")
                and os.path.dirname(where) in shares and os.path.realpath(where) == where):
            raise ValueError(f"family_dists entry {name!r} is outside the shared folders")
    return fields
