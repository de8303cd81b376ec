"""Allowlists built on the host from torch itself.

Spec strings are only ever used as *keys* into these dicts/sets. No name from
the sandbox is resolved by walking ``getattr`` from a module (``torch.os.system``
and ``torch.ops.load_library`` are reachable that way; sink 13 of
shared/design/return-channel.md). The one registry lookup is
``torch.ops.aten.<op>.<overload>`` with both parts validated identifiers, and
its result must be an ``OpOverload`` in namespace ``aten``.

aten ops are allowed only if torch.export emitted them for forward graphs of real
models (aten_forward_ops.json, from scripts/derive_aten_allowlist.py), never a
backward kernel, never a kernel that trusts the sizes or index values it is given;
the two such kernels real models need run behind the checked wrappers of
:mod:`._kernels`.

Regenerate aten_forward_ops.json and function_allowlist.json (the fx function and
Tensor method lists for the torch safehub is tested with, so that a load need not
compute them; scripts/derive_function_allowlist.py) and re-review the deny lists on
every torch upgrade.
"""

from __future__ import annotations

import functools
import math
import operator
import re
from typing import Any, Callable, cast

from .._contract import FACTORIES as _FACTORIES
from .._contract import GETATTR_ATTRS
from .._contract import METHOD_DENY as _METHOD_DENY
from .._errors import DisallowedTargetError
from ._names import show

__all__ = [
    "function_allowlist",
    "method_allowlist",
    "allowed_function",
    "allowed_method",
    "leaf_allowlist",
    "resolve_aten",
    "aten_forward_ops",
    "kernel_refusal",
    "GETATTR_ATTRS",
    "COUNT_KWARGS",
    "GETATTR_KEY",
]

GETATTR_KEY = "builtins.getattr"
# The lists the runner pre-checks live in the host<->runner contract, the one file
# both ends import: GETATTR_ATTRS (getattr(x, name) is allowed for these names
# only), _FACTORIES (tensor factories torch.overrides does not list) and
# _METHOD_DENY (public Tensor methods that touch memory, hooks, storage, other
# processes or the interpreter, or hand out Python objects).
_OPERATOR = (
    "add", "sub", "mul", "truediv", "floordiv", "mod", "pow", "matmul", "neg", "pos", "abs", "invert", "and_",
    "or_", "xor", "lshift", "rshift", "eq", "ne", "lt", "le", "gt", "ge", "not_", "truth", "is_", "is_not",
    "getitem", "setitem", "contains", "index", "iadd", "isub", "imul", "itruediv", "ifloordiv", "imod", "ipow",
    "imatmul", "iand", "ior", "ixor", "ilshift", "irshift",
)  # fmt: skip
_MATH = (
    "sqrt", "exp", "log", "log2", "log10", "log1p", "expm1", "floor", "ceil", "trunc", "sin", "cos", "tan",
    "asin", "acos", "atan", "atan2", "sinh", "cosh", "tanh", "erf", "erfc", "pow", "fabs", "isnan", "isinf",
    "isfinite", "hypot", "copysign", "gcd", "prod", "fsum", "radians", "degrees",
)  # fmt: skip
_FUNCTION_NAMESPACES = ("torch", "torch.functional", "torch.nn.functional", "torch.linalg", "torch.fft", "torch.special")

# Methods FX graphs use that torch.overrides does not list.
_METHOD_EXTRA = ("new_zeros", "new_ones", "new_full", "new_tensor", "dim", "size")

_ATEN_RE = re.compile(r"aten\.([A-Za-z_][A-Za-z0-9_]*)\.([A-Za-z_][A-Za-z0-9_]*)")
_ATEN_DENY = frozenset(
    {"from_file", "set", "set_", "set_data", "resize", "resize_", "resize_as", "resize_as_", "resize_as_sparse",
     "resize_as_sparse_", "sparse_resize", "sparse_resize_", "sparse_resize_and_clear", "sparse_resize_and_clear_",
     "_resize_output", "_resize_output_", "_copy_from_and_resize", "_cufft_set_plan_cache_max_size",
     "_cufft_clear_plan_cache", "_pin_memory", "pin_memory", "record_stream", "_print", "_test_warn_in_autograd",
     "as_strided_", "is_set_to", "_cudnn_init_dropout_state"}
)  # fmt: skip

# Whole families of operators that build tensors whose memory layout the kernels
# then trust without checking (sparse indices, nested offsets, quantized storage,
# "unsafe" indexing). A validated graph must not be able to build one: e.g.
# sparse_coo_tensor(indices, values, size, is_coalesced=True).to_dense() writes at
# an unchecked offset taken from the weights (found by the red-team tests).
_UNCHECKED_FAMILIES = ("ctc_loss", "as_strided", "_reshape_alias", "sparse", "_unsafe_index", "_unsafe_masked", "coo", "csr", "csc", "bsr", "bsc",
                       "nested", "quantize", "mkldnn", "_make_per_", "fbgemm", "_cslt", "int_repr",
                       "q_per_channel", "q_scale", "q_zero_point", "coalesce", "_indices", "_values")
# One search for any of them (a fresh process asks about ~2000 names once).
_UNCHECKED_RE = re.compile("|".join(map(re.escape, _UNCHECKED_FAMILIES)))
# Schema arguments that switch a kernel's own bounds checks off.
_UNCHECKED_ARGS = frozenset({"unsafe", "check_invariants", "is_coalesced"})


def unchecked_family(name: str) -> bool:
    """True for operator/function/method names in the families above: any of them
    occurs in ``name`` as a substring."""
    name = name.replace("_with_indices", "")  # pooling that *returns* indices (max_pool2d_with_indices) takes none
    return _UNCHECKED_RE.search(name) is not None


# Leaf classes whose constructors loop over an int kwarg (bounded by ChannelLimits.count_kwarg).
COUNT_KWARGS: dict[str, tuple[str, ...]] = {
    "RNN": ("num_layers",), "LSTM": ("num_layers",), "GRU": ("num_layers",), "RNNBase": ("num_layers",),
    "Transformer": ("num_encoder_layers", "num_decoder_layers"), "TransformerEncoder": ("num_layers",),
    "TransformerDecoder": ("num_layers",), "AdaptiveLogSoftmaxWithLoss": ("cutoffs",),
}  # fmt: skip
_LEAF_DENY = frozenset(
    {"Module", "Container", "Sequential", "ModuleList", "ModuleDict", "ParameterList", "ParameterDict",
     # take module instances as constructor arguments, which a literal cannot carry
     "TransformerEncoder", "TransformerDecoder",
     # ctc_loss reads out of bounds for a target class past the number of classes
     "CTCLoss"}
)  # fmt: skip


# Built once per process, ~1500 names: typing's Callable[..., Any] evaluated in the loop
# and the regex looked up per name were a tenth of it.
_Function = Callable[..., Any]
_TORCH_QUALNAME = re.compile(r"torch(\.[A-Za-z_][A-Za-z0-9_]*)+")


@functools.lru_cache(maxsize=None)
def _torch_function_sources() -> dict[str, tuple[str, str]]:
    """Every torch key of the function allowlist -> the ``(namespace, attribute)`` its
    callable is read from (computed from torch itself; ~1500 names, ~25 ms in a fresh
    process). A function is listed under every namespace it appears in, and under
    FX's qualified name for it."""
    import importlib

    import torch
    import torch.fx.node
    import torch.overrides

    overridable = torch.overrides.get_overridable_functions()
    allowed_ids: dict[int, Any] = {}
    for key, funcs in overridable.items():
        if isinstance(key, type(torch)):  # module namespaces only; torch.Tensor methods are call_method
            for fn in funcs:
                allowed_ids[id(fn)] = fn
    for name in _FACTORIES:
        fn = getattr(torch, name)
        allowed_ids[id(fn)] = fn
    for name in dir(torch):
        if name.startswith("sym_") or name.startswith("_sym_"):
            fn = getattr(torch, name)
            if callable(fn) and not isinstance(fn, type):
                allowed_ids[id(fn)] = fn

    sources: dict[str, tuple[str, str]] = {}
    objects: dict[str, Any] = {}
    for modname in _FUNCTION_NAMESPACES:
        mod = importlib.import_module(modname)  # fixed host names
        for attr, obj in vars(mod).items():
            if (
                attr.startswith("__")
                # Membership, not .get(): .get() answered None for a missing id, which
                # let every None-valued attribute in (torch.newaxis, F.np).
                or id(obj) not in allowed_ids
                or allowed_ids[id(obj)] is not obj
                or _not_a_function(obj)
                or unchecked_family(attr)
                or kernel_refusal(attr) is not None
                or attr in _FX_FUNCTION_DENY
            ):
                continue
            sources[f"{modname}.{attr}"] = (modname, attr)
            objects[f"{modname}.{attr}"] = obj
    for key, obj in list(objects.items()):
        try:
            qual = torch.fx.node._get_qualified_name(obj)
        except Exception:  # noqa: BLE001 - some builtins have no qualified name
            continue
        if (
            _TORCH_QUALNAME.fullmatch(qual)
            and "__" not in qual
            and not unchecked_family(qual)
            and kernel_refusal(qual.rsplit(".", 1)[-1]) is None
            and qual.rsplit(".", 1)[-1] not in _FX_FUNCTION_DENY
        ):
            sources.setdefault(qual, sources[key])
    return sources


def _torch_function(key: str, modname: str, attr: str) -> Callable[..., Any] | None:
    """The callable allowlist entry ``key`` stands for: ``vars(<namespace>)[attr]`` for a
    fixed namespace (never a getattr walk), with empty* swapped for their zero-filled
    forms (see ._kernels); None if it is not there or not a plain function."""
    import importlib

    name = key.rsplit(".", 1)[-1]
    if modname not in _FUNCTION_NAMESPACES or any(
        n.startswith("__") or unchecked_family(n) or kernel_refusal(n) is not None or n in _FX_FUNCTION_DENY
        for n in (attr, name)
    ):  # (the computed lists never hold these; a shipped file that did is refused here too)
        return None
    obj = vars(importlib.import_module(modname)).get(attr)
    if name in _ZEROED_NAMES:
        import torch

        from ._kernels import ZEROED_FUNCTIONS

        if obj is getattr(torch, name, None):
            obj = ZEROED_FUNCTIONS[name]
    return None if _not_a_function(obj) else cast(_Function, obj)


@functools.lru_cache(maxsize=None)
def _fixed_functions() -> dict[str, Callable[..., Any]]:
    """The allowlist's entries outside torch: operator.*, math.* and getattr."""
    import builtins

    table: dict[str, Callable[..., Any]] = {f"operator.{name}": getattr(operator, name) for name in _OPERATOR}
    table.update({f"math.{name}": getattr(math, name) for name in _MATH})
    table[GETATTR_KEY] = builtins.getattr
    return table


@functools.lru_cache(maxsize=None)
def function_allowlist() -> dict[str, Callable[..., Any]]:
    """Exact ``"module.name"`` keys -> callables, computed from torch (all of it; a graph's
    targets are looked up one by one with :func:`allowed_function`)."""
    table: dict[str, Callable[..., Any]] = {}
    for key, (modname, attr) in _torch_function_sources().items():
        fn = _torch_function(key, modname, attr)
        if fn is None:  # fail closed: a target that is not a plain callable never reaches a graph
            raise RuntimeError(f"safehub's function allowlist holds a non-function: {key}")
        table[key] = fn
    table.update(_fixed_functions())
    return table


# The allowlists for the torch safehub is tested with, shipped beside this module
# (scripts/derive_function_allowlist.py writes it; tests/test_allowlist_shipped.py keeps
# it equal to the computed lists). Computing them costs a fresh process ~25 ms, most of
# it torch.overrides building its own tables, once per process; with the shipped names,
# a load resolves only its graph's targets. Any other torch build computes them.
_SHIPPED_FILE = "function_allowlist.json"
_SHIPPED_MAX_BYTES = 1 << 20
_ZEROED_NAMES = frozenset({"empty", "empty_like", "empty_strided"})  # the keys of ._kernels.ZEROED_FUNCTIONS


def torch_build() -> dict[str, str]:
    """What the shipped lists were derived for: torch's version and git commit."""
    import torch

    return {"version": str(torch.__version__), "git_version": str(getattr(torch.version, "git_version", ""))}


def derive_shipped() -> dict[str, Any]:
    """The shipped file's contents, computed from the installed torch."""
    return {
        "torch": torch_build(),
        "functions": {key: f"{mod}:{attr}" for key, (mod, attr) in sorted(_torch_function_sources().items())},
        "methods": sorted(method_allowlist()),
    }


@functools.lru_cache(maxsize=None)
def _shipped() -> tuple[dict[str, tuple[str, str]], frozenset[str]] | None:
    """The shipped lists, or None when they were derived for another torch build."""
    import json
    from importlib import resources

    raw = resources.files(__package__).joinpath(_SHIPPED_FILE).read_bytes()
    if len(raw) > _SHIPPED_MAX_BYTES:  # shipped with safehub, but fail closed on a corrupt install
        raise DisallowedTargetError(f"{_SHIPPED_FILE} is larger than {_SHIPPED_MAX_BYTES} bytes")
    data = json.loads(raw)
    if data.get("torch") != torch_build():
        return None
    functions = {key: cast(tuple[str, str], tuple(src.split(":", 1))) for key, src in data["functions"].items()}
    return functions, frozenset(data["methods"])


_resolved: dict[str, Callable[..., Any] | None] = {}


def allowed_function(key: str) -> Callable[..., Any] | None:
    """The allowlisted callable for call_function target ``key``, or None: the same
    answer as ``function_allowlist().get(key)``, without building the whole table when
    this torch is the one the shipped names were derived for."""
    shipped = _shipped()
    if shipped is None:
        return function_allowlist().get(key)
    fixed = _fixed_functions().get(key)
    if fixed is not None:
        return fixed
    src = shipped[0].get(key)
    if src is None:  # (misses are not remembered: a spec's names must not grow this process's memory)
        return None
    if key not in _resolved:  # at most one entry per shipped key
        _resolved[key] = _torch_function(key, *src)
    return _resolved[key]


def allowed_method(name: str) -> bool:
    """Whether Tensor method ``name`` is allowlisted: ``name in method_allowlist()``."""
    shipped = _shipped()
    return name in (method_allowlist() if shipped is None else shipped[1])


def _not_a_function(obj: object) -> bool:
    """Refused as call_function targets: None and other non-callables, and classes
    (torch.autocast: a call would construct an object, not compute a tensor)."""
    return obj is None or not callable(obj) or isinstance(obj, type)


@functools.lru_cache(maxsize=None)
def method_allowlist() -> frozenset[str]:
    import torch
    import torch.overrides

    names = set(_METHOD_EXTRA)
    for fn in torch.overrides.get_overridable_functions()[torch.Tensor]:
        name = getattr(fn, "__name__", None)
        if isinstance(name, str) and re.fullmatch(r"[a-z][A-Za-z0-9_]*", name) and callable(getattr(torch.Tensor, name, None)):
            names.add(name)
    return frozenset(
        n
        for n in names - _METHOD_DENY
        if not unchecked_family(n) and kernel_refusal(n) is None and n not in ("indices", "values")
    )


@functools.lru_cache(maxsize=None)
def leaf_allowlist() -> dict[str, type]:
    """Class name -> class, for the standard torch.nn layers (no containers,
    no lazy modules, no private bases)."""
    import torch.nn as nn

    out: dict[str, type] = {}
    for name, obj in vars(nn).items():
        if (
            isinstance(obj, type)
            and issubclass(obj, nn.Module)
            and obj.__module__.startswith("torch.nn.modules.")
            and not name.startswith("_")
            and name not in _LEAF_DENY
            and not issubclass(obj, nn.modules.lazy.LazyModuleMixin)
        ):
            out[name] = obj
    return out


# The aten kernel allowlist is evidence-based: the op overloads torch.export emitted
# for forward graphs (eval and train) of real models, derived and committed by
# scripts/derive_aten_allowlist.py into aten_forward_ops.json (which model needed
# which op). "Core ATen" alone is not a safe criterion: backward kernels and the
# batch-norm statistics kernels below carry the core tag and trust their arguments.
_FORWARD_OPS_FILE = "aten_forward_ops.json"
_FORWARD_OPS_MAX_BYTES = 1 << 20

# Kernels refused even if a derived graph used one, with the reason (measured on
# torch 2.13 CPU; tests/test_kernel_allowlist.py keeps the attacks). Every op whose
# name contains "backward" is refused as well (see kernel_refusal).
_KERNEL_DENY: dict[str, str] = {
    **dict.fromkeys(
        ("native_batch_norm", "_native_batch_norm_legit", "_native_batch_norm_legit_no_training",
         "_native_batch_norm_legit_functional", "batch_norm_update_stats", "batch_norm_elemt", "batch_norm_stats",
         "batch_norm_gather_stats", "batch_norm_gather_stats_with_counts", "batch_norm_backward_elemt",
         "batch_norm_backward_reduce", "miopen_batch_norm", "cudnn_batch_norm"),
        "trusts the sizes of its statistics and weight tensors (reads and writes past undersized ones); "
        "aten.batch_norm checks them",
    ),
    "embedding_renorm_": "renormalises rows picked by index values in place",
    "_embedding_bag_forward_only": "private embedding_bag kernel; aten.embedding_bag checks offsets",
    "_embedding_bag": "private embedding_bag kernel; aten.embedding_bag checks offsets",
    # Red team round 2: an unknown interpolation or padding mode (raw ints here) matches
    # no case of the CPU kernel's switch, so the output is returned uninitialised: host
    # heap memory in the model's outputs. F.grid_sample checks the mode names.
    **dict.fromkeys(
        ("grid_sampler", "grid_sampler_2d", "grid_sampler_3d", "_grid_sampler_2d_cpu_fallback",
         "cudnn_grid_sampler"),
        "takes its interpolation and padding modes as raw ints and returns uninitialised memory for an "
        "unknown one; torch.nn.functional.grid_sample checks the mode names",
    ),
}  # fmt: skip


# torch functions an fx graph may not call directly: their aten forms run behind the
# checked wrappers of ._kernels, and fx models reach them through nn.LSTM leaves,
# whose parameter shapes the host validates.
_FX_FUNCTION_DENY = frozenset({"lstm", "_weight_norm"})


def kernel_refusal(name: str) -> str | None:
    """Why the kernel behind aten op / torch function ``name`` is never rebuilt, or None.
    Applies to the aten allowlist and to the fx function allowlist alike."""
    if "backward" in name:
        return "it is a backward kernel (backward kernels trust the shapes and index values of their inputs)"
    return _KERNEL_DENY.get(name)


@functools.lru_cache(maxsize=None)
def aten_forward_ops() -> frozenset[str]:
    """``aten.<op>.<overload>`` names from aten_forward_ops.json, minus refused kernels."""
    import json
    from importlib import resources

    raw = resources.files(__package__).joinpath(_FORWARD_OPS_FILE).read_bytes()
    if len(raw) > _FORWARD_OPS_MAX_BYTES:  # shipped with safehub, but fail closed on a corrupt install
        raise DisallowedTargetError(f"{_FORWARD_OPS_FILE} is larger than {_FORWARD_OPS_MAX_BYTES} bytes")
    ops = json.loads(raw)["ops"]
    out = set()
    for name in ops:
        m = _ATEN_RE.fullmatch(name)
        if m and kernel_refusal(m.group(1)) is None and m.group(1) not in _ATEN_DENY and not unchecked_family(m.group(1)):
            out.add(name)
    return frozenset(out)


def resolve_aten(target: str, where: str) -> Any:
    """``aten.<op>.<overload>`` -> the OpOverload, via the C++ operator registry."""
    m = _ATEN_RE.fullmatch(target)
    if not m or len(target) > 256:
        raise DisallowedTargetError(f"{where}: {show(target)} is not of the form aten.<op>.<overload>")
    op, overload = m.groups()
    # aten's own dunder ops (aten::__and__) only as exact allowlisted names: no other
    # dunder ever reaches getattr (aten.__class__.__init__ walks Python attributes).
    if (op.startswith("__") or overload.startswith("__")) and target not in aten_forward_ops():
        raise DisallowedTargetError(f"{where}: {show(target)} names a dunder")
    if op in _ATEN_DENY or unchecked_family(op):
        raise DisallowedTargetError(
            f"{where}: aten operator {show(op)} is on safehub's deny list (it touches files, storage or global state)"
        )
    import torch

    try:
        packet = getattr(torch.ops.aten, op)  # _OpNamespace.__getattr__: registry lookup, no import
    except (AttributeError, RuntimeError):
        packet = None
    if not isinstance(packet, torch._ops.OpOverloadPacket) or packet._qualified_op_name != f"aten::{op}":
        raise DisallowedTargetError(f"{where}: {show(target)} is not an aten operator of this torch")
    if overload not in packet.overloads():
        raise DisallowedTargetError(f"{where}: aten operator {show(op)} has no overload {show(overload)}")
    ov = getattr(packet, overload)
    if not isinstance(ov, torch._ops.OpOverload) or ov.namespace != "aten" or ov._schema.name != f"aten::{op}":
        raise DisallowedTargetError(f"{where}: {show(target)} did not resolve to an aten OpOverload")
    why = kernel_refusal(op)
    if why is not None:
        raise DisallowedTargetError(f"{where}: aten operator {show(target)} is refused: {why}")
    if target not in aten_forward_ops():
        raise DisallowedTargetError(
            f"{where}: aten operator {show(target)} is not on safehub's aten allowlist, the ops torch.export "
            "emits for forward graphs of real models (safehub/_channel/aten_forward_ops.json)",
            hint="export with mode='fx' if the model allows it; if a real model needs this op, report it so it "
            "can be vetted and added (scripts/derive_aten_allowlist.py)",
        )
    for arg in ov._schema.arguments:
        if arg.name in _UNCHECKED_ARGS:
            raise DisallowedTargetError(
                f"{where}: aten operator {show(target)} has an argument ({arg.name}) that turns its bounds checks off"
            )
        if "Storage" in str(arg.type) or (str(arg.type) == "str" and arg.name in ("filename", "path", "file")):
            raise DisallowedTargetError(f"{where}: aten operator {show(target)} takes a storage or file argument")
    from ._kernels import CHECKED

    return CHECKED.get(target, ov)  # kernels that trust their arguments' shapes run behind a checked wrapper
