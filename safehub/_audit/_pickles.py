"""Which globals a pickle would import, read by walking its opcodes: never unpickled.

The walk is ``pickletools.genops`` (the standard library's opcode decoder, which
executes nothing) plus a small stack simulation that only tracks strings, so that
``STACK_GLOBAL`` (protocol 4+, whose module and name come from the stack, often
through the memo) is resolved as well as ``GLOBAL`` and ``INST`` (whose names are
in the opcode's argument). Files read:

* zip-format torch checkpoints (``torch.save`` since 1.6): every ``*/data.pkl``
  member (its tensors' raw bytes are never pickles);
* legacy torch files and plain pickles: up to MAX_PICKLES_PER_STREAM pickles one
  after another (the legacy format is magic, protocol, sys info, the object, the
  storage keys, then raw bytes).

Everything is bounded: bytes read, opcodes walked, stack and memo entries, globals
listed. A bound hit is reported (``truncated``), never silently ignored; a pickle
the walk cannot follow is reported as ``unreadable`` with pickletools' reason.
"""

from __future__ import annotations

import io
import os
import pickletools
import stat
import zipfile
from pathlib import Path
from typing import Any

__all__ = ["scan_pickle_file", "looks_like_pickle", "classify_global", "PICKLE_SUFFIXES"]

PICKLE_SUFFIXES = (".pt", ".pth", ".pkl", ".pickle", ".ckpt", ".bin", ".tar", ".pth.tar", ".p")
MAX_PICKLE_BYTES = 64 * 1024 * 1024  # of one pickle stream (a data.pkl, or the head of a legacy file)
MAX_OPCODES = 5_000_000
MAX_STACK = 100_000
MAX_MEMO = 100_000
MAX_GLOBALS = 500
MAX_PICKLES_PER_STREAM = 5
MAX_ZIP_MEMBERS = 10_000
MAX_ZIP_PICKLE_BYTES = 256 * 1024 * 1024  # all the pickles of one zip together (a zip bomb of many members)

_MARK = object()
_STRING_OPS = frozenset({"SHORT_BINUNICODE", "BINUNICODE", "BINUNICODE8", "UNICODE", "SHORT_BINSTRING",
                         "BINSTRING", "STRING", "SHORT_BINBYTES", "BINBYTES", "BINBYTES8"})
_MEMO_GETS = frozenset({"GET", "BINGET", "LONG_BINGET"})
_MEMO_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})

# Globals that run code, touch the system or reach arbitrary attributes when unpickled.
_DANGEROUS_MODULES = frozenset({
    "os", "posix", "nt", "subprocess", "sys", "socket", "shutil", "importlib", "runpy", "pty", "ctypes",
    "webbrowser", "code", "codeop", "commands", "pickle", "_pickle", "marshal", "types", "platform",
    "multiprocessing", "asyncio", "signal", "urllib", "http", "requests", "pdb", "bdb", "timeit", "cProfile",
    "profile", "trace", "tempfile", "glob", "pathlib", "io", "_io", "zipimport", "operator", "functools",
})  # fmt: skip
_DANGEROUS_BUILTINS = frozenset({"eval", "exec", "compile", "open", "getattr", "setattr", "delattr", "__import__",
                                 "globals", "locals", "vars", "breakpoint", "input", "apply", "execfile"})
# What torch.save writes for plain tensors and state dicts (and torch.load(weights_only=True) accepts).
_TORCH_SAFE_PREFIXES = ("torch._utils._rebuild", "torch.", "collections.OrderedDict", "builtins.set",
                        "builtins.frozenset", "builtins.bytearray", "builtins.slice", "builtins.complex",
                        "_codecs.encode", "collections.defaultdict", "builtins.tuple", "builtins.list",
                        "builtins.dict", "builtins.int", "builtins.float", "builtins.bool", "builtins.str")


def classify_global(name: str) -> str:
    """``dangerous`` (runs code or reaches the system when unpickled), ``torch`` (what
    torch.save writes for tensors and containers) or ``other`` (anything else: code
    from some package runs when unpickled)."""
    module, _, attr = name.rpartition(".")
    top = module.split(".")[0]
    if top in _DANGEROUS_MODULES or (module in ("builtins", "__builtin__") and attr in _DANGEROUS_BUILTINS):
        return "dangerous"
    if name.startswith(_TORCH_SAFE_PREFIXES) and not name.startswith(("torch.hub", "torch.utils.cpp_extension")):
        return "torch"
    return "other"


def looks_like_pickle(path: Path) -> bool:
    """A pickle by name (PICKLE_SUFFIXES) or by its first byte (0x80 PROTO) or a zip holding data.pkl."""
    name = path.name.lower()
    if name.endswith(PICKLE_SUFFIXES):
        return True
    try:
        with open(path, "rb") as f:
            head = f.read(2)
    except OSError:
        return False
    return len(head) == 2 and head[0] == 0x80 and 2 <= head[1] <= 5


class _Walk:
    def __init__(self) -> None:
        self.globals: dict[str, int] = {}
        self.truncated: list[str] = []
        self.opcodes = 0

    def note(self, name: str) -> None:
        if name in self.globals:
            self.globals[name] += 1
        elif len(self.globals) < MAX_GLOBALS:
            self.globals[name] = 1
        elif "globals" not in self.truncated:
            self.truncated.append("globals")

    def walk(self, data: bytes) -> str | None:
        """Walk the pickles in ``data``; return pickletools' reason if one could not be followed."""
        stream = io.BytesIO(data)
        for index in range(MAX_PICKLES_PER_STREAM):
            start = stream.tell()
            if start >= len(data):
                return None
            try:
                self._one(stream)
            except Exception as exc:  # noqa: BLE001 - pickletools raises ValueError and friends on garbage
                if index == 0:
                    return f"{type(exc).__name__}: {str(exc)[:200]}"
                return None  # after the first pickle: the raw bytes of a legacy torch file
        return None

    def _one(self, stream: io.BytesIO) -> None:
        stack: list[Any] = []
        memo: dict[int, Any] = {}
        for opcode, arg, _pos in pickletools.genops(stream):
            self.opcodes += 1
            if self.opcodes > MAX_OPCODES:
                self.truncated.append("opcodes")
                raise _Stop
            name = opcode.name
            if name in ("GLOBAL", "INST") and isinstance(arg, str):
                self.note(".".join(arg.split(" ", 1)))
            elif name == "STACK_GLOBAL":
                attr = stack.pop() if stack else None
                module = stack.pop() if stack else None
                if isinstance(module, str) and isinstance(attr, str):
                    self.note(f"{module}.{attr}")
                else:
                    self.note("<unresolved STACK_GLOBAL>")
                stack.append(None)
                continue
            elif name in ("EXT1", "EXT2", "EXT4"):
                self.note(f"<copyreg extension {arg}>")
            if name in _MEMO_PUTS or name == "MEMOIZE":
                key = len(memo) if name == "MEMOIZE" else arg
                if isinstance(key, int) and (key in memo or len(memo) < MAX_MEMO):
                    memo[key] = stack[-1] if stack else None
                elif "memo" not in self.truncated:
                    self.truncated.append("memo")
                continue
            if name in _MEMO_GETS:
                stack.append(memo.get(arg) if isinstance(arg, int) else None)
                continue
            if name == "STOP":
                return
            # Generic effect on the stack: pop what the opcode consumes, push what it makes.
            before = opcode.stack_before
            below = len(before)
            if pickletools.markobject in before:  # everything down to the mark goes, then what sat below it
                while stack and stack.pop() is not _MARK:
                    pass
                below = before.index(pickletools.markobject)
            for _ in range(below):
                if stack:
                    stack.pop()
            for made in opcode.stack_after:
                if made is pickletools.markobject:
                    stack.append(_MARK)
                elif name in _STRING_OPS and isinstance(arg, (str, bytes)):
                    stack.append(arg if isinstance(arg, str) else None)
                else:
                    stack.append(None)
            if len(stack) > MAX_STACK:
                # Only the top of the stack names STACK_GLOBAL's strings: drop the bottom
                # half and walk on (a global hidden past the bound is still seen).
                del stack[: MAX_STACK // 2]
                if "stack" not in self.truncated:
                    self.truncated.append("stack")


class _Stop(Exception):
    """A bound was hit: what was walked so far stands."""


def _read_bounded(f: Any, limit: int) -> tuple[bytes, bool]:
    data = f.read(limit + 1)
    return data[:limit], len(data) > limit


def scan_pickle_file(path: Path, rel: str) -> dict[str, Any]:
    """The globals every pickle in ``path`` references, with a class for each."""
    walk = _Walk()
    entry: dict[str, Any] = {"path": rel, "format": "pickle", "pickles": 0, "globals": [], "unreadable": None,
                             "truncated": []}
    try:
        st = os.lstat(path)
        if not stat.S_ISREG(st.st_mode):
            entry["unreadable"] = "not a regular file"
            return entry
        if zipfile.is_zipfile(path):
            entry["format"] = "torch-zip"
            with zipfile.ZipFile(path) as zf:
                members = [i for i in zf.infolist()[:MAX_ZIP_MEMBERS] if i.filename.endswith(("/data.pkl", "data.pkl"))
                           or i.filename.endswith(".pkl")]
                budget = MAX_ZIP_PICKLE_BYTES
                for info in members:
                    if budget <= 0:
                        walk.truncated.append("bytes")
                        break
                    with zf.open(info) as member:
                        data, cut = _read_bounded(member, min(MAX_PICKLE_BYTES, budget))
                    budget -= len(data)
                    if cut:
                        walk.truncated.append("bytes")
                    entry["pickles"] += 1
                    reason = _walk_safely(walk, data)
                    if reason and entry["unreadable"] is None:
                        entry["unreadable"] = f"{info.filename}: {reason}"
        else:
            with open(path, "rb") as f:
                data, cut = _read_bounded(f, MAX_PICKLE_BYTES)
            if cut:
                walk.truncated.append("bytes")
            entry["pickles"] = 1
            entry["unreadable"] = _walk_safely(walk, data)
    except (OSError, zipfile.BadZipFile, RuntimeError, ValueError, EOFError) as exc:
        entry["unreadable"] = f"{type(exc).__name__}: {str(exc)[:200]}"
    entry["globals"] = [{"name": name, "class": classify_global(name), "count": count}
                        for name, count in sorted(walk.globals.items())]
    entry["truncated"] = sorted(set(walk.truncated))
    entry["opcodes"] = walk.opcodes
    return entry


def _walk_safely(walk: _Walk, data: bytes) -> str | None:
    try:
        return walk.walk(data)
    except _Stop:
        return None
