"""The artifact folder's files: the host-side safetensors writer, ``provenance.json``
(building and strict validation), the folder listing check and file hashing.

An artifact is untrusted input when it is loaded: ``provenance.json`` is read with
the return channel's strict JSON reader, every field is typed and bounded, and
unknown keys are refused. ``spec.json`` and ``weights.safetensors`` are checked
against the sha256s recorded here, and then validated by the return channel
exactly like a sandbox's output (see docs/architecture-format.md, *Artifacts*).
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import re
import stat
import struct
import sys
from pathlib import Path
from typing import Any

from ._channel import SPEC_FILE, WEIGHTS_FILE
from ._channel._files import open_output_file
from ._channel._json import load_json
from ._channel._names import show
from ._channel._weights import ST_DTYPES
from ._errors import ArtifactError, ArtifactSaveError, ArtifactVersionError, SpecTooLargeError

__all__ = [
    "ARTIFACT_FORMAT", "ARTIFACT_VERSION", "PROVENANCE_FILE", "ARTIFACT_FILES", "SOURCE_KEYS",
    "write_safetensors", "describe_arguments", "check_listing", "read_provenance", "check_hashes",
    "check_file_hash", "read_provenance_bytes", "parse_provenance",
]  # fmt: skip

ARTIFACT_FORMAT = "safehub-artifact"
ARTIFACT_VERSION = 1
PROVENANCE_FILE = "provenance.json"
ARTIFACT_FILES = (SPEC_FILE, WEIGHTS_FILE, PROVENANCE_FILE)
MAX_PROVENANCE_BYTES = 1 << 20
# Where the model came from; carried unchanged when an artifact's model is saved again.
SOURCE_KEYS = ("repo", "source", "sha", "archive_sha256", "entrypoint", "arguments", "export")
_KEYS = ("format", "version", *SOURCE_KEYS, "root", "modules", "torch_version", "safehub_version", "saved_at", "files")

_ST_CODES = {name: code for code, (name, _size) in ST_DTYPES.items()}
_HEX40 = re.compile(r"[0-9a-f]{40}")
_HEX64 = re.compile(r"[0-9a-f]{64}")
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]{0,127}")
_MID = re.compile(r"m[0-9]{1,6}")
_TIME = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z")
_MAX_TEXT = 4096
_HASH_CHUNK = 16 << 20
_MAX_ARG_DEPTH = 16
_MAX_ARG_NODES = 10_000


# --- writing -----------------------------------------------------------------


def write_safetensors(path: Path, tensors: dict[str, Any]) -> tuple[str, int]:
    """Write ``tensors`` (key -> tensor) as safetensors to a new file ``path``.

    stdlib + torch only (safetensors' own writer imports numpy, which safehub does
    not depend on); each tensor is written from its own CPU memory and hashed on
    the way. Returns (sha256 hex, file size). Same layout as the runner's writer.
    """
    if sys.byteorder != "little":
        raise ArtifactSaveError("safetensors files are little-endian; this machine is not")
    header: dict[str, Any] = {}
    prepared: list[tuple[Any, int]] = []
    offset = 0
    for key, t in tensors.items():
        code = _ST_CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise ArtifactSaveError(f"tensor {key!r} has dtype {t.dtype}, which an artifact cannot carry",
                                    hint=f"convert it to one of {', '.join(sorted(_ST_CODES))}")
        t = t.detach()
        if t.device.type != "cpu":
            t = t.to("cpu")
        t = t.contiguous()
        nbytes = t.numel() * t.element_size()
        header[key] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        prepared.append((t, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    from ._channel._weights import _Hasher

    digest = hashlib.sha256()
    # Hashing runs on a thread beside the writes (both release the GIL): a fresh
    # process's first load stores its artifact-cache entry before it returns.
    hasher = _Hasher(digest)
    try:
        with open(path, "xb") as f:
            writeback = _Writeback(f.fileno())
            for chunk in (struct.pack("<Q", len(raw)), raw):
                f.write(chunk)
                hasher.add(None, memoryview(chunk))
                writeback.wrote(len(chunk))
            for t, nbytes in prepared:
                if nbytes:
                    view = memoryview((ctypes.c_ubyte * nbytes).from_address(t.data_ptr())).cast("B")
                    f.write(view)
                    hasher.add(t, view)  # keeps `t` alive until it is hashed
                    writeback.wrote(nbytes)
            f.flush()
            os.fsync(f.fileno())
    finally:
        hasher.finish()
    return digest.hexdigest(), 8 + len(raw) + offset


class _Writeback:
    """Start the disk writes of what was written so far every ``KICK_BYTES``
    (``sync_file_range(SYNC_FILE_RANGE_WRITE)``, which does not wait), so that the
    closing fsync finds little left to do: for 100 MiB here the fsync went from
    0.04 s to 0.002 s and the whole write from 0.13-0.15 s to 0.10-0.12 s. Best
    effort: the fsync alone is what makes the file durable."""

    KICK_BYTES = 8 << 20
    SYNC_FILE_RANGE_WRITE = 2

    def __init__(self, fd: int) -> None:
        self.fd, self.start, self.pending = fd, 0, 0
        try:
            from ._channel._weights import _libc

            fn = _libc().sync_file_range
            fn.argtypes = [ctypes.c_int, ctypes.c_longlong, ctypes.c_longlong, ctypes.c_uint]
            self._fn: Any = fn
        except (AttributeError, OSError):  # not glibc/Linux: the fsync does it all
            self._fn = None

    def wrote(self, n: int) -> None:
        self.pending += n
        if self.pending >= self.KICK_BYTES and self._fn is not None:
            self._fn(self.fd, self.start, self.pending, self.SYNC_FILE_RANGE_WRITE)  # ctypes drops the GIL
            self.start, self.pending = self.start + self.pending, 0


def _text(value: str) -> str:
    """A printable, bounded rendering of a host string (provenance must pass the loader's checks)."""
    if not value.isprintable():
        value = value.encode("unicode_escape").decode("ascii")
    return value[:_MAX_TEXT]


def describe_arguments(args: tuple[Any, ...], kwargs: dict[str, Any]) -> dict[str, Any]:
    """A JSON-safe description of the entrypoint's arguments: literals as they are,
    tensors as dtype and shape, other objects by type name. Never a pickle, and not
    meant to rebuild the arguments, only to say what they were."""
    budget = [_MAX_ARG_NODES // 2]

    def describe(v: Any, depth: int) -> Any:
        budget[0] -= 1
        if budget[0] < 0 or depth > _MAX_ARG_DEPTH // 2:
            return {"object": "..."}
        if v is None or isinstance(v, bool):
            return v
        if isinstance(v, int):
            return v if abs(v) < 2**53 else {"int": str(v)[:_MAX_TEXT]}
        if isinstance(v, float):
            return {"float": repr(v)}
        if isinstance(v, str):
            return _text(v)
        if isinstance(v, (tuple, list)):
            return {type(v).__name__: [describe(x, depth + 1) for x in list(v)[:1000]]}
        if isinstance(v, dict):
            return {"dict": {_text(str(k))[:256]: describe(x, depth + 1) for k, x in list(v.items())[:1000]}}
        kind = type(v).__module__ + "." + type(v).__qualname__
        if kind == "torch.Tensor" or kind == "torch.nn.parameter.Parameter":
            return {"tensor": {"dtype": str(v.dtype).removeprefix("torch."), "shape": list(v.shape)}}
        if kind in ("torch.dtype", "torch.device"):
            return {kind.removeprefix("torch."): str(v).removeprefix("torch.")}
        return {"object": _text(kind)}

    return {"args": [describe(a, 1) for a in args], "kwargs": {_text(k): describe(v, 1) for k, v in kwargs.items()}}


# --- reading -----------------------------------------------------------------


def check_listing(folder: Path) -> None:
    """The folder must be a real directory holding exactly the three artifact files,
    each a regular file (no symlinks, no extra files, no subfolders)."""
    try:
        dir_fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as exc:
        raise ArtifactError(f"cannot open artifact folder {str(folder)!r}: {exc.strerror}",
                            hint="pass the folder safehub.save wrote (a real directory, not a link)") from None
    try:
        names = os.listdir(dir_fd)
        if len(names) > 64:
            raise ArtifactError(f"artifact folder {str(folder)!r} holds {len(names)} entries; expected {len(ARTIFACT_FILES)}")
        extra = sorted(set(names) - set(ARTIFACT_FILES))
        missing = sorted(set(ARTIFACT_FILES) - set(names))
        if extra or missing:
            raise ArtifactError(
                f"artifact folder {str(folder)!r} must hold exactly {', '.join(ARTIFACT_FILES)}"
                + (f"; extra: {', '.join(show(n) for n in extra[:5])}" if extra else "")
                + (f"; missing: {', '.join(missing)}" if missing else ""),
                hint="an artifact is exactly what safehub.save wrote; export it again if it was changed",
            )
        for name in ARTIFACT_FILES:
            st = os.stat(name, dir_fd=dir_fd, follow_symlinks=False)
            if not stat.S_ISREG(st.st_mode):
                raise ArtifactError(f"artifact file {name!r} is not a regular file (a link or a folder)",
                                    hint="an artifact holds plain files only; copy it with links dereferenced")
    finally:
        os.close(dir_fd)


def _str(doc: dict[str, Any], key: str, pattern: re.Pattern[str] | None = None, *, nullable: bool = True,
         choices: tuple[str, ...] = (), max_chars: int = 512) -> str | None:
    value = doc[key]
    if value is None and nullable:
        return None
    ok = isinstance(value, str) and len(value) <= max_chars and value.isprintable()
    if ok and pattern is not None:
        ok = pattern.fullmatch(value) is not None
    if ok and choices:
        ok = value in choices
    if not ok:
        raise ArtifactError(f"provenance.json: {key} is {show(value)}, not a valid value")
    return value


def _check_json_value(value: Any, where: str) -> None:
    """Arguments are a description only, but still bounded and printable."""
    stack, nodes = [(value, 0)], 0
    while stack:
        v, depth = stack.pop()
        nodes += 1
        if nodes > _MAX_ARG_NODES or depth > _MAX_ARG_DEPTH:
            raise ArtifactError(f"provenance.json: {where} is too large or too deep")
        if v is None or isinstance(v, bool):
            continue
        if isinstance(v, int):
            if abs(v) >= 2**63:
                raise ArtifactError(f"provenance.json: {where} holds an integer out of range")
        elif isinstance(v, str):
            if len(v) > _MAX_TEXT or not v.isprintable():
                raise ArtifactError(f"provenance.json: {where} holds a string that is too long or not printable")
        elif isinstance(v, list):
            stack.extend((x, depth + 1) for x in v)
        elif isinstance(v, dict):
            for k, x in v.items():
                if len(k) > 256 or not k.isprintable():
                    raise ArtifactError(f"provenance.json: {where} holds a key that is too long or not printable")
                stack.append((x, depth + 1))
        else:  # floats: the strict reader allows them, a description never has them bare
            raise ArtifactError(f"provenance.json: {where} holds a {type(v).__name__}")


def read_provenance(folder: Path) -> dict[str, Any]:
    """Read and validate ``provenance.json``; the version is checked before anything else."""
    return parse_provenance(read_provenance_bytes(folder))


def read_provenance_bytes(folder: Path) -> bytes:
    fd = open_output_file(folder, PROVENANCE_FILE, max_bytes=MAX_PROVENANCE_BYTES)
    with os.fdopen(fd, "rb") as f:
        raw = f.read(MAX_PROVENANCE_BYTES + 1)
    if len(raw) > MAX_PROVENANCE_BYTES:
        raise SpecTooLargeError(f"provenance.json grew past its {MAX_PROVENANCE_BYTES}-byte cap while being read")
    return raw


def parse_provenance(raw: bytes) -> dict[str, Any]:
    """Validate the bytes of ``provenance.json`` (callers that hash them first parse those same bytes)."""
    try:
        doc = load_json(raw, PROVENANCE_FILE, cap_bytes=MAX_PROVENANCE_BYTES, max_depth=32)
    except ArtifactError:
        raise
    except Exception as exc:  # noqa: BLE001 - UnsafeSpecError and its subclasses: say it is the artifact
        raise ArtifactError(f"provenance.json is not valid: {getattr(exc, 'message', exc)}") from None
    if not isinstance(doc, dict):
        raise ArtifactError("provenance.json is not a JSON object")
    if doc.get("format") != ARTIFACT_FORMAT:
        raise ArtifactError(f"provenance.json says format {show(doc.get('format'))}; expected {ARTIFACT_FORMAT!r}",
                            hint="this folder is not a safehub artifact")
    version = doc.get("version")
    if type(version) is not int or version != ARTIFACT_VERSION:
        raise ArtifactVersionError(
            f"artifact format version {show(version)} is not one this safehub reads (it reads version {ARTIFACT_VERSION})",
            hint="load it with the safehub version that wrote it, or upgrade safehub",
        )
    keys = set(doc)
    if keys != set(_KEYS):
        raise ArtifactError(
            "provenance.json keys differ from format version 1: "
            f"unknown {sorted(show(k) for k in keys - set(_KEYS))[:5]}, missing {sorted(set(_KEYS) - keys)}"
        )
    _str(doc, "repo")
    _str(doc, "source", choices=("github", "local"))
    _str(doc, "sha", _HEX40)
    _str(doc, "archive_sha256", _HEX64)
    _str(doc, "entrypoint", _IDENT)
    _str(doc, "export", choices=("auto", "fx", "aten"))
    # "object" (a namespace a load returned): artifact-cache entries only; load_artifact refuses it
    _str(doc, "root", nullable=False, choices=("module", "tuple", "list", "dict", "object"))
    _str(doc, "torch_version", nullable=False, max_chars=64)
    _str(doc, "safehub_version", nullable=False, max_chars=64)
    _str(doc, "saved_at", _TIME, nullable=False)
    if doc["arguments"] is not None:
        if not isinstance(doc["arguments"], dict) or set(doc["arguments"]) != {"args", "kwargs"}:
            raise ArtifactError("provenance.json: arguments must be {args, kwargs} or null")
        _check_json_value(doc["arguments"], "arguments")
    modules = doc["modules"]
    if not isinstance(modules, dict) or not 0 < len(modules) <= 1024:
        raise ArtifactError("provenance.json: modules must map 1 to 1024 module ids to their description")
    for mid, mod in modules.items():
        if not _MID.fullmatch(mid) or not isinstance(mod, dict) or set(mod) != {"mode", "graphs", "training"}:
            raise ArtifactError(f"provenance.json: module {show(mid)} is not {{mode, graphs, training}}")
        graphs_ok = mod["graphs"] == [] if mod["mode"] == "deferred" else mod["graphs"] in (["eval"], ["eval", "train"])
        # "deferred" (no graph yet) only in artifact-cache entries; load_artifact refuses it.
        if mod["mode"] not in ("fx", "aten", "deferred") or not graphs_ok or not isinstance(mod["training"], bool):
            raise ArtifactError(f"provenance.json: module {mid} has an invalid mode, graphs or training flag")
    files = doc["files"]
    if not isinstance(files, dict) or set(files) != {SPEC_FILE, WEIGHTS_FILE}:
        raise ArtifactError(f"provenance.json: files must describe exactly {SPEC_FILE} and {WEIGHTS_FILE}")
    for name, entry in files.items():
        if not isinstance(entry, dict) or set(entry) != {"sha256", "bytes"} \
                or not isinstance(entry["sha256"], str) or not _HEX64.fullmatch(entry["sha256"]) \
                or type(entry["bytes"]) is not int or not 0 <= entry["bytes"] < 2**63:
            raise ArtifactError(f"provenance.json: files[{name!r}] must be {{sha256: 64 hex, bytes: int}}")
    return doc


def check_hashes(folder: Path, files: dict[str, dict[str, Any]], caps: dict[str, int]) -> None:
    """Each file's size and sha256 must equal what provenance.json recorded."""
    for name in (SPEC_FILE, WEIGHTS_FILE):
        check_file_hash(folder, name, files[name], caps[name])


def check_file_hash(folder: Path, name: str, expected: dict[str, Any], cap: int) -> None:
    fd = open_output_file(folder, name, max_bytes=cap)
    with os.fdopen(fd, "rb") as f:
        size = os.fstat(f.fileno()).st_size
        if size != expected["bytes"]:
            raise ArtifactError(f"artifact file {name} is {size} bytes; provenance.json recorded {expected['bytes']}",
                                hint="the artifact was changed or truncated after it was saved; export it again")
        # Used by inspect and to explain a failed load (the load itself hashes the bytes it reads).
        hasher, total = hashlib.sha256(), 0
        buf = bytearray(min(size + 1, _HASH_CHUNK))
        view = memoryview(buf)
        while n := f.readinto(buf):
            total += n
            if total > size:  # growing while read: never hash more than was recorded
                raise ArtifactError(f"artifact file {name} grew while it was being read")
            hasher.update(view[:n])
    digest = hasher.hexdigest()
    if digest != expected["sha256"]:
        raise ArtifactError(f"artifact file {name} has sha256 {digest}; provenance.json recorded {expected['sha256']}",
                            hint="the artifact was changed after it was saved; export it again")
