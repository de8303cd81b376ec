"""A pids cgroup for one job, when this process may make one.

RLIMIT_NPROC does not bind root, and a polling watchdog loses the race against a
fork bomb on a busy machine (it only gets its share of CPU). So where the job
would run as uid 0 (the landlock and process backends as root), safehub puts it
in a cgroup of its own with ``pids.max``: the kernel refuses the extra forks,
``pids.current`` counts the tree in O(1), and every process in it can be killed.

cgroup v2 is used where the pids controller is enabled for a cgroup we can
write; otherwise a mounted cgroup v1 pids hierarchy.
"""

from __future__ import annotations

import os
import secrets
import signal
import time
from pathlib import Path

from .._cgroupfs import mounts, own_paths

__all__ = ["PidsCgroup"]


def _candidates() -> list[tuple[str, Path]]:
    """Where a job cgroup may go, nearest first: below our own cgroup (so any
    limit on us also binds the job), then at the hierarchy's root."""
    own = own_paths("pids")
    out: list[tuple[str, Path]] = []
    for mountpoint, fstype, options in mounts():
        if fstype == "cgroup2":
            root = Path(mountpoint)
            for parent in (root / own.get("v2", "/").lstrip("/"), root):
                try:
                    enabled = (parent / "cgroup.subtree_control").read_text().split()
                except OSError:
                    continue
                if "pids" in enabled:
                    out.append(("v2", parent))
        elif fstype == "cgroup" and "pids" in options:
            root = Path(mountpoint)
            out += [("v1", root / own.get("pids", "/").lstrip("/")), ("v1", root)]
    return out


class PidsCgroup:
    def __init__(self, version: str, path: Path) -> None:
        self.version = version
        self.path = path

    @classmethod
    def create(cls, max_pids: int) -> "PidsCgroup | None":
        """A fresh cgroup with ``pids.max = max_pids``, or None if none can be made."""
        for version, root in _candidates():
            path = root / f"safehub-{secrets.token_hex(6)}"
            try:
                path.mkdir(mode=0o755)
            except OSError:
                continue
            try:
                (path / "pids.max").write_text(str(int(max_pids)))
            except OSError:
                path.rmdir()
                continue
            return cls(version, path)
        return None

    @property
    def procs_file(self) -> str:
        return str(self.path / "cgroup.procs")

    def current(self) -> int:
        try:
            return int((self.path / "pids.current").read_text())
        except (OSError, ValueError):
            return 0

    def hit_limit(self) -> bool:
        """Whether a fork was ever refused for the limit (pids.events max > 0)."""
        try:
            for line in (self.path / "pids.events").read_text().splitlines():
                key, _, value = line.partition(" ")
                if key == "max":
                    return int(value) > 0
        except (OSError, ValueError):
            pass
        return False

    def pids(self) -> list[int]:
        try:
            return [int(p) for p in (self.path / "cgroup.procs").read_text().split()]
        except (OSError, ValueError):
            return []

    def kill(self, timeout: float = 30.0) -> None:
        """SIGKILL everything in the cgroup and wait until it is empty."""
        kill_file = self.path / "cgroup.kill"
        deadline = time.monotonic() + timeout
        while True:
            if self.version == "v2" and kill_file.exists():
                try:
                    kill_file.write_text("1")
                except OSError:
                    pass
            pids = self.pids()
            if not pids:
                return
            for pid in pids:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass
            if time.monotonic() > deadline:
                from .._errors import SandboxError

                raise SandboxError(f"processes in {self.path} survived SIGKILL")
            time.sleep(0.01)

    def remove(self) -> None:
        self.kill()
        for _ in range(500):
            try:
                self.path.rmdir()
                return
            except FileNotFoundError:
                return
            except OSError:
                time.sleep(0.01)  # exiting processes may still be charged
