"""What the watchdog and the warm worker read of a process tree, straight from
``/proc`` (Linux), without importing psutil.

Every load polls its sandbox's tree a dozen times while the host's ``import
torch`` runs on a thread: psutil cost 9-11 ms to import in a fresh process, and
each ``children(recursive=True)`` reads ``/proc/<pid>/stat`` of every process on
the machine (1.5 ms with 70 processes, more on a busy host), all of it holding
the GIL the import needs. Here a tree is walked through
``/proc/<pid>/task/<tid>/children`` (what the kernel lists per thread), so a
poll reads a few small files of the sandbox's own processes.

Like psutil's, each answer is a snapshot of a tree that may be changing; callers
poll again. A kernel without ``CONFIG_PROC_CHILDREN`` has no ``children`` files:
:func:`children` raises :class:`NoChildrenFile` and the caller uses psutil.
A process that is gone answers ``ProcessGone`` (or None where documented).
"""

from __future__ import annotations

import os

__all__ = ["ProcessGone", "NoChildrenFile", "children", "create_time", "is_zombie", "rss_bytes", "cpu_seconds",
           "uids", "all_uids"]

_TICKS = os.sysconf("SC_CLK_TCK")
_PAGE = os.sysconf("SC_PAGE_SIZE")
_boot_time: float | None = None


class ProcessGone(OSError):
    """The process exited (or its pid was never there)."""


class NoChildrenFile(OSError):
    """This kernel has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN off)."""


def _read(path: str) -> bytes:
    with open(path, "rb", buffering=0) as f:
        return f.read(65536)


def _stat_fields(pid: int) -> list[bytes]:
    """The fields of /proc/<pid>/stat after the command name (field 3 onwards:
    index 0 is the state). The name is in parentheses and may hold spaces and
    parentheses itself, so the split is at the last ')'."""
    try:
        data = _read(f"/proc/{int(pid)}/stat")
    except OSError as exc:
        raise ProcessGone(exc.errno, f"process {pid}: {exc.strerror}") from None
    return data[data.rfind(b")") + 2:].split()


def children(pid: int, *, recursive: bool = True) -> list[int]:
    """Pids of ``pid``'s children (and theirs, with ``recursive``), parents first.
    A process that exits while the tree is read is left out."""
    if not _children_files():
        raise NoChildrenFile("/proc/<pid>/task/<tid>/children: not provided by this kernel")
    out: list[int] = []
    seen = {int(pid)}
    stack = [int(pid)]
    while stack:
        parent = stack.pop()
        try:
            tids = os.listdir(f"/proc/{parent}/task")
        except OSError as exc:
            if parent == pid:
                raise ProcessGone(exc.errno, f"process {pid}: {exc.strerror}") from None
            continue
        for tid in tids:
            try:
                data = _read(f"/proc/{parent}/task/{tid}/children")
            except OSError:  # the thread exited
                continue
            for word in data.split():
                child = int(word)
                if child not in seen:  # a pid reused mid-walk cannot loop us
                    seen.add(child)
                    out.append(child)
                    if recursive:
                        stack.append(child)
    return out


_HAS_CHILDREN: list[bool] = []


def _children_files() -> bool:
    if not _HAS_CHILDREN:
        _HAS_CHILDREN.append(os.path.exists(f"/proc/self/task/{os.getpid()}/children"))
    return _HAS_CHILDREN[0]


def _boot() -> float:
    global _boot_time
    if _boot_time is None:
        for line in _read("/proc/stat").splitlines():
            if line.startswith(b"btime"):
                _boot_time = float(line.split()[1])
                break
        else:
            raise OSError("/proc/stat has no btime line")
    return _boot_time


def create_time(pid: int) -> float:
    """Seconds since the epoch when ``pid`` started, as psutil computes it (boot
    time plus the start tick), so a record written by either compares equal."""
    return float(_stat_fields(pid)[19]) / _TICKS + _boot()


def is_zombie(pid: int) -> bool:
    return _stat_fields(pid)[0] == b"Z"


def cpu_seconds(pid: int) -> float | None:
    """User plus system CPU time of ``pid`` (None: gone)."""
    try:
        fields = _stat_fields(pid)
    except ProcessGone:
        return None
    return (int(fields[11]) + int(fields[12])) / _TICKS


def rss_bytes(pid: int) -> int | None:
    """Resident set size of ``pid`` (None: gone)."""
    try:
        data = _read(f"/proc/{int(pid)}/statm")
    except OSError:
        return None
    return int(data.split()[1]) * _PAGE


def uids(pid: int) -> tuple[int, int, int] | None:
    """The real, effective and saved uid of ``pid`` (None once it is gone)."""
    try:
        data = _read(f"/proc/{int(pid)}/status")
    except OSError:
        return None
    for line in data.splitlines():
        if line.startswith(b"Uid:"):
            real, effective, saved = (int(word) for word in line.split()[1:4])
            return real, effective, saved
    return None


def all_uids() -> dict[int, tuple[int, int, int]]:
    """:func:`uids` of every process on the machine, by pid (a snapshot)."""
    found = {}
    for name in os.listdir("/proc"):
        if name.isdigit():
            ids = uids(int(name))
            if ids is not None:
                found[int(name)] = ids
    return found
