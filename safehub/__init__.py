"""safehub: torch.hub without running a stranger's code in your process.

``import safehub`` does not import torch; torch is imported when a model is built.
"""

from __future__ import annotations

from ._api import LoadInfo, load
from ._api import entrypoint_help as help  # noqa: A004 - torch.hub's name
from ._api import list_entrypoints as list  # noqa: A004 - torch.hub's name
from ._artifact import ArtifactInfo, load_artifact, save
from ._config import get_dir, set_dir
from ._checkpoints import download_url_to_file, load_state_dict_from_url
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
