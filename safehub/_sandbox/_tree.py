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
