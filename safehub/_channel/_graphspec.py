"""Parse and validate one graph of a module (docs/architecture-format.md, *Graph*).

Nodes become :class:`NodeSpec` records holding validated identifiers, decoded
literals and callables resolved from the host's allowlists only.
"""

from __future__ import annotations

import math
import re

from typing import Any, cast

from .._errors import DisallowedTargetError, InvalidNameError, SpecTooLargeError, UnsafeSpecError
from .._records import record
from ._allowlist import GETATTR_ATTRS, GETATTR_KEY, allowed_function, allowed_method, resolve_aten
from ._json import obj
from ._limits import ChannelLimits
from ._literals import LiteralContext, NodeRef, decode_literal
from ._names import check_ident, show

__all__ = ["NodeSpec", "GraphSpec", "parse_graph"]

_OPS = ("placeholder", "get_attr", "call_function", "call_method", "call_module", "output")
_OPERATOR_ARITY = {"neg": 1, "pos": 1, "abs": 1, "invert": 1, "not_": 1, "truth": 1, "index": 1, "setitem": 3}


@record
class NodeSpec:
    """One validated graph node; ``target`` is resolved through the allowlists."""

    op: str
    name: str
    target: Any  # str for placeholder/get_attr/call_module/call_method/output, a callable for call_function
    target_text: str
    args: tuple[Any, ...]
    kwargs: dict[str, Any]


@record
class GraphSpec:
    """A validated graph: its nodes in order and its placeholder names."""

    nodes: list[NodeSpec]
    placeholders: tuple[str, ...]


def parse_graph(
    raw: Any,
    where: str,
    mode: str,
    tensors: dict,
    aliases: dict,
    leaves: dict,
    limits: ChannelLimits,
    device: Any,
) -> GraphSpec:
    raw = obj(raw, where, ("nodes",))
    nodes_raw = raw["nodes"]
    if not isinstance(nodes_raw, list):
        raise UnsafeSpecError(f"{where}: nodes must be a list")
    if len(nodes_raw) > limits.nodes:
        raise SpecTooLargeError(f"{where} has {len(nodes_raw)} nodes, over the cap of {limits.nodes}")
    seen: set[str] = set()
    placeholders: list[str] = []
    nodes: list[NodeSpec] = []
    output_seen = defaults_seen = False
    for index, node in enumerate(nodes_raw):
        nwhere = f"{where} node #{index}"
        node = obj(node, nwhere, ("op", "name"), ("target", "args", "kwargs"))
        op = node["op"]
        if op not in _OPS:
            raise UnsafeSpecError(f"{nwhere}: unknown op {show(op)}")
        name = check_ident(node["name"], f"{nwhere}: node name", limits)
        nwhere = f"{where} node {name!r}"
        if name in seen:
            raise InvalidNameError(f"{nwhere}: the name is used twice")
        if output_seen:
            raise UnsafeSpecError(f"{nwhere}: nodes follow the output node")

        def resolve_ref(ref: str, _nwhere: str = nwhere) -> None:
            if ref not in seen:
                raise UnsafeSpecError(f"{_nwhere}: refers to {show(ref)}, which is not an earlier node")

        ctx = LiteralContext(limits, nwhere, resolve_ref=resolve_ref, device=device)
        args_raw, kwargs_raw = node.get("args", []), node.get("kwargs", {})
        if not isinstance(args_raw, list) or not isinstance(kwargs_raw, dict):
            raise UnsafeSpecError(f"{nwhere}: args must be a list and kwargs an object")
        if len(args_raw) + len(kwargs_raw) > limits.args:
            raise SpecTooLargeError(f"{nwhere}: more than {limits.args} arguments")
        for key in kwargs_raw:
            check_ident(key, f"{nwhere}: keyword argument", limits)
        target_raw = node.get("target")
        if op == "placeholder":
            target = check_ident(target_raw, f"{nwhere}: placeholder target", limits)
            _check_placeholder_name(name, target, nwhere)
            if target in placeholders:
                raise InvalidNameError(f"{nwhere}: argument name {target!r} is used twice")
            if len(args_raw) > 1 or kwargs_raw:
                raise UnsafeSpecError(f"{nwhere}: a placeholder takes at most one default value")
            args = tuple(decode_literal(a, LiteralContext(limits, nwhere, device=device)) for a in args_raw)
            if not args and defaults_seen:
                raise UnsafeSpecError(f"{nwhere}: an argument without a default follows one with a default")
            defaults_seen = defaults_seen or bool(args)
            placeholders.append(target)
            nodes.append(NodeSpec(op, name, target, target, args, {}))
        elif op == "output":
            if len(args_raw) != 1 or kwargs_raw:
                raise UnsafeSpecError(f"{nwhere}: output takes exactly one argument")
            nodes.append(NodeSpec(op, name, "output", "output", (decode_literal(args_raw[0], ctx),), {}))
            output_seen = True
        else:
            args = tuple(decode_literal(a, ctx) for a in args_raw)
            kwargs = {k: decode_literal(v, ctx) for k, v in kwargs_raw.items()}
            target = _resolve_target(op, target_raw, nwhere, mode, tensors, aliases, leaves, limits)
            target_raw = cast(str, target_raw)  # _resolve_target refused anything but a string
            if op == "get_attr" and (args or kwargs):
                raise UnsafeSpecError(f"{nwhere}: get_attr takes no arguments")
            if op == "call_method" and (not args or not isinstance(args[0], NodeRef)):
                raise UnsafeSpecError(f"{nwhere}: a method call needs the object as its first argument")
            if op == "call_function" and target_raw.startswith("operator."):
                # FX prints operators as syntax ("{} * {}"), which needs the exact arity.
                arity = _OPERATOR_ARITY.get(target_raw[9:], 2)
                if len(args) != arity or kwargs:
                    raise UnsafeSpecError(f"{nwhere}: {target_raw} takes exactly {arity} positional arguments")
            if op == "call_function" and target_raw == GETATTR_KEY:
                if len(args) != 2 or kwargs or not isinstance(args[0], NodeRef) or not isinstance(args[1], str) or args[1] not in GETATTR_ATTRS:
                    raise DisallowedTargetError(
                        f"{nwhere}: getattr is allowed only as getattr(node, name) with name in {sorted(GETATTR_ATTRS)}; "
                        f"got attribute {show(args[1] if len(args) > 1 else None)}"
                    )
            if op in ("call_function", "call_method"):
                _check_factory_size(op, target_raw, args, kwargs, nwhere, limits)
            nodes.append(NodeSpec(op, name, target, target_raw, args, kwargs))
        seen.add(name)
    if not output_seen:
        raise UnsafeSpecError(f"{where}: the graph has no output node")
    return GraphSpec(nodes, tuple(placeholders))


def _check_placeholder_name(name: str, target: str, where: str) -> None:
    """A placeholder's node is named after its argument. FX itself renames only
    arguments it cannot use as a variable (``input`` -> ``input_1``: builtins and
    FX's own globals); any other difference is refused, because a target naming
    another placeholder makes FX print ``b = c; a = b`` (aliasing)."""
    import builtins

    from torch.fx.graph import _custom_builtins

    if name == target:
        return
    fx_renames = target in vars(builtins) or target in _custom_builtins
    if fx_renames and re.fullmatch(re.escape(target) + r"_[0-9]{1,6}", name):
        return
    raise InvalidNameError(
        f"{where}: placeholder target {show(target)} differs from its name {show(name)}",
        hint="a placeholder's name must be its argument name (FX renames only builtins, e.g. input -> input_1)",
    )


def _resolve_target(
    op: str,
    target: Any,
    where: str,
    mode: str,
    tensors: dict,
    aliases: dict,
    leaves: dict,
    limits: ChannelLimits,
) -> Any:
    if not isinstance(target, str) or len(target) > limits.path_chars:
        raise UnsafeSpecError(f"{where}: target must be a string of at most {limits.path_chars} characters")
    if op == "get_attr":
        if target not in tensors and target not in aliases:
            raise UnsafeSpecError(f"{where}: get_attr target {show(target)} is not a tensor of this module")
        return target
    if op == "call_module":
        if mode != "fx":
            raise DisallowedTargetError(f"{where}: call_module is not allowed in aten mode")
        if target not in leaves:
            raise UnsafeSpecError(f"{where}: call_module target {show(target)} is not a leaf of this module")
        return target
    if op == "call_method":
        if not allowed_method(target):
            raise DisallowedTargetError(
                f"{where}: Tensor method {show(target)} is not on safehub's allowlist",
                hint="methods that touch storage, hooks, files or Python objects are refused",
            )
        return target
    # call_function
    fn = allowed_function(target)  # exact keys only (see ._allowlist)
    if fn is not None and callable(fn):
        return fn
    if target.startswith("aten."):  # aten mode, or fx mode when a model calls torch.ops.aten.* itself
        return resolve_aten(target, where)
    raise DisallowedTargetError(
        f"{where}: function {show(target)} is not on safehub's allowlist",
        hint="only torch/functional/linalg/fft/special ops, operator.*, math.* and aten ops are rebuilt",
    )


# Factories whose size arguments a spec can write as literals. A validated graph may
# compute anything its ops can; this bounds the obvious memory bomb
# (torch.empty(10**12)) before anything is built. Sizes computed at run time
# (from input shapes) are not bounded here.
_FACTORY_NAMES = frozenset(
    {"empty", "empty_strided", "zeros", "ones", "full", "arange", "linspace", "logspace", "eye", "rand", "randn",
     "randint", "randperm", "normal", "tril_indices", "triu_indices", "new_zeros", "new_ones", "new_full",
     "new_empty", "new_empty_strided", "scalar_tensor", "expand", "repeat", "tile", "broadcast_to"}
)  # fmt: skip


def _factory_name(op: str, target_raw: str) -> str:
    if op == "call_method":
        return target_raw
    parts = target_raw.split(".")
    return parts[1] if parts[0] == "aten" and len(parts) == 3 else parts[-1]


def _ints(value: Any) -> list[int] | None:
    if isinstance(value, (tuple, list)) and value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
        return list(value)
    return None


def _check_factory_size(op: str, target_raw: str, args: tuple, kwargs: dict, where: str, limits: ChannelLimits) -> None:
    if _factory_name(op, target_raw) not in _FACTORY_NAMES:
        return
    values = [*args, *kwargs.values()]
    top_ints = [v for v in values if isinstance(v, int) and not isinstance(v, bool)]
    estimates = [math.prod(abs(v) for v in top_ints)] if top_ints else []
    estimates += [math.prod(abs(v) for v in lst) for v in values if (lst := _ints(v))]
    estimates += [max(abs(v) for v in top_ints)] if top_ints else []  # arange(0, n), randperm(n)
    biggest = max(estimates, default=0)
    if biggest > limits.factory_numel:
        raise SpecTooLargeError(
            f"{where}: {show(target_raw)} with literal sizes would make about {biggest:.3g} elements, "
            f"over the cap of {limits.factory_numel}",
            hint="raise ChannelLimits.factory_numel if this model really allocates that much",
        )
