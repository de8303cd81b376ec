"""A loopback HTTP server that speaks the part of GitHub safehub (and torch.hub) uses.

Not a mock of safehub's client: a real HTTP server on 127.0.0.1 with GitHub's
URL layout, GitHub Enterprise style (web at ``/``, REST API at ``/api/v3``)::

    /{o}/{r}/tree/{branch}/                      default-branch probe (200/404)
    /{o}/{r}/zipball/{ref}, /{o}/{r}/archive/{ref}.zip
    /api/v3/repos/{o}/{r}/zipball/{ref}          -> 302 to the "codeload" server
    /api/v3/repos/{o}/{r}/branches[/{name}], /tags, /commits/{ref}, /compare/{a}...{b}
    /{o}/{r}/releases/download/{tag}/{asset}     -> 302 to the "codeload" server

Archives are redirected to a second listener on another port, as github.com
redirects to codeload.github.com, so tests can see which requests carried the
token. Repos are built in memory from {path: bytes} dicts and served as real zip
archives with a single ``owner-repo-sha7/`` top folder and the commit SHA as the
zip comment, like GitHub's. Refs resolve as on GitHub: a branch, then a tag, then
a commit SHA, so a branch may be named like a (different) commit's 40-hex SHA. Private
repos answer 404 unless the request carries the server's token. Fork commits
are visible through the parent's URLs (as on GitHub) but on none of its refs.
"""

from __future__ import annotations

import hashlib
import io
import json
import re
import secrets
import socket
import stat
import threading
import time
import zipfile
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from urllib.parse import parse_qs, unquote, urlsplit

__all__ = ["FakeGitHub", "FakeRepo", "Symlink", "build_zip", "LoopbackService"]


@dataclass(frozen=True)
class Symlink:
    target: str


def build_zip(top: str, files: dict[str, bytes | Symlink], comment: str = "") -> bytes:
    """A GitHub-style zipball: one top folder, unix modes, symlinks as link entries,
    and (like GitHub's) the commit SHA as the zip comment when given."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as zf:
        zf.comment = comment.encode("ascii")
        dirs = {top}
        for path in files:
            parts = path.split("/")[:-1]
            for i in range(1, len(parts) + 1):
                dirs.add(top + "/" + "/".join(parts[:i]))
        for d in sorted(dirs):
            info = zipfile.ZipInfo(d + "/")
            info.create_system = 3
            info.external_attr = (stat.S_IFDIR | 0o755) << 16 | 0x10
            zf.writestr(info, b"")
        for path, content in sorted(files.items()):
            info = zipfile.ZipInfo(f"{top}/{path}")
            info.create_system = 3
            if isinstance(content, Symlink):
                info.external_attr = (stat.S_IFLNK | 0o777) << 16
                zf.writestr(info, content.target.encode())
            else:
                mode = 0o755 if path.endswith(".sh") else 0o644
                info.external_attr = (stat.S_IFREG | mode) << 16
                info.compress_type = zipfile.ZIP_DEFLATED
                zf.writestr(info, content)
    return buf.getvalue()


@dataclass
class FakeRepo:
    owner: str
    name: str
    network: dict  # sha -> (files, parent) shared with forks
    private: bool = False
    branches: dict[str, str] = field(default_factory=dict)
    tags: dict[str, str] = field(default_factory=dict)
    assets: dict[tuple[str, str], bytes] = field(default_factory=dict)
    archive_override: dict[str, bytes] = field(default_factory=dict)

    def commit(self, files: dict[str, bytes | Symlink], *, branch: str | None = "main",
               parent: str | None = None, sha: str | None = None) -> str:
        """Add a commit (on top of ``branch``'s head unless ``parent`` is given)."""
        if parent is None and branch is not None:
            parent = self.branches.get(branch)
        if sha is None:
            h = hashlib.sha1(f"{self.owner}/{self.name}\0{parent}\0".encode())
            for path, content in sorted(files.items()):
                h.update(path.encode() + b"\0" + (content.target.encode() if isinstance(content, Symlink) else content))
            sha = h.hexdigest()
        self.network[sha] = (dict(files), parent)
        if branch is not None:
            self.branches[branch] = sha
        return sha

    def tag(self, name: str, sha: str) -> None:
        self.tags[name] = sha

    def release_asset(self, tag: str, name: str, data: bytes) -> str:
        self.assets[(tag, name)] = data
        return f"/{self.owner}/{self.name}/releases/download/{tag}/{name}"

    def ancestors(self, sha: str) -> list[str]:
        out = []
        while sha is not None and sha in self.network:
            out.append(sha)
            sha = self.network[sha][1]
        return out

    def resolve(self, ref: str) -> str | None:
        """GitHub's rules: refs/heads/x, refs/tags/x, branch, tag, full or unique short SHA.
        Returns 'AMBIGUOUS' for a short SHA matching several commits."""
        if ref.startswith("refs/heads/"):
            return self.branches.get(ref[11:])
        if ref.startswith("refs/tags/"):
            return self.tags.get(ref[10:])
        if ref in self.branches:
            return self.branches[ref]
        if ref in self.tags:
            return self.tags[ref]
        if re.fullmatch(r"[0-9a-f]{4,40}", ref):
            hits = [s for s in self.network if s.startswith(ref)]
            if len(hits) > 1:
                return "AMBIGUOUS"
            return hits[0] if hits else None
        return None

    def archive(self, sha: str) -> bytes:
        if sha in self.archive_override:
            return self.archive_override[sha]
        return build_zip(f"{self.owner}-{self.name}-{sha[:7]}", self.network[sha][0], comment=sha)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: "_Server"

    def log_message(self, fmt: str, *args: object) -> None:  # keep pytest output quiet
        pass

    def do_GET(self) -> None:  # noqa: N802
        gh = self.server.github
        auth = self.headers.get("Authorization")
        gh.log.append({"port": self.server.server_address[1], "path": self.path, "auth": auth,
                       "role": self.server.role})
        with gh.lock:
            if gh.fail_next:
                gh.fail_next -= 1
                return self._send(gh.fail_status, b"transient failure")
        try:
            if self.server.role == "codeload":
                return self._codeload()
            return self._main(auth)
        except BrokenPipeError:
            pass

    def _send(self, status: int, body: bytes, ctype: str = "text/plain", headers: dict | None = None) -> None:
        self.send_response(status)
        self.send_header("Content-Type", ctype)
        self.send_header("Content-Length", str(len(body)))
        for k, v in (headers or {}).items():
            self.send_header(k, v)
        self.end_headers()
        self.wfile.write(body)

    def _json(self, payload: object, status: int = 200) -> None:
        self._send(status, json.dumps(payload).encode(), "application/json")

    def _not_found(self) -> None:
        self._json({"message": "Not Found"}, 404)

    def _authorized(self, repo: FakeRepo, auth: str | None) -> bool:
        if not repo.private:
            return True
        token = self.server.github.token
        return token is not None and auth in (f"Bearer {token}", f"token {token}")

    def _codeload(self) -> None:
        gh = self.server.github
        parts = urlsplit(self.path)
        ticket = parse_qs(parts.query).get("ticket", [""])[0]
        payload = gh.tickets.get(ticket)
        if payload is None:
            return self._not_found()
        self._send(200, payload, "application/zip")

    def _redirect_to_codeload(self, payload: bytes, name: str) -> None:
        gh = self.server.github
        ticket = secrets.token_hex(8)
        gh.tickets[ticket] = payload
        location = f"{gh.codeload_url}/{name}?ticket={ticket}"
        self._send(302, b"", headers={"Location": location})

    def _main(self, auth: str | None) -> None:
        gh = self.server.github
        parts = urlsplit(self.path)
        path = unquote(parts.path)
        query = parse_qs(parts.query)
        api = path.startswith("/api/v3/")
        if api:
            if gh.rate_limit_remaining is not None and gh.rate_limit_remaining <= 0:
                return self._send(403, b'{"message": "API rate limit exceeded"}', "application/json",
                                  {"X-RateLimit-Remaining": "0", "X-RateLimit-Reset": "2000000000"})
            if gh.rate_limit_remaining is not None:
                gh.rate_limit_remaining -= 1
            m = re.match(r"^/api/v3/repos/([^/]+)/([^/]+)/(.*)$", path)
        else:
            m = re.match(r"^/([^/]+)/([^/]+)/(.*)$", path)
        if not m:
            return self._not_found()
        repo = gh.repos.get((m.group(1).lower(), m.group(2).lower()))
        if repo is None or not self._authorized(repo, auth):
            return self._not_found()
        rest = m.group(3)
        if api:
            return self._api(repo, rest, query)
        if rest.startswith("tree/"):
            branch = rest[5:].rstrip("/")
            return self._send(200, b"<html>tree</html>", "text/html") if branch in repo.branches else self._not_found()
        zm = re.match(r"^(?:zipball/(.+)|archive/(.+)\.zip)$", rest)
        if zm:
            return self._zipball(repo, zm.group(1) or zm.group(2))
        rm = re.match(r"^releases/download/([^/]+)/([^/]+)$", rest)
        if rm:
            data = repo.assets.get((rm.group(1), rm.group(2)))
            if data is None:
                return self._not_found()
            return self._redirect_to_codeload(data, rm.group(2))
        return self._not_found()

    def _zipball(self, repo: FakeRepo, ref: str) -> None:
        sha = repo.resolve(ref)
        if sha is None or sha == "AMBIGUOUS":
            return self._not_found()
        self.server.github.archive_requests.append(sha)
        return self._redirect_to_codeload(repo.archive(sha), f"{repo.owner}-{repo.name}-{sha[:7]}.zip")

    def _api(self, repo: FakeRepo, rest: str, query: dict) -> None:
        if rest in ("branches", "tags"):
            items = sorted((repo.branches if rest == "branches" else repo.tags).items())
            per_page = int(query.get("per_page", ["30"])[0])
            page = int(query.get("page", ["1"])[0])
            chunk = items[(page - 1) * per_page : page * per_page]
            return self._json([{"name": n, "commit": {"sha": s}} for n, s in chunk])
        if rest.startswith("branches/"):
            name = rest[len("branches/"):]
            if name not in repo.branches:
                return self._not_found()
            return self._json({"name": name, "commit": {"sha": repo.branches[name]}})
        if rest.startswith("commits/"):
            sha = repo.resolve(rest[len("commits/"):])
            if sha == "AMBIGUOUS":
                return self._json({"message": "No commit found for SHA"}, 422)
            if sha is None:
                return self._not_found()
            return self._json({"sha": sha})
        if rest.startswith("compare/"):
            base, _, head = rest[len("compare/"):].partition("...")
            if base not in repo.network or head not in repo.network:
                return self._not_found()
            if base == head:
                status = "identical"
            elif base in repo.ancestors(head):
                status = "ahead"
            elif head in repo.ancestors(base):
                status = "behind"
            else:
                status = "diverged"
            return self._json({"status": status})
        if rest.startswith("zipball/"):
            return self._zipball(repo, rest[len("zipball/"):])
        return self._not_found()


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def __init__(self, github: "FakeGitHub", role: str) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.github = github
        self.role = role


class FakeGitHub:
    """Start with ``with FakeGitHub() as gh:``; point safehub at it with ``gh.env()``."""

    def __init__(self, token: str | None = None) -> None:
        self.token = token
        self.repos: dict[tuple[str, str], FakeRepo] = {}
        self.log: list[dict] = []
        self.archive_requests: list[str] = []
        self.tickets: dict[str, bytes] = {}
        self.fail_next = 0
        self.fail_status = 503
        self.rate_limit_remaining: int | None = None
        self.lock = threading.Lock()
        self._servers: list[_Server] = []

    def start(self) -> "FakeGitHub":
        for role in ("main", "codeload"):
            srv = _Server(self, role)
            threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True).start()
            self._servers.append(srv)
        return self

    def stop(self) -> None:
        for srv in self._servers:
            srv.shutdown()
            srv.server_close()
        self._servers.clear()

    def __enter__(self) -> "FakeGitHub":
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self._servers[0].server_address[1]}"

    @property
    def api_url(self) -> str:
        return self.url + "/api/v3"

    @property
    def codeload_url(self) -> str:
        return f"http://127.0.0.1:{self._servers[1].server_address[1]}"

    @property
    def host_key(self) -> str:
        return f"127.0.0.1+{self._servers[0].server_address[1]}"

    def env(self, **extra: str) -> dict[str, str]:
        """The GitHub host, and the "codeload" origin its archives and release assets
        redirect to allowed for downloads (loopback, so it must be listed by origin,
        as a GitHub Enterprise's asset storage would be)."""
        return {"SAFEHUB_GITHUB_URL": self.url, "SAFEHUB_GITHUB_API_URL": self.api_url,
                "SAFEHUB_DOWNLOAD_ALLOW_HOSTS": self.codeload_url, **extra}

    def add_repo(self, owner: str, name: str, *, private: bool = False) -> FakeRepo:
        repo = FakeRepo(owner=owner, name=name, network={}, private=private)
        self.repos[(owner.lower(), name.lower())] = repo
        return repo

    def fork(self, parent: FakeRepo, owner: str) -> FakeRepo:
        """A fork shares the parent's object store, as on GitHub."""
        repo = FakeRepo(owner=owner, name=parent.name, network=parent.network,
                        branches=dict(parent.branches), tags=dict(parent.tags))
        self.repos[(owner.lower(), parent.name.lower())] = repo
        return repo


# --- hostile download servers (the broker's bounds) ---------------------------------


class LoopbackService:
    """A raw HTTP/1.0 server on 127.0.0.1 with one behaviour per path:

    /secret        a private service's reply (what an attacker wants to read)
    /drip          headers, then one byte every ``drip_s`` (never finishes in time)
    /silent        accepts, reads the request, never answers
    /bytes/<n>     n bytes without Content-Length (the size is known only at the end)

    It serves for at most ``lifetime_s`` and then stops by itself, even mid-drip."""

    def __init__(self, lifetime_s: float = 8.0, drip_s: float = 0.05) -> None:
        self.lifetime_s = lifetime_s
        self.drip_s = drip_s
        self.requests: list[str] = []
        self._sock = socket.create_server(("127.0.0.1", 0))
        self._sock.settimeout(0.05)
        self._stop = threading.Event()
        self._end = time.monotonic() + lifetime_s
        self._thread = threading.Thread(target=self._serve, daemon=True)

    @property
    def origin(self) -> str:
        return f"http://127.0.0.1:{self._sock.getsockname()[1]}"

    def __enter__(self) -> "LoopbackService":
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(timeout=self.lifetime_s + 2)
        self._sock.close()

    def _alive(self) -> bool:
        return not self._stop.is_set() and time.monotonic() < self._end

    def _serve(self) -> None:
        while self._alive():
            try:
                conn, _ = self._sock.accept()
            except (TimeoutError, OSError):
                continue
            threading.Thread(target=self._handle, args=(conn,), daemon=True).start()

    def _handle(self, conn: socket.socket) -> None:
        with conn:
            conn.settimeout(1.0)
            data = b""
            try:
                while b"\r\n\r\n" not in data and len(data) < 8192:
                    chunk = conn.recv(4096)
                    if not chunk:
                        return
                    data += chunk
                path = data.split(b" ", 2)[1].decode()
                self.requests.append(path)
                if path == "/secret":
                    body = b"INTERNAL-SERVICE-SECRET"
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
                elif path == "/drip":
                    conn.sendall(b"HTTP/1.0 200 OK\r\nContent-Length: 100000\r\n\r\n")
                    while self._alive():
                        conn.sendall(b"x")
                        time.sleep(self.drip_s)
                elif path == "/silent":
                    while self._alive():
                        time.sleep(0.05)
                elif path.startswith("/bytes/"):
                    n = int(path.rsplit("/", 1)[1])
                    conn.sendall(b"HTTP/1.0 200 OK\r\n\r\n")
                    for _ in range(0, n, 65536):
                        if not self._alive():
                            return
                        conn.sendall(b"w" * min(65536, n))
                else:
                    conn.sendall(b"HTTP/1.0 404 Not Found\r\nContent-Length: 0\r\n\r\n")
            except OSError:
                pass  # the client went away: that is the point of most of these


# --- the torchhub_example fixture (PyTorch's test/test_hub.py) ---------------------

TORCHHUB_EXAMPLE = __import__("pathlib").Path(__file__).resolve().parent / "fixtures" / "torchhub_example"
SUM_OF_HUB_EXAMPLE = 431080


def torchhub_example_assets() -> dict[str, bytes]:
    """The release assets: MNIST weights, all ones, in the three formats test_hub uses."""
    import importlib.util

    import torch

    spec = importlib.util.spec_from_file_location("_torchhub_example_model", TORCHHUB_EXAMPLE / "model.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    state = {k: torch.ones_like(v) for k, v in module.Net().state_dict().items()}
    legacy = io.BytesIO()
    torch.save(state, legacy, _use_new_zipfile_serialization=False)
    modern = io.BytesIO()
    torch.save(state, modern)
    zipped = io.BytesIO()
    with zipfile.ZipFile(zipped, "w") as zf:
        zf.writestr("mnist_init_ones", legacy.getvalue())
    return {
        "mnist_init_ones": legacy.getvalue(),
        "mnist_init_ones.zip": zipped.getvalue(),
        "mnist_init_ones_zip_1_6": modern.getvalue(),
    }


def publish_torchhub_example(gh: FakeGitHub, assets: dict[str, bytes] | None = None) -> FakeRepo:
    """ailzhang/torchhub_example on ``gh``: default branch master, a ci/test_slash branch,
    release 0.1 with the weights, and hubconf's weight URLs pointing at ``gh``."""
    files = {p.name: p.read_bytes() for p in sorted(TORCHHUB_EXAMPLE.iterdir()) if p.suffix == ".py"}
    original = b'RELEASE_BASE = "https://github.com"'
    assert original in files["hubconf.py"]
    files["hubconf.py"] = files["hubconf.py"].replace(original, f'RELEASE_BASE = "{gh.url}"'.encode())
    repo = gh.add_repo("ailzhang", "torchhub_example")
    master = repo.commit(files, branch="master")
    repo.commit({**files, "CI.md": b"slash branch\n"}, branch="ci/test_slash", parent=master)
    for name, data in (assets or torchhub_example_assets()).items():
        repo.release_asset("0.1", name, data)
    return repo
