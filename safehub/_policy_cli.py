"""``safehub policy show|check`` and ``safehub lock`` (docs/policy.md, docs/lockfile.md).

``policy check`` answers without the network and without running anything: the
repo rules, the sandbox this machine would use, the default limits against the
maxima, and the lockfiles. What only a load can know (the resolved packages, the
weight URLs) is checked by the load itself.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._errors import PolicyError, SafehubError

if TYPE_CHECKING:
    from ._lockfile import LockEntry

__all__ = ["add_policy_commands", "create_lock"]

logger = logging.getLogger("safehub")


def add_policy_commands(sub: Any, repo_args: Any) -> None:
    p = sub.add_parser("policy", help="show the organisation policy, or check a repo against it")
    psub = p.add_subparsers(dest="policy_command", required=True)
    show = psub.add_parser("show", help="the merged policy and where each value came from")
    show.add_argument("--policy", help="a user policy file (default: $SAFEHUB_POLICY or the user config dir)")
    show.add_argument("--json", action="store_true", help="machine-readable output")
    show.set_defaults(func=_cmd_show)
    check = psub.add_parser("check", help="would a load of REPO be allowed, and why")
    check.add_argument("repo", help="owner/name[:ref] or a local folder")
    check.add_argument("--revision", help="a full 40-hex commit SHA")
    check.add_argument("--source", type=str.lower, choices=["github", "local"], help="default: local for folders")
    check.add_argument("--sandbox", help="the sandbox the load would ask for (default: $SAFEHUB_SANDBOX or auto)")
    check.add_argument("--policy", help="a user policy file")
    check.add_argument("--lock", help="a lockfile the load would use (default: $SAFEHUB_LOCK)")
    check.add_argument("--json", action="store_true", help="machine-readable output")
    check.set_defaults(func=_cmd_check)

    lock = sub.add_parser("lock", help="load entrypoints and record what they used in a lockfile")
    repo_args(lock, entry=False)
    lock.add_argument("entrypoints", nargs="+", metavar="ENTRYPOINT")
    lock.add_argument("-o", "--output", default="safehub.lock", help="the lockfile to write (default: safehub.lock)")
    lock.add_argument("--runs", type=int, default=2,
                      help="loads per entrypoint; the weights hash is recorded when all agree (default 2)")
    lock.add_argument("--policy", help="a user policy file")
    lock.set_defaults(func=_cmd_lock)


def _cmd_show(args: argparse.Namespace) -> int:
    from ._policy import SCHEMA, load_policy, policy_sources

    policy = load_policy(args.policy)
    payload = policy.as_dict()
    payload["searched"] = [str(p) for p, _system in policy_sources(args.policy)]
    if args.json:
        print(json.dumps(payload, indent=2))
        return 0
    if not policy.files:
        print("no policy applies (none at /etc/safehub/policy.toml, $SAFEHUB_SYSTEM_POLICY, $SAFEHUB_POLICY "
              "or the user config dir): every load is allowed by policy")
        return 0
    lines = ["policy files, widest first: " + ", ".join(policy.files)]
    for section, keys in SCHEMA.items():
        rules = [(k, payload["rules"][f"{section}.{k}"]) for k in keys if f"{section}.{k}" in payload["rules"]]
        if rules:
            lines.append(f"[{section}]")
            for key, rule in rules:
                lines.append(f"  {key} = {json.dumps(rule['value'])}    # from {', narrowed by '.join(rule['from'])}")
    print("\n".join(lines))
    return 0


def _checks(args: argparse.Namespace) -> list[dict[str, Any]]:
    """One row per step a load would pass, each {step, ok, why}."""
    from pathlib import Path

    from ._fetch import RepoRequest
    from ._guard import LoadGuard

    rows: list[dict[str, Any]] = []

    def step(name: str, fn: Any) -> Any:
        try:
            out = fn()
        except PolicyError as exc:
            rows.append({"step": name, "ok": False, "why": exc.message, "hint": exc.hint})
            return None
        rows.append({"step": name, "ok": True, "why": out or "allowed"})
        return out

    guard = step("policy", lambda: LoadGuard.for_call(policy=args.policy, lock=args.lock))
    if guard is None:  # e.g. [lock] require without a lock: nothing else can be judged
        return rows
    rows[-1]["why"] = "from " + (", narrowed by ".join(guard.policy.files) or "no policy file")
    source = args.source or ("local" if Path(args.repo).expanduser().is_dir() else "github")
    request = RepoRequest(repo_or_dir=args.repo, source=source, revision=args.revision)
    step("repo", lambda: (guard.check_request(request), _repo_why(guard, source))[1])
    step("sandbox", lambda: _sandbox_why(guard, args.sandbox))
    step("limits", lambda: _limits_why(guard))
    if guard.repo_entries:
        rows.append({"step": "lock", "ok": True, "why": "; ".join(
            f"{path}: {entries[0].repo}@{entries[0].sha[:12]} ({', '.join(e.entrypoint for e in entries)}); "
            "the load must match its archive, packages, weights and hashes" for path, entries in guard.repo_entries)})
    return rows


def _repo_why(guard: Any, source: str) -> str:
    if source == "local":
        return "a local folder; [repos] allow_local does not forbid it"
    allow = guard.policy.get("repos", "allow")
    parts = ["on the allowed list" if allow is not None else "no [repos] allow list"]
    if guard.policy.get("repos", "require_pin"):
        parts.append("pinned to a full commit SHA")
    return ", ".join(parts)


def _sandbox_why(guard: Any, sandbox: str | None) -> str:
    from ._errors import SandboxUnavailableError
    from ._sandbox import get_backend

    guard.check_sandbox(sandbox)
    try:
        backend = get_backend(sandbox)
    except SandboxUnavailableError as exc:
        if guard.policy.get("sandbox", "minimum") is None:
            return f"no minimum; but no sandbox works here: {exc.message}"
        raise PolicyError(f"no sandbox works on this machine, and the policy requires at least "
                          f"{guard.policy.get('sandbox', 'minimum')!r}: {exc.message}", hint=exc.hint) from None
    guard.check_backend(backend, None)
    return f"this machine would use {backend.name!r}"


def _limits_why(guard: Any) -> str:
    from ._sandbox import Limits

    lowered = guard.limits(None, explicit=False)
    changed = {k: v for k, v in lowered.as_dict().items() if v != Limits().as_dict()[k]}
    return "default limits lowered to the policy's maxima: " + json.dumps(changed) if changed else "within the maxima"


def _cmd_check(args: argparse.Namespace) -> int:
    rows = _checks(args)
    allowed = all(r["ok"] for r in rows)
    if args.json:
        print(json.dumps({"repo": args.repo, "allowed": allowed, "checks": rows}, indent=2))
    else:
        print(f"{args.repo}: {'allowed' if allowed else 'REFUSED'} by policy")
        for r in rows:
            print(f"  {'ok ' if r['ok'] else 'NO '} {r['step']:<8} {r['why']}")
            if not r["ok"] and r.get("hint"):
                print(f"               hint: {r['hint']}")
    return 0 if allowed else PolicyError.exit_code


def _cmd_lock(args: argparse.Namespace) -> int:
    if args.repo is None:
        raise SafehubError("no repo given", hint="usage: safehub lock owner/name[:ref] ENTRYPOINT... -o safehub.lock")
    if args.source == "local":
        raise PolicyError("only GitHub repos can be locked", hint="lock owner/name:ref")
    trust = {"true": True, "false": False, "check": "check", None: "check"}[args.trust_repo]
    entries = create_lock(args.repo, args.entrypoints, output=args.output, runs=args.runs, load_kwargs=dict(
        trust_repo=trust, force_reload=args.force_reload, skip_validation=args.skip_validation,
        verbose=not args.json, revision=args.revision, sandbox=args.sandbox, policy=args.policy,
        dependencies_mode=args.dependencies_mode, extra_dependencies=args.extra_dependencies))
    if args.json:
        print(json.dumps({"output": args.output, "entries": [e.as_dict() for e in entries]}, indent=2))
    else:
        for e in entries:
            print(f"locked {e.repo}@{e.sha[:12]} {e.entrypoint}: {len(e.distributions)} package(s), "
                  f"{len(e.downloads)} download(s), weights {'sha256 ' + e.weights_sha256[:12] if e.weights_sha256 else 'not deterministic'}")
        print(f"wrote {args.output}")
    return 0


def entry_from_load(obj: Any, info: Any, *, hub_dir: Path, weights: str | None) -> LockEntry:
    """A lock entry from a finished load's ``safehub_info`` and the repo cache's record."""
    from ._fetch._cache import RepoCache
    from ._fetch._github import github_host
    from ._lockfile import _HEX64, LockEntry, runner_identity, safehub_version

    if info.source != "github" or not info.sha:
        raise PolicyError(f"only GitHub repos can be locked ({info.repo} is a local folder)",
                          hint="push the repo and lock owner/name:ref")
    host = github_host(os.environ)
    owner, name = info.repo.split("/")
    meta = RepoCache(hub_dir).entry(host.key, owner, name, info.sha).meta()
    if not all(_HEX64.match(str(meta.get(k, ""))) for k in ("archive_sha256", "tree_hash")):
        raise PolicyError(f"the cache has no archive and tree hash for {info.repo}@{info.sha}",
                          hint="lock again with --force-reload so the archive is downloaded and hashed")
    records = dict(info.dependencies.get("records") or {})
    dists = {d: records.get(d, "") for d in info.dependencies.get("distributions") or ()}
    return LockEntry(
        repo=info.repo.lower(), host=host.key, ref=None, sha=info.sha,
        archive_sha256=str(meta.get("archive_sha256", "")), tree_hash=str(meta.get("tree_hash", "")),
        entrypoint=info.entrypoint, mode=str(info.dependencies.get("mode", "")), distributions=dists,
        downloads={d["url"]: d["sha256"] for d in info.downloads if d.get("sha256")},
        runner=runner_identity(), safehub=safehub_version(), weights_sha256=weights,
    )


def create_lock(repo: str, entrypoints: Sequence[str], *, output: str | os.PathLike[str], runs: int = 2,
                load_kwargs: Mapping[str, Any] | None = None) -> list[LockEntry]:
    """Load each entrypoint ``runs`` times and write the lock to ``output``. The weights hash is
    recorded only when every run returned the same weights. Every policy rule applies to
    these loads except the lockfile ones (a new lock is being made)."""
    from ._fetch import parse_repo
    from ._guard import LOCKING
    from ._lockfile import write_lock

    spec = parse_repo(repo)
    kwargs = dict(load_kwargs or {})
    token = LOCKING.set(True)  # an older lock (SAFEHUB_LOCK, [lock] file/require) must not block re-locking
    try:
        entries = _lock_entries(spec, entrypoints, repo, runs, kwargs)
    finally:
        LOCKING.reset(token)
    write_lock(output, entries)
    return entries


def _lock_entries(spec: Any, entrypoints: Sequence[str], repo: str, runs: int, kwargs: dict[str, Any]) -> list[LockEntry]:
    import dataclasses

    from ._api import load
    from ._config import hub_path
    from ._lockfile import weights_sha256

    entries = []
    for entrypoint in entrypoints:
        hashes = []
        obj = info = None
        for _ in range(max(1, runs)):
            obj = load(repo, entrypoint, **kwargs)
            info = _info_of(obj)
            hashes.append(weights_sha256(obj))
        assert info is not None
        same = len(set(hashes)) == 1
        if not same:
            logger.warning("%s returned different weights on each load: the lock records no weights hash", entrypoint)
        entry = entry_from_load(obj, info, hub_dir=hub_path(), weights=hashes[0] if same and runs > 1 else None)
        entries.append(dataclasses.replace(entry, ref=spec.ref))
    return entries


def _info_of(obj: Any) -> Any:
    """The ``safehub_info`` of the first module in what a load returned."""
    from ._namespace import SafehubNamespace

    if isinstance(obj, SafehubNamespace):
        obj = dict(obj.safehub_attrs())
    items = list(obj.values()) if isinstance(obj, dict) else list(obj) if isinstance(obj, (tuple, list)) else [obj]
    info = next((i.safehub_info for i in items if hasattr(i, "safehub_info")), None)
    if info is None:
        raise PolicyError("the load returned no module with safehub_info; nothing to lock",
                          hint="lock an entrypoint that returns a model")
    return info
