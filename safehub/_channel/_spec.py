"""Parse and validate ``spec.json`` into plain dataclasses.

Everything in docs/architecture-format.md is checked here, before any module,
tensor or graph is created: JSON shape, caps, names, paths, literals, and every
callable (resolved through :mod:`._allowlist`). The result holds only validated
strings, Python literals, torch enum values and allowlisted callables.
"""

from __future__ import annotations

import functools
import re
from dataclasses import field
from typing import Any

from .._contract import SPEC_FORMAT, SPEC_VERSION
from .._errors import DisallowedTargetError, InvalidNameError, SpecTooLargeError, UnsafeSpecError
from .._records import record
from ._allowlist import COUNT_KWARGS, leaf_allowlist
from ._graphspec import GraphSpec, NodeSpec, parse_graph
from ._json import boolean, dict_capped, load_json, obj
from ._limits import ChannelLimits
from ._literals import DTYPE_NAMES, LiteralContext, decode_literal
from ._names import check_ident, check_path, show

__all__ = [
    "ArchSpec",
    "ModuleSpec",
    "TensorInfo",
    "LeafSpec",
    "NodeSpec",
    "GraphSpec",
    "ModuleRef",
    "parse_spec",
    "load_json",
]

FORMAT = SPEC_FORMAT  # the host<->runner contract fixes both
VERSION = SPEC_VERSION
_KINDS = ("parameter", "buffer", "constant")
_FLOATING = ("float64", "float32", "float16", "bfloat16", "complex64", "complex128")
_MAX_DIM = 2**62


@record(frozen=True)
class ModuleRef:
    """A reference to a module of the spec by its id."""

    mid: str


@record(frozen=True)
class ObjectRoot:
    """An object whose attributes held modules: type name and validated attributes."""

    type_name: str
    attrs: dict[str, Any]  # identifier -> ModuleRef/containers/ObjectRoot or PlainValue


@record(frozen=True)
class PlainValue:
    """A plain attribute value of an object root."""

    value: Any  # int, float, str, bool, None or tuples of them


_MAX_DATA_STR = 1000
_MAX_OBJECT_ATTRS = 256


def _parse_data(value: Any, where: str, depth: int) -> Any:
    if value is None or type(value) in (bool, int, float):
        if type(value) is int and not -(2**63) <= value < 2**63:
            raise UnsafeSpecError(f"{where}: integer out of range")
        return value
    if isinstance(value, str):
        if len(value) > _MAX_DATA_STR:
            raise SpecTooLargeError(f"{where}: string longer than {_MAX_DATA_STR} characters")
        return value
    if isinstance(value, dict) and set(value) == {"tuple"} and isinstance(value["tuple"], list):
        if depth >= 4 or len(value["tuple"]) > 64:
            raise SpecTooLargeError(f"{where}: tuple nested deeper than 4 or longer than 64")
        return tuple(_parse_data(v, where, depth + 1) for v in value["tuple"])
    raise UnsafeSpecError(f"{where}: plain data must be int, float, str, bool, None or a tuple of them")


@record
class TensorInfo:
    """One tensor the spec declares: where, its dtype and shape, and what kind."""

    path: str
    dtype: str
    shape: tuple[int, ...]
    kind: str
    requires_grad: bool
    persistent: bool


@record
class LeafSpec:
    """One allowlisted leaf module: its class, constructor kwargs and tensors."""

    path: str
    cls_name: str
    cls: type
    kwargs: dict[str, Any]
    training: bool
    # tensor or alias paths under this leaf: relative name -> full path
    members: dict[str, str] = field(default_factory=dict)


@record
class ModuleSpec:
    """One validated module of the spec: tensors, leaves and (traced) graphs."""

    mid: str
    mode: str
    training: bool
    tensors: dict[str, TensorInfo]
    aliases: dict[str, str]
    leaves: dict[str, LeafSpec]
    submodules: dict[str, bool]
    graphs: dict[str, GraphSpec]


@record
class ArchSpec:
    """A whole validated spec: the root and the modules it refers to."""

    torch_version: str
    root: Any  # ModuleRef or tuple/list/dict of them
    modules: dict[str, ModuleSpec]


# --- top level ---------------------------------------------------------------


def parse_spec(raw: bytes, *, limits: ChannelLimits, device: Any = None) -> ArchSpec:
    """Validate ``spec.json`` bytes completely. ``device`` is what device
    literals in graphs are re-pointed to."""
    if len(raw) > limits.spec_bytes:
        raise SpecTooLargeError(f"spec.json is {len(raw)} bytes, over the {limits.spec_bytes}-byte cap")
    parsed = load_json(raw, "spec.json", cap_bytes=limits.spec_bytes, max_depth=limits.json_depth,
                       max_string_bytes=limits.json_string_bytes)
    doc = obj(parsed, "spec.json", ("format", "version", "root", "modules"), ("torch_version",))
    if doc["format"] != FORMAT or type(doc["version"]) is not int or doc["version"] != VERSION:
        raise UnsafeSpecError(
            f"spec.json is format {show(doc['format'])} version {show(doc['version'])}; this safehub reads {FORMAT} version {VERSION}",
            hint="upgrade safehub on the side that is older",
        )
    torch_version = _check_torch_version(doc.get("torch_version"))
    modules_raw = dict_capped(doc["modules"], "spec.json modules", limits.modules)
    total_tensors = 0
    for mid, mod in modules_raw.items():
        if isinstance(mod, dict):
            for key in ("tensors", "aliases"):
                if isinstance(mod.get(key), dict):
                    total_tensors += len(mod[key])
    if total_tensors > limits.tensors:
        raise SpecTooLargeError(f"spec.json lists {total_tensors} tensors, over the cap of {limits.tensors}")
    modules: dict[str, ModuleSpec] = {}
    for mid, mod in modules_raw.items():
        if not isinstance(mid, str) or not _is_mid(mid):
            raise InvalidNameError(f"module id {show(mid)} does not match m<digits>")
        modules[mid] = _parse_module(mid, mod, limits, device)
    root = _parse_root(doc["root"], modules, limits, 0)
    return ArchSpec(torch_version=torch_version, root=root, modules=modules)


def _is_mid(mid: str) -> bool:
    return 2 <= len(mid) <= 7 and mid[0] == "m" and mid[1:].isascii() and mid[1:].isdigit()


def _check_torch_version(value: Any) -> str:
    if value is None:
        return ""
    if not isinstance(value, str) or len(value) > 64:
        raise UnsafeSpecError("spec.json torch_version must be a short string")
    import torch

    def major_minor(v: str) -> tuple[str, ...]:
        return tuple(v.split("+")[0].split(".")[:2])

    if major_minor(value) != major_minor(torch.__version__):
        raise UnsafeSpecError(
            f"the sandbox ran torch {show(value)} but the host has torch {torch.__version__}",
            hint="operator schemas differ between torch releases; use the host's torch in the repo environment",
        )
    return value


def _parse_root(value: Any, modules: dict[str, ModuleSpec], limits: ChannelLimits, depth: int) -> Any:
    if depth > limits.value_depth:
        raise SpecTooLargeError(f"spec.json root is nested deeper than {limits.value_depth}")
    if not isinstance(value, dict) or len(value) != 1:
        raise UnsafeSpecError("spec.json root must be one of {module}, {tuple}, {list}, {dict}")
    (tag, val), = value.items()
    if tag == "module":
        if not isinstance(val, str) or val not in modules:
            raise UnsafeSpecError(f"spec.json root names an unknown module {show(val)}")
        return ModuleRef(val)
    if tag in ("tuple", "list"):
        if not isinstance(val, list) or len(val) > limits.modules:
            raise UnsafeSpecError(f"spec.json root {tag} must be an array of at most {limits.modules} values")
        items = [_parse_root(v, modules, limits, depth + 1) for v in val]
        return tuple(items) if tag == "tuple" else items
    if tag == "dict":
        if not isinstance(val, dict) or len(val) > limits.modules:
            raise UnsafeSpecError(f"spec.json root dict must be an object of at most {limits.modules} values")
        out = {}
        for k, v in val.items():
            if len(k) > 256 or any(ord(c) < 32 or 127 <= ord(c) < 160 for c in k):
                raise InvalidNameError(f"spec.json root dict key {show(k)} is too long or holds control characters")
            out[k] = _parse_root(v, modules, limits, depth + 1)
        return out
    if tag == "object":
        val = obj(val, "spec.json root object", ("type", "attrs"))
        type_name = val["type"]
        if not isinstance(type_name, str) or not re.fullmatch(r"[A-Za-z_<][A-Za-z0-9_.<>]{0,199}", type_name):
            raise InvalidNameError(f"spec.json root object type {show(type_name)} is not a dotted name")
        attrs: dict[str, Any] = {}
        for name, v in dict_capped(val["attrs"], "spec.json root object attrs", _MAX_OBJECT_ATTRS).items():
            check_ident(name, "spec.json root object attribute", limits)
            if name.startswith("_"):
                raise InvalidNameError(f"spec.json root object attribute {show(name)} is private")
            if isinstance(v, dict) and len(v) == 1 and "value" in v:
                attrs[name] = PlainValue(_parse_data(v["value"], f"spec.json root object attribute {name}", 0))
            else:
                attrs[name] = _parse_root(v, modules, limits, depth + 1)
        return ObjectRoot(type_name, attrs)
    raise UnsafeSpecError(f"spec.json root has unknown tag {show(tag)}")


# --- modules -------------------------------------------------------------------


def _parse_module(mid: str, raw: Any, limits: ChannelLimits, device: Any) -> ModuleSpec:
    from ._module import reserved_module_attrs, reserved_root_attrs

    where = f"module {mid}"
    raw = obj(raw, where, ("mode", "training", "tensors", "graphs"), ("aliases", "leaves", "submodules"))
    mode = raw["mode"]
    if mode not in ("fx", "aten", "deferred"):
        raise UnsafeSpecError(f"{where}: mode {show(mode)} is not 'fx', 'aten' or 'deferred'")
    training = boolean(raw["training"], f"{where} training")
    root_res, mod_res = reserved_root_attrs(), reserved_module_attrs()

    def path(p: Any, what: str) -> tuple[str, ...]:
        atoms = check_path(p, f"{where}: {what}", limits, mod_res)
        if atoms[0] in root_res:
            raise InvalidNameError(
                f"{where}: {what} {show(p)} starts with {show(atoms[0])}, an attribute of the rebuilt GraphModule",
                hint="rename that attribute in the model; safehub cannot carry it",
            )
        return atoms

    tensors: dict[str, TensorInfo] = {}
    for p, info in dict_capped(raw["tensors"], f"{where} tensors", limits.tensors).items():
        path(p, "tensor path")
        tensors[p] = _parse_tensor_info(p, info, f"{where} tensor {show(p)}", limits)
    aliases: dict[str, str] = {}
    for p, target in dict_capped(raw.get("aliases", {}), f"{where} aliases", limits.tensors).items():
        path(p, "alias path")
        if not isinstance(target, str) or target not in tensors:
            raise UnsafeSpecError(f"{where}: alias {show(p)} points to {show(target)}, which is not a tensor of this module")
        if p in tensors:
            raise UnsafeSpecError(f"{where}: {show(p)} is both a tensor and an alias")
        aliases[p] = target
    leaves_raw = dict_capped(raw.get("leaves", {}), f"{where} leaves", limits.leaves)
    if mode in ("aten", "deferred") and leaves_raw:
        raise UnsafeSpecError(f"{where}: {mode}-mode modules have no leaves")
    leaves: dict[str, LeafSpec] = {}
    for p, leaf in leaves_raw.items():
        path(p, "leaf path")
        leaves[p] = _parse_leaf(p, leaf, f"{where} leaf {show(p)}", limits)
    submodules: dict[str, bool] = {}
    for p, sub in dict_capped(raw.get("submodules", {}), f"{where} submodules", limits.leaves).items():
        path(p, "submodule path")
        sub = obj(sub, f"{where} submodule {show(p)}", ("training",))
        submodules[p] = boolean(sub["training"], f"{where} submodule {show(p)} training")
    _check_tree(where, tensors, aliases, leaves, submodules)

    if mode == "deferred":
        # Tensors only: the graph is exported at the first forward (safehub/_deferred.py).
        if raw["graphs"] != {}:
            raise UnsafeSpecError(f"{where}: a deferred module carries no graphs")
        return ModuleSpec(mid, mode, training, tensors, aliases, leaves, submodules, {})
    graphs_raw = obj(raw["graphs"], f"{where} graphs", ("eval",), ("train",))
    graphs = {
        name: parse_graph(g, f"{where} {name} graph", mode, tensors, aliases, leaves, limits, device)
        for name, g in graphs_raw.items()
    }
    if "train" in graphs and graphs["train"].placeholders != graphs["eval"].placeholders:
        raise UnsafeSpecError(f"{where}: the train and eval graphs take different arguments")
    return ModuleSpec(mid, mode, training, tensors, aliases, leaves, submodules, graphs)


def _parse_tensor_info(p: str, raw: Any, where: str, limits: ChannelLimits) -> TensorInfo:
    raw = obj(raw, where, ("dtype", "shape", "kind"), ("requires_grad", "persistent"))
    dtype, shape, kind = raw["dtype"], raw["shape"], raw["kind"]
    if dtype not in DTYPE_NAMES:
        raise UnsafeSpecError(f"{where}: dtype {show(dtype)} is not allowed")
    if not isinstance(shape, list) or len(shape) > limits.dims:
        raise UnsafeSpecError(f"{where}: shape must be a list of at most {limits.dims} sizes")
    for d in shape:
        if type(d) is not int or not 0 <= d <= _MAX_DIM:
            raise UnsafeSpecError(f"{where}: shape entry {show(d)} is not a size")
    if kind not in _KINDS:
        raise UnsafeSpecError(f"{where}: kind {show(kind)} is not one of {', '.join(_KINDS)}")
    requires_grad = boolean(raw.get("requires_grad", False), f"{where} requires_grad")
    persistent = boolean(raw.get("persistent", kind != "constant"), f"{where} persistent")
    if requires_grad and (kind != "parameter" or dtype not in _FLOATING):
        raise UnsafeSpecError(f"{where}: only floating-point parameters can require grad")
    if kind == "constant":
        persistent = False
    return TensorInfo(p, dtype, tuple(shape), kind, requires_grad, persistent)


@functools.lru_cache(maxsize=None)
def _ctor_params(cls: type) -> frozenset[str]:
    """Keyword names ``cls(...)`` accepts. ``LSTM.__init__(*args, **kwargs)``
    forwards to ``RNNBase.__init__``, so follow the MRO past ``**kwargs``."""
    import inspect

    names: set[str] = set()
    for klass in cls.__mro__:
        init = vars(klass).get("__init__")
        if init is None:
            continue
        params = inspect.signature(init).parameters.values()
        names |= {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY) and p.name != "self"}
        if not any(p.kind is p.VAR_KEYWORD for p in params):
            break
    return frozenset(names)


def _parse_leaf(p: str, raw: Any, where: str, limits: ChannelLimits) -> LeafSpec:
    raw = obj(raw, where, ("cls", "kwargs"), ("training",))
    cls_name = raw["cls"]
    allow = leaf_allowlist()
    if not isinstance(cls_name, str) or cls_name not in allow:
        raise DisallowedTargetError(
            f"{where}: module class {show(cls_name)} is not on safehub's torch.nn allowlist",
            hint="only standard torch.nn layers (not containers) are rebuilt as leaves",
        )
    cls = allow[cls_name]
    params = _ctor_params(cls)
    kwargs: dict[str, Any] = {}
    ctx = LiteralContext(limits, f"{where} kwargs", resolve_ref=None, allow_device=False)
    for key, value in dict_capped(raw["kwargs"], f"{where} kwargs", limits.args).items():
        check_ident(key, f"{where}: kwarg", limits)
        if key.startswith("_") or key in ("device", "self"):
            raise InvalidNameError(f"{where}: constructor argument {show(key)} is private or not allowed")
        if key not in params:
            raise UnsafeSpecError(f"{where}: {cls_name} takes no argument {show(key)}")
        value = decode_literal(value, ctx)
        if key in COUNT_KWARGS.get(cls_name, ()):
            count = len(value) if isinstance(value, (list, tuple)) else value  # a list: one submodule per item
            if not (type(count) is int and 0 <= count <= limits.count_kwarg):
                raise SpecTooLargeError(f"{where}: {cls_name}({key}=...) asks for more than {limits.count_kwarg} layers")
        kwargs[key] = value
    training = boolean(raw.get("training", True), f"{where} training")
    return LeafSpec(p, cls_name, cls, kwargs, training)


def _check_tree(where: str, tensors: dict, aliases: dict, leaves: dict[str, LeafSpec], submodules: dict) -> None:
    """Tensors have no children, leaves do not nest, and everything inside a
    leaf is a tensor the leaf owns (checked against the meta-built leaf later)."""
    tensor_paths = tensors.keys() | aliases.keys()
    for p in leaves:
        if p in tensor_paths or p in submodules:
            raise UnsafeSpecError(f"{where}: {show(p)} is listed both as a leaf and as a tensor or submodule")
    for p in submodules:
        if p in tensor_paths:
            raise UnsafeSpecError(f"{where}: {show(p)} is listed both as a submodule and as a tensor")

    def enclosing(p: str) -> tuple[str | None, str | None]:
        """(leaf, tensor) among the proper prefixes of p."""
        leaf = tensor = None
        i = p.find(".")
        while i != -1:
            prefix = p[:i]
            if prefix in leaves and leaf is None:
                leaf = prefix
            if prefix in tensor_paths:
                tensor = prefix
            i = p.find(".", i + 1)
        return leaf, tensor

    for p in tensor_paths:
        leaf, tensor = enclosing(p)
        if tensor is not None:
            raise UnsafeSpecError(f"{where}: tensor path {show(p)} lies inside tensor {show(tensor)}")
        if leaf is not None:
            leaves[leaf].members[p[len(leaf) + 1 :]] = p
    for kind, paths in (("leaf", leaves), ("submodule", submodules)):
        for p in paths:
            leaf, tensor = enclosing(p)
            if leaf is not None or tensor is not None:
                raise UnsafeSpecError(f"{where}: {kind} {show(p)} lies inside {show(leaf or tensor)}")


