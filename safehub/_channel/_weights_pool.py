"""A warm spare for the next load's weights, in a long-running process.

Where the weights' pages come from bounds how fast they move: allocating 4 KiB
shared-memory pages runs at about 2 GB/s on the 2-core test machine, and on a VM
whose balloon reports free memory to its hypervisor (that machine) a 2 MiB page
freed seconds ago is slower still (0.1 GB/s: _huge_tmpfs.reports_free_pages). Pages
already allocated and touched are neither. So the host keeps one spare file on its
huge-page tmpfs, the size of the last job's weights (whole 2 MiB pages, at most the
cap), every page allocated and written once (zeros), and the next job's weights go
into it: the runner's ftruncate cuts it to the weights' size (freeing the rest) and
its writes land in pages that are there already (54-74% of memcpy with loads 5 s
apart on that VM, where a new file gets 1% and a memfd 11-14%:
benchmarks/bench_weights_path.py --idle-s 5).

When: ``SAFEHUB_WEIGHTS_POOL_MB`` unset (the default), from a process's second job
on: a process that has run two is taken to be a long-running one, and a script that
loads one model pays nothing (no spare, no thread, no mount). ``=N`` keeps one from
the first job on, of at most N MiB; ``=0`` never. The default cap is 1 GiB, or a
sixteenth of the memory the process may use where that is less (the machine's, or
its cgroup's limit: a container's). A spare no job has taken for
``IDLE_S`` seconds (300, as long as the warm worker waits) is freed; the next job
makes another.

The spare is made on a thread at the lowest CPU priority (nice 19), started once
the host is done with a job (its model built, its cache store handed to the
writer, its folder removed: the end of Job.cleanup), so the fill overlaps none of a
load's own work: started while the host checked and built the model, or before the
job folder was removed, it made those parts 10-90 ms slower on the 2-core VM
(benchmarks/bench_weights_loads.py --parts: ``cache_store``, which includes the
folder's removal). For the same reason a job that starts while a spare is being
filled stops the fill (the partial spare is freed): loads back to back get no
spares and pay for none; loads far enough apart for a fill get one. Costs, stated: up to the cap in memory while a spare
waits, and the time to fill it (about 2.5 s for 256 MiB on that VM, hypervisor
faults mostly). A job that finds no spare (a process's first jobs, or one while the
spare is being made) gets what it would without the pool: a new file on the tmpfs,
or, where new 2 MiB pages are cold (that VM), a memfd. Any job's weights size the
next spare (``_huge_tmpfs.note_job_weights``, from Job.cleanup, for backends that
take such files), whether or not the load passed its checks.

The spare is a ``WeightsTmpfile`` like any other: created by the host for the job it
will serve, never seen by another; the proof that no writer is left applies as for
any (_huge_tmpfs.py).
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["DEFAULT_CAP_MIB", "ENV", "IDLE_S", "Spare", "discard", "jobs_before_first_spare", "note_size", "pool_bytes",
           "take", "wait_ready"]

logger = logging.getLogger("safehub")

ENV = "SAFEHUB_WEIGHTS_POOL_MB"
DEFAULT_CAP_MIB = 1024
DEFAULT_AFTER_JOBS = 2  # unset: the first spare is made once a process has run this many jobs
IDLE_S = 300.0  # a spare no job took for this long is freed
_HUGE = 2 << 20  # spares are whole 2 MiB pages, filled one per write: an abort waits for at most one
_warned: set[str] = set()


class Spare(Protocol):
    """What the pool needs of a file (a ``_huge_tmpfs.WeightsTmpfile``, which imports
    this module: the pool is handed a maker, never imports its caller)."""

    fd: int
    read_fd: int
    warm_spare: bool

    def drop_writer(self) -> None: ...

    def close(self) -> None: ...


def pool_bytes() -> int:
    """The cap on a spare's size: ``SAFEHUB_WEIGHTS_POOL_MB`` MiB, the default cap
    when unset, 0 for no pool."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return _default_bytes()
    if not raw.isdigit():
        if raw not in _warned:  # once, not at every load
            _warned.add(raw)
            logger.warning("%s=%r is not a whole number of MiB: no weights pool", ENV, raw)
        return 0
    return int(raw) << 20


@functools.cache
def _default_bytes() -> int:
    """1 GiB, or a sixteenth of this process's memory where that is less (the
    machine's, or its cgroup's limit where lower: a container's), in whole 2 MiB pages."""
    from .._cgroupfs import memory_limit

    try:
        total = os.sysconf("SC_PHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError):  # not reported: no default pool
        return 0
    total = min(total, memory_limit() or total)
    return min(DEFAULT_CAP_MIB << 20, total // 16) // _HUGE * _HUGE


def jobs_before_first_spare() -> int:
    """How many jobs a process runs before its first spare is made: DEFAULT_AFTER_JOBS
    with the pool's setting unset, 1 when set."""
    return DEFAULT_AFTER_JOBS if not os.environ.get(ENV, "").strip() else 1


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spare: Spare | None = None
        self.filling: threading.Thread | None = None
        self.ready = threading.Event()
        self.pid = os.getpid()
        self.jobs = 0  # jobs noted in this process
        self.timer: threading.Timer | None = None  # frees the waiting spare once idle too long
        self.abort = threading.Event()  # a job started while the spare was being filled: stop


_pool = _Pool()


def _current() -> _Pool:
    global _pool
    if _pool.pid != os.getpid():  # a forked child: the parent's spare and thread are not ours
        _pool = _Pool()
    return _pool


def take() -> Spare | None:
    """The ready spare, or None: no pool, or none ready (a job running meanwhile)."""
    cap = pool_bytes()
    if cap == 0:
        return None
    pool = _current()
    with pool.lock:
        spare, pool.spare = pool.spare, None
        pool.ready.clear()
        _cancel_timer(pool)
        if pool.filling is not None:  # loads back to back: the fill would only slow this one down
            pool.abort.set()
    if spare is not None and os.fstat(spare.read_fd).st_size > cap:  # the setting was lowered meanwhile
        spare.close()
        spare = None
    return spare


def note_size(nbytes: int, make: Callable[[], Spare]) -> None:
    """A job's weights were ``nbytes``: unless a spare is ready or being made, start
    one that size (rounded up to whole 2 MiB pages), at most the pool's cap, with
    ``make`` (a new empty file on the huge-page tmpfs). Called once the host is
    done with a job, so that the next job finds it. With the pool's default
    setting, not before the process's second job (see the module docstring)."""
    cap = pool_bytes()
    if cap == 0 or nbytes <= 0:
        return
    size = min(cap, -(-nbytes // _HUGE) * _HUGE)
    pool = _current()
    with pool.lock:
        pool.jobs += 1
        if pool.spare is not None or pool.filling is not None or pool.jobs < jobs_before_first_spare():
            return
        pool.abort.clear()
        pool.filling = threading.Thread(target=_fill, args=(pool, make, size), name="safehub-weights-pool",
                                        daemon=True)
        pool.filling.start()


def wait_ready(timeout: float) -> bool:
    """Whether a spare is ready within ``timeout`` seconds (for tests and benchmarks)."""
    return _current().ready.wait(timeout)


def discard(timeout: float = 60.0) -> None:
    """Close the spare, once a fill in progress has ended (its memory is freed), and
    forget the jobs counted: the pool is as in a new process (for tests and benchmarks)."""
    pool = _current()
    with pool.lock:
        filling = pool.filling
        if filling is not None:
            pool.abort.set()
    if filling is not None:
        filling.join(timeout)
    with pool.lock:
        spare, pool.spare = pool.spare, None
        pool.ready.clear()
        pool.jobs = 0
        _cancel_timer(pool)
    if spare is not None:
        spare.close()


def _fill(pool: _Pool, make: Callable[[], Spare], size: int) -> None:
    spare = None
    try:
        try:
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)  # this thread only, on Linux
        except OSError:
            pass
        spare = make()
        os.ftruncate(spare.fd, size)  # first: huge=within_size gives 2 MiB pages inside the size
        zeros = memoryview(bytes(_HUGE))  # sliced without a copy: a cap of odd MiB ends mid-page
        for offset in range(0, size, _HUGE):
            if pool.abort.is_set():  # checked per 2 MiB page: a job waits on at most one
                raise InterruptedError(errno.ECANCELED, "a job started while it was being filled")
            os.pwrite(spare.fd, zeros[: size - offset], offset)
        spare.drop_writer()  # while it waits, no descriptor a fork of the host could copy writes it
    except OSError as exc:
        logger.debug("no spare for the weights pool (%s)", exc.strerror)
        if spare is not None:
            spare.close()
        spare = None
    with pool.lock:
        pool.filling = None
        if spare is not None:
            spare.warm_spare = True
            if pool.spare is not None:
                pool.spare.close()
            pool.spare = spare
            _expire_later(pool, spare)  # before ready: whoever sees the spare sees its timer
            pool.ready.set()


def _expire_later(pool: _Pool, spare: Spare) -> None:
    """Free ``spare`` once it has waited ``IDLE_S`` seconds with no job taking it.
    One timer thread at a time (call under pool.lock): taking the spare cancels it,
    so a process that loads every second does not gather a thread per load."""
    def expire() -> None:
        with pool.lock:
            if pool.spare is not spare:
                return
            pool.spare = None
            pool.ready.clear()
            pool.timer = None
        logger.debug("weights pool: no job took the spare in %g s; freed", IDLE_S)
        spare.close()

    _cancel_timer(pool)
    pool.timer = threading.Timer(IDLE_S, expire)
    pool.timer.name = "safehub-weights-pool-idle"
    pool.timer.daemon = True
    pool.timer.start()


def _cancel_timer(pool: _Pool) -> None:
    if pool.timer is not None:
        pool.timer.cancel()
        pool.timer = None
