"""The base interpreter's own package folders, which no sandbox may show.

Both the env layer (PythonEnv.hidden_paths) and the sandbox layer use this: the
backends hide these folders whatever a request says, so a code path that builds
its own SandboxRequest (a warm worker, a helper job) cannot forget them.
"""

from __future__ import annotations

import functools
import os
import sys
import sysconfig
from pathlib import Path

__all__ = ["base_site_packages"]


@functools.lru_cache(maxsize=1)
def base_site_packages() -> tuple[Path, ...]:
    """Package folders of the base interpreter (and a distro Python's dist-packages), real paths."""
    ver = f"python{sys.version_info[0]}.{sys.version_info[1]}"
    found: list[Path] = []
    for base in {sys.base_prefix, sys.base_exec_prefix}:
        paths = sysconfig.get_paths(vars={"base": base, "platbase": base})
        found += [Path(paths[k]) for k in ("purelib", "platlib") if paths.get(k)]
    for prefix in ("/usr", "/usr/local"):  # Debian's site.py adds these to a system Python
        found += [Path(prefix, "lib", "python3", "dist-packages"), Path(prefix, "lib", ver, "dist-packages"),
                  Path(prefix, "lib", ver, "site-packages")]
    return tuple(dict.fromkeys(Path(os.path.realpath(p)) for p in found if p.is_dir()))
