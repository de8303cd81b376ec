"""The plain-subprocess backend: a clean environment, a scratch cwd and a
watched process tree, but no OS isolation. Used only when asked for explicitly."""

from __future__ import annotations

import os
import subprocess
import tempfile
import time

from ._base import MAX_CAPTURE_BYTES, SandboxBackend, SandboxRequest, SandboxResult
from ._tree import kill_tree

__all__ = ["ProcessBackend"]


class ProcessBackend(SandboxBackend):
    name = "process"

    def check(self) -> str | None:
        return None

    def run(self, request: SandboxRequest) -> SandboxResult:
        start = time.monotonic()
        with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
            proc = subprocess.Popen(
                list(request.argv),
                env=dict(request.env),
                cwd=str(request.cwd),
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=err,
                start_new_session=True,  # its own process group, so the tree can be killed
                close_fds=True,
            )
            killed_by = None
            try:
                proc.wait(timeout=request.limits.timeout_s)
            except subprocess.TimeoutExpired:
                killed_by = "timeout"
            finally:
                kill_tree(proc)
            return SandboxResult(
                returncode=proc.returncode if proc.returncode is not None else -9,
                stdout=_tail(out),
                stderr=_tail(err),
                backend=self.name,
                limits=request.limits,
                killed_by=killed_by,
                wall_s=time.monotonic() - start,
            )


def _tail(f: "tempfile._TemporaryFileWrapper[bytes]") -> bytes:  # type: ignore[name-defined]
    size = f.seek(0, os.SEEK_END)
    f.seek(max(0, size - MAX_CAPTURE_BYTES))
    return f.read(MAX_CAPTURE_BYTES)
