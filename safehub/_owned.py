"""Folders owned by this process, and a sweep of those whose owner died.

Some host folders hold data only for as long as the process that made them runs
(deferred export's kept weights, the job folders): a normal exit removes them
(a ``weakref.finalize`` runs at interpreter exit), but a SIGKILL, an OOM kill or a
power loss does not. So each such folder ``<parent>/<name>`` has an owner file
``<parent>/.<name>.owner`` beside it, on which the owner holds an exclusive
``flock`` for as long as the folder is in use. The kernel drops the lock when
the owner dies however it dies (no pid to be reused, no clock to trust), so a
later process that can take the lock knows nobody owns the folder, and removes
it with ``remove_tree``. The owner file is outside the folder, which the sandbox
may see: no job can forge or hold it.
"""

from __future__ import annotations

import fcntl
import logging
import os
import secrets
import threading
import time
from pathlib import Path

from ._fsutil import remove_tree

__all__ = ["OwnedDir", "make_owned_dir", "sweep_unowned", "LEGACY_AGE_S"]

logger = logging.getLogger("safehub")

OWNER_SUFFIX = ".owner"
LEGACY_AGE_S = 24 * 3600  # a folder with no owner file (older safehub, or a crash mid-create)
_OPEN_FLAGS = os.O_RDWR | os.O_NOFOLLOW | os.O_CLOEXEC


def _owner_file(folder: Path) -> Path:
    return folder.parent / f".{folder.name}{OWNER_SUFFIX}"


class OwnedDir:
    """A folder this process owns (its flock held) until :meth:`release`."""

    def __init__(self, path: Path, fd: int) -> None:
        self.path = path
        self._fd: int | None = fd
        self._lock = threading.Lock()

    def release(self) -> bool:
        """Remove the folder, then its owner file, then drop the lock. Idempotent."""
        with self._lock:
            if self._fd is None:
                return True
            done = remove_tree(self.path)
            if done:
                try:
                    os.unlink(_owner_file(self.path))
                except OSError:
                    pass
            os.close(self._fd)  # a folder left behind is now anyone's to sweep
            self._fd = None
            return done


def make_owned_dir(parent: Path, prefix: str, mode: int = 0o700) -> OwnedDir:
    """A fresh ``parent/<prefix><random>`` folder, owned by this process."""
    parent.mkdir(parents=True, exist_ok=True)
    name = f"{prefix}{secrets.token_hex(8)}"
    path = parent / name
    fd = os.open(_owner_file(path), _OPEN_FLAGS | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)  # fresh and ours: never blocks
        path.mkdir(mode=mode)
    except BaseException:
        os.close(fd)
        try:
            os.unlink(_owner_file(path))
        except OSError:
            pass
        raise
    return OwnedDir(path, fd)


def sweep_unowned(parent: Path, prefix: str, *, legacy_age_s: float = LEGACY_AGE_S) -> int:
    """Remove ``parent/<prefix>*`` folders whose owner is gone; return how many.
    A folder without an owner file is removed once it is ``legacy_age_s`` old."""
    try:
        entries = list(os.scandir(parent))
    except OSError:
        return 0
    removed = 0
    cutoff = time.time() - legacy_age_s
    for entry in entries:
        name = entry.name
        if not name.startswith(prefix) or not entry.is_dir(follow_symlinks=False):
            continue
        folder = parent / name
        try:
            fd = os.open(_owner_file(folder), _OPEN_FLAGS)
        except FileNotFoundError:
            try:
                old = entry.stat(follow_symlinks=False).st_mtime < cutoff
            except OSError:
                continue
            if old and remove_tree(folder):
                removed += 1
            continue
        except OSError:
            continue  # a link or unreadable: not ours to judge
        try:
            try:
                fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                continue  # its owner is alive (this process included)
            logger.info("removing %s: the process that owned it is gone", folder)
            if remove_tree(folder):
                removed += 1
                try:
                    os.unlink(_owner_file(folder))
                except OSError:
                    pass
        finally:
            os.close(fd)
    return removed
