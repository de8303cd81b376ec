"""get_repo: torch.hub's ``_get_cache_or_reload`` done safely.

Order of work: parse the name, check trust (before any network, like torch.hub),
resolve the ref to a full SHA (cached briefly), then use the cache entry for that
SHA after verifying its content hash, or download and extract it atomically.
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Callable, Mapping
from pathlib import Path

from .._config import env_flag, is_offline, progress_enabled
from .._records import record
from .._status import status
from .._errors import HubconfError, InvalidRepoError, OfflineError
from .._fsutil import remove_tree
from ._cache import CacheEntry, RepoCache
from .._fsutil import tree_size
from ._extract import ArchiveLimits, extract_zip, make_read_only, tree_hash
from ._github import GitHubHost, Resolver, github_host, make_client
from ._names import SHA_RE, parse_repo
from ._trust import check_trust

__all__ = ["RepoCheckout", "RepoRequest", "SOURCES", "fetch_repo", "get_repo", "ref_ttl"]

logger = logging.getLogger("safehub")

DEFAULT_REF_TTL_S = 300.0


@record(frozen=True)
class RepoCheckout:
    """A repo tree ready to hand to the sandbox (read-only; contains hubconf.py)."""

    path: Path
    sha: str | None
    host: str | None
    owner: str | None
    name: str | None
    ref: str | None  # as asked (None: the default branch)
    source: str
    resolved_ref: str | None = None  # the branch/tag the SHA came from ("main", ...)

    @property
    def slug(self) -> str | None:
        return None if self.owner is None else f"{self.owner}/{self.name}"

    @property
    def display_name(self) -> str:
        """owner/name, or the folder of a local repo."""
        return self.slug or str(self.path)


def ref_ttl(env: Mapping[str, str]) -> float:
    raw = env.get("SAFEHUB_REF_CACHE_TTL")
    if not raw:
        return DEFAULT_REF_TTL_S
    try:
        return max(0.0, float(raw))
    except ValueError:
        raise ValueError(f"SAFEHUB_REF_CACHE_TTL={raw!r} is not a number of seconds") from None


@record(frozen=True)
class RepoRequest:
    """Which repo to fetch and how: torch.hub's options, in one object."""

    repo_or_dir: str
    source: str = "github"
    force_reload: bool = False
    trust_repo: bool | str | None = None
    calling_fn: str = "load"
    verbose: bool = True
    skip_validation: bool = False
    revision: str | None = None  # a full commit SHA to load exactly
    allow_prompt: bool = True  # False: a needed trust prompt raises UntrustedRepoError
    prompt: Callable[[str], str] | None = None
    # Called with the commit SHA the request resolved to, before the cache is read or
    # anything is downloaded; raises to refuse (a lockfile's "the ref moved").
    before_fetch: Callable[[str], None] | None = None


def _from_local(request: RepoRequest, hub_dir: Path, env: Mapping[str, str]) -> RepoCheckout:
    path = Path(request.repo_or_dir).expanduser()
    if not path.is_dir():
        raise HubconfError(f"local repo folder {str(path)!r} does not exist", hint="pass an existing folder")
    if not (path / "hubconf.py").is_file():
        raise HubconfError(f"{str(path)!r} has no hubconf.py", hint="source='local' needs a folder with hubconf.py")
    return RepoCheckout(path=path.resolve(), sha=None, host=None, owner=None, name=None, ref=None, source="local")


def fetch_repo(request: RepoRequest, *, hub_dir: Path, env: Mapping[str, str] | None = None) -> RepoCheckout:
    """Return a verified, read-only checkout for ``request`` from its source's fetcher."""
    source = str(request.source).lower()
    fetch = SOURCES.get(source)
    if fetch is None:
        allowed = " | ".join(f'"{name}"' for name in SOURCES)
        raise ValueError(f'Unknown source: "{source}". Allowed values: {allowed}.')
    return fetch(request, Path(hub_dir), os.environ if env is None else env)


def get_repo(
    repo_or_dir: str,
    *,
    source: str = "github",
    force_reload: bool = False,
    trust_repo: bool | str | None = None,
    calling_fn: str = "load",
    verbose: bool = True,
    skip_validation: bool = False,
    revision: str | None = None,
    hub_dir: Path,
    env: Mapping[str, str] | None = None,
    allow_prompt: bool = True,
    prompt: Callable[[str], str] | None = None,
) -> RepoCheckout:
    """Return a verified, read-only checkout of ``repo_or_dir`` (keyword form of
    :func:`fetch_repo`).

    ``revision`` pins a full commit SHA: exactly that tree is loaded, whatever the
    ref now points at. ``allow_prompt=False`` turns a needed trust prompt into an
    UntrustedRepoError (for policies that forbid prompts).
    """
    request = RepoRequest(
        repo_or_dir=str(repo_or_dir), source=source, force_reload=force_reload, trust_repo=trust_repo,
        calling_fn=calling_fn, verbose=verbose, skip_validation=skip_validation, revision=revision,
        allow_prompt=allow_prompt, prompt=prompt,
    )
    return fetch_repo(request, hub_dir=hub_dir, env=env)


def _from_github(request: RepoRequest, hub_dir: Path, env: Mapping[str, str]) -> RepoCheckout:
    repo_or_dir, revision, force_reload = request.repo_or_dir, request.revision, request.force_reload
    skip_validation, verbose = request.skip_validation, request.verbose
    spec = parse_repo(repo_or_dir)
    if revision is not None:
        revision = str(revision).lower()
        if not SHA_RE.match(revision):
            raise InvalidRepoError(
                f"revision={revision!r} is not a full 40-character commit SHA",
                hint="use the sha recorded by an earlier load (RepoCheckout.sha / safehub cache ls)",
            )
    hub_dir = Path(hub_dir)
    hub_dir.mkdir(parents=True, exist_ok=True)
    host = github_host(env)
    check_trust(
        hub_dir,
        host=host.key,
        is_github_com=host.is_github_com,
        owner=spec.owner,
        name=spec.name,
        trust_repo=request.trust_repo,
        calling_fn=request.calling_fn,
        allow_prompt=request.allow_prompt,
        prompt=request.prompt,
        # A GitHub Enterprise mirror of github.com may opt in to torch.hub's built-in owners.
        builtin_owners=host.is_github_com or env_flag("SAFEHUB_TRUST_BUILTIN_OWNERS", env),
    )
    cache = RepoCache(hub_dir)
    cache.clean_tmp()
    offline = is_offline(env)
    fetcher = _Fetcher(spec.owner, spec.name, host, cache, env, offline=offline, verbose=verbose)

    wanted = revision or (spec.ref.lower() if spec.ref and SHA_RE.match(spec.ref.lower()) else None)
    resolved_ref = None
    if wanted is not None:
        sha = wanted
    else:
        resolved_ref, sha = fetcher.resolve(spec.ref, force=force_reload, skip_validation=skip_validation)
    if request.before_fetch is not None:
        request.before_fetch(sha)
    entry = cache.entry(host.key, spec.owner, spec.name, sha)
    with cache.lock(entry):
        usable = cache.exists(entry) and not force_reload
        if usable and wanted is not None and not skip_validation and not entry.meta().get("validated"):
            usable = False  # fetched once with skip_validation; check reachability now
        if usable:
            cache.verify(entry)
            status("Using cache found in %s", entry.path, verbose=verbose, env=env)
        else:
            if wanted is not None and not skip_validation:
                fetcher.check_reachable(sha)
            fetcher.fetch(entry, validated=not skip_validation)
    cache.record_load(
        {"host": host.key, "owner": spec.owner, "name": spec.name, "ref": spec.ref, "revision": revision,
         "resolved_ref": resolved_ref, "sha": sha, "path": str(entry.path)}
    )
    return RepoCheckout(
        path=entry.path, sha=sha, host=host.key, owner=spec.owner, name=spec.name, ref=spec.ref,
        source="github", resolved_ref=resolved_ref,
    )


class _Fetcher:
    def __init__(self, owner: str, name: str, host: GitHubHost, cache: RepoCache, env: Mapping[str, str],
                 *, offline: bool, verbose: bool) -> None:
        self.owner, self.name, self.host, self.cache, self.env = owner, name, host, cache, env
        self.offline = offline
        self.verbose = verbose
        self._resolver: Resolver | None = None

    @property
    def slug(self) -> str:
        return f"{self.owner}/{self.name}"

    @property
    def resolver(self) -> Resolver:
        if self.offline:
            raise AssertionError("no network in offline mode")
        if self._resolver is None:
            self._resolver = Resolver(make_client(self.host, self.env), self.host, self.owner, self.name)
        return self._resolver

    def _offline_error(self, missing: str) -> OfflineError:
        shas = self.cache.cached_shas(self.host.key, self.owner, self.name)
        refs = self.cache.cached_refs(self.host.key, self.owner, self.name)
        have = (
            "the cache holds commits " + ", ".join(shas) + (f" (known refs: {', '.join(f'{r}={s[:12]}' for r, s in sorted(refs.items()))})" if refs else "")
            if shas else f"the cache holds nothing for {self.slug} on {self.host.key}"
        )
        return OfflineError(
            f"SAFEHUB_OFFLINE=1 and {missing} is not in the cache ({self.cache.repos}); {have}",
            hint="unset SAFEHUB_OFFLINE to download it" + (", or pass revision=<one of the cached commits>" if shas else ""),
        )

    def resolve(self, ref: str | None, *, force: bool, skip_validation: bool) -> tuple[str | None, str]:
        host = self.host.key
        if self.offline:
            sha = self.cache.get_ref(host, self.owner, self.name, ref, max_age_s=None,
                                     require_validated=not skip_validation)
            if sha is None:
                what = f"the commit of {self.slug}:{ref}" if ref else f"the default branch of {self.slug}"
                raise self._offline_error(what)
            logger.info("offline: using the cached resolution %s -> %s", ref or "default branch", sha)
            return ref, sha
        if not force:
            sha = self.cache.get_ref(host, self.owner, self.name, ref, max_age_s=ref_ttl(self.env),
                                     require_validated=not skip_validation)
            if sha is not None:
                return ref, sha
        resolved, sha = self.resolver.resolve(ref, skip_validation=skip_validation)
        self.cache.put_ref(host, self.owner, self.name, ref, sha, resolved, validated=not skip_validation)
        logger.info("resolved %s:%s to commit %s", self.slug, resolved, sha)
        return resolved, sha

    def check_reachable(self, sha: str) -> None:
        if self.offline:
            raise self._offline_error(f"a validated copy of {self.slug}@{sha}")
        self.resolver.check_reachable(sha)

    def fetch(self, entry: CacheEntry, *, validated: bool) -> None:
        if self.offline:
            raise self._offline_error(f"{self.slug}@{entry.sha}")
        limits = ArchiveLimits.from_env(self.env)
        client = self.resolver.client
        url = self.host.archive_url(self.owner, self.name, entry.sha, api=client.has_token)
        archive = self.cache.new_tmp(".zip")
        tree = self.cache.new_tmp(".tree")
        show = progress_enabled(self.verbose, self.env)
        try:
            status("Downloading %s@%s", self.slug, entry.sha, verbose=self.verbose, env=self.env)
            with open(archive, "xb") as f:
                nbytes, archive_sha256 = client.download(
                    url, f, max_bytes=limits.max_archive_bytes, progress=show,
                    what=f"the archive of {self.slug}@{entry.sha}",
                )
            tree.mkdir(mode=0o755)
            extract_zip(archive, tree, limits, expected_sha=entry.sha)
            if not (tree / "hubconf.py").is_file():
                raise HubconfError(
                    f"{self.slug}@{entry.sha} has no hubconf.py at its top level",
                    hint="torch.hub repos need a hubconf.py; check the repo name and ref",
                )
            digest = tree_hash(tree)
            make_read_only(tree)
            self.cache.install(entry, tree, {
                "host": self.host.key, "web": self.host.web, "owner": self.owner, "name": self.name,
                "sha": entry.sha, "tree_hash": digest, "archive_sha256": archive_sha256,
                "archive_bytes": nbytes, "size_bytes": tree_size(tree),
                "fetched_at": time.time(), "validated": validated,
            })
        finally:
            try:
                archive.unlink()
            except FileNotFoundError:
                pass
            if tree.exists():
                remove_tree(tree)


# The fetch sources, like the sandbox backends: a name -> how to get a checkout.
SOURCES: dict[str, Callable[[RepoRequest, Path, Mapping[str, str]], RepoCheckout]] = {
    "github": _from_github,
    "local": _from_local,
}
