"""The weights memfd: a job's weights come back through memory the host created.

For a ``load``/``export`` job on a backend that can pass descriptors (bubblewrap,
the warm worker, landlock, process), the host creates an anonymous memory file
(``memfd_create``, sealing allowed) and hands its descriptor to the runner, which
writes the safetensors bytes into it with ftruncate + pwrite
(runners/_safetensors_write.py). Nothing is written to disk and nothing is copied
on the way back: once the sandbox has ended, the host

1. seals it: ``F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE | F_SEAL_SEAL``. From then
   on no process holding the descriptor (a stray of the sandbox, a copy it passed
   on) can change a byte or the size, and nobody can remove the seals. The kernel
   refuses ``F_SEAL_WRITE`` (EBUSY) while a writable shared mapping exists, and
   ``F_ADD_SEALS`` (EPERM) once someone added ``F_SEAL_SEAL``: either fails the
   load with :class:`~safehub._errors.WeightsSealError`, nothing built;
2. checks its size against ``ChannelLimits.weights_bytes`` before mapping;
3. parses the header with the same strict ``read_header`` as for a file;
4. maps it ``MAP_PRIVATE`` (copy-on-write) and views each tensor in place
   (``_weights.map_tensors``): the model may be trained in place, its writes go to
   private pages, and the sealed file underneath cannot change.

The host decides per job which channel it uses (``Job.weights``): when it passed a
memfd it reads the weights only from the memfd, never from ``out/``. The file's
size is bounded inside the sandbox by RLIMIT_FSIZE (``Limits.max_file_bytes``), as
a file on disk would be; its memory is freed when the host closes the descriptor
and the model that maps it is gone.
"""

from __future__ import annotations

import errno
import fcntl
import os

from .._errors import SpecTooLargeError, UnsafeSpecError, WeightsSealError
from ._limits import ChannelLimits

__all__ = ["ClosedWhenCollected", "WeightsMemfd", "checked_weights_size", "seal_weights", "shmem_huge_setting",
           "F_SEAL_SEAL", "F_SEAL_SHRINK", "F_SEAL_GROW", "F_SEAL_WRITE"]

SHMEM_ENABLED = "/sys/kernel/mm/transparent_hugepage/shmem_enabled"

F_ADD_SEALS = fcntl.F_ADD_SEALS
F_GET_SEALS = fcntl.F_GET_SEALS
F_SEAL_SEAL = fcntl.F_SEAL_SEAL
F_SEAL_SHRINK = fcntl.F_SEAL_SHRINK
F_SEAL_GROW = fcntl.F_SEAL_GROW
F_SEAL_WRITE = fcntl.F_SEAL_WRITE
REQUIRED = F_SEAL_SHRINK | F_SEAL_GROW | F_SEAL_WRITE

_HINT = "the repo is hostile or broken; nothing it returned was built"


def seal_weights(fd: int) -> None:
    """Make the memfd ``fd`` immutable for good (see the module docstring), or raise
    WeightsSealError. Call only after every process of the sandbox has ended."""
    try:
        seals = fcntl.fcntl(fd, F_GET_SEALS)
    except OSError as exc:
        raise WeightsSealError(f"the weights descriptor is not a sealable memfd ({exc.strerror})", hint=_HINT) from None
    if seals & F_SEAL_SEAL:
        raise WeightsSealError(
            "the sandbox sealed the weights memfd itself (F_SEAL_SEAL), so the host cannot make it read-only",
            hint=_HINT)
    try:
        fcntl.fcntl(fd, F_ADD_SEALS, REQUIRED | F_SEAL_SEAL)
    except OSError as exc:
        if exc.errno == errno.EBUSY:
            raise WeightsSealError(
                "the weights memfd is still mapped writable by another process (a sandbox process that outlived "
                "the job?), so it cannot be sealed", hint=_HINT) from None
        raise WeightsSealError(f"could not seal the weights memfd ({exc.strerror})", hint=_HINT) from None
    seals = fcntl.fcntl(fd, F_GET_SEALS)
    if seals & REQUIRED != REQUIRED:  # never expected: the kernel just accepted them
        raise WeightsSealError(f"the weights memfd shows seals {seals:#x} after sealing", hint=_HINT)


def checked_weights_size(fd: int, limits: ChannelLimits, what: str = "memfd") -> int:
    """The size of a job's weights (memfd or huge-page tmpfs file, no longer
    writable), or raise: over the cap, or empty."""
    size = os.fstat(fd).st_size
    if size > limits.weights_bytes:
        raise SpecTooLargeError(
            f"the sandbox wrote {size} bytes of weights, over the {limits.weights_bytes}-byte cap",
            hint="raise the cap with the matching safehub limit if this model is really that large")
    if size == 0:
        raise UnsafeSpecError(f"the sandbox wrote no weights into the job's {what}",
                              hint="the runner died before finishing; see the captured stderr above")
    return size


class ClosedWhenCollected:
    """A job's weights memory: ``close()`` also runs when the object is collected, so
    a Job that was never cleaned up does not leak the memory."""

    def close(self) -> None:
        raise NotImplementedError

    def __del__(self) -> None:
        try:
            self.close()
        except OSError:
            pass


class WeightsMemfd(ClosedWhenCollected):
    """The memfd one job's weights go into. Owned by the host's Job: ``close()``
    (idempotent) in its cleanup. Tensors mapped from it outlive the descriptor."""

    channel = "memfd"

    def __init__(self) -> None:
        self.fd = os.memfd_create("safehub-weights", os.MFD_CLOEXEC | os.MFD_ALLOW_SEALING)
        self._sealed = False

    def sealed_fd(self, limits: ChannelLimits) -> int:
        """The descriptor, sealed (once) and checked against the weights cap; still
        owned by this object. Raises before anything is mapped."""
        if self.fd < 0:
            raise UnsafeSpecError("the job's weights memfd was already closed")
        if not self._sealed:
            seal_weights(self.fd)
            self._sealed = True
        checked_weights_size(self.fd, limits)
        return self.fd

    def size(self) -> int:
        """The memfd's size now (before sealing: for the weights pool's sizing only)."""
        return os.fstat(self.fd).st_size

    def close(self) -> None:
        if self.fd >= 0:
            fd, self.fd = self.fd, -1
            os.close(fd)


def shmem_huge_setting(path: str = SHMEM_ENABLED) -> str | None:
    """The machine's transparent-huge-page policy for shmem (which memfds are), e.g.
    "never" or "within_size"; None if unknown. With "never" (the usual default) the
    runner's writes into the memfd land in 4 KiB pages and page allocation bounds
    them (~2.4 GB/s on the 2-core test machine); "within_size" (enough, since the
    runner sets the final size first) or "always" give 2 MiB pages (~11 GB/s there).
    benchmarks/bench_weights_path.py measures both. A machine-wide setting for root:
    safehub never changes it."""
    try:
        with open(path, encoding="ascii") as f:
            raw = f.read()
    except OSError:
        return None
    chosen = [word.strip("[]") for word in raw.split() if word.startswith("[")]
    return chosen[0] if chosen else None
