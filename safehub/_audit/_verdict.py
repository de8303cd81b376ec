"""Findings from the telemetry, the verdict, and the exit code a CI pipeline gates on.

Exit codes of ``safehub audit`` (docs/audit-report.md, the README):

====  ==========  ==============================================================
0     clean       no finding of severity high or medium; every entrypoint ran
11    findings    at least one high or medium finding (static or dynamic)
12    failed      an entrypoint failed, timed out or hit a limit, or its output was refused
13    error       (batch only) a repo could not be audited at all (fetch, hubconf)
2-10  (errors)    a single-repo audit that could not start: the usual safehub error codes
====  ==========  ==============================================================

Precedence: error > failed > findings > clean (a batch exits with its worst repo).
"""

from __future__ import annotations

from typing import Any

__all__ = ["EXIT_CODES", "dynamic_findings", "decide", "worst", "SENSITIVE_PATHS"]

EXIT_CODES = {"clean": 0, "findings": 20, "failed": 21, "error": 22}
_RANK = {"clean": 0, "findings": 1, "failed": 2, "error": 3}

# Paths (substrings) that hold credentials on a developer machine or a CI runner.
SENSITIVE_PATHS = ("/.ssh", "/.aws", "/.gnupg", "/.netrc", "/.docker/config.json", "/.kube", "/.config/gcloud",
                   "/.git-credentials", "/.pypirc", "/etc/shadow", "/etc/sudoers", "/.bash_history", "id_rsa",
                   "id_ed25519", "/.azure", "/.npmrc")  # fmt: skip


def _under(path: str, folders: list[str]) -> bool:
    return any(path == f or path.startswith(f.rstrip("/") + "/") for f in folders if f)


def _finding(entry: str, event: dict[str, Any], category: str, severity: str, what: str, detail: str) -> dict[str, Any]:
    return {"entrypoint": entry, "phase": event.get("phase"), "category": category, "severity": severity,
            "what": what, "detail": detail}


def dynamic_findings(entry: dict[str, Any], repo_dir: str) -> list[dict[str, Any]]:
    """What an entrypoint's telemetry shows, one finding per distinct event worth a look."""
    name = entry["name"]
    own = [repo_dir]
    scratch = list(entry.get("job_roots") or [])
    out: list[dict[str, Any]] = []
    for e in entry["telemetry"]["events"]:
        kind = e["kind"]
        if kind in ("connect", "http", "dns"):
            detail = e.get("address") or e.get("url") or e.get("host") or ""
            out.append(_finding(name, e, "network", "high", f"network {e.get('op') or kind}", detail))
        elif kind == "subprocess":
            out.append(_finding(name, e, "process", "high", f"starts a process ({e['op']})", e["target"]))
        elif kind == "open":
            path = e["path"]
            if any(s in path for s in SENSITIVE_PATHS):
                out.append(_finding(name, e, "secrets", "high", f"opens a credentials path ({e['mode']})", path))
            elif e["mode"] == "w" and not _under(path, scratch):
                where = "inside the repo" if _under(path, own) else "outside its folder"
                out.append(_finding(name, e, "write_outside", "high", f"opens a file for writing {where}", path))
            elif not _under(path, own + scratch) and not path.startswith(("/proc/", "/sys/", "/dev/")):
                out.append(_finding(name, e, "read_outside", "info", "reads a file outside the repo", path))
        elif kind == "fs" and not all(_under(p, scratch) for p in e["path"].split(" -> ")):
            out.append(_finding(name, e, "write_outside", "high", f"changes the file system ({e['op']})", e["path"]))
        elif kind == "refused":
            out.append(_finding(name, e, "refused", "medium", f"refused by the sandbox: {e['op']} ({e['errno']})",
                                e["target"]))
        elif kind == "ctypes":
            out.append(_finding(name, e, "native", "medium", "loads a shared library with ctypes", e["name"]))
        elif kind == "sys_path":
            out.append(_finding(name, e, "sys_path", "medium", f"sys.path entry {e['op']}", e["path"]))
        elif kind == "hook":
            out.append(_finding(name, e, "tamper", "high", "adds its own audit hook", e["op"]))
        elif kind == "signal":
            out.append(_finding(name, e, "signal", "medium", f"sends a signal ({e['op']})", e["target"]))
        elif kind == "import":
            out.append(_finding(name, e, "import", "info", "imports a non-stdlib module", e["module"]))
    t = entry["telemetry"]
    if t["skipped_lines"]:
        out.append({"entrypoint": name, "phase": None, "category": "telemetry", "severity": "medium",
                    "what": "telemetry lines that break the contract (written by repo code?)",
                    "detail": f"{t['skipped_lines']} line(s) skipped"})
    if entry["status"] == "ok" and not t["complete"]:
        out.append({"entrypoint": name, "phase": None, "category": "telemetry", "severity": "medium",
                    "what": "the run ended normally but its telemetry has no closing line (closed or broken by repo code?)",
                    "detail": t.get("unreadable") or "no summary line"})
    if t["dropped"] or t["truncated"]:
        out.append({"entrypoint": name, "phase": None, "category": "telemetry", "severity": "info",
                    "what": "more events than the audit keeps", "detail": f"{t['dropped']} event(s) not listed"})
    return out


def decide(report: dict[str, Any]) -> tuple[str, int]:
    """The verdict and exit code of one repo's report."""
    if report.get("error"):
        verdict = "error"
    elif any(e["status"] != "ok" for e in report["dynamic"]["entrypoints"]):
        verdict = "failed"
    elif any(f["severity"] in ("high", "medium") for f in report["static"]["findings"] + report["dynamic"]["findings"]):
        verdict = "findings"
    else:
        verdict = "clean"
    return verdict, EXIT_CODES[verdict]


def worst(verdicts: list[str]) -> str:
    return max(verdicts, key=lambda v: _RANK[v], default="clean")
