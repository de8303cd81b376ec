"""Construct leaf modules on ``meta`` and compare them with the spec.

The host builds each standard torch.nn layer itself, from literal kwargs, under
``torch.device("meta")``: absurd sizes (``Linear(10**7, 10**7)``) cost no
memory, and what the layer expects (names, kinds, shapes, dtypes) is compared
with the spec's tensors before a single real byte is loaded.
"""

from __future__ import annotations

from typing import Any

from .._errors import TensorMismatchError, UnsafeSpecError
from ._names import show
from ._spec import ModuleSpec, TensorInfo

__all__ = ["build_leaves_on_meta", "leaf_members"]

_FLOATING = ("float64", "float32", "float16", "bfloat16", "complex64", "complex128")


def leaf_members(leaf: Any) -> dict[str, tuple[Any, str, bool]]:
    """relative name -> (tensor, "parameter" | "buffer", persistent)."""
    out: dict[str, tuple[Any, str, bool]] = {}
    for prefix, mod in leaf.named_modules(remove_duplicate=False):
        pre = f"{prefix}." if prefix else ""
        for name, p in mod._parameters.items():
            if p is not None:
                out[pre + name] = (p, "parameter", True)
        for name, b in mod._buffers.items():
            if b is not None:
                out[pre + name] = (b, "buffer", name not in mod._non_persistent_buffers_set)
    return out


def build_leaves_on_meta(mspec: ModuleSpec) -> dict[str, Any]:
    """Build every leaf of one module on meta and check it against the spec."""
    import torch

    from ._literals import dtype_table

    dtypes = dtype_table()
    built: dict[str, Any] = {}
    for path, leaf in mspec.leaves.items():
        where = f"module {mspec.mid} leaf {show(path)} ({leaf.cls_name})"
        for key, value in leaf.kwargs.items():
            _check_printable(value, f"{where} kwarg {show(key)}")
        try:
            with torch.device("meta"):
                mod = leaf.cls(**leaf.kwargs)
        except Exception as exc:  # torch's own constructor refused the literal kwargs
            raise UnsafeSpecError(
                f"{where}: the constructor refused its arguments: {type(exc).__name__}: {show(str(exc), 300)}"
            ) from None
        # Constructor arguments end up in attributes that repr(model) prints.
        shown = repr(mod)
        if not all(c.isprintable() or c == "\n" for c in shown):
            raise UnsafeSpecError(f"{where}: its repr() holds control or invisible characters: {show(shown, 200)}")
        members = leaf_members(mod)
        for rel, (t, _, _) in members.items():
            if not t.is_meta:
                raise UnsafeSpecError(f"{where}: {rel} was not created on meta")
        expected, given = set(members), set(leaf.members)
        if expected != given:
            parts = []
            if expected - given:
                parts.append(f"the spec lacks {show(sorted(expected - given)[:5])}")
            if given - expected:
                parts.append(f"the spec adds {show(sorted(given - expected)[:5])}")
            raise TensorMismatchError(f"{where}: tensors differ from what {leaf.cls_name} holds: {'; '.join(parts)}")
        for rel, (t, kind, persistent) in members.items():
            info = _info_for(mspec, leaf.members[rel])
            twhere = f"{where} tensor {show(rel)}"
            if info.kind != kind:
                raise TensorMismatchError(f"{twhere}: the spec says {info.kind} but {leaf.cls_name} has a {kind}")
            if kind == "buffer" and info.persistent != persistent:
                raise TensorMismatchError(f"{twhere}: persistence differs from {leaf.cls_name}'s")
            if tuple(t.shape) != info.shape:
                raise TensorMismatchError(f"{twhere}: shape {list(info.shape)} in the spec, {list(t.shape)} when built")
            meta_dtype = t.dtype
            spec_dtype = dtypes[info.dtype]
            # model.half() and friends: floating tensors may differ in precision only.
            same_family = meta_dtype.is_floating_point == spec_dtype.is_floating_point and (
                meta_dtype.is_complex == spec_dtype.is_complex
            ) and (meta_dtype.is_floating_point or meta_dtype.is_complex)
            if meta_dtype != spec_dtype and not same_family:
                raise TensorMismatchError(f"{twhere}: dtype {info.dtype} in the spec, {meta_dtype} when built")
        built[path] = mod
    return built


def _check_printable(value: Any, where: str) -> None:
    """Strings become layer attributes (``padding``, ``mode``, ``nonlinearity``) that
    ``repr(model)`` prints raw. Refuse anything ``str.isprintable`` rejects: control
    characters (ANSI escapes, a cleared screen, a terminal title), bidi overrides,
    zero-width and other format characters, line and paragraph separators."""
    if isinstance(value, str):
        if not value.isprintable():
            bad = next(c for c in value if not c.isprintable())
            raise UnsafeSpecError(
                f"{where}: string {show(value)} holds the unprintable character U+{ord(bad):04X}",
                hint="layer arguments must be printable text; this one would change what repr(model) shows",
            )
    elif isinstance(value, (tuple, list)):
        for item in value:
            _check_printable(item, where)
    elif isinstance(value, dict):
        for k, item in value.items():
            _check_printable(k, where)
            _check_printable(item, where)


def _info_for(mspec: ModuleSpec, path: str) -> TensorInfo:
    target = mspec.aliases.get(path, path)
    return mspec.tensors[target]
