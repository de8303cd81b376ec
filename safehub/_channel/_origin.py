"""What a rebuilt module remembers about how it was built, so it can be saved.

``rebuild_from_output`` attaches a :class:`BuildOrigin` to every module it
builds: the exact ``spec.json`` bytes that passed validation (shared by all
modules of one rebuild), the module's id and parsed spec, and the code its
graphs generated. ``safehub.save`` writes that spec back out with the module's
current tensors, after checking the module still matches it. Nothing here is
read from outside the process after validation.
"""

from __future__ import annotations

from dataclasses import field
from typing import Any

from .._records import record

__all__ = ["BuildRecord", "BuildOrigin", "ORIGIN_ATTR", "attach_origin", "origin_of"]

ORIGIN_ATTR = "_safehub_origin"


@record(eq=False)
class BuildRecord:
    """One rebuild: shared by every module it returned."""

    spec_raw: bytes
    root: Any  # the parsed root: ModuleRef or tuple/list/dict of them
    # Set by safehub.load / load_artifact: where the spec came from (JSON-safe).
    provenance: dict[str, Any] = field(default_factory=dict)

    def __deepcopy__(self, memo: dict[int, Any]) -> "BuildRecord":
        return self  # immutable in practice; a deep-copied model keeps its record


@record(frozen=True, eq=False)
class BuildOrigin:
    """How one module was built: its record, spec and generated code."""

    record: BuildRecord
    mid: str
    mspec: Any  # the validated _spec.ModuleSpec
    code: str
    train_code: str

    def __deepcopy__(self, memo: dict[int, Any]) -> "BuildOrigin":
        return self


def attach_origin(built: dict[str, Any], spec: Any, spec_raw: bytes) -> BuildRecord:
    record = BuildRecord(spec_raw=spec_raw, root=spec.root)
    for mid, gm in built.items():
        mspec = spec.modules[mid]
        if mspec.mode == "deferred":  # no graph yet (safehub/_deferred.py): only its tree and tensors are kept
            origin = BuildOrigin(record, mid, mspec, "", "")
        else:
            origin = BuildOrigin(record, mid, mspec, gm.code, gm.train_code)
        gm.__dict__[ORIGIN_ATTR] = origin  # a plain attribute: not a submodule, not in state_dict
    return record


def origin_of(module: Any) -> BuildOrigin | None:
    origin = getattr(module, "__dict__", {}).get(ORIGIN_ATTR)
    return origin if isinstance(origin, BuildOrigin) else None
