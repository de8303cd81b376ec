"""The sandbox-backend interface.

A backend runs one command with:
  * the listed host paths visible read-only (at the same path), and the listed
    writable paths visible read-write (at the same path): same-path binds keep
    venv interpreters and ``pyvenv.cfg`` homes valid, and work for Landlock,
    which cannot remap paths;
  * exactly the environment it is given (nothing inherited from the host);
  * the resource limits in :class:`Limits`;
and returns a :class:`SandboxResult` only after the whole process tree is gone.

Backends never interpret what the command wrote: that is the return channel's job.
"""

from __future__ import annotations

import abc
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path

__all__ = ["Limits", "SandboxRequest", "SandboxResult", "SandboxBackend", "MAX_CAPTURE_BYTES"]

# Captured stdout/stderr are cut to this many bytes each (the tail is kept).
MAX_CAPTURE_BYTES = 64 * 1024


@dataclass(frozen=True)
class Limits:
    """Resource limits for one sandboxed run. ``None`` means "no limit of this kind"."""

    timeout_s: float = 600.0
    memory_bytes: int | None = 8 * 1024**3
    max_pids: int | None = 256
    max_file_bytes: int | None = 8 * 1024**3
    cpu_time_s: int | None = None
    tmpfs_bytes: int = 512 * 1024**2
    # Everything the job may leave on the host's disk (out/ plus, for backends
    # without tmpfs, the scratch folders) and how many files it may create there.
    disk_bytes: int | None = 16 * 1024**3
    max_files: int = 100_000

    def as_dict(self) -> dict[str, float | int | None]:
        return {
            "timeout_s": self.timeout_s,
            "memory_bytes": self.memory_bytes,
            "max_pids": self.max_pids,
            "max_file_bytes": self.max_file_bytes,
            "cpu_time_s": self.cpu_time_s,
            "tmpfs_bytes": self.tmpfs_bytes,
            "disk_bytes": self.disk_bytes,
            "max_files": self.max_files,
        }


@dataclass(frozen=True)
class SandboxRequest:
    argv: Sequence[str]
    env: Mapping[str, str]
    cwd: Path
    ro_paths: Sequence[Path] = ()
    rw_paths: Sequence[Path] = ()
    limits: Limits = field(default_factory=Limits)
    allow_gpu: bool = False
    # Scratch folders (HOME, TMPDIR): a fresh size-capped tmpfs at that path under
    # bubblewrap, never backed by the host folder; a plain writable folder elsewhere.
    scratch_paths: Sequence[Path] = ()


@dataclass
class SandboxResult:
    returncode: int
    stdout: bytes
    stderr: bytes
    backend: str
    limits: Limits
    # Set when the backend itself ended the run: "timeout", "memory", "pids", "disk", "cpu".
    killed_by: str | None = None
    wall_s: float = 0.0
    details: dict[str, object] = field(default_factory=dict)


class SandboxBackend(abc.ABC):
    name: str = "abstract"

    @abc.abstractmethod
    def check(self) -> str | None:
        """Return ``None`` if this backend works here, else why not and how to fix it."""

    @abc.abstractmethod
    def run(self, request: SandboxRequest) -> SandboxResult:
        """Run the request to completion. Raises SandboxUnavailableError if it cannot."""

    def confine_config(self, request: SandboxRequest) -> dict[str, object]:
        """What the runner must apply to itself before repo code runs (request.json
        "confine", read by runners/_confine.py): rlimits, fd hygiene, and for
        Landlock the rule set. JSON-able."""
        from ._limits import confine_rlimits

        return {"close_fds": True, "no_new_privs": True, "rlimits": confine_rlimits(request.limits)}

    def describe(self) -> dict[str, object]:
        """What this backend isolates, for load records and ``safehub doctor``."""
        return {"backend": self.name}
