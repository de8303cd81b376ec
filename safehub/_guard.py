"""Enforcing the policy and the lockfiles along one load: the load path calls one hook
per step, each before the step acts (the repo and ref before any download, packages
before the install, each weight URL before it is fetched and on every redirect, the
sandbox and limits before anything is spawned). Every refusal is a PolicyError that
names the rule and the file it came from.

Where each check sits (safehub/_api.py, safehub/_fetch/_repo.py):

    check_request      repo name, pin, local folder, prompts; lock: repo listed, revision
    before_fetch       the SHA a ref resolved to (lock: a moved ref), before the cache or a download
    check_checkout     lock: archive and tree hash of what was fetched (or found in the cache)
    check_entrypoint   lock: the entrypoint is listed
    limits             [limits] maxima (defaults are lowered to them; explicit limits above refused)
    check_sandbox / check_backend   [sandbox] minimum and allow_gpu, before get_backend / the env build
    dependencies_mode / check_plan  [packages] modes and allow, before the install
    check_env          [packages] allow/require_hashes and the lock on what the env holds, before it runs
    check_url          [downloads] allow_hosts and the lock's URLs, per URL and redirect
    check_downloads    lock: sha256 of each fetched (or cached) file
    check_result       lock: sha256 of the returned weights
"""

from __future__ import annotations

import dataclasses
import hashlib
import os
from contextvars import ContextVar
from collections.abc import Mapping
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

from ._errors import PolicyError, escape_untrusted
from ._lockfile import Lock, LockEntry, read_lock, runner_identity, safehub_version, weights_sha256
from ._policy import SANDBOX_RANK, Policy, load_policy
from ._policy_match import canonical_name, url_origin

__all__ = ["LoadGuard", "confine_job", "LOCKING"]

# Set while `safehub lock` (create_lock) loads the entrypoints it records.
LOCKING: ContextVar[bool] = ContextVar("safehub_locking", default=False)


def _refuse(rule: str, source: str, what: str, hint: str) -> PolicyError:
    section, key = rule.split(".")
    return PolicyError(f"refused by the policy rule [{section}] {key} ({source}): {what}", hint=hint)


def _lock_refusal(lock: str, what: str, hint: str = "") -> PolicyError:
    return PolicyError(f"refused by the lockfile {lock}: {what}",
                       hint=hint or "if the change is meant, re-create the lock with `safehub lock` and review the diff")


def _sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


class LoadGuard:
    """The merged policy and the lockfiles that apply to one call."""

    def __init__(self, policy: Policy, locks: list[Lock]) -> None:
        self.policy = policy
        self.locks = locks
        self.entries: list[tuple[str, LockEntry]] = []  # (lock path, entry) for this repo and entrypoint
        self.repo_entries: list[tuple[str, list[LockEntry]]] = []

    @classmethod
    def for_call(cls, *, policy: Any = None, lock: Any = None, env: Mapping[str, str] | None = None) -> "LoadGuard":
        env = os.environ if env is None else env
        merged = load_policy(policy, env)
        if LOCKING.get():  # `safehub lock` records a new lock: no old one applies, every other rule does
            return cls(merged, [])
        paths = [p for p in (lock, env.get("SAFEHUB_LOCK") if lock is None else None) if p]
        files = merged.get("lock", "file")
        paths += list(files if isinstance(files, tuple) else (files,) if files else ())
        locks = [read_lock(p) for p in dict.fromkeys(str(p) for p in paths)]
        if merged.get("lock", "require") and not locks:
            raise _refuse("lock.require", merged.source("lock", "require"), "no lockfile was given",
                          "pass lock='safehub.lock' (or set SAFEHUB_LOCK); create one with `safehub lock`")
        return cls(merged, locks)

    def describe(self) -> dict[str, Any]:
        """For ``safehub_info.policy``: which policy files and lockfiles this load was held to."""
        return {"files": list(self.policy.files), "locks": [lock.path for lock in self.locks]}

    @property
    def active(self) -> bool:
        return bool(self.locks) or not self.policy.empty

    def _rule(self, section: str, key: str) -> Any:
        return self.policy.get(section, key)

    def _src(self, section: str, key: str) -> str:
        return self.policy.source(section, key)

    # --- artifacts -------------------------------------------------------------

    def check_artifact(self, path: str) -> None:
        """Before ``load_artifact`` reads anything: an artifact's provenance (repo, commit)
        is self-declared and unsigned, so rules about which repos and commits may load
        cannot be checked against it. Under such a rule or a lock it is refused (red team
        round 3: it loaded whatever [repos] said)."""
        shown = escape_untrusted(path, limit=200)
        hint = ("load the model with safehub.load under this policy (the sandbox checks the repo and "
                "commit), or load the artifact where this rule does not apply")
        if self.locks:
            raise _lock_refusal(self.locks[0].path, f"the artifact {shown} cannot be checked against a lock "
                                "(its provenance is self-declared)", hint)
        for key, strict in (("allow", lambda v: v is not None), ("require_pin", bool),
                            ("allow_local", lambda v: v is False)):
            if strict(self._rule("repos", key)):
                raise _refuse(f"repos.{key}", self._src("repos", key),
                              f"the artifact {shown}: its provenance (repo, commit) is self-declared, "
                              "so this rule cannot be checked against it", hint)

    # --- the repo --------------------------------------------------------------

    def check_request(self, request: Any) -> Any:
        """Before any network: the repo and ref against [repos] and [trust], and the locks.
        Returns the request to fetch with (prompts off, the before_fetch hook set)."""
        from ._fetch import parse_repo
        from ._fetch._names import SHA_RE

        source = str(request.source).lower()
        if source == "local":
            if self._rule("repos", "allow_local") is False:
                raise _refuse("repos.allow_local", self._src("repos", "allow_local"),
                              f"loading the local folder {escape_untrusted(request.repo_or_dir, limit=200)}",
                              "load a GitHub repo the policy allows, pinned to a commit")
            if self.locks:
                raise _lock_refusal(self.locks[0].path, "a local folder cannot be checked against a lock "
                                    f"({escape_untrusted(request.repo_or_dir, limit=200)})",
                                    "load the locked GitHub repo, or drop lock= / SAFEHUB_LOCK for local work")
            return request
        if source != "github":
            if self.active:  # a fetch source added later must not slip past rules written for GitHub
                raise PolicyError(f"source={escape_untrusted(source, limit=40)!r}: the policy and lockfiles know "
                                  "only 'github' and 'local' repos", hint="load from GitHub or a local folder")
            return request  # fetch_repo names the unknown source
        spec = parse_repo(request.repo_or_dir)  # ASCII, owner/name grammar: no '..', no third part
        allow = self._rule("repos", "allow")
        if allow is not None and not any(p.matches(spec.owner, spec.name) for p in allow):
            raise _refuse("repos.allow", self._src("repos", "allow"), f"{spec.slug} is not on the list "
                          f"({', '.join(str(p) for p in allow) or 'nothing'})",
                          "load one of the allowed repos, or ask your administrator to add it")
        if getattr(request, "skip_validation", False) and (allow is not None or self._rule("repos", "require_pin")):
            # GitHub serves every commit of a fork network through the parent's URLs;
            # only the reachability check skip_validation turns off ties a commit to
            # the named repo (red team round 3).
            rule = "repos.allow" if allow is not None else "repos.require_pin"
            section, key = rule.split(".")
            raise _refuse(rule, self._src(section, key),
                          f"skip_validation=True with {spec.slug}: any fork's commit would load under its name "
                          "(GitHub serves a fork network's commits through the parent's URLs)",
                          "drop skip_validation=True; safehub then checks the commit is on a branch or tag of "
                          f"{spec.slug} itself")
        pinned = request.revision is not None or (spec.ref is not None and bool(SHA_RE.match(spec.ref.lower())))
        if self._rule("repos", "require_pin") and not pinned:
            raise _refuse("repos.require_pin", self._src("repos", "require_pin"),
                          f"{escape_untrusted(request.repo_or_dir, limit=200)} names "
                          f"{'no ref' if spec.ref is None else 'the ref ' + repr(spec.ref)}, not a full commit SHA",
                          "pin it: owner/name:<40-hex sha> or revision='<sha>' (safehub cache ls shows the SHAs)")
        changes: dict[str, Any] = {}
        if self._rule("trust", "prompts") is False:
            changes["allow_prompt"] = False
        if self.locks:
            self._select_repo(spec, request)
            changes["before_fetch"] = self.before_fetch
        return dataclasses.replace(request, **changes) if changes else request

    def _select_repo(self, spec: Any, request: Any) -> None:
        from ._fetch._github import github_host

        host = github_host(os.environ).key
        for lock in self.locks:
            entries = lock.for_repo(host, spec.slug)
            if not entries:
                raise _lock_refusal(lock.path, f"{spec.slug} on {host} is not in it",
                                    "load a locked repo, or lock this one with `safehub lock`")
            self.repo_entries.append((lock.path, entries))
            if request.revision is not None and any(e.sha != str(request.revision).lower() for e in entries):
                raise _lock_refusal(lock.path, f"revision={escape_untrusted(str(request.revision), limit=60)} "
                                    f"is not the locked commit {entries[0].sha}")

    def before_fetch(self, sha: str) -> None:
        """The commit the ref resolved to, before the cache is read or anything downloaded."""
        for path, entries in self.repo_entries:
            for entry in entries:
                if entry.sha != sha:
                    raise _lock_refusal(path, f"{entry.repo} now resolves to {sha}, not the locked commit "
                                        f"{entry.sha} (the ref moved)",
                                        "load the locked commit (revision=), or re-lock if the new commit is reviewed")

    def check_checkout(self, repo: Any, hub_dir: Path) -> None:
        if not self.repo_entries or repo.sha is None:
            return
        from ._fetch._cache import RepoCache

        meta = RepoCache(hub_dir).entry(repo.host, repo.owner, repo.name, repo.sha).meta()
        for path, entries in self.repo_entries:
            for entry in entries:
                for key in ("archive_sha256", "tree_hash"):
                    if meta.get(key) != getattr(entry, key):
                        raise _lock_refusal(path, f"the {key} of {entry.repo}@{entry.sha} is "
                                            f"{escape_untrusted(str(meta.get(key)), limit=80)}, not the locked "
                                            f"{getattr(entry, key)} (a different archive)",
                                            "refetch with force_reload=True; if it still differs, the server "
                                            "served other content for the same commit: do not trust it")

    def check_entrypoint(self, entrypoint: str) -> None:
        for path, entries in self.repo_entries:
            hits = [e for e in entries if e.entrypoint == entrypoint]
            if not hits:
                raise _lock_refusal(path, f"the entrypoint {entrypoint!r} of {entries[0].repo} is not in it "
                                    f"(locked: {', '.join(sorted({e.entrypoint for e in entries}))})")
            self.entries.append((path, hits[0]))
        for path, entry in self.entries:
            if entry.safehub != safehub_version():
                raise _lock_refusal(path, f"it was made with safehub {entry.safehub}, this is {safehub_version()}",
                                    "re-create the lock with this safehub (`safehub lock`) and review the diff")
            if entry.runner != runner_identity():
                raise _lock_refusal(path, f"it was made with another runner ({entry.runner}), this one is "
                                    f"{runner_identity()}", "re-create the lock with this safehub")

    # --- limits and the sandbox -------------------------------------------------

    def limits(self, limits: Any, *, explicit: bool) -> Any:
        """[limits] are maxima: an explicit Limits above one is refused; the defaults are lowered."""
        from ._sandbox import Limits

        limits = limits if limits is not None else Limits()
        changes = {}
        for key, maximum in (self.policy.values.get("limits") or {}).items():
            value = getattr(limits, key)
            if value is not None and value <= maximum:
                continue
            if explicit:
                shown = "no limit" if value is None else value
                raise _refuse(f"limits.{key}", self._src("limits", key), f"Limits.{key}={shown} is above the "
                              f"maximum {maximum}", f"pass Limits({key}={maximum}) or less")
            changes[key] = type(getattr(Limits(), key) or maximum)(maximum)
        return dataclasses.replace(limits, **changes) if changes else limits

    def check_sandbox(self, sandbox: Any) -> None:
        """A named backend, before it is probed."""
        minimum = self._rule("sandbox", "minimum")
        name = sandbox if isinstance(sandbox, str) else os.environ.get("SAFEHUB_SANDBOX") if sandbox is None else None
        if minimum is not None and name and name.strip().lower() in SANDBOX_RANK:
            self._check_rank(name.strip().lower(), minimum)

    def _check_rank(self, name: str, minimum: str) -> None:
        if SANDBOX_RANK.get(name, -1) < SANDBOX_RANK[minimum]:
            raise _refuse("sandbox.minimum", self._src("sandbox", "minimum"),
                          f"the {name!r} sandbox is weaker than the minimum {minimum!r}",
                          f"use sandbox={minimum!r} or 'auto' on a machine where it works (`safehub doctor`)")

    def check_backend(self, backend: Any, job: Any) -> None:
        """The backend chosen (auto may pick landlock) and the job's GPU access, before any spawn."""
        minimum = self._rule("sandbox", "minimum")
        if minimum is not None:
            self._check_rank(str(backend.name), minimum)
        if getattr(job, "allow_gpu", False) and self._rule("sandbox", "allow_gpu") is False:
            raise _refuse("sandbox.allow_gpu", self._src("sandbox", "allow_gpu"),
                          "the job asks for GPU device access in the sandbox", "run it on the CPU")

    # --- packages -----------------------------------------------------------------

    def dependencies_mode(self, mode: str | None) -> str | None:
        from ._env._plan import choose_mode

        locked = {e.mode for _p, e in self.entries}
        if mode is None and len(locked) == 1:
            mode = next(iter(locked))
        allowed = self._rule("packages", "modes")
        chosen = choose_mode(mode, os.environ)
        if allowed is not None and chosen not in allowed:
            if mode is None and not os.environ.get("SAFEHUB_DEPENDENCIES"):
                return str(allowed[0])  # the default is not a choice: the policy's first mode is
            raise _refuse("packages.modes", self._src("packages", "modes"),
                          f"the dependency mode {chosen!r} is not allowed ({', '.join(allowed)})",
                          f"pass dependencies_mode={allowed[0]!r}")
        for path, entry in self.entries:
            if entry.mode != chosen:
                raise _lock_refusal(path, f"the dependency mode is {chosen!r}, the lock's is {entry.mode!r}")
        return chosen

    def _package_ok(self, name: str, version: str | None) -> bool:
        from packaging.specifiers import SpecifierSet
        from packaging.version import InvalidVersion, Version

        allow = self._rule("packages", "allow")
        if allow is None:
            return True
        specs = [spec for n, spec in allow if n == canonical_name(name)]
        if not specs:
            return False
        if version is None:
            return True
        try:
            parsed = Version(version)
        except InvalidVersion:
            return False
        return all(parsed in SpecifierSet(spec) for spec in specs if spec)

    def check_plan(self, plan: Any) -> None:
        """Before the install: every distribution the plan names must be allowed and locked."""
        from ._env._resolve import resolve_dependencies

        if not self.active:
            return
        wanted = [r.distribution for r in resolve_dependencies(plan.entries).install]
        refused = [d for d in wanted if not self._package_ok(d, None)]
        if refused:
            raise _refuse("packages.allow", self._src("packages", "allow"),
                          f"the repo's environment would install {', '.join(refused)}, not on the list",
                          "ask your administrator to allow the package, or load a repo that does not need it")
        if self._rule("packages", "require_hashes") and not self.entries and not LOCKING.get():
            raise _refuse("packages.require_hashes", self._src("packages", "require_hashes"),
                          "packages may only be installed with hashes from a lockfile, and no lock covers this load",
                          "pass lock='safehub.lock' (create it with `safehub lock`)")
        for path, entry in self.entries:
            locked = {canonical_name(d.partition("==")[0]) for d in entry.distributions}
            extra = [d for d in wanted if canonical_name(d) not in locked]
            if extra:
                raise _lock_refusal(path, f"the environment would install {', '.join(extra)}, which the lock "
                                    "does not list (unlisted package)")

    def env_options(self) -> dict[str, Any]:
        """Extra ensure_env arguments: under a lock, its versions pin the resolution (so a fresh
        machine installs what was locked, not the newest release). None without a lock, so
        every other env keeps its key."""
        pins = sorted({d for _p, e in self.entries for d in e.distributions})
        return {"pins": pins} if pins else {}

    def check_env(self, python_env: Any) -> None:
        """What the env holds (transitive dependencies too), before anything runs with it."""
        if not self.active:
            return
        installed = {d: python_env.records.get(d, "") for d in python_env.distributions}
        refused = [d for d in installed if not self._package_ok(d.partition("==")[0], d.partition("==")[2] or None)]
        if refused:
            raise _refuse("packages.allow", self._src("packages", "allow"),
                          f"the repo's environment holds {', '.join(refused)} (resolved), not allowed",
                          "allow the package and version, or pin an allowed version with extra_dependencies=")
        for path, entry in self.entries:
            for dist, digest in installed.items():
                if dist not in entry.distributions:
                    raise _lock_refusal(path, f"the environment holds {dist}, which the lock does not list")
                if entry.distributions[dist] != digest:
                    raise _lock_refusal(path, f"{dist} has RECORD hash {digest or '(none)'}, the lock says "
                                        f"{entry.distributions[dist]} (a changed hash)")
            missing = sorted(set(entry.distributions) - set(installed))
            if missing:
                raise _lock_refusal(path, f"the environment lacks the locked {', '.join(missing)}")

    # --- downloads --------------------------------------------------------------------

    def check_host(self, url: str) -> None:
        """[downloads] allow_hosts, for every URL the broker visits (redirects included)."""
        allow = self._rule("downloads", "allow_hosts")
        if allow is None:
            return
        scheme, host, port = url_origin(url)
        # Parsers disagree on userinfo and backslashes (WHATWG reads '\\' as '/'): such a URL
        # never matches, whatever host one parser sees in it.
        try:
            netloc = urlsplit(url).netloc
        except ValueError:  # unreadable (a bracketed host that is no address): never matches
            netloc = "@"
        tricky = "@" in netloc or "\\" in url
        if tricky or not any(p.matches(scheme, host, port) for p in allow):
            shown = url.split("?", 1)[0][:300]
            raise _refuse("downloads.allow_hosts", self._src("downloads", "allow_hosts"),
                          f"{escape_untrusted(shown, limit=300)} is on {scheme}://{host}:{port}, not an allowed "
                          f"host ({', '.join(str(p) for p in allow) or 'none'})",
                          "ship the weights from an allowed host, or ask your administrator to allow this one")

    def check_url(self, url: str) -> None:
        """A URL the entrypoint asked for: its host, and (under a lock) that it is listed.
        Redirect targets (a CDN's signed URL) are judged by check_host alone; the file's
        hash is checked against the lock either way."""
        self.check_host(url)
        for path, entry in self.entries:
            if url not in entry.downloads:
                raise _lock_refusal(path, f"the entrypoint asked for {escape_untrusted(url[:300], limit=300)}, "
                                    "which the lock does not list (unlisted weight)")

    def check_downloads(self, files: Mapping[str, Path]) -> None:
        for path, entry in self.entries:
            for url, file in files.items():
                digest = _sha256_file(Path(file))
                if entry.downloads.get(url) != digest:
                    raise _lock_refusal(path, f"{escape_untrusted(url[:300], limit=300)} has sha256 {digest}, "
                                        f"the lock says {entry.downloads.get(url)} (a changed hash)",
                                        "remove the cached file (safehub cache) and retry; if it still differs, "
                                        "the server changed the weights")

    def check_result(self, obj: Any) -> None:
        wanted = [(p, e) for p, e in self.entries if e.weights_sha256]
        if not wanted:
            return
        got = weights_sha256(obj)
        for path, entry in wanted:
            if got != entry.weights_sha256:
                raise _lock_refusal(path, f"{entry.entrypoint} returned weights with sha256 {got}, the lock says "
                                    f"{entry.weights_sha256} (a changed hash)")


def confine_job(job: Any, backend: Any) -> Any:
    """The backstop in run_job, for every sandboxed job (loads, deferred exports, the
    convert jobs of load_state_dict_from_url): the policy from the system and the
    environment on the backend and GPU access, and the job's limits lowered to the
    maxima. Returns the job to run."""
    guard = LoadGuard(load_policy(), [])
    if guard.policy.empty:
        return job
    guard.check_backend(backend, job)
    limits = guard.limits(job.limits, explicit=False)
    return job if limits == job.limits else dataclasses.replace(job, limits=limits)
