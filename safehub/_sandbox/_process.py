"""The plain-subprocess backend: a clean environment, a scratch cwd, rlimits and a
watched, reaped process tree, but NO OS isolation: the job can read every file
the host user can, use the network and signal the user's processes. Used only
when asked for explicitly (sandbox="process" or SAFEHUB_SANDBOX=process).
It still gets the seccomp filter (keyring, io_uring, ptrace...: _seccomp_policy.py)
and a fresh session keyring: they cost nothing and keep the kernel's shared
state out of reach."""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

from ._base import SandboxBackend, SandboxRequest, SandboxResult
from ._cgroup import PidsCgroup
from ._limits import confine_rlimits
from ._binds import normalise_request
from ._seccomp import confine_entry, enabled, warn_if_off
from ._seccomp import problem as seccomp_problem
from ._supervised import run_supervised

__all__ = ["ProcessBackend", "WARNING"]

logger = logging.getLogger("safehub")

WARNING = (
    "safehub is running repo code with the 'process' backend: NO OS isolation. The repo can "
    "read your files and secrets, use the network and signal your processes. Use it only for "
    "repos you would run with torch.hub itself."
)


class ProcessBackend(SandboxBackend):
    name = "process"
    passes_fds = True

    def __init__(self, env: Mapping[str, str] | None = None) -> None:
        self.seccomp = enabled(os.environ if env is None else env)

    def check(self) -> str | None:
        if self.seccomp and (why := seccomp_problem(self.name)):
            return why
        return None

    def describe(self) -> dict[str, object]:
        from ._seccomp import describe

        return {
            "backend": self.name,
            "isolation": "none (clean environment, limits, reaped tree)",
            "session_keyring": "fresh",
            **describe(self.name, self.seccomp),
        }

    def confine_config(self, request: SandboxRequest) -> dict[str, object]:
        rlimits = confine_rlimits(request.limits)
        nproc = rlimits.pop("NPROC", None)
        config: dict[str, object] = {"close_fds": True, "no_new_privs": True, "rlimits": rlimits}
        if nproc is not None and os.geteuid() != 0:
            # No user namespace: RLIMIT_NPROC counts all of this user's processes.
            config["nproc_above_current"] = nproc
        if self.seccomp:
            config["seccomp"] = confine_entry(self.name)
        return config

    def run(self, request: SandboxRequest) -> SandboxResult:
        from .._errors import SandboxUnavailableError

        logger.warning(WARNING)
        problem = self.check()
        if problem:
            raise SandboxUnavailableError(f"the process backend is unavailable: {problem}")
        warn_if_off(self.seccomp)
        _, rw, scratch = normalise_request(request)
        cgroup = None
        if os.geteuid() == 0:
            # RLIMIT_NPROC does not bind root: cap the tree with a pids cgroup if we can.
            cgroup = PidsCgroup.create(request.limits.max_pids or 4096)
            if cgroup is None:
                logger.warning("no pids cgroup could be created: this root job's process count is only watched")
        try:
            return run_supervised(
                self.name, request, confine=self.confine_config(request), disk_paths=[*rw, *scratch],
                details=self.describe(), cgroup=cgroup, strict_keyring=not self.seccomp,
            )
        finally:
            if cgroup is not None:
                cgroup.remove()
