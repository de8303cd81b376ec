"""Sandbox backends. ``get_backend`` picks one; nothing here reads what the job wrote.

* ``bwrap``     bubblewrap namespaces (the default where it works)
* ``landlock``  Landlock self-confinement (where user namespaces are blocked)
* ``process``   a plain subprocess: no isolation, only on explicit request
* ``auto``      bwrap, else landlock, else refuse. Never ``process``.

Test and operator switches: ``SAFEHUB_SANDBOX`` picks the backend,
``SAFEHUB_BWRAP=/nonexistent`` makes bwrap unavailable, ``SAFEHUB_LANDLOCK_ABI=0``
makes Landlock unavailable, ``SAFEHUB_SECCOMP=0`` runs every backend without its
seccomp filter (an explicit, logged opt-out; see _seccomp_policy.py).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from .._errors import SandboxUnavailableError
from ._base import Limits, SandboxBackend, SandboxRequest, SandboxResult
from ._bwrap import BwrapBackend
from ._landlock import LandlockBackend
from ._process import ProcessBackend

__all__ = [
    "Limits",
    "SandboxBackend",
    "SandboxRequest",
    "SandboxResult",
    "get_backend",
    "BACKENDS",
    "BwrapBackend",
    "LandlockBackend",
    "ProcessBackend",
    "FakeBackend",
    "FakeJob",
    "FakeOutcome",
]

if TYPE_CHECKING:
    from ._fake import FakeBackend, FakeJob, FakeOutcome

# Imported on first use (the test backend is no part of a real load): safehub/_lazy.py.
__getattr__ = lazy_exports(__name__, {"FakeBackend": "._fake", "FakeJob": "._fake", "FakeOutcome": "._fake"})

BACKENDS = ("auto", "bwrap", "landlock", "process")

logger = logging.getLogger("safehub")

# Probing bwrap starts a sandbox (~10 ms); remember the answer per configuration.
_cache: dict[tuple[str, ...], SandboxBackend] = {}


def _make(name: str, env: Mapping[str, str]) -> SandboxBackend:
    key = (name, env.get("SAFEHUB_BWRAP", ""), env.get("SAFEHUB_SETPRIV", ""), env.get("SAFEHUB_PRLIMIT", ""),
           env.get("SAFEHUB_LANDLOCK_ABI", ""), env.get("SAFEHUB_SECCOMP", ""))
    if key not in _cache:
        if name == "bwrap":
            _cache[key] = BwrapBackend(env=env)
        elif name == "landlock":
            _cache[key] = LandlockBackend(env=env)
        else:
            _cache[key] = ProcessBackend(env=env)
    return _cache[key]


def get_backend(name: str | SandboxBackend | None = None, env: Mapping[str, str] | None = None) -> SandboxBackend:
    """Return the backend called ``name`` (default: ``SAFEHUB_SANDBOX``, else "auto").

    A backend object passed as ``name`` is used as it is (tests pass a FakeBackend);
    it must still say it works here.

    Never silently downgrades: an unavailable backend raises
    SandboxUnavailableError saying which layer is missing and how to get it.
    """
    import os

    env = os.environ if env is None else env
    if isinstance(name, SandboxBackend):
        problem = name.check()
        if problem:
            raise SandboxUnavailableError(f"sandbox backend {name.name!r} is unavailable: {problem}", hint="run `safehub doctor` for details")
        return name
    name = (name or env.get("SAFEHUB_SANDBOX") or "auto").strip().lower()
    if name not in BACKENDS:
        raise SandboxUnavailableError(f"unknown sandbox backend {name!r}", hint=f"use one of {', '.join(BACKENDS)}")
    if name == "process":
        backend = _make("process", env)
        logger.warning("sandbox='process' was requested: %s", "repo code will run WITHOUT OS isolation")
        return backend
    if name == "auto":
        problems = []
        for candidate in ("bwrap", "landlock"):
            backend = _make(candidate, env)
            problem = backend.check()
            if problem is None:
                return backend
            problems.append(f"{candidate}: {problem}")
        raise SandboxUnavailableError(
            "no sandbox backend works on this machine:\n  " + "\n  ".join(problems),
            hint="install bubblewrap, or run on Linux >= 5.13 with Landlock enabled; "
            "run `safehub doctor` for details. safehub never falls back to running repo code unsandboxed",
        )
    backend = _make(name, env)
    problem = backend.check()
    if problem:
        raise SandboxUnavailableError(f"sandbox backend {name!r} is unavailable: {problem}", hint="run `safehub doctor` for details")
    return backend
