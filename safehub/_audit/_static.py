"""The static part of an audit: what the repo is and declares, read without running it.

Python files are parsed with ``ast`` (never imported); pickles are walked opcode by
opcode (``_pickles``). Calls are matched by their dotted name after the file's own
import aliases are applied (``import subprocess as sp; sp.run(...)`` is
``subprocess.run``); code that builds names at run time (``getattr(os, "sys" +
"tem")``) is beyond a static reading, which is why the dynamic part exists.
"""

from __future__ import annotations

import ast
import os
import re
import stat
from pathlib import Path
from typing import Any

from .._hubconf import Hubconf
from ._pickles import looks_like_pickle, scan_pickle_file

__all__ = ["scan_static", "SEVERITIES", "MAX_FINDINGS"]

SEVERITIES = ("high", "medium", "info")
MAX_FILES = 5000
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 64 * 1024 * 1024
MAX_FINDINGS = 2000
MAX_PICKLES = 200
LARGE_BINARY_BYTES = 10 * 1024 * 1024
_SNIPPET = 160
_URL = re.compile(r"\b(?:https?|ftp|s3|gs)://[^\s'\"<>]{3,}")
_SKIP_DIRS = frozenset({".git", "__pycache__", ".hg", ".svn"})

# dotted call name -> (category, severity, what)
_CALLS: dict[str, tuple[str, str, str]] = {}


def _add(category: str, severity: str, what: str, *names: str) -> None:
    for name in names:
        _CALLS[name] = (category, severity, what)


_add("process", "high", "starts a process", "os.system", "os.popen", "os.execv", "os.execve", "os.execl", "os.execle",
     "os.execlp", "os.execlpe", "os.execvp", "os.execvpe", "os.spawnl", "os.spawnle", "os.spawnlp", "os.spawnv",
     "os.spawnve", "os.spawnvp", "os.posix_spawn", "os.posix_spawnp", "os.fork", "os.forkpty", "pty.spawn",
     "subprocess.Popen", "subprocess.run", "subprocess.call", "subprocess.check_call", "subprocess.check_output",
     "subprocess.getoutput", "subprocess.getstatusoutput", "commands.getoutput", "asyncio.create_subprocess_exec",
     "asyncio.create_subprocess_shell", "multiprocessing.Process", "_posixsubprocess.fork_exec",
     "subprocess._fork_exec")
_add("native", "high", "loads native code", "ctypes.CDLL", "ctypes.cdll.LoadLibrary", "ctypes.PyDLL", "ctypes.WinDLL",
     "ctypes.util.find_library", "cffi.FFI", "torch.ops.load_library", "torch.utils.cpp_extension.load",
     "torch.utils.cpp_extension.load_inline")
_add("dynamic_code", "high", "runs code built at run time", "eval", "exec", "compile", "builtins.eval", "builtins.exec",
     "builtins.compile", "__import__", "importlib.import_module", "runpy.run_path", "runpy.run_module")
_add("deserialization", "high", "unpickles data", "pickle.load", "pickle.loads", "pickle.Unpickler", "cPickle.load",
     "cPickle.loads", "dill.load", "dill.loads", "joblib.load", "marshal.load", "marshal.loads", "shelve.open",
     "cloudpickle.load", "cloudpickle.loads", "torch.jit.load", "torch.package.PackageImporter")
_add("network", "medium", "opens a network connection", "socket.socket", "socket.create_connection",
     "urllib.request.urlopen", "urllib.request.urlretrieve", "urllib.urlopen", "urllib2.urlopen",
     "http.client.HTTPConnection", "http.client.HTTPSConnection", "ftplib.FTP", "smtplib.SMTP", "telnetlib.Telnet",
     "requests.get", "requests.post", "requests.put", "requests.request", "requests.Session", "httpx.get",
     "httpx.Client", "aiohttp.ClientSession", "wget.download", "gdown.download")
_add("download", "info", "downloads through torch.hub (the host's download broker serves it)",
     "torch.hub.load_state_dict_from_url", "torch.hub.download_url_to_file", "torch.utils.model_zoo.load_url")
_add("sys_path", "medium", "changes sys.path", "sys.path.insert", "sys.path.append", "sys.path.extend",
     "sys.path.remove", "sys.path.pop", "sys.path.clear", "site.addsitedir")
_add("fs_change", "medium", "deletes or changes permissions of files", "os.remove", "os.unlink", "os.rmdir",
     "os.removedirs", "shutil.rmtree", "os.chmod", "os.chown", "shutil.move", "os.rename", "os.replace")
_add("pip_install", "high", "installs packages at run time", "pip.main", "pip._internal.main",
     "pip._internal.cli.main.main", "setuptools.command.easy_install.main")

_NETWORK_IMPORTS = frozenset({"socket", "requests", "httpx", "aiohttp", "urllib3", "ftplib", "smtplib", "telnetlib",
                              "paramiko", "websocket", "websockets", "wget", "gdown", "boto3", "botocore"})
_NATIVE_IMPORTS = frozenset({"ctypes", "cffi"})
_WRITE_MODE = re.compile(r"[wax+]")


def _aliases(tree: ast.Module) -> dict[str, str]:
    """Local name -> the dotted name it stands for, from every import in the file."""
    out: dict[str, str] = {}
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if a.asname:
                    out[a.asname] = a.name
                else:
                    out.setdefault(a.name.split(".")[0], a.name.split(".")[0])
        elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
            for a in node.names:
                if a.name != "*":
                    out[a.asname or a.name] = f"{node.module}.{a.name}"
    return out


def _dotted(node: ast.AST, aliases: dict[str, str]) -> str | None:
    parts: list[str] = []
    while isinstance(node, ast.Attribute):
        parts.append(node.attr)
        node = node.value
    if not isinstance(node, ast.Name):
        return None
    parts.append(aliases.get(node.id, node.id))
    return ".".join(reversed(parts))


def _const_str(node: ast.AST | None) -> str | None:
    return node.value if isinstance(node, ast.Constant) and isinstance(node.value, str) else None


def _strings(node: ast.AST) -> list[str]:
    """The constant strings of a command: a string, or a list/tuple of them."""
    items = node.elts if isinstance(node, (ast.List, ast.Tuple)) else [node]
    return [v for v in (_const_str(i) for i in items) if v is not None]


def _kw(call: ast.Call, name: str) -> ast.AST | None:
    return next((k.value for k in call.keywords if k.arg == name), None)


def _outside_path(node: ast.AST | None, aliases: dict[str, str]) -> str | None:
    """What marks a path argument as outside the repo: an absolute or ~ constant, or a home/tmp lookup."""
    text = _const_str(node)
    if text is not None:
        return text if text.startswith(("/", "~")) or ".." in text.split("/") else None
    for sub in ast.walk(node) if node is not None else ():
        if isinstance(sub, ast.Call):
            name = _dotted(sub.func, aliases) or ""
            if name in ("os.path.expanduser", "pathlib.Path.home", "Path.home", "os.path.expandvars",
                        "tempfile.gettempdir", "os.getenv", "os.environ.get"):
                return f"{name}(...)"
        text = _const_str(sub)
        if text is not None and text.startswith(("/", "~")):
            return text
    return None


class _FileScan(ast.NodeVisitor):
    def __init__(self, rel: str, aliases: dict[str, str], findings: list[dict[str, Any]]) -> None:
        self.rel, self.aliases, self.findings = rel, aliases, findings

    def add(self, node: ast.AST, category: str, severity: str, what: str, detail: str) -> None:
        if len(self.findings) < MAX_FINDINGS:
            self.findings.append({"file": self.rel, "line": getattr(node, "lineno", 0), "category": category,
                                  "severity": severity, "what": what, "detail": detail[:_SNIPPET]})

    def visit_Import(self, node: ast.Import) -> None:
        for a in node.names:
            self._imported(node, a.name)

    def visit_ImportFrom(self, node: ast.ImportFrom) -> None:
        if node.module and not node.level:
            self._imported(node, node.module)

    def _imported(self, node: ast.AST, module: str) -> None:
        top = module.split(".")[0]
        if top in _NETWORK_IMPORTS:
            self.add(node, "network", "medium", "imports a network client", module)
        elif top in _NATIVE_IMPORTS:
            self.add(node, "native", "high", "imports a native-code interface", module)
        elif top == "pip":
            self.add(node, "pip_install", "high", "imports pip", module)
        elif top == "_posixsubprocess":  # fork_exec below subprocess: no audit event (red team round 3)
            self.add(node, "process", "high", "imports the private process-spawning module", module)

    def visit_Call(self, node: ast.Call) -> None:
        name = _dotted(node.func, self.aliases)
        if name is not None:
            self._call(node, name)
        self.generic_visit(node)

    def _call(self, node: ast.Call, name: str) -> None:
        hit = _CALLS.get(name)
        if name == "torch.load":
            safe = isinstance(_kw(node, "weights_only"), ast.Constant) and _kw(node, "weights_only").value is True  # type: ignore[union-attr]
            hit = ("deserialization", "info" if safe else "medium",
                   "torch.load with weights_only=True" if safe else "torch.load (unpickles unless weights_only=True)")
        if hit is not None:
            category, severity, what = hit
            args = [_const_str(a) for a in node.args]
            detail = name + ("(" + ", ".join(repr(a) for a in args if a is not None)[:100] + ")" if any(args) else "")
            words = " ".join(_strings(node.args[0])) if node.args else ""
            if category == "process" and "pip" in words and "install" in words:
                self.add(node, "pip_install", "high", "installs packages at run time", detail)
            self.add(node, category, severity, what, detail)
            return
        if name in ("open", "io.open", "builtins.open", "os.open") or name.endswith((".write_text", ".write_bytes")):
            mode = _const_str(node.args[1]) if len(node.args) > 1 else _const_str(_kw(node, "mode"))
            writes = name.endswith((".write_text", ".write_bytes")) or (mode is not None and _WRITE_MODE.search(mode))
            target = _outside_path(node.args[0] if node.args else _kw(node, "file"), self.aliases)
            if name.endswith((".write_text", ".write_bytes")):
                target = _outside_path(node.func, self.aliases)
            if writes and target is not None:
                self.add(node, "write_outside", "medium", "writes a file outside the repo", f"{name}({target!r})")
        elif name in ("os.makedirs", "os.mkdir", "shutil.copy", "shutil.copyfile", "shutil.copytree", "os.symlink"):
            target = _outside_path(node.args[-1] if node.args else None, self.aliases)
            if target is not None:
                self.add(node, "write_outside", "medium", "creates files outside the repo", f"{name}({target!r})")

    def visit_Assign(self, node: ast.Assign) -> None:
        for target in node.targets:
            base = target.value if isinstance(target, ast.Subscript) else target
            if _dotted(base, self.aliases) == "sys.path":
                self.add(node, "sys_path", "medium", "changes sys.path", "sys.path = ...")
        self.generic_visit(node)

    def visit_AugAssign(self, node: ast.AugAssign) -> None:
        if _dotted(node.target, self.aliases) == "sys.path":
            self.add(node, "sys_path", "medium", "changes sys.path", "sys.path += ...")
        self.generic_visit(node)

    def visit_Constant(self, node: ast.Constant) -> None:
        if isinstance(node.value, str):
            for url in _URL.findall(node.value)[:4]:
                self.add(node, "url", "info", "hard-coded URL", url)
            if "pip install" in node.value:
                self.add(node, "pip_install", "high", "mentions a pip install command", node.value)


def _walk_files(repo: Path) -> tuple[list[tuple[Path, str, os.stat_result]], bool]:
    """Every entry below ``repo`` (lstat: links are listed, never followed), bounded."""
    out: list[tuple[Path, str, os.stat_result]] = []
    for dirpath, dirnames, filenames in os.walk(repo, followlinks=False):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS)
        here = Path(dirpath)
        for name in sorted(filenames) + [d for d in dirnames if os.path.islink(here / d)]:
            path = here / name
            try:
                st = os.lstat(path)
            except OSError:
                continue
            out.append((path, path.relative_to(repo).as_posix(), st))
            if len(out) >= MAX_FILES * 4:
                return out, True
    return out, False


def _is_binary(path: Path) -> bool:
    try:
        with open(path, "rb") as f:
            return b"\0" in f.read(8192)
    except OSError:
        return False


def scan_static(repo: Path, hub: Hubconf, *, family: frozenset[str] | set[str]) -> dict[str, Any]:
    """Files, symlinks, large binaries, imports, findings and pickles of ``repo``."""
    from .._env._scan import scan_repo

    entries, truncated = _walk_files(repo)
    findings: list[dict[str, Any]] = []
    symlinks: list[dict[str, Any]] = []
    binaries: list[dict[str, Any]] = []
    pickles: list[dict[str, Any]] = []
    files = size = python_files = read_bytes = 0
    for path, rel, st in entries:
        if stat.S_ISLNK(st.st_mode):
            try:
                target = os.readlink(path)
            except OSError:
                target = "?"
            inside = Path(os.path.realpath(path)).is_relative_to(Path(os.path.realpath(repo)))
            symlinks.append({"path": rel, "target": target[:_SNIPPET], "inside_repo": inside})
            continue
        if not stat.S_ISREG(st.st_mode):
            continue
        files += 1
        size += st.st_size
        if rel.endswith(".py") and python_files < MAX_FILES:
            if st.st_size > MAX_FILE_BYTES or read_bytes + st.st_size > MAX_TOTAL_BYTES:
                truncated = True
                continue
            python_files += 1
            read_bytes += st.st_size
            try:
                tree = ast.parse(path.read_bytes(), filename=rel)
            except (SyntaxError, ValueError, RecursionError, MemoryError, OSError) as exc:
                findings.append({"file": rel, "line": getattr(exc, "lineno", 0) or 0, "category": "unparsable",
                                 "severity": "info", "what": "could not be parsed", "detail": type(exc).__name__})
                continue
            try:
                _FileScan(rel, _aliases(tree), findings).visit(tree)
            except RecursionError:
                findings.append({"file": rel, "line": 0, "category": "unparsable", "severity": "info",
                                 "what": "nested too deeply to scan", "detail": "RecursionError"})
            continue
        if looks_like_pickle(path) and len(pickles) < MAX_PICKLES:
            pickles.append(scan_pickle_file(path, rel))
        elif st.st_size >= LARGE_BINARY_BYTES and _is_binary(path):
            binaries.append({"path": rel, "bytes": st.st_size})
        elif st.st_size >= LARGE_BINARY_BYTES:
            binaries.append({"path": rel, "bytes": st.st_size, "text": True})
    for entry in pickles:
        if entry["unreadable"] or set(entry["truncated"]) & {"opcodes", "bytes"}:
            why = entry["unreadable"] or f"walk stopped at a bound: {', '.join(entry['truncated'])}"
            findings.append({"file": entry["path"], "line": 0, "category": "pickle_unread", "severity": "medium",
                             "what": "pickle-like file not walked whole (globals after the stop are unknown)",
                             "detail": why})
        for g in entry["globals"]:
            if g["class"] != "torch":
                severity = "high" if g["class"] == "dangerous" else "medium"
                findings.append({"file": entry["path"], "line": 0, "category": "pickle_global", "severity": severity,
                                 "what": f"pickle references a {g['class']} global", "detail": g["name"]})
    for link in symlinks:
        if not link["inside_repo"]:
            findings.append({"file": link["path"], "line": 0, "category": "symlink", "severity": "medium",
                             "what": "symlink pointing outside the repo", "detail": link["target"]})
    scan = scan_repo(repo, family=family)
    imports = {"third_party": sorted(scan.third_party), "optional": sorted(scan.optional),
               "torch_family": sorted(scan.family | scan.family_optional), "local": sorted(scan.local),
               "stdlib": sorted(scan.stdlib), "where": dict(sorted(scan.where.items())), "truncated": scan.truncated}
    order = {s: i for i, s in enumerate(SEVERITIES)}
    findings.sort(key=lambda f: (order[f["severity"]], f["file"], f["line"], f["category"]))
    return {
        "files": {"count": files, "bytes": size, "python_files": python_files, "truncated": truncated},
        "hubconf": _hubconf_part(hub),
        "imports": imports,
        "findings": findings,
        "findings_truncated": len(findings) >= MAX_FINDINGS,
        "symlinks": symlinks,
        "large_binaries": binaries,
        "pickles": pickles,
    }


def _hubconf_part(hub: Hubconf) -> dict[str, Any]:
    return {
        "entrypoints": [
            {"name": ep.name, "kind": ep.kind, "signature": ep.signature, "doc": (ep.doc or None) and ep.doc[:2000],
             "line": ep.lineno, "certain": ep.name in hub.certain}
            for ep in sorted(hub.entrypoints.values(), key=lambda e: e.name) if not ep.name.startswith("_")
        ],
        "complete": hub.complete,
        "reasons": list(hub.reasons),
        "dependencies": list(hub.dependencies),
    }
