"""The artifact cache's key: what a load's result depends on, made canonical.

A key is the sha256 of a canonical JSON document of everything the sandbox's
output depends on: the repo content (a GitHub commit SHA, or for a local folder
a content hash of its tree), the entrypoint, its arguments, the example inputs,
the export mode, the env key (packages, Python, backend), torch and safehub
(runner code included) and the cache format. Two loads with equal keys would
run the same code on the same inputs.

Arguments are canonical only when their exact types say everything about them
(``type(v) is int``, not a subclass): None, bool, int, float, str, bytes,
tuple/list/dict of those (dict keys str, order kept), ``torch.dtype``,
``torch.device`` and plain strided tensors (dtype, shape, device, requires_grad
and a hash of their bytes). Anything else (an object, a subclass, a function)
makes the load uncacheable: :class:`NotCanonical` says why.

A local folder's tree hash covers every path, file type, exec bit, file content
and link target under it, like the repo cache's ``tree_hash``. Re-hashing big
weights files on every load would cost more than the load, so file digests are
kept in a stat cache: a file whose (size, mtime, ctime, inode, device) is
unchanged keeps its digest. ctime cannot be set by a user, so a changed file
is always re-hashed (a file changed in the last 2 s is not remembered: timestamps
are coarser than writes, git's "racy" case); and a wrong stat cache can only pick
an entry, never skip the validation every hit gets.
"""

from __future__ import annotations

import functools
import hashlib
import json
import logging
import os
import re
import stat
import struct
import sys
import time
from pathlib import Path
from typing import Any

__all__ = ["NotCanonical", "canonical_value", "key_inputs", "key_digest", "local_tree_digest", "CACHE_FORMAT"]

logger = logging.getLogger("safehub")

CACHE_FORMAT = 1
_MAX_DEPTH = 32
_MAX_NODES = 10_000
_MAX_TENSOR_BYTES = 64 << 20  # bytes hashed across all tensor arguments of one load
_MAX_TREE_ENTRIES = 100_000
_HASH_CHUNK = 8 << 20
_RACY_NS = 2_000_000_000


class NotCanonical(Exception):
    """An argument whose value cannot be described exactly: the load is not cached."""


def canonical_value(value: Any, where: str = "argument") -> Any:
    """A JSON-safe, type-exact description of ``value``; raises NotCanonical."""
    budget = {"nodes": _MAX_NODES, "tensor_bytes": _MAX_TENSOR_BYTES}
    return _canon(value, where, 0, budget)


def _canon(v: Any, where: str, depth: int, budget: dict[str, int]) -> Any:
    budget["nodes"] -= 1
    if budget["nodes"] < 0 or depth > _MAX_DEPTH:
        raise NotCanonical(f"{where} is too large or too deeply nested to be a cache key")
    t = type(v)
    if v is None or t is bool:
        return v
    if t is int:
        return {"int": str(v)}
    if t is float:
        return {"float": struct.pack("<d", v).hex()}  # exact: -0.0 and nan payloads differ
    if t is str:
        return {"str": v}
    if t is bytes:
        return {"bytes": v.hex()}
    if t is tuple or t is list:
        return {t.__name__: [_canon(x, f"{where}[{i}]", depth + 1, budget) for i, x in enumerate(v)]}
    if t is dict:
        if not all(type(k) is str for k in v):
            raise NotCanonical(f"{where} is a dict with keys that are not str")
        return {"dict": [[k, _canon(x, f"{where}[{k!r}]", depth + 1, budget)] for k, x in v.items()]}
    torch = sys.modules.get("torch")
    if torch is not None:
        if t is torch.dtype or t is torch.device:
            return {t.__name__: str(v)}
        if t is torch.Tensor:
            return _canon_tensor(v, where, budget, torch)
    raise NotCanonical(f"{where} is a {t.__module__}.{t.__qualname__}, which cannot be made a cache key")


def _canon_tensor(v: Any, where: str, budget: dict[str, int], torch: Any) -> Any:
    if v.layout != torch.strided or v.is_quantized or v.is_meta or v.is_complex() and v.is_conj():
        raise NotCanonical(f"{where} is a {v.layout} tensor, which cannot be made a cache key")
    nbytes = v.numel() * v.element_size()
    budget["tensor_bytes"] -= nbytes
    if budget["tensor_bytes"] < 0:
        raise NotCanonical(f"{where}: tensor arguments over {_MAX_TENSOR_BYTES >> 20} MiB are not hashed for a cache key")
    # resolve_neg/conj: a negative view (torch._neg_view, x.conj().imag made contiguous)
    # keeps its base's bytes with a flag; without them x and -x hashed alike (round 3).
    data = v.detach().resolve_conj().resolve_neg().to("cpu").contiguous()
    if data.dtype == torch.bool:
        data = data.to(torch.uint8)
    h = hashlib.sha256()
    if nbytes:
        h.update(_bytes_of(data))
    return {"tensor": {"dtype": str(v.dtype), "shape": list(v.shape), "device": str(v.device),
                       "requires_grad": bool(v.requires_grad), "sha256": h.hexdigest()}}


def _bytes_of(t: Any) -> memoryview:
    import ctypes

    n = t.numel() * t.element_size()
    return memoryview((ctypes.c_ubyte * n).from_address(t.data_ptr())).cast("B")  # the caller keeps `t` alive


@functools.lru_cache(maxsize=1)
def _code_identity() -> dict[str, str]:
    """safehub's version and a hash of the runner scripts: the code that produced an entry."""
    from ._resources import runner_dir

    h = hashlib.sha256()
    folder = runner_dir()
    for path in sorted(folder.glob("*.py")):
        h.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return {"safehub": str(getattr(sys.modules.get("safehub"), "__version__", "unknown")), "runners": h.hexdigest()}


_VERSION_LINE = re.compile(r"^(__version__|git_version)\s*(?::\s*str\s*)?=\s*['\"]([^'\"\n]{1,100})['\"]", re.M)


def torch_identity() -> str:
    """torch's version and git commit, as ``torch.__version__`` and
    ``torch.version.git_version`` give them, read from torch/version.py without
    importing torch: a fresh process computes the key while its ``import torch``
    still runs on a thread (safehub/_host_torch.py), and the sandbox can start."""
    torch = sys.modules.get("torch")
    if torch is not None and hasattr(torch, "version"):
        return f"{torch.__version__} {getattr(torch.version, 'git_version', '')}"
    import importlib.util

    spec = importlib.util.find_spec("torch")  # the torch an import would load; nothing is executed
    try:
        if spec is None or spec.origin is None:
            raise KeyError("torch")
        text = (Path(spec.origin).parent / "version.py").read_text(encoding="utf-8")
        found: dict[str, str] = {m.group(1): m.group(2) for m in _VERSION_LINE.finditer(text)}
        return f"{found['__version__']} {found.get('git_version', '')}"
    except (OSError, KeyError, UnicodeDecodeError):
        import torch as imported  # an unusual install: ask torch itself

        return f"{imported.__version__} {getattr(imported.version, 'git_version', '')}"


def key_inputs(*, repo: dict[str, Any], entrypoint: str, args: tuple[Any, ...], kwargs: dict[str, Any],
               example_inputs: Any, export: str, env_key: str) -> dict[str, Any]:
    """The key document of one load; raises NotCanonical."""
    return {
        "format": CACHE_FORMAT,
        "repo": repo,
        "entrypoint": entrypoint,
        "args": canonical_value(tuple(args), "the positional arguments"),
        "kwargs": canonical_value(dict(kwargs), "the keyword arguments"),
        "example_inputs": canonical_value(example_inputs, "example_inputs"),
        "export": export,
        "env": env_key,
        "torch": torch_identity(),
        "python": "%d.%d" % sys.version_info[:2],
        **_code_identity(),
    }


def key_digest(inputs: dict[str, Any]) -> str:
    raw = json.dumps(inputs, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(raw.encode("ascii")).hexdigest()


# --- local folders -----------------------------------------------------------


def _stat_ident(st: os.stat_result) -> list[int]:
    return [st.st_size, st.st_mtime_ns, st.st_ctime_ns, st.st_ino, st.st_dev]


def _hash_file(parent_fd: int, name: str, st: os.stat_result) -> tuple[str, bool]:
    """(sha256, stable): stable when the file did not change while it was read."""
    fd = os.open(name, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC | os.O_NONBLOCK, dir_fd=parent_fd)
    try:
        before = os.fstat(fd)
        if not stat.S_ISREG(before.st_mode):
            raise NotCanonical(f"{name!r} changed type while the tree was hashed")
        h = hashlib.sha256()
        while chunk := os.read(fd, _HASH_CHUNK):
            h.update(chunk)
        after = os.fstat(fd)
    finally:
        os.close(fd)
    return h.hexdigest(), _stat_ident(before) == _stat_ident(after) == _stat_ident(st)


def local_tree_digest(root: Path, stat_dir: Path | None) -> str:
    """Content hash of the folder ``root`` (every path, type, exec bit, content, link
    target), with file digests reused from the stat cache in ``stat_dir``. Raises
    NotCanonical for trees that cannot be hashed (FIFOs, sockets, too many entries)."""
    root = Path(os.path.realpath(root))
    cache_path = None
    old: dict[str, list[Any]] = {}
    if stat_dir is not None:
        cache_path = stat_dir / (hashlib.sha256(os.fsencode(root)).hexdigest()[:32] + ".json")
        old = _read_stat_cache(cache_path)
    new: dict[str, list[Any]] = {}
    h = hashlib.sha256(b"safehub-local-tree-v1\0")
    count = 0
    stack: list[tuple[str, int]] = []
    top = os.open(root, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    stack.append(("", top))
    try:
        while stack:
            rel_dir, dfd = stack.pop()
            try:
                with os.scandir(dfd) as it:
                    names = sorted(e.name for e in it)
                subdirs: list[tuple[str, int]] = []
                for name in names:
                    count += 1
                    if count > _MAX_TREE_ENTRIES:
                        raise NotCanonical(f"the local repo holds over {_MAX_TREE_ENTRIES} entries")
                    rel = f"{rel_dir}/{name}" if rel_dir else name
                    st = os.lstat(name, dir_fd=dfd)
                    relb = os.fsencode(rel)
                    if stat.S_ISDIR(st.st_mode):
                        h.update(b"D\0" + relb + b"\0")
                        sub = os.open(name, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC, dir_fd=dfd)
                        subdirs.append((rel, sub))
                    elif stat.S_ISLNK(st.st_mode):
                        h.update(b"L\0" + relb + b"\0" + os.fsencode(os.readlink(name, dir_fd=dfd)) + b"\0")
                    elif stat.S_ISREG(st.st_mode):
                        ident = _stat_ident(st)
                        cached = old.get(rel)
                        if cached is not None and cached[:5] == ident:
                            digest = cached[5]
                            new[rel] = [*ident, digest]
                        else:
                            digest, stable = _hash_file(dfd, name, st)
                            if not stable:
                                raise NotCanonical(f"{rel!r} changed while the local repo was hashed")
                            # "Racy" files (changed within the timestamp granularity of now) could
                            # change again with the same stat: remember them only once they are older.
                            if time.time_ns() - max(st.st_mtime_ns, st.st_ctime_ns) > _RACY_NS:
                                new[rel] = [*ident, digest]
                        mode = b"x" if st.st_mode & 0o111 else b"-"
                        h.update(b"F\0" + relb + b"\0" + mode + bytes.fromhex(digest))
                    else:
                        raise NotCanonical(f"the local repo holds {rel!r}, which is not a file, folder or link")
                # Depth first, in name order: pushed reversed so the first name pops first.
                stack.extend(reversed(subdirs))
                subdirs = []
            finally:
                os.close(dfd)
                for _rel, sub in subdirs:  # only on an error before they were pushed
                    os.close(sub)
    except BaseException:
        for _rel, fd in stack:
            os.close(fd)
        raise
    if cache_path is not None and new != old:
        _write_stat_cache(cache_path, new)
    return h.hexdigest()


def _read_stat_cache(path: Path) -> dict[str, list[Any]]:
    """Host data: malformed content is ignored (everything is then hashed again)."""
    try:
        with open(path, "rb") as f:
            doc = json.loads(f.read(64 << 20))
    except (OSError, ValueError):
        return {}
    if not isinstance(doc, dict) or doc.get("format") != 1 or not isinstance(doc.get("files"), dict):
        return {}
    out = {}
    for rel, row in doc["files"].items():
        if isinstance(rel, str) and isinstance(row, list) and len(row) == 6 \
                and all(type(x) is int for x in row[:5]) and isinstance(row[5], str) and len(row[5]) == 64:
            out[rel] = row
    return out


def _write_stat_cache(path: Path, files: dict[str, list[Any]]) -> None:
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
        tmp.write_text(json.dumps({"format": 1, "files": files}), encoding="utf-8")
        os.replace(tmp, path)
    except OSError as exc:  # a slower next load, nothing worse
        logger.debug("could not write the stat cache %s: %s", path, exc)
