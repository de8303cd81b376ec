"""Checking the paths a request asks to expose, before any backend binds them.

Refused: relative paths, the file-system root, /proc, /sys, /dev, the host's
HOME or any folder above it, a read-only path that contains a writable one
(it would expose the rest of the cache, e.g. other jobs), and writable paths
that are links or not folders.

Hidden paths (``SandboxRequest.hidden_paths``) are folders inside a shown path
that the job must not see: the base interpreter's own site-packages inside its
prefix (the prefix holds the standard library). Read-only paths inside a hidden
folder (the torch family's link targets) are shown again. bubblewrap masks each
with an empty read-only tmpfs; Landlock, whose rules only add, grants the shown
path's other children instead (:func:`carve`).
"""

from __future__ import annotations

import os
import stat
from collections.abc import Sequence
from pathlib import Path

from .._errors import SandboxError
from ._base import SandboxRequest

__all__ = ["normalise_request", "normalise_hidden", "carve", "ancestors", "within", "MAX_CARVED_RULES"]

FORBIDDEN_PREFIXES = ("/proc", "/sys", "/dev", "/run", "/boot")
# Landlock rules one carve may produce (a folder listing per level down to a hidden
# path); past it the request is refused rather than shown whole.
MAX_CARVED_RULES = 20000


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


def normalise_hidden(request: SandboxRequest, shown: Sequence[str]) -> list[Path]:
    """The request's hidden folders, and always the base interpreter's site-packages,
    that lie inside a shown path (resolved; others are already invisible). A hidden
    path must be absolute and a real folder."""
    from .._basesite import base_site_packages

    out: list[Path] = []
    # The base interpreter's site-packages are hidden whatever the request says: a
    # caller that builds its own request (a warm worker) cannot forget them.
    for raw in (*getattr(request, "hidden_paths", ()), *base_site_packages()):
        path = Path(raw)
        if not path.is_absolute():
            raise SandboxError(f"sandbox hidden path {str(path)!r} is not absolute")
        real = Path(os.path.realpath(path))
        if not real.is_dir() or str(real) == "/":
            continue  # nothing there to hide
        if any(within(real, s) and real != Path(s) for s in shown) and real not in out:
            out.append(real)
    return out


def carve(read: list[str], hidden: list[Path]) -> tuple[list[str], list[str]]:
    """Landlock read rules that show ``read`` but not ``hidden``.

    Returns (read paths, list-only folders): a shown path that contains a hidden
    folder is replaced by its other children, level by level, and every folder on
    the way is listable (its entries' names; Python's importer lists the standard
    library folder) but grants no file read below it. A child that is a link into a
    hidden folder is dropped. Read paths inside a hidden folder stay (shown again).
    """
    hide = [str(h) for h in hidden]
    reads: list[str] = []
    lists: list[str] = []

    def inside_hidden(p: str) -> bool:
        return any(within(p, h) for h in hide)

    def expand(folder: str) -> None:
        lists.append(folder)
        try:
            names = sorted(os.listdir(folder))
        except OSError as exc:
            raise SandboxError(f"cannot list {folder!r} to hide {hide} from the sandbox: {exc}") from None
        for name in names:
            child = os.path.join(folder, name)
            real = os.path.realpath(child)
            if inside_hidden(child) or inside_hidden(real):
                continue
            if any(within(h, real) for h in hide):
                expand(real)
            else:
                reads.append(child)
            if len(reads) + len(lists) > MAX_CARVED_RULES:
                raise SandboxError(f"hiding {hide} from the sandbox needs more than {MAX_CARVED_RULES} Landlock rules",
                                   hint="install torch in a venv (python -m venv) so the base interpreter's folders stay small")

    for path in read:
        real = os.path.realpath(path)
        if inside_hidden(path) or inside_hidden(real):
            reads.append(path)  # shown again (a family link target)
        elif any(within(h, real) and h != real for h in hide):
            expand(real)
        else:
            reads.append(path)
    return list(dict.fromkeys(reads)), list(dict.fromkeys(lists))
