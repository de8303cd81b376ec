"""Sandbox backends. ``get_backend`` picks one; nothing here reads what the job wrote."""

from __future__ import annotations

from collections.abc import Mapping

from .._errors import SandboxUnavailableError
from ._base import Limits, SandboxBackend, SandboxRequest, SandboxResult
from ._process import ProcessBackend

__all__ = ["Limits", "SandboxBackend", "SandboxRequest", "SandboxResult", "get_backend"]


def get_backend(name: str | None = None, env: Mapping[str, str] | None = None) -> SandboxBackend:
    """Return the backend called ``name`` (or from ``SAFEHUB_SANDBOX``).

    Never silently downgrades: an unavailable backend raises SandboxUnavailableError.
    """
    import os

    env = os.environ if env is None else env
    name = name or env.get("SAFEHUB_SANDBOX") or "process"
    backends: dict[str, SandboxBackend] = {"process": ProcessBackend()}
    if name not in backends:
        raise SandboxUnavailableError(
            f"unknown sandbox backend {name!r}", hint=f"use one of {sorted(backends)}"
        )
    backend = backends[name]
    problem = backend.check()
    if problem:
        raise SandboxUnavailableError(f"sandbox backend {name!r} is unavailable: {problem}")
    return backend
