"""Host-side downloads: torch.hub's ``download_url_to_file`` and the broker that
fetches the weight URLs an entrypoint asked for inside the (offline) sandbox.

Broker protocol (the sandbox half is ``runners/_downloads.py``)::

    round 1: the runner reports {"category": "needs_download", "urls": [...]}
    host:    urls = needs_download_urls(result) (safehub/_channel/_result.py); files = prefetch_downloads(urls, ...)
             stage_downloads(files, <job>/in)  ->  <job>/in/downloads/{manifest.json, files}
    round 2: the runner serves those URLs from the read-only files

The URLs come from untrusted code, so each one is checked: http(s) only, no
credentials, bounded length and count, and no private, loopback or link-local
address unless its origin (scheme, host *and* port, exactly) is the configured
GitHub web or API origin or listed in ``SAFEHUB_DOWNLOAD_ALLOW_HOSTS`` (so repo
code cannot make the host probe its own network, nor another service on the
GitHub Enterprise host). Redirects are checked the same way. A URL that would go
through a configured proxy is refused unless ``SAFEHUB_DOWNLOAD_VIA_PROXY=1``
(the proxy, not safehub, would choose the address). The GitHub token is
lent only to the loaded repo's own release assets.

One load's downloads share a :class:`DownloadBudget` with its sandbox runs: an
overall deadline (the job's ``timeout_s``, counted from the first run) and a
byte budget (the job's ``disk_bytes``, less what later runs may write). Files a
load fetched are removed again if the load fails.
"""

from __future__ import annotations

import contextlib
import errno
import hashlib
import ipaddress
import json
import logging
import os
import re
import shutil
import socket
import stat
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import replace
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlparse, urlsplit

from .._config import env_flag, is_offline, progress_enabled
from .._contract import MAX_DOWNLOAD_URLS
from .._errors import FetchError, OfflineError, SandboxLimitError, SandboxTimeoutError, UnsafeSpecError
from .._sandbox._limits import Limits
from ._cache import atomic_write_json
from ._github import github_host, make_client
from ._http import BodyTooLargeError, DeadlineError, HttpClient, origin_of

__all__ = [
    "download_url_to_file",
    "prefetch_downloads",
    "stage_downloads",
    "DownloadBudget",
    "MAX_DOWNLOAD_URLS",
]

logger = logging.getLogger("safehub")

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


Origin = tuple[str, str, int]


def _allowed_origins(env: Mapping[str, str]) -> set[Origin]:
    """The GitHub web and API origins, and each ``SAFEHUB_DOWNLOAD_ALLOW_HOSTS``
    entry: ``scheme://host[:port]``, or a bare host name meaning ``https://host``.
    Matching is exact: another port or scheme on an allowed host is not allowed."""
    host = github_host(env)
    allowed = {origin_of(host.web), origin_of(host.api)}
    for item in (env.get("SAFEHUB_DOWNLOAD_ALLOW_HOSTS") or "").split(","):
        item = item.strip().lower().rstrip("/")
        if not item:
            continue
        url = item if "://" in item else f"https://{item}"
        parts = urlsplit(url)
        try:
            parts.port
        except ValueError:
            parts = None  # type: ignore[assignment]
        if parts is None or parts.scheme not in ("http", "https") or not parts.hostname or parts.path:
            raise FetchError(
                f"SAFEHUB_DOWNLOAD_ALLOW_HOSTS entry {item[:100]!r} is not a host or an http(s) origin",
                hint="use entries like weights.example.com or http://10.0.0.5:8080",
            )
        allowed.add(origin_of(url))
    return allowed


def _proxy_for(url: str) -> str | None:
    """The proxy urllib's opener would send ``url`` through (from http_proxy,
    https_proxy, all_proxy and no_proxy), or None."""
    import urllib.request

    parts = urlsplit(url)
    proxies = urllib.request.getproxies()
    proxy = proxies.get(parts.scheme.lower()) or proxies.get("all")
    if not proxy or urllib.request.proxy_bypass(parts.hostname or ""):
        return None
    return proxy


def _check_public(url: str, allowed: set[Origin], env: Mapping[str, str] | None = None) -> None:
    """Refuse URLs that point into the host's own network, unless their exact
    origin (scheme, host, port) is allowed.

    Through a proxy the proxy resolves the name and connects: the connect-time
    address check cannot run, and the proxy's own view (split DNS, the networks it
    reaches) decides where the request goes. So a repo-chosen URL that would go
    through a proxy is refused unless SAFEHUB_DOWNLOAD_VIA_PROXY=1 says the proxy
    itself keeps requests off internal hosts."""
    if origin_of(url) in allowed:
        return
    if env is not None and _proxy_for(url) is not None and not env_flag("SAFEHUB_DOWNLOAD_VIA_PROXY", env):
        raise FetchError(
            f"refusing to download {_show_url(url)} through the proxy this process is configured with "
            "(http_proxy/https_proxy/all_proxy): the proxy would resolve the repo-chosen host and connect "
            "to it, so safehub cannot keep the request off your internal network",
            hint="set SAFEHUB_DOWNLOAD_VIA_PROXY=1 if your proxy refuses internal destinations itself, "
            "or add the host to no_proxy to fetch it directly (then its address is checked)",
        )
    hostname = (urlsplit(url).hostname or "").lower()
    try:
        infos = socket.getaddrinfo(hostname, None, proto=socket.IPPROTO_TCP)
    except socket.gaierror as exc:
        raise FetchError(f"cannot resolve the download host {hostname!r}: {exc.strerror}") from None
    for info in infos:
        _refuse_non_public(hostname, str(info[4][0]))


def _non_public(addr: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    # is_global also excludes the shared address space 100.64.0.0/10 (carrier NAT,
    # Tailscale, Alibaba Cloud's metadata service at 100.100.100.200), which is
    # neither private nor reserved. IPv6 forms that embed an IPv4 address (mapped,
    # 6to4) are judged by that address too.
    if addr.is_private or addr.is_loopback or addr.is_link_local or addr.is_multicast or addr.is_reserved \
            or addr.is_unspecified or not addr.is_global:
        return True
    if isinstance(addr, ipaddress.IPv6Address):
        embedded = [a for a in (addr.ipv4_mapped, addr.sixtofour, *(addr.teredo or ())) if a is not None]
        return any(_non_public(a) for a in embedded)
    return False


def _refuse_non_public(hostname: str, ip: str) -> None:
    addr = ipaddress.ip_address(ip.split("%")[0])
    if _non_public(addr):
        raise FetchError(
            f"refusing to download from {hostname!r}: it resolves to the non-public address {addr}",
            hint="repo code asked for this URL; if this server is yours and meant, add its origin "
            "(scheme://host:port) to SAFEHUB_DOWNLOAD_ALLOW_HOSTS",
        )


def _check_address(host: str, port: int, ip: str, allowed: set[Origin]) -> None:
    """The same rule at connect time, on the address the connection will use (the
    name was checked by :func:`_check_public` already; a second lookup may differ)."""
    host = host.lower()
    if any(h == host and p == port for _scheme, h, p in allowed):
        return
    _refuse_non_public(host, ip)


def validate_url(url: object) -> str:
    if not isinstance(url, str) or not url:
        raise UnsafeSpecError("a download URL is not a non-empty string")
    if len(url) > MAX_URL_LEN:
        raise UnsafeSpecError(f"a download URL is longer than {MAX_URL_LEN} characters")
    if not url.isascii() or any(ord(c) < 0x21 or ord(c) == 0x7F for c in url):
        raise UnsafeSpecError(f"download URL {url[:200]!r} has spaces, control or non-ASCII characters")
    try:
        parts = urlsplit(url)
    except ValueError:  # e.g. a bracketed host that is no IPv6 address: "https://[::ffff:a.example.com]/"
        raise UnsafeSpecError(f"download URL {url[:200]!r} cannot be parsed") from None
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
        # Judge the path as a server decodes it: %2e%2e is '..' to most servers.
        decoded = unquote(u.path)
        return (origin_of(url) == origin_of(host.web) and decoded.lower().startswith(prefix)
                and u.path.lower().startswith(prefix) and ".." not in decoded and "\\" not in decoded
                and "%" not in decoded and not u.params)

    return allowed


class DownloadBudget:
    """What one load may spend on downloads, shared with its sandbox runs.

    * time: the job's ``timeout_s`` covers the sandbox runs *and* the downloads
      between them, counted from :meth:`start` (just before the first run);
    * disk: the bytes of every file the load uses (fetched or from the cache)
      count against the job's ``disk_bytes``; later runs get what is left;
    * cleanup: files this load wrote into the cache are removed by
      :meth:`discard` when the load fails.
    """

    def __init__(self, limits: Limits | None = None) -> None:
        self.limits = limits or Limits()
        self.deadline: float | None = None
        self.used_bytes = 0
        self.records: dict[str, dict[str, Any]] = {}
        self.fresh: list[Path] = []

    def start(self) -> None:
        if self.deadline is None:
            self.deadline = time.monotonic() + float(self.limits.timeout_s)

    def bytes_left(self) -> int | None:
        cap = self.limits.disk_bytes
        return None if cap is None else max(0, cap - self.used_bytes)

    def round_limits(self) -> Limits:
        """The limits for the next sandbox run: what is left of the job's time and disk."""
        self.start()
        assert self.deadline is not None
        left = self.deadline - time.monotonic()
        if left <= 0:
            raise self.timeout_error()
        if not self.records:
            return self.limits
        return replace(self.limits, timeout_s=left, disk_bytes=self.bytes_left())

    def timeout_error(self) -> SandboxTimeoutError:
        return SandboxTimeoutError(
            f"the load ran past its {self.limits.timeout_s:g} s time limit, which covers the sandbox runs "
            f"and the {len(self.records)} download(s) between them",
            hint="a download server that slow is suspect; raise Limits.timeout_s if it is yours and meant",
        )

    def disk_error(self, url: str, nbytes: int | None) -> SandboxLimitError:
        size = f"{nbytes} more bytes" if nbytes is not None else "more bytes"
        return SandboxLimitError(
            f"the download of {_show_url(url)} needs {size}, past the load's {self.limits.disk_bytes}-byte disk "
            f"limit ({self.used_bytes} bytes of downloads already)",
            limit="disk",
            hint="raise Limits.disk_bytes if this repo legitimately needs that much",
        )

    def charge(self, url: str, *, nbytes: int, sha256: str | None, cached: bool, seconds: float) -> None:
        if url in self.records:
            return
        left = self.bytes_left()
        if left is not None and nbytes > left:
            raise self.disk_error(url, nbytes)
        self.used_bytes += nbytes
        self.records[url] = {"url": url, "bytes": nbytes, "sha256": sha256, "cached": cached,
                             "seconds": round(seconds, 3)}

    def summary(self) -> tuple[dict[str, Any], ...]:
        """For ``safehub_info.downloads``."""
        return tuple(dict(r) for r in self.records.values())

    def discard(self) -> None:
        """The load failed: remove the files it fetched (and their records)."""
        doomed, self.fresh = self.fresh, []
        self.discard_paths(doomed)

    @contextlib.contextmanager
    def discard_on_error(self) -> Iterator[None]:
        try:
            yield
        except BaseException:
            self.discard()
            raise

    @staticmethod
    def discard_paths(paths: Sequence[Path]) -> None:
        for path in paths:
            for p in (path, path.with_name(path.name + ".json")):
                try:
                    p.unlink()
                except FileNotFoundError:
                    pass
                except OSError as exc:
                    logger.warning("could not remove the unused download %s: %s", p, exc)


def _show_url(url: str) -> str:
    """A URL for messages: no query (signed URLs carry secrets there), bounded."""
    return url.split("?", 1)[0][:300]


def _cached_size(path: Path) -> int | None:
    try:
        st = path.lstat()
    except OSError:
        return None
    return st.st_size if stat.S_ISREG(st.st_mode) else None


def prefetch_downloads(
    urls: Sequence[str],
    *,
    hub_dir: Path,
    verbose: bool = True,
    env: Mapping[str, str] | None = None,
    repo: tuple[str, str] | None = None,
    budget: DownloadBudget | None = None,
    url_policy: Callable[[str], None] | None = None,
    host_policy: Callable[[str], None] | None = None,
) -> dict[str, Path]:
    """Download each URL (once; later calls reuse the file) and return {url: path}.

    ``repo`` is the (owner, name) of the GitHub repo being loaded: the token is sent
    only for its release assets, and never when ``repo`` is None (local repos).
    ``budget`` bounds the time and bytes (default: one of ``Limits()``'s, started
    now); on any error the files fetched by this call are removed again.
    ``url_policy`` judges each requested URL (cached or not) before anything is fetched,
    ``host_policy`` every URL a download visits, redirects included; both raise to
    refuse (the organisation policy and lockfiles, safehub/_guard.py)."""
    env = os.environ if env is None else env
    urls = list(dict.fromkeys(validate_url(u) for u in urls))
    if len(urls) > MAX_DOWNLOAD_URLS:
        raise UnsafeSpecError(f"{len(urls)} download URLs requested; at most {MAX_DOWNLOAD_URLS} are allowed")
    for url in urls:
        if url_policy is not None:
            url_policy(url)
    own_budget = budget is None
    budget = budget if budget is not None else DownloadBudget()
    budget.start()
    checkpoints = Path(hub_dir) / "checkpoints"
    out: dict[str, Path] = {}
    missing = []
    for url in urls:
        path = checkpoint_path(checkpoints, url)
        size = _cached_size(path)
        if size is not None:
            budget.charge(url, nbytes=size, sha256=_recorded_sha256(path), cached=True, seconds=0.0)
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
    _sweep_stale_partials(checkpoints / "by-url")
    allowed = _allowed_origins(env)
    host = github_host(env)
    at_connect = lambda h, p, ip: _check_address(h, p, ip, allowed)  # noqa: E731

    def url_check(u: str) -> None:  # every URL, redirects included
        if host_policy is not None:
            host_policy(u)
        _check_public(u, allowed, env)

    client = make_client(host, env, url_check=url_check, address_check=at_connect)
    anonymous = HttpClient(token=None, timeout=float(env.get("SAFEHUB_HTTP_TIMEOUT") or 30),
                           url_check=url_check, address_check=at_connect)
    lend_token = _token_scope(host, repo)
    per_file = _max_bytes(env)
    fresh_before = len(budget.fresh)
    try:
        for url in missing:
            out[url] = _fetch_one(url, checkpoints, client if lend_token(url) else anonymous, budget,
                                  per_file=per_file, progress=progress_enabled(verbose, env))
    except BaseException:
        if own_budget:
            budget.discard()
        else:  # the caller's load fails with this error: drop what this call fetched now
            doomed = budget.fresh[fresh_before:]
            del budget.fresh[fresh_before:]
            DownloadBudget.discard_paths(doomed)
        raise
    return out


STALE_PARTIAL_S = 24 * 3600


def _sweep_stale_partials(folder: Path) -> None:
    """Partial files of downloads whose process died (SIGKILL, power loss) before its
    own cleanup ran. A day old is far past any load's deadline."""
    try:
        entries = list(os.scandir(folder))
    except OSError:
        return
    cutoff = time.time() - STALE_PARTIAL_S
    for entry in entries:
        if entry.name.startswith(".") and entry.name.endswith(".partial"):
            try:
                if entry.stat(follow_symlinks=False).st_mtime < cutoff:
                    os.unlink(entry.path)
            except OSError:
                pass


def _fetch_one(url: str, checkpoints: Path, client: HttpClient, budget: DownloadBudget, *,
               per_file: int, progress: bool) -> Path:
    path = checkpoint_path(checkpoints, url)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex}.partial")
    left = budget.bytes_left()
    cap = per_file if left is None else min(per_file, left)
    logger.info('Downloading: "%s" to %s', _show_url(url), path)
    started = time.monotonic()
    try:
        with open(tmp, "xb") as f:
            try:
                nbytes, digest = client.download(url, f, max_bytes=cap, progress=progress, deadline=budget.deadline)
            except DeadlineError:
                raise budget.timeout_error() from None
            except BodyTooLargeError as exc:
                if left is not None and exc.cap == left < per_file:
                    raise budget.disk_error(url, None) from None
                raise
        budget.charge(url, nbytes=nbytes, sha256=digest, cached=False, seconds=time.monotonic() - started)
        os.replace(tmp, path)
        budget.fresh.append(path)
    finally:
        if tmp.exists():
            tmp.unlink()
    atomic_write_json(path.with_name(path.name + ".json"), {"url": url, "sha256": digest, "bytes": nbytes})
    return path


def _recorded_sha256(path: Path) -> str | None:
    try:
        with open(path.with_name(path.name + ".json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    digest = record.get("sha256") if isinstance(record, dict) else None
    return digest if isinstance(digest, str) and re.fullmatch(r"[0-9a-f]{64}", digest) else None


def stage_downloads(files: Mapping[str, Path], in_dir: Path, *, copy: bool = False) -> Path:
    """Place the files in ``<in_dir>/downloads/`` with a ``manifest.json`` {url: filename}
    for the sandbox. Hard links where possible (same inode, mounted read-only), else
    copies; always copies with ``copy`` (a warm worker's job can write its in/, and
    through a link it would write the checkpoint cache)."""
    folder = Path(in_dir) / "downloads"
    folder.mkdir(mode=0o755, exist_ok=True)
    manifest: dict[str, str] = {}
    for i, (url, src) in enumerate(files.items()):
        name = f"{i:02d}-{Path(src).name[-120:]}"
        dst = folder / name
        if not copy:
            try:
                os.link(src, dst)
                manifest[url] = name
                continue
            except OSError:
                pass
        shutil.copyfile(src, dst)
        manifest[url] = name
    with open(folder / "manifest.json", "w", encoding="utf-8") as f:
        json.dump(manifest, f)
    return folder
