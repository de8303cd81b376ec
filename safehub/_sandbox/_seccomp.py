"""Compiling the seccomp policy (``_seccomp_policy.py``) into a BPF program.

The host compiles it once per variant with libseccomp (through ``pyseccomp``,
ctypes bindings that mirror libseccomp's own Python API: no compiler needed, and
libseccomp gets the arch checks and jump offsets right, which hand-written BPF
easily does not). The bytes are then installed:

* by bubblewrap (``--seccomp FD``), just before it execs the job;
* by ``runners/_confine.py`` (stdlib + ctypes) for the Landlock and process
  backends, after its own setup and right before the job's command is exec'd.

Fail closed: a backend whose filter cannot be built is unavailable. The only
way to run without it is the explicit opt-out ``SAFEHUB_SECCOMP=0`` (logged on
every run, shown by ``safehub doctor``), in the spirit of
``SAFEHUB_LANDLOCK_ABI=0`` and the process backend's explicit opt-in.
"""

from __future__ import annotations

import errno
import functools
import logging
import os
import tempfile
from collections.abc import Mapping

from . import _seccomp_policy as policy

__all__ = ["build", "problem", "enabled", "describe", "policy_digest", "SUPPORTED", "OPT_OUT", "MAX_INSNS"]

logger = logging.getLogger("safehub")

OPT_OUT = "SAFEHUB_SECCOMP"
MAX_INSNS = 4096  # BPF_MAXINSNS: the kernel refuses longer programs
# machine -> (AUDIT_ARCH_*, pyseccomp Arch attribute)
SUPPORTED = {"x86_64": (0xC000003E, "X86_64"), "aarch64": (0xC00000B7, "AARCH64")}
SOCKET_FAMILIES = (0, 1, 2, 10, 16)  # AF_UNSPEC, AF_UNIX, AF_INET, AF_INET6, AF_NETLINK (Flatpak's list)
EAFNOSUPPORT = errno.EAFNOSUPPORT
AF_UNIX = 1


def enabled(env: Mapping[str, str] | None = None) -> bool:
    """False only when the operator opted out with ``SAFEHUB_SECCOMP=0``."""
    env = os.environ if env is None else env
    return env.get(OPT_OUT, "1").strip().lower() not in ("0", "off", "false", "no")


def problem(variant: str = "bwrap") -> str | None:
    """Why the filter for ``variant`` cannot be built here (None: it can)."""
    try:
        build(variant)
    except SeccompUnavailable as exc:
        return str(exc)
    return None


class SeccompUnavailable(RuntimeError):
    pass


def _hint() -> str:
    return (
        "install libseccomp (apt install libseccomp2) and the pyseccomp package (pip install pyseccomp); "
        f"or run without the filter, knowingly, with {OPT_OUT}=0"
    )


_BUILT: dict[tuple[str, str], bytes] = {}  # what build() made in this process (describe reads it)


def policy_digest() -> str:
    """Identity of the filters' source (the policy and its compiler): a warm worker
    holds the filter its host built, so its key includes this, and a changed policy
    gets a new worker. Cheap: no filter is built."""
    import hashlib

    from . import _seccomp_policy

    digest = hashlib.sha256()
    for path in (__file__, _seccomp_policy.__file__):
        with open(path, "rb") as f:
            digest.update(f.read() + b"\0")
    return digest.hexdigest()[:32]


@functools.lru_cache(maxsize=16)
def build(variant: str, machine: str | None = None) -> bytes:
    """The BPF program (struct sock_filter array) for ``variant`` ("bwrap",
    "landlock", "process", or "worker_child": bwrap's plus no System V IPC or POSIX
    message queues, for a warm worker's per-job child) on ``machine`` (default: this one)."""
    machine = machine or os.uname().machine
    if machine not in SUPPORTED:
        raise SeccompUnavailable(
            f"safehub's seccomp policy is only reviewed for {', '.join(SUPPORTED)}, not {machine}; "
            f"run without the filter, knowingly, with {OPT_OUT}=0"
        )
    if variant not in ("bwrap", "landlock", "process", "worker_child"):
        raise ValueError(f"unknown seccomp variant {variant!r}")
    try:
        import pyseccomp as sc
    except (ImportError, RuntimeError, OSError) as exc:  # RuntimeError: libseccomp.so not found
        raise SeccompUnavailable(f"cannot build the seccomp filter: {exc}; {_hint()}") from None
    try:
        program = _compile(sc, variant, machine)
        _BUILT[(variant, machine)] = program
        return program
    except OSError as exc:
        raise SeccompUnavailable(f"libseccomp could not build the {variant} filter for {machine}: {exc}; {_hint()}") from None


def _compile(sc, variant: str, machine: str) -> bytes:  # noqa: ANN001 - pyseccomp module
    arch = getattr(sc.Arch, SUPPORTED[machine][1])
    f = sc.SyscallFilter(sc.ERRNO(errno.ENOSYS))
    # A foreign ABI (i386/arm32 compat calls; x32 on x86_64) kills the process.
    f.set_attr(sc.Attr.ACT_BADARCH, sc.KILL_PROCESS)
    f.set_attr(sc.Attr.CTL_OPTIMIZE, 2)  # binary tree: ~log(n) instructions per syscall
    if sc.system_arch() != arch:
        f.add_arch(arch)
        f.remove_arch(sc.Arch.NATIVE)

    def known(name: str) -> bool:
        return sc.resolve_syscall(arch, name) >= 0

    deny = dict(policy.DENY)
    if variant in ("landlock", "worker_child"):
        # worker_child: a warm worker's job shares the worker's IPC namespace with the
        # jobs before and after it; System V objects and POSIX queues outlive the job
        # (red team round 3), so a forked job child gets none (stacked on bwrap's filter).
        deny.update(policy.LANDLOCK_DENY)
    special = {"personality", "clone", "socket", "socketpair"}
    for name in sorted(policy.DOCKER_ALLOW - set(deny) - special):
        if known(name):  # libseccomp lacks the newest, the arch lacks 32-bit ones: default answers
            f.add_rule(sc.ALLOW, name)
    for name, (err, _why) in sorted(deny.items()):
        # ENOSYS entries are the default answer already (libseccomp refuses a rule
        # that repeats the default action).
        if err != errno.ENOSYS and known(name):
            f.add_rule(sc.ERRNO(err), name)
    # personality: query, or PER_LINUX; anything else EPERM (Flatpak).
    f.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, policy.PER_LINUX))
    f.add_rule(sc.ALLOW, "personality", sc.Arg(0, sc.EQ, policy.PERSONALITY_QUERY))
    f.add_rule(sc.ERRNO(errno.EPERM), "personality", sc.Arg(0, sc.NE, policy.PER_LINUX))
    # clone: threads and forks, never a namespace flag (Docker's rule, plus EPERM per flag).
    mask = policy.CLONE_NAMESPACE_FLAGS
    f.add_rule(sc.ALLOW, "clone", sc.Arg(0, sc.MASKED_EQ, mask, 0))
    for bit in range(32):
        if mask & (1 << bit):
            f.add_rule(sc.ERRNO(errno.EPERM), "clone", sc.Arg(0, sc.MASKED_EQ, 1 << bit, 1 << bit))
    # socket: Landlock cannot filter UDP or pathname unix sockets, so none at all
    # there; elsewhere Flatpak's families (no AF_VSOCK, AF_ALG, AF_PACKET...).
    if variant == "landlock":
        f.add_rule(sc.ERRNO(errno.EACCES), "socket")
    else:
        for family in SOCKET_FAMILIES:
            f.add_rule(sc.ALLOW, "socket", sc.Arg(0, sc.EQ, family))
        f.add_rule(sc.ERRNO(EAFNOSUPPORT), "socket", sc.Arg(0, sc.GT, 0))
    # socketpair: the kernel creates a socket of the family before its socketpair op
    # fails (EOPNOTSUPP for every family but AF_UNIX), so an unfiltered socketpair
    # reaches each family's create code and module autoload, under Landlock too.
    # AF_UNIX only, all 64 bits matched (red team round 2).
    f.add_rule(sc.ALLOW, "socketpair", sc.Arg(0, sc.EQ, AF_UNIX))
    f.add_rule(sc.ERRNO(EAFNOSUPPORT), "socketpair", sc.Arg(0, sc.NE, AF_UNIX))
    with tempfile.TemporaryFile() as tmp:
        f.export_bpf(tmp)
        tmp.seek(0)
        program = tmp.read()
    if not program or len(program) % 8 or len(program) // 8 > MAX_INSNS:
        raise OSError(errno.E2BIG, f"unexpected BPF program size {len(program)}")
    return program


def describe(variant: str, on: bool, *, build_now: bool = True) -> dict[str, object]:
    """What the filter does, for load records and ``safehub doctor``. With
    ``build_now=False`` (a warm worker's load, which builds no filter) the instruction
    count is given only when this process built the program already."""
    if not on:
        return {"seccomp": f"OFF ({OPT_OUT}=0): no syscall filter, the kernel keyring and io_uring are reachable"}
    program: bytes | None
    if build_now:
        try:
            program = build(variant)
        except SeccompUnavailable as exc:
            return {"seccomp": "unavailable", "seccomp_problem": str(exc)}
    else:
        program = _BUILT.get((variant, os.uname().machine))
    deny = sorted(policy.DENY) + (sorted(policy.LANDLOCK_DENY) if variant == "landlock" else [])
    return {
        "seccomp": "on",
        **({"seccomp_instructions": len(program) // 8} if program is not None else {}),
        "seccomp_denied": ["keyring", "io_uring", "bpf", "perf_event_open", "userfaultfd", "ptrace",
                           "process_vm_*", "mount family", "unshare/setns/clone namespaces", "kexec",
                           "module loading", "personality changes"]
        + (["socket", "SysV IPC", "POSIX mqueues"] if variant == "landlock" else []),
        "seccomp_denied_syscalls": len(deny),
    }


def warn_if_off(on: bool) -> None:
    if not on:
        logger.warning("%s=0: the sandbox runs WITHOUT its seccomp filter (keyring, io_uring, ptrace... reachable)", OPT_OUT)


def confine_entry(variant: str) -> dict[str, object]:
    """The ``confine["seccomp"]`` entry runners/_confine.py installs."""
    import base64

    machine = os.uname().machine
    program = build(variant, machine)
    return {"arch": SUPPORTED[machine][0], "bpf": base64.b64encode(program).decode("ascii")}
