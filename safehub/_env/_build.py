"""Build (or reuse) the virtualenv for one dependency set.

Layout under the hub dir::

    envs/<key[:16]>/                  a finished env; it exists only once complete
    envs/.tmp-<key[:16]>-<random>/    a build in progress (or a crashed one)
    locks/env-<key[:16]>.lock         serialises builds (and removal) of that env

A build happens in the temp folder and is renamed into place as its last step,
under the file lock, so a reader never sees half an env and a crash leaves only
a temp folder that the next build of that key removes.

How the installers are driven safely: see _installers.py.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import logging
import os
import re
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from .._config import is_offline
from .._status import status
from .._errors import EnvironmentBuildError, escape_untrusted
from ._family import Family, ensure_family, family_digest
from ._host import HostInfo, check_host_requirements, check_installed_requirements, host_info, minimal_paths
from ._installers import (
    BUILD_TIMEOUT_S,
    INDEX_VARS,
    PTH_NAME,
    build_uv,
    build_virtualenv,
    child_env,
    choose_backend,
    compile_bytecode,
    far_older,
    remove_tree,
    site_packages,
    write_fresh,
    write_pth,
)
from ._resolve import Resolution, resolve_dependencies
from ._types import PythonEnv

__all__ = ["ensure_env", "env_key", "key_inputs", "choose_backend", "lock_path", "FORMAT_VERSION", "MARKER", "PTH_NAME"]

logger = logging.getLogger("safehub")

FORMAT_VERSION = 2  # 2: only the torch family is shared (a family folder, not site-packages)
MARKER = "safehub-env.json"
LOCK_TIMEOUT_S = BUILD_TIMEOUT_S + 300

# --- the cache key ------------------------------------------------------------


def key_inputs(resolution: Resolution, host: HostInfo, backend: str, env: Mapping[str, str],
               mode: str = "declared") -> dict[str, Any]:
    """Everything that shapes an env. Two calls with equal inputs share one env."""
    return {
        "format": FORMAT_VERSION,
        "mode": mode,
        "python": {
            "version": host.python_version,
            "implementation": host.implementation,
            "base_executable": str(host.base_python),
        },
        "platform": host.platform,
        "host_packages": dict(sorted(host.packages.items())),
        "host_family": family_digest(host.family_dists),
        "constraints": list(host.constraints),
        "requirements": sorted(resolution.install_lines),
        "backend": backend,
        "index": {k: env[k] for k in INDEX_VARS if env.get(k)},
    }


_USERINFO = re.compile(r"//[^/@\s]*@")


def _redacted(inputs: Mapping[str, Any]) -> dict[str, Any]:
    out = json.loads(json.dumps(inputs))
    out["index"] = {k: _USERINFO.sub("//***@", v) for k, v in out.get("index", {}).items()}
    return out


def env_key(inputs: Mapping[str, Any]) -> str:
    blob = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(blob.encode()).hexdigest()


# --- helpers ------------------------------------------------------------------


def lock_path(hub: Path, name: str) -> Path:
    """The lock guarding ``envs/<name>`` and its temp folders (name = key[:16])."""
    return hub / "locks" / f"env-{name}.lock"


def _read_marker(root: Path) -> dict[str, Any] | None:
    try:
        with open(root / MARKER, "rb") as f:
            raw = f.read(1 << 20)
        data = json.loads(raw)
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _valid(root: Path, key: str) -> dict[str, Any] | None:
    marker = _read_marker(root)
    if marker is None or marker.get("key") != key or not (root / "bin" / "python").exists():
        return None
    return marker


def env_ro_paths(root: Path, host: HostInfo, family: Family) -> tuple[Path, ...]:
    """What an env's interpreter reads: the env, the base prefix, the family folder and
    its targets (a target inside the base site-packages, which the sandbox hides, is
    listed on its own so it is shown again)."""
    shown = minimal_paths([root, *host.base_prefixes, family.folder, *family.targets])
    again = [t for t in family.targets if t not in shown
             and any(t == h or h in t.parents for h in host.base_site_packages)]
    return (*shown, *again)


def _python_env(root: Path, host: HostInfo, family: Family, key: str, marker: Mapping[str, Any]) -> PythonEnv:
    root = Path(os.path.realpath(root))
    try:
        os.utime(root)  # last use, for `safehub cache envs` / `rm-env --unused-days`
    except OSError:  # a read-only cache: last use is only a hint
        pass
    dists = marker.get("distributions") or []
    return PythonEnv(
        python=root / "bin" / "python",
        root=root,
        ro_paths=env_ro_paths(root, host, family),
        hidden_paths=host.base_site_packages,
        key=key,
        distributions=tuple(str(d) for d in dists),
        records={str(k): str(v) for k, v in (marker.get("records") or {}).items()}
        if isinstance(marker.get("records"), dict) else {},
        mode=str((marker.get("inputs") or {}).get("mode", "")),
        backend=str(marker.get("backend", "")),
    )


def _installed(site: Path) -> tuple[list[str], dict[str, str]]:
    """``name==version`` of each installed distribution, and the sha256 of its RECORD
    (which lists every installed file with its own hash): enough to tell later whether
    a rebuild installed exactly the same files."""
    from ._host import _read_metadata

    out, records = [], {}
    for meta in sorted(site.glob("*.dist-info/METADATA")):
        name, version, _ = _read_metadata(meta)
        pin = escape_untrusted(f"{name}=={version}", limit=200)
        out.append(pin)
        try:
            records[pin] = hashlib.sha256((meta.parent / "RECORD").read_bytes()).hexdigest()
        except OSError:
            records[pin] = ""
    return out, records


_PIN = re.compile(r"^[A-Za-z0-9](?:[A-Za-z0-9._-]*[A-Za-z0-9])?==[A-Za-z0-9.+!_-]{1,64}$")


def _checked_pins(pins: Sequence[str]) -> list[str]:
    """``name==version`` lines only (they go into the installer's constraints file: no options,
    URLs or markers), never a torch-family package (the host provides those)."""
    from ._resolve import TORCH_FAMILY, canonical

    out = []
    for pin in pins:
        if not isinstance(pin, str) or not _PIN.match(pin):
            raise EnvironmentBuildError(f"locked package {escape_untrusted(repr(pin), limit=100)} is not 'name==version'",
                                        hint="re-create the lockfile with `safehub lock`")
        if canonical(pin.partition("==")[0]) not in TORCH_FAMILY:
            out.append(pin)
    return sorted(set(out))


# --- the entry point --------------------------------------------------------------


def ensure_env(
    dependencies: Sequence[str],
    *,
    hub_dir: Path | str,
    verbose: bool = True,
    env: Mapping[str, str] | None = None,
    backend: str | None = None,
    mode: str = "declared",
    pins: Sequence[str] = (),
) -> PythonEnv:
    """Return a ready env holding ``dependencies`` (hubconf import names), building it once.

    ``pins`` (``name==version``, from a lockfile) constrain the resolution: a package the
    env needs is installed at exactly that version. They are part of the env's key.

    Raises EnvironmentBuildError (bad entry, installer failure), MissingHostPackageError
    (torch family missing on the host or rejected by a dependency) or OfflineError.
    """
    from .._fsutil import FileLock, LockTimeout

    env = os.environ if env is None else env
    offline = is_offline(env)

    def say(message: str, *args: object) -> None:
        status(message, *args, verbose=verbose, env=env)

    resolution = resolve_dependencies(dependencies)
    hub = Path(hub_dir).expanduser().resolve()  # real and absolute: it is bound into sandboxes
    host = host_info(hub)
    if pins:  # installer constraints, like the torch family's own requirements
        host = dataclasses.replace(host, constraints=(*host.constraints, *_checked_pins(pins)))
    check_host_requirements(resolution, host.packages)
    backend_name, uv = choose_backend(backend, env)
    inputs = key_inputs(resolution, host, backend_name, env, mode)
    key = env_key(inputs)

    family = ensure_family(hub, host.family_dists)
    envs = hub / "envs"
    final = envs / key[:16]
    marker = _valid(final, key)
    if marker is not None:
        return _python_env(final, host, family, key, marker)

    (hub / "locks").mkdir(parents=True, exist_ok=True)
    envs.mkdir(parents=True, exist_ok=True)
    lock = FileLock(str(lock_path(hub, key[:16])))
    try:
        lock.acquire(timeout=LOCK_TIMEOUT_S)
    except LockTimeout:
        raise EnvironmentBuildError(
            f"another process has been building environment {key[:16]} for over {LOCK_TIMEOUT_S} s",
            hint=f"if no safehub process is running, delete {hub / 'locks'} and retry",
        ) from None
    try:
        marker = _valid(final, key)  # someone else finished while we waited
        if marker is not None:
            return _python_env(final, host, family, key, marker)
        for stale in envs.glob(f".tmp-{key[:16]}-*"):  # crashed builds of this key; we hold its lock
            remove_tree(stale)
        if final.exists() or final.is_symlink():  # incomplete or foreign: never trusted
            remove_tree(final)
        tmp = envs / f".tmp-{key[:16]}-{uuid.uuid4().hex[:8]}"
        started = time.monotonic()
        say("building environment %s (%s) for: %s", key[:16], backend_name,
            ", ".join(resolution.install_lines) or "no extra packages")
        try:
            marker = _build(tmp, final, resolution, host, family, backend_name, uv, env, offline, key, inputs)
            os.rename(tmp, final)
        except BaseException:
            remove_tree(tmp)
            raise
        say("environment %s ready in %.1f s (%s)", key[:16], time.monotonic() - started,
            ", ".join(marker.get("distributions") or []) or "torch only")
        return _python_env(final, host, family, key, marker)
    finally:
        lock.release()


def _build(tmp: Path, final: Path, resolution: Resolution, host: HostInfo, family: Family, backend: str, uv: Path | None,
           env: Mapping[str, str], offline: bool, key: str, inputs: Mapping[str, Any]) -> dict[str, Any]:
    child = child_env(env, offline)
    scratch = Path(str(tmp) + ".in")  # installer inputs, beside the env; matches the stale glob
    scratch.mkdir()
    try:
        if backend == "uv":
            assert uv is not None
            build_uv(uv, tmp, scratch, resolution, host, child, offline)
        else:
            build_virtualenv(tmp, scratch, resolution, host, child, offline, family.folder)
    finally:
        remove_tree(scratch)
    site = site_packages(tmp, host)
    if not site.is_dir():
        raise EnvironmentBuildError(f"the new environment has no {site.name} folder at {site}",
                                    hint="report this with your Python and installer versions")
    check_installed_requirements(site, host.packages)
    # Ask the index for newer releases while bytecode compiles (a network round trip
    # must not lengthen the build).
    installed, records = _installed(site)
    old_found: list[str] = []
    old_check = None
    if backend == "uv" and uv is not None and installed and not offline:
        import threading

        old_check = threading.Thread(target=lambda: old_found.extend(far_older(uv, host.base_python, installed, child)),
                                     daemon=True)
        old_check.start()
    if resolution.install:
        compile_bytecode(tmp, final, site, host, child)
    write_pth(site, [family.folder])
    if old_check is not None:
        old_check.join()
    old = old_found
    if old:
        logger.warning("the resolver picked releases far older than the newest: %s. Usually the host's "
                       "torch or Python rules the newer ones out; pin a version with extra_dependencies= "
                       "if the repo needs a newer one", ", ".join(old))
    marker = {
        "format": FORMAT_VERSION,
        "key": key,
        "inputs": _redacted(inputs),  # the env is mounted into sandboxes: no index credentials here
        "backend": backend,
        "distributions": installed,
        "records": records,
        "far_older": old,
        "created": time.time(),
        "pid": os.getpid(),
    }
    write_fresh(tmp / MARKER, json.dumps(marker, indent=1, sort_keys=True))
    return marker
