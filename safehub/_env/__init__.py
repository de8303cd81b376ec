"""Per-repo virtual environments.

``ensure_env`` builds (once) and returns the env for a hubconf ``dependencies``
list; ``host_env`` is the host interpreter with only the torch family, for helper jobs;
``resolve_dependencies`` is the pure name mapping both rely on; ``plan_for_repo``
chooses the dependency entries by mode (declared / scan / requirements, _plan.py,
_scan.py). Envs see only the host's torch family, through a folder of links
(_family.py).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from .._lazy import lazy_exports
from ._build import ensure_env, env_key, key_inputs
from ._host import host_info
from ._hostenv import host_env
from ._plan import MODES, DependencyPlan, UnknownImportError, plan_for_repo
from ._resolve import Resolution, Requirement, resolve_dependencies
from ._types import PythonEnv

__all__ = [
    "MODES",
    "DependencyPlan",
    "UnknownImportError",
    "plan_for_repo",
    "EnvRecord",
    "PythonEnv",
    "Resolution",
    "Requirement",
    "ensure_env",
    "env_key",
    "host_env",
    "host_info",
    "key_inputs",
    "list_envs",
    "prune_envs",
    "remove_env",
    "resolve_dependencies",
]

if TYPE_CHECKING:
    from ._manage import EnvRecord, list_envs, prune_envs, remove_env

# Imported on first use (env management is the CLI's, no part of a load): safehub/_lazy.py.
__getattr__ = lazy_exports(__name__, {"EnvRecord": "._manage", "list_envs": "._manage", "prune_envs": "._manage", "remove_env": "._manage"})
