"""Sandbox half of the download broker (stdlib + torch only; never imports safehub).

The sandbox has no network. ``install(in_dir)`` replaces torch.hub's
``load_state_dict_from_url`` and ``download_url_to_file`` (and the
``torch.utils.model_zoo.load_url`` alias) with versions that serve URLs listed
in ``<in_dir>/downloads/manifest.json`` ({url: file}) from read-only files the
host fetched. ``file`` is an absolute path (bound read-only at the same path)
or a name inside ``<in_dir>/downloads/``.

Any other URL raises :class:`NeedsDownload` and is remembered: even if the repo
code swallows the exception, :func:`check` reports it afterwards, so a model is
never returned with weights silently missing. The runner turns that into
``{"status": "error", "error": {"category": "needs_download", "urls": [...]}}``;
the host downloads the URLs and runs the job again.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import shutil
import tempfile
import warnings
import zipfile
from urllib.parse import urlparse

from _contract import PROTOCOL, Result

__all__ = ["install", "check", "NeedsDownload", "NestedHubLoad", "requested", "served"]

MAX_URLS = 16
MAX_URL_LEN = 2048
_HASH_REGEX = re.compile(r"-([a-f0-9]*)\.")  # torch.hub's: resnet18-bfd8deac.pth

_manifest: dict[str, str] = {}
_requested: list[str] = []
_served: list[str] = []  # staged URLs the entrypoint was given, reported with a load's result


class NeedsDownload(BaseException):
    """A URL the host has not fetched yet. BaseException so ``except Exception`` in
    repo code does not swallow it (and :func:`check` catches the rest)."""

    def __init__(self, url: str) -> None:
        self.url = url
        super().__init__(f"safehub: {url} must be downloaded by the host first (the sandbox has no network)")


class NestedHubLoad(RuntimeError):
    """The entrypoint called torch.hub.load/list/help on another (GitHub) repo: the
    sandbox has no network and safehub does not fetch a second repo for it yet. A
    RuntimeError, so a repo with a fallback (``except Exception``) still takes it."""


def _refuse_nested(fn_name: str, original):
    def call(repo_or_dir, *args, **kwargs):
        if fn_name == "load" and kwargs.get("source", "github") == "local":
            return original(repo_or_dir, *args, **kwargs)  # a folder inside this sandbox
        what = f"{str(repo_or_dir)[:100]!r}" + (f", {str(args[0])[:60]!r}" if args else "")
        raise NestedHubLoad(
            f"this repo's code calls torch.hub.{fn_name}({what}, ...) on another GitHub repo (a nested hub load); "
            "safehub does not fetch nested hub repos yet and the sandbox has no network"
        )

    call.__name__ = fn_name
    call.__doc__ = original.__doc__
    return call


def requested() -> list[str]:
    return list(_requested)


def served() -> list[str]:
    """The staged URLs repo code asked for, in order (the host's download memo keeps
    exactly these, so a URL the entrypoint no longer asks for is not staged again)."""
    return list(_served)


def _serve(url: str) -> str:
    url = str(url)
    path = _manifest.get(url)
    if path is not None:
        if url not in _served and len(_served) < MAX_URLS:
            _served.append(url)
        return path
    if len(url) <= MAX_URL_LEN and url not in _requested and len(_requested) < MAX_URLS:
        _requested.append(url)
    raise NeedsDownload(url)


def _check_hash(path: str, hash_prefix: str) -> None:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    digest = h.hexdigest()
    if not digest.startswith(hash_prefix):
        raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "{digest}")')


def download_url_to_file(url, dst, hash_prefix=None, progress=True):
    """torch.hub.download_url_to_file, served from the host's download."""
    src = _serve(url)
    if hash_prefix is not None:
        _check_hash(src, hash_prefix)
    dst = os.path.expanduser(dst)
    tmp = f"{dst}.{os.getpid()}.partial"
    shutil.copyfile(src, tmp)
    os.replace(tmp, dst)


def load_state_dict_from_url(
    url, model_dir=None, map_location=None, progress=True, check_hash=False, file_name=None, weights_only=False
):
    """torch.hub.load_state_dict_from_url, served from the host's download. ``model_dir``
    is ignored: the file is read where the host put it (read-only)."""
    import torch

    src = _serve(url)
    if check_hash:
        filename = file_name if file_name is not None else os.path.basename(urlparse(url).path)
        match = _HASH_REGEX.search(filename)
        if match:
            _check_hash(src, match.group(1))
    if _is_legacy_zip(src):
        return _legacy_zip_load(src, map_location, weights_only)
    return torch.load(src, map_location=map_location, weights_only=weights_only)


def _is_legacy_zip(path: str) -> bool:
    # torch.hub's rule: a zip holding exactly one file is a manually zipped checkpoint.
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
        return len(infos) == 1 and not infos[0].is_dir()
    return False


def _legacy_zip_load(path: str, map_location, weights_only: bool):
    import torch

    warnings.warn(
        "Falling back to the old format < 1.6. This support will be deprecated in favor of default zipfile "
        "format introduced in 1.6. Please redo torch.save() to save it in the new zipfile format.",
        FutureWarning,
        stacklevel=3,
    )
    with zipfile.ZipFile(path) as zf:
        info = zf.infolist()[0]
        scratch = tempfile.mkdtemp(prefix="safehub-legacy-zip-")
        target = os.path.join(scratch, "checkpoint")
        with zf.open(info) as src, open(target, "wb") as out:
            shutil.copyfileobj(src, out)
    try:
        return torch.load(target, map_location=map_location, weights_only=weights_only)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def install(in_dir: str) -> None:
    """Read the manifest (if any) and patch torch.hub. Call before importing hubconf."""
    folder = os.path.join(in_dir, "downloads")
    manifest_path = os.path.join(folder, "manifest.json")
    _manifest.clear()
    if os.path.isfile(manifest_path):
        with open(manifest_path, encoding="utf-8") as f:
            raw = json.load(f)
        for url, name in raw.items():
            path = name if os.path.isabs(name) else os.path.join(folder, os.path.basename(name))
            _manifest[str(url)] = path

    import torch.hub
    import torch.utils.model_zoo

    torch.hub.load_state_dict_from_url = load_state_dict_from_url
    torch.hub.download_url_to_file = download_url_to_file
    torch.utils.model_zoo.load_url = load_state_dict_from_url
    for fn_name in ("load", "list", "help"):
        original = getattr(torch.hub, fn_name)
        if getattr(original, "__module__", None) != __name__:  # once per process
            setattr(torch.hub, fn_name, _refuse_nested(fn_name, original))


def check() -> Result | None:
    """The runner's result if any unlisted URL was requested, else None."""
    if not _requested:
        return None
    return {
        "protocol": PROTOCOL,
        "status": "error",
        "error": {
            "category": "needs_download",
            "type": "NeedsDownload",
            "message": "the entrypoint needs files from the network: " + ", ".join(_requested),
            "urls": list(_requested),
        },
    }
