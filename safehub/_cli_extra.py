"""CLI commands that belong to other modules: doctor (sandbox) and cache (fetching)."""

from __future__ import annotations

import argparse
import json
from typing import Any

__all__ = ["add_commands"]


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ._doctor import doctor_report, format_report

    report = doctor_report()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0 if report.get("ok", True) else 1


def add_commands(sub: Any) -> None:
    p = sub.add_parser("doctor", help="report which sandbox layers this machine can provide")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_doctor)

    from ._fetch import add_cache_commands  # cache ls|rm|verify
    from ._env._cli import add_env_cache_commands  # cache envs|rm-env

    add_env_cache_commands(add_cache_commands(sub))
