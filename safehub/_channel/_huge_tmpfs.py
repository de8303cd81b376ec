"""Weights in 2 MiB pages without root: a file on a tmpfs of the host's own.

A memfd's pages follow the machine's ``shmem_enabled``, which only root sets and
which is ``never`` by default: the runner's writes then allocate 4 KiB pages, and
that allocation bounds them (about 2 GB/s, 16-18% of memcpy, on the 2-core test
machine). A tmpfs mounted with ``huge=within_size`` gets 2 MiB pages whatever that
setting (about 9 GB/s there, 85-90%), and since Linux 5.2 a user namespace may
mount one. So, once per host process, ``_huge_tmpfs_helper.py`` (trusted, standard
library only) enters a user and mount namespace, creates a detached tmpfs there and
passes its descriptor back; the host keeps it for the life of the process. Nothing
is mounted anywhere anyone can see, and the files are ``O_TMPFILE``: unnamed, gone
with their last descriptor (a crash leaves nothing behind).

Per job (``WeightsTmpfile``), for a backend in whose sandbox every process has ended
when ``run`` returns (bubblewrap's pid namespace, and the warm worker inside it):

* the host creates an unnamed file there and opens it a second time, read-only
  (a second open file description, via /proc/self/fd);
* the runner gets the read-write one and writes the safetensors bytes into it as
  into a memfd (ftruncate + pwrite); the host closes its own read-write descriptor
  as soon as the sandbox has its copy (``drop_writer``: a fork of the host later
  then copies none);
* once the sandbox has ended the host proves no writer is left anywhere: the kernel grants a write lease (``F_SETLEASE``,
  ``F_WRLCK``) only while the file's open-for-write count is zero beyond the
  caller's own. Every descriptor and every writable shared mapping of the file
  holds an open-for-write file, so a stray process that kept one (or a mapping)
  makes the lease fail: :class:`~safehub._errors.WeightsSealError`, nothing built.
  Once proven, nobody can write again: the file has no name, the mount is
  reachable only through the host's descriptor, and the host holds the file only
  read-only. That is the guarantee a memfd's seals give (_memfd.py), reached
  another way, because a tmpfs file cannot be sealed.

Backends without a pid namespace (landlock, process), a failed mount (no user
namespaces, an old kernel, leases turned off), ``shmem_enabled`` already giving
memfds huge pages, or ``SAFEHUB_HUGE_TMPFS=0`` keep the sealed memfd: the helper's
failure is logged once and never fails a load. So does a VM whose balloon reports
free pages to its hypervisor (``reports_free_pages``), unless
``SAFEHUB_HUGE_TMPFS=1``: there a 2 MiB page is fast only when reused at once, and
ten times slower than 4 KiB pages a few seconds later, which is how loads come.
There the weights pool's warm spares (_weights_pool.py: by default from a process's
second job on) are the only files a job gets here, since their pages are allocated
beforehand, and the helper runs only when the first spare is made, on the pool's
thread: a process that loads once never starts it.
"""

from __future__ import annotations

import array
import errno
import fcntl
import functools
import logging
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

from .._config import env_flag
from .._errors import WeightsSealError
from ._limits import ChannelLimits
from ._memfd import ClosedWhenCollected, checked_weights_size, shmem_huge_setting
from ._weights_pool import note_size, pool_bytes, take

__all__ = ["ENV_FLAG", "WeightsTmpfile", "prepare", "mount_fd", "note_job_weights", "reports_free_pages", "status",
           "weights_tmpfile"]

logger = logging.getLogger("safehub")

ENV_FLAG = "SAFEHUB_HUGE_TMPFS"
VIRTIO_DEVICES = "/sys/bus/virtio/devices"
VIRTIO_ID_BALLOON = "0x0005"
VIRTIO_BALLOON_F_REPORTING = 5
HELPER = Path(__file__).with_name("_huge_tmpfs_helper.py")
HELPER_TIMEOUT_S = 10.0
# Another thread's fork between its clone and exec holds every descriptor for a moment
# (close-on-exec ones included): the lease is retried for about this long before the
# load fails. A process that really kept the file holds it far longer.
LEASE_RETRY_S = 0.2
_HINT = "the repo is hostile or broken; nothing it returned was built"


class _Mount:
    """The process's tmpfs: the helper while it runs, then its descriptor or why not."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.sock: socket.socket | None = None
        self.fd: int | None = None
        self.why_not: str | None = None
        self.pid = os.getpid()


_lock = threading.Lock()
_mount: _Mount | None = None


def _disabled() -> str | None:
    """Why not to have the tmpfs here at all, or None. ``SAFEHUB_HUGE_TMPFS``: unset
    for automatic, 0 for never, 1 for wherever it can be mounted."""
    if not sys.platform.startswith("linux"):
        return "not Linux"
    raw = os.environ.get(ENV_FLAG, "").strip()
    if raw and not env_flag(ENV_FLAG):
        return f"{ENV_FLAG}=0"
    if shmem_huge_setting() in ("always", "within_size", "force"):
        return "memfds already get 2 MiB pages (shmem_enabled), and their seals are the simpler proof"
    if not pool_bytes():  # the weights pool's warm spares are the way round the next reason
        return _no_new_files()
    return None


def _no_new_files() -> str | None:
    """Why a job gets no new file there (a memfd instead; the weights pool's warm
    spare still), or None."""
    if not os.environ.get(ENV_FLAG, "").strip() and reports_free_pages():
        return (f"this VM reports free memory to its hypervisor (a virtio balloon with free page reporting), so a "
                f"2 MiB page freed a few seconds ago is slow to use again: {ENV_FLAG}=1 to use it anyway")
    return None


@functools.cache
def reports_free_pages(root: str = VIRTIO_DEVICES) -> bool:
    """Whether a virtio balloon here has free page reporting (Firecracker, QEMU's
    ``free-page-reporting=on``): the guest hands every free 2 MiB block back to the
    hypervisor about two seconds after it was freed, and the first touch of such a
    block later faults in the hypervisor, page by page. Measured on the 2-core test
    machine (Firecracker): 2 MiB pages taken 5 s after the last were freed fill at
    0.1-0.2 GB/s, against 9 GB/s reused at once, and 2 GB/s for 4 KiB pages (which
    mostly come from blocks too small to be reported); a fresh load of 47 MB of
    weights spent 0.5 s more in the runner (benchmarks/bench_weights_path.py
    --idle-s, bench_fresh.py)."""
    try:
        devices = os.listdir(root)
    except OSError:
        return False
    for name in devices:
        try:
            with open(os.path.join(root, name, "device"), encoding="ascii") as f:
                device = f.read().strip()
            if device != VIRTIO_ID_BALLOON:
                continue
            with open(os.path.join(root, name, "features"), encoding="ascii") as f:
                features = f.read().strip()  # one character per feature bit, bit 0 first
        except OSError:
            continue
        if features[VIRTIO_BALLOON_F_REPORTING:VIRTIO_BALLOON_F_REPORTING + 1] == "1":
            return True
    return False


def _current() -> _Mount:
    """This process's mount state, the helper started if needed (call under _lock)."""
    global _mount
    if _mount is not None and _mount.pid != os.getpid():  # a forked child: the parent's helper is not ours
        _mount = None
    if _mount is None:
        _mount = _Mount()
        ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            _mount.proc = subprocess.Popen(
                [sys.executable, "-I", "-S", str(HELPER), str(theirs.fileno())], pass_fds=(theirs.fileno(),),
                stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env={})
        except OSError as exc:
            ours.close()
            _mount.why_not = f"could not start the helper ({exc.strerror})"
        else:
            _mount.sock = ours
        finally:
            theirs.close()
    return _mount


def prepare() -> None:
    """Start the helper now (it takes 20-40 ms, on another core) so that the mount is
    ready when a job needs it. Does nothing once started, where turned off, or where
    jobs get no new files there (only the pool's spares, whose thread mounts it)."""
    if _disabled() is None and _no_new_files() is None:
        with _lock:
            _current()


def mount_fd() -> int | None:
    """The process's huge-page tmpfs (a mount descriptor), or None where it cannot be
    had (why: ``status()``). Waits for the helper the first time. The switches
    (``_disabled``) are read on every call; the helper runs once per process."""
    if _disabled() is not None:
        return None
    with _lock:
        m = _current()
        if m.sock is not None:
            _collect(m)
        return m.fd


def _collect(m: _Mount) -> None:
    assert m.sock is not None and m.proc is not None
    sock, proc = m.sock, m.proc
    m.sock = None
    fds = array.array("i")
    try:
        sock.settimeout(HELPER_TIMEOUT_S)
        msg, ancdata, _flags, _addr = sock.recvmsg(16, socket.CMSG_SPACE(fds.itemsize))
        for level, kind, data in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                fds.frombytes(data[: len(data) - len(data) % fds.itemsize])
    except OSError as exc:
        msg = b""
        m.why_not = f"the helper did not answer ({exc})"
    finally:
        sock.close()
    try:
        _, err = proc.communicate(timeout=HELPER_TIMEOUT_S)
    except subprocess.TimeoutExpired:
        proc.kill()
        _, err = proc.communicate()
    if msg == b"ok" and len(fds) == 1 and proc.returncode == 0:
        m.fd = fds[0]
        why = _probe(m.fd)
        if why is None:
            return
        os.close(m.fd)
        m.fd = None
        m.why_not = why
    else:
        for fd in fds:
            os.close(fd)
        m.why_not = m.why_not or (f"the helper failed (exit {proc.returncode}): "
                                  f"{err.decode('utf-8', 'replace').strip()[:200]}")
    logger.debug("weights stay in a memfd (4 KiB pages unless root set shmem_enabled): no tmpfs of huge pages: %s",
                 m.why_not)


def _probe(mount: int) -> str | None:
    """None when a file can be made there and a write lease taken on it (the proof
    every job relies on), else why not."""
    try:
        w = WeightsTmpfile(mount)
    except OSError as exc:
        return f"cannot create a file on it ({exc.strerror})"
    try:
        w.drop_writer()
        _lease_once(w.read_fd)
    except OSError as exc:
        return f"no write lease on its files ({exc.strerror}; fs.leases-enable?)"
    finally:
        w.close()
    return None


def status() -> dict[str, Any]:
    """For ``safehub doctor``: whether jobs' weights get new files here (2 MiB pages),
    or why not; and the weights pool's cap when it is on (its spares are files here
    even where new ones are not)."""
    why = _disabled()
    if why is None and mount_fd() is None:
        with _lock:
            why = _current().why_not
    pool = pool_bytes() >> 20 if why is None else 0  # no mount, no spares
    if why is None:
        why = _no_new_files()
    return {"huge_tmpfs": why is None, **({"why_not": why} if why is not None else {}),
            **({"weights_pool_mb": pool} if pool else {})}


def note_job_weights(nbytes: int) -> None:
    """The host is done with a job whose weights were ``nbytes`` (Job.cleanup): the
    weights pool, when on, makes its next spare that size (_weights_pool.note_size)."""
    if pool_bytes() and _disabled() is None:
        note_size(nbytes, _new_spare)


def _new_spare() -> WeightsTmpfile:
    """A new file for the weights pool (on its thread: the first mounts the tmpfs)."""
    mount = mount_fd()
    if mount is None:
        raise OSError(errno.ENODEV, "no huge-page tmpfs")
    return WeightsTmpfile(mount)


def weights_tmpfile() -> WeightsTmpfile | None:
    """A new file for one job's weights on the process's tmpfs (the weights pool's
    warm spare when there is one: _weights_pool.py), or None (use a memfd)."""
    if _disabled() is not None:
        return None
    spare = take()
    if isinstance(spare, WeightsTmpfile):
        try:
            spare.reopen_writer()
            return spare
        except OSError:
            spare.close()
    if _no_new_files() is not None:  # checked before mounting: a first job here never waits for the helper
        return None
    mount = mount_fd()
    if mount is None:
        return None
    try:
        return WeightsTmpfile(mount)
    except OSError as exc:  # e.g. out of memory for an inode: the memfd may still work
        logger.debug("no weights file on the huge-page tmpfs (%s); a memfd instead", exc.strerror)
        return None


class WeightsTmpfile(ClosedWhenCollected):
    """One job's weights file (see the module docstring). ``fd`` (read-write) goes to
    the sandbox; ``sealed_fd`` proves no writer is left and returns the host's
    read-only descriptor. Owned by the host's Job: ``close()`` (idempotent).

    The host holds the read-write descriptor only until the sandbox has its copy
    (``drop_writer``, called right after the spawn or the send to the warm worker):
    a child forked from the host (multiprocessing, a DataLoader's workers) while the
    host still held it would keep the file open for writing for as long as it
    lives, and the proof would fail. A fork in that window (milliseconds) fails the
    load, closed; the error says so."""

    channel = "huge-tmpfs"
    warm_spare = False  # True for the weights pool's spare (_weights_pool.py)

    def __init__(self, mount: int) -> None:
        # O_EXCL: never linkable into any folder, even by whoever holds the descriptor.
        self.fd = os.open(".", os.O_TMPFILE | os.O_EXCL | os.O_RDWR | os.O_CLOEXEC, 0o600, dir_fd=mount)
        try:
            # A second open file description: the lease counts opens, and the sandbox's
            # copies of ``fd`` share its description with the host's.
            self.read_fd = os.open(f"/proc/self/fd/{self.fd}", os.O_RDONLY | os.O_CLOEXEC)
        except OSError:
            os.close(self.fd)
            raise
        self._proven = False

    def size(self) -> int:
        """The file's size now (before any proof: for the weights pool's sizing only)."""
        return os.fstat(self.read_fd).st_size

    def drop_writer(self) -> None:
        """Close the host's read-write descriptor (the sandbox has its own copy, or
        the file waits in the weights pool). Idempotent."""
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)

    def reopen_writer(self) -> None:
        """A read-write descriptor again, for the job the weights pool hands this to."""
        if self.fd < 0:
            self.fd = os.open(f"/proc/self/fd/{self.read_fd}", os.O_RDWR | os.O_CLOEXEC)

    def sealed_fd(self, limits: ChannelLimits) -> int:
        """The read-only descriptor, once no process can write the file any more, its
        size checked against the weights cap. Call only after every process of the
        sandbox has ended. Raises before anything is mapped."""
        if self.read_fd < 0:
            raise WeightsSealError("the job's weights file was already closed", hint=_HINT)
        if not self._proven:
            self.drop_writer()
            _prove_no_writer(self.read_fd)
            self._proven = True
        checked_weights_size(self.read_fd, limits, what="weights file")
        return self.read_fd

    def close(self) -> None:
        for name in ("fd", "read_fd"):
            fd = getattr(self, name, -1)
            if fd >= 0:
                setattr(self, name, -1)
                os.close(fd)


def _lease_once(fd: int) -> None:
    """Take a write lease on ``fd`` and drop it at once, or raise OSError (EAGAIN:
    another open file description of the file is open for writing)."""
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_WRLCK)
    fcntl.fcntl(fd, fcntl.F_SETLEASE, fcntl.F_UNLCK)


def _prove_no_writer(fd: int) -> None:
    deadline = time.monotonic() + LEASE_RETRY_S
    delay = 0.001
    while True:
        try:
            _lease_once(fd)
        except OSError as exc:
            if exc.errno != errno.EAGAIN:
                raise WeightsSealError(f"could not prove the weights file has no writer left ({exc.strerror})",
                                       hint=_HINT) from None
            if time.monotonic() >= deadline:
                raise WeightsSealError(
                    "the weights file is still open for writing, or mapped writable, by another process (a sandbox "
                    "process that outlived the job? or a child this process forked while it started the job), so "
                    "its bytes could change under the model",
                    hint=f"{_HINT}; if this process forks (multiprocessing) while loading, load again, or set "
                         f"{ENV_FLAG}=0") from None
            time.sleep(delay)
            delay = min(delay * 2, 0.05)
        else:
            return
