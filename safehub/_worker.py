"""The host end of the warm worker (``runners/safehub_worker.py``).

A fresh process that loads a model pays the sandbox's ``import torch`` and its
first export on every load. A warm worker pays them once: a bubblewrap sandbox
per (env, repo folder, sandbox settings, runner code) whose process has torch
imported and the exporter warmed up, and forks a fresh child per job before any
repo code is imported. It outlives the host process that started it, so the next
fresh process finds it warm; it exits after ``SAFEHUB_WORKER_IDLE_S`` seconds
(default 300) without a job.

Why a socket under SAFEHUB_HOME rather than a per-process worker: a per-process
worker only helps the second load in a process; a CLI or a fresh service replica
is always first. The socket lives in ``<hub>/workers/<key>/`` (0700, the socket
0600): other users cannot reach it, and it is never visible in any sandbox (the
host creates it and passes the listening descriptor in; the worker's children
close it). Processes of the same user can reach it, as they can reach the host
process itself; what a worker answers is treated like any sandbox's output.

A job's weights memfd (safehub/_channel/_memfd.py) rides with its job line
(SCM_RIGHTS); the worker hands it to the forked child and closes its own copy,
and the host seals it only after the worker has answered that the child (and
everything it started) is gone.

What the host trusts from a worker: nothing. It reads two bounded JSON lines
("started", then the child's exit status); the job's output goes through
``_channel`` exactly like a cold run's. The worker's process tree is polled by
the same :class:`~safehub._sandbox._limits.Watchdog` as a cold run (the worker
itself excluded); a job that hits a limit takes the whole worker down with it.

One job at a time per worker: a second load that finds it busy (the lock is
taken) runs cold, as it would without a worker. Only plain ``load``/``list``/
``export`` jobs on the bwrap backend go to a worker. A worker job's ``in/`` is
writable by its child (the jobs folder is bound read-write), so no host file may be
linked there: the files a job stages (the downloads the broker fetched for the
entrypoint, a deferred export's weights) are copied, up to ``MAX_STAGED_COPY_BYTES``
in all; a job staging more runs cold (with hard links), as does everything else. Opt out with ``SAFEHUB_WORKER=0`` or
``Limits(warm_worker=False)``.
"""

from __future__ import annotations

import dataclasses
import fcntl
import hashlib
import json
import logging
import os
import secrets
import select
import signal
import socket
import stat
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Any

from ._config import env_flag
from ._errors import SandboxError
from ._fsutil import remove_tree
from ._records import record
from ._resources import runner_dir
from ._sandbox import Limits, SandboxBackend, SandboxRequest, SandboxResult
from ._sandbox import _proc
from ._sandbox._base import MAX_CAPTURE_BYTES
from ._sandbox._limits import Watchdog, confine_rlimits, killed_by_signal
from ._sandbox._seccomp import confine_entry
from ._sandbox._seccomp import enabled as seccomp_enabled
from ._sandbox._seccomp import policy_digest as seccomp_policy_digest

if TYPE_CHECKING:
    from ._env._types import PythonEnv

__all__ = ["enabled", "eligible", "run_in_worker", "idle_seconds", "running_workers", "WORKER_ACTIONS"]

logger = logging.getLogger("safehub")

WORKER_ACTIONS = ("load", "list", "export")
DEFAULT_IDLE_S = 300.0
MAX_LINE = 4096
START_TIMEOUT_S = 120.0  # a new worker imports torch and warms up before its first job
# A worker job's in/ is writable by its child, so staged host files are copied there,
# never linked; past this much, copying costs about what a cold start does.
MAX_STAGED_COPY_BYTES = 1 << 30
STATE_FILE = "state.json"


def enabled(limits: Limits, env: dict[str, str] | None = None) -> bool:
    """``SAFEHUB_WORKER=0`` or ``Limits(warm_worker=False)`` turn the worker off."""
    env = dict(os.environ) if env is None else env
    return env_flag("SAFEHUB_WORKER", env, default=True) and limits.warm_worker


def idle_seconds(env: dict[str, str] | None = None) -> float:
    env = dict(os.environ) if env is None else env
    try:
        value = float(env.get("SAFEHUB_WORKER_IDLE_S", DEFAULT_IDLE_S))
    except ValueError:
        return DEFAULT_IDLE_S
    return min(max(value, 1.0), 86400.0)


def eligible(action: str, *, backend: SandboxBackend, limits: Limits, allow_gpu: bool, checkpoint: bool,
             staged_bytes: int = 0) -> str | None:
    """Why this job cannot go to a worker (None: it can). ``staged_bytes``: the host
    files the job stages in in/ (downloads included), which a worker job gets as
    copies (see the module docstring)."""
    if not enabled(limits):
        return "turned off (SAFEHUB_WORKER=0 or Limits(warm_worker=False))"
    if backend.name != "bwrap" or not hasattr(backend, "spawn_detached"):
        return f"no worker for the {backend.name} backend"
    if action not in WORKER_ACTIONS or checkpoint:
        return f"no worker for {action} jobs"
    if allow_gpu:
        return "no worker for GPU jobs"
    if staged_bytes > MAX_STAGED_COPY_BYTES:
        return f"the job stages {staged_bytes >> 20} MiB of host files (a worker job copies them; a cold run links them)"
    return None


def _worker_key(python_env: PythonEnv, repo_dir: Path, backend: SandboxBackend, tmpfs_bytes: int) -> str:
    runner_digest = hashlib.sha256()
    rdir = runner_dir()
    for path in sorted(rdir.glob("*.py")):
        runner_digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    repo = os.path.realpath(repo_dir)
    st = os.stat(repo)
    material = {
        "python": str(python_env.python), "ro": [str(p) for p in python_env.ro_paths], "env": python_env.key,
        "hidden": [str(p) for p in python_env.hidden_paths],
        # The folder itself, not only its path: a worker bind-mounted the folder it started
        # with, and a new folder at the same path (force_reload, a re-clone) needs a new worker.
        # The inode alone does not tell: ext4 hands a deleted folder's inode to the next one
        # made. Its ctime does (a new folder's is new; an entry added or renamed at the top
        # level also changes it, which only costs a worker start).
        "repo": repo, "repo_folder": [st.st_dev, st.st_ino, st.st_ctime_ns],
        # The worker holds the job children's seccomp filter its host built: keyed by
        # the policy's source, not by a filter built here (a warm load builds none).
        "backend": {k: v for k, v in backend.describe().items() if k != "seccomp_instructions"},
        "seccomp_policy": seccomp_policy_digest() if seccomp_enabled() else None, "tmpfs": tmpfs_bytes,
        "euid": os.geteuid(), "runner": runner_digest.hexdigest(),
    }
    return hashlib.sha256(json.dumps(material, sort_keys=True, default=str).encode()).hexdigest()[:32]


def _private_dir(path: Path) -> None:
    path.mkdir(mode=0o700, parents=True, exist_ok=True)
    st = os.lstat(path)
    if not os.path.isdir(path) or os.path.islink(path) or st.st_uid != os.geteuid():
        raise OSError(f"{path} is not a folder of this user")
    if st.st_mode & 0o077:
        os.chmod(path, 0o700)


@record
class _State:
    """The running worker, as its state file records it."""

    pid: int  # the outer bwrap process
    create_time: float
    uid: int | None


def _load_state(wdir: Path) -> _State | None:
    """The running worker recorded in ``wdir``, checked against the process table
    (a pid reused by another process, or a dead worker, is no worker)."""
    from ._sandbox._bwrap import _DETACHED

    for proc in list(_DETACHED):
        if proc.poll() is not None:  # type: ignore[attr-defined]
            _DETACHED.remove(proc)
    try:
        raw = json.loads((wdir / STATE_FILE).read_text(encoding="utf-8"))
        state = _State(int(raw["pid"]), float(raw["create_time"]), None if raw["uid"] is None else int(raw["uid"]))
        if abs(_proc.create_time(state.pid) - state.create_time) > 0.01 or _proc.is_zombie(state.pid):
            return None
    except (OSError, ValueError, KeyError, TypeError, IndexError):
        return None
    return state


def _kill(wdir: Path, state: _State | None) -> None:
    """Take the whole worker down (its pid namespace dies with its init)."""
    import psutil

    (wdir / STATE_FILE).unlink(missing_ok=True)
    (wdir / "sock").unlink(missing_ok=True)
    if state is None:
        return
    try:
        proc = psutil.Process(state.pid)
        if abs(proc.create_time() - state.create_time) > 0.01:
            return
        procs = [proc, *proc.children(recursive=True)]
    except psutil.Error:
        return
    for p in procs:
        try:
            p.send_signal(signal.SIGKILL)
        except psutil.Error:
            pass
    psutil.wait_procs(procs, timeout=10)


def _worker_pids(pid: int) -> set[int]:
    """The processes under the outer bwrap ``pid`` that are not the job's: the
    namespace's pid 1 and the worker itself (the watchdog does not count them)."""
    try:
        init = _proc.children(pid, recursive=False)
    except _proc.ProcessGone:
        return set()  # the watchdog finds the worker gone
    except _proc.NoChildrenFile:
        import psutil

        try:
            procs = psutil.Process(pid).children()
            return {p.pid for p in procs} | {c.pid for p in procs for c in p.children()}
        except psutil.Error:
            return set()
    out = set(init)
    for child in init:
        try:
            out.update(_proc.children(child, recursive=False))
        except _proc.ProcessGone:
            pass
    return out


def _start(wdir: Path, jobs: Path, *, python_env: PythonEnv, repo_dir: Path, backend: SandboxBackend,
           tmpfs_bytes: int, env: dict[str, str]) -> _State:
    sock_path = wdir / "sock"
    sock_path.unlink(missing_ok=True)
    remove_tree(jobs)
    jobs.mkdir(mode=0o700)
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        old = os.umask(0o177)
        try:
            with _Address(sock_path) as address:
                listener.bind(address)
        finally:
            os.umask(old)
        listener.listen(8)
        rdir = runner_dir()
        limits = Limits(timeout_s=1e9, memory_bytes=None, max_pids=4096, max_file_bytes=None, tmpfs_bytes=tmpfs_bytes)
        request = SandboxRequest(
            argv=[str(python_env.python), "-I", "-B", str(rdir / "safehub_worker.py"), str(listener.fileno()),
                  str(jobs), repr(idle_seconds())],
            env=env, cwd=Path("/tmp"), ro_paths=(*python_env.ro_paths, repo_dir, rdir), rw_paths=(jobs,),
            limits=limits, runner_dir=rdir, hidden_paths=python_env.hidden_paths,
        )
        confine = backend.confine_config(request)
        if seccomp_enabled():
            # Stacked on the worker's own bwrap filter in every job's child: no System V
            # IPC or POSIX message queues, which live in the worker's IPC namespace and
            # would outlast a job into the next (red team round 3). The worker keeps it
            # and each child applies it (runners/safehub_worker.py).
            confine["worker_child_seccomp"] = confine_entry("worker_child")
        request = dataclasses.replace(request, argv=[*request.argv, json.dumps(confine)])
        pid, uid = backend.spawn_detached(request, pass_fds=(listener.fileno(),),  # type: ignore[attr-defined]
                                          log_path=wdir / "worker.log")
    finally:
        listener.close()
    state = _State(pid, _proc.create_time(pid), uid)
    tmp = wdir / f"{STATE_FILE}.{secrets.token_hex(4)}"
    tmp.write_text(json.dumps(dataclasses.asdict(state)), encoding="utf-8")
    os.replace(tmp, wdir / STATE_FILE)
    logger.info("started a warm worker for %s (pid %d)", repo_dir, pid)
    return state


def _read_line(conn: socket.socket, buf: bytearray, timeout: float | None) -> dict[str, Any] | None:
    """One bounded JSON object line from the worker; None at EOF. Anything
    malformed or oversized is an error (the worker is untrusted)."""
    conn.settimeout(timeout)
    while b"\n" not in buf:
        try:
            chunk = conn.recv(MAX_LINE)
        except (socket.timeout, BlockingIOError):
            raise
        except OSError:
            return None
        if not chunk:
            return None
        buf += chunk
        if len(buf) > MAX_LINE:
            raise ValueError("the worker sent an oversized line")
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    value = json.loads(line)
    if not isinstance(value, dict):
        raise ValueError("the worker sent something other than an object")
    return value


def _tail(path: Path) -> bytes:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NOFOLLOW)
    except OSError:
        return b""
    try:
        size = os.fstat(fd).st_size
        os.lseek(fd, max(0, size - MAX_CAPTURE_BYTES), os.SEEK_SET)
        return os.read(fd, MAX_CAPTURE_BYTES)
    finally:
        os.close(fd)


def run_in_worker(
    *,
    limits: Limits,
    python_env: PythonEnv,
    repo_dir: Path,
    backend: SandboxBackend,
    hub_dir: Path,
    layout: Callable[[Path, dict[str, object]], None],
    environment: Callable[[Path], dict[str, str]],
    weights_fd: int | None = None,
    after_send: Callable[[], None] | None = None,
) -> tuple[Path, SandboxResult] | None:
    """Run one job in the warm worker for this env and repo (starting it if none
    runs). ``layout(root, confine)`` writes the job folder; ``environment(root)``
    is the job's whole environment. ``weights_fd``: the job's weights memfd or
    tmpfs file, sent with the job message (SCM_RIGHTS); the caller closes its own
    copy (``after_send`` is called once it is sent, for a caller done with it).
    Returns the job folder
    and the run's result, or None when the worker cannot take the job before it
    starts (busy, or it died before forking): the caller then runs it cold."""
    workers = hub_dir / "workers"
    _private_dir(workers)
    wdir = workers / _worker_key(python_env, repo_dir, backend, limits.tmpfs_bytes)
    _private_dir(wdir)
    lock = os.open(wdir / "lock", os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            logger.info("the warm worker for %s is busy; running this job cold", repo_dir)
            return None
        return _run_locked(wdir, limits=limits, python_env=python_env, repo_dir=repo_dir,
                           backend=backend, layout=layout, environment=environment, weights_fd=weights_fd,
                           after_send=after_send)
    finally:
        os.close(lock)  # releases the lock


def _ready(wdir: Path, jobs: Path, *, python_env: PythonEnv, repo_dir: Path, backend: SandboxBackend,
           tmpfs_bytes: int, env: dict[str, str]) -> tuple[_State, socket.socket, bool] | None:
    """The live worker and a connection to it (started now if none ran): (state,
    connection, whether it was started now), or None."""
    state = _load_state(wdir)
    if state is not None:
        conn = _connect(wdir / "sock")
        if conn is not None:
            return state, conn, False
    _kill(wdir, state)
    state = _start(wdir, jobs, python_env=python_env, repo_dir=repo_dir, backend=backend,
                   tmpfs_bytes=tmpfs_bytes, env=env)
    conn = _connect(wdir / "sock")
    if conn is None:
        _kill(wdir, state)
        return None
    return state, conn, True


def _run_locked(wdir: Path, *, limits: Limits, python_env: PythonEnv, repo_dir: Path, backend: SandboxBackend,
                layout: Callable[[Path, dict[str, object]], None],
                environment: Callable[[Path], dict[str, str]],
                weights_fd: int | None = None,
                after_send: Callable[[], None] | None = None) -> tuple[Path, SandboxResult] | None:
    jobs = wdir / "jobs"
    try:
        ready = _ready(wdir, jobs, python_env=python_env, repo_dir=repo_dir, backend=backend,
                       tmpfs_bytes=limits.tmpfs_bytes, env=environment(Path("/tmp")))
    except Exception as exc:  # noqa: BLE001 - nothing ran yet: the job runs cold, as without a worker
        logger.warning("could not start a warm worker (%s); running the job in a fresh sandbox", exc)
        return None
    if ready is None:
        return None
    state, conn, fresh = ready
    root = jobs / f"job-{secrets.token_hex(8)}"
    started = time.monotonic()
    try:
        root.mkdir(mode=0o700)
        for sub in ("in", "out", "home", "tmp", "log"):
            (root / sub).mkdir(mode=0o700)
        for name in ("stdout", "stderr"):
            (root / "log" / name).touch(mode=0o600)
        rlimits = confine_rlimits(limits)
        if limits.max_pids is not None:
            rlimits["NPROC"] = int(limits.max_pids) + 2  # the worker and the namespace's pid 1 count too
        # The child's seccomp filter is the worker's ("worker_child", given at its start).
        confine: dict[str, object] = {"close_fds": True, "no_new_privs": True, "rlimits": rlimits}
        layout(root, confine)
        if state.uid is not None:  # as root, the worker runs as a uid of its own: the job
            os.chmod(root, 0o755)  # folder and in/ stay root's (not renamable), the rest is the job's
            for sub in ("out", "home", "tmp", "log"):
                for dirpath, dirnames, filenames in os.walk(root / sub):
                    for name in (dirpath, *(os.path.join(dirpath, n) for n in (*dirnames, *filenames))):
                        os.chown(name, state.uid, state.uid, follow_symlinks=False)
        # The job may not swap its folders for links to host paths: checked once it is
        # over (nothing of it runs any more when the worker answers).
        identity = {p: (st.st_dev, st.st_ino) for p in (root, root / "out") for st in [os.lstat(p)]}
        # The worker's own deadline is a backstop for a host that died: later than ours.
        message = {"job": str(root), "env": environment(root), "timeout_s": limits.timeout_s + 10,
                   "threads": min(4, os.cpu_count() or 1), "weights_fd": weights_fd is not None}
        buf = bytearray()
        try:
            _send_message(conn, json.dumps(message).encode() + b"\n", weights_fd)
            if after_send is not None:  # the descriptor is in the message now: the host may drop its copy
                after_send()
            reply = _read_line(conn, buf, START_TIMEOUT_S if fresh else 30.0)
        except (OSError, ValueError):
            reply = None
        if not reply or reply.get("started") is not True:
            logger.info("the warm worker did not take the job (%s); running it cold", reply)
            _kill(wdir, state)
            remove_tree(root)
            return None
        exclude = _worker_pids(state.pid)
        answer: list[dict[str, Any] | None] = []

        def poll() -> int | None:
            if answer:
                return 0
            try:
                line = _read_line(conn, buf, 0.0)
            except (socket.timeout, BlockingIOError):
                return None
            except (ValueError, OSError):
                line = None
            answer.append(line)
            return 0

        watchdog = Watchdog(limits=limits, root_pid=state.pid, disk_paths=[root], exclude=exclude)
        # Between polls, wake as soon as the worker answers rather than at the next tick.
        killed_by = watchdog.run(poll, lambda: _kill(wdir, state),
                                 wait=lambda seconds: select.select([conn], [], [], seconds))
        if killed_by is None:
            killed_by = watchdog.check_disk()
        code = -int(signal.SIGKILL)
        line = answer[0] if answer else None
        if line is not None and isinstance(line.get("exit"), int) and -64 <= line["exit"] <= 255:
            code = int(line["exit"])
        elif killed_by is None:
            _kill(wdir, state)  # it died or misbehaved mid-job: never reuse it
        killed_by = killed_by or killed_by_signal(code, limits, watchdog.peak_cpu_s)
        if killed_by is not None:
            _kill(wdir, state)
        for path, ident in identity.items():
            st = os.lstat(path)
            if not stat.S_ISDIR(st.st_mode) or (st.st_dev, st.st_ino) != ident:
                _kill(wdir, state)
                raise SandboxError(f"the job replaced its folder {path.name!r} (a link to elsewhere?); "
                                   "nothing it wrote is read", hint="the repo is hostile or broken")
        result = SandboxResult(
            returncode=code, stdout=_tail(root / "log" / "stdout"), stderr=_tail(root / "log" / "stderr"),
            backend=backend.name, limits=limits, killed_by=killed_by, wall_s=time.monotonic() - started,
            details={**backend.describe(), "peak_pids": watchdog.peak_pids, "peak_rss": watchdog.peak_rss,
                     "worker": {"used": True, "started_now": fresh, "pid": state.pid}},
        )
        return root, result
    except BaseException:
        remove_tree(root)
        raise
    finally:
        conn.close()


def _send_message(conn: socket.socket, data: bytes, fd: int | None) -> None:
    """The job line; ``fd`` rides with its first bytes (SCM_RIGHTS)."""
    if fd is None:
        conn.sendall(data)
        return
    sent = socket.send_fds(conn, [data], [fd])
    if sent < len(data):
        conn.sendall(data[sent:])


class _Address:
    """A socket path short enough for AF_UNIX (108 bytes): a deep SAFEHUB_HOME is
    reached through ``/proc/self/fd/N/`` of the folder, opened for the call."""

    def __init__(self, path: Path) -> None:
        self.path, self.fd = path, -1

    def __enter__(self) -> str:
        if len(os.fsencode(str(self.path))) < 100:
            return str(self.path)
        self.fd = os.open(self.path.parent, os.O_PATH | os.O_DIRECTORY | os.O_CLOEXEC)
        return f"/proc/self/fd/{self.fd}/{self.path.name}"

    def __exit__(self, *exc: object) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1


def _connect(path: Path) -> socket.socket | None:
    conn = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        with _Address(path) as address:
            conn.connect(address)
    except OSError:
        conn.close()
        return None
    return conn


def running_workers(hub_dir: Path) -> list[dict[str, Any]]:
    """The warm workers alive under ``hub_dir`` (for ``safehub doctor``)."""
    out = []
    workers = hub_dir / "workers"
    try:
        names = sorted(os.listdir(workers))
    except OSError:
        return []
    for name in names:
        state = _load_state(workers / name)
        if state is not None:
            out.append({"key": name, "pid": state.pid, "started": state.create_time})
    return out
