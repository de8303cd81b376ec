"""The ``safehub`` command line. Every command takes ``--json``.

Exit codes come from the error classes (``SafehubError.exit_code``), as in click.
"""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from ._cli_text import CliFormatter, cli_spelling
from ._errors import InvalidRepoError, SafehubError, escape_untrusted

__all__ = ["main", "demo_repo_dir"]

DEMO_ENTRYPOINT = "tinynet"


def demo_repo_dir() -> Path:
    """The bundled demo hub repo (examples/demo-hub, shipped as safehub/_demo)."""
    from ._resources import shipped_folder

    found = shipped_folder("safehub._demo", "examples/demo-hub", "hubconf.py")
    if found is not None:
        return found
    raise SafehubError("the bundled demo repo is missing", hint="reinstall safehub")


def _kwarg(text: str) -> tuple[str, Any]:
    """``name=value`` where value is JSON (``pretrained=false``), else a plain string."""
    if "=" not in text:
        raise argparse.ArgumentTypeError(f"{text!r}: expected NAME=VALUE")
    name, raw = text.split("=", 1)
    if not name.isidentifier():
        raise argparse.ArgumentTypeError(f"{name!r} is not a keyword-argument name")
    try:
        return name, json.loads(raw)
    except ValueError:
        return name, raw


def _emit(args: argparse.Namespace, payload: dict[str, Any], text: str) -> None:
    if args.json:
        print(json.dumps(payload, indent=2, default=str))
    else:
        print(text)


def _repo_args(p: argparse.ArgumentParser, *, entry: bool) -> None:
    from ._fetch import SOURCES
    from ._sandbox import BACKENDS

    p.add_argument("repo", nargs="?", help="owner/repo[:ref] or a local folder (default: the bundled demo repo)")
    if entry:
        p.add_argument("entrypoint", nargs="?", help=f"entrypoint name (default for the demo: {DEMO_ENTRYPOINT})")
    p.add_argument("--source", type=str.lower, choices=list(SOURCES), help="default: local for folders, github otherwise")
    p.add_argument("--revision", help="a full 40-hex commit SHA to load exactly")
    p.add_argument("--trust-repo", choices=["true", "false", "check"], help="as torch.hub's trust_repo")
    p.add_argument("--force-reload", action="store_true")
    p.add_argument("--skip-validation", action="store_true",
                   help="do not check that the ref is on a branch or tag of the repo itself (fewer API calls)")
    p.add_argument("--sandbox", choices=list(BACKENDS))
    p.add_argument("--dependencies", dest="dependencies_mode", choices=["scan", "declared", "requirements"],
                   help="what the repo's env gets (default: $SAFEHUB_DEPENDENCIES or scan)")
    p.add_argument("--extra-dependency", "-d", dest="extra_dependencies", action="append", metavar="REQUIREMENT",
                   help="one more package for the repo's env, e.g. -d 'timm>=0.9' (repeatable)")
    p.add_argument("--json", action="store_true", help="machine-readable output")


def _resolve_repo_arg(args: argparse.Namespace) -> tuple[str, str]:
    if args.repo is None:
        return str(demo_repo_dir()), "local"
    path = Path(args.repo).expanduser()
    if args.source:
        if args.source == "local" and not path.is_dir():
            raise _no_folder(args.repo, path)
        return args.repo, args.source
    if path.is_dir():
        return args.repo, "local"
    from ._fetch import parse_repo

    try:
        parse_repo(args.repo)
    except InvalidRepoError:
        # Not owner/name[:ref]: the user most likely meant a folder.
        raise _no_folder(args.repo, path) from None
    return args.repo, "github"


def _no_folder(text: str, path: Path) -> InvalidRepoError:
    shown = escape_untrusted(text, limit=200)
    what = "is not a folder" if path.exists() else "does not exist"
    return InvalidRepoError(
        f"{shown} {what}, and it is not a GitHub repo of the form owner/name[:ref]",
        hint="pass the folder that holds hubconf.py (check the path), or a repo like pytorch/vision:v0.10.0",
    )


def _trust(args: argparse.Namespace) -> bool | str | None:
    choices: dict[str | None, bool | str | None] = {"true": True, "false": False, "check": "check", None: "check"}
    return choices[args.trust_repo]


def _cmd_load(args: argparse.Namespace) -> int:
    import safehub

    repo, source = _resolve_repo_arg(args)
    entry = args.entrypoint or (DEMO_ENTRYPOINT if args.repo is None else None)
    if entry is None:
        raise SafehubError("no entrypoint given", hint="run `safehub list REPO` to see the entrypoints")
    kwargs = dict(args.kwarg or [])
    start = time.perf_counter()
    obj = safehub.load(
        repo, entry, source=source, trust_repo=_trust(args), force_reload=args.force_reload,
        skip_validation=args.skip_validation,
        verbose=not args.json, revision=args.revision, device=args.device, sandbox=args.sandbox,
        dependencies_mode=args.dependencies_mode, extra_dependencies=args.extra_dependencies, **kwargs,
    )
    seconds = time.perf_counter() - start
    modules = _describe(obj)
    shape = args.input_shape or ([2, 3, 32, 32] if args.repo is None else None)
    if shape is not None:
        _try_forward(obj, shape, modules)
    info = _first_info(obj)
    payload = {"repo": repo, "entrypoint": entry, "seconds": round(seconds, 3), "modules": modules,
               "info": info.as_dict() if info else None}
    lines = [f"loaded {entry} from {repo} in {seconds:.2f} s"]
    if info:
        lines.append(f"  sandbox: {info.backend}   env: {info.env_backend} {info.env_key[:12]}   sha: {info.sha or '-'}")
        cache = getattr(info, "cache", {}) or {}
        state = "hit" if cache.get("hit") else "stored" if cache.get("stored") else "not stored"
        lines.append(f"  artifact cache: {state}" + (f" ({str(cache['key'])[:16]})" if cache.get("key") else "")
                     + (f": {cache['reason']}" if cache.get("reason") and not cache.get("hit") else ""))
    for m in modules:
        lines.append(f"  {m['path'] or '<root>'}: {m['class']} with {m['parameters']:,} parameters, "
                     f"{m['graph_nodes']} graph nodes, mode={m['mode']}, training={m['training']}")
        if m.get("output_shape") is not None:
            lines.append(f"    forward({m['example_input_shape']}) -> {m['output_shape']}")
    if args.profile:
        timings = dict(info.timings) if info else {}
        payload["profile"] = timings
        lines.append("  where the time went (seconds; runner_* as the sandboxed runner reported them):")
        lines.extend(f"    {name:<24} {value:8.3f}" for name, value in timings.items())
    _emit(args, payload, "\n".join(lines))
    return 0


def _first_info(obj: Any) -> Any:
    from ._namespace import SafehubNamespace

    if isinstance(obj, SafehubNamespace):
        obj = dict(obj.safehub_attrs())
    if hasattr(obj, "safehub_info"):
        return obj.safehub_info
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else []
    for item in items:
        if hasattr(item, "safehub_info"):
            return item.safehub_info
    return None


def _describe(obj: Any, path: str = "") -> list[dict[str, Any]]:
    import torch

    if isinstance(obj, torch.nn.Module):
        graph = getattr(obj, "graph", None)
        info = getattr(obj, "safehub_info", None)
        mode = None
        if info is not None:
            mode = (info.summary.get("modules") or {}).get("m0", {}).get("mode") if isinstance(info.summary, dict) else None
        from ._deferred import DeferredModule

        if isinstance(obj, DeferredModule):
            mode = "deferred"  # exported at its first call
        entry: dict[str, Any] = {
            "path": path,
            "class": type(obj).__name__,
            "parameters": sum(p.numel() for p in obj.parameters()),
            "graph_nodes": len(graph.nodes) if graph is not None else None,
            "mode": mode,
            "training": obj.training,
            "example_input_shape": None,
            "output_shape": None,
        }
        return [entry]
    from ._namespace import SafehubNamespace

    out: list[dict[str, Any]] = []
    if isinstance(obj, SafehubNamespace):  # an object holding modules: its module attributes
        for k, v in obj.safehub_attrs().items():
            out += _describe(v, f"{path}.{k}")
    elif isinstance(obj, dict):
        for k, v in obj.items():
            out += _describe(v, f"{path}[{k!r}]")
    elif isinstance(obj, (tuple, list)):
        for i, v in enumerate(obj):
            out += _describe(v, f"{path}[{i}]")
    return out


def _try_forward(obj: Any, shape: list[int], modules: list[dict[str, Any]]) -> None:
    """Run the rebuilt model once on random input, to show it works."""
    import torch

    if not isinstance(obj, torch.nn.Module) or not modules:
        return
    with torch.no_grad():
        out = obj(torch.randn(*shape))
    modules[0]["example_input_shape"] = list(shape)
    modules[0]["output_shape"] = list(out.shape) if isinstance(out, torch.Tensor) else type(out).__name__


def _shape(text: str) -> list[int]:
    try:
        dims = [int(d) for d in text.split(",")]
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r}: expected comma-separated sizes like 2,3,32,32") from None
    if not dims or any(d <= 0 or d > 1 << 16 for d in dims):
        raise argparse.ArgumentTypeError(f"{text!r}: sizes must be between 1 and 65536")
    return dims


def _cmd_list(args: argparse.Namespace) -> int:
    import safehub

    repo, source = _resolve_repo_arg(args)
    names = safehub.list(repo, force_reload=args.force_reload, trust_repo=_trust(args), verbose=not args.json,
                         skip_validation=args.skip_validation,
                         source=source, revision=args.revision, sandbox=args.sandbox,
                         dependencies_mode=args.dependencies_mode, extra_dependencies=args.extra_dependencies)
    _emit(args, {"repo": repo, "entrypoints": names}, "\n".join(names))
    return 0


def _cmd_help(args: argparse.Namespace) -> int:
    import safehub

    repo, source = _resolve_repo_arg(args)
    entry = args.entrypoint or (DEMO_ENTRYPOINT if args.repo is None else None)
    if entry is None:
        raise SafehubError("no entrypoint given", hint="usage: safehub help REPO ENTRYPOINT")
    doc = safehub.help(repo, entry, force_reload=args.force_reload, trust_repo=_trust(args), source=source,
                       skip_validation=args.skip_validation,
                       revision=args.revision, sandbox=args.sandbox,
                       dependencies_mode=args.dependencies_mode, extra_dependencies=args.extra_dependencies)
    # Docstrings are repo text: escape terminal control sequences before printing.
    _emit(args, {"repo": repo, "entrypoint": entry, "doc": doc}, escape_untrusted(doc or "(no docstring)", limit=65536))
    return 0


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="safehub", description="torch.hub, with the repo's code kept in a sandbox.")
    parser.add_argument("-v", "--verbose", action="count", default=0, help="more logging (-vv for debug)")
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("load", help="load an entrypoint in the sandbox and rebuild it here")
    _repo_args(p, entry=True)
    p.add_argument("--kwarg", "-k", action="append", type=_kwarg, metavar="NAME=VALUE",
                   help="keyword argument for the entrypoint; VALUE is JSON if it parses")
    p.add_argument("--device", default=None, help="cpu (default), cuda, cuda:1, ...")
    p.add_argument("--input-shape", type=_shape, metavar="N,C,H,W",
                   help="run one forward pass on random input of this shape (the demo does 2,3,32,32)")
    p.add_argument("--profile", action="store_true",
                   help="print the time each part of the load took (also under \"profile\" with --json)")
    p.set_defaults(func=_cmd_load)

    p = sub.add_parser("list", help="list a repo's entrypoints")
    _repo_args(p, entry=False)
    p.set_defaults(func=_cmd_list)

    p = sub.add_parser("help", help="show an entrypoint's docstring")
    _repo_args(p, entry=True)
    p.set_defaults(func=_cmd_help)

    p = sub.add_parser("doctor", help="report which sandbox layers this machine can provide")
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=_cmd_doctor)

    from ._artifact_cache_cli import add_artifact_cache_commands, artifact_section  # cache artifacts
    from ._env._cli import add_env_cache_commands  # cache envs|rm-env
    from ._fetch import add_cache_commands  # cache ls|rm|verify

    cache_sub = add_cache_commands(sub, artifact_section())
    add_env_cache_commands(cache_sub)
    add_artifact_cache_commands(cache_sub)

    from ._artifact_cli import CliHelpers, add_artifact_commands  # export, inspect

    add_artifact_commands(sub, CliHelpers(_repo_args, _kwarg, _resolve_repo_arg, _trust, DEMO_ENTRYPOINT))

    from ._policy_cli import add_policy_commands  # policy show|check, lock

    add_policy_commands(sub, _repo_args)

    from ._audit._cli import add_audit_commands  # audit

    add_audit_commands(sub)
    return parser


def _cmd_doctor(args: argparse.Namespace) -> int:
    from ._doctor import doctor_report, format_report

    report = doctor_report()
    print(json.dumps(report, indent=2, default=str) if args.json else format_report(report))
    return 0 if report.get("ok", True) else 1


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    level = {0: logging.WARNING, 1: logging.INFO}.get(args.verbose, logging.DEBUG)
    handler = logging.StreamHandler()
    handler.setFormatter(CliFormatter("safehub: %(message)s"))
    logging.basicConfig(level=level, handlers=[handler])
    # torch warns at import when numpy is absent; safehub never needs numpy, so the
    # line would only alarm CLI users.
    warnings.filterwarnings("ignore", message="Failed to initialize NumPy", category=UserWarning)
    try:
        return int(args.func(args) or 0)
    except SafehubError as exc:
        remote_tb = getattr(exc, "remote_traceback", "") or ""
        if getattr(args, "json", False):
            payload = {"error": type(exc).__name__, "message": exc.message,
                       "hint": cli_spelling(exc.hint) if exc.hint else exc.hint, "exit_code": exc.exit_code}
            if hasattr(exc, "remote_type"):
                payload.update(remote_type=exc.remote_type, remote_message=getattr(exc, "remote_message", ""),
                               remote_traceback=remote_tb)
            print(json.dumps(payload, indent=2))
        else:
            print(f"safehub: error: {cli_spelling(str(exc))}", file=sys.stderr)
            if remote_tb and args.verbose:
                # Already escaped by the channel: sandbox text, shown as text.
                print(f"safehub: the sandbox's traceback:\n{remote_tb.rstrip()}", file=sys.stderr)
        return exc.exit_code
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    sys.exit(main())
