"""What to tell the user when repo code fails to import a module inside the sandbox.

The runner reports the exception type and message; both come from the sandbox, so
the module name is taken only when it is a plain dotted identifier.
"""

from __future__ import annotations

import re

from ._plan import FAMILY_IMPORTS, dist_for_import

__all__ = ["missing_module", "missing_module_hint"]

_NO_MODULE = re.compile(r"No module named '([A-Za-z_][A-Za-z0-9_]*(?:\.[A-Za-z_][A-Za-z0-9_]*){0,20})'")


def missing_module(remote_type: str, message: str) -> str | None:
    """The module a ModuleNotFoundError/ImportError names, or None."""
    if remote_type not in ("ModuleNotFoundError", "ImportError"):
        return None
    m = _NO_MODULE.search(message[:2000])
    return m.group(1) if m else None


def missing_module_hint(remote_type: str, message: str) -> str | None:
    """A hint naming the module, its distribution and the fix, or None when the error is not one."""
    module = missing_module(remote_type, message)
    if module is None:
        return None
    top = module.split(".")[0]
    if top in FAMILY_IMPORTS:
        return (f"the repo needs {top}, which is shared from the host and not installed there; "
                f"install a {top} matching your torch on the host")
    dist = dist_for_import(module)
    if dist is None:
        return (f"the repo imports '{module}', which is not in its environment and whose package safehub "
                f"cannot name; pass extra_dependencies=['<package>'] (or {{'{top}': '<package>'}}) to load()")
    return (f"the repo imports '{module}' (package {dist}), which is not in its environment; "
            f"pass extra_dependencies=['{dist}'] to load(), or use the default dependencies_mode='scan' "
            "if you chose another")
