"""Listing and removing built envs (for ``safehub cache`` style commands).

Removal takes the same lock a build takes, and renames the env to a temp name
before deleting it, so a concurrent ``ensure_env`` either finds the complete env
or none (and then rebuilds it).
"""

from __future__ import annotations

import os
import re
import uuid
from pathlib import Path

from .._records import record
from ._build import MARKER, _read_marker, lock_path
from .._fsutil import remove_tree

__all__ = ["EnvRecord", "list_envs", "remove_env", "prune_envs", "env_size"]

_NAME = re.compile(r"^[0-9a-f]{16}$")
_TMP = re.compile(r"^\.tmp-([0-9a-f]{16})-")


@record(frozen=True)
class EnvRecord:
    """One env folder as ``safehub env ls`` lists it."""

    root: Path
    key: str  # "" when the marker is missing or does not match the folder
    backend: str
    distributions: tuple[str, ...]
    created: float
    complete: bool
    mode: str = ""
    last_used: float = 0.0  # the env folder's mtime: ensure_env touches it whenever it returns the env


def _record(root: Path) -> EnvRecord:
    marker = _read_marker(root) or {}
    key = str(marker.get("key", ""))
    complete = key[:16] == root.name and (root / "bin" / "python").exists() and (root / MARKER).is_file()
    raw_dists = marker.get("distributions")
    dists = raw_dists if isinstance(raw_dists, list) else []
    created = marker.get("created")
    return EnvRecord(
        root=root,
        key=key if complete else "",
        backend=str(marker.get("backend", "")) if complete else "",
        distributions=tuple(str(d) for d in dists) if complete else (),
        created=float(created) if complete and isinstance(created, (int, float)) else 0.0,
        complete=complete,
        mode=str((marker.get("inputs") or {}).get("mode", "")) if complete and isinstance(marker.get("inputs"), dict) else "",
        last_used=_mtime(root),
    )


def _mtime(path: Path) -> float:
    try:
        return os.stat(path).st_mtime
    except OSError:
        return 0.0


def env_size(root: Path, limit: int = 200_000) -> int:
    """Bytes of the files under ``root`` (links not followed; at most ``limit`` entries)."""
    total = 0
    count = 0
    for dirpath, dirnames, filenames in os.walk(root):
        for name in filenames:
            count += 1
            if count > limit:
                return total
            try:
                st = os.lstat(os.path.join(dirpath, name))
            except OSError:
                continue
            total += st.st_size
    return total


def list_envs(hub_dir: Path | str) -> list[EnvRecord]:
    """Every env folder under ``<hub_dir>/envs`` (temp folders excluded), oldest first."""
    envs = Path(hub_dir) / "envs"
    if not envs.is_dir():
        return []
    out = [_record(p) for p in envs.iterdir() if _NAME.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(out, key=lambda r: (r.created, r.root.name))


def remove_env(hub_dir: Path | str, name: str, *, timeout: float = 60.0) -> bool:
    """Delete env ``name`` (its folder name, key[:16]). Returns whether it existed."""
    from .._fsutil import FileLock

    if not _NAME.match(name):
        raise ValueError(f"{name!r} is not an env name (16 lowercase hex digits)")
    hub = Path(hub_dir)
    root = hub / "envs" / name
    (hub / "locks").mkdir(parents=True, exist_ok=True)
    with FileLock(str(lock_path(hub, name)), timeout=timeout):
        if not (root.exists() or root.is_symlink()):
            return False
        doomed = root.with_name(f".tmp-{name}-rm{uuid.uuid4().hex[:8]}")
        os.rename(root, doomed)
        remove_tree(doomed)
        return True


def prune_envs(hub_dir: Path | str) -> list[str]:
    """Remove leftovers: temp folders of crashed builds and incomplete env folders.
    Skips any whose lock is held (a build in progress). Returns what was removed."""
    from .._fsutil import FileLock, LockTimeout

    envs = Path(hub_dir) / "envs"
    if not envs.is_dir():
        return []
    removed = []
    for p in sorted(envs.iterdir()):
        m = _TMP.match(p.name)
        name = m.group(1) if m else (p.name if _NAME.match(p.name) else None)
        if name is None or (m is None and _record(p).complete):
            continue
        try:
            with FileLock(str(lock_path(Path(hub_dir), name)), timeout=0):
                if p.exists() or p.is_symlink():
                    remove_tree(p)
                    removed.append(p.name)
        except LockTimeout:
            continue
    return removed
