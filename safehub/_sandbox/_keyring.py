"""A fresh session keyring for every sandboxed job (defence in depth).

Kernel keyrings are not covered by mount, pid or user namespaces, nor by
Landlock: a process can read, update and add keys in the session keyring it
inherited (Kerberos tickets, tokens), and the user keyring is linked into it in
login sessions. The seccomp filter refuses the keyring syscalls; in addition the
sandbox's first process joins a new, empty, anonymous session keyring
(``KEYCTL_JOIN_SESSION_KEYRING`` with no name) between fork and exec, so that
even without the filter (``SAFEHUB_SECCOMP=0``) the host's session keyring is not
the job's.
"""

from __future__ import annotations

import ctypes
import errno
import os
from collections.abc import Callable

__all__ = ["fresh_session_keyring", "KEYCTL_JOIN_SESSION_KEYRING", "SYS_KEYCTL"]

KEYCTL_JOIN_SESSION_KEYRING = 1
SYS_KEYCTL = {"x86_64": 250, "aarch64": 219}


def fresh_session_keyring(strict: bool) -> Callable[[], None]:
    """A ``preexec_fn`` that gives the child a new session keyring.

    Everything is resolved here, in the parent: between fork and exec the child
    only makes one foreign call (no imports, no dlsym, no locks). ``strict``
    (the seccomp filter is off) refuses to start the job when the join fails;
    otherwise EPERM/EACCES (an outer seccomp profile such as Docker's, or an LSM,
    refuses keyctl: the job inherits that refusal) and ENOSYS (no keyrings in
    this kernel) are accepted, because the filter refuses every keyring call anyway.
    """
    nr = SYS_KEYCTL.get(os.uname().machine)
    libc = ctypes.CDLL(None, use_errno=True)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    get_errno = ctypes.get_errno
    args = (ctypes.c_long(nr or -1), ctypes.c_long(KEYCTL_JOIN_SESSION_KEYRING), ctypes.c_void_p(None))
    tolerated = (errno.ENOSYS,) if strict else (errno.ENOSYS, errno.EPERM, errno.EACCES)

    def join() -> None:
        if nr is None:
            if strict:
                raise OSError(errno.ENOSYS, "no keyctl syscall number for this machine")
            return
        if syscall(*args) < 0:
            err = get_errno()
            if err not in tolerated:
                raise OSError(err, f"keyctl(KEYCTL_JOIN_SESSION_KEYRING) failed: {os.strerror(err)}")

    return join
