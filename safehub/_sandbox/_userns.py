"""A user namespace for bubblewrap when the host runs as root.

Root is exempt from RLIMIT_NPROC, and a job running as host uid 0 (even without
capabilities) owns every root file it can reach. So as root the job runs as a
fresh, otherwise unused uid. bubblewrap alone cannot do that (its user namespace
maps one uid), so the host builds the namespace itself:

    inside 0   -> host 0     bubblewrap's setup (mounting root-owned paths)
    inside UID -> host UID   the job, after ``setpriv`` drops to it

and caps nested user namespaces at 0 (what ``bwrap --disable-userns`` does).
"""

from __future__ import annotations

import os
import secrets
import subprocess
import sys

from .._errors import SandboxUnavailableError
from ._proc import all_uids

__all__ = ["make_userns", "pick_sandbox_uid", "UID_BASE", "UID_SPAN"]

# A range no distribution allocates (systemd's dynamic users stop at 65519,
# container sub-uid ranges start at 100000 and are usually far smaller).
UID_BASE = 1_500_000_000
UID_SPAN = 100_000_000

_HELPER = r"""
import ctypes, os, sys
libc = ctypes.CDLL(None, use_errno=True)
if libc.unshare(0x10000000) != 0:
    sys.exit(3)
os.write(1, b"u")
if os.read(0, 1) != b"m":
    sys.exit(4)
with open("/proc/sys/user/max_user_namespaces", "w") as f:
    f.write("0")
os.write(1, b"d")
os.read(0, 1)
"""


def _uids_in_use() -> set[int]:
    """Every uid (real, effective or saved) a process runs as, read from /proc (not
    psutil: its import alone costs a fresh process's load ~20 ms)."""
    return {uid for ids in all_uids().values() for uid in ids}


def pick_sandbox_uid() -> int:
    """A uid no running process uses (so RLIMIT_NPROC and kill(-1) see only the job)."""
    used = _uids_in_use()
    for _ in range(8):
        uid = UID_BASE + secrets.randbelow(UID_SPAN)
        if uid not in used:
            return uid
    raise SandboxUnavailableError("could not find an unused uid for the sandbox")


def make_userns(uid: int) -> int:
    """Return an fd for a new user namespace mapping 0->0 and uid->uid."""
    if os.geteuid() != 0:
        raise SandboxUnavailableError("mapping a second uid needs root")
    helper = subprocess.Popen(
        [sys.executable, "-I", "-S", "-c", _HELPER],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        env={},
        close_fds=True,
    )
    assert helper.stdin is not None and helper.stdout is not None
    try:
        if helper.stdout.read(1) != b"u":
            raise SandboxUnavailableError(
                "could not create a user namespace (unshare(CLONE_NEWUSER) failed)",
                hint="enable unprivileged user namespaces (sysctl kernel.unprivileged_userns_clone=1, "
                "user.max_user_namespaces > 0) or use sandbox='landlock'",
            )
        mapping = f"0 0 1\n{uid} {uid} 1\n"
        for name in ("uid_map", "gid_map"):
            with open(f"/proc/{helper.pid}/{name}", "w") as f:
                f.write(mapping)
        helper.stdin.write(b"m")
        helper.stdin.flush()
        if helper.stdout.read(1) != b"d":
            raise SandboxUnavailableError("could not seal the sandbox's user namespace")
        return os.open(f"/proc/{helper.pid}/ns/user", os.O_RDONLY | os.O_CLOEXEC)
    finally:
        try:
            helper.stdin.close()
        except OSError:
            pass
        helper.stdout.close()
        helper.kill()
        helper.wait()
