"""A successful sandbox probe, remembered between processes: ``<hub>/memo/probe-<backend>.json``.

Probing bubblewrap starts a real sandbox (``/bin/true`` under the full argument
list, seccomp filter included): about 50 ms of a fresh process's load, most of
it before the sandbox that does the work can start. The memo keeps a success only,
with everything the outcome depends on: the tools' stat identity, the kernel and
boot, the user, and the sysctls that switch user namespaces on and off. It expires
after an hour whatever happens.

Only a success is remembered, so the memo can never make safehub choose a weaker
backend: at worst a stale one lets a load try bubblewrap where it has stopped
working, and that run fails closed with bubblewrap's own error. A remembered probe
also skips building the seccomp filter (a load that a warm worker answers needs
none); every sandbox start builds it and refuses to start without it
(``BwrapBackend._prepare``), and the key holds the pyseccomp module's identity.
``safehub doctor`` always probes afresh.
"""

from __future__ import annotations

import json
import os
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

from .._fsutil import read_memo, write_memo

__all__ = ["probe_key", "remembered", "remember"]

MEMO_VERSION = 1
TTL_S = 3600.0
MAX_BYTES = 64 * 1024
_SYSCTLS = ("/proc/sys/kernel/random/boot_id", "/proc/sys/user/max_user_namespaces",
            "/proc/sys/kernel/unprivileged_userns_clone", "/proc/sys/kernel/apparmor_restrict_unprivileged_userns",
            "/proc/sys/kernel/yama/ptrace_scope")


def _read(path: str) -> str | None:
    try:
        with open(path, encoding="ascii", errors="replace") as f:
            return f.read(256).strip()
    except OSError:
        return None


def _ident(path: str) -> list[int] | None:
    try:
        st = os.stat(path)
    except OSError:
        return None
    return [st.st_dev, st.st_ino, st.st_mode, st.st_size, st.st_mtime_ns, st.st_ctime_ns]


def probe_key(tools: Iterable[str], **settings: Any) -> dict[str, Any]:
    """What a probe's outcome depends on, for ``tools`` (executables it runs) and
    the backend's own ``settings`` (JSON values)."""
    uname = os.uname()
    return {
        "tools": {t: _ident(t) for t in tools},
        "kernel": [uname.release, uname.version, uname.machine],
        "ids": [os.geteuid(), os.getegid()],
        "sysctls": {p: _read(p) for p in _SYSCTLS},
        "settings": settings,
    }


def _path(hub: Path, backend: str) -> Path:
    return hub / "memo" / f"probe-{backend}.json"


def remembered(hub: Path, backend: str, key: dict[str, Any]) -> bool:
    """True when a probe with exactly ``key`` succeeded here less than an hour ago."""
    doc = read_memo(_path(hub, backend), MAX_BYTES)
    if not isinstance(doc, dict) or doc.get("version") != MEMO_VERSION:
        return False
    at = doc.get("at")
    if not isinstance(at, (int, float)) or not 0 <= time.time() - at < TTL_S:
        return False
    return doc.get("key") == json.loads(json.dumps(key))


def remember(hub: Path, backend: str, key: dict[str, Any]) -> None:
    """Record a successful probe (best effort: a memo not written is one probe more)."""
    write_memo(_path(hub, backend), {"version": MEMO_VERSION, "at": time.time(), "key": key})
