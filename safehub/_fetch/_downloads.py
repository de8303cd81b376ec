"""Host-side downloads: torch.hub's ``download_url_to_file`` and the broker that
fetches the weight URLs an entrypoint asked for inside the (offline) sandbox.

Broker protocol (the sandbox half is ``runners/_downloads.py``)::

    round 1: the runner reports {"category": "needs_download", "urls": [...]}
    host:    urls = parse_needs_download(error); files = prefetch_downloads(urls, ...)
             stage_downloads(files, <job>/in)  ->  <job>/in/downloads/{manifest.json, files}
    round 2: the runner serves those URLs from the read-only files

The URLs come from untrusted code, so each one is checked: http(s) only, no
credentials, bounded length and count, and no private, loopback or link-local
address unless the host is the configured GitHub host or listed in
``SAFEHUB_DOWNLOAD_ALLOW_HOSTS`` (so repo code cannot make the host probe its
own network). Redirects are checked the same way. The GitHub token is sent only
to the GitHub hosts.
"""

from __future__ import annotations

import errno
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import tempfile
import uuid
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit

from .._config import is_offline, progress_enabled
from .._errors import FetchError, OfflineError, UnsafeSpecError
from ._cache import atomic_write_json
from ._github import github_host, make_client
from ._http import HttpClient, origin_of
from ._http import origin_of

__all__ = [
    "download_url_to_file",
    "prefetch_downloads",
    "stage_downloads",
    "parse_needs_download",
    "MAX_DOWNLOAD_URLS",
]

logger = logging.getLogger("safehub")

MAX_DOWNLOAD_URLS = 16
MAX_URL_LEN = 2048
DEFAULT_MAX_DOWNLOAD_BYTES = 16 << 30
_SAFE_NAME = re.compile(r"[^A-Za-z0-9._-]")


def _max_bytes(env: Mapping[str, str]) -> int:
    raw = env.get("SAFEHUB_MAX_DOWNLOAD_BYTES")
    return int(raw) if raw else DEFAULT_MAX_DOWNLOAD_BYTES


def download_url_to_file(url: str, dst: str, hash_prefix: str | None = None, progress: bool = True) -> None:
    """Download ``url`` to ``dst`` (torch.hub's signature and behaviour).

    The file appears at ``dst`` only when complete (temp file + rename) and gets
    default permissions. ``hash_prefix``: the SHA-256 must start with it.
    The GitHub token is sent only to the configured GitHub hosts.
    """
    env = os.environ
    dst = os.path.expanduser(dst)
    client = make_client(github_host(env), env)
    for _ in range(tempfile.TMP_MAX):
        tmp = f"{dst}.{uuid.uuid4().hex}.partial"
        try:
            f = open(tmp, "xb")  # default permissions, unlike NamedTemporaryFile
        except FileExistsError:
            continue
        break
    else:
        raise FileExistsError(errno.EEXIST, "No usable temporary file name found")
    try:
        with f:
            _, digest = client.download(url, f, max_bytes=_max_bytes(env), progress=progress_enabled(progress, env))
        if hash_prefix is not None and not digest.startswith(hash_prefix):
            raise RuntimeError(f'invalid hash value (expected "{hash_prefix}", got "{digest}")')
        os.replace(tmp, dst)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)


def parse_needs_download(error: Mapping[str, Any]) -> list[str]:
    """The URL list of a runner's ``needs_download`` error, checked for shape only."""
    urls = error.get("urls")
    if not isinstance(urls, list) or not urls or not all(isinstance(u, str) for u in urls):
        raise UnsafeSpecError("the runner's needs_download report has no list of URL strings")
    if len(urls) > MAX_DOWNLOAD_URLS:
        raise UnsafeSpecError(
            f"the entrypoint asked for {len(urls)} downloads, more than the {MAX_DOWNLOAD_URLS} allowed",
        )
    return list(dict.fromkeys(urls))


def _allowed_hosts(env: Mapping[str, str]) -> set[str]:
    host = github_host(env)
    allowed = {origin_of(host.web)[1], origin_of(host.api)[1]}
    for item in (env.get("SAFEHUB_DOWNLOAD_ALLOW_HOSTS") or "").split(","):
        if item.strip():
            allowed.add(item.strip().lower())
    return allowed


def _check_public(url: str, allowed: set[str]) -> None:
    """Refuse URLs that point into the host's own network, unless allowed."""
    hostname = (urlsplit(url).hostname or "").lower()
    if hostname in allowed:
        return
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve the download host {hostname!r}: {exc.strerror}") from None
    for info in infos:
        addr = ipaddress.ip_address(info[4][0].split("%")[0])
        if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_reserved or addr.is_unspecified:
            raise FetchError(
                f"refusing to download from {hostname!r}: it resolves to the non-public address {addr}",
                hint="repo code asked for this URL; if the host is yours and meant, add it to SAFEHUB_DOWNLOAD_ALLOW_HOSTS",
            )


def validate_url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise UnsafeSpecError("a download URL is not a non-empty string")
    if len(url) > MAX_URL_LEN:
        raise UnsafeSpecError(f"a download URL is longer than {MAX_URL_LEN} characters")
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UnsafeSpecError(f"download URL {url[:200]!r} has spaces, control or non-ASCII characters")
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https"):
        raise UnsafeSpecError(f"download URL {url[:200]!r} is not http(s)")
    if not parts.hostname or parts.username is not None or parts.password is not None:
        raise UnsafeSpecError(f"download URL {url[:200]!r} has no host, or has credentials in it")
    try:
        parts.port
    except ValueError:
        raise UnsafeSpecError(f"download URL {url[:200]!r} has an invalid port") from None
    return url


def checkpoint_path(checkpoints: Path, url: str) -> Path:
    """``checkpoints/by-url/<sha256(url)[:32]>-<basename>``: distinct URLs never share
    a file, unlike torch.hub's basename-only naming."""
    base = os.path.basename(unquote(urlsplit(url).path)) or "download"
    base = _SAFE_NAME.sub("_", base)[:100].lstrip(".") or "download"
    return checkpoints / "by-url" / f"{hashlib.sha256(url.encode()).hexdigest()[:32]}-{base}"


def _token_scope(host: Any, repo: tuple[str, str] | None) -> Callable[[str], bool]:
    """The GitHub token is lent only to release assets of the repo being loaded. Any
    other URL the repo's code names (another private repo's archive, the API) is
    fetched without it: the host must not be the repo's deputy."""
    if repo is None:
        return lambda url: False
    owner, name = (part.lower() for part in repo)
    web = urlparse(host.web)
    prefix = f"{web.path.rstrip('/')}/{owner}/{name}/releases/download/".lower()

    def allowed(url: str) -> bool:
        u = urlparse(url)
        return origin_of(url) == origin_of(host.web) and u.path.lower().startswith(prefix) and ".." not in u.path

    return allowed


def prefetch_downloads(
    urls: Sequence[str],
    *,
    hub_dir: Path,
    verbose: bool = True,
    env: Mapping[str, str] | None = None,
    repo: tuple[str, str] | None = None,
) -> dict[str, Path]:
    """Download each URL (once; later calls reuse the file) and return {url: path}.

    ``repo`` is the (owner, name) of the GitHub repo being loaded: the token is sent
    only for its release assets, and never when ``repo`` is None (local repos)."""
    env = os.environ if env is None else env
    urls = list(dict.fromkeys(validate_url(u) for u in urls))
    if len(urls) > MAX_DOWNLOAD_URLS:
        raise UnsafeSpecError(f"{len(urls)} download URLs requested; at most {MAX_DOWNLOAD_URLS} are allowed")
    checkpoints = Path(hub_dir) / "checkpoints"
    out: dict[str, Path] = {}
    missing = []
    for url in urls:
        path = checkpoint_path(checkpoints, url)
        if path.is_file() and not path.is_symlink():
            out[url] = path
        else:
            missing.append(url)
    if not missing:
        return out
    if is_offline(env):
        raise OfflineError(
            "SAFEHUB_OFFLINE=1 and the entrypoint needs downloads that are not in the cache: " + ", ".join(missing),
            hint="unset SAFEHUB_OFFLINE once so safehub can fetch them into " + str(checkpoints),
        )
    allowed = _allowed_hosts(env)
    host = github_host(env)
    client = make_client(host, env, url_check=lambda u: _check_public(u, allowed))
    anonymous = HttpClient(token=None, timeout=float(env.get("SAFEHUB_HTTP_TIMEOUT") or 30),
                           url_check=lambda u: _check_public(u, allowed))
    lend_token = _token_scope(host, repo)
    max_bytes = _max_bytes(env)
    for url in missing:
        path = checkpoint_path(checkpoints, url)
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
        logger.info('Downloading: "%s" to %s', url.split("?")[0], path)
        try:
            with open(tmp, "xb") as f:
                chosen = client if lend_token(url) else anonymous
                nbytes, digest = chosen.download(url, f, max_bytes=max_bytes, progress=progress_enabled(verbose, env))
            os.replace(tmp, path)
        finally:
            if tmp.exists():
                tmp.unlink()
        atomic_write_json(path.with_name(path.name + ".json"), {"url": url, "sha256": digest, "bytes": nbytes})
        out[url] = path
    return out


def stage_downloads(files: Mapping[str, Path], in_dir: Path) -> Path:
    """Place the files in ``<in_dir>/downloads/`` with a ``manifest.json`` {url: filename}
    for the sandbox. Hard links where possible (same inode, mounted read-only), else copies."""
    folder = Path(in_dir) / "downloads"
    folder.mkdir(mode=0o755, exist_ok=True)
    manifest: dict[str, str] = {}
    for i, (url, src) in enumerate(files.items()):
        name = f"{i:02d}-{Path(src).name[-120:]}"
        dst = folder / name
        try:
            os.link(src, dst)
        except OSError:
            shutil.copyfile(src, dst)
        manifest[url] = name
    with open(folder / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return folder
