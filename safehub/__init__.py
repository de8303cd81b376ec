"""safehub: torch.hub without running a stranger's code in your process.

``import safehub`` does not import torch; torch is imported when a model is built.
"""

from __future__ import annotations

from ._api import LoadInfo, help, list, load
from ._config import get_dir, set_dir
from ._hub_io import download_url_to_file, load_state_dict_from_url
from ._errors import (
    CacheCorruptedError,
    DisallowedTargetError,
    EntrypointFailedError,
    EntrypointNotFoundError,
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
    SafehubError,
    SandboxError,
    SandboxLimitError,
    SandboxTimeoutError,
    SandboxUnavailableError,
    SpecTooLargeError,
    TensorMismatchError,
    UnsafeArchiveError,
    UnsafeSpecError,
    UnsupportedReturnError,
    UntrustedRepoError,
)
from ._sandbox import Limits

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
    # errors
    "SafehubError",
    "CacheCorruptedError",
    "DisallowedTargetError",
    "EntrypointFailedError",
    "EntrypointNotFoundError",
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
    "SandboxError",
    "SandboxLimitError",
    "SandboxTimeoutError",
    "SandboxUnavailableError",
    "SpecTooLargeError",
    "TensorMismatchError",
    "UnsafeArchiveError",
    "UnsafeSpecError",
    "UnsupportedReturnError",
    "UntrustedRepoError",
]
