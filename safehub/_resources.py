"""Locating the folders safehub ships but never imports: the runner scripts and the
demo hub repo. Installed, they are the data-only packages ``safehub._runners`` and
``safehub._demo``; in a source checkout they sit beside ``safehub/``."""

from __future__ import annotations

import importlib.util
from pathlib import Path

__all__ = ["shipped_folder", "runner_dir"]

_CHECKOUT = Path(__file__).resolve().parent.parent


def shipped_folder(package: str, checkout_path: str, marker: str) -> Path | None:
    """The folder of ``package`` (found without importing it) holding ``marker``,
    else ``<checkout>/<checkout_path>`` if it holds ``marker``, else None."""
    spec = importlib.util.find_spec(package)
    if spec is not None and spec.submodule_search_locations:
        found = Path(list(spec.submodule_search_locations)[0])
        if (found / marker).is_file():
            return found
    here = _CHECKOUT / checkout_path
    return here if (here / marker).is_file() else None


def runner_dir() -> Path:
    """The folder holding the runner scripts (``runners/``), located without importing them."""
    found = shipped_folder("safehub._runners", "runners", "safehub_runner.py")
    if found is not None:
        return found
    from ._errors import SandboxError

    raise SandboxError("safehub's runner scripts are missing", hint="reinstall safehub")
