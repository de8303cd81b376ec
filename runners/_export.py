"""Sandbox-side producer of the return channel (docs/architecture-format.md).

Called by safehub_runner.py after the entrypoint returned::

    summary = export_object(obj, out_dir, options=..., example_inputs=..., hubconf=..., entrypoint=...)

Writes ``out_dir/spec.json`` and ``out_dir/weights.safetensors``. Runs inside
the sandbox with stdlib + torch only; never imports safehub.
"""

from __future__ import annotations

import functools
import json
import os
import time
import types
from typing import Any

import torch
from torch import nn

import _export_aten
import _export_deferred
import _export_fx
import _export_state
from _contract import WEIGHTS_FILE
from _safetensors_write import write_weights

FORMAT = "safehub-arch"
VERSION = 1
MAX_VALUE_DEPTH = 8
MODES = ("auto", "fx", "aten")
HUBCONF_EXAMPLES = "example_inputs"  # module-level dict in hubconf.py: {"entry": callable or tuple}


class UnsupportedReturn(TypeError):
    """The entrypoint returned something that is not a module or a container of modules."""


class ExportFailed(RuntimeError):
    """Neither fx nor aten mode could carry a module."""


# ---------------------------------------------------------------------------
# What the entrypoint returned


def _describe(obj: Any) -> str:
    t = type(obj)
    return f"{t.__module__}.{t.__qualname__}"


def _walk_value(obj: Any, modules: dict[int, tuple[str, nn.Module]], depth: int = 0) -> dict:
    if depth > MAX_VALUE_DEPTH:
        raise UnsupportedReturn(f"the returned value nests containers deeper than {MAX_VALUE_DEPTH}")
    if isinstance(obj, torch.jit.ScriptModule) or isinstance(obj, torch._C.ScriptModule):
        raise UnsupportedReturn(
            f"the entrypoint returned a TorchScript module ({_describe(obj)}); TorchScript is compiled code and cannot "
            "cross the sandbox. Use the repo's entrypoint that returns the nn.Module before torch.jit.script, or, "
            "only for a repo you trust, torch.hub.load / torch.jit.load outside safehub"
        )
    if isinstance(obj, (nn.ModuleList, nn.ModuleDict)) and type(obj).forward is nn.Module.forward:
        obj = list(obj) if isinstance(obj, nn.ModuleList) else dict(obj.items())
    if isinstance(obj, nn.Module):
        hit = modules.get(id(obj))
        if hit is None:
            hit = (f"m{len(modules)}", obj)
            modules[id(obj)] = hit
        return {"module": hit[0]}
    if isinstance(obj, tuple):
        return {"tuple": [_walk_value(v, modules, depth + 1) for v in obj]}
    if isinstance(obj, list):
        return {"list": [_walk_value(v, modules, depth + 1) for v in obj]}
    if isinstance(obj, dict):
        out = {}
        for k, v in obj.items():
            if not isinstance(k, str) or len(k) > 256 or any(ord(c) < 32 or ord(c) == 127 for c in k):
                raise UnsupportedReturn(f"the returned dict has key {k!r}; only short printable string keys are supported")
            out[k] = _walk_value(v, modules, depth + 1)
        return {"dict": out}
    if isinstance(obj, (types.FunctionType, types.BuiltinFunctionType, types.MethodType, functools.partial)):
        raise UnsupportedReturn(
            f"the entrypoint returned a plain function ({_describe(obj)}); a function is code and cannot cross the "
            "sandbox. Call the entrypoint that builds the model instead, or return the nn.Module the function wraps"
        )
    if isinstance(obj, type) or not hasattr(obj, "__dict__"):
        raise UnsupportedReturn(
            f"the entrypoint returned an object of type {_describe(obj)}; safehub can only return torch.nn.Module "
            "objects, tuples/lists/str-keyed dicts of them, and objects whose attributes hold modules"
        )
    return _walk_object(obj, modules, depth)


MAX_OBJECT_ATTRS = 256
MAX_DATA_STR = 1000
_PLAIN = (bool, int, float, str, type(None))


def _plain_data(value: Any, depth: int = 0) -> Any:
    """int, float, str, bool, None and tuples of them, as JSON; else _SKIP."""
    if type(value) in _PLAIN:
        if isinstance(value, str) and len(value) > MAX_DATA_STR:
            return _SKIP
        if isinstance(value, float) and (value != value or value in (float("inf"), float("-inf"))):
            return _SKIP  # JSON carries finite numbers only
        return value
    if type(value) is tuple and depth < 4 and len(value) <= 64:
        items = [_plain_data(v, depth + 1) for v in value]
        return _SKIP if any(i is _SKIP for i in items) else {"tuple": items}
    return _SKIP


_SKIP = object()


def _holds_module(walked: dict) -> bool:
    (tag, val), = walked.items()
    if tag == "module":
        return True
    if tag in ("tuple", "list"):
        return any(_holds_module(v) for v in val)
    if tag == "dict":
        return any(_holds_module(v) for v in val.values())
    return False


def _walk_object(obj: Any, modules: dict[int, tuple[str, nn.Module]], depth: int) -> dict:
    """An object whose attributes hold modules (a GAN class exposing ``.netG``):
    its public module attributes and plain data attributes; nothing else travels."""
    attrs: dict[str, Any] = {}
    has_module = False
    for name, value in list(vars(obj).items())[:MAX_OBJECT_ATTRS]:
        if not isinstance(name, str) or not name.isidentifier() or name.startswith("_"):
            continue
        if isinstance(value, (nn.Module, list, dict)) or (isinstance(value, tuple) and _plain_data(value) is _SKIP):
            try:
                walked = _walk_value(value, modules, depth + 1)
            except UnsupportedReturn:
                continue  # an attribute that cannot travel is left behind, like any other code
            attrs[name] = walked
            has_module = has_module or _holds_module(walked)
            continue
        data = _plain_data(value)
        if data is not _SKIP:
            attrs[name] = {"value": data}
    if not has_module:
        raise UnsupportedReturn(
            f"the entrypoint returned an object of type {_describe(obj)} with no nn.Module attributes; safehub can only "
            "return torch.nn.Module objects, containers of them, and objects whose attributes hold modules"
        )
    return {"object": {"type": type(obj).__qualname__[:200], "attrs": attrs}}


# ---------------------------------------------------------------------------
# Example inputs


def _as_args(value: Any, where: str) -> tuple:
    if callable(value):
        try:
            value = value()
        except Exception as exc:  # noqa: BLE001 - the repo's code, reported as such
            raise ExportFailed(f"example inputs from {where} could not be made: {type(exc).__name__}: {exc}") from exc
    if isinstance(value, torch.Tensor):
        return (value,)
    if isinstance(value, list):
        value = tuple(value)
    if not isinstance(value, tuple):
        raise ExportFailed(f"example inputs from {where} must be a tensor or a tuple of forward arguments, not {_describe(value)}")
    return value


def resolve_example_inputs(example_inputs: Any, hubconf: Any, entrypoint: str) -> tuple | None:
    """The caller's example_inputs win; otherwise hubconf's ``example_inputs[entrypoint]``."""
    if example_inputs is not None:
        return _as_args(example_inputs, "example_inputs=")
    table = getattr(hubconf, HUBCONF_EXAMPLES, None) if hubconf is not None else None
    if isinstance(table, dict) and entrypoint in table:
        return _as_args(table[entrypoint], f"hubconf.{HUBCONF_EXAMPLES}[{entrypoint!r}]")
    return None


def _examples_for(examples: tuple | None, n_modules: int) -> tuple | None:
    """Example inputs describe one forward: they apply when exactly one module
    was returned (containers of modules are exported in fx mode)."""
    return examples if n_modules == 1 else None


# ---------------------------------------------------------------------------
# One module


def _on_model_device(examples: tuple | None, model: nn.Module) -> tuple | None:
    """Host-made example tensors are CPU tensors; a model the entrypoint moved
    to a GPU gets them on its own device."""
    if examples is None:
        return None
    first: torch.Tensor | None = next(iter(model.parameters()), None)
    if first is None:
        first = next(iter(model.buffers()), None)
    if first is None or first.device.type in ("cpu", "meta"):
        return examples
    return tuple(a.to(first.device) if isinstance(a, torch.Tensor) else a for a in examples)


def _export_module(
    model: nn.Module, mode: str, examples: tuple | None, examples_ignored: bool = False, deferred: bool = False
) -> tuple[dict, _export_state.ModuleState, dict]:
    examples = _on_model_device(examples, model)
    fx_error = aten_error = None
    if mode in ("auto", "fx"):
        try:
            spec, state, info = _export_fx.export_fx(model, examples)
            return spec, state, info
        except _export_fx.BadExampleInputs as exc:
            raise ExportFailed(f"cannot export {_describe(model)}: {exc}. Check example_inputs") from exc
        except (_export_fx.FxExportError, _export_state.StateExportError) as exc:
            fx_error = exc
            if mode == "fx":
                raise ExportFailed(
                    f"fx mode failed for {_describe(model)}: {exc}. Try export='aten' with example_inputs=(...)"
                ) from exc
    if type(model).forward is nn.Module.forward:
        raise ExportFailed(f"cannot export {_describe(model)}: it has no forward(); return the submodule you want instead")
    if examples is None and deferred:
        # No inputs to export with: send the tensors now, the graph at the first forward.
        spec, state, info = _export_deferred.deferred_module_spec(model)
        if fx_error is not None:
            info["fx_error"] = str(fx_error)[:500]
        return spec, state, info
    if examples is None and examples_ignored:
        raise ExportFailed(
            f"cannot export {_describe(model)}: fx tracing failed ({fx_error}); aten mode needs example inputs, "
            "and example inputs are only used when the entrypoint returns a single module"
        )
    if examples is None:
        raise ExportFailed(
            f"cannot export {_describe(model)}: fx tracing failed ({fx_error}); aten mode (torch.export) needs example "
            "inputs: pass safehub.load(..., example_inputs=(tensor, ...)) or declare them in hubconf.py as "
            f"{HUBCONF_EXAMPLES} = {{'<entrypoint>': lambda: (torch.randn(2, ...),)}}"
        )
    try:
        spec, state, info = _export_aten.export_aten(model, examples)
        if fx_error is not None:
            info["fx_error"] = str(fx_error)[:500]
        return spec, state, info
    except (_export_aten.AtenExportError, _export_state.StateExportError) as exc:
        aten_error = exc
    prefix = f"fx tracing failed ({fx_error}); " if fx_error is not None else ""
    attempts = getattr(aten_error, "attempts", [])
    export_ran = any(a.get("error") is None for a in attempts) or isinstance(aten_error, _export_state.StateExportError)
    if export_ran or not attempts:
        # torch.export ran on these inputs; what failed is carrying its graph.
        advice = "the example inputs were accepted; the exported graph cannot be carried (see above)"
    else:
        advice = (
            "torch.export rejected every attempt (dynamic batch, static batch, strict); check that the example "
            "inputs are what forward() takes (a tuple of forward arguments)"
        )
    other = "; or try export='fx'" if mode == "aten" else ""
    raise ExportFailed(f"cannot export {_describe(model)}: {prefix}aten export failed ({aten_error}). {advice}{other}")


# ---------------------------------------------------------------------------
# Writing


def _write_weights(out_dir: str, modules: dict[str, _export_state.ModuleState]) -> int:
    """Into the host's weights memfd when it passed one, else out_dir/weights.safetensors."""
    flat = {f"{mid}.{tpath}": t for mid, state in modules.items() for tpath, t in state.tensors.items()}
    return write_weights(out_dir, WEIGHTS_FILE, flat)


def _write_json(path: str, payload: dict) -> None:
    tmp = path + ".partial"
    with open(tmp, "w", encoding="utf-8") as f:
        json.dump(payload, f, allow_nan=False, separators=(",", ":"))
    os.replace(tmp, path)


def export_object(
    obj: Any,
    out_dir: str,
    *,
    options: dict | None = None,
    example_inputs: Any = None,
    hubconf: Any = None,
    entrypoint: str = "",
) -> dict:
    """Export what an entrypoint returned; return a small JSON-able summary."""
    options = dict(options or {})
    mode = options.get("mode", "auto")
    if mode not in MODES:
        raise ExportFailed(f"unknown export mode {mode!r}; use one of {', '.join(MODES)}")
    found: dict[int, tuple[str, nn.Module]] = {}
    root = _walk_value(obj, found)
    examples = resolve_example_inputs(example_inputs, hubconf, entrypoint)

    specs: dict[str, dict] = {}
    states: dict[str, _export_state.ModuleState] = {}
    summary_modules: dict[str, dict] = {}
    for mid, model in found.values():
        t0 = time.perf_counter()
        spec, state, info = _export_module(
            model, mode, _examples_for(examples, len(found)), examples is not None and len(found) > 1,
            deferred=bool(options.get("deferred")),
        )
        specs[mid] = spec
        states[mid] = state
        summary_modules[mid] = {
            "mode": spec["mode"],
            "graphs": sorted(spec["graphs"]),
            "tensors": len(state.tensors),
            "seconds": round(time.perf_counter() - t0, 3),
            **info,
        }

    os.makedirs(out_dir, exist_ok=True)
    nbytes = _write_weights(out_dir, states)
    _write_json(
        os.path.join(out_dir, "spec.json"),
        {"format": FORMAT, "version": VERSION, "torch_version": torch.__version__, "root": root, "modules": specs},
    )
    return {"root": next(iter(root)), "modules": summary_modules, "weight_bytes": nbytes}


def export_call(obj: Any, out_dir: str, request: dict, in_dir: str) -> dict:
    """The "export" action: one module of what the entrypoint returned, exported
    for the call structure in ``request`` (see _export_deferred)."""
    found: dict[int, tuple[str, nn.Module]] = {}
    _walk_value(obj, found)
    t0 = time.perf_counter()
    try:
        spec, state, info = _export_deferred.export_for_call(found, request, in_dir)
    except (_export_aten.AtenExportError, _export_state.StateExportError, _export_deferred.DeferredExportError) as exc:
        raise ExportFailed(f"deferred export at the first forward failed: {exc}") from exc
    os.makedirs(out_dir, exist_ok=True)
    nbytes = _write_weights(out_dir, {"m0": state})
    _write_json(
        os.path.join(out_dir, "spec.json"),
        {"format": FORMAT, "version": VERSION, "torch_version": torch.__version__, "root": {"module": "m0"},
         "modules": {"m0": spec}},
    )
    summary = {"mode": spec["mode"], "graphs": sorted(spec["graphs"]), "tensors": len(state.tensors),
               "seconds": round(time.perf_counter() - t0, 3), **info}
    return {"root": "module", "modules": {"m0": summary}, "weight_bytes": nbytes}
