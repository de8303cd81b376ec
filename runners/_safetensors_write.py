"""Write a safetensors file straight from tensor memory: stdlib + torch only.

safetensors' own ``save_file`` imports numpy (safetensors 0.8) and makes a bytes
copy of every tensor; inside the sandbox numpy may not exist. The format is small:
an 8-byte little-endian header length, a JSON header padded with spaces to a
multiple of 8, then the tensors' bytes back to back. Each tensor is written from
its own CPU memory through a ctypes view (no copy beyond the kernel's), so tensors
that share storage need no clone, and no mapping grows the address space (the
sandbox's memory limit is RLIMIT_AS).

Tensors are laid out by element size, largest first (8, 4, 2, 1 bytes): with the
header padded to 8 bytes, every tensor's data then starts at a multiple of its
element size, so the host can map the bytes and view them as tensors in place.

Two targets: a file (``write_safetensors``), or the memfd the host created for the
job (``write_safetensors_fd``, the fd named by ``SAFEHUB_WEIGHTS_FD``: ftruncate to
the final size, then pwrite; the host seals it once the sandbox has ended and maps
it copy-on-write, see safehub/_channel/_memfd.py).
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import struct
import sys
from typing import Any

from _contract import WEIGHTS_FD_ENV

__all__ = ["write_safetensors", "write_safetensors_fd", "write_weights", "weights_fd", "ST_CODES"]

# torch dtype name -> safetensors dtype code (what the host's reader accepts).
ST_CODES = {
    "float64": "F64", "float32": "F32", "float16": "F16", "bfloat16": "BF16",
    "int64": "I64", "int32": "I32", "int16": "I16", "int8": "I8", "uint8": "U8",
    "bool": "BOOL", "complex64": "C64",
}  # fmt: skip


def _cpu_contiguous(t: Any) -> Any:
    t = t.detach()
    if t.device.type != "cpu":
        t = t.to("cpu")
    return t.contiguous()


def _prepare(tensors: dict[str, Any], metadata: dict[str, str] | None) -> tuple[bytes, list[tuple[Any, int]], int]:
    """(length prefix + padded header, [(tensor, nbytes)] in file order, data bytes)."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; this machine is not")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    items = []
    for name, t in tensors.items():
        code = ST_CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which the weights file does not carry")
        items.append((name, code, t))
    # Largest element size first (stable): every offset stays a multiple of its element size.
    items.sort(key=lambda item: -item[2].element_size())
    prepared: list[tuple[Any, int]] = []
    offset = 0
    for name, code, t in items:
        t = _cpu_contiguous(t)
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        prepared.append((t, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    return struct.pack("<Q", len(raw)) + raw, prepared, offset


def write_safetensors(path: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (name -> tensor) to ``path`` atomically; return the data bytes."""
    head, prepared, nbytes_total = _prepare(tensors, metadata)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(head)
        for t, nbytes in prepared:
            if nbytes:
                # A view of the tensor's own bytes; `t` stays referenced until written.
                f.write((ctypes.c_ubyte * nbytes).from_address(t.data_ptr()))
        f.flush()
    os.replace(tmp, path)
    return nbytes_total


def write_safetensors_fd(fd: int, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` into the open, empty file ``fd`` (the host's memfd) with
    ftruncate + pwrite; return the data bytes. No mapping: RLIMIT_AS stays intact."""
    head, prepared, nbytes_total = _prepare(tensors, metadata)
    os.ftruncate(fd, len(head) + nbytes_total)  # one size up front: no growth per write
    _pwrite_all(fd, memoryview(head), 0)
    offset = len(head)
    for t, nbytes in prepared:
        if nbytes:
            _pwrite_all(fd, memoryview((ctypes.c_ubyte * nbytes).from_address(t.data_ptr())).cast("B"), offset)
        offset += nbytes
    return nbytes_total


def _pwrite_all(fd: int, view: memoryview, offset: int) -> None:
    done = 0
    while done < len(view):
        n = os.pwrite(fd, view[done:], offset + done)
        if n <= 0:
            raise OSError(f"pwrite into the weights memfd wrote {n} bytes")
        done += n


def weights_fd() -> int | None:
    """The memfd the host passed for the weights (``SAFEHUB_WEIGHTS_FD``), or None.
    Checked to be a memfd (F_GET_SEALS works only on one): anything else is a
    host/runner mismatch, and the runner fails rather than write elsewhere."""
    raw = os.environ.get(WEIGHTS_FD_ENV)
    if raw is None:
        return None
    if not raw.isdigit() or not 3 <= int(raw) < 65536:
        raise RuntimeError(f"{WEIGHTS_FD_ENV}={raw!r} is not a descriptor number")
    fd = int(raw)
    try:
        fcntl.fcntl(fd, fcntl.F_GET_SEALS)
    except OSError as exc:
        raise RuntimeError(f"{WEIGHTS_FD_ENV}={fd} is not an open memfd ({exc.strerror})") from None
    return fd


def write_weights(out_dir: str, name: str, tensors: dict[str, Any]) -> int:
    """The job's weights: into the host's memfd when it passed one, else out_dir/name."""
    fd = weights_fd()
    if fd is not None:
        with _runner_only():  # the runner's own ftruncate of the memfd is no repo behaviour
            return write_safetensors_fd(fd, tensors)
    return write_safetensors(os.path.join(out_dir, name), tensors)


def _runner_only() -> Any:
    """``safehub audit``'s recorder (runners/_audit_hook.py) skips this thread's
    events inside this block; a no-op when no audit runs."""
    hook = sys.modules.get("_audit_hook")
    return hook.runner_only() if hook is not None else contextlib.nullcontext()
