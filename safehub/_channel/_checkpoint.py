"""Reading a checkpoint the sandbox converted (``runners/_convert.py``): a JSON
structure of tagged literals around tensors in a safetensors file.

Hostile input: sizes are capped, the structure is walked with a depth limit, and
every tensor key must be used exactly once... or shared where the source shared it.
"""

from __future__ import annotations

import argparse
import re
from pathlib import Path
from typing import Any

from .._contract import CHECKPOINT_FILE, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, WEIGHTS_FILE
from .._errors import SpecTooLargeError, TensorMismatchError, UnsafeSpecError, UnsupportedReturnError, escape_untrusted
from ._files import open_output_file, read_output_file
from ._json import load_json

__all__ = ["read_converted_checkpoint", "load_safetensors_checked", "MAX_CHECKPOINT_JSON_BYTES"]

MAX_CHECKPOINT_JSON_BYTES = 64 * 1024 * 1024
MAX_DEPTH = 32
MAX_STRING = 1 << 16
_TENSOR_KEY = re.compile(r"^t[0-9]{1,9}$")
# Namespace attribute names: printable, bounded, never a dunder (setattr of
# "__class__" or "__dict__" would change the object itself).
_ATTR = re.compile(r"^(?!__)[A-Za-z0-9_.\-]{1,128}$")
_FLOAT = re.compile(r"^(nan|inf|-inf|[-+]?(\d+(\.\d*)?|\.\d+)([eE][-+]?\d+)?)$")


def read_converted_checkpoint(out_dir: Path, *, max_weight_bytes: int) -> Any:
    raw = read_output_file(out_dir, CHECKPOINT_FILE, max_bytes=MAX_CHECKPOINT_JSON_BYTES)
    # Each level of the structure is two JSON levels ({"list": [...]}).
    doc = load_json(raw, CHECKPOINT_FILE, cap_bytes=MAX_CHECKPOINT_JSON_BYTES, max_depth=2 * MAX_DEPTH + 4)
    if not isinstance(doc, dict) or doc.get("format") != CHECKPOINT_FORMAT or doc.get("version") != CHECKPOINT_VERSION:
        raise UnsafeSpecError(f"{CHECKPOINT_FILE} is not a {CHECKPOINT_FORMAT} v{CHECKPOINT_VERSION} document")

    tensors = load_safetensors_checked(out_dir, WEIGHTS_FILE, max_bytes=max_weight_bytes)
    used: set[str] = set()
    unsupported: list[str] = []

    def decode(node: Any, depth: int, where: str) -> Any:
        if depth > MAX_DEPTH:
            raise SpecTooLargeError(f"checkpoint structure is nested deeper than {MAX_DEPTH} at {where}")
        if node is None or isinstance(node, bool):
            return node
        if isinstance(node, int):
            if abs(node) >= 2**63:
                raise UnsafeSpecError(f"integer out of range at {where}")
            return node
        if isinstance(node, str):
            if len(node) > MAX_STRING:
                raise SpecTooLargeError(f"string longer than {MAX_STRING} characters at {where}")
            return node
        if not isinstance(node, dict) or len(node) != 1:
            raise UnsafeSpecError(f"unknown value at {where}")
        (tag, body), = node.items()
        if tag == "tensor":
            if not isinstance(body, str) or not _TENSOR_KEY.match(body) or body not in tensors:
                raise TensorMismatchError(f"checkpoint refers to a tensor that is not in the weights file at {where}")
            used.add(body)
            return tensors[body]
        if tag == "float":
            if not isinstance(body, str) or not _FLOAT.match(body):
                raise UnsafeSpecError(f"bad float literal at {where}")
            return float(body)
        if tag in ("list", "tuple"):
            if not isinstance(body, list):
                raise UnsafeSpecError(f"bad {tag} at {where}")
            items = [decode(v, depth + 1, f"{where}[{i}]") for i, v in enumerate(body)]
            return items if tag == "list" else tuple(items)
        if tag == "dict":
            if not isinstance(body, list):
                raise UnsafeSpecError(f"bad dict at {where}")
            out: dict[Any, Any] = {}
            for pair in body:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise UnsafeSpecError(f"bad dict item at {where}")
                key, value = pair
                if isinstance(key, bool) or not isinstance(key, (str, int)) or (isinstance(key, str) and len(key) > 4096):
                    raise UnsafeSpecError(f"dict key at {where} is not a string or an integer")
                out[key] = decode(value, depth + 1, f"{where}[{key!r}]")
            return out
        if tag == "namespace":
            if not isinstance(body, list):
                raise UnsafeSpecError(f"bad namespace at {where}")
            attrs: dict[str, Any] = {}
            for pair in body:
                if not isinstance(pair, list) or len(pair) != 2:
                    raise UnsafeSpecError(f"bad namespace item at {where}")
                key, value = pair
                # hasattr on the class: a name like "_get_kwargs" would shadow a method.
                if (not isinstance(key, str) or not _ATTR.match(key) or key in attrs
                        or hasattr(argparse.Namespace, key)):
                    shown = escape_untrusted(str(key), limit=60)
                    raise UnsafeSpecError(
                        f"namespace attribute name {shown!r} at {where} is not allowed",
                        hint="attribute names are letters, digits, '_', '-' and '.', not starting with '__'",
                    )
                attrs[key] = decode(value, depth + 1, f"{where}.{key}")
            # Always argparse.Namespace, whatever the sandbox's object was: the host
            # never resolves a class from the checkpoint.
            return argparse.Namespace(**attrs)
        if tag == "unsupported":
            unsupported.append(f"{where}: {escape_untrusted(str(body), limit=100)}")
            return None
        raise UnsafeSpecError(f"unknown tag {escape_untrusted(str(tag), limit=40)!r} at {where}")

    result = decode(doc.get("root"), 0, "checkpoint")
    if used != set(tensors):
        raise TensorMismatchError(f"the weights file holds {len(set(tensors) - used)} tensors the checkpoint never uses")
    if unsupported:
        raise UnsupportedReturnError(
            "the checkpoint holds objects that are not tensors, numbers, strings or containers: "
            + "; ".join(unsupported[:10]),
            hint="save the checkpoint's state_dict alone, or as safetensors",
        )
    return result


def load_safetensors_checked(folder: Path, name: str, *, max_bytes: int) -> dict[str, Any]:
    """Every tensor of ``folder/name``, after the header passed the channel's bounds checks."""
    import os

    from ._limits import ChannelLimits
    from ._weights import load_tensors, read_header

    fd = open_output_file(folder, name, max_bytes=max_bytes)
    try:
        entries = read_header(fd, ChannelLimits(weights_bytes=max_bytes))
        return load_tensors(fd, entries, device=None)
    finally:
        os.close(fd)
