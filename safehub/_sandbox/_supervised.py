"""Running a request under the reaper (backends without a pid namespace).

The command runs below ``_reaper.py`` in a new session with exactly the
request's environment; the host's watchdog enforces the limits; killing asks the
reaper to take the whole tree (and SIGKILLs every descendant it can see, in
case the reaper itself was killed); the result is returned only once the reaper,
and so everything below it, is gone.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path

from ._base import MAX_CAPTURE_BYTES, SandboxRequest, SandboxResult
from ._cgroup import PidsCgroup
from ._capture import TailPipe
from ._keyring import fresh_session_keyring
from ._limits import Watchdog, killed_by_signal

__all__ = ["run_supervised", "REAPER"]

REAPER = Path(__file__).with_name("_reaper.py")


def run_supervised(
    name: str,
    request: SandboxRequest,
    *,
    confine: dict[str, object],
    disk_paths: list[Path],
    details: dict[str, object],
    pid_namespace: bool = False,
    cgroup: PidsCgroup | None = None,
    strict_keyring: bool = True,
) -> SandboxResult:
    import json

    import psutil

    for path in request.scratch_paths:
        Path(path).mkdir(parents=True, exist_ok=True)
    if request.pass_fds:  # the reaper's own close_fds keeps the job's weights memfd
        confine = {**confine, "keep_fd": int(request.pass_fds[0])}
    out, err = TailPipe(MAX_CAPTURE_BYTES), TailPipe(MAX_CAPTURE_BYTES)
    start = time.monotonic()
    try:
        proc = subprocess.Popen(
            [os.path.realpath(sys.executable), "-I", "-S", "-B", str(REAPER), json.dumps(confine),
             str(request.runner_dir),
             json.dumps({"pidns": pid_namespace, "cgroup_procs": cgroup.procs_file if cgroup else None}),
             *request.argv],
            env=dict(request.env),
            cwd=str(request.cwd),
            stdin=subprocess.DEVNULL,
            stdout=out.write_fd,
            stderr=err.write_fd,
            start_new_session=True,
            close_fds=True,
            pass_fds=tuple(request.pass_fds),
            # The reaper and everything below it get a new, empty session keyring.
            preexec_fn=fresh_session_keyring(strict=strict_keyring),
        )
    except subprocess.SubprocessError as exc:  # the fresh session keyring (preexec_fn)
        from .._errors import SandboxUnavailableError

        out.close()
        err.close()
        raise SandboxUnavailableError(
            f"could not start the job in a fresh session keyring: {exc}",
            hint="keyctl(KEYCTL_JOIN_SESSION_KEYRING) failed on the host; check the key quota "
            "(/proc/sys/kernel/keys/maxkeys), or keep the seccomp filter on (unset SAFEHUB_SECCOMP)",
        ) from None
    except BaseException:
        out.close()
        err.close()
        raise
    out.start()
    err.start()
    seen: dict[int, psutil.Process] = {}

    def kill() -> None:
        try:
            for child in psutil.Process(proc.pid).children(recursive=True):
                seen[child.pid] = child
        except psutil.Error:
            pass
        if cgroup is not None:
            cgroup.kill()
        try:
            os.kill(proc.pid, signal.SIGTERM)  # the reaper kills everything below it
        except OSError:
            pass
        for child in seen.values():
            try:
                child.kill()
            except psutil.Error:
                pass

    watchdog = Watchdog(limits=request.limits, root_pid=proc.pid, disk_paths=disk_paths,
                        pids_counter=(lambda: (cgroup.current(), cgroup.hit_limit())) if cgroup else None)
    killed_by = None
    try:
        killed_by = watchdog.run(proc.poll, kill)
    finally:
        if proc.poll() is None:
            kill()
        try:
            proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        psutil.wait_procs(list(seen.values()), timeout=10)
        if cgroup is not None:
            if killed_by is None and cgroup.hit_limit():
                killed_by = "pids"  # a fork was refused: the job ran into its process limit
            cgroup.remove()
    killed_by = killed_by or killed_by_signal(proc.returncode, request.limits, watchdog.peak_cpu_s)
    if killed_by is None:
        # A full scratch folder at exit still means the disk limit was reached.
        killed_by = watchdog.check_disk()
    return SandboxResult(
        returncode=proc.returncode,
        stdout=out.result(),
        stderr=err.result(),
        backend=name,
        limits=request.limits,
        killed_by=killed_by,
        wall_s=time.monotonic() - start,
        details={**details, "peak_pids": watchdog.peak_pids, "peak_rss": watchdog.peak_rss,
                 "peak_cpu_s": round(watchdog.peak_cpu_s, 3)},
    )
