"""Lockfiles: what one set of loads used, recorded so later loads can be held to it.

``safehub lock owner/name[:ref] ENTRYPOINT... -o safehub.lock`` loads each entrypoint
and records, per entrypoint (format: docs/lockfile.md, ``"version": 1``):

* ``repo``, ``host``, ``ref`` (as asked), ``sha`` (the full commit), ``archive_sha256``
  (the zip as downloaded) and ``tree_hash`` (the extracted tree, as the cache checks it);
* ``dependencies``: the resolution ``mode`` and every installed distribution
  ``name==version`` with the sha256 of its RECORD (which lists every installed file
  with its own hash);
* ``downloads``: each weight URL the entrypoint fetched, with its sha256;
* ``runner`` (protocol number and a hash of the runner's source) and ``safehub`` (version);
* ``weights_sha256``: a hash of the returned modules' tensors, when two loads gave the
  same (null when the entrypoint is not deterministic).

Creating one (loading each entrypoint) is ``safehub._policy_cli.create_lock``.
``load(..., lock=...)``, ``$SAFEHUB_LOCK`` or a policy's ``[lock] file`` then refuse
anything that differs (see _guard.py). JSON, sorted keys, so diffs review well.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import re
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from ._errors import PolicyError, escape_untrusted
from ._records import record

__all__ = ["Lock", "LockEntry", "read_lock", "write_lock", "weights_sha256", "runner_identity", "safehub_version",
           "FORMAT", "VERSION"]

logger = logging.getLogger("safehub")

FORMAT = "safehub.lock"
VERSION = 1
MAX_LOCK_BYTES = 16 << 20
_HEX64 = re.compile(r"^[0-9a-f]{64}$")
_SHA = re.compile(r"^[0-9a-f]{40}$")
_ENTRY_KEYS = {"repo", "host", "ref", "sha", "archive_sha256", "tree_hash", "entrypoint", "dependencies",
               "downloads", "runner", "safehub", "weights_sha256"}


@record(frozen=True)
class LockEntry:
    """One locked entrypoint: what its load must match."""

    repo: str  # owner/name, lower case
    host: str
    ref: str | None
    sha: str
    archive_sha256: str
    tree_hash: str
    entrypoint: str
    mode: str
    distributions: dict[str, str]  # "name==version" -> sha256 of its RECORD
    downloads: dict[str, str]  # url -> sha256
    runner: dict[str, Any]
    safehub: str
    weights_sha256: str | None

    def as_dict(self) -> dict[str, Any]:
        return {
            "repo": self.repo, "host": self.host, "ref": self.ref, "sha": self.sha,
            "archive_sha256": self.archive_sha256, "tree_hash": self.tree_hash, "entrypoint": self.entrypoint,
            "dependencies": {"mode": self.mode, "distributions": dict(sorted(self.distributions.items()))},
            "downloads": [{"url": u, "sha256": h} for u, h in sorted(self.downloads.items())],
            "runner": dict(self.runner), "safehub": self.safehub, "weights_sha256": self.weights_sha256,
        }


@record(frozen=True)
class Lock:
    """A parsed lockfile."""

    path: str
    entries: tuple[LockEntry, ...]

    def for_repo(self, host: str, repo: str) -> list[LockEntry]:
        return [e for e in self.entries if e.host == host and e.repo == repo.lower()]


# --- identity of the code that produced a load -----------------------------------------


def runner_identity() -> dict[str, Any]:
    """The runner's protocol number and a sha256 over its source files (names and bytes)."""
    from ._contract import PROTOCOL
    from ._resources import runner_dir

    h = hashlib.sha256(b"safehub-runner-v1\0")
    root = runner_dir()
    for path in sorted(root.rglob("*.py")):
        if "__pycache__" in path.parts:
            continue
        h.update(path.relative_to(root).as_posix().encode() + b"\0" + hashlib.sha256(path.read_bytes()).digest())
    return {"protocol": PROTOCOL, "sha256": h.hexdigest()}


def safehub_version() -> str:
    import sys

    # Read from the loaded package, not imported: this module sits below safehub/__init__.py.
    return str(getattr(sys.modules.get("safehub"), "__version__", "unknown"))


def weights_sha256(obj: Any) -> str:
    """sha256 over the returned modules' state (each tensor's name, dtype, shape and bytes,
    modules in the order the structure lists them). Same weights, same hash."""
    import ctypes

    import torch

    from ._namespace import SafehubNamespace

    h = hashlib.sha256(b"safehub-weights-v1\0")

    def visit(value: Any, path: str) -> None:
        if isinstance(value, torch.nn.Module):
            for name, tensor in sorted(value.state_dict().items()):
                t = tensor.detach().to("cpu").contiguous()
                h.update(f"{path}.{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
                if t.numel():
                    h.update(ctypes.string_at(t.data_ptr(), t.numel() * t.element_size()))
        elif isinstance(value, (tuple, list)):
            for i, item in enumerate(value):
                visit(item, f"{path}[{i}]")
        elif isinstance(value, dict):
            for key in sorted(value, key=str):
                visit(value[key], f"{path}[{key!r}]")
        elif isinstance(value, SafehubNamespace):
            attrs = value.safehub_attrs()
            for key in sorted(attrs):
                visit(attrs[key], f"{path}.{key}")

    visit(obj, "")
    return h.hexdigest()


# --- reading and writing ------------------------------------------------------------


def _bad(path: str, what: str) -> PolicyError:
    return PolicyError(f"the lockfile {path} is not valid: {what}",
                       hint="re-create it with `safehub lock` (format: docs/lockfile.md)")


def _entry(raw: Any, path: str, i: int) -> LockEntry:
    where = f"entry {i}"
    if not isinstance(raw, dict):
        raise _bad(path, f"{where} is not an object")
    unknown = set(raw) - _ENTRY_KEYS
    if unknown:
        raise _bad(path, f"{where} has unknown key(s) {', '.join(sorted(map(str, unknown)))}; "
                   f"allowed: {', '.join(sorted(_ENTRY_KEYS))}")
    missing = _ENTRY_KEYS - set(raw)
    if missing:
        raise _bad(path, f"{where} lacks {', '.join(sorted(missing))}")

    def text(key: str, pattern: re.Pattern[str] | None = None, optional: bool = False) -> Any:
        value = raw[key]
        if optional and value is None:
            return None
        if not isinstance(value, str) or (pattern is not None and not pattern.match(value)):
            raise _bad(path, f"{where}: {key} = {escape_untrusted(repr(value), limit=80)} is not valid")
        return value

    deps = raw["dependencies"]
    if not isinstance(deps, dict) or set(deps) != {"mode", "distributions"} or not isinstance(deps["mode"], str) \
            or not isinstance(deps["distributions"], dict) \
            or not all(isinstance(k, str) and isinstance(v, str) for k, v in deps["distributions"].items()):
        raise _bad(path, f"{where}: dependencies must be {{mode, distributions: {{name==version: sha256}}}}")
    downloads = raw["downloads"]
    if not isinstance(downloads, list) or not all(
            isinstance(d, dict) and set(d) == {"url", "sha256"} and isinstance(d["url"], str)
            and isinstance(d["sha256"], str) and _HEX64.match(d["sha256"]) for d in downloads):
        raise _bad(path, f"{where}: downloads must be a list of {{url, sha256}}")
    runner = raw["runner"]
    if not isinstance(runner, dict) or set(runner) != {"protocol", "sha256"}:
        raise _bad(path, f"{where}: runner must be {{protocol, sha256}}")
    return LockEntry(
        repo=text("repo").lower(), host=text("host"), ref=text("ref", optional=True), sha=text("sha", _SHA),
        archive_sha256=text("archive_sha256", _HEX64), tree_hash=text("tree_hash", _HEX64),
        entrypoint=text("entrypoint"), mode=deps["mode"], distributions=dict(deps["distributions"]),
        downloads={d["url"]: d["sha256"] for d in downloads}, runner=dict(runner), safehub=text("safehub"),
        weights_sha256=text("weights_sha256", _HEX64, optional=True),
    )


def read_lock(path: str | os.PathLike[str]) -> Lock:
    shown = str(path)
    try:
        with open(path, "rb") as f:
            mode = os.fstat(f.fileno()).st_mode
            raw = f.read(MAX_LOCK_BYTES + 1)
    except OSError as exc:
        raise PolicyError(f"cannot read the lockfile {shown}: {exc.strerror}",
                          hint="check the path given as lock=, $SAFEHUB_LOCK or the policy's [lock] file") from None
    if mode & 0o002:  # anyone could rewrite what loads are held to
        raise PolicyError(f"the lockfile {shown} is world-writable; refusing to use it", hint=f"chmod o-w {shown}")
    if len(raw) > MAX_LOCK_BYTES:
        raise _bad(shown, f"it is larger than {MAX_LOCK_BYTES} bytes")
    try:
        data = json.loads(raw.decode("utf-8"))
    except (ValueError, UnicodeDecodeError, RecursionError):
        raise _bad(shown, "it is not JSON") from None
    if not isinstance(data, dict) or data.get("format") != FORMAT:
        raise _bad(shown, f'it does not say "format": "{FORMAT}"')
    if data.get("version") != VERSION:
        raise PolicyError(f"the lockfile {shown} has format version {escape_untrusted(repr(data.get('version')), limit=20)}; "
                          f"this safehub reads version {VERSION}",
                          hint="upgrade safehub, or re-create the lock with this one")
    if set(data) - {"format", "version", "entries"}:
        raise _bad(shown, f"unknown top-level key(s) {', '.join(sorted(set(data) - {'format', 'version', 'entries'}))}")
    entries = data.get("entries")
    if not isinstance(entries, list):
        raise _bad(shown, "entries is not a list")
    return Lock(path=shown, entries=tuple(_entry(e, shown, i) for i, e in enumerate(entries)))


def write_lock(path: str | os.PathLike[str], entries: Sequence[LockEntry]) -> None:
    payload = {"format": FORMAT, "version": VERSION, "entries": [e.as_dict() for e in entries]}
    tmp = Path(f"{path}.partial")
    tmp.write_text(json.dumps(payload, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, path)
