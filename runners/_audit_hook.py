"""Audit telemetry inside the sandbox: what repo code tries to do (``safehub audit``).

Only when the request says ``"audit": true`` (normal loads never pay for it), the
runner calls :func:`start` after confining itself and importing torch, and before it
imports the repo's hubconf. From then on a ``sys.addaudithook`` hook (which Python
offers no way to remove) records, into ``out/audit.jsonl``:

* file opens (path and "r"/"w") outside the interpreter's own library folders, and
  file-system changes (remove, rename, mkdir, chmod, links);
* socket connects/binds/sends, name lookups, urllib/http.client requests;
* subprocess, os.system, exec*, spawn*, posix_spawn and fork;
* the first import of each non-stdlib top-level module, ctypes library loads,
  sys.path entries added or removed, other audit hooks being added, signals sent;
* "refused": opens, connects and process starts that raised EACCES, EPERM, EROFS or
  ENOSYS (what Landlock and seccomp answer), or ENOENT for a path outside the
  interpreter, repo and job folders (what bubblewrap's empty root answers).

Each distinct event is written once, at once (a run killed by a limit still leaves
what it did up to then), with os.write on a descriptor opened before repo code, so
recording raises no audit event of its own. At most MAX_AUDIT_EVENTS distinct
events, each string cut to MAX_AUDIT_STRING characters.

This is telemetry, not a boundary: repo code runs in this interpreter and can close
the descriptor, write lines of its own, or reach this module's state. The sandbox
is the boundary; the host reads the file as hostile input.

Standard library only; never imports safehub.
"""

from __future__ import annotations

import builtins
import contextlib
import errno as _errno
import io
import json
import os
import sys
import threading
from typing import Any, Callable, Dict, Iterator, List, Optional, Tuple

from _contract import AUDIT_FILE, MAX_AUDIT_EVENTS, MAX_AUDIT_LINE_BYTES, MAX_AUDIT_STRING

__all__ = ["start", "set_phase", "note_exception", "finish", "active", "runner_only"]

_HERE = os.path.dirname(os.path.abspath(__file__))
_WRITE_FLAGS = os.O_WRONLY | os.O_RDWR | os.O_APPEND | os.O_CREAT | os.O_TRUNC
_REFUSED = {_errno.EACCES, _errno.EPERM, _errno.EROFS, _errno.ENOSYS}

_FS_EVENTS = {
    "os.remove": "remove", "os.rmdir": "rmdir", "os.rename": "rename", "os.replace": "rename",
    "os.mkdir": "mkdir", "os.chmod": "chmod", "os.chown": "chown", "os.link": "link", "os.symlink": "symlink",
    "os.truncate": "truncate", "shutil.rmtree": "rmtree", "shutil.copyfile": "copy", "shutil.move": "move",
    "os.chflags": "chflags", "os.setxattr": "setxattr", "os.removexattr": "removexattr",
}  # fmt: skip
_SUBPROCESS_EVENTS = {
    "subprocess.Popen": "popen", "os.system": "system", "os.exec": "exec", "os.posix_spawn": "posix_spawn",
    "os.spawn": "spawn", "os.fork": "fork", "os.forkpty": "forkpty", "pty.spawn": "pty_spawn",
}  # fmt: skip
_SIGNAL_EVENTS = {"os.kill": "kill", "os.killpg": "killpg", "signal.pthread_kill": "pthread_kill"}
_DNS_EVENTS = ("socket.getaddrinfo", "socket.gethostbyname", "socket.gethostbyname_ex", "socket.gethostbyaddr")
_CONNECT_EVENTS = {"socket.connect": "connect", "socket.bind": "bind", "socket.sendto": "sendto",
                   "socket.sendmsg": "sendmsg"}


def _text(value: Any, depth: int = 0) -> str:
    """A bounded string for any argument, read through the built-in types' own slots
    (``str.__str__``, ``list.copy``...): a subclass from repo code could otherwise run
    its own __str__/__iter__/__getitem__ inside the hook."""
    if isinstance(value, str):
        text = str.__str__(value)
    elif isinstance(value, (bytes, bytearray)):
        text = bytes(memoryview(value)[: MAX_AUDIT_STRING * 4]).decode("utf-8", "replace")
    elif isinstance(value, (tuple, list)) and depth < 2:
        items = list.copy(value) if isinstance(value, list) else tuple.__getitem__(value, slice(0, 32))
        text = " ".join(_text(v, depth + 1) for v in items[:32])
    elif isinstance(value, bool) or value is None:
        text = "" if value is None else bool.__repr__(value)
    elif isinstance(value, int):
        text = int.__repr__(value)
    elif isinstance(value, float):
        text = float.__repr__(value)
    elif type(value).__module__ == "pathlib" and type(value).__name__.endswith("Path"):
        text = str(value)
    else:
        text = f"<{type(value).__name__}>"
    if len(text) > MAX_AUDIT_STRING:
        text = text[: MAX_AUDIT_STRING - 3] + "..."
    return text


class _Recorder:
    def __init__(self, out_dir: str, repo_dir: str, job_dir: str) -> None:
        self.fd: Optional[int] = os.open(os.path.join(out_dir, AUDIT_FILE),
                                         os.O_WRONLY | os.O_CREAT | os.O_APPEND | os.O_CLOEXEC, 0o600)
        self.lock = threading.RLock()
        self.local = threading.local()
        self.phase = "hubconf"
        self.seen: Dict[Tuple[str, ...], int] = {}
        self.counts: Dict[str, int] = {}
        self.total = 0
        self.dropped = 0
        self.stdlib = frozenset(getattr(sys, "stdlib_module_names", ())) | {"__future__", "__main__"}
        self.runner_modules = frozenset(n[:-3] for n in os.listdir(_HERE) if n.endswith(".py"))
        self.modules = set(m.split(".")[0] for m in sys.modules)  # already imported: not the repo's doing
        self.sys_path: List[str] = [p for p in sys.path if isinstance(p, str)] + [repo_dir]  # the runner adds repo_dir
        self.quiet = self._library_folders()  # reads here are the interpreter's, not listed
        self.visible = tuple(os.path.abspath(p) + os.sep for p in (repo_dir, job_dir)) + self.quiet

    @staticmethod
    def _library_folders() -> Tuple[str, ...]:
        import site

        folders = {sys.prefix, sys.base_prefix, sys.exec_prefix, _HERE}
        try:
            folders.update(site.getsitepackages())
        except Exception:  # noqa: BLE001
            pass
        torch = sys.modules.get("torch")
        torch_file = getattr(torch, "__file__", None)
        if isinstance(torch_file, str):
            folders.add(os.path.dirname(os.path.dirname(torch_file)))
        return tuple(sorted(os.path.abspath(f) + os.sep for f in folders if isinstance(f, str) and f))

    # --- recording -------------------------------------------------------------

    def record(self, kind: str, **fields: str) -> None:
        key = (kind, *(f"{k}={v}" for k, v in sorted(fields.items())))
        with self.lock:
            self.total += 1
            self.counts[kind] = self.counts.get(kind, 0) + 1
            if key in self.seen:
                self.seen[key] += 1
                return
            if len(self.seen) >= MAX_AUDIT_EVENTS:
                self.dropped += 1
                return
            self.seen[key] = 1
            self._write({"kind": kind, "phase": self.phase, **fields})

    def _write(self, event: Dict[str, Any]) -> None:
        if self.fd is None:
            return
        line = json.dumps(event, ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"
        if len(line) > MAX_AUDIT_LINE_BYTES:
            return
        try:
            os.write(self.fd, line)
        except OSError:  # repo code closed or broke the descriptor: telemetry stops, the run goes on
            self.fd = None

    def hook(self, event: str, args: Tuple[Any, ...]) -> None:
        handler = _HANDLERS.get(event)
        if handler is None or getattr(self.local, "busy", False):
            return
        self.local.busy = True
        try:
            handler(self, event, args)
        except Exception:  # noqa: BLE001 - an audit hook that raises would abort the repo's operation
            pass
        finally:
            self.local.busy = False

    def quiet_path(self, path: str) -> bool:
        return path.startswith(self.quiet)

    def hidden_path(self, path: str) -> bool:
        """A path outside every folder the sandbox shows on purpose."""
        return not os.path.abspath(path).startswith(self.visible)

    def check_sys_path(self, current: Any) -> None:
        if not isinstance(current, list):
            return
        now = [p for p in current if isinstance(p, str)]
        if now == self.sys_path:
            return
        before = set(self.sys_path)
        after = set(now)
        for p in now:
            if p not in before:
                self.record("sys_path", op="add", path=_text(p))
        for p in self.sys_path:
            if p not in after:
                self.record("sys_path", op="remove", path=_text(p))
        self.sys_path = now

    def refused(self, op: str, target: Any, exc: BaseException) -> None:
        code = getattr(exc, "errno", None)
        if not isinstance(code, int):
            return
        path = _text(target)
        if code in _REFUSED or (code == _errno.ENOENT and op == "open" and self.hidden_path(path)):
            self.record("refused", op=op, target=path, errno=_errno.errorcode.get(code, str(code)))

    def summary(self) -> None:
        with self.lock:
            if self.dropped:
                self._write({"kind": "dropped", "phase": self.phase, "count": self.dropped})
            self._write({"kind": "summary", "phase": self.phase, "counts": dict(self.counts), "total": self.total})


# --- event handlers ---------------------------------------------------------------


def _absolute(path: str) -> str:
    """Relative paths are the process's cwd's (the job's tmp folder): record where they point."""
    if not path or path.startswith("/") or path.startswith("<"):
        return path
    try:
        return _text(os.path.join(os.getcwd(), path))
    except OSError:  # the cwd was removed
        return path


def _on_open(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    path, mode, flags = (list(args) + [None, None, None])[:3]
    if isinstance(path, int) or path is None:
        return  # an already-open descriptor
    text = _absolute(_text(path))
    if isinstance(mode, str):
        write = any(c in mode for c in "wax+")
    else:
        write = isinstance(flags, int) and bool(flags & _WRITE_FLAGS)
    if not write and r.quiet_path(os.path.abspath(text)):
        return
    r.record("open", path=text, mode="w" if write else "r")


def _on_fs(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    op = _FS_EVENTS[event]
    paths = [a for a in args[:2] if isinstance(a, (str, bytes, os.PathLike))]
    if event in ("os.mkdir", "os.chmod", "os.chown", "os.truncate", "os.remove", "os.rmdir", "shutil.rmtree"):
        paths = paths[:1]
    r.record("fs", op=op, path=" -> ".join(_absolute(_text(p)) for p in paths))


def _on_connect(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    address = args[1] if len(args) > 1 else None
    if event == "socket.sendmsg" and address is None:
        return
    r.record("connect", op=_CONNECT_EVENTS[event], address=_text(address))


_INET = {2: "AF_INET", 10: "AF_INET6"}


def _on_socket(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    """socket.__new__(self, family, type, proto): only internet sockets are network
    intent (socketpair/AF_UNIX are how multiprocessing talks to itself)."""
    family = args[1] if len(args) > 1 else None
    if isinstance(family, int) and int.__int__(family) in _INET:
        r.record("connect", op="socket", address=_INET[int.__int__(family)])


def _on_dns(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    r.record("dns", host=_text(args[0] if args else ""))


def _on_http(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    if event == "urllib.Request":
        r.record("http", url=_text(args[0] if args else ""))
    else:  # http.client.connect(self, host, port)
        r.record("connect", op="http", address=_text(args[1:3]))


def _on_subprocess(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    op = _SUBPROCESS_EVENTS[event]
    if event == "subprocess.Popen":
        target = args[1] if len(args) > 1 and args[1] is not None else args[0] if args else ""
    elif event in ("os.fork", "os.forkpty"):
        target = ""
    elif event == "os.spawn":
        target = args[1:3]
    elif event == "os.system":
        target = args[0] if args else ""
    else:  # os.exec(path, args, env), os.posix_spawn(path, argv, env), pty.spawn(argv)
        target = args[1] if len(args) > 1 else args[0] if args else ""
    r.record("subprocess", op=op, target=_text(target))


def _on_import(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    if len(args) > 2:
        r.check_sys_path(args[2])
    module = args[0] if args else None
    if not isinstance(module, str):
        return
    top = module.split(".")[0]
    if top in r.modules or top in r.stdlib or top in r.runner_modules:
        return
    r.modules.add(top)
    r.record("import", module=_text(top))


def _on_ctypes(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    r.record("ctypes", name=_text(args[0] if args else ""))


def _on_hook(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    r.record("hook", op="sys.addaudithook")


def _on_signal(r: _Recorder, event: str, args: Tuple[Any, ...]) -> None:
    r.record("signal", op=_SIGNAL_EVENTS[event], target=_text(args[:2]))


_Handler = Callable[[_Recorder, str, Tuple[Any, ...]], None]
_HANDLERS: Dict[str, _Handler] = {
    "open": _on_open,
    "import": _on_import,
    "ctypes.dlopen": _on_ctypes,
    "sys.addaudithook": _on_hook,
    "urllib.Request": _on_http,
    "http.client.connect": _on_http,
    "socket.__new__": _on_socket,
    **{name: _on_fs for name in _FS_EVENTS},
    **{name: _on_subprocess for name in _SUBPROCESS_EVENTS},
    **{name: _on_signal for name in _SIGNAL_EVENTS},
    **{name: _on_dns for name in _DNS_EVENTS},
    **{name: _on_connect for name in _CONNECT_EVENTS},
}

# --- refusals: the outcome of the few calls whose errno tells what the sandbox did ----

_recorder: Optional[_Recorder] = None


def _wrap_refusals(r: _Recorder) -> None:
    import socket
    import subprocess

    real_open = builtins.open
    real_os_open = os.open
    real_connect = socket.socket.connect
    real_connect_ex = socket.socket.connect_ex
    real_socket_init = socket.socket.__init__
    real_popen_init = subprocess.Popen.__init__
    import _posixsubprocess

    real_fork_exec = _posixsubprocess.fork_exec

    def open(file: Any, *args: Any, **kwargs: Any) -> Any:  # noqa: A001 - stands in for builtins.open
        try:
            return real_open(file, *args, **kwargs)
        except OSError as exc:
            r.refused("open", file, exc)
            raise

    def os_open(path: Any, *args: Any, **kwargs: Any) -> int:
        try:
            return real_os_open(path, *args, **kwargs)
        except OSError as exc:
            r.refused("open", path, exc)
            raise

    def connect(self: socket.socket, address: Any) -> None:
        try:
            return real_connect(self, address)
        except OSError as exc:
            r.refused("connect", address, exc)
            raise

    def connect_ex(self: socket.socket, address: Any) -> int:
        code = real_connect_ex(self, address)
        if code:
            r.refused("connect", address, OSError(code, os.strerror(code)))
        return code

    def socket_init(self: socket.socket, *args: Any, **kwargs: Any) -> None:
        try:
            real_socket_init(self, *args, **kwargs)
        except OSError as exc:
            family = int.__int__(args[0]) if args and isinstance(args[0], int) else 2  # socket()'s default
            r.refused("socket", _INET.get(family, str(family)), exc)
            raise

    def fork_exec(*args: Any, **kwargs: Any) -> Any:
        # _posixsubprocess.fork_exec raises no audit event of its own (subprocess.Popen
        # does, above it): a repo calling it directly started /bin/sh unseen (red team
        # round 3). Popen's own calls are recorded twice, as "popen" and "fork_exec".
        r.record("subprocess", op="fork_exec", target=_text(args[0] if args else ""))
        return real_fork_exec(*args, **kwargs)

    def popen_init(self: Any, args: Any, *rest: Any, **kwargs: Any) -> None:
        try:
            real_popen_init(self, args, *rest, **kwargs)
        except OSError as exc:
            r.refused("subprocess", args, exc)
            raise

    # setattr: the stand-ins take Any where the stubs are narrower.
    setattr(builtins, "open", open)
    setattr(io, "open", open)
    setattr(os, "open", os_open)
    setattr(socket.socket, "connect", connect)
    setattr(socket.socket, "connect_ex", connect_ex)
    setattr(socket.socket, "__init__", socket_init)
    setattr(subprocess.Popen, "__init__", popen_init)
    setattr(_posixsubprocess, "fork_exec", fork_exec)


def start(out_dir: str, repo_dir: str, job_dir: str) -> None:
    """Install the hook; call once, before any repo code runs."""
    global _recorder
    recorder = _Recorder(out_dir, repo_dir, job_dir)
    _wrap_refusals(recorder)
    sys.addaudithook(recorder.hook)
    _recorder = recorder


def active() -> bool:
    return _recorder is not None


@contextlib.contextmanager
def runner_only() -> Iterator[None]:
    """The runner's own work on this thread (reading its arguments) is not recorded;
    repo threads running meanwhile still are (the flag is per thread)."""
    recorder = _recorder
    if recorder is None:
        yield
        return
    before = getattr(recorder.local, "busy", False)
    recorder.local.busy = True
    try:
        yield
    finally:
        recorder.local.busy = before


def set_phase(phase: str) -> None:
    if _recorder is not None:
        _recorder.check_sys_path(sys.path)  # changes since the last import are the ending phase's
        _recorder.phase = phase


def note_exception(exc: BaseException) -> None:
    """An error that ended a phase: refusals in its chain (a repo may raise its own
    error from a PermissionError) are recorded once more, from the exception's side."""
    if _recorder is None:
        return
    seen = 0
    current: Optional[BaseException] = exc
    while current is not None and seen < 16:
        if isinstance(current, OSError) and isinstance(current.errno, int):
            _recorder.refused("exception", current.filename if current.filename is not None else "", current)
        current = current.__cause__ or current.__context__
        seen += 1


def finish() -> None:
    """The closing line with counts. Recording stops (the runner's own result writing
    is not the repo's doing)."""
    global _recorder
    recorder, _recorder = _recorder, None
    if recorder is None:
        return
    recorder.check_sys_path(sys.path)
    recorder.local.busy = True  # this thread records nothing more
    with recorder.lock:
        recorder.summary()
        fd, recorder.fd = recorder.fd, None
    if fd is not None:
        try:
            os.close(fd)
        except OSError:
            pass
