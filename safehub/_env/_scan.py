"""Which packages a repo imports, read with :mod:`ast` (nothing is run).

The walk starts at hubconf.py and follows the repo's own modules it imports,
transitively, including imports inside functions (entrypoints often import
lazily). Each top-level name is classified:

* ``stdlib``: ``sys.stdlib_module_names`` (and ``__future__``);
* ``family``: provided by the host's torch family folder (torch, sympy, ...);
* ``local``: a module or folder of the repo itself (anywhere in it: repos put
  their subfolders on ``sys.path``);
* ``third_party``: everything else. ``optional`` marks names imported only
  under ``try: ... except ImportError`` (or ``if TYPE_CHECKING:``).

Imports inside functions of hubconf.py are required: entrypoints import lazily
and always run. So are imports inside the functions hubconf imports by name
(``from src.silero import silero_stt``, through re-exports and star imports) and
the module-level functions those name in turn. Imports inside the *other*
functions of the repo's modules (helpers, methods) are ``lazy``:
libraries vendored into repos import their optional features there (timm's
weight converters import jax and tensorflow, yolov5's exporters coremltools and
openvino), so installing them would pull in gigabytes and fail on names no table
can map. A module reached only through lazy imports is scanned as lazy too. Lazy
names are reported, not installed; if one is needed after all, the sandbox's
ImportError names the package and the ``extra_dependencies=`` fix.

A top-level name the repo provides at its root (``xcit.py``) resolves there, as
Python does with the repo folder first on ``sys.path``; same-named modules deeper
in the repo (``detection/backbone/xcit.py``) are followed only when the root has none.

Bounded: at most MAX_FILES files of at most MAX_FILE_BYTES each, and a walk of
at most MAX_ENTRIES directory entries to learn the repo's module names.
"""

from __future__ import annotations

import ast
import json
import os
import stat
import sys
from dataclasses import field
from pathlib import Path

from .._records import record

__all__ = ["ScanResult", "scan_repo", "MAX_FILES"]

MAX_FILES = 2000
MAX_FILE_BYTES = 2 * 1024 * 1024
MAX_TOTAL_BYTES = 64 * 1024 * 1024  # all files parsed by one scan
MAX_ENTRIES = 50_000
_SKIP_DIRS = {".git", "__pycache__", "node_modules", ".github", ".tox", ".venv", "venv"}
_IMPORT_ERRORS = {"ImportError", "ModuleNotFoundError", "Exception", "BaseException"}
SCAN_FORMAT = 3


_KINDS = ("third_party", "optional", "family", "family_optional", "local", "stdlib", "lazy")


@record
class ScanResult:
    """Top-level import names by class; ``where`` says where each was first seen."""

    third_party: set[str] = field(default_factory=set)  # required
    optional: set[str] = field(default_factory=set)  # third-party, only under try/except ImportError
    family: set[str] = field(default_factory=set)  # required
    family_optional: set[str] = field(default_factory=set)
    local: set[str] = field(default_factory=set)
    stdlib: set[str] = field(default_factory=set)
    lazy: set[str] = field(default_factory=set)  # third-party, only inside functions of non-hubconf modules
    where: dict[str, str] = field(default_factory=dict)
    files: int = 0
    truncated: bool = False  # hit a bound: the scan may have missed imports

    def as_dict(self) -> dict:
        out = {k: sorted(getattr(self, k)) for k in _KINDS}
        return {**out, "where": dict(sorted(self.where.items())), "files": self.files, "truncated": self.truncated}

    @classmethod
    def from_dict(cls, data: dict) -> ScanResult:
        return cls(**{k: set(data[k]) for k in _KINDS},
                   where=dict(data["where"]), files=int(data["files"]), truncated=bool(data["truncated"]))


def _repo_index(repo: Path) -> tuple[dict[str, list[Path]], bool]:
    """Top-level module name -> the files/folders in the repo that could provide it."""
    index: dict[str, list[Path]] = {}
    seen = 0
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        seen += len(dirnames) + len(filenames)
        if seen > MAX_ENTRIES:
            return index, True
        here = Path(dirpath)
        for d in dirnames:
            if d.isidentifier():
                index.setdefault(d, []).append(here / d)
        for f in filenames:
            stem, ext = os.path.splitext(f)
            if ext in (".py", ".so", ".pyd") and stem.split(".")[0].isidentifier():
                index.setdefault(stem.split(".")[0], []).append(here / f)
    return index, False


def _is_optional_try(node: ast.Try) -> bool:
    for handler in node.handlers:
        if handler.type is None:
            return True
        types = handler.type.elts if isinstance(handler.type, ast.Tuple) else [handler.type]
        for t in types:
            name = t.id if isinstance(t, ast.Name) else t.attr if isinstance(t, ast.Attribute) else ""
            if name in _IMPORT_ERRORS:
                return True
    return False


def _is_type_checking(node: ast.If) -> bool:
    t = node.test
    return (isinstance(t, ast.Name) and t.id == "TYPE_CHECKING") or (
        isinstance(t, ast.Attribute) and t.attr == "TYPE_CHECKING")


_DEFS = (ast.FunctionDef, ast.AsyncFunctionDef)
ALL = "*"  # every module-level function of a file is an entry (hubconf itself, star imports)


def _imports(tree: ast.AST) -> list[tuple[ast.Import | ast.ImportFrom, bool, str | None]]:
    """Every import statement with whether it is optional and its scope: None at
    module level, the name of the module-level function it sits in, or "" inside
    any other function (a method, a lambda). Iterative: no recursion limit."""
    out: list[tuple[ast.Import | ast.ImportFrom, bool, str | None]] = []
    # (node, optional, scope, inside a class body)
    stack: list[tuple[ast.AST, bool, str | None, bool]] = [(tree, False, None, False)]
    while stack:
        node, optional, scope, in_class = stack.pop()
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            out.append((node, optional, scope))
            continue
        if isinstance(node, _DEFS) and scope is None:
            scope = "" if in_class else node.name
        elif isinstance(node, ast.Lambda) and scope is None:
            scope = ""
        in_class = in_class or isinstance(node, ast.ClassDef)
        if isinstance(node, ast.Try) or (sys.version_info >= (3, 11) and isinstance(node, getattr(ast, "TryStar"))):
            guarded = optional or _is_optional_try(node)
            stack.extend((c, guarded, scope, in_class) for c in node.body)
            for part in (*node.handlers, *node.orelse, *node.finalbody):
                stack.append((part, optional, scope, in_class))
            continue
        if isinstance(node, ast.If) and _is_type_checking(node):
            stack.extend((c, True, scope, in_class) for c in node.body)
            stack.extend((c, optional, scope, in_class) for c in node.orelse)
            continue
        stack.extend((c, optional, scope, in_class) for c in ast.iter_child_nodes(node))
    out.sort(key=lambda item: (getattr(item[0], "lineno", 0), item[1], item[2] or ""))
    return out


def _entry_closure(tree: ast.Module, entries: frozenset[str]) -> frozenset[str] | None:
    """The module-level functions an entry may run: the entries and, transitively, the
    module-level functions their bodies name. None means all of them."""
    if ALL in entries:
        return None
    defs = {n.name: n for n in tree.body if isinstance(n, _DEFS)}
    out: set[str] = set()
    todo = [e for e in entries if e in defs]
    while todo:
        name = todo.pop()
        if name in out:
            continue
        out.add(name)
        todo.extend(n.id for n in ast.walk(defs[name]) if isinstance(n, ast.Name) and n.id in defs and n.id not in out)
    return frozenset(out)


def _module_files(bases: list[Path], parts: list[str]) -> list[Path]:
    """Files of module ``parts`` under each candidate base (a folder or file named parts[0])."""
    out: list[Path] = []
    for base in bases:
        if base.is_file():
            if len(parts) == 1:
                out.append(base)
            continue
        node = base
        init = node / "__init__.py"
        if init.is_file():
            out.append(init)
        for i, part in enumerate(parts[1:], start=1):
            if (node / f"{part}.py").is_file():
                out.append(node / f"{part}.py")
                break
            node = node / part
            if not node.is_dir():
                break
            if (node / "__init__.py").is_file():
                out.append(node / "__init__.py")
    return out


def scan_repo(repo: Path, *, family: set[str] | frozenset[str], stdlib: frozenset[str] | None = None) -> ScanResult:
    """Scan ``repo`` starting at hubconf.py. Unreadable or unparsable files are skipped
    (the sandbox will report them if they matter)."""
    repo = Path(repo)
    stdlib = frozenset(sys.stdlib_module_names) | {"__future__"} if stdlib is None else stdlib
    root = Path(os.path.realpath(repo))
    index, truncated = _repo_index(repo)
    result = ScanResult(truncated=truncated)
    hubconf = repo / "hubconf.py"
    # (file, reached only lazily, the functions of it that entrypoints may call)
    queue: list[tuple[Path, bool, frozenset[str]]] = [(hubconf, False, frozenset({ALL}))]
    seen: dict[Path, tuple[bool, frozenset[str]]] = {}  # a stronger visit rescans the file
    total = 0
    while queue:
        path, file_lazy, entries = queue.pop()
        if path in seen:
            was_lazy, was_entries = seen[path]
            if (file_lazy or not was_lazy) and (entries <= was_entries or ALL in was_entries):
                continue
            file_lazy, entries = file_lazy and was_lazy, entries | was_entries
        seen[path] = (file_lazy, entries)
        if len(seen) > MAX_FILES:
            result.truncated = True
            break
        try:
            # Only regular files inside the repo: a link to a FIFO or /dev would block or leak.
            real = Path(os.path.realpath(path))
            if not (real == root or root in real.parents) or not stat.S_ISREG(os.stat(real).st_mode):
                continue
            with open(real, "rb") as f:
                source = f.read(MAX_FILE_BYTES + 1)
            if len(source) > MAX_FILE_BYTES or total + len(source) > MAX_TOTAL_BYTES:
                result.truncated = True
                continue
            total += len(source)
            tree = ast.parse(source, filename=str(path))
        except (OSError, SyntaxError, ValueError, RecursionError, MemoryError):
            continue
        result.files += 1
        rel = os.path.relpath(path, repo)
        closure = _entry_closure(tree, entries)
        for node, optional, scope in _imports(tree):
            # Required: module level, or inside a function an entrypoint may call.
            lazy = file_lazy or (scope is not None and (scope == "" or (closure is not None and scope not in closure)))
            # Names imported from the repo's modules that are (re-exported) entrypoints.
            passed: frozenset[str] = frozenset()
            if isinstance(node, ast.ImportFrom) and not lazy:
                names = {a.name for a in node.names}
                if closure is None or ALL in entries:
                    passed = frozenset(names)
                else:
                    passed = frozenset(names & entries) | (entries if "*" in names else frozenset())
            if isinstance(node, ast.ImportFrom) and node.level:
                # Relative: always the repo's own code.
                base = path.parent
                for _ in range(node.level - 1):
                    base = base.parent
                parts = (node.module or "").split(".") if node.module else []
                target = base.joinpath(*parts) if parts else base
                cands = [target.with_suffix(".py"), target / "__init__.py"]
                cands += [target / f"{a.name}.py" for a in node.names] + [target / a.name / "__init__.py" for a in node.names]
                queue.extend((c, lazy, passed) for c in cands if c.is_file() and repo in c.parents)
                continue
            if isinstance(node, ast.Import):
                modules = [a.name for a in node.names]
            else:
                modules = [node.module or ""] + [f"{node.module}.{a.name}" for a in node.names if a.name != "*"]
            for module in modules:
                parts = module.split(".")
                top = parts[0]
                if not top:
                    continue
                if top in index:
                    result.local.add(top)
                    bases = index[top]
                    at_root = [b for b in bases if b.parent == repo]  # what `import top` finds first
                    queue.extend((f, lazy, passed) for f in _module_files(at_root or bases, parts))
                elif top in stdlib:
                    result.stdlib.add(top)
                elif top in family:
                    if not optional and not lazy:
                        result.family.add(top)
                        result.family_optional.discard(top)
                    elif top not in result.family:
                        result.family_optional.add(top)
                elif optional:
                    if top not in result.third_party:
                        result.optional.add(top)
                elif lazy:
                    if top not in result.third_party and top not in result.optional:
                        result.lazy.add(top)
                else:
                    if top in result.lazy or top in result.optional:
                        result.where.pop(top, None)  # point at the import that makes it required
                    result.third_party.add(top)
                    result.optional.discard(top)
                    result.lazy.discard(top)
                if top not in result.where:
                    result.where[top] = f"{rel}:{node.lineno}"
    return result


# --- caching ------------------------------------------------------------------


def _signature(repo: Path) -> str:
    """What the scan depends on: every .py file's path, size and mtime (stat only)."""
    import hashlib

    h = hashlib.sha256(f"{SCAN_FORMAT}:{repo}".encode())
    seen = 0
    for dirpath, dirnames, filenames in os.walk(repo):
        dirnames[:] = sorted(d for d in dirnames if d not in _SKIP_DIRS and not d.startswith("."))
        seen += len(dirnames) + len(filenames)
        if seen > MAX_ENTRIES:
            break
        h.update(f"D{dirpath}\0".encode())
        for f in sorted(filenames):
            if f.endswith((".py", ".so", ".pyd")):
                try:
                    st = os.stat(os.path.join(dirpath, f))
                except OSError:
                    continue
                h.update(f"{f}\0{st.st_size}\0{st.st_mtime_ns}\0".encode())
    return h.hexdigest()


def cached_scan(repo: Path, cache_dir: Path | None, *, family: frozenset[str], immutable: bool = False) -> ScanResult:
    """``scan_repo`` with a cache keyed by the repo's files (path, size, mtime) and the family names.
    ``immutable``: the folder never changes once written (a checkout pinned to a commit SHA),
    so its path alone identifies it and no file is even stat'ed on a cache hit."""
    if cache_dir is None:
        return scan_repo(repo, family=family)
    import hashlib

    ident = f"{SCAN_FORMAT}:sha-pinned:{os.path.realpath(repo)}" if immutable else _signature(repo)
    key = hashlib.sha256((ident + "\0" + ",".join(sorted(family))).encode()).hexdigest()[:32]
    path = cache_dir / f"{key}.json"
    try:
        with open(path, "rb") as f:
            return ScanResult.from_dict(json.loads(f.read(8 << 20)))
    except (OSError, ValueError, KeyError, TypeError):
        pass
    result = scan_repo(repo, family=family)
    try:
        cache_dir.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(f".{os.getpid()}.tmp")
        tmp.write_text(json.dumps(result.as_dict()), encoding="utf-8")
        os.replace(tmp, path)
    except OSError:
        pass
    return result
