"""Write a safetensors file straight from tensor memory: stdlib + torch only.

safetensors' own ``save_file`` imports numpy (safetensors 0.8) and makes a bytes
copy of every tensor; inside the sandbox numpy may not exist. The format is small:
an 8-byte little-endian header length, a JSON header padded with spaces to a
multiple of 8, then the tensors' bytes back to back. Each tensor is written from
its own CPU memory through a ctypes view (no copy beyond the kernel's), so tensors
that share storage need no clone, and no mapping grows the address space (the
sandbox's memory limit is RLIMIT_AS). The host reads the file with its own strict
header checks and then with the safetensors library.
"""

from __future__ import annotations

import ctypes
import json
import os
import struct
import sys
from typing import Any

__all__ = ["write_safetensors", "ST_CODES"]

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


def write_safetensors(path: str, tensors: dict[str, Any], metadata: dict[str, str] | None = None) -> int:
    """Write ``tensors`` (name -> tensor) to ``path`` atomically; return the data bytes."""
    if sys.byteorder != "little":
        raise RuntimeError("safetensors files are little-endian; this machine is not")
    header: dict[str, Any] = {}
    if metadata:
        header["__metadata__"] = dict(metadata)
    prepared: list[Any] = []
    offset = 0
    for name, t in tensors.items():
        code = ST_CODES.get(str(t.dtype).removeprefix("torch."))
        if code is None:
            raise TypeError(f"tensor {name!r} has dtype {t.dtype}, which the weights file does not carry")
        t = _cpu_contiguous(t)
        nbytes = t.numel() * t.element_size()
        header[name] = {"dtype": code, "shape": list(t.shape), "data_offsets": [offset, offset + nbytes]}
        prepared.append((t, nbytes))
        offset += nbytes
    raw = json.dumps(header, separators=(",", ":"), ensure_ascii=True).encode("ascii")
    raw += b" " * (-len(raw) % 8)
    tmp = path + ".partial"
    with open(tmp, "wb") as f:
        f.write(struct.pack("<Q", len(raw)))
        f.write(raw)
        for t, nbytes in prepared:
            if nbytes:
                # A view of the tensor's own bytes; `t` stays referenced until written.
                f.write((ctypes.c_ubyte * nbytes).from_address(t.data_ptr()))
        f.flush()
    os.replace(tmp, path)
    return offset
