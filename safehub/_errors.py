"""The typed error tree.

Every error is a :class:`SafehubError`. Where torch.hub raised a stdlib error for
the same situation, the safehub error also subclasses that stdlib error, so an
existing ``except ValueError`` / ``except RuntimeError`` keeps working.

Like click, each error carries the exit code the CLI uses for it.

Messages must say what was wrong *and* what to do next. Text that came from the
sandbox (remote tracebacks, repo strings) is hostile: pass it through
:func:`escape_untrusted` before it enters a message.
"""

from __future__ import annotations

import re

__all__ = [
    "SafehubError",
    "InvalidRepoError",
    "ConfigError",
    "RepoNotFoundError",
    "FetchError",
    "RateLimitError",
    "OfflineError",
    "UnsafeArchiveError",
    "CacheCorruptedError",
    "UntrustedRepoError",
    "HubconfError",
    "EntrypointNotFoundError",
    "EntrypointArgumentsError",
    "MissingHostPackageError",
    "EnvironmentBuildError",
    "RunnerEnvironmentError",
    "SandboxError",
    "SandboxUnavailableError",
    "SandboxLimitError",
    "SandboxTimeoutError",
    "EntrypointFailedError",
    "UnsafeSpecError",
    "SpecTooLargeError",
    "DisallowedTargetError",
    "InvalidNameError",
    "TensorMismatchError",
    "WeightsSealError",
    "ExportError",
    "UnsupportedReturnError",
    "ArtifactError",
    "ArtifactVersionError",
    "ArtifactSaveError",
    "PolicyError",
    "DeviceUnavailableError",
    "ArtifactCacheError",
    "escape_untrusted",
]


class SafehubError(Exception):
    """Base of every error safehub raises on purpose."""

    exit_code: int = 1

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        self.message = message
        self.hint = hint
        super().__init__(message if not hint else f"{message}\n  hint: {hint}")


class ConfigError(SafehubError, ValueError):
    """A setting (an environment variable such as ``SAFEHUB_OFFLINE``) has a value
    safehub does not understand; it never guesses."""

    exit_code = 2


class DeviceUnavailableError(SafehubError, RuntimeError):
    """The requested device (e.g. ``cuda``) is not usable by this torch."""

    exit_code = 2


# --- repository names, fetching and the cache -------------------------------


class InvalidRepoError(SafehubError, ValueError):
    """The repo string is not ``owner/name[:ref]`` (torch.hub raises ValueError)."""

    exit_code = 2


class FetchError(SafehubError, OSError):
    """Downloading failed (torch.hub lets urllib's HTTPError, an OSError, through)."""

    exit_code = 3


class RepoNotFoundError(FetchError):
    """The repo, ref or file does not exist (HTTP 404)."""


class RateLimitError(FetchError):
    """The GitHub API refused because of rate limiting."""


class OfflineError(SafehubError, ConnectionError):
    """``SAFEHUB_OFFLINE=1`` is set and the cache does not hold what was needed."""

    exit_code = 3


class UnsafeArchiveError(SafehubError, ValueError):
    """A downloaded archive broke a rule (path traversal, links, size caps...)."""

    exit_code = 4


class CacheCorruptedError(SafehubError, OSError):
    """A cache entry does not match the content hash recorded when it was written."""

    exit_code = 4


class UntrustedRepoError(SafehubError):
    """The repo is not trusted and no prompt was possible or allowed."""

    exit_code = 5


class PolicyError(SafehubError, PermissionError):
    """The organisation policy (docs/policy.md) or a lockfile (docs/lockfile.md) forbids
    this load. The message names the rule and the file it came from. Its own exit code
    (11), distinct from an untrusted repo's (5): CI can tell "the org said no" apart."""

    exit_code = 11


# --- reading hubconf and building environments -------------------------------


class HubconfError(SafehubError, RuntimeError):
    """hubconf.py is missing, unparsable, or not statically readable."""

    exit_code = 6


class EntrypointNotFoundError(SafehubError, RuntimeError):
    """The named entrypoint is not in hubconf (torch.hub raises RuntimeError)."""

    exit_code = 6


class EntrypointArgumentsError(SafehubError, TypeError):
    """The arguments do not bind to the entrypoint's signature, as read statically from
    hubconf (torch.hub would raise the same TypeError from inside the call)."""

    exit_code = 6


class MissingHostPackageError(SafehubError, RuntimeError):
    """The repo needs torch/torchvision/torchaudio, which the host lacks or has at a
    version the repo rejects. These are shared from the host, never installed."""

    exit_code = 7


class EnvironmentBuildError(SafehubError, RuntimeError):
    """Building the per-repo virtualenv failed."""

    exit_code = 7


class RunnerEnvironmentError(SafehubError, ImportError):
    """safehub's own sandbox code (runners/) could not import a module it needs in
    the environment it runs in: an install problem, not the repo's or an export's.
    ``module`` is the missing module's name when the runner could tell."""

    exit_code = 7

    def __init__(self, message: str = "", *, module: str | None = None, hint: str | None = None) -> None:
        self.module = module
        super().__init__(message, hint=hint)


# --- the sandbox ------------------------------------------------------------


class SandboxError(SafehubError, RuntimeError):
    """The sandboxed runner failed."""

    exit_code = 8


class SandboxUnavailableError(SandboxError):
    """The requested isolation cannot be built on this machine. Never downgraded."""


class SandboxLimitError(SandboxError):
    """A resource limit killed the runner. ``limit`` is one of
    ``timeout``, ``memory``, ``pids``, ``disk``, ``cpu``, ``output``."""

    def __init__(self, message: str = "", *, limit: str, hint: str | None = None) -> None:
        self.limit = limit
        super().__init__(message, hint=hint)


class SandboxTimeoutError(SandboxLimitError, TimeoutError):
    """The runner ran past its wall-clock limit."""

    def __init__(self, message: str = "", *, hint: str | None = None) -> None:
        super().__init__(message, limit="timeout", hint=hint)


class EntrypointFailedError(SandboxError):
    """Repo code raised inside the sandbox. ``remote_type`` (the qualified type name,
    e.g. ``mypkg.errors.ShapeError``; built-ins plain), ``remote_message`` and
    ``remote_traceback`` are the sandbox's own words, escaped and bounded."""

    def __init__(
        self,
        message: str = "",
        *,
        remote_type: str = "",
        remote_message: str = "",
        remote_traceback: str = "",
        hint: str | None = None,
    ) -> None:
        self.remote_type = remote_type
        self.remote_message = remote_message
        self.remote_traceback = remote_traceback
        super().__init__(message, hint=hint)


# --- the return channel -----------------------------------------------------


class UnsafeSpecError(SafehubError, ValueError):
    """The architecture spec or weights from the sandbox broke a rule. Nothing was built."""

    exit_code = 9


class SpecTooLargeError(UnsafeSpecError):
    """A size cap (bytes, nodes, tensors, nesting depth) was exceeded."""


class DisallowedTargetError(UnsafeSpecError):
    """A call target, method or module class is not on the allowlist."""


class InvalidNameError(UnsafeSpecError):
    """A node name, path atom or keyword does not match the identifier rules."""


class TensorMismatchError(UnsafeSpecError):
    """The safetensors file does not match the spec (keys, shapes or dtypes)."""


class WeightsSealError(UnsafeSpecError):
    """The weights memfd the host made for a job could not be sealed read-only (the
    sandbox sealed it itself, or something still maps it writable). Nothing was built."""


class ExportError(SafehubError, RuntimeError):
    """Neither fx nor aten mode could carry the model out of the sandbox."""

    exit_code = 10


class UnsupportedReturnError(SafehubError, TypeError):
    """The entrypoint returned something that is not a module or a container of them."""

    exit_code = 10


# --- model artifacts (safehub.save / safehub.load_artifact) -----------------


class ArtifactError(UnsafeSpecError):
    """An artifact folder failed its checks (layout, provenance, hashes). Nothing was built."""


class ArtifactVersionError(ArtifactError):
    """An artifact's format version is not one this safehub reads."""


class ArtifactCacheError(ArtifactError):
    """An artifact-cache entry failed its checks (layout, key, hashes, validation). Nothing was built."""


class ArtifactSaveError(SafehubError, ValueError):
    """``safehub.save`` refused: the object is not a model safehub rebuilt, or it changed in a way an artifact cannot carry."""

    exit_code = 10


# --- untrusted text ---------------------------------------------------------

_CONTROL = re.compile(r"[\x00-\x08\x0b-\x1f\x7f-\x9f\u200b-\u200f\u2028-\u202e\u2060-\u206f\ufeff\ufff9-\ufffb]")


def escape_untrusted(text: str | bytes, *, limit: int = 4000) -> str:
    """Make sandbox-produced text safe for logs and error messages.

    Control characters (ANSI escapes, bidi overrides, NUL...) are shown as
    ``\\xNN`` escapes, newlines and tabs survive, and the result is cut to
    ``limit`` characters with a marker saying how much was dropped.
    """
    if isinstance(text, bytes):
        text = text.decode("utf-8", errors="replace")
    dropped = 0
    if len(text) > limit:
        dropped = len(text) - limit
        text = text[-limit:]  # the end of a traceback is the useful part
    text = _CONTROL.sub(lambda m: f"\\x{ord(m.group()):02x}" if ord(m.group()) < 256 else f"\\u{ord(m.group()):04x}", text)
    if dropped:
        text = f"[... {dropped} characters cut ...]\n{text}"
    return text
