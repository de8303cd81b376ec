"""safehub: torch.hub without running a stranger's code in your process.

``import safehub`` does not import torch; torch is imported when a model is built.
"""

from __future__ import annotations

import typing as _typing

from ._api import load
from ._api import entrypoint_help as help  # noqa: A004 - torch.hub's name
from ._api import list_entrypoints as list  # noqa: A004 - torch.hub's name
from ._config import get_dir, set_dir
from ._errors import (
    ArtifactError,
    ArtifactSaveError,
    ArtifactVersionError,
    CacheCorruptedError,
    ConfigError,
    DeviceUnavailableError,
    DisallowedTargetError,
    EntrypointFailedError,
    EntrypointNotFoundError,
    EntrypointArgumentsError,
    EnvironmentBuildError,
    ExportError,
    FetchError,
    HubconfError,
    InvalidNameError,
    InvalidRepoError,
    MissingHostPackageError,
    OfflineError,
    PolicyError,
    RateLimitError,
    RepoNotFoundError,
    RunnerEnvironmentError,
    SafehubError,
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    SandboxUnavailableError,
    SpecTooLargeError,
    TensorMismatchError,
    WeightsSealError,
    UnsafeArchiveError,
    UnsafeSpecError,
    UnsupportedReturnError,
    UntrustedRepoError,
)
from ._lazy import lazy_exports as _lazy_exports

if _typing.TYPE_CHECKING:
    from ._artifact import ArtifactInfo, load_artifact, save
    from ._checkpoints import download_url_to_file, load_state_dict_from_url
    from ._load_info import LoadInfo
    from ._sandbox import Limits

# Imported on first use: a fresh process's load imports them itself, after it has
# started loading torch's native libraries on a thread (safehub/_host_torch.py), so
# their import overlaps that instead of coming before it.
_LAZY = {
    "ArtifactInfo": "._artifact", "load_artifact": "._artifact", "save": "._artifact",
    "download_url_to_file": "._checkpoints", "load_state_dict_from_url": "._checkpoints",
    "Limits": "._sandbox", "LoadInfo": "._load_info",
}
__getattr__ = _lazy_exports(__name__, _LAZY)


def __dir__() -> _typing.List[str]:  # (`list` here is torch.hub's name)
    return sorted(set(globals()) | set(_LAZY))


__version__ = "0.1.0"

__all__ = [
    # torch.hub's API
    "load",
    "list",
    "help",
    "get_dir",
    "set_dir",
    "load_state_dict_from_url",
    "download_url_to_file",
    # safehub's additions
    "Limits",
    "LoadInfo",
    "save",
    "load_artifact",
    "ArtifactInfo",
    # errors
    "SafehubError",
    "ArtifactError",
    "ArtifactSaveError",
    "ArtifactVersionError",
    "CacheCorruptedError",
    "ConfigError",
    "DeviceUnavailableError",
    "DisallowedTargetError",
    "EntrypointFailedError",
    "EntrypointNotFoundError",
    "EntrypointArgumentsError",
    "EnvironmentBuildError",
    "ExportError",
    "FetchError",
    "HubconfError",
    "InvalidNameError",
    "InvalidRepoError",
    "MissingHostPackageError",
    "OfflineError",
    "PolicyError",
    "RateLimitError",
    "RepoNotFoundError",
    "RunnerEnvironmentError",
    "SandboxError",
    "SandboxLimitError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SpecTooLargeError",
    "TensorMismatchError",
    "WeightsSealError",
    "UnsafeArchiveError",
    "UnsafeSpecError",
    "UnsupportedReturnError",
    "UntrustedRepoError",
]
