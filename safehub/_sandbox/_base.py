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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import field
from pathlib import Path

from .._records import record
from .._resources import runner_dir
from ._limits import Limits, confine_rlimits

__all__ = ["Limits", "SandboxRequest", "SandboxResult", "SandboxBackend", "MAX_CAPTURE_BYTES", "GPU_DEVICES"]

# Captured stdout/stderr are cut to this many bytes each (the tail is kept).
MAX_CAPTURE_BYTES = 64 * 1024
# Device nodes a job with allow_gpu may open (plus /dev/nvidia0..15).
GPU_DEVICES = ("/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools", "/dev/nvidia-modeset", "/dev/dri")


@record(frozen=True)
class SandboxRequest:
    """One command to run sandboxed, with what it may see and its limits."""

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
    # The runner scripts: runners/_confine.py applies the confinement, for
    # backends that confine through the reaper (landlock, process).
    runner_dir: Path = field(default_factory=runner_dir)
    # Folders inside a read-only path the job must not see (the base interpreter's
    # site-packages inside its prefix); read-only paths inside them are shown again.
    hidden_paths: Sequence[Path] = ()
    # Descriptors the command inherits at the same number (only for a backend whose
    # ``passes_fds`` is true): the job's weights memfd or huge-page tmpfs file
    # (safehub/_channel/_memfd.py, _huge_tmpfs.py).
    pass_fds: Sequence[int] = ()
    # Called once the command holds its ``pass_fds`` (right after the spawn), for a
    # host that has no more use for its own copies (the weights' read-write
    # descriptor of a huge-page tmpfs file: safehub/_channel/_huge_tmpfs.py).
    after_spawn: Callable[[], None] | None = None


@record
class SandboxResult:
    """How a sandboxed run ended, and what the backend recorded."""

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
    # Whether ``SandboxRequest.pass_fds`` reach the command (else the host uses files).
    passes_fds: bool = False
    # Whether every process of the sandbox has ended when ``run`` returns, whatever
    # the job did (a pid namespace): then the weights may come back in a file on the
    # host's huge-page tmpfs (safehub/_channel/_huge_tmpfs.py), else a sealed memfd.
    ends_every_process: bool = False

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
        return {"close_fds": True, "no_new_privs": True, "rlimits": confine_rlimits(request.limits)}

    def describe(self) -> dict[str, object]:
        """What this backend isolates, for load records and ``safehub doctor``."""
        return {"backend": self.name}
