"""``safehub audit``: one repo, several, or a batch file (local pool or Ray).

Exit codes (also docs/audit-report.md): 0 clean, 20 findings, 21 failed, 22 error
(batch: a repo could not be audited); a single repo that cannot be audited at all
exits with the usual safehub error code (2-10).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

__all__ = ["add_audit_commands"]


def _positive(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 < value <= 86400:
        raise argparse.ArgumentTypeError("the timeout must be between 0 and 86400 seconds")
    return value


def _options(args: argparse.Namespace) -> dict[str, Any]:
    return {"source": args.source, "revision": args.revision, "sandbox": args.sandbox, "timeout_s": args.timeout,
            "dependencies_mode": args.dependencies_mode, "extra_dependencies": args.extra_dependencies,
            "force_reload": args.force_reload, "skip_validation": args.skip_validation,
            "static_only": args.static_only, "verbose": False}


def _dump(value: Any) -> str:
    # ensure_ascii: every non-ASCII character of repo text is a \u escape in JSON too.
    return json.dumps(value, indent=2, ensure_ascii=True)


def _cmd_audit(args: argparse.Namespace) -> int:
    from ._fleet import BatchItem, read_batch

    items = [BatchItem(r, tuple(args.entrypoint or ())) for r in args.repo]
    if args.batch:
        items += read_batch(args.batch)
    if not items:
        from .._errors import SafehubError

        raise SafehubError("nothing to audit", hint="usage: safehub audit REPO_OR_DIR, or --batch FILE")
    if len(items) == 1 and not args.batch and not args.ray:
        return _single(args, items[0])
    return _many(args, items)


def _single(args: argparse.Namespace, item: Any) -> int:
    from ._render import format_markdown, format_text
    from ._run import audit_repo

    report = audit_repo(item.repo, entrypoints=list(item.entrypoints) or None, **_options(args))
    if args.out:
        text = format_markdown(report) if args.format == "md" else _dump(report) + "\n"
        Path(args.out).write_text(text, encoding="utf-8")
    if args.json:
        print(_dump(report))
    elif args.format == "md" and not args.out:
        print(format_markdown(report), end="")
    else:
        print(format_text(report))
        if args.out:
            print(f"  report written to {args.out}")
    return int(report["exit_code"])


def _many(args: argparse.Namespace, items: list[Any]) -> int:
    from ._fleet import audit_batch, write_reports
    from ._render import format_batch_text

    out_dir = Path(args.out or "safehub-audit")
    reports = audit_batch(items, workers=args.workers, use_ray=args.ray, progress=not args.json and sys.stderr.isatty(),
                          **_options(args))
    index = write_reports(reports, items, out_dir, markdown=args.format == "md")
    if args.json:
        print(_dump(index))
    else:
        print(format_batch_text(index))
        print(f"  reports and index.json in {out_dir}")
    return int(index["exit_code"])


def add_audit_commands(sub: Any) -> None:
    from .._fetch import SOURCES
    from .._sandbox import BACKENDS

    p = sub.add_parser(
        "audit", help="report what a repo declares and what its entrypoints do in the sandbox (CI-gateable)",
        description="Static part (nothing runs), dynamic part (each entrypoint runs in the sandbox with telemetry), "
                    "verdict. Exit codes: 0 clean, 20 findings, 21 failed, 22 error (batch); see docs/audit-report.md.",
    )
    p.add_argument("repo", nargs="*", help="owner/repo[:ref] or a local folder (several: a batch)")
    p.add_argument("--entrypoint", "-e", action="append", metavar="NAME",
                   help="audit only this entrypoint (repeatable; default: every entrypoint, default arguments)")
    p.add_argument("--json", action="store_true", help="the JSON report (a batch: its index) on stdout")
    p.add_argument("--format", choices=["text", "md"], default="text",
                   help="md: a Markdown report (on stdout, or the --out file; a batch writes one per repo)")
    p.add_argument("--out", "-o", metavar="PATH",
                   help="write the report here (JSON, or Markdown with --format md); a batch: the folder for "
                        "one report per repo and index.json (default ./safehub-audit)")
    p.add_argument("--batch", metavar="FILE", help="audit every repo listed in FILE (one per line: REPO [ENTRYPOINT ...])")
    p.add_argument("--workers", type=int, default=2, help="parallel audits of a batch on this machine (default 2)")
    p.add_argument("--ray", action="store_true",
                   help="run the batch as Ray tasks (a local instance, or the cluster RAY_ADDRESS names)")
    p.add_argument("--timeout", type=_positive, metavar="SECONDS", help="wall-clock limit per entrypoint (default 300)")
    p.add_argument("--static-only", action="store_true", help="skip the dynamic part (nothing from the repo runs)")
    p.add_argument("--source", type=str.lower, choices=list(SOURCES), help="default: local for folders, github otherwise")
    p.add_argument("--revision", help="a full 40-hex commit SHA to audit exactly")
    p.add_argument("--sandbox", choices=list(BACKENDS))
    p.add_argument("--force-reload", action="store_true")
    p.add_argument("--skip-validation", action="store_true")
    p.add_argument("--dependencies", dest="dependencies_mode", choices=["scan", "declared", "requirements"])
    p.add_argument("--extra-dependency", "-d", dest="extra_dependencies", action="append", metavar="REQUIREMENT")
    p.set_defaults(func=_cmd_audit)
