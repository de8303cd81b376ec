"""GitHub's URL layout and turning a ref into a full commit SHA.

URLs (github.com shown; ``SAFEHUB_GITHUB_URL`` / ``SAFEHUB_GITHUB_API_URL``
replace the two bases for GitHub Enterprise, a mirror, or the test server)::

    {web}/{owner}/{repo}/tree/main/               default-branch probe, as torch.hub
    {web}/{owner}/{repo}/zipball/{sha}            archive of one commit
    {api}/repos/{owner}/{repo}/branches|tags      paged listings (validation)
    {api}/repos/{owner}/{repo}/branches/{branch}  one branch (probe with a token)
    {api}/repos/{owner}/{repo}/commits/{ref}      ref or short SHA -> full SHA
    {api}/repos/{owner}/{repo}/compare/{a}...{b}  is commit a an ancestor of b
    {api}/repos/{owner}/{repo}/zipball/{sha}      archive, used when a token is set
                                                  (the web URL ignores tokens on github.com)
"""

from __future__ import annotations

import logging
import warnings
from collections.abc import Mapping
from urllib.parse import quote, urlsplit

from .._errors import FetchError, InvalidRepoError, RepoNotFoundError
from .._records import record
from ._http import HttpClient, origin_of
from ._names import MIN_SHORT_SHA, SHA_RE, is_full_sha, looks_like_short_sha

__all__ = ["GitHubHost", "github_host", "github_token", "make_client", "Resolver", "FORK_MESSAGE"]

logger = logging.getLogger("safehub")

DEFAULT_WEB = "https://github.com"
DEFAULT_API = "https://api.github.com"
PER_PAGE = 100
MAX_PAGES = 50  # 5000 branches or tags is plenty; past it we stop rather than loop
MAX_ANCESTRY_CHECKS = 20
# Kept close to torch.hub's wording so code matching on it keeps working.
FORK_MESSAGE = "If it's a commit from a forked repo, please call load() with the forked repo directly."


@record(frozen=True)
class GitHubHost:
    """A GitHub (or GitHub Enterprise) host: its web and API base URLs."""

    web: str
    api: str

    @property
    def key(self) -> str:
        """The cache/trust folder name for this host: ``github.com``, ``127.0.0.1+8080``.
        '+' cannot appear in a host name, so the mapping is injective."""
        scheme, host, port = origin_of(self.web)
        default = 443 if scheme == "https" else 80
        return host if port == default else f"{host}+{port}"

    @property
    def is_github_com(self) -> bool:
        return origin_of(self.web) == origin_of(DEFAULT_WEB)

    def archive_url(self, owner: str, name: str, sha: str, *, api: bool) -> str:
        if api:
            return f"{self.api}/repos/{owner}/{name}/zipball/{sha}"
        return f"{self.web}/{owner}/{name}/zipball/{sha}"


def _base(env: Mapping[str, str], name: str, default: str) -> str:
    value = (env.get(name) or default).strip().rstrip("/")
    parts = urlsplit(value)
    if parts.scheme not in ("http", "https") or not parts.hostname or parts.query or parts.fragment or parts.username:
        raise InvalidRepoError(f"{name}={value!r} is not a plain http(s) base URL", hint="e.g. https://ghe.example.com")
    return value


def github_host(env: Mapping[str, str]) -> GitHubHost:
    web = _base(env, "SAFEHUB_GITHUB_URL", DEFAULT_WEB)
    if env.get("SAFEHUB_GITHUB_API_URL"):
        api = _base(env, "SAFEHUB_GITHUB_API_URL", DEFAULT_API)
    elif web == DEFAULT_WEB:
        api = DEFAULT_API
    else:
        api = web + "/api/v3"  # GitHub Enterprise's layout
    return GitHubHost(web=web, api=api)


def github_token(env: Mapping[str, str]) -> str | None:
    token = env.get("SAFEHUB_GITHUB_TOKEN") or env.get("GITHUB_TOKEN")
    token = (token or "").strip()
    if token and any(c in token for c in "\r\n\x00"):
        raise FetchError("the GitHub token contains a line break or NUL", hint="re-export GITHUB_TOKEN without them")
    return token or None


def make_client(host: GitHubHost, env: Mapping[str, str], *, url_check=None, address_check=None) -> HttpClient:
    timeout = float(env.get("SAFEHUB_HTTP_TIMEOUT") or 30)
    return HttpClient(
        token=github_token(env),
        token_origins={origin_of(host.web), origin_of(host.api)},
        timeout=timeout,
        url_check=url_check,
        address_check=address_check,
    )


class Resolver:
    """Ref -> full SHA for one repo, with torch.hub's fork validation done right:
    names must match exactly, short SHAs are expanded by GitHub and then checked
    for reachability like full ones."""

    def __init__(self, client: HttpClient, host: GitHubHost, owner: str, name: str) -> None:
        self.client = client
        self.host = host
        self.owner = owner
        self.name = name
        self._lists: dict[str, list[tuple[str, str]]] = {}

    @property
    def _repo_api(self) -> str:
        return f"{self.host.api}/repos/{self.owner}/{self.name}"

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.name}"

    def default_branch(self) -> str:
        """main if it exists, else master (torch.hub's rule)."""
        if self.client.has_token:
            url = f"{self._repo_api}/branches/main"
        else:
            url = f"{self.host.web}/{self.owner}/{self.name}/tree/main/"
        status = self.client.status(url, what=f"the main branch of {self.slug}")
        return "main" if status == 200 else "master"

    def listing(self, kind: str) -> list[tuple[str, str]]:
        """All (name, commit sha) pairs of ``kind`` ('branches' or 'tags')."""
        if kind in self._lists:
            return self._lists[kind]
        out: list[tuple[str, str]] = []
        for page in range(1, MAX_PAGES + 1):
            data = self.client.get_json(
                f"{self._repo_api}/{kind}?per_page={PER_PAGE}&page={page}", what=f"the {kind} of {self.slug}"
            )
            if not isinstance(data, list):
                raise FetchError(f"the {kind} listing of {self.slug} is not a JSON list")
            for item in data:
                try:
                    name, sha = item["name"], item["commit"]["sha"]
                except (TypeError, KeyError):
                    raise FetchError(f"the {kind} listing of {self.slug} has a malformed entry") from None
                if isinstance(name, str) and isinstance(sha, str) and SHA_RE.match(sha):
                    out.append((name, sha))
            if len(data) < PER_PAGE:
                break
        self._lists[kind] = out
        return out

    def commit_sha(self, ref: str) -> str:
        """GitHub's own expansion of a ref or short SHA (no fork check)."""
        try:
            data = self.client.get_json(f"{self._repo_api}/commits/{quote(ref, safe='/')}", what=f"{self.slug}:{ref}")
        except RepoNotFoundError as exc:
            raise RepoNotFoundError(f"{self.slug} has no branch, tag or commit {ref!r}", hint=exc.hint) from None
        except FetchError as exc:
            if getattr(exc, "status", None) == 422:  # GitHub: no such commit, or an ambiguous short SHA
                raise RepoNotFoundError(
                    f"{self.slug} has no unique commit {ref!r}",
                    hint="pass the full 40-character commit SHA",
                ) from None
            raise
        sha = data.get("sha") if isinstance(data, dict) else None
        if not isinstance(sha, str) or not SHA_RE.match(sha):
            raise FetchError(f"GitHub's reply for {self.slug}:{ref} has no valid commit SHA")
        return sha

    def is_ancestor(self, sha: str, head: str) -> bool:
        if sha == head:
            return True
        try:
            data = self.client.get_json(f"{self._repo_api}/compare/{sha}...{head}", what=f"ancestry of {sha[:12]}")
        except RepoNotFoundError:
            return False
        return isinstance(data, dict) and data.get("status") in ("ahead", "identical")

    def check_reachable(self, sha: str) -> None:
        """A full SHA must be reachable from a branch or tag of this repo, not only a fork:
        GitHub serves fork commits through the parent's URLs."""
        heads = self.listing("branches") + self.listing("tags")
        if any(head == sha for _, head in heads):
            return
        # Newest lines first: the usual default branches, then the other branches, then tags.
        ordered = sorted(self.listing("branches"), key=lambda b: b[0] not in ("main", "master")) + self.listing("tags")
        seen: set[str] = set()
        for _, head in ordered:
            if head in seen:
                continue
            seen.add(head)
            if len(seen) > MAX_ANCESTRY_CHECKS:
                break
            if self.is_ancestor(sha, head):
                return
        raise InvalidRepoError(
            f"Cannot find commit {sha} on any branch or tag of {self.host.web}/{self.slug}. {FORK_MESSAGE}",
            hint="if you trust this commit anyway, pass skip_validation=True",
        )

    def _warn_ambiguous(self, name: str) -> None:
        warnings.warn(
            f"The ref {name} is both a branch and a tag of {self.slug}; using the branch "
            f"(pass refs/tags/{name} for the tag)",
            UserWarning,
            stacklevel=5,
        )

    def _resolve_unvalidated(self, ref: str) -> str:
        """skip_validation: no branch/tag listings, but a name that is both a branch
        and a tag still warns (two direct lookups instead of one)."""
        if ref.startswith(("refs/heads/", "refs/tags/")) or looks_like_short_sha(ref):
            return self.commit_sha(ref)

        def lookup(full: str) -> str | None:
            try:
                return self.commit_sha(full)
            except RepoNotFoundError:
                return None

        branch = lookup(f"refs/heads/{ref}")
        tag = lookup(f"refs/tags/{ref}")
        if branch is not None and tag is not None and branch != tag:
            self._warn_ambiguous(ref)
        found = branch if branch is not None else tag
        return found if found is not None else self.commit_sha(ref)

    def resolve(self, ref: str | None, *, skip_validation: bool) -> tuple[str, str]:
        """Return (resolved ref name, full SHA)."""
        if ref is None:
            ref = self.default_branch()
        if is_full_sha(ref):
            if not skip_validation:
                self.check_reachable(ref)
            return ref, ref
        if skip_validation:
            return ref, self._resolve_unvalidated(ref)
        kind_filter = None
        name = ref
        if ref.startswith("refs/heads/"):
            kind_filter, name = "branches", ref[len("refs/heads/") :]
        elif ref.startswith("refs/tags/"):
            kind_filter, name = "tags", ref[len("refs/tags/") :]
        branch = next((sha for n, sha in self.listing("branches") if n == name), None) if kind_filter != "tags" else None
        tag = next((sha for n, sha in self.listing("tags") if n == name), None) if kind_filter != "branches" else None
        if branch is not None and tag is not None and branch != tag:
            self._warn_ambiguous(name)
        if branch is not None:
            return ref, branch
        if tag is not None:
            return ref, tag
        if kind_filter is None and looks_like_short_sha(ref):
            if len(ref) < MIN_SHORT_SHA:
                raise InvalidRepoError(
                    f"{ref!r} is too short to name a commit of {self.slug} ({len(ref)} < {MIN_SHORT_SHA} hex digits)",
                    hint="pass the full 40-character commit SHA",
                )
            sha = self.commit_sha(ref.lower())
            if not sha.startswith(ref.lower()):
                raise FetchError(f"GitHub expanded {ref!r} to {sha}, which does not start with it")
            self.check_reachable(sha)
            return ref, sha
        raise RepoNotFoundError(
            f"Cannot find {ref} in {self.host.web}/{self.slug}: it is not a branch or tag. {FORK_MESSAGE}",
            hint="check the ref's spelling; tags and branches are case-sensitive",
        )
