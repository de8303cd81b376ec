"""Killing a whole process tree, including children that left the group."""

from __future__ import annotations

import os
import signal
import subprocess

__all__ = ["kill_tree"]


def kill_tree(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL ``proc``, its process group and every descendant psutil can still see,
    then reap ``proc``. Returns only once the leader is gone."""
    import psutil

    try:
        descendants = psutil.Process(proc.pid).children(recursive=True)
    except psutil.Error:
        descendants = []
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except (ProcessLookupError, PermissionError):
        pass
    for child in descendants:
        try:
            child.kill()
        except psutil.Error:
            pass
    try:
        proc.kill()
    except ProcessLookupError:
        pass
    proc.wait()
    psutil.wait_procs(descendants, timeout=5)


def wait_gone(pids: list[int], timeout: float = 30.0) -> None:
    """Wait until none of ``pids`` exists any more (they need not be our children)."""
    import time

    deadline = time.monotonic() + timeout
    for pid in pids:
        while _alive(pid):
            if time.monotonic() > deadline:
                from .._errors import SandboxError

                raise SandboxError(f"sandbox process {pid} did not die after SIGKILL")
            time.sleep(0.005)


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            state = f.read().rsplit(b")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in (b"Z", b"X")


def _kill_if_uid(pid: int, uid: int) -> None:
    """SIGKILL ``pid`` if it still runs as ``uid``: through a pidfd opened before the
    uid is read again, so a pid reused in between is never signalled (a kernel
    without pidfds, before 5.3: a plain kill right after the check)."""
    from ._proc import uids

    try:
        fd = os.pidfd_open(pid)
    except ProcessLookupError:  # gone already
        return
    except OSError:  # no pidfd_open here
        ids = uids(pid)
        if ids is not None and uid in ids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return
    try:
        ids = uids(pid)  # the pidfd pins this process: still the one found?
        if ids is not None and uid in ids:
            signal.pidfd_send_signal(fd, signal.SIGKILL)
    except ProcessLookupError:
        pass
    finally:
        os.close(fd)


def kill_uid(uid: int, rounds: int = 50) -> int:
    """SIGKILL every process whose real, effective or saved uid is ``uid`` until
    none is left; return how many were found. Used with a uid that belongs to
    one sandbox only, so this takes its whole tree, daemons included (each through
    _kill_if_uid: a pid reused since the scan is never signalled)."""
    import time

    from ._proc import all_uids

    seen: set[int] = set()
    for _ in range(rounds):
        found = [pid for pid, ids in all_uids().items() if uid in ids and _alive(pid)]
        if not found:
            return len(seen)
        for pid in found:
            seen.add(pid)
            _kill_if_uid(pid, uid)
        time.sleep(0.01)
    from .._errors import SandboxError

    raise SandboxError(f"processes of sandbox uid {uid} kept appearing after {rounds} rounds of SIGKILL")
