"""Opening files the sandbox wrote, without trusting anything about them.

A file is read only if it is a regular file with exactly one link, reached
without following a symlink, and no larger than its cap. The folder it lives in
must itself be a real folder (not a link).
"""

from __future__ import annotations

import os
import stat
from pathlib import Path

from .._errors import SpecTooLargeError, UnsafeSpecError

__all__ = ["read_output_file", "open_output_file"]


def open_output_file(folder: Path, name: str, *, max_bytes: int) -> int:
    """Return an fd for ``folder/name`` opened read-only, after every check passed.
    The caller owns the fd."""
    if "/" in name or name in {"", ".", ".."}:
        raise UnsafeSpecError(f"output file name {name!r} is not a plain file name")
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:  # ENOTDIR/ELOOP: a symlink or a file where the folder should be
        raise UnsafeSpecError(
            f"refusing to read sandbox output folder {str(folder)!r}: {exc.strerror}",
            hint="the output folder must be a real directory, not a link",
        ) from None
    try:
        try:
            fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=dir_fd)
        except FileNotFoundError:
            raise UnsafeSpecError(
                f"the sandbox did not write {name!r}",
                hint="the runner died before finishing; see the captured stderr above",
            ) from None
        except OSError as exc:  # ELOOP: a symlink
            raise UnsafeSpecError(f"refusing to open sandbox output {name!r}: {exc.strerror}") from None
    finally:
        os.close(dir_fd)
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise UnsafeSpecError(f"sandbox output {name!r} is not a regular file")
        if st.st_nlink != 1:
            raise UnsafeSpecError(f"sandbox output {name!r} has {st.st_nlink} hard links; expected 1")
        if st.st_size > max_bytes:
            raise SpecTooLargeError(
                f"sandbox output {name!r} is {st.st_size} bytes, over the {max_bytes}-byte cap",
                hint="raise the cap with the matching safehub limit if this model is really that large",
            )
        os.set_blocking(fd, True)
    except BaseException:
        os.close(fd)
        raise
    return fd


def read_output_file(folder: Path, name: str, *, max_bytes: int) -> bytes:
    fd = open_output_file(folder, name, max_bytes=max_bytes)
    with os.fdopen(fd, "rb") as f:
        data = f.read(max_bytes + 1)
    if len(data) > max_bytes:  # it grew after fstat
        raise SpecTooLargeError(f"sandbox output {name!r} grew past its {max_bytes}-byte cap while being read")
    return data
