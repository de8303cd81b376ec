"""Read a safetensors file written by _safetensors_write: stdlib + torch only.

Used by the deferred-export job to load the weights the first load returned
(the host hands the file back read-only in in/). Bounds are checked; a bad
file is an error, never a partial load.
"""

from __future__ import annotations

import json
import struct
from typing import Any

import torch

from _safetensors_write import ST_CODES

__all__ = ["read_safetensors"]

MAX_HEADER = 64 * 1024 * 1024
_BY_CODE = {code: getattr(torch, name) for name, code in ST_CODES.items()}


def read_safetensors(path: str) -> dict[str, Any]:
    """name -> CPU tensor (each owns its memory)."""
    with open(path, "rb") as f:
        head = f.read(8)
        if len(head) != 8:
            raise ValueError(f"{path}: truncated safetensors header")
        (n,) = struct.unpack("<Q", head)
        if n > MAX_HEADER:
            raise ValueError(f"{path}: safetensors header of {n} bytes is too large")
        header = json.loads(f.read(n).decode("utf-8"))
        base = 8 + n
        out: dict[str, Any] = {}
        for name, entry in header.items():
            if name == "__metadata__":
                continue
            dtype = _BY_CODE.get(entry["dtype"])
            if dtype is None:
                raise ValueError(f"{path}: tensor {name!r} has unknown dtype {entry['dtype']!r}")
            begin, end = entry["data_offsets"]
            shape = [int(s) for s in entry["shape"]]
            f.seek(base + begin)
            data = bytearray(f.read(end - begin))
            if len(data) != end - begin:
                raise ValueError(f"{path}: tensor {name!r} is truncated")
            t = torch.frombuffer(data, dtype=torch.uint8) if data else torch.empty(0, dtype=torch.uint8)
            out[name] = t.view(dtype).reshape(shape) if data else torch.empty(shape, dtype=dtype)
        return out
