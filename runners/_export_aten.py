"""aten mode: torch.export inside the sandbox, serialised into our own schema.

The exported program never leaves the sandbox; only its graph (aten targets,
restricted output structure, no treespec) and its tensors do.
"""

from __future__ import annotations

import operator
from typing import Any

import torch
from torch import fx, nn

import _export_graph
import _export_state


class AtenExportError(RuntimeError):
    """torch.export could not carry the model."""


def _batched(example_inputs: tuple) -> tuple[tuple, bool]:
    """Batch 1 specialises under export, so a batch-1 example is repeated to 2."""
    out, changed = [], False
    for a in example_inputs:
        if isinstance(a, torch.Tensor) and a.dim() >= 1 and a.shape[0] == 1:
            out.append(torch.cat([a, a], dim=0))
            changed = True
        else:
            out.append(a)
    return tuple(out), changed


def _dim_spec(a: Any) -> Any:
    from torch.export import Dim

    return {0: Dim.AUTO} if isinstance(a, torch.Tensor) and a.dim() >= 1 else None


def _dynamic_shapes(model: nn.Module, example_inputs: tuple, dynamic: bool) -> Any:
    """A batch dim per tensor argument, shaped like the forward signature:
    ``forward(self, *args)`` binds all inputs to one parameter, so a flat tuple
    has the wrong structure there; a dict keyed by parameter name always fits."""
    if not dynamic:
        return None
    import inspect

    try:
        bound = inspect.signature(model.forward).bind(*example_inputs)
    except (TypeError, ValueError):
        return tuple(_dim_spec(a) for a in example_inputs)
    params = inspect.signature(model.forward).parameters
    out: dict[str, Any] = {}
    for name, value in bound.arguments.items():
        kind = params[name].kind
        if kind is inspect.Parameter.VAR_POSITIONAL:
            out[name] = tuple(_dim_spec(a) for a in value)
        elif kind is inspect.Parameter.VAR_KEYWORD:
            out[name] = {k: _dim_spec(v) for k, v in value.items()}
        else:
            out[name] = _dim_spec(value)
    return out


def _static_size(size: Any) -> int | None:
    """The size a dim was specialised to, or None while it is symbolic. A SymInt
    whose expression is a constant is static too (``len(x)`` specialises the
    batch that way, with no range constraint left to say so)."""
    if not isinstance(size, torch.SymInt):
        return int(size)
    return _finite_int(size.node.expr)


def _batch_is_dynamic(gm: fx.GraphModule) -> bool:
    for node in gm.graph.nodes:
        if node.op != "placeholder":
            continue
        val = node.meta.get("val")
        if isinstance(val, torch.Tensor) and val.dim() >= 1 and _static_size(val.shape[0]) is not None:
            return False
    return True


def _finite_int(v: Any) -> int | None:
    import sympy

    if isinstance(v, int) or isinstance(v, sympy.Integer):
        return int(v)
    return None


def _add_input_guards(gm: fx.GraphModule, ranges: dict) -> None:
    """Fail loudly on inputs the graph was not traced for: ep.module() drops
    export's input guards (they are generated Python), so a static dim of
    another size, or a batch outside the range the model's own shape checks
    allowed, would otherwise run the wrong branch or a truncated loop silently.
    Emitted as aten.sym_size / operator compare / aten._assert_scalar."""
    import sympy

    graph = gm.graph
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    if not placeholders:
        return
    anchor = placeholders[-1]
    checks: list[tuple[fx.Node, int, Any, int, str]] = []
    for ph in placeholders:
        val = ph.meta.get("val")
        if not isinstance(val, torch.Tensor):
            continue
        for d, size in enumerate(val.shape):
            static = _static_size(size)
            if static is None:
                assert isinstance(size, torch.SymInt)
                expr = size.node.expr
                vr = ranges.get(expr) if isinstance(expr, sympy.Symbol) else None
                if vr is None:
                    continue
                lo, hi = _finite_int(vr.lower), _finite_int(vr.upper)
                if lo is not None and lo > 2:  # export assumes >= 2 anyway (0/1 specialisation)
                    checks.append((ph, d, operator.ge, lo, f"{ph.target} dim {d} must be >= {lo}"))
                if hi is not None:
                    checks.append((ph, d, operator.le, hi, f"{ph.target} dim {d} must be <= {hi}"))
            else:
                msg = (
                    f"{ph.target} dim {d} must be {static}, the size in the example inputs "
                    "(aten mode: only the batch dimension is dynamic; export with example inputs of the size you need)"
                )
                checks.append((ph, d, operator.eq, static, msg))
    for ph, d, cmp, bound, msg in reversed(checks):
        with graph.inserting_after(anchor):
            size_node = graph.call_function(torch.ops.aten.sym_size.int, (ph, d))
        with graph.inserting_after(size_node):
            ok = graph.call_function(cmp, (size_node, bound))
        with graph.inserting_after(ok):
            graph.call_function(torch.ops.aten._assert_scalar.default, (ok, msg))
    graph.lint()


# (dynamic batch, strict): dynamic batch first, then static, then the other strictness.
ATTEMPTS = ((True, False), (False, False), (False, True))
MAX_ERROR_CHARS = 400


def _export_once(model: nn.Module, example_inputs: tuple, dynamic: bool, strict: bool = False) -> fx.GraphModule:
    ep = torch.export.export(
        model, example_inputs, dynamic_shapes=_dynamic_shapes(model, example_inputs, dynamic), strict=strict
    )
    gm = ep.module(check_guards=False)
    _add_input_guards(gm, dict(ep.range_constraints))
    return gm


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}".strip()
    return text.splitlines()[0][:MAX_ERROR_CHARS] if text else type(exc).__name__


def _export_gm(model: nn.Module, example_inputs: tuple, attempts: list[dict]) -> tuple[fx.GraphModule, bool]:
    """Export with retries; every attempt (and its error) is appended to ``attempts``."""
    batched, changed = _batched(example_inputs)
    last: BaseException | None = None
    for dynamic, strict in ATTEMPTS:
        record: dict[str, Any] = {"dynamic": dynamic, "strict": strict}
        attempts.append(record)
        try:
            if dynamic:
                gm = _export_once(model, batched, True, strict)
                if changed and not _batch_is_dynamic(gm):
                    # The model pins its batch size: export the user's own batch statically.
                    gm = _export_once(model, example_inputs, False, strict)
                    record["dynamic"] = False
            else:
                gm = _export_once(model, example_inputs, False, strict)
        except Exception as exc:  # noqa: BLE001 - recorded, then the next attempt
            record["error"] = _short(exc)
            last = exc
            continue
        record["error"] = None
        return gm, _batch_is_dynamic(gm) if record["dynamic"] else False
    assert last is not None
    raise last


def _check_inputs(gm: fx.GraphModule, n_args: int) -> None:
    in_spec = getattr(gm, "_in_spec", None)
    if in_spec is None:
        return

    def kids(spec: Any) -> list:
        return list(spec.children()) if hasattr(spec, "children") else list(spec.children_specs)

    top = kids(in_spec) if in_spec.type is tuple else []
    ok = (
        len(top) == 2
        and top[0].type is tuple
        and all(c.is_leaf() for c in kids(top[0]))
        and top[1].num_children == 0
    )
    if not ok:
        raise AtenExportError("aten mode supports flat positional inputs only (no nested lists/dicts as forward arguments)")


def _output_structure(gm: fx.GraphModule):
    from torch.utils import _pytree as pytree

    out_spec = getattr(gm, "_out_spec", None)

    def value(node: fx.Node) -> Any:
        flat = node.args[0]
        if out_spec is None:
            return flat
        leaves = list(flat) if isinstance(flat, (tuple, list)) else [flat]
        return pytree.tree_unflatten(leaves, out_spec)

    return value


def _rename_get_attr(graph_spec: dict, old: str, new: str) -> None:
    for node in graph_spec["nodes"]:
        if node["op"] == "get_attr" and node["target"] == old:
            node["target"] = new


def _model_flags(model: nn.Module) -> tuple[dict[str, bool], dict[str, bool]]:
    rg = {k: p.requires_grad for k, p in model.named_parameters(remove_duplicate=False)}
    nonpers = _export_state._non_persistent(model)
    pers = {k: k not in nonpers for k, _ in model.named_buffers(remove_duplicate=False)}
    return rg, pers


MODES = (("eval", False), ("train", True))


def export_aten(
    model: nn.Module, example_inputs: tuple, modes: tuple = MODES
) -> tuple[dict, _export_state.ModuleState, dict]:
    """Return ``(module spec, state, info)`` or raise AtenExportError. ``modes``
    (a prefix of MODES) leaves out the train graph when only eval is needed."""
    if not isinstance(example_inputs, tuple):
        raise AtenExportError("aten mode needs example inputs as a tuple of forward arguments")
    rg, pers = _model_flags(model)
    graphs: dict[str, dict] = {}
    state: _export_state.ModuleState | None = None
    dynamic_all = True
    node_count = 0
    attempts: list[dict] = []
    for mode_name, training in modes:
        tried = len(attempts)
        try:
            with _export_state.training_mode(model, training):
                gm, dynamic = _export_gm(model, example_inputs, attempts)
        except Exception as exc:  # noqa: BLE001 - reported with the fx error by the caller
            err = AtenExportError(
                f"torch.export failed ({mode_name} mode) after {len(attempts) - tried} attempts "
                f"(dynamic batch, static, strict): {type(exc).__name__}: {exc}"
            )
            err.attempts = attempts  # type: ignore[attr-defined]
            raise err from exc
        for a in attempts[tried:]:
            a["graph"] = mode_name
        dynamic_all = dynamic_all and dynamic
        _check_inputs(gm, len(example_inputs))
        try:
            spec, get_attrs, _ = _export_graph.serialize_graph(
                gm.graph, leaves=set(), allow_call_module=False, output_value=_output_structure(gm)
            )
        except _export_graph.GraphExportError as exc:
            raise AtenExportError(str(exc)) from exc
        gm_state = _export_state.collect_state(gm, requires_grad_of=rg, persistent_of=pers)
        if state is None:
            state = gm_state
            state_keys = set(gm_state.tensors)
        elif set(gm_state.tensors) != state_keys:
            raise AtenExportError("eval and train exports disagree on the model's parameters and buffers")
        for path in sorted(get_attrs):
            if path in gm_state.tensors or path in gm_state.aliases:
                continue
            value = _export_state.resolve_attr(gm, path)
            if path in state.tensors:
                if _export_state.same_tensor(state.tensors[path], value):
                    continue
                # Train export lifted a different constant under the same name.
                new = f"{path}_train"
                _rename_get_attr(spec, path, new)
                path = new
            _export_state.add_constant(state, path, value)
        graphs[mode_name] = spec
        node_count = max(node_count, len(spec["nodes"]))
    assert state is not None
    if "train" in graphs and graphs["train"] == graphs["eval"]:
        del graphs["train"]
    spec = {
        "mode": "aten",
        "training": bool(model.training),
        "tensors": state.infos,
        "aliases": state.aliases,
        "leaves": {},
        "submodules": _export_state.submodule_flags(model, set()),
        "graphs": graphs,
    }
    return spec, state, {"nodes": node_count, "dynamic_batch": dynamic_all, "attempts": attempts}
