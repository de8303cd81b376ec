"""Resource limits: the rlimits the runner sets on itself, and the host-side
watchdog that enforces the rest on the whole process tree.

Without a delegated cgroup there is no kernel-wide budget for a process tree, so
limits come in two layers:

* rlimits the runner applies to itself before any repo code runs (inherited by
  every child): address space as a backstop for memory, file size, CPU time,
  cores off, and RLIMIT_NPROC. RLIMIT_NPROC counts per user, and root is exempt,
  so the bubblewrap backend runs the job as a fresh uid of its own in a fresh user
  namespace, where the count covers exactly the sandbox's processes;
* a watchdog polling the tree from the host (/proc, safehub/_sandbox/_proc.py): wall clock, summed memory,
  process count, and what the job has written to disk. It reports which limit
  it enforced, so the caller gets a typed error naming it.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Callable, Sequence
from dataclasses import field
from pathlib import Path

from .._records import record
from ._proc import NoChildrenFile, ProcessGone, children, cpu_seconds, rss_bytes

__all__ = ["Limits", "confine_rlimits", "Watchdog", "killed_by_signal", "tree_pids", "tree_usage_bytes"]

# Headroom above the memory limit for RLIMIT_AS: virtual size runs well above
# resident size (torch maps ~0.7 GB at import; thread stacks), and the watchdog
# measures resident memory. RLIMIT_AS only stops what the watchdog is too slow for.
AS_HEADROOM = 2 * 1024**3
POLL_S = 0.05
DISK_POLL_S = 0.5


@record(frozen=True)
class Limits:
    """Resource limits for one sandboxed run. ``None`` means "no limit of this kind"."""

    timeout_s: float = 600.0
    memory_bytes: int | None = 8 * 1024**3
    max_pids: int | None = 256
    max_file_bytes: int | None = 8 * 1024**3
    cpu_time_s: int | None = None
    tmpfs_bytes: int = 512 * 1024**2
    # Everything the job may leave on the host's disk (out/ plus, for backends
    # without tmpfs, the scratch folders) and how many files it may create there.
    disk_bytes: int | None = 16 * 1024**3
    max_files: int = 100_000
    # May a warm worker (safehub/_worker.py) run the job, in a child it forks? Off:
    # always a fresh sandbox. SAFEHUB_WORKER=0 turns it off for every job.
    warm_worker: bool = True

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "timeout_s": self.timeout_s,
            "memory_bytes": self.memory_bytes,
            "max_pids": self.max_pids,
            "max_file_bytes": self.max_file_bytes,
            "cpu_time_s": self.cpu_time_s,
            "tmpfs_bytes": self.tmpfs_bytes,
            "disk_bytes": self.disk_bytes,
            "max_files": self.max_files,
            "warm_worker": self.warm_worker,
        }



def confine_rlimits(limits: Limits) -> dict[str, int | list[int]]:
    """The rlimits the runner sets: an int is soft == hard (repo code cannot raise
    it), a pair is [soft, hard]."""
    out: dict[str, int | list[int]] = {"CORE": 0}
    if limits.memory_bytes is not None:
        out["AS"] = int(limits.memory_bytes) + AS_HEADROOM
    if limits.max_file_bytes is not None:
        out["FSIZE"] = int(limits.max_file_bytes)
    if limits.cpu_time_s is not None:
        # SIGXCPU at the soft limit (kills unless handled), SIGKILL a second later.
        out["CPU"] = [int(limits.cpu_time_s), int(limits.cpu_time_s) + 1]
    if limits.max_pids is not None:
        out["NPROC"] = int(limits.max_pids)
    return out


def killed_by_signal(returncode: int | None, limits: Limits | None = None, peak_cpu_s: float = 0.0) -> str | None:
    """Map a death by an rlimit signal to the limit (bwrap and the reaper report
    128+sig). SIGKILL counts as the CPU limit when the watchdog saw the tree's
    busiest process near it (the hard limit, for a repo that ignored SIGXCPU)."""
    if returncode is None:
        return None
    sig = -returncode if returncode < 0 else returncode - 128 if returncode > 128 else 0
    if sig == signal.SIGXCPU:
        return "cpu"
    if sig == signal.SIGXFSZ:
        return "disk"
    if sig == signal.SIGKILL and limits is not None and limits.cpu_time_s is not None:
        if peak_cpu_s >= limits.cpu_time_s - 0.5:
            return "cpu"
    return None


def tree_usage_bytes(paths: Sequence[Path], max_files: int) -> tuple[int, int]:
    """Bytes allocated and entries under ``paths``, never following links.
    Stops counting once ``max_files`` is passed."""
    total = 0
    count = 0
    stack = [str(p) for p in paths]
    while stack and count <= max_files:
        top = stack.pop()
        try:
            with os.scandir(top) as it:
                for entry in it:
                    count += 1
                    try:
                        st = entry.stat(follow_symlinks=False)
                    except OSError:
                        continue
                    total += st.st_blocks * 512
                    if entry.is_dir(follow_symlinks=False):
                        stack.append(entry.path)
        except OSError:
            continue
    return total, count


@record
class Watchdog:
    """Polls one sandboxed tree until its leader exits or a limit is hit.

    ``root_pid`` is the host pid whose descendants are the sandbox (for
    bubblewrap, the outer bwrap process). ``exclude`` are pids in that tree that
    are not sandbox processes (they are not counted). ``disk_paths`` are host
    folders the job writes; ``tmpfs_probes`` returns (used, size) pairs for
    size-capped tmpfs mounts the host cannot see directly.
    """

    limits: Limits
    root_pid: int
    disk_paths: Sequence[Path] = ()
    tmpfs_probes: Callable[[], list[tuple[int, int]]] | None = None
    # (processes, a fork was refused) from a pids cgroup, instead of counting the tree.
    pids_counter: Callable[[], tuple[int, bool]] | None = None
    exclude: set[int] = field(default_factory=set)
    peak_rss: int = 0
    peak_pids: int = 0
    peak_cpu_s: float = 0.0
    tmpfs_used: int = 0
    largest_rss: int = 0  # the largest one process's RSS at the last poll

    def check(self, started: float) -> str | None:
        """One poll. Returns the limit that was hit, or None."""
        limits = self.limits
        if time.monotonic() - started > limits.timeout_s:
            return "timeout"
        if self.pids_counter is not None:
            count, refused = self.pids_counter()
            if refused or (limits.max_pids is not None and count >= limits.max_pids):
                return "pids"
        try:
            tree = [pid for pid in tree_pids(self.root_pid) if pid not in self.exclude]
        except ProcessGone:
            return None
        count = len(tree)
        if self.pids_counter is not None:
            count, refused = self.pids_counter()
            if refused:
                return "pids"
        self.peak_pids = max(self.peak_pids, count)
        if limits.max_pids is not None and count >= limits.max_pids:
            return "pids"
        if limits.cpu_time_s is not None:
            for pid in tree:
                cpu = cpu_seconds(pid)
                if cpu is not None:
                    self.peak_cpu_s = max(self.peak_cpu_s, cpu)
        if limits.memory_bytes is not None:
            rss = largest = 0
            for pid in tree:
                one = rss_bytes(pid)
                if one is None:
                    continue
                rss += one
                largest = max(largest, one)
            self.largest_rss = largest
            # Files in the sandbox's tmpfs mounts are memory too (last disk poll).
            rss += self.tmpfs_used
            self.peak_rss = max(self.peak_rss, rss)
            # Summed RSS counts pages shared after fork once per process; confirm
            # with PSS (slower, so only when RSS says the limit is crossed).
            if rss >= limits.memory_bytes and _pss(tree) + self.tmpfs_used >= limits.memory_bytes:
                return "memory"
        return None

    def check_disk(self) -> str | None:
        limits = self.limits
        if self.disk_paths:
            used, files = tree_usage_bytes(self.disk_paths, limits.max_files)
            if files > limits.max_files:
                return "disk"
            if limits.disk_bytes is not None and used > limits.disk_bytes:
                return "disk"
        if self.tmpfs_probes is not None:
            probes = self.tmpfs_probes()
            self.tmpfs_used = sum(used for used, _ in probes)
            for used, size in probes:
                # A full tmpfs means the job ran into the cap (ENOSPC inside). But tmpfs is
                # memory: filled past the memory limit, that is the limit the job hit,
                # whichever of the two polls saw it first. (The largest single process is
                # the lower bound of the tree's memory: summed RSS counts shared pages twice.)
                if size and used >= size - 64 * 1024:
                    if limits.memory_bytes is not None and self.largest_rss + self.tmpfs_used >= limits.memory_bytes:
                        return "memory"
                    return "disk"
        return None

    def run(self, poll: Callable[[], int | None], kill: Callable[[], None],
            wait: Callable[[float], object] | None = None) -> str | None:
        """Poll until ``poll()`` returns an exit status or a limit is hit; on a
        limit, call ``kill()`` (which must take the whole tree) and return it.
        ``wait(seconds)`` sleeps between polls (default ``time.sleep``); one that
        returns early when the end is known (a reply on a socket) saves the rest."""
        from .. import _host_torch

        _host_torch.sandbox_started()  # the host's own import torch may now use the CPU
        started = time.monotonic()
        next_disk = started
        interval = 0.01
        while poll() is None:
            reason = self.check(started)
            now = time.monotonic()
            if reason is None and now >= next_disk:
                reason = self.check_disk()
                next_disk = now + DISK_POLL_S
            if reason is not None:
                kill()
                return reason
            (wait or time.sleep)(interval)
            interval = min(POLL_S, interval * 2)
        return None


def tree_pids(root_pid: int, *, recursive: bool = True) -> list[int]:
    """Pids of every descendant of ``root_pid`` (its children only, without
    ``recursive``), parents first; read from /proc, through psutil on a kernel
    without the children files. Raises ProcessGone once it has exited."""
    try:
        return children(root_pid, recursive=recursive)
    except NoChildrenFile:
        pass
    import psutil

    try:
        return [p.pid for p in psutil.Process(root_pid).children(recursive=recursive)]
    except psutil.Error:
        raise ProcessGone(f"process {root_pid} is gone") from None


def _pss(tree: Sequence[int]) -> int:
    import psutil

    total = 0
    for pid in tree:
        try:
            total += psutil.Process(pid).memory_full_info().pss
        except (psutil.Error, AttributeError):
            total += rss_bytes(pid) or 0
    return total
