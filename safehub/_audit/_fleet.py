"""Auditing many repos: a local process pool, or Ray tasks on a cluster.

Both run :func:`audit_one` (one repo -> one report, never raising) for each line of
the batch and give the same reports apart from timings. Ray is imported only when
asked for (``--ray``; the optional extra ``safehub[fleet]``): ``ray.init()`` with no
address starts a local instance, or joins the cluster that ``RAY_ADDRESS`` names.
Each audit is one Ray task (``num_cpus=1``) on a node that has safehub, bubblewrap
and the sandbox layers installed (``safehub doctor`` on each node must say ok).
"""

from __future__ import annotations

import json
import logging
import re
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import field
from pathlib import Path
from typing import Any

from .._errors import SafehubError, escape_untrusted
from .._records import record
from ._verdict import EXIT_CODES, worst

__all__ = ["BatchItem", "read_batch", "audit_one", "audit_batch", "write_reports", "VOLATILE_KEYS"]

logger = logging.getLogger("safehub")

MAX_BATCH = 10_000
# Keys whose values are timings or timestamps: the only ones that differ between two
# audits of one deterministic repo (tests compare reports without them).
VOLATILE_KEYS = frozenset({"generated_at", "timings", "wall_s", "sandbox_wall_s", "peak_rss_bytes", "cpu_s",
                           "peak_pids"})


@record(frozen=True)
class BatchItem:
    """One line of a batch file: a repo and the entrypoints to audit (none: all)."""

    repo: str
    entrypoints: tuple[str, ...] = field(default=())


def read_batch(path: str | Path) -> list[BatchItem]:
    """One repo per line: ``REPO [ENTRYPOINT ...]``; blank lines and ``#`` comments skipped."""
    items: list[BatchItem] = []
    text = Path(path).read_text(encoding="utf-8")
    for number, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        repo, *entrypoints = line.split()
        bad = [e for e in entrypoints if not e.isidentifier()]
        if bad:
            raise SafehubError(f"{path}:{number}: {escape_untrusted(bad[0], limit=80)!r} is not an entrypoint name",
                               hint="each line is REPO [ENTRYPOINT ...], separated by spaces")
        items.append(BatchItem(repo, tuple(entrypoints)))
        if len(items) > MAX_BATCH:
            raise SafehubError(f"{path} lists more than {MAX_BATCH} repos", hint="split the batch")
    return items


def audit_one(item: BatchItem, options: dict[str, Any]) -> dict[str, Any]:
    """One repo's report; a repo that cannot be audited at all gives an "error" report."""
    from ._run import audit_repo, error_report

    try:
        return audit_repo(item.repo, entrypoints=list(item.entrypoints) or None, **options)
    except SafehubError as exc:
        return error_report(item.repo, exc)


def strip_volatile(value: Any) -> Any:
    """``value`` without VOLATILE_KEYS, at any depth (for comparing two reports)."""
    if isinstance(value, dict):
        return {k: strip_volatile(v) for k, v in value.items() if k not in VOLATILE_KEYS}
    if isinstance(value, list):
        return [strip_volatile(v) for v in value]
    return value


def _local(items: list[BatchItem], options: dict[str, Any], workers: int,
           done: Callable[[int, dict[str, Any]], None]) -> None:
    import multiprocessing

    # spawn: a fresh interpreter per worker (no forked torch threads or open locks).
    with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn")) as pool:
        futures = {pool.submit(audit_one, item, options): i for i, item in enumerate(items)}
        for future in as_completed(futures):
            done(futures[future], future.result())


def _ray(items: list[BatchItem], options: dict[str, Any], done: Callable[[int, dict[str, Any]], None]) -> None:
    try:
        import ray
    except ImportError:
        raise SafehubError("--ray needs Ray, which is not installed",
                           hint="pip install 'safehub[fleet]' (or pip install ray)") from None
    if not ray.is_initialized():
        ray.init()  # RAY_ADDRESS names a cluster; without it, a local instance
    task = ray.remote(num_cpus=1)(audit_one)
    pending = {task.remote(item, options): i for i, item in enumerate(items)}
    while pending:
        ready, _rest = ray.wait(list(pending), num_returns=1)
        for ref in ready:
            done(pending.pop(ref), ray.get(ref))


def audit_batch(
    items: Iterable[BatchItem], *, workers: int = 2, use_ray: bool = False, progress: bool = False,
    **options: Any,
) -> list[dict[str, Any]]:
    """Every item's report, in the batch's order."""
    items = list(items)
    reports: list[dict[str, Any] | None] = [None] * len(items)
    bar = None
    if progress:
        from tqdm import tqdm

        bar = tqdm(total=len(items), desc="audit", unit="repo")

    def done(index: int, report: dict[str, Any]) -> None:
        reports[index] = report
        if bar is not None:
            bar.set_postfix_str(f"{report['verdict']}: {escape_untrusted(items[index].repo, limit=40)}")
            bar.update(1)

    try:
        if use_ray:
            _ray(items, options, done)
        else:
            _local(items, options, max(1, workers), done)
    finally:
        if bar is not None:
            bar.close()
    return [r for r in reports if r is not None]


def _slug(repo: str) -> str:
    """A file-name-safe name: a folder's last part, or owner_name_ref."""
    if repo.startswith(("/", ".", "~")):
        repo = Path(repo).name
    return re.sub(r"[^A-Za-z0-9._-]+", "_", repo).strip("._")[-80:] or "repo"


def write_reports(reports: list[dict[str, Any]], items: list[BatchItem], out_dir: Path, *, markdown: bool) -> dict[str, Any]:
    """One report file per repo (JSON, plus Markdown with ``markdown``) and ``index.json``."""
    from ._render import format_markdown

    out_dir.mkdir(parents=True, exist_ok=True)
    entries = []
    for number, (item, report) in enumerate(zip(items, reports), 1):
        name = f"{number:04d}-{_slug(item.repo)}"
        (out_dir / f"{name}.json").write_text(json.dumps(report, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
        if markdown:
            (out_dir / f"{name}.md").write_text(format_markdown(report), encoding="utf-8")
        entries.append({"repo": item.repo, "verdict": report["verdict"], "exit_code": report["exit_code"],
                        "report": f"{name}.json"})
    verdicts = [e["verdict"] for e in entries]
    index = {"schema": "safehub-audit-index", "schema_version": 1, "repos": entries,
             "counts": {v: verdicts.count(v) for v in EXIT_CODES if v in verdicts},
             "verdict": worst(verdicts), "exit_code": EXIT_CODES[worst(verdicts)]}
    (out_dir / "index.json").write_text(json.dumps(index, indent=2, ensure_ascii=True) + "\n", encoding="utf-8")
    return index
