"""The dynamic part of an audit: each entrypoint runs in the sandbox with telemetry on.

One normal load per entrypoint (same env, sandbox, download broker and return
channel as ``safehub.load``), with the job's ``audit`` flag set so the runner records
what repo code does (runners/_audit_hook.py). For every sandbox run (a load that
asks for downloads runs twice) the host reads the telemetry and the watchdog's
numbers before the job folder goes, whether the run succeeded, failed or was killed.
"""

from __future__ import annotations

import hashlib
import logging
import os
import time
from pathlib import Path
from typing import Any

from .._errors import SafehubError, SandboxLimitError, escape_untrusted
from ._events import empty_telemetry, read_audit_events

__all__ = ["run_entrypoint", "hash_weights"]

logger = logging.getLogger("safehub")

_HASH_CHUNK = 4 * 1024 * 1024


class _Observer:
    """Collects telemetry and resource numbers from every sandbox run of one load."""

    def __init__(self) -> None:
        self.telemetry = empty_telemetry()
        self.runs: list[dict[str, Any]] = []
        self.job_roots: list[str] = []
        self.asked: list[str] = []  # URLs the entrypoint asked the download broker for

    def __call__(self, out_dir: Path, sandbox: Any) -> None:
        self.job_roots.append(str(Path(out_dir).parent))
        try:
            got = read_audit_events(out_dir)
        except (OSError, ValueError) as exc:  # a folder the run left in a state nothing can read
            got = empty_telemetry()
            got["unreadable"] = f"{type(exc).__name__}: {exc}"[:200]
        merged = self.telemetry
        keys = {_key(e) for e in merged["events"]}
        for event in got["events"]:
            if _key(event) not in keys:
                merged["events"].append(event)
                keys.add(_key(event))
        for kind, n in got["counts"].items():
            merged["counts"][kind] = merged["counts"].get(kind, 0) + n
        for field in ("total", "dropped", "skipped_lines"):
            merged[field] += got[field]
        merged["complete"] = got["complete"] if not self.runs else merged["complete"] and got["complete"]
        merged["truncated"] = merged["truncated"] or got["truncated"]
        self._asked(out_dir)
        details = sandbox.details if isinstance(sandbox.details, dict) else {}
        self.runs.append({
            "backend": sandbox.backend,
            "exit_status": sandbox.returncode,
            "killed_by": sandbox.killed_by,
            "wall_s": round(float(sandbox.wall_s), 3),
            "peak_rss_bytes": int(details.get("peak_rss") or 0),
            "peak_pids": int(details.get("peak_pids") or 0),
            "cpu_s": float(details.get("peak_cpu_s") or 0.0),
        })


    def _asked(self, out_dir: Path) -> None:
        from .._channel import needs_download_urls, read_result

        try:
            urls = needs_download_urls(read_result(out_dir))
        except SafehubError:  # no result (killed) or a refused one: judged by the load itself
            return
        self.asked.extend(u for u in urls if u not in self.asked)


def _key(event: dict[str, Any]) -> tuple[Any, ...]:
    return tuple(sorted((k, str(v)) for k, v in event.items() if k != "phase"))


def hash_weights(out_dir: Path, weights: Any = None) -> list[dict[str, Any]]:
    """sha256 of every tensor in out/weights.safetensors (or the job's sealed weights
    memfd, ``weights``), in key order; call only after the return channel accepted
    the job (keys, dtypes, shapes and offsets checked)."""
    from .._channel._files import open_output_file
    from .._channel._limits import ChannelLimits
    from .._channel._weights import read_header
    from .._contract import WEIGHTS_FILE

    limits = ChannelLimits()
    if weights is not None:
        fd = os.dup(weights.sealed_fd(limits))  # the job keeps its own descriptor
    else:
        fd = open_output_file(out_dir, WEIGHTS_FILE, max_bytes=limits.weights_bytes)
    try:
        entries = read_header(fd, limits)
        out = []
        for key in sorted(entries):
            entry = entries[key]
            h = hashlib.sha256()
            offset, end = entry.data_start + entry.begin, entry.data_start + entry.end
            while offset < end:
                chunk = os.pread(fd, min(_HASH_CHUNK, end - offset), offset)
                if not chunk:
                    raise SafehubError(f"weights.safetensors ended early while hashing {key!r}")
                h.update(chunk)
                offset += len(chunk)
            out.append({"name": key, "dtype": entry.dtype, "shape": list(entry.shape), "sha256": h.hexdigest()})
        return out
    finally:
        os.close(fd)


def _modules(obj: Any) -> list[Any]:
    import torch

    from .._namespace import SafehubNamespace

    if isinstance(obj, torch.nn.Module):
        return [obj]
    if isinstance(obj, SafehubNamespace):
        obj = obj.safehub_attrs()
    items = obj.values() if isinstance(obj, dict) else obj if isinstance(obj, (tuple, list)) else []
    return [m for item in items for m in _modules(item)]


def run_entrypoint(
    name: str, *, repo: Any, hub: Any, hub_dir: Path, sandbox: Any, limits: Any, verbose: bool,
    dependencies_mode: str | None = None, extra_dependencies: Any = None,
) -> dict[str, Any]:
    """Load ``name`` with its default arguments under audit; never raises a SafehubError
    (a failed run is part of the report)."""
    from .._api import _run
    from .._channel import read_summary, rebuild_from_output
    from .._fetch._downloads import DownloadBudget
    from .._jobs import JobRequest

    observer = _Observer()
    budget = DownloadBudget(limits)
    started = time.monotonic()
    report: dict[str, Any] = {"name": name, "status": "ok", "error": None}
    try:
        with budget.discard_on_error():
            job, _env = _run(
                JobRequest(action="load", repo_dir=repo.path, entrypoint=name,
                           export={"mode": "auto", "deferred": True}, audit=True),
                repo=repo, hub=hub, hub_dir=hub_dir, verbose=verbose, sandbox=sandbox, budget=budget,
                dependencies_mode=dependencies_mode, extra_dependencies=extra_dependencies, observe=observer,
            )
            with job:
                obj = rebuild_from_output(job.out_dir, weights=job.weights)  # every check of a normal load
                summary = read_summary(job.result)
                report["output"] = {
                    "root": summary.get("root"),
                    "modes": sorted({str(m.get("mode")) for m in summary.get("modules", {}).values() if m.get("mode")}),
                    "parameters": sum(p.numel() for m in _modules(obj) for p in m.parameters()),
                    "tensors": hash_weights(job.out_dir, job.weights),
                }
    except SafehubError as exc:
        report["status"] = "timeout" if isinstance(exc, SandboxLimitError) and exc.limit == "timeout" else "failed"
        report["error"] = {
            "type": type(exc).__name__,
            "message": escape_untrusted(exc.message, limit=2000),
            "exit_code": exc.exit_code,
            "limit": getattr(exc, "limit", None),
            "remote_type": escape_untrusted(getattr(exc, "remote_type", "") or "", limit=200) or None,
        }
    report["wall_s"] = round(time.monotonic() - started, 3)
    report["downloads"] = {
        "asked": list(observer.asked),
        "fetched": [{k: d.get(k) for k in ("url", "bytes", "sha256", "cached")} for d in budget.summary()],
    }
    runs = observer.runs
    report["sandbox_runs"] = runs
    report["resources"] = {
        "backend": runs[-1]["backend"] if runs else None,
        "exit_status": runs[-1]["exit_status"] if runs else None,
        "killed_by": runs[-1]["killed_by"] if runs else None,
        "sandbox_wall_s": round(sum(r["wall_s"] for r in runs), 3),
        "peak_rss_bytes": max((r["peak_rss_bytes"] for r in runs), default=0),
        "cpu_s": round(sum(r["cpu_s"] for r in runs), 3),
    }
    report["telemetry"] = observer.telemetry
    report["job_roots"] = observer.job_roots  # where the repo's "own" scratch folders were (classification)
    return report
