"""The installers: uv (preferred) and virtualenv + pip (fallback).

Each builds a venv in a temp folder. Security notes (measured, see
design/measurements.md and tests/test_env.py):
- Wheels only (``--no-build`` / ``--only-binary``): no setup.py ever runs on the host.
- The installer never sees host packages writably: uv ignores packages visible
  only through our ``.pth``; pip never uninstalls outside the env's prefix.
- Bytecode is compiled by ``python -I -S -m compileall``, not by the installer:
  ``uv --compile-bytecode`` starts the env's interpreter with ``site`` enabled,
  which runs any ``import`` line of a ``.pth`` file a wheel shipped -- on the host.
- Wheels can overwrite pyvenv.cfg and bin/python through ``.data/`` (uv and pip
  both let them); the interpreter files are compared before and after.
"""

from __future__ import annotations

import hashlib
import logging
import os
import re
import shutil
import subprocess
import sys
from collections.abc import Mapping, Sequence
from pathlib import Path

from .._errors import EnvironmentBuildError, MissingHostPackageError, OfflineError, escape_untrusted
from .._fsutil import remove_tree
from ._host import HostInfo, sysconfig_ready
from ._resolve import TORCH_FAMILY, Resolution

__all__ = ["choose_backend", "build_uv", "far_older", "build_virtualenv", "compile_bytecode", "child_env", "write_pth",
           "site_packages", "remove_tree", "write_fresh", "INDEX_VARS", "PTH_NAME"]

logger = logging.getLogger("safehub")

PTH_NAME = "zzzz-safehub-host.pth"  # sorts last: the env's own .pth paths come first
BUILD_TIMEOUT_S = 1800

# Installer settings that decide *which* packages arrive; part of the cache key.
INDEX_VARS = (
    "UV_INDEX",
    "UV_INDEX_URL",
    "UV_DEFAULT_INDEX",
    "UV_EXTRA_INDEX_URL",
    "UV_FIND_LINKS",
    "UV_EXCLUDE_NEWER",
    "PIP_INDEX_URL",
    "PIP_EXTRA_INDEX_URL",
    "PIP_FIND_LINKS",
)
# Installer settings passed through (network, index, cache); every other UV_*/PIP_*
# variable is dropped so a stray UV_COMPILE_BYTECODE or PIP_NO_BINARY cannot undo our choices.
_PASS_VARS = frozenset(
    INDEX_VARS
    + (
        "UV_CACHE_DIR",
        "UV_INDEX_STRATEGY",
        "UV_KEYRING_PROVIDER",
        "UV_NATIVE_TLS",
        "UV_SYSTEM_CERTS",
        "UV_INSECURE_HOST",
        "UV_HTTP_TIMEOUT",
        "UV_HTTP_RETRIES",
        "UV_CONCURRENT_DOWNLOADS",
        "UV_OFFLINE",
        "PIP_TRUSTED_HOST",
        "PIP_CERT",
        "PIP_CLIENT_CERT",
        "PIP_PROXY",
        "PIP_TIMEOUT",
        "PIP_RETRIES",
        "PIP_CACHE_DIR",
        "PIP_NO_CACHE_DIR",
    )
)
_DROP_VARS = frozenset({"PYTHONPATH", "PYTHONHOME", "PYTHONUSERBASE", "PYTHONSTARTUP", "VIRTUAL_ENV", "CONDA_PREFIX"})


# --- backend choice -----------------------------------------------------------


def _find_uv(env: Mapping[str, str]) -> Path | None:
    sysconfig_ready()  # find_uv_bin reads sysconfig
    try:
        from uv import find_uv_bin  # the uv wheel safehub depends on

        return Path(find_uv_bin())
    except (ImportError, FileNotFoundError):
        pass
    found = shutil.which("uv", path=env.get("PATH"))
    return Path(found) if found else None


def choose_backend(backend: str | None, env: Mapping[str, str]) -> tuple[str, Path | None]:
    """``uv`` when available, else ``virtualenv`` (+ pip). Returns (name, uv binary)."""
    wanted = (backend or env.get("SAFEHUB_ENV_BACKEND") or "auto").strip().lower()
    if wanted not in ("auto", "uv", "virtualenv"):
        raise EnvironmentBuildError(
            f"unknown environment backend {escape_untrusted(wanted, limit=40)!r}",
            hint="use backend='uv' or backend='virtualenv' (or SAFEHUB_ENV_BACKEND), or leave it unset",
        )
    if wanted in ("auto", "uv"):
        uv = _find_uv(env)
        if uv is not None:
            return "uv", uv
        if wanted == "uv":
            raise EnvironmentBuildError("uv was requested but is not installed", hint="pip install uv")
        logger.info("uv not found; building environments with virtualenv and pip (slower)")
    import importlib.util

    if importlib.util.find_spec("virtualenv") is None or importlib.util.find_spec("pip") is None:
        raise EnvironmentBuildError(
            "no environment builder is available: neither uv nor virtualenv+pip is installed",
            hint="pip install uv (recommended) or pip install virtualenv",
        )
    return "virtualenv", None


def child_env(env: Mapping[str, str], offline: bool) -> dict[str, str]:
    out = {
        k: v
        for k, v in env.items()
        if k not in _DROP_VARS and (not k.startswith(("UV_", "PIP_")) or k in _PASS_VARS)
    }
    out["UV_PYTHON_DOWNLOADS"] = "never"  # never fetch an interpreter behind the user's back
    out["UV_NO_PROGRESS"] = "1"
    out["PIP_DISABLE_PIP_VERSION_CHECK"] = "1"
    if offline:
        out["UV_OFFLINE"] = "1"
    return out


def site_packages(root: Path, host: HostInfo) -> Path:
    major, minor = host.python_version.split(".")[:2]
    return root / "lib" / f"python{major}.{minor}" / "site-packages"



def _pdeathsig_hook():
    """A preexec_fn that makes the installer die with us (Linux), so a killed
    safehub never leaves it writing into a temp folder the next build removes.
    Resolved in the parent: importing in a forked child can deadlock."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        import ctypes

        prctl = ctypes.CDLL(None, use_errno=True).prctl
    except (OSError, AttributeError):
        return None

    def hook() -> None:
        prctl(1, 9, 0, 0, 0)  # PR_SET_PDEATHSIG, SIGKILL

    return hook


def _run(argv: list[str], *, env: Mapping[str, str], cwd: Path, what: str) -> subprocess.CompletedProcess[str]:
    logger.debug("running %s", argv)
    try:
        return subprocess.run(
            argv, env=dict(env), cwd=cwd, stdin=subprocess.DEVNULL, capture_output=True,
            text=True, errors="replace", timeout=BUILD_TIMEOUT_S, check=False,
            preexec_fn=_pdeathsig_hook(),
        )
    except subprocess.TimeoutExpired:
        raise EnvironmentBuildError(
            f"{what} did not finish within {BUILD_TIMEOUT_S} s", hint="check your network or index settings"
        ) from None
    except OSError as e:
        raise EnvironmentBuildError(f"could not start {what}: {e}", hint="check that the installer is installed") from None


_TORCH_CONFLICT = re.compile(
    r"^\s*(\S+ \S+) depends on ((?:" + "|".join(sorted(TORCH_FAMILY, key=len, reverse=True)) + r")\b[^\s]*)",
    re.MULTILINE,
)


# uv: "Because all versions of fvcore have no usable wheels and you require fvcore, ..."
# (also "fvcore==0.1.5 has no usable wheels"); the names are escaped text from uv's output.
_NO_WHEEL = re.compile(r"(?:versions of |\b)([A-Za-z0-9][A-Za-z0-9._-]{0,99})(?:[=<>!~][^ ]*)? (?:have|has) no usable wheels")


def _fail(proc: subprocess.CompletedProcess[str], what: str, resolution: Resolution, offline: bool,
          constraints: Sequence[str] = ()) -> Exception:
    tail = escape_untrusted((proc.stderr or "") + (proc.stdout or ""), limit=3000).strip()
    wanted = ", ".join(resolution.install_lines) or "(nothing)"
    if offline:
        return OfflineError(
            f"SAFEHUB_OFFLINE=1 is set and the package cache cannot provide the repo's dependencies "
            f"({wanted}).\n{what} said:\n{tail}",
            hint="run the same load once with network access (unset SAFEHUB_OFFLINE) to fill the cache",
        )
    if "unexpected argument" in tail or "no such option" in tail:
        return EnvironmentBuildError(
            f"{what} is too old for the options safehub needs.\n{what} said:\n{tail}",
            hint="upgrade it: pip install -U uv (safehub needs uv with `uv pip install --excludes`) "
            "or pip install -U pip virtualenv",
        )
    # pip (which cannot exclude packages) fails to resolve against our pins of the host's torch family.
    culprit = _TORCH_CONFLICT.search(tail)
    if culprit is not None:
        return MissingHostPackageError(
            f"the repo's dependency {culprit.group(1)} requires {culprit.group(2)}, which the host's "
            f"torch-family packages do not satisfy.\n{what} said:\n{tail}",
            hint="install a compatible torch/torchvision/torchaudio on the host, or load a revision of the repo "
            "that works with the host's; safehub never installs them into a repo env",
        )
    no_wheel = _NO_WHEEL.findall(tail)
    if no_wheel:
        names = ", ".join(dict.fromkeys(no_wheel))
        return EnvironmentBuildError(
            f"{what} could not install the repo's dependencies ({wanted}): {names} publishes no wheel for this "
            f"Python and platform, only source, and safehub never builds source on the host (its setup.py is code)."
            f"\n{what} said:\n{tail}",
            hint=f"build the wheel yourself where running its setup.py is acceptable (pip wheel --no-deps "
            f"{no_wheel[0]} -w DIR, in a container if you do not trust it) and set UV_FIND_LINKS=DIR, "
            "or load a revision of the repo that does not need it",
        )
    return EnvironmentBuildError(
        f"{what} could not install the repo's dependencies ({wanted}).\n{what} said:\n{tail}",
        hint="safehub installs wheels only (no source builds) from your package index; check that each "
        "dependency has a wheel for this Python and platform, and that the index is reachable. The host "
        "torch's own requirements are also enforced (" + (", ".join(constraints) or "none") + ")",
    )


def _write_lines(path: Path, lines: Sequence[str]) -> Path:
    path.write_text("".join(f"{line}\n" for line in lines), encoding="utf-8")
    return path


def write_fresh(path: Path, text: str) -> None:
    """Write a file a wheel may have planted (as a file or a link) without following it."""
    if path.is_symlink() or path.exists():
        remove_tree(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o644)
    with os.fdopen(fd, "w", encoding="utf-8") as f:
        f.write(text)


def write_pth(site: Path, paths: Sequence[Path]) -> None:
    lines = []
    for p in paths:
        text = str(p)
        if "\n" in text or "\r" in text or text.startswith(("import ", "import\t", "#")):
            raise EnvironmentBuildError(f"host folder {text!r} cannot be named in a .pth file",
                                        hint="use a hub dir (SAFEHUB_HOME) whose path has no newline")
        lines.append(text)
    write_fresh(site / PTH_NAME, "".join(f"{line}\n" for line in lines))


def _interpreter_files(root: Path) -> dict[str, str]:
    """What makes the env's interpreter: pyvenv.cfg and bin/python*. Wheels can
    overwrite any of them through their .data/ folders (measured: uv and pip both
    do), so they are compared before and after the install."""
    out: dict[str, str] = {}
    for p in [root / "pyvenv.cfg", *sorted((root / "bin").glob("python*"))]:
        if p.is_symlink():
            out[p.name] = "link:" + os.readlink(p)
        elif p.is_file():
            out[p.name] = "file:" + hashlib.sha256(p.read_bytes()).hexdigest()
    return out


def _check_interpreter(root: Path, before: Mapping[str, str], resolution: Resolution) -> None:
    after = _interpreter_files(root)
    if after != before:
        changed = sorted(k for k in set(before) | set(after) if before.get(k) != after.get(k))
        raise EnvironmentBuildError(
            f"installing the repo's dependencies ({', '.join(resolution.install_lines)}) replaced the "
            f"environment's interpreter files ({', '.join(changed)}); refusing to use it",
            hint="a package ships files that overwrite the virtualenv itself; do not trust this repo's dependencies",
        )


def compile_bytecode(tmp: Path, final: Path, site: Path, host: HostInfo, env: Mapping[str, str]) -> None:
    # -I -S: no site, no .pth processing; compileall only parses the files.
    # -s/-p: record the final path in the .pyc, not the temp one.
    # cwd is the interpreter's own folder: before 3.11, -m puts cwd first on
    # sys.path, and the env root may hold files a wheel put there (compileall.py...).
    argv = [str(host.base_python), "-I", "-S", "-m", "compileall", "-q", "-j", "0",
            "-s", str(tmp), "-p", str(final), str(site)]
    proc = _run(argv, env=env, cwd=host.base_python.parent, what="compileall")
    if proc.returncode != 0:  # e.g. a package ships a template with bad syntax; harmless
        logger.debug("compileall reported problems: %s", escape_untrusted(proc.stdout, limit=500))


# --- the two backends -----------------------------------------------------------


def build_uv(uv: Path, tmp: Path, scratch: Path, resolution: Resolution, host: HostInfo,
              env: Mapping[str, str], offline: bool) -> None:
    proc = _run(
        [str(uv), "venv", "--no-project", "--no-config", "--quiet", "--relocatable",
         "--python", str(host.base_python), str(tmp)],
        env=env, cwd=scratch, what="uv venv",
    )
    if proc.returncode != 0:
        raise _fail(proc, "uv venv", resolution, False)
    if not resolution.install:
        return
    before = _interpreter_files(tmp)
    req = _write_lines(scratch / "requirements.txt", resolution.install_lines)
    excl = _write_lines(scratch / "excludes.txt", sorted(TORCH_FAMILY))
    cons = _write_lines(scratch / "constraints.txt", host.constraints)
    argv = [str(uv), "pip", "install", "--no-config", "--color", "never", "--python", str(tmp / "bin" / "python"),
            "--no-build", "--link-mode", "hardlink", "--excludes", str(excl), "-c", str(cons), "-r", str(req)]
    if offline:
        argv.append("--offline")
    proc = _run(argv, env=env, cwd=scratch, what="uv")
    if proc.returncode != 0:
        raise _fail(proc, "uv", resolution, offline, host.constraints)
    _check_interpreter(tmp, before, resolution)


def build_virtualenv(tmp: Path, scratch: Path, resolution: Resolution, host: HostInfo,
                      env: Mapping[str, str], offline: bool, family_folder: Path) -> None:
    proc = _run(
        [sys.executable, "-I", "-m", "virtualenv", "--no-seed", "--no-download", "--no-periodic-update",
         "--activators", "", "-p", str(host.base_python), str(tmp)],
        env=env, cwd=scratch, what="virtualenv",
    )
    if proc.returncode != 0:
        raise _fail(proc, "virtualenv", resolution, False)
    if not resolution.install:
        return
    before = _interpreter_files(tmp)
    # pip cannot exclude packages. Show it the host's packages (through the .pth,
    # read-only: pip never uninstalls outside the env's prefix) and pin the torch
    # family to the host's versions, so a dependency wanting another torch fails
    # to resolve instead of downloading one.
    write_pth(site_packages(tmp, host), [family_folder])
    pins = [f"{n}=={v}" for n, v in sorted(host.packages.items())]
    pins += [f"{n}<0" for n in sorted(TORCH_FAMILY - set(host.packages))]  # absent: never installable
    req = _write_lines(scratch / "requirements.txt", resolution.install_lines)
    cons = _write_lines(scratch / "constraints.txt", [*host.constraints, *pins])
    argv = [sys.executable, "-I", "-m", "pip", "--python", str(tmp / "bin" / "python"), "install",
            "--no-input", "--only-binary", ":all:", "--no-compile", "--no-warn-script-location",
            "-c", str(cons), "-r", str(req)]
    if offline:
        argv.append("--no-index")
    proc = _run(argv, env=env, cwd=scratch, what="pip")
    if proc.returncode != 0:
        raise _fail(proc, "pip", resolution, offline, host.constraints)
    _check_interpreter(tmp, before, resolution)


def _major(version: str) -> int | None:
    m = re.match(r"^\s*v?(\d{1,6})[.\s]", version + " ")
    return int(m.group(1)) if m else None


def far_older(uv: Path, base_python: Path, installed: Sequence[str], env: Mapping[str, str]) -> list[str]:
    """Installed distributions whose newest release has a higher major version
    (e.g. hydra-core 0.11.3 when 1.3 exists): the resolver was probably held back by the
    host's torch or Python, and old releases can behave very differently. Asks the index
    for the newest release of each name (``uv pip compile --no-deps``, interpreted by the
    trusted base Python, never the env's: its .pth files came from wheels). Any failure
    just means no warning."""
    pins = {}
    for line in installed:
        name, _, version = line.partition("==")
        if re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9._-]*", name) and version:
            pins[re.sub(r"[-_.]+", "-", name).lower()] = (name, version)
    if not pins:
        return []
    argv = [str(uv), "pip", "compile", "-", "--no-deps", "--no-header", "--no-annotate", "--no-config",
            "--color", "never", "--quiet", "--python", str(base_python)]
    try:
        proc = subprocess.run(argv, input="".join(f"{n}\n" for n, _ in pins.values()), env=dict(env),
                              cwd=base_python.parent, capture_output=True, text=True, errors="replace",
                              timeout=15, check=False)
    except (OSError, subprocess.TimeoutExpired):
        return []
    out = []
    for line in proc.stdout.splitlines()[:10_000] if proc.returncode == 0 else []:
        name, _, newest = line.strip().partition("==")
        hit = pins.get(re.sub(r"[-_.]+", "-", name).lower())
        if hit is None:
            continue
        a, b = _major(hit[1]), _major(newest)
        if a is not None and b is not None and b > a:
            out.append(escape_untrusted(f"{hit[0]} {hit[1]} (newest {newest})", limit=200))
    return sorted(out)
