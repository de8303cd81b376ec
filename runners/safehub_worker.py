"""The warm worker: one sandboxed process per (env, repo, sandbox settings) that
has imported torch and warmed up the exporter, and forks a fresh child per job.

It runs inside the sandbox like the runner (same bubblewrap namespaces, seccomp
filter and rlimits), under the repo's venv interpreter::

    <venv>/bin/python -I -B safehub_worker.py <listen_fd> <jobs_dir> <idle_s> <confine JSON>

Standard library and torch only; never imports safehub, and **never imports
repo code**: a job's hubconf is imported only in its own forked child, which
runs ``safehub_runner.run`` exactly as a cold run would and exits with
``os._exit``. So no job can leave anything in the worker's memory for the next.

One job at a time. Per job the worker:
  1. accepts one connection on the listening socket the host made and passed in
     (its path is never visible in here), reads one JSON line:
     ``{"job": <job folder>, "env": {...}, "threads": n, "timeout_s": s,
     "weights_fd": bool}``; the folder must be ``<jobs_dir>/job-<16 hex>``; with
     ``weights_fd`` exactly one memfd comes with the line (SCM_RIGHTS): the job's
     weights go there (its number in the child's ``SAFEHUB_WEIGHTS_FD``), and the
     worker closes its own copy right after the fork;
  2. sweeps ``jobs_dir`` (all but this job), /tmp and /dev/shm: what an earlier
     job left there is gone before this one starts;
  3. forks the child: it closes the sockets, points stdout/stderr at the job's
     log files, takes the job's environment, sets its thread count (the worker
     itself stays single-threaded: a libgomp pool used before fork hangs the
     child), restricts itself to its own Landlock domain (it cannot signal or
     ptrace the worker), and runs the job; the rlimits are in the job's
     request.json and applied by the runner before any repo code;
  4. answers ``{"started": true}``, waits for the child (killing it at the
     deadline or when the host hangs up), then SIGKILLs every other process it
     may signal (the worker is the pid namespace's subreaper, so double-forked
     leftovers are its children), reaps them, sweeps again, and answers
     ``{"exit": status}``.
It exits after ``idle_s`` seconds without a job, or once the host has removed
its jobs folder. The exporter is warmed up (a small model exported once) while
no job is waiting, so the first job never waits for it.
"""

from __future__ import annotations

import ctypes
import fcntl
import json
import os
import re
import select
import shutil
import signal
import socket
import sys
import time

_HERE = os.path.dirname(os.path.abspath(__file__))
if _HERE not in sys.path:
    sys.path.insert(0, _HERE)

import _confine  # noqa: E402
from _contract import WEIGHTS_FD_ENV  # noqa: E402

JOB_NAME = re.compile(r"job-[0-9a-f]{16}")
MAX_MESSAGE = 256 * 1024
PR_SET_PDEATHSIG = 1
PR_SET_DUMPABLE = 4
PR_SET_CHILD_SUBREAPER = 36
SCRATCH = ("/tmp", "/dev/shm")

_libc = ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    if _libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}) failed: {os.strerror(err)}")


def _empty(folder: str, keep: str | None = None) -> None:
    """Remove everything inside ``folder`` (never following links), but ``keep``."""
    try:
        names = os.listdir(folder)
    except OSError:
        return
    for name in names:
        if name == keep:
            continue
        path = os.path.join(folder, name)
        try:
            if os.path.isdir(path) and not os.path.islink(path):
                for dirpath, dirnames, _files in os.walk(path):
                    for d in dirnames:  # a job may have left folders it cannot list
                        try:
                            os.chmod(os.path.join(dirpath, d), 0o700, follow_symlinks=False)
                        except OSError:
                            pass
                shutil.rmtree(path, ignore_errors=True)
            else:
                os.unlink(path)
        except OSError:
            pass


def _sweep(jobs_dir: str, keep: str | None) -> None:
    _empty(jobs_dir, keep)
    for folder in SCRATCH:
        _empty(folder)


def _kill_strays() -> bool:
    """SIGKILL every process this worker may signal but itself (its pid namespace
    holds only the job's), then reap them all: as the subreaper, orphans are ours.
    False if some would not go (the worker then stops serving)."""
    try:
        os.kill(-1, signal.SIGKILL)
    except OSError:
        pass
    deadline = time.monotonic() + 10
    while time.monotonic() < deadline:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return True
        if pid == 0:
            time.sleep(0.005)
    return False


def _landlock_own_domain() -> None:
    """A Landlock domain of the child's own, scoped: it may not signal processes
    outside it (the worker) nor connect to abstract sockets outside it; ptrace of
    the worker is refused by Landlock too (and by the seccomp filter). Needs ABI 6;
    on older kernels the filter's ptrace refusal and the worker's non-dumpable
    state remain, and a child could only stop its own load."""
    abi = _confine.landlock_abi()
    if abi < 6:
        return
    attr = _confine._RulesetAttr(0, 0, _confine.SCOPE_ABSTRACT_UNIX_SOCKET | _confine.SCOPE_SIGNAL)
    libc = _confine._libc
    ruleset = _confine._check(libc.syscall(_confine.SYS_LANDLOCK_CREATE_RULESET, ctypes.byref(attr),
                                           ctypes.c_size_t(24), ctypes.c_uint32(0)), "landlock_create_ruleset")
    try:
        _confine._no_new_privs()
        _confine._check(libc.syscall(_confine.SYS_LANDLOCK_RESTRICT_SELF, ctypes.c_int(ruleset), ctypes.c_uint32(0)),
                        "landlock_restrict_self")
    finally:
        os.close(ruleset)


def _child(job: str, message: dict, runner, weights_fd: int | None) -> None:
    """In the forked child: never returns."""
    try:
        _prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
        os.setsid()
        for name, fd in (("stdout", 1), ("stderr", 2)):
            target = os.open(os.path.join(job, "log", name), os.O_WRONLY | os.O_APPEND | os.O_NOFOLLOW)
            os.dup2(target, fd)
            os.close(target)
        os.environ.clear()
        os.environ.update({str(k): str(v) for k, v in dict(message.get("env") or {}).items()})
        os.environ.pop(WEIGHTS_FD_ENV, None)
        if weights_fd is not None:  # the runner writes the weights there and keeps it past close_fds
            os.environ[WEIGHTS_FD_ENV] = str(weights_fd)
        os.chdir(os.path.join(job, "tmp"))
        import torch

        torch.set_num_threads(max(1, int(message.get("threads") or 1)))
        _landlock_own_domain()
        # What a cold run's repo code sees: the runner as __main__, its argv.
        sys.modules["__main__"] = runner
        sys.argv = [os.path.join(_HERE, "safehub_runner.py"), job]
        runner.main(sys.argv)  # applies request.json's confine (close_fds, rlimits) and the worker's filter first
    except BaseException as exc:  # noqa: BLE001 - the host reads the status and this line
        try:
            os.write(2, f"safehub worker child: {type(exc).__name__}: {exc}\n".encode()[:4000])
        except OSError:
            pass
    os._exit(70)


def _read_message(conn: socket.socket) -> tuple[dict, int | None]:
    """The job line and the weights memfd sent with it (or None). At most one
    descriptor is accepted, and only when the line says one was sent; anything
    else is closed and the job refused."""
    conn.settimeout(30)
    data = b""
    fds: list[int] = []
    try:
        while not data.endswith(b"\n"):
            # Room for one descriptor: the kernel closes any beyond it (MSG_CTRUNC).
            # (socket.recv_fds would drop MSG_CMSG_CLOEXEC on Python 3.11.)
            chunk, ancdata, flags, _ = conn.recvmsg(65536, socket.CMSG_SPACE(4), socket.MSG_CMSG_CLOEXEC)
            for level, kind, payload in ancdata:
                if level == socket.SOL_SOCKET and kind == socket.SCM_RIGHTS:
                    fds.extend(int.from_bytes(payload[i:i + 4], sys.byteorder, signed=True)
                               for i in range(0, len(payload) - len(payload) % 4, 4))
                else:
                    raise ValueError("unexpected control data came with the job")
            if flags & socket.MSG_CTRUNC or len(fds) > 1:
                raise ValueError("more than one descriptor came with the job")
            if not chunk:
                raise ConnectionError("the host hung up")
            data += chunk
            if len(data) > MAX_MESSAGE:
                raise ValueError("message too long")
        message = json.loads(data)
        if not isinstance(message, dict):
            raise ValueError("not an object")
        if bool(message.get("weights_fd")) != bool(fds):
            raise ValueError("the job's weights descriptor and its message disagree")
        if fds:
            fcntl.fcntl(fds[0], fcntl.F_GET_SEALS)  # a memfd (or the job is refused)
    except BaseException:
        for fd in fds:
            os.close(fd)
        raise
    return message, (fds[0] if fds else None)


def _wait(pid: int, conn: socket.socket, timeout_s: float) -> int:
    """The child's wait status; SIGKILL it at the deadline or if the host hangs up."""
    deadline = time.monotonic() + timeout_s
    pidfd = os.pidfd_open(pid)
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                os.kill(pid, signal.SIGKILL)
                break
            ready, _, _ = select.select([pidfd, conn.fileno()], [], [], min(left, 5.0))
            if pidfd in ready:
                break
            if conn.fileno() in ready:
                try:
                    gone = conn.recv(1, socket.MSG_PEEK) == b""
                except OSError:
                    gone = True
                if gone:
                    os.kill(pid, signal.SIGKILL)
                    break
    finally:
        os.close(pidfd)
    _, status = os.waitpid(pid, 0)
    return status


def _gone(jobs_dir: str) -> bool:
    """The host removed this worker's folder (its cache, or a test's): no host can
    reach this worker any more."""
    try:
        return os.stat(jobs_dir).st_nlink == 0
    except OSError:
        return True


def _accept(listener: socket.socket, jobs_dir: str, idle_s: float, warmed: bool) -> tuple[socket.socket | None, bool]:
    """The next connection, or None once idle for ``idle_s``. The exporter is warmed
    up while no job waits (the first job never waits for it)."""
    deadline = time.monotonic() + idle_s
    while True:
        if not warmed and not select.select([listener], [], [], 0)[0]:
            _warm_up()
            warmed = True
            continue
        left = deadline - time.monotonic()
        if left <= 0 or _gone(jobs_dir):
            return None, warmed
        listener.settimeout(min(left, 5.0))
        try:
            conn, _ = listener.accept()
        except socket.timeout:
            continue
        return conn, warmed


def _serve(listener: socket.socket, jobs_dir: str, idle_s: float, runner) -> None:
    warmed = False
    while True:
        conn, warmed = _accept(listener, jobs_dir, idle_s, warmed)
        if conn is None:
            return
        with conn:
            weights_fd = None
            try:
                message, weights_fd = _read_message(conn)
                job = str(message.get("job"))
                if os.path.dirname(job) != jobs_dir or not JOB_NAME.fullmatch(os.path.basename(job)):
                    raise ValueError("the job folder is not one of this worker's")
                timeout_s = float(message.get("timeout_s") or 600)
            except (OSError, ValueError) as exc:
                if weights_fd is not None:
                    os.close(weights_fd)
                try:
                    conn.sendall(json.dumps({"refused": str(exc)[:200]}).encode() + b"\n")
                except OSError:
                    pass
                continue
            _sweep(jobs_dir, keep=os.path.basename(job))
            pid = os.fork()
            if pid == 0:
                listener.close()
                _child(job, message, runner, weights_fd)
            if weights_fd is not None:
                os.close(weights_fd)  # the child's copy only: the worker never holds a job's memfd
            status = -1
            try:
                conn.sendall(b'{"started": true}\n')
                conn.settimeout(None)
                status = _wait(pid, conn, timeout_s)
            except OSError:
                try:
                    os.kill(pid, signal.SIGKILL)
                    status = os.waitpid(pid, 0)[1]
                except OSError:
                    pass
            if not _kill_strays():
                os._exit(3)  # never answer while a job's process lives: the host sees a dead worker
            _sweep(jobs_dir, keep=os.path.basename(job))
            code = os.waitstatus_to_exitcode(status) if status >= 0 else -9
            try:
                conn.sendall(json.dumps({"exit": code}).encode() + b"\n")
            except OSError:
                pass


def _warm_up() -> None:
    """Run the exporter once on a small model, fx and torch.export both (the first
    trace and export in a process pay for lazy imports and caches), single-threaded;
    its output goes to /tmp and is swept before the next job."""
    import torch
    from torch import nn

    import _export

    model = nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.ReLU(), nn.Flatten(), nn.Linear(144, 2)).eval()
    model(torch.zeros(1, 3, 8, 8))
    _export.export_object(model, "/tmp/warm-up", options={"mode": "auto"})
    # torch.export (the aten path: every deferred module's export job, models fx cannot
    # trace) has lazy imports and caches of its own, about 1.5 s at its first use: paid
    # here once, not in every forked child.
    import _export_aten

    _export_aten._export_gm(model, (torch.zeros(2, 3, 8, 8),), [])


def main(argv: list[str]) -> int:
    if len(argv) != 5:
        print("usage: safehub_worker.py <listen_fd> <jobs_dir> <idle_s> <confine JSON>", file=sys.stderr)
        return 2
    listen_fd, jobs_dir, idle_s = int(argv[1]), os.path.abspath(argv[2]), float(argv[3])
    confine = json.loads(argv[4])
    # Every inherited descriptor but the listening socket goes, as close_fds does.
    for fd in range(3, max(listen_fd, 3)):
        try:
            os.close(fd)
        except OSError:
            pass
    os.closerange(listen_fd + 1, 65536)
    confine.pop("close_fds", None)
    # The filter every job's child stacks on bwrap's (no System V IPC or POSIX message
    # queues: they live in this worker's IPC namespace and would outlast a job). The
    # host that started this worker built it; each child applies it with its job's own
    # confinement (safehub_runner.WORKER_CONFINE), so a load need not build it again.
    child_seccomp = confine.pop("worker_child_seccomp", None)
    _confine.apply(confine)
    _prctl(PR_SET_DUMPABLE, 0)  # jobs (same uid) may not open our /proc/<pid>/mem
    _prctl(PR_SET_CHILD_SUBREAPER, 1)
    listener = socket.socket(fileno=listen_fd)
    import torch

    # No thread pool may exist at fork: a libgomp pool the worker used hangs the
    # child's first parallel op. One thread here; the child sets its own count.
    torch.set_num_threads(1)
    import _downloads  # noqa: F401  (what every job imports, imported once here)
    import _export  # noqa: F401
    import safehub_runner

    if child_seccomp is not None:
        safehub_runner.WORKER_CONFINE["seccomp"] = child_seccomp
    _serve(listener, jobs_dir, idle_s, safehub_runner)
    return 0


if __name__ == "__main__":
    code = main(sys.argv)
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(code)
