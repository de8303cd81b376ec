"""``safehub doctor``: what isolation this machine can give.

Reports, without running any repo code: whether bubblewrap works (by starting
an empty sandbox with every layer a job gets), whether unprivileged user
namespaces are allowed, the Landlock ABI and what it covers, whether the seccomp
filter can be built (and its size per backend), whether a delegated cgroup v2 is
available, which backend ``sandbox="auto"`` would pick, and whether safehub's
own modules have current bytecode (``_bytecode.py``).
"""

from __future__ import annotations

import os
import platform
import subprocess
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

__all__ = ["doctor_report", "format_report"]


def _read(path: str) -> str | None:
    try:
        return Path(path).read_text().strip()
    except OSError:
        return None


def _user_namespaces() -> dict[str, Any]:
    info: dict[str, Any] = {
        "max_user_namespaces": _read("/proc/sys/user/max_user_namespaces"),
        "unprivileged_userns_clone": _read("/proc/sys/kernel/unprivileged_userns_clone"),
        "apparmor_restrict_unprivileged_userns": _read("/proc/sys/kernel/apparmor_restrict_unprivileged_userns"),
    }
    # The real test: can a process create one (as this user)?
    code = "import ctypes,sys; l=ctypes.CDLL(None,use_errno=True); sys.exit(0 if l.unshare(0x10000000)==0 else ctypes.get_errno())"
    try:
        done = subprocess.run([sys.executable, "-I", "-S", "-c", code], capture_output=True, timeout=20, env={})
        info["usable"] = done.returncode == 0
        if done.returncode:
            info["error"] = os.strerror(done.returncode) if 0 < done.returncode < 200 else f"exit {done.returncode}"
    except (OSError, subprocess.TimeoutExpired) as exc:
        info["usable"] = False
        info["error"] = str(exc)
    return info


def _bwrap(env: Mapping[str, str]) -> dict[str, Any]:
    from ._sandbox import BwrapBackend

    backend = BwrapBackend(env=env)
    info: dict[str, Any] = {"path": backend.bwrap, "version": None}
    try:
        done = subprocess.run([backend.bwrap, "--version"], capture_output=True, timeout=10, env={})
        info["version"] = done.stdout.decode(errors="replace").strip() or None
    except OSError:
        pass
    problem = backend.check(fresh=True)  # never the remembered outcome of an earlier probe
    info["usable"] = problem is None
    if problem:
        info["problem"] = problem
    info["runs_job_as"] = "a fresh unprivileged uid (host is root)" if os.geteuid() == 0 else "the calling user"
    return info


def _landlock(env: Mapping[str, str]) -> dict[str, Any]:
    from ._sandbox import LandlockBackend

    backend = LandlockBackend(env=env)
    abi = backend.abi
    problem = backend.check()
    info: dict[str, Any] = {
        "abi": abi,
        "lsm_list": _read("/sys/kernel/security/lsm"),
        "filesystem": abi >= 1,
        "tcp_bind_connect_denied": abi >= 4,
        "signal_and_abstract_socket_scoping": abi >= 6,
        "usable": problem is None,
    }
    if problem:
        info["problem"] = problem
    return info


def _libseccomp_version() -> str | None:
    import ctypes
    import ctypes.util

    class Version(ctypes.Structure):
        _fields_ = [("major", ctypes.c_uint), ("minor", ctypes.c_uint), ("micro", ctypes.c_uint)]

    name = ctypes.util.find_library("seccomp")
    if name is None:
        return None
    try:
        lib = ctypes.CDLL(name)
        lib.seccomp_version.restype = ctypes.POINTER(Version)
        v = lib.seccomp_version().contents
    except (OSError, AttributeError):
        return None
    return f"libseccomp {v.major}.{v.minor}.{v.micro}"


def _seccomp(env: Mapping[str, str]) -> dict[str, Any]:
    """The syscall filter every backend installs (safehub/_sandbox/_seccomp_policy.py)."""
    from ._sandbox import _seccomp as sc

    info: dict[str, Any] = {
        "enabled": sc.enabled(env),
        "library": _libseccomp_version(),
        "bindings": "pyseccomp",
        "session_keyring": "fresh per job (KEYCTL_JOIN_SESSION_KEYRING)",
        "instructions": {},
    }
    problem = sc.problem()  # can it be built here, whatever the opt-out says
    info["usable"] = problem is None
    if problem:
        info["problem"] = problem
    else:
        info["instructions"] = {v: len(sc.build(v)) // 8 for v in ("bwrap", "landlock", "process")}
        info["denied"] = sc.describe("bwrap", True)["seccomp_denied"]
        info["landlock_also_denies"] = ["socket", "SysV IPC", "POSIX message queues"]
    if not info["enabled"]:
        info["warning"] = f"{sc.OPT_OUT}=0: jobs run WITHOUT the seccomp filter"
    return info


def _cgroup() -> dict[str, Any]:
    """cgroup v2 and whether this process may manage a subtree of its own."""
    info: dict[str, Any] = {"v2_mount": None, "own_cgroup": None, "controllers": [], "delegated": False}
    mounts = _read("/proc/self/mounts") or ""
    for line in mounts.splitlines():
        fields = line.split()
        if len(fields) >= 3 and fields[2] == "cgroup2":
            info["v2_mount"] = fields[1]
            break
    info["v1_controllers_mounted"] = sorted(
        {opt for line in mounts.splitlines() if len(line.split()) >= 4 and line.split()[2] == "cgroup"
         for opt in line.split()[3].split(",") if opt in ("memory", "pids", "cpu", "freezer")}
    )
    own = None
    for line in (_read("/proc/self/cgroup") or "").splitlines():
        if line.startswith("0::"):
            own = line[3:]
    if info["v2_mount"] and own is not None:
        folder = Path(info["v2_mount"]) / own.lstrip("/")
        info["own_cgroup"] = str(folder)
        controllers = (_read(str(folder / "cgroup.controllers")) or "").split()
        info["controllers"] = controllers
        info["delegated"] = (
            {"memory", "pids"} <= set(controllers)
            and os.access(folder, os.W_OK)
            and os.access(folder / "cgroup.subtree_control", os.W_OK)
        )
    from ._sandbox._cgroup import PidsCgroup

    probe = PidsCgroup.create(1) if os.geteuid() == 0 else None
    info["pids_cgroup_for_root_jobs"] = probe.version if probe else None
    if probe is not None:
        probe.remove()
    info["note"] = (
        "limits are rlimits set inside the sandbox plus a watchdog on the whole process tree; "
        "jobs that run as root (landlock/process as root) also get a pids cgroup"
    )
    return info


def _worker_report(env: Mapping[str, str]) -> dict[str, Any]:
    """The warm worker (safehub/_worker.py): on or off, the idle timeout, the
    workers running now, and whether the last recorded load ran in one."""
    import json

    from ._config import hub_path
    from ._sandbox import Limits
    from ._worker import enabled, idle_seconds, running_workers

    hub = hub_path(env)
    last: Any = None
    try:
        with open(hub / "history.jsonl", "rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 65536))
            lines = f.read().splitlines()
        record = json.loads(lines[-1]) if lines else {}
        used = ((record.get("sandbox_details") or {}).get("worker") or {}).get("used")
        last = bool(used) if used is not None else None
    except (OSError, ValueError, AttributeError, IndexError):
        pass
    return {"enabled": enabled(Limits(), dict(env)), "idle_s": idle_seconds(dict(env)),
            "running": running_workers(hub), "last_load_used_worker": last}


def _weights_report() -> dict[str, Any]:
    """How weights come back (safehub/_channel/_huge_tmpfs.py, _weights_pool.py,
    _memfd.py) and what decides how fast: pages allocated while loading, 4 KiB or
    2 MiB, or the weights pool's warm spare."""
    from ._channel import _huge_tmpfs, _weights_pool
    from ._channel._memfd import SHMEM_ENABLED, shmem_huge_setting

    setting = shmem_huge_setting()
    huge = _huge_tmpfs.status()
    pool_mb = huge.get("weights_pool_mb")
    note = None
    if pool_mb:
        when = {1: "second", 2: "third"}[_weights_pool.jobs_before_first_spare()]  # the job after the first spare's
        note = (f"from a process's {when} bwrap job on, loads take the weights pool's warm spare: up to {pool_mb} MiB "
                f"held while it waits, freed after {_weights_pool.IDLE_S:g} s with no load ({_weights_pool.ENV}=N "
                "sets the cap, 0 turns it off)")
    elif not huge["huge_tmpfs"] and _huge_tmpfs.reports_free_pages() and not _weights_pool.pool_bytes():
        note = ("weights move through 4 KiB pages (11-14% of memcpy on the 2-core test machine); on a VM that "
                "reports free pages, 2 MiB pages are fast only when already allocated: the weights pool keeps a "
                f"warm spare for the next load (54-74% there; benchmarks/bench_weights_path.py --idle-s 5) unless "
                f"{_weights_pool.ENV}=0, as here")
    elif not huge["huge_tmpfs"] and setting in ("never", "deny", None):
        note = (f"weights move through 4 KiB pages: no huge-page tmpfs ({huge['why_not']}), and memfds follow "
                f"{SHMEM_ENABLED}; root can set it to within_size for 2 MiB pages (4-5x faster on the 2-core "
                "test machine: benchmarks/bench_weights_path.py)")
    bwrap = "a file on safehub's own huge-page tmpfs" if huge["huge_tmpfs"] else "sealed memfd"
    if pool_mb:
        bwrap += ", or the weights pool's warm spare on safehub's huge-page tmpfs"
    return {"channel": f"{bwrap} (bwrap and its warm worker); sealed memfd (landlock, process); file otherwise",
            "huge_tmpfs": huge, "shmem_enabled": setting, "note": note}


def doctor_report(env: Mapping[str, str] | None = None) -> dict[str, Any]:
    """Everything ``safehub doctor --json`` prints. JSON-able."""
    from ._bytecode import bytecode_report
    from ._errors import SandboxUnavailableError
    from ._sandbox import get_backend

    env = os.environ if env is None else env
    report: dict[str, Any] = {
        "platform": {
            "system": platform.system(),
            "kernel": platform.release(),
            "machine": platform.machine(),
            "python": sys.version.split()[0],
            "euid": os.geteuid(),
        },
        "bwrap": _bwrap(env),
        "user_namespaces": _user_namespaces(),
        "landlock": _landlock(env),
        "seccomp": _seccomp(env),
        "cgroup": _cgroup(),
        "requested": env.get("SAFEHUB_SANDBOX") or "auto",
        "worker": _worker_report(env),
        "weights": _weights_report(),
        "bytecode": bytecode_report(),
    }
    try:
        chosen = get_backend(env.get("SAFEHUB_SANDBOX") or "auto", env=env) if report["requested"] != "process" else None
        report["auto_backend"] = chosen.name if chosen else "process"
        report["ok"] = chosen is not None
    except SandboxUnavailableError as exc:
        report["auto_backend"] = None
        report["ok"] = False
        report["problem"] = str(exc)
    if report["requested"] == "process":
        report["problem"] = "SAFEHUB_SANDBOX=process: repo code runs WITHOUT OS isolation"
    return report


def format_report(report: Mapping[str, Any]) -> str:
    """The human-readable ``safehub doctor`` output."""

    def yes(flag: object) -> str:
        return "yes" if flag else "no"

    bw, ns, ll, cg = report["bwrap"], report["user_namespaces"], report["landlock"], report["cgroup"]
    lines = [
        f"safehub doctor — {report['platform']['system']} {report['platform']['kernel']} ({report['platform']['machine']}), "
        f"python {report['platform']['python']}, euid {report['platform']['euid']}",
        "",
        f"bubblewrap          {yes(bw['usable'])}  ({bw.get('version') or bw['path']})",
    ]
    if bw.get("problem"):
        lines.append(f"                    {bw['problem']}")
    else:
        lines.append(f"                    jobs run as {bw['runs_job_as']}")
    lines.append(f"user namespaces     {yes(ns.get('usable'))}" + (f"  ({ns['error']})" if ns.get("error") else ""))
    lines.append(
        f"Landlock            ABI {ll['abi']}: files {yes(ll['filesystem'])}, TCP denied {yes(ll['tcp_bind_connect_denied'])}, "
        f"signal/abstract-socket scoping {yes(ll['signal_and_abstract_socket_scoping'])}"
    )
    if ll.get("problem"):
        lines.append(f"                    {ll['problem']}")
    sc = report["seccomp"]
    if not sc["enabled"]:
        lines.append(f"seccomp filter      OFF  ({sc['warning']})")
    elif sc.get("problem"):
        lines.append("seccomp filter      no")
        lines.append(f"                    {sc['problem']}")
    else:
        sizes = ", ".join(f"{k} {v}" for k, v in sc["instructions"].items())
        lines.append(f"seccomp filter      yes  ({sc['library']} via {sc['bindings']}; BPF instructions: {sizes})")
        lines.append(f"                    refuses: {', '.join(sc['denied'])}")
        lines.append(f"                    and under landlock: {', '.join(sc['landlock_also_denies'])}")
    lines.append(f"                    session keyring: {sc['session_keyring']}")
    lines.append(
        f"cgroup v2           {cg['v2_mount'] or 'not mounted'}; delegated with memory+pids: {yes(cg['delegated'])}"
    )
    lines.append(f"                    {cg['note']}")
    wk = report.get("worker") or {}
    last = {True: "yes", False: "no", None: "no load recorded"}[wk.get("last_load_used_worker")]
    lines.append(
        f"warm worker         {'on' if wk.get('enabled') else 'off (SAFEHUB_WORKER=0)'}; idle timeout {wk.get('idle_s', 0):g} s; "
        f"running: {len(wk.get('running') or [])}; last load used one: {last}"
    )
    we = report.get("weights") or {}
    if we:
        lines.append(f"weights channel     {we.get('channel')}; shmem huge pages: {we.get('shmem_enabled') or 'unknown'}")
        if we.get("note"):
            lines.append(f"                    {we['note']}")
    bc = report.get("bytecode") or {}
    if bc:
        lines.append(f"bytecode            {bc['modules'] - bc['stale']} of {bc['modules']} modules current")
        if bc.get("note"):
            lines.append(f"                    {bc['note']}")
    lines.append("")
    if report.get("ok"):
        lines.append(f"sandbox='{report['requested']}' uses the {report['auto_backend']} backend.")
    else:
        lines.append(f"PROBLEM: {report.get('problem')}")
    return "\n".join(lines)
