"""The human views of an audit report: a terminal summary and a Markdown report.

Every string that came from the repo or the sandbox (names, paths, docstrings,
event details, error messages) goes through :func:`show` (terminal) or :func:`md`
(Markdown): control, bidi, zero-width and other invisible or format characters
appear as code points (``\\u202e``), never as themselves.
"""

from __future__ import annotations

import unicodedata
from typing import Any

from ._verdict import EXIT_CODES

__all__ = ["show", "md", "format_text", "format_markdown", "format_batch_text"]

_INVISIBLE = frozenset({"Cc", "Cf", "Cs", "Co", "Cn", "Zl", "Zp"})
_TOP = 10  # findings in the terminal summary
_MD_SPECIAL = {"|": "\\|", "`": "\\`", "*": "\\*", "_": "\\_", "[": "\\[", "]": "\\]", "#": "\\#", "~": "\\~",
               "<": "&lt;", ">": "&gt;", "&": "&amp;", "\\": "\\\\", "!": "\\!"}


def show(value: Any, limit: int = 300) -> str:
    """One line, printable: invisible and control characters as ``\\uXXXX``, cut to ``limit``."""
    text = value if isinstance(value, str) else "" if value is None else str(value)
    out: list[str] = []
    for ch in text[: limit + 1]:
        if ch == "\\":
            out.append("\\\\")
        elif ch != " " and (unicodedata.category(ch) in _INVISIBLE or ch.isspace()):
            code = ord(ch)
            out.append(f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}" if code < 0x10000 else f"\\U{code:08x}")
        else:
            out.append(ch)
    shown = "".join(out)
    return shown[:limit] + "..." if len(text) > limit else shown


def md(value: Any, limit: int = 300) -> str:
    """:func:`show`, then Markdown's own specials escaped (a table cell stays one cell)."""
    return "".join(_MD_SPECIAL.get(ch, ch) for ch in show(value, limit))


def _findings(report: dict[str, Any]) -> list[dict[str, Any]]:
    order = {"high": 0, "medium": 1, "info": 2}
    both = [dict(f, where=f"{f['file']}:{f['line']}") for f in report["static"]["findings"]]
    both += [dict(f, where=f"{f['entrypoint']} ({f['phase'] or 'run'})") for f in report["dynamic"]["findings"]]
    return sorted(both, key=lambda f: order.get(f["severity"], 3))


def _mib(n: int) -> str:
    return f"{n / 2**20:.1f} MiB"


def format_text(report: dict[str, Any]) -> str:
    ident = report["identity"]
    head = f"audit of {show(ident.get('repo'))}: {report['verdict'].upper()} (exit {report['exit_code']})"
    if report.get("error"):
        err = report["error"]
        return f"{head}\n  could not audit: {show(err['type'])}: {show(err['message'], 600)}"
    static, dynamic = report["static"], report["dynamic"]
    sev = report["summary"]["severity"]
    lines = [
        head,
        f"  identity: {ident['source']} sha {ident.get('sha') or '-'} ref {show(ident.get('resolved_ref') or ident.get('ref') or '-')}"
        f", tree sha256 {ident['tree_sha256'][:16]}..., {ident['files']} files, {_mib(ident['bytes'])}",
        f"  entrypoints: {', '.join(show(e['name'], 60) for e in static['hubconf']['entrypoints']) or '(none)'}",
        f"  dependencies declared: {', '.join(show(d, 80) for d in static['hubconf']['dependencies']['declared']) or '-'}",
        f"  third-party imports: {', '.join(show(d, 60) for d in static['imports']['third_party']) or '-'}",
        f"  findings: {sev.get('high', 0)} high, {sev.get('medium', 0)} medium, {sev.get('info', 0)} info; "
        f"{len(static['pickles'])} pickle file(s), {len(static['symlinks'])} symlink(s), "
        f"{len(static['large_binaries'])} large binary file(s)",
    ]
    for e in dynamic["entrypoints"]:
        res = e["resources"]
        if e["status"] == "ok":
            out = e["output"]
            what = (f"ok: {'/'.join(out['modes']) or '-'} {out['root']}, {out['parameters']:,} parameters, "
                    f"{len(out['tensors'])} tensors")
        else:
            err = e["error"] or {}
            what = f"{e['status'].upper()}: {show(err.get('type'))}: {show(err.get('message'), 200)}"
        counts = ", ".join(f"{n} {k}" for k, n in sorted(e["telemetry"]["counts"].items()))
        lines.append(f"  run {show(e['name'], 60)}: {what}")
        lines.append(f"      {e['wall_s']:.1f} s wall, {res['cpu_s']:.1f} s CPU, peak {_mib(res['peak_rss_bytes'])}, "
                     f"exit status {res['exit_status']}; events: {counts or 'none'}")
    top = [f for f in _findings(report) if f["severity"] != "info"][:_TOP]
    if top:
        lines.append("  top findings:")
        for f in top:
            lines.append(f"    {f['severity'].upper():6} {f['category']:<15} {show(f['where'], 80)}  "
                         f"{show(f['what'], 80)}: {show(f['detail'], 120)}")
    if dynamic.get("not_run"):
        lines.append(f"  not run: {', '.join(show(n, 60) for n in dynamic['not_run'])}")
    if dynamic["ran"]:
        lines.append("  note: the dynamic part is telemetry, not a security boundary (the sandbox is the boundary)")
    return "\n".join(lines)


def format_batch_text(index: dict[str, Any]) -> str:
    lines = [f"audited {len(index['repos'])} repo(s): " + ", ".join(f"{n} {v}" for v, n in index["counts"].items())
             + f" (exit {index['exit_code']})"]
    for item in index["repos"]:
        lines.append(f"  {item['verdict'].upper():9} {show(item['repo'], 100)}  -> {show(item['report'], 200)}")
    return "\n".join(lines)


def format_markdown(report: dict[str, Any]) -> str:
    ident = report["identity"]
    out = [f"# safehub audit: {md(ident.get('repo'))}", "",
           f"**Verdict: {report['verdict']}** (exit code {report['exit_code']}); "
           f"schema {report['schema']} v{report['schema_version']}, safehub {md(report['safehub_version'])}", ""]
    if report.get("error"):
        err = report["error"]
        out += [f"The repo could not be audited: {md(err['type'])}: {md(err['message'], 1000)}", ""]
        return "\n".join(out)
    static, dynamic = report["static"], report["dynamic"]
    out += ["## Identity", "", "| | |", "|---|---|"]
    for key in ("source", "host", "ref", "resolved_ref", "sha", "archive_sha256", "tree_sha256", "files", "bytes"):
        out.append(f"| {key} | {md(ident.get(key) if ident.get(key) is not None else '-')} |")
    out += ["", "## Static part", "", "Nothing in this part ran: Python files were parsed with `ast`, pickles walked "
            "opcode by opcode with `pickletools` (never unpickled).", "", "### Entrypoints", "",
            "| name | signature | doc |", "|---|---|---|"]
    for ep in static["hubconf"]["entrypoints"]:
        doc = (ep["doc"] or "").strip().splitlines()[:1]
        out.append(f"| {md(ep['name'], 80)} | {md(ep['signature'] or '?', 200)} | {md(doc[0] if doc else '', 200)} |")
    deps = static["hubconf"]["dependencies"]
    resolved = deps["resolved"].get("entries")
    out += ["", f"Dependencies declared: {md(', '.join(deps['declared']) or '-', 1000)}; "
            f"resolved ({md(deps['resolved'].get('mode'))}): {md(', '.join(resolved) if resolved else '-', 1000)}.",
            f"Third-party imports found by scanning: {md(', '.join(static['imports']['third_party']) or '-', 1000)}.", ""]
    out += ["### Findings", ""]
    findings = _findings(report)
    if not findings:
        out.append("None.")
    else:
        out += ["| severity | category | where | what | detail |", "|---|---|---|---|---|"]
        for f in findings[:500]:
            out.append(f"| {f['severity']} | {f['category']} | {md(f['where'], 120)} | {md(f['what'], 120)} "
                       f"| {md(f['detail'], 200)} |")
        if len(findings) > 500:
            out.append(f"\n{len(findings) - 500} more in the JSON report.")
    out += ["", "### Pickle files", ""]
    if not static["pickles"]:
        out.append("None.")
    for p in static["pickles"]:
        names = ", ".join(f"{md(g['name'], 120)} ({g['class']})" for g in p["globals"]) or "no globals"
        extra = f"; unreadable: {md(p['unreadable'])}" if p["unreadable"] else ""
        out.append(f"- {md(p['path'], 200)} ({p['format']}): {names}{extra}")
    if static["symlinks"] or static["large_binaries"]:
        out += ["", "### Symlinks and large binary files", ""]
        out += [f"- link {md(s['path'])} -> {md(s['target'])}" for s in static["symlinks"]]
        out += [f"- {md(b['path'])}: {_mib(b['bytes'])}" for b in static["large_binaries"]]
    out += ["", "## Dynamic part", "", f"> {dynamic['note']}", ""]
    if not dynamic["ran"]:
        out.append("Not run (static only).")
    if dynamic.get("not_run"):
        out += ["Not run (a static reading cannot confirm them as entrypoints, or safehub.load refuses the name): "
                + ", ".join(md(n, 80) for n in dynamic["not_run"]) + ".", ""]
    for e in dynamic["entrypoints"]:
        res = e["resources"]
        out += [f"### `{md(e['name'], 80)}`: {e['status']}", ""]
        if e["status"] == "ok":
            o = e["output"]
            out.append(f"Returned a {o['root']} ({', '.join(o['modes']) or '-'}), {o['parameters']:,} parameters, "
                       f"{len(o['tensors'])} tensors.")
        else:
            err = e["error"] or {}
            out.append(f"{md(err.get('type'))}: {md(err.get('message'), 1000)}")
        out += ["", f"Wall {e['wall_s']:.1f} s, CPU {res['cpu_s']:.1f} s, peak memory {_mib(res['peak_rss_bytes'])}, "
                f"exit status {res['exit_status']}, backend {res['backend']}, killed by {res['killed_by'] or '-'}.", ""]
        asked = e["downloads"]["asked"]
        if asked:
            out.append("Downloads asked of the host: " + ", ".join(md(u, 200) for u in asked) + ".")
        events = e["telemetry"]["events"]
        if events:
            out += ["", "| phase | kind | detail |", "|---|---|---|"]
            for ev in events[:300]:
                detail = " ".join(f"{k}={ev[k]}" for k in ev if k not in ("kind", "phase"))
                out.append(f"| {ev['phase']} | {ev['kind']} | {md(detail, 300)} |")
            if len(events) > 300:
                out.append(f"\n{len(events) - 300} more events in the JSON report.")
        out.append("")
    return "\n".join(out) + "\n"
