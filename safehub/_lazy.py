"""Names a package re-exports but imports only when first used (PEP 562).

A fresh process that loads a model pays for every module it imports (dataclasses,
regexes; about 1 ms each). Parts of safehub no load uses (the cache CLI, env
management, the test backend) stay out of it, while ``from safehub._fetch import
add_cache_commands`` keeps working. Names and submodules are fixed in the source.
"""

from __future__ import annotations

import importlib
import sys
from collections.abc import Callable, Mapping
from typing import Any

__all__ = ["lazy_exports"]


def lazy_exports(package: str, names: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` for ``package``: each of ``names`` (name -> relative
    submodule) is imported on first access, then kept in the package's namespace."""

    def __getattr__(name: str) -> Any:
        if name not in names:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(importlib.import_module(names[name], package), name)
        setattr(sys.modules[package], name, value)
        return value

    return __getattr__
