"""Self-confinement applied inside the sandbox before any repo code runs.

The host puts the configuration in request.json under "confine"; the runner calls
:func:`apply` right after reading it. Standard library only (ctypes for the
syscalls Python does not wrap). Every step fails closed: if something asked for
cannot be applied, :func:`apply` raises and the runner never imports the repo.

Keys (all optional):
  close_fds: bool          close every descriptor above stderr
  keep_fd: int             ...but this one (the host's weights memfd; the runner sets
                           it from SAFEHUB_WEIGHTS_FD, the reaper gets it from the host)
  rlimits: {NAME: int | [soft, hard]}  RLIMIT_NAME (NPROC, AS, FSIZE, CPU, CORE);
                           an int sets soft == hard
  nproc_above_current: int RLIMIT_NPROC = processes this uid runs now + N
                           (for backends without a user namespace of their own)
  no_new_privs: bool       prctl(PR_SET_NO_NEW_PRIVS)
  drop_caps: bool          empty every capability set (landlock as root)
  landlock: {abi_min, abi_max, read: [paths], list: [folders: list names only],
             write: [paths], devices: [paths],
             gpu_devices: [paths], deny_tcp: bool, scope: bool}
  seccomp: {arch: AUDIT_ARCH_*, bpf: base64}  a BPF program the host compiled
                           (safehub/_sandbox/_seccomp.py), installed last, on every
                           thread; stacked filters only ever narrow
  deny_sockets: bool       Landlock's minimal filter when the full one is opted out
                           (SAFEHUB_SECCOMP=0): socket() EACCES, io_uring ENOSYS
"""

from __future__ import annotations

import ctypes
import os
import resource
import sys

__all__ = ["apply", "landlock_abi"]

PR_SET_NO_NEW_PRIVS = 38
PR_CAPBSET_READ = 23
PR_CAPBSET_DROP = 24
PR_CAP_AMBIENT = 47
PR_CAP_AMBIENT_CLEAR_ALL = 4

# Landlock (include/uapi/linux/landlock.h). The syscall numbers are the same on
# every architecture that has them (the unified table).
SYS_LANDLOCK_CREATE_RULESET = 444
SYS_LANDLOCK_ADD_RULE = 445
SYS_LANDLOCK_RESTRICT_SELF = 446
LANDLOCK_CREATE_RULESET_VERSION = 1
LANDLOCK_RULE_PATH_BENEATH = 1

FS_EXECUTE = 1 << 0
FS_WRITE_FILE = 1 << 1
FS_READ_FILE = 1 << 2
FS_READ_DIR = 1 << 3
FS_REMOVE_DIR = 1 << 4
FS_REMOVE_FILE = 1 << 5
FS_MAKE_CHAR = 1 << 6
FS_MAKE_DIR = 1 << 7
FS_MAKE_REG = 1 << 8
FS_MAKE_SOCK = 1 << 9
FS_MAKE_FIFO = 1 << 10
FS_MAKE_BLOCK = 1 << 11
FS_MAKE_SYM = 1 << 12
FS_REFER = 1 << 13  # ABI 2
FS_TRUNCATE = 1 << 14  # ABI 3
FS_IOCTL_DEV = 1 << 15  # ABI 5
NET_BIND_TCP = 1 << 0  # ABI 4
NET_CONNECT_TCP = 1 << 1
SCOPE_ABSTRACT_UNIX_SOCKET = 1 << 0  # ABI 6
SCOPE_SIGNAL = 1 << 1

FILE_RIGHTS = FS_EXECUTE | FS_WRITE_FILE | FS_READ_FILE | FS_TRUNCATE | FS_IOCTL_DEV

_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


class ConfineError(RuntimeError):
    pass


class _RulesetAttr(ctypes.Structure):
    _fields_ = [("handled_access_fs", ctypes.c_uint64), ("handled_access_net", ctypes.c_uint64), ("scoped", ctypes.c_uint64)]


class _PathBeneath(ctypes.Structure):
    _pack_ = 1
    _fields_ = [("allowed_access", ctypes.c_uint64), ("parent_fd", ctypes.c_int32)]


def _check(ret: int, what: str) -> int:
    if ret < 0:
        err = ctypes.get_errno()
        raise ConfineError(f"{what} failed: {os.strerror(err)} (errno {err})")
    return ret


def landlock_abi() -> int:
    """The Landlock ABI version of this kernel, 0 if Landlock is absent or disabled."""
    ret = _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, None, ctypes.c_size_t(0), ctypes.c_uint32(LANDLOCK_CREATE_RULESET_VERSION))
    return int(ret) if ret > 0 else 0


def _fs_rights(abi: int) -> int:
    rights = (1 << 13) - 1
    if abi >= 2:
        rights |= FS_REFER
    if abi >= 3:
        rights |= FS_TRUNCATE
    if abi >= 5:
        rights |= FS_IOCTL_DEV
    return rights


def _landlock(config: dict) -> None:
    abi = landlock_abi()
    need = int(config.get("abi_min", 1))
    if abi < need:
        raise ConfineError(f"Landlock ABI {abi} is below the required {need}")
    if "abi_max" in config:  # use only the features of an older ABI (what older kernels give)
        abi = min(abi, int(config["abi_max"]))
    handled = _fs_rights(abi)
    read = FS_EXECUTE | FS_READ_FILE | FS_READ_DIR
    write = handled
    device = FS_READ_FILE | FS_WRITE_FILE
    attr = _RulesetAttr(handled, 0, 0)
    size = 8
    if config.get("deny_tcp", True) and abi >= 4:
        attr.handled_access_net = NET_BIND_TCP | NET_CONNECT_TCP
        size = 16
    if config.get("scope", True) and abi >= 6:
        attr.scoped = SCOPE_ABSTRACT_UNIX_SOCKET | SCOPE_SIGNAL
        size = 24
    ruleset = _check(
        _libc.syscall(SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr), ctypes.c_size_t(size), ctypes.c_uint32(0)),
        "landlock_create_ruleset",
    )
    try:
        gpu = device | FS_IOCTL_DEV | FS_READ_DIR
        rules = (
            (config.get("read", ()), read),
            (config.get("list", ()), FS_READ_DIR),
            (config.get("write", ()), write),
            (config.get("devices", ()), device),
            (config.get("gpu_devices", ()), gpu),
        )
        for paths, rights in rules:
            for path in paths:
                try:
                    fd = os.open(path, os.O_PATH | os.O_CLOEXEC)
                except FileNotFoundError:
                    continue
                try:
                    is_dir = os.path.isdir(f"/proc/self/fd/{fd}")
                    allowed = (rights if is_dir else rights & FILE_RIGHTS) & handled
                    rule = _PathBeneath(allowed, fd)
                    _check(
                        _libc.syscall(SYS_LANDLOCK_ADD_RULE, ctypes.c_int(ruleset), ctypes.c_int(LANDLOCK_RULE_PATH_BENEATH), ctypes.byref(rule), ctypes.c_uint32(0)),
                        f"landlock_add_rule({path})",
                    )
                finally:
                    os.close(fd)
        _no_new_privs()
        _check(_libc.syscall(SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)), "landlock_restrict_self")
    finally:
        os.close(ruleset)


# seccomp: the host compiles the policy with libseccomp (safehub/_sandbox/_seccomp.py)
# and hands the BPF program in; here it is only checked and installed, last, so that
# every earlier step may still use the calls it refuses.
SECCOMP_SET_MODE_FILTER = 1
SECCOMP_FILTER_FLAG_TSYNC = 1
BPF_MAXINSNS = 4096
_ARCH = {  # machine -> (AUDIT_ARCH_*, __NR_seccomp, __NR_socket, __NR_io_uring_setup)
    "x86_64": (0xC000003E, 317, 41, 425),
    "aarch64": (0xC00000B7, 277, 198, 425),
}


class _SockFilter(ctypes.Structure):
    _fields_ = [("code", ctypes.c_uint16), ("jt", ctypes.c_uint8), ("jf", ctypes.c_uint8), ("k", ctypes.c_uint32)]


class _SockFprog(ctypes.Structure):
    _fields_ = [("len", ctypes.c_uint16), ("filter", ctypes.c_void_p)]


def _seccomp(config: dict) -> None:
    import base64

    machine = os.uname().machine
    if machine not in _ARCH:
        raise ConfineError(f"no seccomp support for {machine} in the runner")
    arch, nr_seccomp = _ARCH[machine][:2]
    if int(config.get("arch", -1)) != arch:
        raise ConfineError(f"the seccomp filter was built for arch {config.get('arch')!r}, this is {machine}")
    program = base64.b64decode(config["bpf"], validate=True)
    count = len(program) // 8
    if not program or len(program) % 8 or count > BPF_MAXINSNS:
        raise ConfineError(f"malformed seccomp program ({len(program)} bytes)")
    buf = ctypes.create_string_buffer(program, len(program))
    fprog = _SockFprog(count, ctypes.cast(buf, ctypes.c_void_p))
    _no_new_privs()
    # TSYNC: every thread gets the filter, or the call fails (>0: a thread that could not).
    ret = _libc.syscall(
        ctypes.c_long(nr_seccomp), ctypes.c_uint(SECCOMP_SET_MODE_FILTER), ctypes.c_uint(SECCOMP_FILTER_FLAG_TSYNC),
        ctypes.byref(fprog),
    )
    if ret != 0:
        err = ctypes.get_errno() if ret < 0 else 0
        raise ConfineError(f"seccomp(SECCOMP_SET_MODE_FILTER) failed: {os.strerror(err) if err else f'thread {ret}'}")


def _seccomp_deny_sockets() -> None:
    """Landlock's own minimal filter, kept for SAFEHUB_SECCOMP=0 (the opt-out from
    the full policy never weakens Landlock below what it always had): Landlock does
    not cover UDP or pathname unix sockets (docker.sock, ssh-agent), so socket()
    fails with EACCES (socketpair() still works) and io_uring_setup with ENOSYS."""
    machine = os.uname().machine
    if machine not in _ARCH:
        raise ConfineError(f"no seccomp socket filter for {machine}")
    arch, _, nr_socket, nr_uring = _ARCH[machine]
    ld, jeq, jge, ret = 0x20, 0x15, 0x35, 0x06
    prog = [
        (ld, 0, 0, 4),  # arch
        (jeq, 0, 5, arch),  # another ABI (i386, x32 entry points): deny everything
        (ld, 0, 0, 0),  # syscall number
        (jge, 3, 0, 0x40000000),  # x32 numbers
        (jeq, 3, 0, nr_socket),
        (jeq, 3, 0, nr_uring),
        (ret, 0, 0, 0x7FFF0000),  # ALLOW
        (ret, 0, 0, 0x00050000 | 1),  # ERRNO(EPERM)
        (ret, 0, 0, 0x00050000 | 13),  # ERRNO(EACCES): socket()
        (ret, 0, 0, 0x00050000 | 38),  # ERRNO(ENOSYS): io_uring
    ]
    filters = (_SockFilter * len(prog))(*[_SockFilter(*ins) for ins in prog])
    fprog = _SockFprog(len(prog), ctypes.cast(filters, ctypes.c_void_p))
    _no_new_privs()
    _check(_libc.prctl(22, 2, ctypes.byref(fprog), 0, 0), "prctl(PR_SET_SECCOMP)")  # SECCOMP_MODE_FILTER


def _no_new_privs() -> None:
    _check(_libc.prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0), "prctl(PR_SET_NO_NEW_PRIVS)")


def _drop_caps() -> None:
    """Empty the bounding, ambient, inheritable, permitted and effective sets."""
    for cap in range(64):
        present = _libc.prctl(PR_CAPBSET_READ, cap, 0, 0, 0)
        if present < 0:  # EINVAL: past the last capability
            break
        if present:
            _check(_libc.prctl(PR_CAPBSET_DROP, cap, 0, 0, 0), f"prctl(PR_CAPBSET_DROP, {cap})")
    _libc.prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_CLEAR_ALL, 0, 0, 0)

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32), ("inheritable", ctypes.c_uint32)]

    header = Header(0x20080522, 0)  # _LINUX_CAPABILITY_VERSION_3
    data = (Data * 2)()
    _check(_libc.capset(ctypes.byref(header), ctypes.byref(data)), "capset")
    check = (Data * 2)()
    _check(_libc.capget(ctypes.byref(header), ctypes.byref(check)), "capget")
    if any(d.effective or d.permitted or d.inheritable for d in check):
        raise ConfineError("capabilities still present after dropping them")


def _count_own_processes() -> int:
    uid = os.getuid()
    count = 0
    for name in os.listdir("/proc"):
        if name.isdigit():
            try:
                if os.stat(f"/proc/{name}").st_uid == uid:
                    count += 1
            except OSError:
                pass
    return count


def _rlimits(limits: dict, above_current: int | None) -> None:
    limits = dict(limits)
    if above_current is not None:
        try:
            limits["NPROC"] = _count_own_processes() + int(above_current)
        except PermissionError:
            # Already confined by an outer layer (Landlock hides /proc), which set it.
            if resource.getrlimit(resource.RLIMIT_NPROC)[1] == resource.RLIM_INFINITY:
                raise ConfineError("cannot count this user's processes to set RLIMIT_NPROC") from None
    for name, value in limits.items():
        if not name.isalpha() or not name.isupper():
            raise ConfineError(f"bad rlimit name {name!r}")
        which = getattr(resource, f"RLIMIT_{name}", None)
        if which is None:
            raise ConfineError(f"this platform has no RLIMIT_{name}")
        soft, hard = (int(value), int(value)) if isinstance(value, int) else (int(value[0]), int(value[1]))
        current = resource.getrlimit(which)[1]
        if current != resource.RLIM_INFINITY:
            # Never raise a limit an outer layer already lowered.
            soft, hard = min(soft, current), min(hard, current)
        resource.setrlimit(which, (soft, hard))


def apply(config: dict) -> None:
    """Apply the confinement described by ``config``. Empty config: nothing to apply."""
    if not config:
        return
    known = {"close_fds", "keep_fd", "rlimits", "nproc_above_current", "no_new_privs", "drop_caps", "landlock", "seccomp",
             "deny_sockets"}
    unknown = set(config) - known
    if unknown:
        raise ConfineError(f"unknown confinement options {sorted(unknown)}: the runner and host disagree")
    if config.get("close_fds"):
        # Descriptors the sandbox machinery left open (a user-namespace fd, say)
        # must not reach repo code.
        # The one exception: the memfd the host made for the job's weights ("keep_fd").
        top = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
        keep = config.get("keep_fd")
        if keep is None:
            os.closerange(3, top)
        else:
            if type(keep) is not int or not 3 <= keep < top:
                raise ConfineError(f"keep_fd {keep!r} is not a descriptor number above stderr")
            os.closerange(3, keep)
            os.closerange(keep + 1, top)
    # rlimits and capabilities first: both read /proc, which Landlock hides.
    _rlimits(config.get("rlimits") or {}, config.get("nproc_above_current"))
    if config.get("drop_caps"):
        _drop_caps()
    if config.get("landlock") is not None:
        _landlock(config["landlock"])
    if config.get("no_new_privs"):
        _no_new_privs()
    if config.get("deny_sockets"):
        _seccomp_deny_sockets()
    if config.get("seccomp") is not None:
        _seccomp(config["seccomp"])
    sys.stdout.flush()
