"""Self-confinement applied inside the sandbox before any repo code runs
(rlimits, Landlock). The host passes the configuration in request.json."""

from __future__ import annotations


def apply(config: dict) -> None:
    """Apply the confinement described by ``config``. Empty config: nothing to apply."""
    if config:
        raise RuntimeError(f"confinement not implemented in this runner: {sorted(config)}")
