"""The bubblewrap backend (the default where ``bwrap`` works).

The job runs in new user, pid, net, ipc, uts and cgroup namespaces, in a new
session, with an explicit environment. Its file system is an empty read-only
root with only:

* /usr (and the /bin, /lib* links), /etc/ld.so.cache and a synthetic
  /etc/passwd, read-only;
* the request's read-only paths (interpreter, torch, venv, repo, runner, job in/),
  less its hidden paths (an empty read-only tmpfs over each; read-only paths
  inside them bound again);
* the request's writable paths (the job's out/) bound read-write;
* a size-capped tmpfs on /tmp, /dev/shm and each scratch path (HOME, TMPDIR);
* a fresh /proc (only the sandbox's processes) and a minimal /dev.

No network device but loopback, no GPU device unless asked for. A seccomp
filter (``_seccomp.py``, passed with ``--seccomp FD``) is installed just before
bubblewrap execs the job, and the job starts in a fresh session keyring
(``_keyring.py``). When the host
runs as root, the job runs as a fresh unprivileged uid (see _userns.py). The
pid namespace dies with its first process, so nothing the job started outlives
the run: the host reads results only after that.
"""

from __future__ import annotations

import logging
import os
import shutil
import signal
import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import NamedTuple

from .._errors import SandboxUnavailableError
from ._base import GPU_DEVICES, MAX_CAPTURE_BYTES, SandboxBackend, SandboxRequest, SandboxResult
from ._capture import TailPipe
from ._keyring import fresh_session_keyring
from ._limits import Watchdog, confine_rlimits, killed_by_signal, tree_pids
from ._proc import ProcessGone
from ._binds import ancestors, normalise_hidden, normalise_request, within
from ._seccomp import build, enabled, warn_if_off
from ._seccomp import problem as seccomp_problem
from ._kill import kill_uid, wait_gone

__all__ = ["BwrapBackend"]

logger = logging.getLogger("safehub")

SYSTEM_LINKS = ("/bin", "/sbin", "/lib", "/lib32", "/lib64", "/libx32")
SHM_BYTES = 64 * 1024**2
PRLIMIT_NAMES = {"AS": "as", "CORE": "core", "CPU": "cpu", "FSIZE": "fsize", "NPROC": "nproc", "NOFILE": "nofile"}
INSTALL_HINT = (
    "install bubblewrap (apt install bubblewrap / dnf install bubblewrap) and allow user "
    "namespaces (Ubuntu >= 23.10: an AppArmor profile for bwrap, or "
    "sysctl kernel.apparmor_restrict_unprivileged_userns=0); or use sandbox='landlock'"
)


class _Prepared(NamedTuple):
    """A bwrap start, ready to spawn (see BwrapBackend._prepare)."""

    argv: list[str]
    fds: tuple[int, ...]
    cleanup: Callable[[], None]
    uid: int | None  # the sandbox's own uid (when running as root), else None
    rw: list[Path]
    scratch: list[Path]


def _seccomp_files(on: bool) -> tuple[str, ...]:
    """The pyseccomp module, found without importing it (its import loads libseccomp
    through ``ctypes.util.find_library``): a changed or removed one invalidates the
    probe memo."""
    if not on:
        return ()
    import importlib.util

    try:
        spec = importlib.util.find_spec("pyseccomp")
    except (ImportError, ValueError):
        spec = None
    return (spec.origin,) if spec is not None and spec.origin else ("<no pyseccomp>",)


class BwrapBackend(SandboxBackend):
    name = "bwrap"
    passes_fds = True
    ends_every_process = True  # --unshare-pid: the kernel kills the namespace with its pid 1

    def __init__(self, bwrap: str | None = None, env: Mapping[str, str] | None = None) -> None:
        env = os.environ if env is None else env
        self.bwrap = bwrap or env.get("SAFEHUB_BWRAP") or shutil.which("bwrap", path="/usr/bin:/bin:/usr/local/bin") or "bwrap"
        self.setpriv = env.get("SAFEHUB_SETPRIV") or shutil.which("setpriv", path="/usr/bin:/bin:/usr/sbin") or "setpriv"
        self.prlimit = env.get("SAFEHUB_PRLIMIT") or shutil.which("prlimit", path="/usr/bin:/bin") or "prlimit"
        self.seccomp = enabled(env)
        self._env = env
        self._checked: str | None | bool = False

    @property
    def as_root(self) -> bool:
        return os.geteuid() == 0

    # -- availability -------------------------------------------------------

    def check(self, *, fresh: bool = False) -> str | None:
        """Why bubblewrap cannot run jobs here (None: it can). A success is remembered
        between processes (``_probe_memo``); ``fresh=True`` (``safehub doctor``) always probes."""
        if self._checked is False or fresh:
            from .._config import hub_path
            from ._probe_memo import probe_key, remember, remembered

            hub = hub_path(self._env)
            key = probe_key((self.bwrap, self.setpriv, self.prlimit, *_seccomp_files(self.seccomp)),
                            seccomp=self.seccomp, as_root=self.as_root)
            if not fresh and remembered(hub, self.name, key):
                # The memo skips the sandbox start and the filter build: a load that a
                # warm worker answers builds no filter at all. Every start of a sandbox
                # still builds it, and refuses to start without it (_prepare).
                self._checked = None
            else:
                self._checked = self._probe()
                if self._checked is None:
                    remember(hub, self.name, key)
        return self._checked  # type: ignore[return-value]

    def _probe(self) -> str | None:
        if not (os.path.isfile(self.bwrap) and os.access(self.bwrap, os.X_OK)):
            return f"bubblewrap is not installed ({self.bwrap} not found); {INSTALL_HINT}"
        if self.as_root and not (os.path.isfile(self.setpriv) and os.access(self.setpriv, os.X_OK)):
            return f"running as root needs util-linux setpriv ({self.setpriv} not found) to drop to a sandbox uid"
        if not (os.path.isfile(self.prlimit) and os.access(self.prlimit, os.X_OK)):
            return f"util-linux prlimit ({self.prlimit}) is needed to set the sandbox's rlimits; install util-linux"
        if self.seccomp and (why := seccomp_problem(self.name)):
            return why
        import subprocess

        try:
            argv, fds, cleanup = self._argv(["/bin/true"], {}, Path("/"), [], [], [], uid=None, rlimits={"CORE": 0})
        except SandboxUnavailableError as exc:
            return str(exc)
        try:
            done = subprocess.run(argv, pass_fds=fds, capture_output=True, timeout=30, env={}, close_fds=True)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"bubblewrap could not start: {exc}; {INSTALL_HINT}"
        finally:
            cleanup()
        if done.returncode != 0:
            from .._errors import escape_untrusted

            return f"bubblewrap failed: {escape_untrusted(done.stderr, limit=300).strip()}; {INSTALL_HINT}"
        return None

    def describe(self) -> dict[str, object]:
        from ._seccomp import describe

        return {
            "backend": self.name,
            "bwrap": self.bwrap,
            "namespaces": ["user", "pid", "net", "ipc", "uts", "cgroup", "mount"],
            "sandbox_uid": "fresh unprivileged uid" if self.as_root else "caller's uid",
            "session_keyring": "fresh",
            **describe(self.name, self.seccomp, build_now=False),
        }

    # -- running -------------------------------------------------------------

    def _prepare(self, request: SandboxRequest, *, die_with_parent: bool) -> _Prepared:
        """What every start needs, cold run or warm worker alike: the checks, the
        sandbox uid (writable paths handed to it) and the bwrap command line."""
        problem = self.check()
        if not problem and self.seccomp:
            problem = seccomp_problem(self.name)  # built here, whatever the probe memo said
        if problem:
            raise SandboxUnavailableError(f"the bwrap sandbox is unavailable: {problem}")
        warn_if_off(self.seccomp)
        ro, rw, scratch = normalise_request(request)
        uid = None
        if self.as_root:
            from ._userns import pick_sandbox_uid

            uid = pick_sandbox_uid()
            for path in rw:
                os.chown(path, uid, uid, follow_symlinks=False)
        argv, fds, cleanup = self._argv(
            list(request.argv), dict(request.env), Path(request.cwd), ro, rw, scratch,
            uid=uid, allow_gpu=request.allow_gpu, tmpfs_bytes=request.limits.tmpfs_bytes,
            rlimits=confine_rlimits(request.limits), die_with_parent=die_with_parent,
            hidden=normalise_hidden(request, [*map(str, ro), "/usr"]),
        )
        return _Prepared(argv, fds, cleanup, uid, rw, scratch)

    def run(self, request: SandboxRequest) -> SandboxResult:
        argv, fds, cleanup, uid, rw, scratch = self._prepare(request, die_with_parent=True)
        import subprocess

        out, err = TailPipe(MAX_CAPTURE_BYTES), TailPipe(MAX_CAPTURE_BYTES)
        start = time.monotonic()
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=out.write_fd, stderr=err.write_fd,
                pass_fds=(*fds, *request.pass_fds), close_fds=True, start_new_session=True, env={},
                preexec_fn=fresh_session_keyring(strict=not self.seccomp),
            )
            if request.after_spawn is not None:
                request.after_spawn()
        except subprocess.SubprocessError as exc:  # the fresh session keyring (preexec_fn)
            out.close()
            err.close()
            cleanup()
            raise SandboxUnavailableError(
                f"could not start the job in a fresh session keyring: {exc}",
                hint="keyctl(KEYCTL_JOIN_SESSION_KEYRING) failed on the host; check the key quota "
                "(/proc/sys/kernel/keys/maxkeys), or keep the seccomp filter on (unset SAFEHUB_SECCOMP)",
            ) from None
        except BaseException:
            out.close()
            err.close()
            cleanup()
            raise
        out.start()
        err.start()
        cleanup()  # bwrap holds its own copies of the fds now

        pid1: list[int] = []

        def sandbox_init() -> int | None:
            if not pid1:
                try:
                    kids = tree_pids(proc.pid, recursive=False)  # (no psutil import: ~20 ms)
                except ProcessGone:
                    kids = []
                if kids:
                    pid1.append(kids[0])
                    watchdog.exclude.add(kids[0])
            return pid1[0] if pid1 else None

        def probes() -> list[tuple[int, int]]:
            init = sandbox_init()
            if init is None:
                return []
            found = []
            tmpfs_bytes = request.limits.tmpfs_bytes
            sizes = {"/tmp": tmpfs_bytes, "/dev/shm": min(SHM_BYTES, tmpfs_bytes), **{str(p): tmpfs_bytes for p in scratch}}
            for path, expected in sizes.items():
                try:
                    st = os.statvfs(f"/proc/{init}/root{path}")
                except OSError:
                    continue
                # Before bwrap's pivot_root, or for a path the job replaced, this is
                # some other file system: only the capped tmpfs itself counts.
                if st.f_blocks * st.f_frsize != expected:
                    continue
                found.append(((st.f_blocks - st.f_bfree) * st.f_frsize, expected))
            return found

        def kill() -> None:
            init = sandbox_init()
            for pid in ([init] if init else []) + [proc.pid]:
                try:
                    os.kill(pid, signal.SIGKILL)
                except OSError:
                    pass

        watchdog = Watchdog(limits=request.limits, root_pid=proc.pid, disk_paths=rw, tmpfs_probes=probes)
        killed_by = None
        try:
            sandbox_init()
            killed_by = watchdog.run(proc.poll, kill)
        finally:
            if proc.poll() is None:
                kill()
            proc.wait()
            # The pid namespace is torn down when its init dies; wait for that.
            wait_gone(pid1)
            strays = kill_uid(uid) if uid is not None else 0
        stdout, stderr = out.result(), err.result()
        killed_by = killed_by or killed_by_signal(proc.returncode, request.limits, watchdog.peak_cpu_s)
        return SandboxResult(
            returncode=proc.returncode,
            stdout=stdout,
            stderr=stderr,
            backend=self.name,
            limits=request.limits,
            killed_by=killed_by,
            wall_s=time.monotonic() - start,
            details={
                **self.describe(),
                "peak_pids": watchdog.peak_pids,
                "peak_rss": watchdog.peak_rss,
                "peak_cpu_s": round(watchdog.peak_cpu_s, 3),
                "stray_processes_killed": strays,
            },
        )

    def spawn_detached(self, request: SandboxRequest, *, pass_fds: tuple[int, ...], log_path: Path) -> tuple[int, int | None]:
        """Start ``request`` in this sandbox without waiting for it and without tying
        it to this process's life (the warm worker, safehub/_worker.py): no
        ``--die-with-parent``, a session of its own, stdout and stderr to ``log_path``.
        The caller enforces the limits. Returns (bwrap's pid, the sandbox uid or None)."""
        import subprocess

        argv, fds, cleanup, uid, _, _ = self._prepare(request, die_with_parent=False)
        log = os.open(log_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
        try:
            proc = subprocess.Popen(
                argv, stdin=subprocess.DEVNULL, stdout=log, stderr=log, pass_fds=(*fds, *pass_fds),
                close_fds=True, start_new_session=True, env={},
                preexec_fn=fresh_session_keyring(strict=not self.seccomp),
            )
        except subprocess.SubprocessError as exc:
            raise SandboxUnavailableError(f"could not start the worker in a fresh session keyring: {exc}") from None
        finally:
            os.close(log)
            cleanup()
        _DETACHED.append(proc)  # reaped by subprocess when this process polls; never waited for here
        return proc.pid, uid

    # -- the command line ----------------------------------------------------

    def _argv(
        self,
        command: list[str],
        env: dict[str, str],
        cwd: Path,
        ro: list[Path],
        rw: list[Path],
        scratch: list[Path],
        *,
        uid: int | None,
        allow_gpu: bool = False,
        tmpfs_bytes: int = 64 * 1024**2,
        rlimits: dict[str, int | list[int]] | None = None,
        hidden: list[Path] | None = None,
        die_with_parent: bool = True,
    ) -> tuple[list[str], tuple[int, ...], Callable[[], None]]:
        fds: list[int] = []

        def cleanup() -> None:
            for fd in fds:
                try:
                    os.close(fd)
                except OSError:
                    pass

        args = [self.bwrap]
        if self.as_root:
            from ._userns import make_userns, pick_sandbox_uid

            if uid is None:
                uid = pick_sandbox_uid()
            userns = make_userns(uid)
            fds.append(userns)
            args += ["--userns", str(userns), "--cap-add", "CAP_SETUID", "--cap-add", "CAP_SETGID"]
        else:
            args += ["--unshare-user", "--disable-userns"]
        args += [
            "--unshare-pid", "--unshare-net", "--unshare-ipc", "--unshare-uts", "--unshare-cgroup",
            *(["--die-with-parent"] if die_with_parent else []), "--new-session", "--hostname", "sandbox", "--clearenv",
        ]
        for key, value in env.items():
            args += ["--setenv", key, value]
        args += ["--ro-bind", "/usr", "/usr"]
        for link in SYSTEM_LINKS:
            if os.path.islink(link):
                args += ["--symlink", os.readlink(link), link]
            elif os.path.isdir(link):
                args += ["--ro-bind", link, link]
        # Traversable, not listable (as the other made folders): bwrap would make it 0700
        # (and the data files below 0600), so a job dropped to its own uid could not read
        # /etc/passwd (pwd lookups) and got EACCES, not ENOENT, for /etc/os-release
        # (ultralytics crashed on that).
        args += ["--perms", "0711", "--dir", "/etc"]
        args += ["--ro-bind-try", "/etc/ld.so.cache", "/etc/ld.so.cache"]
        home = env.get("HOME", "/")
        sandbox_uid = uid if uid is not None else os.getuid()
        sandbox_gid = uid if uid is not None else os.getgid()
        for name, text in (
            ("passwd", f"sandbox:x:{sandbox_uid}:{sandbox_gid}:sandbox:{home}:/usr/sbin/nologin\n"),
            ("group", f"sandbox:x:{sandbox_gid}:\n"),
        ):
            fd = os.memfd_create(f"safehub-{name}", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, text.encode())
            os.lseek(fd, 0, os.SEEK_SET)
            args += ["--perms", "0644", "--ro-bind-data", str(fd), f"/etc/{name}"]  # bwrap's default is 0600
        args += ["--proc", "/proc", "--dev", "/dev"]
        args += ["--size", str(min(SHM_BYTES, tmpfs_bytes)), "--perms", "1777", "--tmpfs", "/dev/shm"]
        args += ["--size", str(tmpfs_bytes), "--perms", "1777", "--tmpfs", "/tmp"]
        if allow_gpu:
            # GPU mode is outside the security guarantees (see SECURITY.md): the
            # driver needs its device nodes and reads /sys to find the hardware.
            for dev in GPU_DEVICES + tuple(f"/dev/nvidia{i}" for i in range(16)):
                args += ["--dev-bind-try", dev, dev]
            args += ["--ro-bind-try", "/sys", "/sys"]
        # Parent folders of every mount point, traversable but not listable.
        mounts = [*ro, *rw, *scratch]
        made = {"/", "/usr", "/tmp", "/dev", "/proc", "/etc", "/dev/shm", *SYSTEM_LINKS}
        for parent in sorted({a for m in mounts for a in ancestors(m)}, key=lambda p: (p.count("/"), p)):
            if parent not in made:
                args += ["--perms", "0711", "--dir", parent]
                made.add(parent)
        hidden = hidden or []
        inner = [p for p in ro if any(within(p, h) for h in hidden)]
        for path in ro:
            if path not in inner:
                args += ["--ro-bind", str(path), str(path)]
        # A hidden folder becomes an empty tmpfs (read-only once the read-only paths
        # inside it, the torch family's link targets, are bound back onto it).
        for path in hidden:
            args += ["--size", str(1024**2), "--perms", "0755", "--tmpfs", str(path)]
        for path in inner:
            args += ["--ro-bind", str(path), str(path)]
        for path in hidden:
            args += ["--remount-ro", str(path)]
        for path in rw:
            args += ["--bind", str(path), str(path)]
        for path in scratch:
            args += ["--size", str(tmpfs_bytes), "--perms", "1777", "--tmpfs", str(path)]
        if self.seccomp:
            # Installed by bubblewrap after its own setup, just before it execs the
            # command (setpriv and prlimit run under it too).
            fd = os.memfd_create("safehub-seccomp", os.MFD_CLOEXEC)
            fds.append(fd)
            os.write(fd, build(self.name))
            os.lseek(fd, 0, os.SEEK_SET)
            args += ["--seccomp", str(fd)]
        args += ["--chdir", str(cwd), "--remount-ro", "/", "--"]
        # The user-namespace fd stays open across these execs (bwrap cannot close
        # it); it grants nothing without CAP_SYS_ADMIN there, and the runner closes
        # every inherited descriptor before repo code runs.
        if self.as_root:
            args += [self.setpriv, f"--reuid={uid}", f"--regid={uid}", "--clear-groups", "--inh-caps=-all", "--no-new-privs", "--"]
        if rlimits:
            # Set after the user namespace exists: there RLIMIT_NPROC counts only the
            # sandbox's processes (before it, all of the caller's).
            args += [self.prlimit, *(f"--{PRLIMIT_NAMES[k]}={_pair(v)}" for k, v in sorted(rlimits.items())), "--"]
        args += command
        for fd in fds:
            os.set_inheritable(fd, True)
        return args, tuple(fds), cleanup


_DETACHED: list[object] = []


def _pair(value: int | list[int]) -> str:
    soft, hard = (value, value) if isinstance(value, int) else value
    return f"{int(soft)}:{int(hard)}"
