"""The Landlock backend: for machines where user namespaces are blocked (Ubuntu
>= 23.10 without an AppArmor profile for bwrap).

The runner applies a Landlock rule set to itself (runners/_confine.py) before
anything from the repo runs; every process it starts inherits it:

* files: read+execute on /usr, the /bin and /lib* links, ld.so.cache and the
  request's read-only paths, less its hidden paths (the folders above one get
  their other children granted one by one, and are listable but not readable); everything on its writable and scratch paths;
  read/write on /dev/null, zero, full, random and urandom; nothing else
  (no HOME, no /proc, no /tmp, no /dev/shm);
* network (ABI >= 4): TCP bind and connect denied;
* scoping (ABI >= 6): no signals to, and no abstract unix sockets of, processes
  outside the sandbox;
* the seccomp filter of every backend (_seccomp_policy.py), plus: socket()
  refused (Landlock does not cover UDP or connecting to pathname unix sockets
  such as docker.sock or an ssh-agent; socketpair() still works), and System V
  IPC and POSIX message queues refused (no IPC namespace here);
* a fresh session keyring (_keyring.py);
* no_new_privs, rlimits, and as root every capability dropped and a pids
  cgroup (RLIMIT_NPROC does not bind root);
* as root, a pid namespace of its own (root needs no user namespace for that):
  without it a job running as uid 0 could signal every root process on a
  kernel without Landlock signal scoping (ABI < 6).

The tree runs below a subreaper (_reaper.py) so nothing it starts outlives it.
"""

from __future__ import annotations

import os
from collections.abc import Mapping

from ._base import GPU_DEVICES, SandboxBackend, SandboxRequest, SandboxResult
from ._cgroup import PidsCgroup
from ._limits import confine_rlimits
from ._binds import carve, normalise_hidden, normalise_request
from ._seccomp import confine_entry, enabled, warn_if_off
from ._seccomp import problem as seccomp_problem
from ._supervised import run_supervised

__all__ = ["LandlockBackend", "landlock_abi", "MIN_ABI"]

MIN_ABI = 1
SYSTEM_READ = (
    "/usr", "/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32", "/etc/ld.so.cache",
    # Hardware facts torch reads at import (not secrets; no other /proc or /sys).
    "/proc/cpuinfo", "/sys/devices/system/cpu",
)
DEVICES = ("/dev/null", "/dev/zero", "/dev/full", "/dev/random", "/dev/urandom")
HINT = "Landlock needs Linux >= 5.13 with 'landlock' in the lsm= boot list (check /sys/kernel/security/lsm)"


def landlock_abi() -> int:
    """The kernel's Landlock ABI version (0: unavailable)."""
    import ctypes

    libc = ctypes.CDLL(None, use_errno=True)
    libc.syscall.restype = ctypes.c_long
    ret = libc.syscall(444, None, ctypes.c_size_t(0), ctypes.c_uint32(1))
    return int(ret) if ret > 0 else 0


class LandlockBackend(SandboxBackend):
    name = "landlock"
    passes_fds = True

    def __init__(self, env: Mapping[str, str] | None = None, abi: int | None = None) -> None:
        env = os.environ if env is None else env
        forced = env.get("SAFEHUB_LANDLOCK_ABI")  # tests: pretend the kernel lacks Landlock
        kernel = landlock_abi()
        # SAFEHUB_LANDLOCK_ABI / abi= can only lower what the kernel has (to behave as on
        # an older kernel, or to make Landlock unavailable with 0).
        self.abi = min(kernel, abi if abi is not None else int(forced) if forced else kernel)
        self.forced = forced is not None and abi is None
        self._pidns: bool | None = None
        self._cgroup_ok: bool | None = None
        self.seccomp = enabled(env)

    @property
    def pids_cgroup_ok(self) -> bool:
        if self._cgroup_ok is None:
            probe = PidsCgroup.create(1)
            self._cgroup_ok = probe is not None
            if probe is not None:
                probe.remove()
        return self._cgroup_ok

    @property
    def pid_namespace(self) -> bool:
        """As root: whether the job gets its own pid namespace (probed once)."""
        if os.geteuid() != 0:
            return False
        if self._pidns is None:
            import subprocess
            import sys

            code = "import ctypes,sys; sys.exit(ctypes.CDLL(None).unshare(0x20000000) != 0)"
            try:
                done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, timeout=20, env={})
                self._pidns = done.returncode == 0
            except (OSError, subprocess.TimeoutExpired):
                self._pidns = False
        return self._pidns

    def check(self) -> str | None:
        if self.abi < MIN_ABI:
            why = " (SAFEHUB_LANDLOCK_ABI says so)" if self.forced else " on this kernel"
            return f"Landlock is not available{why}; {HINT}"
        if self.seccomp and (problem := seccomp_problem(self.name)):
            return problem
        if os.geteuid() == 0 and not self.pids_cgroup_ok:
            return (
                "running as root, the job's process limit needs a pids cgroup (RLIMIT_NPROC does not "
                "bind root, and a watchdog alone loses to a fork bomb), and none could be created under "
                "/sys/fs/cgroup; run safehub as an unprivileged user, or give it a writable cgroup"
            )
        if os.geteuid() == 0 and self.abi < 6 and not self.pid_namespace:
            # A job running as uid 0 could signal every root process on the host.
            return (
                f"running as root, Landlock ABI {self.abi} has no signal scoping (ABI 6) and this "
                "process cannot create a pid namespace (unshare(CLONE_NEWPID) failed: in a container "
                "without CAP_SYS_ADMIN?); run safehub as an unprivileged user or on Linux >= 6.12"
            )
        return None

    def describe(self) -> dict[str, object]:
        from ._seccomp import describe

        return {
            **describe(self.name, self.seccomp),
            "session_keyring": "fresh",
            "backend": self.name,
            "landlock_abi": self.abi,
            "tcp_denied": self.abi >= 4,
            "scoped_signals_and_abstract_sockets": self.abi >= 6,
            "socket_syscall": "denied (seccomp)",
            # As root the job also gets its own pid namespace (no user namespace needed).
            "pid_namespace": self.pid_namespace,
        }

    def confine_config(self, request: SandboxRequest) -> dict[str, object]:
        ro, rw, scratch = normalise_request(request)
        read = [*SYSTEM_READ, *map(str, ro)]
        # Hidden folders (the base interpreter's site-packages) are carved out: the
        # shown path above one is granted child by child (rules only ever add).
        read, listable = carve(read, normalise_hidden(request, read))
        rlimits = confine_rlimits(request.limits)
        nproc = rlimits.pop("NPROC", None)
        config: dict[str, object] = {
            "close_fds": True,
            "no_new_privs": True,
            "rlimits": rlimits,
            "landlock": {
                "abi_min": MIN_ABI,
                "abi_max": self.abi,
                "read": read,
                "list": listable,
                "write": [*map(str, rw), *map(str, scratch)],
                "devices": list(DEVICES),
                "deny_tcp": True,
                "scope": True,
            },
        }
        if self.seccomp:
            # Includes socket(): Landlock leaves UDP and pathname unix sockets open.
            config["seccomp"] = confine_entry(self.name)
        else:
            # SAFEHUB_SECCOMP=0 drops the full policy, never Landlock's own socket filter.
            config["deny_sockets"] = True
        if request.allow_gpu:
            # Outside the guarantees (SECURITY.md): device nodes with ioctl, and /sys.
            config["landlock"]["gpu_devices"] = [*GPU_DEVICES, *(f"/dev/nvidia{i}" for i in range(16))]  # type: ignore[index]
            config["landlock"]["read"].extend(["/sys", "/proc/driver/nvidia"])  # type: ignore[index]
        if os.geteuid() == 0:
            config["drop_caps"] = True
        elif nproc is not None:
            config["nproc_above_current"] = nproc
        return config

    def run(self, request: SandboxRequest) -> SandboxResult:
        from .._errors import SandboxUnavailableError

        problem = self.check()
        if problem:
            raise SandboxUnavailableError(f"the landlock sandbox is unavailable: {problem}")
        warn_if_off(self.seccomp)
        _, rw, scratch = normalise_request(request)
        cgroup = None
        if os.geteuid() == 0:
            cgroup = PidsCgroup.create(request.limits.max_pids or 4096)
            if cgroup is None:
                raise SandboxUnavailableError("could not create the job's pids cgroup (needed as root)")
        try:
            return run_supervised(
                self.name, request, confine=self.confine_config(request), disk_paths=[*rw, *scratch],
                details={**self.describe(), "pids_cgroup": cgroup.version if cgroup else None},
                pid_namespace=self.pid_namespace, cgroup=cgroup, strict_keyring=not self.seccomp,
            )
        finally:
            if cgroup is not None:
                cgroup.remove()
