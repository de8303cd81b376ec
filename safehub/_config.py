"""Where safehub keeps things, and the environment switches it honours.

Functions take an ``env`` mapping (default ``os.environ``) instead of reading the
process environment behind the caller's back, so tests and embedders can pass
their own.

Cache layout under :func:`get_dir` (huggingface_hub style, one job per folder)::

    repos/<host>/<owner>/<name>/<sha>/   extracted repo archives (read-only once written)
    refs/                                 short-lived ref -> sha resolutions
    envs/<key>/                           one virtualenv per distinct dependency set
    host/<digest>/                        links to the host's torch family (the only host packages envs see)
    scans/<key>.json                      cached import scans of repos (keyed by their files' stat)
    jobs/                                 scratch folders of running sandbox jobs
    checkpoints/                          load_state_dict_from_url downloads
    locks/                                file locks guarding the above
    trusted_list.json                     repos the user trusted (host-only, never mounted)
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from pathlib import Path

__all__ = ["get_dir", "set_dir", "is_offline", "progress_enabled", "env_flag"]

_hub_dir_override: Path | None = None

_TRUE = {"1", "true", "yes", "on"}
_FALSE = {"", "0", "false", "no", "off"}


def env_flag(name: str, env: Mapping[str, str] | None = None, default: bool = False) -> bool:
    """Read a boolean environment switch. Unknown spellings are an error, not a guess."""
    env = os.environ if env is None else env
    raw = env.get(name)
    if raw is None:
        return default
    value = raw.strip().lower()
    if value in _TRUE:
        return True
    if value in _FALSE:
        return False
    from ._errors import ConfigError, escape_untrusted

    raise ConfigError(
        f"{name}={escape_untrusted(raw, limit=40)!r} is not a boolean",
        hint=f"set {name} to 1/0, true/false, yes/no or on/off, or unset it",
    )


def get_dir(env: Mapping[str, str] | None = None) -> str:
    """The safehub cache root, like ``torch.hub.get_dir``.

    Order: :func:`set_dir`, then ``$SAFEHUB_HOME``, then the platform cache folder
    (``$XDG_CACHE_HOME/safehub``, usually ``~/.cache/safehub``).
    """
    if _hub_dir_override is not None:
        return str(_hub_dir_override)
    env = os.environ if env is None else env
    home = env.get("SAFEHUB_HOME")
    if home:
        return str(Path(home).expanduser())
    xdg = env.get("XDG_CACHE_HOME")
    if xdg:
        return str(Path(xdg).expanduser() / "safehub")
    return str(user_dir("cache", env))


def user_dir(kind: str, env: Mapping[str, str] | None = None) -> Path:
    """safehub's per-user ``kind`` folder ("cache" or "config"), as platformdirs
    gives it. On Linux that is the XDG rule, computed here: platformdirs' import on
    every load cost a fresh process a few ms."""
    env = os.environ if env is None else env
    if sys.platform.startswith("linux"):
        var, default = {"cache": ("XDG_CACHE_HOME", "~/.cache"), "config": ("XDG_CONFIG_HOME", "~/.config")}[kind]
        return Path(env.get(var, "").strip() or os.path.expanduser(default)) / "safehub"
    import platformdirs  # deferred: keeps `import safehub` light

    find = {"cache": platformdirs.user_cache_dir, "config": platformdirs.user_config_dir}[kind]
    return Path(find("safehub", appauthor=False))


def set_dir(d: str | os.PathLike[str]) -> None:
    """Set the cache root for this process, like ``torch.hub.set_dir``."""
    global _hub_dir_override
    _hub_dir_override = Path(d).expanduser()


def hub_path(env: Mapping[str, str] | None = None) -> Path:
    return Path(get_dir(env))


def is_offline(env: Mapping[str, str] | None = None) -> bool:
    """``SAFEHUB_OFFLINE=1``: use only the cache, never the network."""
    return env_flag("SAFEHUB_OFFLINE", env)


def progress_enabled(verbose: bool = True, env: Mapping[str, str] | None = None) -> bool:
    """Progress bars show unless ``verbose=False`` or ``SAFEHUB_DISABLE_PROGRESS_BARS=1``."""
    return verbose and not env_flag("SAFEHUB_DISABLE_PROGRESS_BARS", env)
