"""``weights.safetensors``: header checks, comparison with the spec, loading.

The header is read and checked here with explicit bounds (length prefix,
JSON, dtypes, shapes, offsets that tile the data section exactly), on the
already-opened descriptor (no second lookup by path), whether it is a file the
sandbox wrote or the job's sealed weights memfd (_memfd.py). Loading then:

* from a sealed memfd, or a huge-page tmpfs file proven to have no writer left
  (_huge_tmpfs.py): ``map_tensors``, every tensor a view of one MAP_PRIVATE
  mapping (no copy; the model's writes are copy-on-write);
* from a file: ``_read_tensors``, ``preadv`` into fresh memory the host owns (a
  file of the sandbox's is never mapped: a later write or truncation of it would
  reach the model);
* on a big-endian machine: the safetensors library, which converts byte order.
"""

from __future__ import annotations

import ctypes
import os
import sys
from typing import Any

from .._errors import SpecTooLargeError, TensorMismatchError, UnsafeSpecError
from .._records import record
from ._limits import ChannelLimits
from ._names import show
from ._json import load_json
from ._spec import ArchSpec

__all__ = ["HeaderEntry", "read_header", "read_header_bytes", "check_against_spec", "load_tensors", "map_tensors",
           "ST_DTYPES"]

# safetensors dtype code -> (spec dtype name, item size)
ST_DTYPES: dict[str, tuple[str, int]] = {
    "F64": ("float64", 8), "F32": ("float32", 4), "F16": ("float16", 2), "BF16": ("bfloat16", 2),
    "I64": ("int64", 8), "I32": ("int32", 4), "I16": ("int16", 2), "I8": ("int8", 1), "U8": ("uint8", 1),
    "BOOL": ("bool", 1), "C64": ("complex64", 8),
}  # fmt: skip


@record(frozen=True)
class HeaderEntry:
    """One tensor's entry in a checked safetensors header."""

    dtype: str
    shape: tuple[int, ...]
    begin: int
    end: int
    data_start: int = 0  # file offset of the data section (begin/end are relative to it)


def _pread_exact(fd: int, n: int, offset: int) -> bytes:
    chunks, got = [], 0
    while got < n:
        chunk = os.pread(fd, n - got, offset + got)
        if not chunk:
            raise UnsafeSpecError("weights.safetensors ended early (truncated while being read?)")
        chunks.append(chunk)
        got += len(chunk)
    return b"".join(chunks)


def read_header(fd: int, limits: ChannelLimits) -> dict[str, HeaderEntry]:
    """Parse and check the safetensors header of the open file ``fd``."""
    return read_header_bytes(fd, limits)[0]


def read_header_bytes(fd: int, limits: ChannelLimits) -> tuple[dict[str, HeaderEntry], bytes]:
    """``read_header``, plus the exact bytes it parsed (length prefix and header),
    for a caller that hashes what it builds from (see ``load_tensors(digest=)``)."""
    size = os.fstat(fd).st_size
    if size < 8:
        raise UnsafeSpecError("weights.safetensors is shorter than its 8-byte header length")
    prefix = _pread_exact(fd, 8, 0)
    n = int.from_bytes(prefix, "little")
    if n > limits.header_bytes:
        raise SpecTooLargeError(f"weights.safetensors declares a {n}-byte header, over the {limits.header_bytes}-byte cap")
    if n < 2 or 8 + n > size:
        raise UnsafeSpecError(f"weights.safetensors declares a {n}-byte header but the file is {size} bytes")
    raw_header = _pread_exact(fd, n, 8)
    header = load_json(raw_header, "the weights.safetensors header", cap_bytes=limits.header_bytes,
                       max_depth=limits.json_depth, max_string_bytes=limits.json_string_bytes)
    if not isinstance(header, dict):
        raise UnsafeSpecError("the weights.safetensors header is not a JSON object")
    if len(header) > limits.tensors + 1:
        raise SpecTooLargeError(f"weights.safetensors holds {len(header)} entries, over the cap of {limits.tensors}")
    data_len = size - 8 - n
    entries: dict[str, HeaderEntry] = {}
    for key, raw in header.items():
        if key == "__metadata__":
            if not isinstance(raw, dict) or not all(isinstance(v, str) for v in raw.values()):
                raise UnsafeSpecError("weights.safetensors __metadata__ must map strings to strings")
            continue
        where = f"weights.safetensors entry {show(key)}"
        if not isinstance(raw, dict) or set(raw) != {"dtype", "shape", "data_offsets"}:
            raise UnsafeSpecError(f"{where} must hold exactly dtype, shape and data_offsets")
        code, shape, offsets = raw["dtype"], raw["shape"], raw["data_offsets"]
        if not isinstance(code, str) or code not in ST_DTYPES:
            raise TensorMismatchError(f"{where}: dtype {show(code)} is not allowed")
        if not isinstance(shape, list) or len(shape) > limits.dims or not all(type(d) is int and d >= 0 for d in shape):
            raise UnsafeSpecError(f"{where}: shape must be at most {limits.dims} non-negative ints")
        if (
            not isinstance(offsets, list)
            or len(offsets) != 2
            or not all(type(o) is int for o in offsets)
            or not 0 <= offsets[0] <= offsets[1] <= data_len
        ):
            raise UnsafeSpecError(f"{where}: data_offsets {show(offsets)} fall outside the {data_len}-byte data section")
        dtype, itemsize = ST_DTYPES[code]
        numel = 1
        for d in shape:
            numel *= d
        if offsets[1] - offsets[0] != numel * itemsize:
            raise UnsafeSpecError(f"{where}: data_offsets span {offsets[1] - offsets[0]} bytes but the shape needs {numel * itemsize}")
        entries[key] = HeaderEntry(dtype, tuple(shape), offsets[0], offsets[1], 8 + n)
    # The tensors must tile the data section exactly: no gaps, no overlap (the
    # safetensors format requires it, and it rules out aliased or hidden bytes).
    position = 0
    for entry in sorted(entries.values(), key=lambda e: (e.begin, e.end)):
        if entry.begin != position:
            raise UnsafeSpecError("weights.safetensors has overlapping or gapped tensor data")
        position = entry.end
    if position != data_len:
        raise UnsafeSpecError(f"weights.safetensors has {data_len - position} trailing bytes after the last tensor")
    return entries, prefix + raw_header


def spec_keys(spec: ArchSpec) -> dict[str, tuple[str, str]]:
    """safetensors key -> (module id, tensor path)."""
    return {f"{mid}.{p}": (mid, p) for mid, mod in spec.modules.items() for p in mod.tensors}


def check_against_spec(entries: dict[str, HeaderEntry], spec: ArchSpec) -> None:
    expected = spec_keys(spec)
    missing = expected.keys() - entries.keys()
    extra = entries.keys() - expected.keys()
    if missing or extra:
        parts = []
        if missing:
            parts.append(f"missing {len(missing)} (e.g. {show(sorted(missing)[0])})")
        if extra:
            parts.append(f"{len(extra)} not in the spec (e.g. {show(sorted(extra)[0])})")
        raise TensorMismatchError(
            f"weights.safetensors does not match spec.json: {'; '.join(parts)}",
            hint="the two files must come from the same export; re-run the load",
        )
    for key, (mid, p) in expected.items():
        info, entry = spec.modules[mid].tensors[p], entries[key]
        if info.dtype != entry.dtype or info.shape != entry.shape:
            raise TensorMismatchError(
                f"tensor {show(key)} is {entry.dtype}{list(entry.shape)} in weights.safetensors "
                f"but {info.dtype}{list(info.shape)} in spec.json"
            )


def load_tensors(fd: int, entries: dict[str, HeaderEntry], device: Any, digest: Any = None,
                 mapped: bool = False) -> dict[str, Any]:
    """Load every tensor from the checked, open file into memory this process owns.

    ``mapped``: the tensors are views of a copy-on-write mapping of ``fd``
    (``map_tensors``), not copies. For a memfd the host created and has sealed
    (_memfd.py), whose bytes can never change; or for an artifact-cache entry's
    weights, whose values no check depends on (see _artifact_cache.py).

    ``digest`` (a hashlib object that already holds the header bytes): every
    tensor's bytes are fed to it in file order, from the memory they were read
    into, before that memory moves to another device. Since the tensors tile the
    data section, the digest is then the hash of exactly the file the model is
    built from, whatever happens to the file afterwards."""
    import torch

    from ._literals import dtype_table

    dtypes = dtype_table()
    if sys.byteorder == "little":
        if mapped:
            return map_tensors(fd, entries, device, dtypes, torch, digest)
        return _read_tensors(fd, entries, device, dtypes, torch, digest)
    if digest is not None:  # the safetensors library maps the file: no bytes of ours to hash
        raise UnsafeSpecError("hashing loaded weights needs a little-endian machine")
    from safetensors import safe_open  # it converts byte order

    proc_path = f"/proc/self/fd/{fd}"
    out: dict[str, Any] = {}
    if os.path.exists(proc_path):
        with safe_open(proc_path, framework="pt", device="cpu") as f:
            if set(f.keys()) != set(entries):
                raise TensorMismatchError("weights.safetensors changed while being read")
            for key, entry in entries.items():
                out[key] = _check_loaded(key, f.get_tensor(key), entry, dtypes, torch, device)
    else:  # no /proc: read the bytes through the same fd
        from safetensors.torch import load

        data = _pread_exact(fd, os.fstat(fd).st_size, 0)
        loaded = load(data)
        if set(loaded) != set(entries):
            raise TensorMismatchError("weights.safetensors changed while being read")
        for key, entry in entries.items():
            out[key] = _check_loaded(key, loaded.pop(key), entry, dtypes, torch, device)
    return out


def _check_loaded(key: str, t: Any, entry: HeaderEntry, dtypes: dict, torch: Any, device: Any) -> Any:
    if t.dtype != dtypes[entry.dtype] or tuple(t.shape) != entry.shape:
        raise TensorMismatchError(f"tensor {show(key)} changed while weights.safetensors was being read")
    target = torch.device(device) if device is not None else torch.device("cpu")
    if target.type == "cpu":
        # safetensors maps the sandbox's file copy-on-write: untouched pages would
        # still follow later writes to (or a truncation of) that file. Own the bytes.
        return t.clone()
    return t.to(target)


def _read_tensors(fd: int, entries: dict[str, HeaderEntry], device: Any, dtypes: dict, torch: Any,
                  digest: Any = None) -> dict[str, Any]:
    """Allocate each tensor from its checked header entry (dtype, shape) and
    ``pread`` exactly its byte range into it. The bytes land in fresh memory the
    host owns (nothing maps the file, so a later write to it or a truncation
    cannot reach the model), in one copy: about twice as fast as mapping the file
    through safetensors and cloning."""
    target = torch.device(device) if device is not None else torch.device("cpu")
    out: dict[str, Any] = {}
    # Hashing runs in a thread while the next tensor is read (both release the GIL).
    hasher = _Hasher(digest) if digest is not None else None
    try:
        # In file order: sequential reads, and the digest sees the data section as it lies.
        for key, entry in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
            t = torch.empty(entry.shape, dtype=dtypes[entry.dtype])
            nbytes = entry.end - entry.begin
            if t.numel() * t.element_size() != nbytes:  # read_header checked this; never trust a mismatch
                raise TensorMismatchError(f"tensor {show(key)}: {nbytes} bytes do not fit its shape")
            if nbytes:
                view = memoryview((ctypes.c_ubyte * nbytes).from_address(t.data_ptr())).cast("B")
                offset, got = entry.data_start + entry.begin, 0
                while got < nbytes:
                    n = os.preadv(fd, [view[got:]], offset + got)
                    if n <= 0:
                        raise TensorMismatchError("weights.safetensors ended early (truncated while being read?)")
                    got += n
                if hasher is not None:
                    hasher.add(t, view)  # keeps the CPU tensor alive until it is hashed
            out[key] = t if target.type == "cpu" else t.to(target)
    finally:
        if hasher is not None:
            hasher.finish()
    return out


def map_tensors(fd: int, entries: dict[str, HeaderEntry], device: Any, dtypes: dict, torch: Any,
                digest: Any = None) -> dict[str, Any]:
    """Every tensor as a view of one ``MAP_PRIVATE`` mapping of ``fd`` (no copy):
    a memfd ``seal_weights`` sealed or a tmpfs file ``WeightsTmpfile`` proved
    unwritable (its size and bytes are fixed, so nothing under the model can
    change), or an artifact-cache entry's weights file (see
    ``load_tensors``). The private mapping makes the model's own writes
    copy-on-write (never into the file).

    A tensor whose data does not start at a multiple of its element size (the
    runner aligns them all; a hostile one may not) is copied into fresh memory:
    a misaligned view is undefined behaviour for many kernels. ``digest`` is fed
    the data section from the mapping, in file order: the bytes the model is built
    from. Another ``device``: ``.to(device)`` straight from the mapping."""
    target = torch.device(device) if device is not None else torch.device("cpu")
    size = os.fstat(fd).st_size
    out: dict[str, Any] = {}
    if size == 0 or not entries:
        return {key: torch.empty(e.shape, dtype=dtypes[e.dtype], device=target) for key, e in entries.items()}
    mapping = _map_private(fd, size)
    with memoryview(mapping) as whole:
        for key, entry in sorted(entries.items(), key=lambda kv: (kv[1].begin, kv[1].end)):
            dtype = dtypes[entry.dtype]
            itemsize = dtype.itemsize
            nbytes, offset = entry.end - entry.begin, entry.data_start + entry.begin
            if offset + nbytes > size:  # read_header checked this against the same sealed size
                raise TensorMismatchError(f"tensor {show(key)} lies outside the weights")
            if nbytes == 0:
                t = torch.empty(entry.shape, dtype=dtype)
            elif offset % itemsize == 0:
                t = torch.frombuffer(mapping, dtype=dtype, count=nbytes // itemsize, offset=offset).view(entry.shape)
            else:
                raw = torch.frombuffer(mapping, dtype=torch.uint8, count=nbytes, offset=offset)
                t = raw.clone().view(dtype).view(entry.shape)  # fresh, aligned memory
            if digest is not None and nbytes:
                digest.update(whole[offset:offset + nbytes])
            out[key] = t if target.type == "cpu" else t.to(target)
    return out


def _map_private(fd: int, size: int) -> Any:
    """``fd``'s first ``size`` bytes mapped MAP_PRIVATE, PROT_READ|PROT_WRITE, as a
    ctypes byte array that unmaps itself once nothing refers to it (the tensors
    viewing it keep it alive). Not ``mmap.mmap``: that keeps a dup of the
    descriptor for as long as the mapping lives, one open fd per loaded model."""
    import mmap
    import weakref

    libc = _libc()
    addr = libc.mmap(None, ctypes.c_size_t(size), mmap.PROT_READ | mmap.PROT_WRITE, mmap.MAP_PRIVATE, fd,
                     ctypes.c_long(0))
    if addr is None or addr == ctypes.c_void_p(-1).value:
        err = ctypes.get_errno()
        raise OSError(err, f"could not map the weights: {os.strerror(err)}")
    array = (ctypes.c_ubyte * size).from_address(addr)
    weakref.finalize(array, libc.munmap, ctypes.c_void_p(addr), ctypes.c_size_t(size))
    return array


_LIBC: Any = None


def _libc() -> Any:
    global _LIBC
    if _LIBC is None:
        libc = ctypes.CDLL(None, use_errno=True)
        libc.mmap.restype = ctypes.c_void_p
        libc.mmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int, ctypes.c_int, ctypes.c_int, ctypes.c_long]
        libc.munmap.argtypes = [ctypes.c_void_p, ctypes.c_size_t]
        _LIBC = libc
    return _LIBC


class _Hasher:
    """Feed memory to a hashlib object in a thread, in order. ``finish`` waits
    for it (always called, so no thread outlives the load)."""

    def __init__(self, digest: Any) -> None:
        import queue
        import threading

        self._digest = digest
        self._queue: Any = queue.SimpleQueue()
        self._thread = threading.Thread(target=self._run, name="safehub-weights-hash", daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while (item := self._queue.get()) is not None:
            self._digest.update(item[1])

    def add(self, owner: Any, view: memoryview) -> None:
        self._queue.put((owner, view))

    def finish(self) -> None:
        self._queue.put(None)
        self._thread.join()
