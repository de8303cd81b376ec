"""A small stdlib HTTP client for GitHub and weight downloads.

Rules it enforces:
- the token goes only to the origins it was given for, in an Authorization
  header, never in a URL, a log line or an error message;
- a redirect to another origin (scheme, host or port) drops the token;
- only http/https, no credentials in URLs;
- transient failures (5xx, 429, connection resets, timeouts) are retried with
  exponential backoff; 404 and rate limits get their own typed errors;
- every body has a size cap, enforced while streaming;
- a download may carry an overall deadline: every connect and every read waits
  at most until it, so a server that drip-feeds bytes cannot hold a load.
"""

from __future__ import annotations

import hashlib
import json
import logging
import http.client
import random
import socket
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterable
from email.message import Message
from http.client import HTTPMessage
from typing import IO, Any
from urllib.parse import urlsplit

from .._errors import FetchError, RateLimitError, RepoNotFoundError

__all__ = ["HttpClient", "origin_of", "HTTPStatusError", "BodyTooLargeError", "DeadlineError"]

logger = logging.getLogger("safehub")

USER_AGENT = "safehub (torch.hub compatible)"
CHUNK = 128 * 1024
MAX_JSON_BYTES = 16 * 1024 * 1024
TRANSIENT_STATUS = {500, 502, 503, 504}
# Tests set this to 0 so retries do not sleep; production backs off 0.5, 1, 2 s.
BACKOFF_BASE_S = 0.5
MAX_RETRY_AFTER_S = 30.0


def origin_of(url: str) -> tuple[str, str, int]:
    parts = urlsplit(url)
    scheme = parts.scheme.lower()
    port = parts.port or (443 if scheme == "https" else 80)
    return scheme, (parts.hostname or "").lower(), port


class HTTPStatusError(FetchError):
    """An HTTP error the caller may want to interpret (carries ``status``)."""

    def __init__(self, message: str, *, status: int, hint: str | None = None) -> None:
        self.status = status
        super().__init__(message, hint=hint)


class BodyTooLargeError(FetchError):
    """A body passed its size cap (``cap``), announced or while streaming."""

    def __init__(self, message: str, *, cap: int, hint: str | None = None) -> None:
        self.cap = cap
        super().__init__(message, hint=hint)


class DeadlineError(FetchError, TimeoutError):
    """A request ran past the caller's overall deadline."""


def _time_left(deadline: float | None, what: str) -> float | None:
    if deadline is None:
        return None
    left = deadline - time.monotonic()
    if left <= 0:
        raise DeadlineError(f"ran out of time while fetching {what}")
    return left


def _set_read_timeout(resp: Any, seconds: float) -> None:
    """Bound the next socket read of ``resp`` (http.client keeps the socket at
    resp.fp.raw._sock; without it, the timeout given at connect time still holds)."""
    sock = getattr(getattr(getattr(resp, "fp", None), "raw", None), "_sock", None)
    if sock is not None:
        sock.settimeout(max(seconds, 0.001))


class _RedirectHandler(urllib.request.HTTPRedirectHandler):
    max_redirections = 10

    def __init__(self, client: "HttpClient") -> None:
        self._client = client

    def redirect_request(
        self, req: urllib.request.Request, fp: IO[bytes], code: int, msg: str, headers: HTTPMessage, newurl: str
    ) -> urllib.request.Request | None:
        new = super().redirect_request(req, fp, code, msg, headers, newurl)
        if new is None:
            return None
        self._client.check_url(new.full_url)
        if origin_of(new.full_url) != origin_of(req.full_url) or not self._client.sends_token_to(new.full_url):
            # Another host (GitHub's codeload, S3, a CDN): it must never see the token.
            new.headers.pop("Authorization", None)
            new.unredirected_hdrs.pop("Authorization", None)
        return new


def _checked_connector(check: Callable[[str, int, str], None]) -> Callable[..., socket.socket]:
    """``socket.create_connection`` that resolves once, passes every address to
    ``check(host, port, ip)`` (which raises to refuse) and connects only to the
    addresses it checked: a check by name followed by a second lookup to connect
    loses to a DNS server that answers differently the second time (rebinding)."""

    def create(address: tuple[str, int], timeout: Any = socket._GLOBAL_DEFAULT_TIMEOUT,  # type: ignore[attr-defined]
               source_address: Any = None, **_: Any) -> socket.socket:
        host, port = address
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        for info in infos:
            check(host, port, str(info[4][0]))
        last: OSError | None = None
        for family, kind, proto, _name, sockaddr in infos:
            sock = socket.socket(family, kind, proto)
            try:
                if timeout is not socket._GLOBAL_DEFAULT_TIMEOUT:  # type: ignore[attr-defined]
                    sock.settimeout(timeout)
                if source_address:
                    sock.bind(source_address)
                sock.connect(sockaddr)
                return sock
            except OSError as exc:
                sock.close()
                last = exc
        raise last or OSError(f"{host!r} resolved to no address")

    return create


def _connection_factory(cls: type, create: Callable[..., socket.socket]) -> Callable[..., Any]:
    def make(*args: Any, **kwargs: Any) -> Any:
        conn = cls(*args, **kwargs)
        conn._create_connection = create  # http.client's own hook for opening the socket
        return conn
    return make


class _CheckedHTTPHandler(urllib.request.HTTPHandler):
    def __init__(self, create: Callable[..., socket.socket]) -> None:
        super().__init__()
        self._create = create

    def http_open(self, req: urllib.request.Request) -> Any:
        if req.has_proxy() or getattr(req, "_tunnel_host", None):
            return super().http_open(req)  # a proxy resolves the name: the URL check is all we can do
        return self.do_open(_connection_factory(http.client.HTTPConnection, self._create), req)


class _CheckedHTTPSHandler(urllib.request.HTTPSHandler):
    def __init__(self, create: Callable[..., socket.socket]) -> None:
        super().__init__()
        self._create = create

    def https_open(self, req: urllib.request.Request) -> Any:
        if req.has_proxy() or getattr(req, "_tunnel_host", None):
            return super().https_open(req)
        return self.do_open(_connection_factory(http.client.HTTPSConnection, self._create), req,
                            context=self._context)  # type: ignore[attr-defined]


class HttpClient:
    """``token`` is sent only to URLs whose origin is in ``token_origins``.
    ``url_check`` is called on every URL, redirects included, and raises to refuse.
    ``address_check(host, port, ip)`` is called on every address a connection is
    about to use (the one lookup it connects with), and raises to refuse."""

    def __init__(
        self,
        *,
        token: str | None = None,
        token_origins: Iterable[tuple[str, str, int]] = (),
        timeout: float = 30.0,
        retries: int = 3,
        url_check: Callable[[str], None] | None = None,
        address_check: Callable[[str, int, str], None] | None = None,
    ) -> None:
        self._token = token or None
        self._token_origins = frozenset(token_origins)
        self.timeout = timeout
        self.retries = max(1, retries)
        self._url_check = url_check
        handlers: list[Any] = [_RedirectHandler(self)]
        if address_check is not None:
            create = _checked_connector(address_check)
            handlers += [_CheckedHTTPHandler(create), _CheckedHTTPSHandler(create)]
        self._opener = urllib.request.build_opener(*handlers)

    @property
    def has_token(self) -> bool:
        return self._token is not None

    def sends_token_to(self, url: str) -> bool:
        return self._token is not None and origin_of(url) in self._token_origins

    def check_url(self, url: str) -> None:
        parts = urlsplit(url)
        if parts.scheme.lower() not in ("http", "https"):
            raise FetchError(f"refusing to fetch {_show(url)}: only http and https URLs are allowed")
        if parts.username is not None or parts.password is not None:
            raise FetchError("refusing a URL with credentials in it", hint="put the token in GITHUB_TOKEN instead")
        if not parts.hostname:
            raise FetchError(f"URL {_show(url)} has no host")
        if self._url_check is not None:
            self._url_check(url)

    def _request(self, url: str, accept: str | None) -> urllib.request.Request:
        self.check_url(url)
        headers = {"User-Agent": USER_AGENT}
        if accept:
            headers["Accept"] = accept
        if self.sends_token_to(url):
            headers["Authorization"] = f"Bearer {self._token}"
        return urllib.request.Request(url, headers=headers)

    def open(self, url: str, *, accept: str | None = None, what: str = "", deadline: float | None = None) -> Any:
        """Open ``url`` with retries. Returns the response (a context manager).
        ``deadline`` (a time.monotonic() value) bounds every attempt and the retries."""
        last: BaseException | None = None
        for attempt in range(self.retries):
            left = _time_left(deadline, what or _show(url))
            timeout = self.timeout if left is None else min(self.timeout, left)
            try:
                return self._opener.open(self._request(url, accept), timeout=timeout)
            except urllib.error.HTTPError as exc:
                exc.close()
                retry_after = _retry_after(exc)
                if exc.code in TRANSIENT_STATUS or (exc.code == 429 and retry_after is not None):
                    last = exc
                    self._sleep(attempt, retry_after, deadline)
                    continue
                raise self._http_error(url, exc, what) from None
            except (urllib.error.URLError, TimeoutError, ConnectionError) as exc:
                reason = getattr(exc, "reason", exc)
                if not isinstance(reason, OSError):  # e.g. "unknown url type": retrying cannot help
                    raise FetchError(f"cannot reach {_show(url)}: {reason}") from None
                last = exc  # refused, reset, timed out, DNS hiccup
                self._sleep(attempt, None, deadline)
        if isinstance(last, urllib.error.HTTPError):
            raise self._http_error(url, last, what) from None
        raise FetchError(
            f"cannot reach {_show(url)} after {self.retries} attempts: {getattr(last, 'reason', last)}",
            hint="check the network, or set SAFEHUB_OFFLINE=1 to use only the cache",
        ) from None

    def _sleep(self, attempt: int, retry_after: float | None, deadline: float | None = None) -> None:
        if attempt + 1 >= self.retries:
            return
        delay = retry_after if retry_after is not None else BACKOFF_BASE_S * (2**attempt) * (0.5 + random.random())
        delay = min(delay, MAX_RETRY_AFTER_S)
        if deadline is not None:
            delay = min(delay, max(0.0, deadline - time.monotonic()))
        logger.info("transient HTTP failure, retrying in %.1f s", delay)
        if delay > 0:
            time.sleep(delay)

    def _http_error(self, url: str, exc: urllib.error.HTTPError, what: str) -> FetchError:
        subject = what or _show(url)
        headers = exc.headers if exc.headers is not None else Message()
        if exc.code in (403, 429) and (headers.get("X-RateLimit-Remaining") == "0" or exc.code == 429):
            reset = headers.get("X-RateLimit-Reset")
            when = ""
            if reset and reset.isdigit():
                when = f"; it resets at {time.strftime('%H:%M:%S UTC', time.gmtime(int(reset)))}"
            hint = (
                "wait for the reset, or set GITHUB_TOKEN to a personal access token for a higher limit"
                if not self.sends_token_to(url)
                else "wait for the reset; your token's quota is used up"
            )
            return RateLimitError(f"GitHub rate limit exceeded while fetching {subject}{when}", hint=hint)
        if exc.code == 404:
            hint = (
                "check the spelling of owner, name and ref; for a private repo set GITHUB_TOKEN "
                "(or SAFEHUB_GITHUB_TOKEN) to a token that can read it"
                if not self.sends_token_to(url)
                else "check the spelling of owner, name and ref, and that your token can read this repo"
            )
            return RepoNotFoundError(f"not found (HTTP 404): {subject}", hint=hint)
        if exc.code == 401:
            return HTTPStatusError(
                f"the server rejected the credentials (HTTP 401) for {subject}",
                status=401,
                hint="GITHUB_TOKEN / SAFEHUB_GITHUB_TOKEN is invalid or expired",
            )
        return HTTPStatusError(f"HTTP {exc.code} {exc.reason} for {subject}", status=exc.code)

    def status(self, url: str, *, what: str = "") -> int:
        """GET ``url`` and return 200, or 404 when it does not exist; other errors raise."""
        try:
            with self.open(url, what=what):
                return 200
        except RepoNotFoundError:
            return 404

    def get_json(self, url: str, *, what: str = "") -> Any:
        with self.open(url, accept="application/vnd.github+json", what=what) as resp:
            body = resp.read(MAX_JSON_BYTES + 1)
        if len(body) > MAX_JSON_BYTES:
            raise FetchError(f"the reply for {what or _show(url)} is larger than {MAX_JSON_BYTES} bytes")
        try:
            return json.loads(body.decode("utf-8"))
        except (UnicodeDecodeError, ValueError):
            raise FetchError(f"the reply for {what or _show(url)} is not JSON") from None

    def download(
        self,
        url: str,
        out: IO[bytes],
        *,
        max_bytes: int,
        progress: bool = False,
        what: str = "",
        accept: str | None = None,
        deadline: float | None = None,
    ) -> tuple[int, str]:
        """Stream ``url`` into ``out``. Returns (bytes written, sha256 hex). Aborts past
        ``max_bytes`` (BodyTooLargeError) or past ``deadline``, a time.monotonic() value
        (DeadlineError): each read waits at most until the deadline."""
        from tqdm.auto import tqdm

        digest = hashlib.sha256()
        written = 0
        subject = what or _show(url)
        hint = "raise the cap (SAFEHUB_MAX_DOWNLOAD_BYTES / SAFEHUB_MAX_ARCHIVE_BYTES) if you expect this"
        with self.open(url, accept=accept, what=what, deadline=deadline) as resp:
            length = resp.headers.get("Content-Length")
            total = int(length) if length and length.isdigit() else None
            if total is not None and total > max_bytes:
                raise BodyTooLargeError(f"{subject} is {total} bytes, over the {max_bytes}-byte cap", cap=max_bytes, hint=hint)
            with tqdm(total=total, disable=not progress, unit="B", unit_scale=True, unit_divisor=1024) as bar:
                while True:
                    left = _time_left(deadline, subject)
                    if left is not None:
                        _set_read_timeout(resp, min(self.timeout, left))
                    try:
                        # read1: at most one socket read, so a trickle returns to the deadline check.
                        chunk = resp.read1(CHUNK) if deadline is not None else resp.read(CHUNK)
                    except (TimeoutError, OSError) as exc:
                        _time_left(deadline, subject)  # past the deadline: say so
                        raise FetchError(f"reading {subject} failed: {exc}") from None
                    if not chunk:
                        break
                    written += len(chunk)
                    if written > max_bytes:
                        raise BodyTooLargeError(f"{subject} is larger than the {max_bytes}-byte cap", cap=max_bytes, hint=hint)
                    out.write(chunk)
                    digest.update(chunk)
                    bar.update(len(chunk))
        return written, digest.hexdigest()


def _retry_after(exc: urllib.error.HTTPError) -> float | None:
    value = exc.headers.get("Retry-After") if exc.headers is not None else None
    if value and value.strip().isdigit():
        return float(value.strip())
    return None


def _show(url: str) -> str:
    """A URL for messages: no query string (signed URLs carry secrets there), bounded."""
    parts = urlsplit(url)
    shown = f"{parts.scheme}://{parts.netloc.rpartition('@')[2]}{parts.path}"
    return shown if len(shown) <= 300 else shown[:300] + "..."
