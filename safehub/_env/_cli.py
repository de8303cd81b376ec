"""``safehub cache envs`` and ``safehub cache rm-env``: the built repo environments."""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path
from typing import Any

from .._fsutil import human_size as _human
from ._manage import env_size, list_envs, remove_env

__all__ = ["add_env_cache_commands"]


def _hub(args: argparse.Namespace) -> Path:
    from .._config import hub_path

    return hub_path()


def _rows(hub: Path) -> list[dict[str, Any]]:
    return [
        {
            "name": r.root.name,
            "path": str(r.root),
            "complete": r.complete,
            "backend": r.backend,
            "mode": r.mode,
            "distributions": list(r.distributions),
            "size_bytes": env_size(r.root),
            "created": r.created,
            "last_used": r.last_used,
        }
        for r in list_envs(hub)
    ]


def _ago(t: float) -> str:
    if not t:
        return "never"
    days = (time.time() - t) / 86400
    return f"{days:.0f} d ago" if days >= 1 else f"{days * 24:.1f} h ago"


def _cmd_envs(args: argparse.Namespace) -> int:
    rows = _rows(_hub(args))
    if args.json:
        json.dump({"envs": rows, "total_bytes": sum(r["size_bytes"] for r in rows)}, sys.stdout, indent=1)
        print()
        return 0
    if not rows:
        print(f"no environments in {_hub(args) / 'envs'}")
        return 0
    for r in sorted(rows, key=lambda r: r["last_used"]):
        state = "" if r["complete"] else "  (incomplete)"
        pkgs = ", ".join(r["distributions"][:6]) + (" ..." if len(r["distributions"]) > 6 else "")
        print(f"{r['name']}  {_human(r['size_bytes']):>10}  used {_ago(r['last_used'])}  "
              f"{r['mode'] or '-'}  {pkgs or '(torch only)'}{state}")
    print(f"{len(rows)} environments, {_human(sum(r['size_bytes'] for r in rows))} "
          "(files hard-linked from uv's cache are counted in full)")
    return 0


def _cmd_rm_env(args: argparse.Namespace) -> int:
    hub = _hub(args)
    rows = _rows(hub)
    if args.all:
        chosen = rows
    elif args.unused_days is not None:
        cutoff = time.time() - args.unused_days * 86400
        chosen = [r for r in rows if r["last_used"] < cutoff]
    elif args.name:
        chosen = [r for r in rows if r["name"] == args.name]
        if not chosen:
            print(f"safehub cache rm-env: no environment named {args.name!r} (see `safehub cache envs`)",
                  file=sys.stderr)
            return 2
    else:
        print("safehub cache rm-env: name an environment, or pass --all or --unused-days N", file=sys.stderr)
        return 2
    removed = [r["name"] for r in chosen if not args.dry_run and remove_env(hub, r["name"])]
    freed = sum(r["size_bytes"] for r in chosen if r["name"] in removed)
    if args.json:
        json.dump({"removed": removed, "would_remove": [r["name"] for r in chosen], "freed_bytes": freed},
                  sys.stdout, indent=1)
        print()
    else:
        for r in chosen:
            print(f"{'removed' if r['name'] in removed else 'would remove'} {r['name']}  {_human(r['size_bytes'])}")
        print(f"freed {_human(freed)}")
    return 0


def add_env_cache_commands(cache_sub: Any) -> None:
    """Register ``envs`` and ``rm-env`` under ``safehub cache``."""
    envs = cache_sub.add_parser("envs", help="list repo environments with size and last use")
    envs.add_argument("--json", action="store_true", help="machine-readable output")
    envs.set_defaults(func=_cmd_envs)
    rm = cache_sub.add_parser("rm-env", help="remove repo environments (they are rebuilt on the next load)")
    rm.add_argument("name", nargs="?", help="the environment's name (16 hex digits, from `cache envs`)")
    rm.add_argument("--all", action="store_true", help="remove every environment")
    rm.add_argument("--unused-days", type=float, default=None, help="remove those not used for N days")
    rm.add_argument("--dry-run", action="store_true", help="only show what would be removed")
    rm.add_argument("--json", action="store_true", help="machine-readable output")
    rm.set_defaults(func=_cmd_rm_env)
