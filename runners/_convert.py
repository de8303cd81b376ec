"""Turn a pickled checkpoint into data the host can read without unpickling.

Runs inside the sandbox: the checkpoint is unpickled here, never on the host. The
output is ``weights.safetensors`` (tensors keyed ``t0``, ``t1``, ...) plus
``checkpoint.json``, the structure around them in tagged literals:

    {"tensor": "t0"}  null  true  1  "text"  {"float": "0.5"}
    {"list": [...]}  {"tuple": [...]}  {"dict": [[key, value], ...]}   (keys: str or int)
    {"namespace": [[name, value], ...]}   an argparse.Namespace / types.SimpleNamespace
    {"unsupported": "<type name>"}   anything else, reported by the host as an error
"""

from __future__ import annotations

import argparse
import json
import math
import os
import shutil
import types
import warnings
import zipfile

from _contract import CHECKPOINT_FILE, CHECKPOINT_FORMAT, CHECKPOINT_VERSION, WEIGHTS_FILE

MAX_DEPTH = 32


def _load(path: str, weights_only: bool, scratch: str):
    import torch

    # torch.hub's legacy format: a .zip holding exactly one pickled checkpoint. Its
    # entry name is the archive's, so it may be "../x" or absolute: the bytes are
    # copied to a fixed name in scratch instead of extracting under that name.
    if zipfile.is_zipfile(path):
        with zipfile.ZipFile(path) as zf:
            infos = zf.infolist()
            names = [i.filename for i in infos]
            legacy = len(infos) == 1 and not infos[0].is_dir() and "data.pkl" not in names[0] \
                and not any(n.endswith("/data.pkl") for n in names)
            if legacy:
                warnings.warn(
                    "Falling back to the old format < 1.6. This support will be deprecated in favor of default "
                    "zipfile format introduced in 1.6. Please redo torch.save() to save it in the new zipfile format.",
                    FutureWarning,
                    stacklevel=2,
                )
                target = os.path.join(scratch, "legacy-checkpoint")
                with zf.open(infos[0]) as src, open(target, "wb") as out:
                    shutil.copyfileobj(src, out)
                path = target
    return torch.load(path, map_location="cpu", weights_only=weights_only)


def _float(value: float) -> dict:
    if math.isnan(value):
        return {"float": "nan"}
    if math.isinf(value):
        return {"float": "inf" if value > 0 else "-inf"}
    # float.__repr__, not repr(): a subclass (numpy.float64 prints "np.float64(0.5)"
    # under numpy 2) must still come out as a plain decimal literal.
    return {"float": float.__repr__(float(value))}


def convert(path: str, out_dir: str, *, weights_only: bool, scratch: str) -> dict:
    import torch
    from _safetensors_write import write_safetensors

    obj = _load(path, weights_only, scratch)
    tensors: dict[str, torch.Tensor] = {}
    seen: dict[int, str] = {}

    def encode(value, depth: int):
        if depth > MAX_DEPTH:
            raise ValueError("checkpoint nesting is deeper than 32 levels")
        if isinstance(value, torch.Tensor):
            if isinstance(value, torch.nn.Parameter):
                value = value.detach()
            key = seen.get(id(value))
            if key is None:
                key = f"t{len(tensors)}"
                seen[id(value)] = key
                tensors[key] = value
            return {"tensor": key}
        if value is None or isinstance(value, bool):
            return None if value is None else bool(value)
        if isinstance(value, str):
            return str.__str__(value)  # a subclass (numpy.str_) as the plain string
        if isinstance(value, int):
            # int(): an IntEnum or numpy-like subclass comes out as its number.
            return int(value) if abs(value) < 2**63 else {"unsupported": "int (too large)"}
        if isinstance(value, float):
            return _float(value)
        if isinstance(value, dict):
            items = []
            for k, v in value.items():
                if not isinstance(k, (str, int)) or isinstance(k, bool):
                    return {"unsupported": f"dict with {type(k).__name__} keys"}
                items.append([k, encode(v, depth + 1)])
            return {"dict": items}
        if isinstance(value, (argparse.Namespace, types.SimpleNamespace)):
            # Training scripts save their parsed arguments; the host rebuilds a
            # Namespace from the names and values (no class is named).
            attrs = vars(value)
            if not all(isinstance(k, str) for k in attrs):
                return {"unsupported": "namespace with non-string attribute names"}
            return {"namespace": [[k, encode(v, depth + 1)] for k, v in attrs.items()]}
        if isinstance(value, (list, tuple)):
            tag = "list" if isinstance(value, list) else "tuple"
            return {tag: [encode(v, depth + 1) for v in value]}
        return {"unsupported": type(value).__name__[:100]}

    structure = encode(obj, 0)
    write_safetensors(os.path.join(out_dir, WEIGHTS_FILE), tensors)
    with open(os.path.join(out_dir, CHECKPOINT_FILE), "w", encoding="utf-8") as f:
        json.dump({"format": CHECKPOINT_FORMAT, "version": CHECKPOINT_VERSION, "root": structure}, f, allow_nan=False)
    return {"tensors": len(tensors)}
