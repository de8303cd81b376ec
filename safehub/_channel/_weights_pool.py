"""A warm spare for the next load's weights, in a long-running process (opt-in).

Where the weights' pages come from bounds how fast they move: allocating 4 KiB
shared-memory pages runs at about 2 GB/s on the 2-core test machine, and on a VM
whose balloon reports free memory to its hypervisor (that machine) a 2 MiB page
freed seconds ago is slower still (0.1 GB/s: _huge_tmpfs.reports_free_pages). Pages
already allocated and touched are neither. So with ``SAFEHUB_WEIGHTS_POOL_MB=N`` the
host keeps one spare file on its huge-page tmpfs, the size of the last job's weights
(whole 2 MiB pages, at most N MiB), every page allocated and written once (zeros),
and the next job's weights go into it: the runner's ftruncate cuts it to the
weights' size (freeing the rest) and its writes land in pages that are there already
(54-74% of memcpy with loads 5 s apart on that VM, where a new file gets 1% and a
memfd 11-14%: benchmarks/bench_weights_path.py --idle-s 5).

The spare is made on a thread at the lowest CPU priority (nice 19), started once a
job's sandbox has ended (while the host checks and builds its weights), so it uses
a core nothing else wants. Costs, stated: up to N MiB of memory held for as long as
the process lives, and the time to fill them (about 2.5 s for 256 MiB on that VM,
hypervisor faults mostly). A job that finds no spare (a fresh process's first, or
one while the spare is being made) gets what it would without the pool: a new file
on the tmpfs, or, where new 2 MiB pages are cold (that VM), a memfd. Any job's
weights size the next spare (``_huge_tmpfs.note_job_weights``, from _jobs once the
sandbox has ended). Off by default.

The spare is a ``WeightsTmpfile`` like any other: created by the host for the job it
will serve, never seen by another; the proof that no writer is left applies as for
any (_huge_tmpfs.py).
"""

from __future__ import annotations

import logging
import os
import threading
from collections.abc import Callable
from typing import Protocol

__all__ = ["ENV", "Spare", "discard", "note_size", "pool_bytes", "take", "wait_ready"]

logger = logging.getLogger("safehub")

ENV = "SAFEHUB_WEIGHTS_POOL_MB"
_CHUNK = 8 << 20
_HUGE = 2 << 20
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
    """The spare's size from ``SAFEHUB_WEIGHTS_POOL_MB`` (0: no pool)."""
    raw = os.environ.get(ENV, "").strip()
    if not raw:
        return 0
    if not raw.isdigit():
        if raw not in _warned:  # once, not at every load
            _warned.add(raw)
            logger.warning("%s=%r is not a whole number of MiB: no weights pool", ENV, raw)
        return 0
    return int(raw) << 20


class _Pool:
    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.spare: Spare | None = None
        self.filling: threading.Thread | None = None
        self.ready = threading.Event()
        self.pid = os.getpid()


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
    if spare is not None and os.fstat(spare.read_fd).st_size > cap:  # the setting was lowered meanwhile
        spare.close()
        spare = None
    return spare


def note_size(nbytes: int, make: Callable[[], Spare]) -> None:
    """A job's weights were ``nbytes``: unless a spare is ready or being made, start
    one that size (rounded up to whole 2 MiB pages), at most the pool's cap, with
    ``make`` (a new empty file on the huge-page tmpfs). Called
    once a job's sandbox has ended, so the spare is made while the host checks and
    builds its weights, and the next job finds it."""
    cap = pool_bytes()
    if cap == 0 or nbytes <= 0:
        return
    size = min(cap, -(-nbytes // _HUGE) * _HUGE)
    pool = _current()
    with pool.lock:
        if pool.spare is not None or pool.filling is not None:
            return
        pool.filling = threading.Thread(target=_fill, args=(pool, make, size), name="safehub-weights-pool",
                                        daemon=True)
        pool.filling.start()


def wait_ready(timeout: float) -> bool:
    """Whether a spare is ready within ``timeout`` seconds (for tests and benchmarks)."""
    return _current().ready.wait(timeout)


def discard(timeout: float = 60.0) -> None:
    """Close the spare, once a fill in progress has ended (its memory is freed)."""
    pool = _current()
    with pool.lock:
        filling = pool.filling
    if filling is not None:
        filling.join(timeout)
    with pool.lock:
        spare, pool.spare = pool.spare, None
        pool.ready.clear()
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
        zeros = bytes(min(_CHUNK, size))
        for offset in range(0, size, len(zeros)):
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
            pool.ready.set()
