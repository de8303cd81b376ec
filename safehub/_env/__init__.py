"""Per-repo virtual environments."""

from __future__ import annotations

from ._types import PythonEnv

__all__ = ["PythonEnv"]
