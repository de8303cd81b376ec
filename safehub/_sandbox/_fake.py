"""A fake sandbox backend for tests: like httpx's ``MockTransport`` beside its real
transports, it runs no command at all. A handler (a function of the caller's) plays
the runner: it reads the job's ``in/`` folder and writes what a runner would have
written into ``out/`` (result.json, spec.json, weights.safetensors), or returns how
the run ended (exit status, stderr, which limit killed it).

What this is for: testing the host's side (``safehub._api``, ``safehub._jobs`` and
the return channel) in milliseconds, without a sandbox, a venv interpreter or a
second ``import torch``. What it is not: a sandbox. Nothing runs in it, so it isolates
nothing; pass it only as ``load(..., sandbox=FakeBackend(handler))`` in tests. It is
never chosen by name or by ``SAFEHUB_SANDBOX``.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import field
from pathlib import Path
from typing import Any

from .._records import record
from ._base import SandboxBackend, SandboxRequest, SandboxResult

__all__ = ["FakeBackend", "FakeJob", "FakeOutcome"]


@record
class FakeJob:
    """What the handler sees of one run."""

    root: Path  # the job folder: in/ (written by the host), out/ (the handler writes here)
    request: dict[str, Any]  # in/request.json
    sandbox_request: SandboxRequest

    @property
    def in_dir(self) -> Path:
        return self.root / "in"

    @property
    def out_dir(self) -> Path:
        return self.root / "out"

    def write_result(self, result: dict[str, Any], *, protocol: int = 1) -> None:
        """Write ``out/result.json`` as the runner does (with its protocol number)."""
        (self.out_dir / "result.json").write_text(json.dumps({"protocol": protocol, **result}), encoding="utf-8")


@record
class FakeOutcome:
    """How the fake run ended; a handler returning None means status 0, nothing printed."""

    returncode: int = 0
    stdout: bytes = b""
    stderr: bytes = b""
    killed_by: str | None = None
    details: dict[str, object] = field(default_factory=dict)


def _job_root(request: SandboxRequest) -> Path:
    # The runner's argv ends with the job folder (see safehub._jobs.run_job).
    return Path(request.argv[-1])


class FakeBackend(SandboxBackend):
    """A backend whose "run" is ``handler(job)``. Records every job it saw."""

    name = "fake"

    def __init__(self, handler: Callable[[FakeJob], FakeOutcome | None]) -> None:
        self.handler = handler
        self.jobs: list[FakeJob] = []

    def check(self) -> str | None:
        return None

    def confine_config(self, request: SandboxRequest) -> dict[str, object]:
        return {}

    def describe(self) -> dict[str, object]:
        return {"backend": self.name, "isolation": "none (test fake: nothing runs)"}

    def run(self, request: SandboxRequest) -> SandboxResult:
        root = _job_root(request)
        job = FakeJob(root=root, request=json.loads((root / "in" / "request.json").read_text()), sandbox_request=request)
        self.jobs.append(job)
        t0 = time.perf_counter()
        outcome = self.handler(job) or FakeOutcome()
        return SandboxResult(
            returncode=outcome.returncode,
            stdout=outcome.stdout,
            stderr=outcome.stderr,
            backend=self.name,
            limits=request.limits,
            killed_by=outcome.killed_by,
            wall_s=time.perf_counter() - t0,
            details=dict(outcome.details),
        )
