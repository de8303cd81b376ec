"""Constructor recipes for standard torch.nn leaves (fx mode).

A module becomes a *leaf* (one ``call_module`` node the host constructs itself)
only when its class is exactly a standard class from ``torch.nn.modules`` and a
recipe recovered from its attributes rebuilds an equivalent module on ``meta``.
Everything else is traced through, so odd subclasses degrade gracefully.

Recipes must be computed before tracing: inside ``Tracer.trace`` FX patches
``Module.__getattr__`` and attribute reads would be recorded as graph nodes.
"""

from __future__ import annotations

import inspect
from typing import Any

import torch
from torch import nn

import _literals

# Containers and abstract bases never become leaves.
_NOT_LEAVES = {
    "Module",
    "Sequential",
    "ModuleList",
    "ModuleDict",
    "ParameterList",
    "ParameterDict",
    "Container",
}
_SKIP_PARAMS = {"self", "device", "dtype"}
_SIMPLE = (bool, int, float, str, type(None))


def leaf_classes() -> dict[str, type]:
    """The leaf allowlist: nn classes defined in torch.nn.modules, by class name."""
    out: dict[str, type] = {}
    for name, cls in vars(nn).items():
        if not isinstance(cls, type) or not issubclass(cls, nn.Module) or name in _NOT_LEAVES:
            continue
        if not cls.__module__.startswith("torch.nn.modules."):
            continue
        if name.startswith("_") or name.startswith("Lazy") or cls.__name__ != name:
            continue
        out[name] = cls
    return out


_LEAF_CLASSES: dict[str, type] | None = None


def _classes() -> dict[str, type]:
    global _LEAF_CLASSES
    if _LEAF_CLASSES is None:
        _LEAF_CLASSES = leaf_classes()
    return _LEAF_CLASSES


def _special(module: nn.Module, name: str) -> tuple[bool, Any]:
    """Constructor arguments not stored under their own name."""
    if isinstance(module, nn.MultiheadAttention):
        if name == "bias":
            return True, module.in_proj_bias is not None
        if name == "add_bias_kv":
            return True, module.bias_k is not None
    if name == "bias" and isinstance(module, (nn.LayerNorm, nn.RMSNorm)) and not hasattr(module, "bias"):
        return True, False
    return False, None


def _activation_name(fn: Any) -> str:
    import torch.nn.functional as F

    if fn is F.relu:
        return "relu"
    if fn is F.gelu:
        return "gelu"
    raise _literals.LiteralError("activation is not relu/gelu")


def _transformer_layer_kwargs(module: nn.TransformerEncoderLayer | nn.TransformerDecoderLayer) -> dict[str, Any]:
    """nn.TransformerEncoderLayer / DecoderLayer store their arguments in submodules."""
    attn = module.self_attn
    kwargs: dict[str, Any] = {
        "d_model": attn.embed_dim,
        "nhead": attn.num_heads,
        "dim_feedforward": module.linear1.out_features,
        "dropout": module.dropout.p,
        "activation": _activation_name(module.activation),
        "layer_norm_eps": module.norm1.eps,
        "batch_first": attn.batch_first,
        "norm_first": module.norm_first,
        "bias": module.linear1.bias is not None,
    }
    dtype = module.linear1.weight.dtype
    if dtype != torch.get_default_dtype():
        kwargs["dtype"] = dtype
    return kwargs


def _recover_kwargs(module: nn.Module) -> dict[str, Any]:
    cls = type(module)
    if cls in (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer):
        assert isinstance(module, (nn.TransformerEncoderLayer, nn.TransformerDecoderLayer))  # cls is exactly one
        return _transformer_layer_kwargs(module)
    sig = inspect.signature(cls.__init__)
    params = dict(sig.parameters)
    if isinstance(module, nn.RNNBase) and cls is not nn.RNNBase:
        # RNN/LSTM/GRU take *args, **kwargs and forward them to RNNBase (minus mode).
        params = dict(inspect.signature(nn.RNNBase.__init__).parameters)
        params.pop("mode")
        if isinstance(module, nn.RNN):
            params["nonlinearity"] = inspect.Parameter("nonlinearity", inspect.Parameter.KEYWORD_ONLY, default="tanh")
    kwargs: dict[str, Any] = {}
    for pname, param in params.items():
        if pname in _SKIP_PARAMS or pname.startswith("_"):
            continue
        if param.kind in (inspect.Parameter.VAR_POSITIONAL, inspect.Parameter.VAR_KEYWORD):
            continue
        handled, value = _special(module, pname)
        if not handled:
            if pname in module.__dict__:
                value = module.__dict__[pname]
            elif pname in module._parameters or pname in module._buffers or pname in module._modules:
                value = getattr(module, pname)
            elif param.default is not inspect.Parameter.empty:
                continue  # not stored: the default is used, and the self-check decides
            else:
                raise _literals.LiteralError(f"{cls.__name__}: argument {pname!r} is not stored on the module")
        if isinstance(value, torch.Tensor) or value is None and pname in ("bias", "affine"):
            if pname in ("bias", "affine"):
                value = value is not None
            else:
                raise _literals.LiteralError(f"{cls.__name__}: argument {pname!r} is a tensor")
        if isinstance(value, torch.Size):
            value = tuple(value)
        if param.default is not inspect.Parameter.empty and type(value) is type(param.default) and value == param.default:
            continue  # the default (RNN/GRU refuse even proj_size=0)
        kwargs[pname] = value
    # Float leaves in another dtype (half models) are built in that dtype.
    if "dtype" in params:
        dtypes = {t.dtype for t in module.parameters(recurse=True)} | {
            t.dtype for t in module.buffers(recurse=True) if t.is_floating_point()
        }
        if len(dtypes) == 1:
            (dt,) = dtypes
            if dt.is_floating_point and dt != torch.get_default_dtype():
                kwargs["dtype"] = dt
    return kwargs


def _plain_state(module: nn.Module) -> dict[str, Any]:
    """Simple attributes that describe behaviour, for the self-check."""
    out = {}
    for k, v in module.__dict__.items():
        if k == "training":
            continue
        if isinstance(v, _SIMPLE) or isinstance(v, tuple) and all(isinstance(x, _SIMPLE) for x in v):
            out[k] = v
    return out


def _state_sig(module: nn.Module) -> dict[str, tuple]:
    sig = {}
    for k, t in module.named_parameters(remove_duplicate=False):
        sig[k] = ("p", tuple(t.shape), t.dtype)
    for k, b in module.named_buffers(remove_duplicate=False):
        sig[k] = ("b", tuple(b.shape), b.dtype)
    return sig


def _has_hooks(module: nn.Module) -> bool:
    for attr in (
        "_forward_hooks",
        "_forward_pre_hooks",
        "_backward_hooks",
        "_backward_pre_hooks",
        "_state_dict_hooks",
        "_load_state_dict_pre_hooks",
    ):
        if getattr(module, attr, None):
            return True
    return False


def recipe_for(module: nn.Module) -> tuple[dict | None, str]:
    """``({"cls", "kwargs"}, "")`` when ``module`` can be a leaf, else ``(None, why)``."""
    cls = type(module)
    if _classes().get(cls.__name__) is not cls:
        return None, "not a standard torch.nn class"
    if _has_hooks(module):
        return None, "has hooks"
    if "forward" in module.__dict__:
        return None, "forward is overridden on the instance"
    try:
        kwargs = _recover_kwargs(module)
        encoded = {k: _literals.encode(v) for k, v in kwargs.items()}
        with torch.device("meta"):
            rebuilt = cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - any failure means "trace through"
        return None, f"recipe failed: {type(exc).__name__}: {exc}"
    if repr(rebuilt) != repr(module):
        return None, "rebuilt repr differs"
    if _state_sig(rebuilt) != _state_sig(module):
        return None, "rebuilt state differs"
    if _plain_state(rebuilt) != _plain_state(module):
        return None, "rebuilt attributes differ"
    if set(module.__dict__) != set(rebuilt.__dict__):
        return None, "module carries extra attributes"
    for k, v in module.__dict__.items():
        if callable(v) and not isinstance(v, nn.Module) and rebuilt.__dict__[k] is not v:
            return None, f"attribute {k!r} differs"
    submods = dict(module.named_modules())
    for name, sub in rebuilt.named_modules():
        orig = submods.get(name)
        if orig is None or type(orig) is not type(sub) or _has_hooks(orig):
            return None, f"submodule {name!r} differs"
        if name and (_plain_state(orig) != _plain_state(sub) or set(orig.__dict__) != set(sub.__dict__)):
            return None, f"submodule {name!r} attributes differ"
    return {"cls": cls.__name__, "kwargs": encoded}, ""


def compute_recipes(root: nn.Module) -> dict[int, dict]:
    """id(module) -> recipe for every module of ``root`` that can be a leaf.
    A module nested inside a leaf is never a leaf itself (leaves never nest)."""
    recipes: dict[int, dict] = {}
    skip: set[int] = set()
    for _, module in root.named_modules(remove_duplicate=True):
        if id(module) in skip:
            continue
        if module is root:
            continue
        recipe, _why = recipe_for(module)
        if recipe is not None:
            recipes[id(module)] = recipe
            skip.update(id(m) for m in module.modules())
    return recipes
