"""Removing folder trees that hostile code may have shaped.

Job folders hold whatever the sandbox left: chains thousands of folders deep,
folders with mode 000, FIFOs, sockets, symlinks to the user's files, mount
points. ``remove_tree`` walks such a tree iteratively (no recursion limit), by
file descriptor relative to the folder it is in (a path is never resolved
twice), follows no symlink, never crosses into another file system, and holds
at most two folder descriptors at a time whatever the depth. It never raises
for what it finds: a cleanup failure must not lose a model that was already
built, so it logs what it had to leave and returns False.

Also here, since every layer needs them: the small JSON memos the host keeps
for itself (``write_memo`` / ``read_memo``) and ``FileLock``, the inter-process
lock of the caches (one ``flock`` per holder, on a file it never follows a link to).
"""

from __future__ import annotations

import logging
import os
import stat
from dataclasses import field
from typing import Any

from ._records import record

__all__ = ["remove_tree", "tree_size", "human_size", "write_memo", "read_memo"]

logger = logging.getLogger("safehub")

_DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
_O_PATH = getattr(os, "O_PATH", 0)


@record
class _Frame:
    """One folder on the removal walk's stack."""

    name: str  # name in the parent folder
    ident: tuple[int, int]  # (st_dev, st_ino) of this folder
    children: list[str] = field(default_factory=list)  # sub-folders still to visit
    incomplete: bool = False  # something below could not be removed


class _Failures:
    def __init__(self) -> None:
        self.count = 0
        self.first: str | None = None

    def add(self, what: str, exc: BaseException) -> None:
        self.count += 1
        if self.first is None:
            self.first = f"{what}: {exc}"


def _open_dir(parent_fd: int, name: str) -> int:
    """Open the folder ``name`` in ``parent_fd`` without following a link. A folder
    we may not read or change (mode 000, 0500) gets u+rwx first, on a descriptor
    that cannot be a link, so the chmod lands on the folder itself."""
    try:
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
    except PermissionError:
        if not _O_PATH:
            raise
        fd = None
    if fd is not None:
        if os.fstat(fd).st_mode & 0o700 == 0o700:
            return fd
        os.close(fd)
    path_fd = os.open(name, _O_PATH | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=parent_fd) if _O_PATH else None
    try:
        if path_fd is not None:
            mode = os.fstat(path_fd).st_mode
            os.chmod(f"/proc/self/fd/{path_fd}", stat.S_IMODE(mode) | 0o700)
            return os.open(f"/proc/self/fd/{path_fd}", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        fd = os.open(name, _DIR_FLAGS, dir_fd=parent_fd)
        os.fchmod(fd, stat.S_IMODE(os.fstat(fd).st_mode) | 0o700)
        return fd
    finally:
        if path_fd is not None:
            os.close(path_fd)


def _scan(fd: int, frame: _Frame, failures: _Failures) -> None:
    """Unlink everything in the folder but sub-folders; list those in ``frame``."""
    try:
        entries = os.scandir(fd)
    except OSError as exc:
        failures.add(frame.name, exc)
        frame.incomplete = True
        return
    with entries:
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    frame.children.append(entry.name)
                else:  # files, links, FIFOs, sockets, devices: unlinked, never opened
                    os.unlink(entry.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures.add(entry.name, exc)
                frame.incomplete = True


def _ident(st: os.stat_result) -> tuple[int, int]:
    return st.st_dev, st.st_ino


def _remove_below(parent_fd: int, name: str, failures: _Failures) -> bool:
    """Remove the folder ``name`` of ``parent_fd`` and everything in it."""
    fd = _open_dir(parent_fd, name)
    st = os.fstat(fd)
    root_dev = st.st_dev
    stack = [_Frame(name, _ident(st))]
    _scan(fd, stack[0], failures)
    try:
        while stack:
            frame = stack[-1]
            if frame.children:
                child = frame.children.pop()
                try:
                    child_fd = _open_dir(fd, child)
                except FileNotFoundError:
                    continue
                except OSError as exc:
                    failures.add(child, exc)
                    frame.incomplete = True
                    continue
                child_st = os.fstat(child_fd)
                if child_st.st_dev != root_dev:  # a mount point: never empty another file system
                    os.close(child_fd)
                    failures.add(child, OSError("a mount point; left in place"))
                    frame.incomplete = True
                    continue
                os.close(fd)
                fd = child_fd
                stack.append(_Frame(child, _ident(child_st)))
                _scan(fd, stack[-1], failures)
                continue
            # This folder is done: go up by "..", check it is the folder we came
            # from (nothing moved it), then remove this one from it.
            stack.pop()
            if not stack:
                break
            up = os.open("..", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC, dir_fd=fd)
            if _ident(os.fstat(up)) != stack[-1].ident:
                os.close(up)
                raise OSError(f"folder {frame.name!r} moved while being removed")
            os.close(fd)
            fd = up
            if frame.incomplete:
                stack[-1].incomplete = True
                continue
            try:
                os.rmdir(frame.name, dir_fd=fd)
            except FileNotFoundError:
                pass
            except OSError as exc:
                failures.add(frame.name, exc)
                stack[-1].incomplete = True
    finally:
        os.close(fd)
    if stack and stack[0].incomplete:
        return False
    try:
        os.rmdir(name, dir_fd=parent_fd)
    except FileNotFoundError:
        pass
    return True


def remove_tree(path: str | os.PathLike[str]) -> bool:
    """Remove ``path`` (a folder tree, a file or a link; a link is removed, never
    followed). Returns True when nothing is left; logs and returns False otherwise.
    Never raises for what it finds in the tree."""
    path = os.fspath(path)
    parent, name = os.path.split(os.path.normpath(path))
    if name in ("", ".", ".."):
        logger.warning("not removing %r: it is not a folder name", path)
        return False
    failures = _Failures()
    try:
        parent_fd = os.open(parent or ".", os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    except FileNotFoundError:
        return True
    except OSError as exc:
        logger.warning("could not remove %s: %s", path, exc)
        return False
    try:
        try:
            st = os.lstat(name, dir_fd=parent_fd)
        except FileNotFoundError:
            return True
        if not stat.S_ISDIR(st.st_mode):
            os.unlink(name, dir_fd=parent_fd)
            return True
        done = _remove_below(parent_fd, name, failures)
    except FileNotFoundError:
        done = not _exists(parent_fd, name)
    except (OSError, ValueError) as exc:
        failures.add(name, exc)
        done = False
    finally:
        os.close(parent_fd)
    if not done or failures.count:
        logger.warning(
            "could not remove all of %s (%d problem(s), first: %s); remove it by hand",
            path, failures.count, failures.first,
        )
        return False
    return True


def _exists(parent_fd: int, name: str) -> bool:
    try:
        os.lstat(name, dir_fd=parent_fd)
    except OSError:
        return False
    return True



def tree_size(root: str | os.PathLike[str]) -> int:
    """Bytes of the files under ``root`` (links not followed; unreadable entries skipped)."""
    total = 0
    for dirpath, _dirs, files in os.walk(root, followlinks=False):
        for name in files:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def human_size(n: int) -> str:
    """``n`` bytes for people: "512 B", "1.5 MiB" (the CLI's cache listings)."""
    size = float(n)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if size < 1024 or unit == "GiB":
            return f"{size:.0f} {unit}" if unit == "B" else f"{size:.1f} {unit}"
        size /= 1024
    return f"{n} B"


# --- small JSON memos the host keeps for itself (safehub/_env/_host_memo.py,
# safehub/_sandbox/_probe_memo.py): written whole or not at all, read without
# following links and within a size cap; whoever reads one checks what it says.


def write_memo(path: str | os.PathLike[str], payload: object) -> None:
    """Write ``payload`` as JSON to ``path`` (0600) through a temporary file and a
    rename. Best effort: a memo that cannot be written only costs the next process
    the work again, so failures are logged, never raised."""
    import json
    import secrets

    target = os.fspath(path)
    tmp = os.path.join(os.path.dirname(target), f".{os.path.basename(target)}.{secrets.token_hex(6)}.partial")
    try:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        with open(fd, "w", encoding="utf-8") as f:
            json.dump(payload, f, sort_keys=True)
        os.replace(tmp, target)
    except OSError as exc:
        logger.debug("could not write the memo %s: %s", target, exc)
        try:
            os.unlink(tmp)
        except OSError:
            pass


def read_memo(path: str | os.PathLike[str], max_bytes: int) -> Any:
    """The JSON value in ``path``, or None when it is missing, a link, larger than
    ``max_bytes`` or not JSON."""
    import json

    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK)
    except OSError:
        return None
    try:
        with open(fd, "rb") as f:
            raw = f.read(max_bytes + 1)
        return json.loads(raw.decode("utf-8")) if len(raw) <= max_bytes else None
    except (OSError, ValueError):
        return None


# --- inter-process locks: one flock(2) per holder, on a file in <hub>/locks.


class LockTimeout(TimeoutError):
    """The lock stayed held by someone else for the whole timeout."""


class FileLock:
    """An exclusive ``flock`` on ``path`` (created 0600 if missing, never removed:
    unlinking a lock file races with a waiter that has it open). Each ``acquire``
    opens its own descriptor, so two holders in one process exclude each other as
    two processes do; the kernel drops the lock when its holder dies. ``timeout``
    < 0 waits for ever, 0 tries once. Not re-entrant. (Was the ``filelock``
    package, whose import alone cost a fresh process about 10 ms.)"""

    POLL_S = 0.05

    def __init__(self, path: str | os.PathLike[str], timeout: float = -1) -> None:
        self.path = os.fspath(path)
        self.timeout = timeout
        self._fd: int | None = None

    def acquire(self, timeout: float | None = None) -> FileLock:
        import fcntl
        import time

        if self._fd is not None:
            raise RuntimeError(f"the lock {self.path} is already held by this object")
        wait = self.timeout if timeout is None else timeout
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        deadline = time.monotonic() + wait
        try:
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if 0 <= wait and time.monotonic() >= deadline:
                        raise LockTimeout(f"the lock {self.path} is held by another process") from None
                    time.sleep(self.POLL_S)
        except BaseException:
            os.close(fd)
            raise
        self._fd = fd
        return self

    def release(self) -> None:
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)  # closing the only descriptor of this open file drops the flock

    def detach(self) -> int:
        """The held lock's descriptor, which this object forgets (the caller closes it):
        a descriptor handed to another process (inherited) keeps the lock held there."""
        fd, self._fd = self._fd, None
        if fd is None:
            raise RuntimeError(f"the lock {self.path} is not held by this object")
        return fd

    @property
    def is_locked(self) -> bool:
        return self._fd is not None

    def __enter__(self) -> FileLock:
        return self.acquire()

    def __exit__(self, *exc: object) -> None:
        self.release()
