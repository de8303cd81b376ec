"""``safehub cache ls|rm|verify`` (each with --json). ``ls`` also counts the repo envs
(listed by ``safehub cache envs``)."""

from __future__ import annotations

import argparse
import json
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from .._config import get_dir
from .._records import record
from ._cache import CacheEntry, RepoCache
from .._errors import CacheCorruptedError
from .._fsutil import human_size as _human
from .._fsutil import tree_size

__all__ = ["add_cache_commands"]


def _hub(args: argparse.Namespace) -> Path:
    return Path(getattr(args, "hub_dir", None) or get_dir())


def _describe(cache: RepoCache, e: CacheEntry) -> dict[str, Any]:
    meta = e.meta()
    size = meta.get("size_bytes")
    if not isinstance(size, int):
        size = tree_size(e.path) if e.path.is_dir() else 0
    refs = [r for r, s in cache.cached_refs(e.host, e.owner, e.name).items() if s == e.sha]
    return {
        "host": e.host, "owner": e.owner, "name": e.name, "sha": e.sha, "path": str(e.path),
        "size_bytes": size, "fetched_at": meta.get("fetched_at"), "refs": sorted(refs),
        "present": e.path.is_dir(),
    }


def _matches(e: CacheEntry, pattern: str | None) -> bool:
    """``owner/name``, ``owner/name@sha-prefix``, ``host/owner/name[@sha]`` or ``owner``."""
    if not pattern:
        return True
    slug, _, sha = pattern.lower().partition("@")
    parts = slug.split("/")
    if len(parts) == 3:
        ok = [e.host, e.owner, e.name] == parts
    elif len(parts) == 2:
        ok = [e.owner, e.name] == parts
    else:
        ok = e.owner == parts[0]
    return ok and e.sha.startswith(sha)


def _env_summary(hub: Path) -> dict[str, Any]:
    """The built repo envs, counted, so ``cache ls`` shows everything the cache holds."""
    from .._env._manage import env_size, list_envs

    envs = list_envs(hub)
    return {"count": len(envs), "total_bytes": sum(env_size(r.root) for r in envs), "details": "safehub cache envs"}


def _cmd_ls(args: argparse.Namespace) -> int:
    cache = RepoCache(_hub(args))
    rows = [_describe(cache, e) for e in cache.entries() if _matches(e, args.repo)]
    envs = _env_summary(_hub(args))
    section = _artifacts(args)
    artifacts = section.summary(_hub(args)) if section else {"count": 0, "total_bytes": 0}
    if args.json:
        json.dump({"entries": rows, "total_bytes": sum(r["size_bytes"] for r in rows), "envs": envs,
                   "artifacts": artifacts}, sys.stdout, indent=1)
        print()
        return 0
    if not rows:
        print(f"no cached repos in {cache.repos}")
    for r in rows:
        refs = f" ({', '.join(r['refs'])})" if r["refs"] else ""
        print(f"{r['host']}/{r['owner']}/{r['name']}@{r['sha'][:12]}{refs}  {_human(r['size_bytes'])}  {r['path']}")
    if rows:
        print(f"{len(rows)} entries, {_human(sum(r['size_bytes'] for r in rows))}")
    print(f"{envs['count']} environments, {_human(envs['total_bytes'])}: list them with `safehub cache envs`")
    if section:
        print(f"{artifacts['count']} artifact-cache entries, {_human(artifacts['total_bytes'])}: "
              "list them with `safehub cache artifacts`")
    return 0


def _cmd_rm(args: argparse.Namespace) -> int:
    section = _artifacts(args)
    if args.artifacts and section:  # REPO is then a key prefix (as `cache artifacts` and errors show it)
        return section.remove(_hub(args), args.repo, args.all, args.dry_run, args.json)
    if not args.repo and not args.all:
        print("safehub cache rm: name a repo (owner/name[@sha]) or pass --all", file=sys.stderr)
        return 2
    cache = RepoCache(_hub(args))
    chosen = [e for e in cache.entries() if args.all or _matches(e, args.repo)]
    rows = [_describe(cache, e) for e in chosen]
    total = sum(r["size_bytes"] for r in rows)
    if not args.json:
        for r in rows:
            print(f"will remove {r['host']}/{r['owner']}/{r['name']}@{r['sha'][:12]}  {_human(r['size_bytes'])}")
        print(f"this frees {_human(total)} ({len(rows)} entries)")
    proceed = bool(rows) and not args.dry_run
    if proceed and not args.yes:
        if args.json or not sys.stdin.isatty():
            print("safehub cache rm: pass --yes to delete without a prompt", file=sys.stderr)
            proceed = False
            if args.json:
                json.dump({"removed": [], "would_remove": rows, "freed_bytes": 0}, sys.stdout, indent=1)
                print()
            return 1
        proceed = input("delete these? [y/N] ").strip().lower() in ("y", "yes")
    removed = []
    if proceed:
        for e, r in zip(chosen, rows):
            with cache.lock(e):
                cache.remove(e)
            removed.append(r)
    if args.json:
        json.dump({"removed": removed, "would_remove": [] if proceed else rows,
                   "freed_bytes": sum(r["size_bytes"] for r in removed)}, sys.stdout, indent=1)
        print()
    elif proceed:
        print(f"removed {len(removed)} entries, freed {_human(total)}")
    return 0


def _cmd_verify(args: argparse.Namespace) -> int:
    cache = RepoCache(_hub(args))
    results: list[dict[str, Any]] = []
    for e in cache.entries():
        if not _matches(e, args.repo):
            continue
        try:
            cache.verify(e)
            results.append({"entry": e.slug, "path": str(e.path), "ok": True})
        except (CacheCorruptedError, OSError) as exc:
            results.append({"entry": e.slug, "path": str(e.path), "ok": False, "error": str(exc)})
    section = _artifacts(args)
    if not args.repo and section:  # the artifact cache too: every check a hit gets
        results += section.verify(_hub(args))
    bad = [r for r in results if not r["ok"]]
    if args.json:
        json.dump({"entries": results, "corrupted": len(bad)}, sys.stdout, indent=1)
        print()
    else:
        for r in results:
            print(("ok       " if r["ok"] else "CORRUPT  ") + r["entry"] + (f"  (fix: {r['fix']})" if "fix" in r else ""))
        print(f"{len(results)} checked, {len(bad)} corrupted"
              + ("; fix with `safehub cache rm <repo>@<sha>` (artifacts: `safehub cache rm --artifacts KEY`)" if bad else ""))
    return 1 if bad else 0


@record(frozen=True)
class CacheSection:
    """The artifact cache's part of ``ls``/``rm``/``verify``, handed in by the command
    line (it lives in a layer above this package)."""

    summary: Callable[[Path], dict[str, Any]]
    remove: Callable[[Path, "str | None", bool, bool, bool], int]  # hub, key prefix, all, dry run, json
    verify: Callable[[Path], list[dict[str, Any]]]


def _artifacts(args: argparse.Namespace) -> CacheSection | None:
    return getattr(args, "artifact_section", None)


def add_cache_commands(subparsers: Any, artifacts: CacheSection | None = None) -> Any:
    """Register ``cache ls|rm|verify`` on an argparse subparsers object; returns the
    ``cache`` subparsers so other modules can add their own (``cache envs``).
    ``artifacts``: how ls/rm/verify also cover the artifact cache."""
    cache = subparsers.add_parser("cache", help="inspect and clean the repo cache")
    sub = cache.add_subparsers(dest="cache_command", required=True)

    ls = sub.add_parser("ls", help="list cached repo trees (and count the envs: `cache envs` lists them)")
    ls.add_argument("repo", nargs="?", help="owner/name[@sha] filter")
    ls.add_argument("--json", action="store_true", help="machine-readable output")
    ls.set_defaults(func=_cmd_ls, artifact_section=artifacts)

    rm = sub.add_parser("rm", help="remove cached repo trees (shows what it frees first)")
    rm.add_argument("repo", nargs="?", help="owner/name[@sha] or host/owner/name[@sha]")
    rm.add_argument("--all", action="store_true", help="remove every cached repo (with --artifacts: every entry)")
    rm.add_argument("--artifacts", action="store_true",
                    help="remove artifact-cache entries instead: REPO is then a key prefix (see `cache artifacts`)")
    rm.add_argument("--yes", "-y", action="store_true", help="do not ask for confirmation")
    rm.add_argument("--dry-run", action="store_true", help="only show what would be freed")
    rm.add_argument("--json", action="store_true", help="machine-readable output")
    rm.set_defaults(func=_cmd_rm, artifact_section=artifacts)

    verify = sub.add_parser("verify", help="re-hash cached trees against their records, and check every artifact-cache entry")
    verify.add_argument("repo", nargs="?", help="owner/name[@sha] filter")
    verify.add_argument("--json", action="store_true", help="machine-readable output")
    verify.set_defaults(func=_cmd_verify, artifact_section=artifacts)
    return sub
