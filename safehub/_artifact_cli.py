"""``safehub export`` (load in the sandbox, then save an artifact) and ``safehub inspect``."""

from __future__ import annotations

import argparse
import functools
import json
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ._errors import SafehubError, escape_untrusted
from ._records import record

__all__ = ["add_artifact_commands", "CliHelpers"]


@record(frozen=True)
class CliHelpers:
    """The shared argument helpers of ``_cli`` (passed in: this module sits below it)."""

    repo_args: Callable[..., None]
    kwarg: Callable[[str], tuple[str, Any]]
    resolve_repo: Callable[[argparse.Namespace], tuple[str, str]]
    trust: Callable[[argparse.Namespace], Any]
    demo_entrypoint: str


def _cmd_export(args: argparse.Namespace, *, helpers: CliHelpers) -> int:
    from ._api import load
    from ._artifact import inspect_artifact, save

    repo, source = helpers.resolve_repo(args)
    entry = args.entrypoint or (helpers.demo_entrypoint if args.repo is None else None)
    if entry is None:
        raise SafehubError("no entrypoint given", hint="usage: safehub export REPO ENTRYPOINT -o DIR")
    out = Path(args.output)
    if out.exists() or out.is_symlink():  # before the sandbox run, not after it
        raise SafehubError(f"{str(out)!r} already exists", hint="export to a new folder")
    start = time.perf_counter()
    obj = load(
        repo, entry, source=source, trust_repo=helpers.trust(args), force_reload=args.force_reload,
        skip_validation=args.skip_validation,
        verbose=not args.json, revision=args.revision, sandbox=args.sandbox, export=args.export,
        **dict(args.kwarg or []),
    )
    save(obj, out)
    report = inspect_artifact(out)
    report["seconds"] = round(time.perf_counter() - start, 3)
    text = f"exported {entry} from {repo} to {out} in {report['seconds']:.2f} s\n" + _format(report)
    _print(args, report, text)
    return 0


def _cmd_inspect(args: argparse.Namespace) -> int:
    from ._artifact import inspect_artifact

    report = inspect_artifact(args.artifact)
    _print(args, report, _format(report))
    return 0


def _print(args: argparse.Namespace, report: dict[str, Any], text: str) -> None:
    # ensure_ascii: provenance strings come from a file that may have been tampered with.
    print(json.dumps(report, indent=2, ensure_ascii=True) if args.json else text)


def _format(report: dict[str, Any]) -> str:
    prov = report["provenance"]

    def show(value: Any) -> str:
        text = value if isinstance(value, str) else json.dumps(value, ensure_ascii=True)
        return escape_untrusted(text, limit=400).replace("\n", "\\n")

    lines = [
        f"artifact {show(report['path'])} (format {prov['format']} v{prov['version']})",
        f"  source: {show(prov['repo'] or '-')} ({prov['source'] or '-'})  sha: {prov['sha'] or '-'}",
        f"  archive sha256: {prov['archive_sha256'] or '-'}",
        f"  entrypoint: {prov['entrypoint'] or '-'}  export: {prov['export'] or '-'}  arguments: {show(prov['arguments'])}",
        f"  saved {prov['saved_at']} with torch {show(prov['torch_version'])}, safehub {show(prov['safehub_version'])}",
        f"  {report['parameters']:,} parameters; weights {report['weights_bytes'] / 2**20:.2f} MiB, "
        f"spec {report['spec_bytes'] / 2**10:.1f} KiB; returns a {prov['root']}",
    ]
    for mid, m in report["modules"].items():
        graphs = ", ".join(f"{name} ({n} nodes)" for name, n in m["graphs"].items())
        lines.append(f"  {mid}: mode={m['mode']}, {m['parameters']:,} parameters, {m['tensors']} tensors, "
                     f"{m['leaves']} layers, graphs: {graphs}")
    return "\n".join(lines)


def add_artifact_commands(sub: Any, helpers: CliHelpers) -> None:
    p = sub.add_parser("export", help="load an entrypoint in the sandbox and save it as a code-free artifact folder")
    helpers.repo_args(p, entry=True)
    p.add_argument("--kwarg", "-k", action="append", type=helpers.kwarg, metavar="NAME=VALUE",
                   help="keyword argument for the entrypoint; VALUE is JSON if it parses")
    p.add_argument("--export", choices=["auto", "fx", "aten"], default="auto", help="how the sandbox exports the model")
    p.add_argument("--output", "-o", required=True, metavar="DIR", help="the artifact folder to create (must not exist)")
    p.set_defaults(func=functools.partial(_cmd_export, helpers=helpers))

    p = sub.add_parser("inspect", help="check an artifact folder and show its provenance, graphs and size")
    p.add_argument("artifact", metavar="DIR")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_inspect)
