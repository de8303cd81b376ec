"""The host's own interpreter for safehub's helper jobs (checkpoint conversion),
seeing only the torch family.

The host venv's site-packages holds everything the user installed; a job that
unpickles an untrusted checkpoint must not read it (nor the base interpreter's
own site-packages). So the helper env is a bare venv made by hand from the base
interpreter (no installer, no pip: pyvenv.cfg, a bin/python link and a .pth
naming the torch family folder), kept under ``<hub>/host``, and the sandbox binds
exactly what a repo env gets: the venv, the base prefix less its site-packages,
the family folder and its targets.
"""

from __future__ import annotations

import os
import shutil
import uuid
from pathlib import Path

from .._errors import EnvironmentBuildError
from ._build import env_ro_paths
from ._family import ensure_family
from ._host import host_info, sysconfig_ready
from ._installers import write_pth
from ._types import PythonEnv

__all__ = ["host_env"]

MARKER = "safehub-host-env"


def _site(root: Path, version: str) -> Path:
    return root / "lib" / f"python{version}" / "site-packages"


def host_env(hub_dir: Path | str | None = None) -> PythonEnv:
    """A venv of the base interpreter whose only packages are the host's torch family."""
    from .._config import hub_path

    sysconfig_ready()
    hub = Path(hub_dir) if hub_dir is not None else hub_path()
    host = host_info(hub)
    family = ensure_family(hub, host.family_dists)
    major_minor = ".".join(host.python_version.split(".")[:2])
    root = hub / "host" / f"{family.folder.name}-python"
    want = f"{host.base_python}\n{family.folder}\n"
    try:
        ok = (root / MARKER).read_text(encoding="utf-8") == want and (root / "bin" / "python").exists()
    except OSError:
        ok = False
    if not ok:
        _build(root, host.base_python, family.folder, major_minor, want)
    root = Path(os.path.realpath(root))
    return PythonEnv(
        python=root / "bin" / "python",
        root=root,
        ro_paths=env_ro_paths(root, host, family),
        hidden_paths=host.base_site_packages,
        key="host",
        distributions=(),
        backend="host",
    )


def _build(root: Path, base_python: Path, family_folder: Path, major_minor: str, marker: str) -> None:
    tmp = root.parent / f".tmp-{root.name}-{uuid.uuid4().hex[:8]}"
    try:
        (tmp / "bin").mkdir(parents=True)
        os.symlink(base_python, tmp / "bin" / "python")
        (tmp / "pyvenv.cfg").write_text(
            f"home = {base_python.parent}\ninclude-system-site-packages = false\nversion = {major_minor}\n",
            encoding="utf-8")
        site = _site(tmp, major_minor)
        site.mkdir(parents=True)
        write_pth(site, [family_folder])
        (tmp / MARKER).write_text(marker, encoding="utf-8")
        if root.exists() or root.is_symlink():
            shutil.rmtree(root, ignore_errors=True)
        try:
            os.rename(tmp, root)
        except OSError:  # another process made it first
            shutil.rmtree(tmp, ignore_errors=True)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise EnvironmentBuildError(f"could not make the helper interpreter folder {root}: {exc}",
                                    hint=f"check that {root.parent} is writable, or delete it and retry") from None
