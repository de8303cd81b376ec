"""What the rest of safehub needs to know about a built environment."""

from __future__ import annotations

from dataclasses import field
from pathlib import Path

from .._records import record

__all__ = ["PythonEnv"]


@record(frozen=True)
class PythonEnv:
    """An interpreter the runner can use.

    ``ro_paths`` lists every host path the interpreter must read (the env itself,
    the base interpreter's prefix, the host site-packages that provide torch). The
    sandbox binds exactly these read-only.
    """

    python: Path
    root: Path
    ro_paths: tuple[Path, ...]
    key: str = ""
    distributions: tuple[str, ...] = field(default_factory=tuple)
    backend: str = ""  # "uv", "virtualenv" or "host"
    records: dict[str, str] = field(default_factory=dict, hash=False, compare=False)  # "name==ver" -> sha256 of RECORD
    mode: str = ""  # the dependency resolution mode the env was built for
    # Folders inside ro_paths the sandbox hides (the base interpreter's site-packages);
    # ro_paths inside them (the torch family's link targets) are shown again.
    hidden_paths: tuple[Path, ...] = ()
