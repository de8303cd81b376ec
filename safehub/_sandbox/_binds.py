"""Checking the paths a request asks to expose, before any backend binds them.

Refused: relative paths, the file-system root, /proc, /sys, /dev, the host's
HOME or any folder above it, a read-only path that contains a writable one
(it would expose the rest of the cache, e.g. other jobs), and writable paths
that are links or not folders.
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._errors import SandboxError
from ._base import SandboxRequest

__all__ = ["normalise_request", "ancestors", "within"]

FORBIDDEN_PREFIXES = ("/proc", "/sys", "/dev", "/run", "/boot")


def ancestors(path: Path | str) -> list[str]:
    """Proper ancestors of an absolute path, without "/"."""
    parts = str(path).strip("/").split("/")
    return ["/" + "/".join(parts[:i]) for i in range(1, len(parts))]


def within(path: Path | str, parent: Path | str) -> bool:
    path, parent = str(path), str(parent).rstrip("/") or "/"
    return path == parent or path.startswith(parent + "/") or parent == "/"


def _check_abs(path: Path, what: str) -> None:
    if not path.is_absolute():
        raise SandboxError(f"sandbox {what} path {str(path)!r} is not absolute")
    if str(path) == "/" or any(within(path, p) for p in FORBIDDEN_PREFIXES):
        raise SandboxError(f"refusing to expose {str(path)!r} to the sandbox")


def normalise_request(request: SandboxRequest, host_home: str | None = None) -> tuple[list[Path], list[Path], list[Path]]:
    """Return (read-only, writable, scratch) paths, resolved and checked."""
    home = os.path.realpath(host_home or os.path.expanduser("~"))
    ro: list[Path] = []
    for raw in request.ro_paths:
        raw = Path(raw)
        _check_abs(raw, "read-only")
        for path in {Path(os.path.realpath(raw)), Path(os.path.normpath(raw))}:
            _check_abs(path, "read-only")
            if not path.exists():
                raise SandboxError(f"sandbox read-only path {str(path)!r} does not exist")
            if home != "/" and within(home, path):
                raise SandboxError(f"refusing to expose {str(path)!r}: it contains the host's HOME")
            if path not in ro:
                ro.append(path)
    rw: list[Path] = []
    for raw in request.rw_paths:
        path = Path(raw)
        _check_abs(path, "writable")
        st = os.lstat(path)
        if not stat.S_ISDIR(st.st_mode) or os.path.realpath(path) != str(path):
            raise SandboxError(f"sandbox writable path {str(path)!r} must be a real folder, not a link")
        rw.append(path)
    scratch: list[Path] = []
    for raw in request.scratch_paths:
        path = Path(os.path.normpath(raw))
        _check_abs(path, "scratch")
        scratch.append(path)
    for r in ro:
        for w in (*rw, *scratch):
            if within(w, r) or within(r, w):
                raise SandboxError(
                    f"read-only path {str(r)!r} overlaps writable path {str(w)!r}",
                    hint="bind the job's own folders separately, never a folder above them",
                )
    return ro, rw, scratch
