"""Whether safehub's own modules (and the runner's) have current bytecode.

A module without current bytecode is compiled from source at every import that
cannot write the ``.pyc`` back: always for the runner (the sandbox runs Python
with ``-B`` on read-only mounts, so every cold run and every warm worker's start
pays it), and on the host when ``PYTHONDONTWRITEBYTECODE`` is set or the folder
is read-only. An editable install compiles nothing, and editing a file makes its
``.pyc`` stale. Measured on the 2-core machine: ten stale host modules cost
0.03-0.06 s of CPU in every fresh process. ``safehub doctor`` reports it; the fix is
one ``compileall`` (what ``scripts/setup.sh`` and a wheel install do).
"""

from __future__ import annotations

import importlib.util
import os
import sys
from collections.abc import Iterable
from pathlib import Path
from typing import Any

__all__ = ["stale_modules", "bytecode_report"]

_TIMESTAMP_PYC = 0  # the flags word of a .pyc checked by source mtime and size (PEP 552)


def _current(source: Path) -> bool:
    """Whether the ``.pyc`` Python would use for ``source`` matches it (a hash-based
    ``.pyc`` counts as current: Python checks or trusts it without compiling)."""
    try:
        cached = Path(importlib.util.cache_from_source(str(source)))
        with open(cached, "rb") as f:
            head = f.read(16)
        st = source.stat()
    except (OSError, ValueError, NotImplementedError):
        return False
    if len(head) < 16 or head[:4] != importlib.util.MAGIC_NUMBER:
        return False  # another Python's bytecode, or a truncated file
    if int.from_bytes(head[4:8], "little") != _TIMESTAMP_PYC:
        return True
    mtime = int.from_bytes(head[8:12], "little")
    size = int.from_bytes(head[12:16], "little")
    return mtime == (int(st.st_mtime) & 0xFFFFFFFF) and size == (st.st_size & 0xFFFFFFFF)


def stale_modules(folders: Iterable[Path], skip: Iterable[Path] = ()) -> tuple[int, list[str]]:
    """(number of modules, paths without current bytecode) under ``folders``, not
    under ``skip``; ``__pycache__`` folders themselves are not walked."""
    count, stale = 0, []
    skipped = {os.path.realpath(p) for p in skip}
    for folder in folders:
        for root, dirs, files in os.walk(folder):
            dirs[:] = sorted(d for d in dirs if d != "__pycache__" and not d.startswith(".")
                             and os.path.realpath(os.path.join(root, d)) not in skipped)
            for name in sorted(files):
                if name.endswith(".py"):
                    count += 1
                    path = Path(root, name)
                    if not _current(path):
                        stale.append(str(path))
    return count, stale


def bytecode_report(package: Path | None = None, runners: Path | None = None,
                    writes: bool | None = None) -> dict[str, Any]:
    """What ``safehub doctor`` prints about it (default: this safehub, its runner and
    this interpreter's ``sys.dont_write_bytecode``). JSON-able."""
    from ._resources import runner_dir, shipped_folder

    package = package or Path(__file__).resolve().parent
    if runners is None:
        try:
            runners = runner_dir()
        except Exception:  # noqa: BLE001 - a missing runner is reported by every load; not this check's job
            runners = None
    # Installed from a wheel, the runner and the demo repo are data packages inside safehub/:
    # the runner is counted once, as the runner; the demo is a hub repo, not safehub's code.
    skip = [p for p in (runners, shipped_folder("safehub._demo", "examples/demo-hub", "hubconf.py")) if p is not None]
    host_count, host_stale = stale_modules([package], skip=skip)
    runner_count, runner_stale = stale_modules([runners]) if runners is not None else (0, [])
    writes = not sys.dont_write_bytecode if writes is None else writes
    # The host writes its own .pyc at the next import unless told not to; the sandbox never can.
    paying = runner_stale + ([] if writes else host_stale)
    note = None
    if paying:
        where = [f"{len(runner_stale)} runner module(s), at every sandbox start"] if runner_stale else []
        if host_stale and not writes:
            where.append(f"{len(host_stale)} host module(s), in every process (PYTHONDONTWRITEBYTECODE or -B is set)")
        folders = " ".join(str(f) for f in (package, runners) if f is not None)
        note = (f"compiled from source at each import: {'; '.join(where)}. "
                f"Compile them once: {sys.executable} -m compileall -q {folders}")
    return {"modules": host_count + runner_count, "stale": len(host_stale) + len(runner_stale),
            "stale_runner": len(runner_stale), "examples": (runner_stale + host_stale)[:5],
            "host_writes_bytecode": writes, "note": note}
