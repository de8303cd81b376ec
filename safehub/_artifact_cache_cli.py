"""The artifact cache on the command line: ``safehub cache artifacts`` lists it;
``cache ls`` counts it, ``cache rm --artifacts`` removes from it and ``cache
verify`` checks it (those three live in _fetch/_cli.py and call in here)."""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

from ._artifact_cache import ArtifactCache
from ._fsutil import human_size as _human

__all__ = ["add_artifact_cache_commands", "artifact_section", "artifact_summary", "remove_artifacts", "verify_artifacts",
           "writer_failures"]


def _hub(args: argparse.Namespace) -> Path:
    from ._config import hub_path

    return Path(getattr(args, "hub_dir", None) or hub_path())


def _chosen(cache: ArtifactCache, prefix: str | None, everything: bool) -> list[str]:
    keys = cache.keys()
    if everything:
        return keys
    prefix = (prefix or "").lower()
    return [k for k in keys if prefix and k.startswith(prefix)]


def artifact_summary(hub: Path) -> dict[str, Any]:
    cache = ArtifactCache(hub)
    rows = [cache.describe(k) for k in cache.keys()]
    return {"count": len(rows), "total_bytes": sum(r.size_bytes for r in rows), "details": "safehub cache artifacts"}


def remove_artifacts(hub: Path, prefix: str | None, everything: bool, dry_run: bool, as_json: bool) -> int:
    cache = ArtifactCache(hub)
    keys = _chosen(cache, prefix, everything)
    rows = [cache.describe(k).as_dict() for k in keys]
    removed = [] if dry_run else [r for k, r in zip(keys, rows) if cache.remove(k)]
    if as_json:
        json.dump({"removed": removed, "would_remove": rows if dry_run else [],
                   "freed_bytes": sum(r["size_bytes"] for r in removed)}, sys.stdout, indent=1)
        print()
    else:
        for r in rows:
            print(f"{'would remove' if dry_run else 'removed'} artifact-cache entry {r['key'][:16]}  "
                  f"{r['repo']} {r['entrypoint']}  {_human(r['size_bytes'])}")
        if not rows:
            print("no artifact-cache entry matches" + ("" if everything or prefix else "; name a key prefix or pass --all"))
    return 0 if rows or everything else 1


def verify_artifacts(hub: Path) -> list[dict[str, Any]]:
    """Every entry through every check a hit gets."""
    from ._errors import SafehubError

    cache = ArtifactCache(hub)
    out = []
    for key in cache.keys():
        try:
            cache.verify(key)
            out.append({"entry": f"artifact {key[:16]}", "path": str(cache.entry_path(key)), "ok": True})
        except (SafehubError, OSError) as exc:
            out.append({"entry": f"artifact {key[:16]}", "path": str(cache.entry_path(key)), "ok": False,
                        "error": str(exc), "fix": f"safehub cache rm --artifacts {key[:16]}"})
    return out


def writer_failures(cache: ArtifactCache, tail_bytes: int = 64 << 10) -> dict[str, Any] | None:
    """What the background writer (safehub/_cache_writer.py) logged: it logs failures only.
    None when nothing was; else the log's path, the failures in its last ``tail_bytes``,
    and the last one."""
    path = cache.root / "writer.log"
    try:
        with open(path, "rb") as f:
            size = f.seek(0, 2)
            f.seek(max(0, size - tail_bytes))
            lines = [ln for ln in f.read().decode("utf-8", "replace").splitlines() if ln.strip()]
    except OSError:
        return None
    if not lines:
        return None
    return {"path": str(path), "recent_failures": len(lines), "last": lines[-1][:500]}


def _cmd_artifacts(args: argparse.Namespace) -> int:
    cache = ArtifactCache(_hub(args))
    rows = [cache.describe(k).as_dict() for k in cache.keys()]
    failures = writer_failures(cache)
    if args.json:
        json.dump({"entries": rows, "total_bytes": sum(r["size_bytes"] for r in rows), "writer_failures": failures},
                  sys.stdout, indent=1)
        print()
        return 0
    if not rows:
        print(f"no artifact-cache entries in {cache.entries_dir}")
    for r in rows:
        print(f"{r['key'][:16]}  {r['repo']}  {r['entrypoint']}  {_human(r['size_bytes'])}  {r['created']}")
    if rows:
        print(f"{len(rows)} entries, {_human(sum(r['size_bytes'] for r in rows))}")
    if failures is not None:
        print(f"the background writer could not store {failures['recent_failures']} load(s) (those loads run the "
              f"sandbox again next time); the last: {failures['last']}\n  (log: {failures['path']}; delete it "
              "once dealt with)")
    return 0


def add_artifact_cache_commands(cache_sub: Any) -> None:
    """``cache artifacts`` on the ``cache`` subparsers."""
    p = cache_sub.add_parser("artifacts", help="list the artifact cache (validated results of earlier loads)")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_artifacts)


def artifact_section() -> Any:
    """The artifact cache's part of ``cache ls|rm|verify`` (_fetch/_cli.py)."""
    from ._fetch._cli import CacheSection

    return CacheSection(summary=artifact_summary, remove=remove_artifacts, verify=verify_artifacts)
