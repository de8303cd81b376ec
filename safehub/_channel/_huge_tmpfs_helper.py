"""Mount a tmpfs with 2 MiB pages and hand it to the host: run by
safehub/_channel/_huge_tmpfs.py as ``<python> -I -S _huge_tmpfs_helper.py <socket fd>``.

Standard library only; imports nothing of safehub's. It is trusted host code that
runs in a process of its own only because mounting needs a user and mount namespace
of its own, and a process can enter new ones only while single-threaded (the host
is not). It:

1. enters a new user namespace (its own uid and gid mapped to themselves) and a new
   mount namespace;
2. creates a detached tmpfs (``fsopen``/``fsconfig``/``fsmount``: no mount point,
   nothing visible in any mount table) with ``huge=within_size`` (2 MiB pages for
   every whole 2 MiB of a file's size, whatever the machine's
   ``shmem_enabled``, which covers memfds only), no size cap (as for a memfd: the
   sandbox's RLIMIT_FSIZE and memory limits bound each file), mode 0700, nosuid,
   nodev, noexec;
3. sends the mount's descriptor over the socket (SCM_RIGHTS) and exits. The
   namespaces die with it; the mount lives on as long as the host holds it.

Exit status 0 and one message ``ok`` with one descriptor; else a non-zero status
and one line on stderr saying which step failed.
"""

import array
import ctypes
import os
import socket
import sys
from typing import NoReturn

CLONE_NEWUSER = 0x10000000
CLONE_NEWNS = 0x00020000
# The new mount API's syscalls have one number on every architecture but alpha.
SYS_FSOPEN, SYS_FSCONFIG, SYS_FSMOUNT = 430, 431, 432
FSOPEN_CLOEXEC = 0x1
FSCONFIG_SET_STRING = 1
FSCONFIG_CMD_CREATE = 6
FSMOUNT_CLOEXEC = 0x1
MOUNT_ATTR_NOSUID, MOUNT_ATTR_NODEV, MOUNT_ATTR_NOEXEC = 0x2, 0x4, 0x8
OPTIONS = ((b"huge", b"within_size"), (b"size", b"0"), (b"mode", b"0700"))


def _fail(step: str) -> NoReturn:
    sys.stderr.write(f"{step}: {os.strerror(ctypes.get_errno())}\n")
    sys.exit(2)


def main() -> None:
    sock = socket.socket(fileno=int(sys.argv[1]))
    libc = ctypes.CDLL(None, use_errno=True)
    uid, gid = os.getuid(), os.getgid()
    if libc.unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0:
        _fail("unshare(CLONE_NEWUSER | CLONE_NEWNS)")
    for name, text in (("setgroups", "deny"), ("uid_map", f"{uid} {uid} 1"), ("gid_map", f"{gid} {gid} 1")):
        with open(f"/proc/self/{name}", "w", encoding="ascii") as f:
            f.write(text)
    syscall = libc.syscall
    syscall.restype = ctypes.c_long
    fs = syscall(ctypes.c_long(SYS_FSOPEN), b"tmpfs", ctypes.c_uint(FSOPEN_CLOEXEC))
    if fs < 0:
        _fail("fsopen(tmpfs)")
    for key, value in OPTIONS:
        if syscall(ctypes.c_long(SYS_FSCONFIG), ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_SET_STRING), key, value,
                   ctypes.c_int(0)) != 0:
            _fail(f"fsconfig({key.decode()}={value.decode()})")
    if syscall(ctypes.c_long(SYS_FSCONFIG), ctypes.c_int(fs), ctypes.c_uint(FSCONFIG_CMD_CREATE), None, None,
               ctypes.c_int(0)) != 0:
        _fail("fsconfig(create)")
    mnt = syscall(ctypes.c_long(SYS_FSMOUNT), ctypes.c_int(fs), ctypes.c_uint(FSMOUNT_CLOEXEC),
                  ctypes.c_uint(MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV | MOUNT_ATTR_NOEXEC))
    if mnt < 0:
        _fail("fsmount")
    sock.sendmsg([b"ok"], [(socket.SOL_SOCKET, socket.SCM_RIGHTS, array.array("i", [mnt]))])


if __name__ == "__main__":
    main()
