"""One repo's audit: identity, static part, dynamic part, verdict (schema in docs/audit-report.md)."""

from __future__ import annotations

import datetime
import logging
import time
import warnings
from pathlib import Path
from typing import Any

from .._errors import SafehubError, escape_untrusted
from ._verdict import EXIT_CODES, decide, dynamic_findings

__all__ = ["audit_repo", "SCHEMA", "SCHEMA_VERSION", "TELEMETRY_NOTE", "JOB_MARK"]

logger = logging.getLogger("safehub")

SCHEMA = "safehub-audit"
SCHEMA_VERSION = 1
JOB_MARK = "<job>"  # stands for the sandbox job's folder (random per run) in every recorded path
TELEMETRY_NOTE = ("The dynamic part is telemetry from a Python audit hook inside the sandbox, not a security "
                  "boundary: repo code in the same interpreter can evade or forge it (native code, ctypes, "
                  "writing its own lines). The sandbox is the boundary; what it refused is listed as 'refused'.")
DEFAULT_TIMEOUT_S = 300.0


def _identity(repo: Any, hub_dir: Path) -> dict[str, Any]:
    from .._fetch._extract import tree_hash

    ident: dict[str, Any] = {
        "repo": repo.display_name, "source": repo.source, "host": repo.host, "ref": repo.ref,
        "resolved_ref": repo.resolved_ref, "sha": repo.sha, "archive_sha256": None, "archive_bytes": None,
        "tree_sha256": tree_hash(Path(repo.path)),
    }
    if repo.source == "github" and repo.sha and repo.owner and repo.name and repo.host:
        from .._fetch._cache import RepoCache

        meta = RepoCache(hub_dir).entry(repo.host, repo.owner, repo.name, repo.sha).meta()
        if isinstance(meta.get("archive_sha256"), str):
            ident["archive_sha256"] = meta["archive_sha256"]
        if isinstance(meta.get("archive_bytes"), int):
            ident["archive_bytes"] = meta["archive_bytes"]
    return ident


def _error(exc: BaseException) -> dict[str, Any]:
    message = exc.message if isinstance(exc, SafehubError) else str(exc)
    return {"type": type(exc).__name__, "message": escape_untrusted(message, limit=2000),
            "exit_code": getattr(exc, "exit_code", 1)}


def _resolved(repo: Any, hub: Any, hub_dir: Path, mode: str | None, extra: Any) -> dict[str, Any]:
    from .._env import plan_for_repo

    try:
        plan = plan_for_repo(repo.path, hub.dependencies, hub_dir=hub_dir, mode=mode, extra=extra,
                             pinned=repo.source == "github" and bool(repo.sha))
    except (SafehubError, ValueError, OSError) as exc:
        return {"mode": mode, "entries": None, "error": _error(exc)}
    return {"mode": plan.mode, "entries": list(plan.entries), "scanned": list(plan.scanned),
            "optional": list(plan.optional), "skipped": list(plan.skipped)}


def _normalise(entry: dict[str, Any]) -> None:
    """Job folders are random per run: every recorded path under one reads ``<job>/...``,
    so two audits of one repo give the same report apart from timings."""
    roots = sorted((r.rstrip("/") for r in entry.pop("job_roots", [])), key=len, reverse=True)
    for event in entry["telemetry"]["events"]:
        for key, value in event.items():
            if isinstance(value, str):
                for root in roots:
                    value = value.replace(root, JOB_MARK)
                event[key] = value
    entry["job_roots"] = [JOB_MARK] if roots else []


def audit_repo(
    repo_or_dir: str,
    *,
    entrypoints: list[str] | None = None,
    source: str | None = None,
    revision: str | None = None,
    sandbox: Any = None,
    timeout_s: float | None = None,
    hub_dir: str | Path | None = None,
    dependencies_mode: str | None = None,
    extra_dependencies: Any = None,
    force_reload: bool = False,
    skip_validation: bool = False,
    verbose: bool = False,
    static_only: bool = False,
) -> dict[str, Any]:
    """Audit one repo and return its report (a JSON-able dict, ``schema_version`` 1).

    Raises the usual SafehubError when the repo cannot be fetched or its hubconf cannot
    be read (nothing to audit); a failing entrypoint is part of the report instead.
    """
    from .._config import hub_path
    from .._env._plan import FAMILY_IMPORTS
    from .._fetch import RepoRequest, fetch_repo
    from .._hubconf import read_hubconf
    from .._sandbox import Limits
    from ._dynamic import run_entrypoint
    from ._static import scan_static

    started = time.monotonic()
    hub = Path(hub_dir) if hub_dir is not None else hub_path()
    if source is None:
        source = "local" if Path(repo_or_dir).expanduser().is_dir() else "github"
    with warnings.catch_warnings():  # trust_repo=None warns about untrusted repos: auditing them is the point
        warnings.simplefilter("ignore")
        repo = fetch_repo(RepoRequest(repo_or_dir=str(repo_or_dir), source=source, trust_repo=None,
                                      force_reload=force_reload, verbose=verbose, skip_validation=skip_validation,
                                      revision=revision, calling_fn="audit", allow_prompt=False), hub_dir=hub)
    hubconf = read_hubconf(repo.path)
    if entrypoints:
        names = list(entrypoints)
        for name in names:
            hubconf.require(name)  # a misspelt --entrypoint fails here, with a suggestion
    else:
        names = [n for n in hubconf.names() if _loadable(hubconf, n)]
    timings: dict[str, float] = {}
    mark = time.monotonic()
    static = scan_static(Path(repo.path), hubconf, family=FAMILY_IMPORTS)
    static["hubconf"]["dependencies"] = {
        "declared": list(hubconf.dependencies),
        "resolved": _resolved(repo, hubconf, hub, dependencies_mode, extra_dependencies),
    }
    timings["static_s"] = round(time.monotonic() - mark, 3)
    identity = _identity(repo, hub)
    identity["files"] = static["files"]["count"]
    identity["bytes"] = static["files"]["bytes"]
    timeout = float(timeout_s) if timeout_s is not None else DEFAULT_TIMEOUT_S
    # A CPU limit far beyond what the wall clock allows: it is never hit first, and it
    # makes the watchdog measure the CPU time the report gives.
    limits = Limits(timeout_s=timeout, cpu_time_s=int(timeout * 64) + 60)
    entries: list[dict[str, Any]] = []
    mark = time.monotonic()
    for name in [] if static_only else names:
        entry = run_entrypoint(name, repo=repo, hub=hubconf, hub_dir=hub, sandbox=sandbox, limits=limits,
                               verbose=verbose, dependencies_mode=dependencies_mode,
                               extra_dependencies=extra_dependencies)
        _normalise(entry)
        entries.append(entry)
    timings["dynamic_s"] = round(time.monotonic() - mark, 3)
    findings = [f for e in entries for f in dynamic_findings(e, str(repo.path))]
    for e in entries:
        e.pop("job_roots", None)
    report: dict[str, Any] = {
        "schema": SCHEMA,
        "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "safehub_version": _version(),
        "identity": identity,
        "static": static,
        "dynamic": {"ran": not static_only, "note": TELEMETRY_NOTE, "timeout_s": timeout,
                    "entrypoints": entries, "findings": findings,
                    # public names hubconf may bind that a static reading cannot confirm as callables
                    "not_run": sorted(n for n in hubconf.entrypoints if not n.startswith("_") and n not in names)},
        "error": None,
    }
    report["verdict"], report["exit_code"] = decide(report)
    report["summary"] = summarise(report)
    timings["total_s"] = round(time.monotonic() - started, 3)
    report["timings"] = timings
    return report


def error_report(repo_or_dir: str, exc: BaseException) -> dict[str, Any]:
    """The report of a repo that could not be audited at all (batch mode)."""
    report: dict[str, Any] = {
        "schema": SCHEMA, "schema_version": SCHEMA_VERSION,
        "generated_at": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
        "safehub_version": _version(), "identity": {"repo": str(repo_or_dir)}, "static": None,
        "dynamic": None, "error": _error(exc), "verdict": "error", "exit_code": EXIT_CODES["error"],
        "timings": {},
    }
    report["summary"] = {"severity": {}, "categories": {}, "entrypoints": {}}
    return report


def summarise(report: dict[str, Any]) -> dict[str, Any]:
    """Counts: findings per severity and per category, entrypoints per status."""
    findings = report["static"]["findings"] + report["dynamic"]["findings"]
    severity: dict[str, int] = {}
    categories: dict[str, int] = {}
    for f in findings:
        severity[f["severity"]] = severity.get(f["severity"], 0) + 1
        categories[f["category"]] = categories.get(f["category"], 0) + 1
    statuses: dict[str, int] = {}
    for e in report["dynamic"]["entrypoints"]:
        statuses[e["status"]] = statuses.get(e["status"], 0) + 1
    return {"severity": dict(sorted(severity.items())), "categories": dict(sorted(categories.items())),
            "entrypoints": dict(sorted(statuses.items()))}


def _loadable(hubconf: Any, name: str) -> bool:
    """Whether safehub.load would take this name (non-ASCII names are refused): the rest
    are listed under dynamic "not_run"."""
    from .._errors import EntrypointNotFoundError

    try:
        hubconf.require(name)
    except EntrypointNotFoundError:
        return False
    return True


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("safehub")
    except PackageNotFoundError:
        return "unknown"
