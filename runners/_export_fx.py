"""fx mode: symbolic tracing with standard torch.nn classes as leaves."""

from __future__ import annotations

import contextlib
import operator
from typing import Any, Iterator

import torch
from torch import fx, nn

import _export_graph
import _export_state
import _recipes


class FxExportError(RuntimeError):
    """Symbolic tracing could not carry the model."""


class BadExampleInputs(ValueError):
    """The model cannot run on the example inputs it was given."""


# Tensor properties with one answer for every input the host can feed (dense,
# strided, not nested): answered concretely so library code that checks them
# (e.g. nn.TransformerEncoder's is_nested) stays traceable.
_STATIC_ATTRS = {"is_nested": False, "is_sparse": False, "is_quantized": False, "is_mkldnn": False}


class _StaticProxy(fx.Proxy):
    def __getattr__(self, k: str):
        if k in _STATIC_ATTRS:
            return _STATIC_ATTRS[k]
        return super().__getattr__(k)


class _LeafTracer(fx.Tracer):
    def __init__(self, leaf_ids: set[int]) -> None:
        super().__init__()
        self.leaf_ids = leaf_ids

    def is_leaf_module(self, m: nn.Module, module_qualified_name: str) -> bool:
        return id(m) in self.leaf_ids

    def proxy(self, node: fx.Node) -> fx.Proxy:
        return _StaticProxy(node, self)

    def create_node(self, *args: Any, **kwargs: Any) -> fx.Node:
        node = super().create_node(*args, **kwargs)
        if not torch.is_grad_enabled():  # inside `with torch.no_grad():` in forward
            node.meta["safehub_no_grad"] = True
        return node


@contextlib.contextmanager
def _no_mha_fastpath() -> Iterator[None]:
    """nn.Transformer*/MultiheadAttention branch on tensor properties to pick an
    inference fast path; with it disabled they take the plain (equivalent) path,
    which fx can trace."""
    mha = getattr(torch.backends, "mha", None)
    if mha is None or not hasattr(mha, "set_fastpath_enabled"):
        yield
        return
    old = mha.get_fastpath_enabled()
    mha.set_fastpath_enabled(False)
    try:
        yield
    finally:
        mha.set_fastpath_enabled(old)


@contextlib.contextmanager
def _traceable_transformer() -> Iterator[None]:
    """nn.TransformerEncoder computes len(src.size()) only to detect a causal
    mask; on a traced input it answers None, which makes torch read the size
    from the mask instead (the same value whenever a mask is given)."""
    from torch.nn.modules import transformer

    orig = getattr(transformer, "_get_seq_len", None)
    if orig is None:
        yield
        return

    def _get_seq_len(src, batch_first):
        if isinstance(src, fx.Proxy):
            return None
        return orig(src, batch_first)

    transformer._get_seq_len = _get_seq_len
    try:
        yield
    finally:
        transformer._get_seq_len = orig


@contextlib.contextmanager
def _no_fx_wraps() -> Iterator[None]:
    """Drop torch.fx.wrap() registrations made by model code, so wrapped helpers
    are traced through instead of appearing as opaque third-party targets."""
    import torch.fx._symbolic_trace as st

    fns = dict(st._wrapped_fns_to_patch)
    methods = list(st._wrapped_methods_to_patch)
    st._wrapped_fns_to_patch.clear()
    st._wrapped_methods_to_patch.clear()
    try:
        yield
    finally:
        st._wrapped_fns_to_patch.clear()
        st._wrapped_fns_to_patch.update(fns)
        st._wrapped_methods_to_patch[:] = methods


def _trace(model: nn.Module, leaf_ids: set[int], training: bool) -> tuple[fx.Graph, dict[str, Any]]:
    """Trace in one mode; return the graph and the tensor constants FX attached."""
    before = set(model.__dict__)
    tracer = _LeafTracer(leaf_ids)
    try:
        with _export_state.training_mode(model, training), _no_fx_wraps(), _no_mha_fastpath(), _traceable_transformer():
            with torch.enable_grad():
                graph = tracer.trace(model)
        _detach_no_grad_regions(graph)
    finally:
        added = {k: model.__dict__[k] for k in set(model.__dict__) - before}
        for k in added:
            delattr(model, k)
    return graph, added


def _rewrite_private(graph: fx.Graph) -> None:
    """Replace private torch functions the host does not list with their public
    decomposition (weight_norm parametrizations call torch._weight_norm)."""
    for node in list(graph.nodes):
        if node.op == "call_function" and node.target is torch._weight_norm and not node.kwargs and len(node.args) == 3:
            v, g, dim = node.args
            with graph.inserting_before(node):
                norm = graph.call_function(torch.norm_except_dim, (v, 2, dim))
                scale = graph.call_function(operator.truediv, (g, norm))
                out = graph.call_function(operator.mul, (v, scale))
            node.replace_all_uses_with(out)
            graph.erase_node(node)


_SIZE_METHODS = {"size", "dim", "numel", "nelement", "ndimension", "stride", "element_size", "get_device"}


def _maybe_tensor(node: Any) -> bool:
    if not isinstance(node, fx.Node):
        return False
    if node.op == "call_function" and node.target is getattr:
        return False
    if node.op == "call_method" and node.target in _SIZE_METHODS:
        return False
    if node.op == "call_function" and node.target is operator.getitem:
        return _maybe_tensor(node.args[0])
    if node.op == "call_function" and getattr(node.target, "__module__", None) in ("_operator", "operator"):
        return any(_maybe_tensor(a) for a in node.args)
    return True


def _detach_no_grad_regions(graph: fx.Graph) -> int:
    """FX records no grad-mode changes, so values computed under
    ``torch.no_grad()`` in forward are detached where they leave the region
    (same gradients as the original). Returns the number of detaches added."""
    added = 0
    for node in list(graph.nodes):
        if not node.meta.get("safehub_no_grad") or node.op not in ("call_function", "call_method", "call_module"):
            continue
        outside = [u for u in node.users if not u.meta.get("safehub_no_grad")]
        if not outside or not _maybe_tensor(node):
            continue
        with graph.inserting_after(node):
            detached = graph.call_method("detach", (node,))
        for user in outside:
            user.replace_input_with(node, detached)
        added += 1
    return added


def _compare(a: Any, b: Any) -> bool:
    if isinstance(a, torch.Tensor) and isinstance(b, torch.Tensor):
        return a.shape == b.shape and a.dtype == b.dtype and torch.allclose(a, b, rtol=1e-4, atol=1e-5, equal_nan=True)
    if isinstance(a, (tuple, list)) and isinstance(b, (tuple, list)):
        return len(a) == len(b) and all(_compare(x, y) for x, y in zip(a, b))
    if isinstance(a, dict) and isinstance(b, dict):
        return a.keys() == b.keys() and all(_compare(a[k], b[k]) for k in a)
    return type(a) is type(b) and a == b


def _self_check(model: nn.Module, graph: fx.Graph, constants: dict[str, Any], example_inputs: tuple) -> None:
    """Run the traced graph and the model on the example inputs (eval mode)."""
    for k, v in constants.items():
        setattr(model, k, v)
    try:
        gm = fx.GraphModule(model, graph)
    finally:
        for k in constants:
            delattr(model, k)
    with _export_state.training_mode(model, False), torch.no_grad():
        gm.eval()
        try:
            expected = model(*example_inputs)
        except Exception as exc:  # noqa: BLE001 - the user's inputs, reported as such
            raise BadExampleInputs(f"the model itself fails on the example inputs: {type(exc).__name__}: {exc}") from exc
        try:
            got = gm(*example_inputs)
        except Exception as exc:  # noqa: BLE001
            raise FxExportError(f"the traced graph fails on the example inputs: {type(exc).__name__}: {exc}") from exc
    if not _compare(expected, got):
        raise FxExportError("the traced graph's output differs from the model's on the example inputs (the forward depends on values fx cannot see)")


def export_fx(model: nn.Module, example_inputs: tuple | None) -> tuple[dict, _export_state.ModuleState, dict]:
    """Return ``(module spec, state, info)`` or raise FxExportError."""
    if type(model).forward is nn.Module.forward:
        raise FxExportError(f"{type(model).__qualname__} has no forward(); return the submodule you want instead")
    if model._forward_hooks or model._forward_pre_hooks:
        # Tracer.trace calls root.forward directly: root hooks would be lost silently.
        raise FxExportError("the model has forward hooks on its root module, which fx tracing would drop")
    recipes = _recipes.compute_recipes(model)  # before tracing: see _recipes docstring
    # compute_recipes never nests leaves; named_modules gives each its first path.
    leaf_paths = {path: recipes[id(mod)] for path, mod in model.named_modules() if id(mod) in recipes}
    leaf_ids = set(recipes)

    graphs: dict[str, dict] = {}
    state = _export_state.collect_state(model)
    node_count = 0
    for mode_name, training in (("eval", False), ("train", True)):
        try:
            graph, constants = _trace(model, leaf_ids, training)
        except Exception as exc:  # noqa: BLE001 - reported to the caller, who may try aten mode
            raise FxExportError(f"symbolic tracing failed ({mode_name} mode): {type(exc).__name__}: {exc}") from exc
        _rewrite_private(graph)
        if mode_name == "eval" and example_inputs is not None:
            _self_check(model, graph, constants, example_inputs)
        try:
            spec, get_attrs, _ = _export_graph.serialize_graph(graph, leaves=set(leaf_paths), allow_call_module=True)
        except _export_graph.GraphExportError as exc:
            raise FxExportError(str(exc)) from exc
        for path in sorted(get_attrs):
            value = constants[path] if path in constants else None
            if path in state.tensors or path in state.aliases:
                if value is not None and not _export_state.same_tensor(state.tensors.get(path), value):
                    raise FxExportError(f"eval and train traces made different constants named {path}")
                continue
            if value is None:
                value = _export_state.resolve_attr(model, path)
            _export_state.add_constant(state, path, value)
        graphs[mode_name] = spec
        node_count = max(node_count, len(spec["nodes"]))
    if graphs["train"] == graphs["eval"]:
        del graphs["train"]

    leaves = {}
    for path, recipe in leaf_paths.items():
        mod = model.get_submodule(path)
        leaves[path] = {"cls": recipe["cls"], "kwargs": recipe["kwargs"], "training": bool(mod.training)}
    spec = {
        "mode": "fx",
        "training": bool(model.training),
        "tensors": state.infos,
        "aliases": state.aliases,
        "leaves": leaves,
        "submodules": _export_state.submodule_flags(model, set(leaf_paths)),
        "graphs": graphs,
    }
    return spec, state, {"nodes": node_count, "leaves": len(leaves)}
