"""Serialise an ``fx.Graph`` into safehub-arch nodes (shared by fx and aten mode)."""

from __future__ import annotations

from typing import Any, Callable

import torch
from torch import fx

import _literals


class GraphExportError(RuntimeError):
    """A node has no representation in the v1 format."""


def _node_names(graph: fx.Graph) -> dict[fx.Node, str]:
    names: dict[fx.Node, str] = {}
    used: set[str] = set()
    for i, node in enumerate(graph.nodes):
        name = node.name
        if not _literals.is_ident(name) or name in used:
            name = f"n{i}"
            while name in used:
                name += "_"
        used.add(name)
        names[node] = name
    return names


def serialize_graph(
    graph: fx.Graph,
    *,
    leaves: set[str],
    allow_call_module: bool,
    output_value: Callable[[fx.Node], Any] | None = None,
) -> tuple[dict, set[str], set[str]]:
    """Return ``({"nodes": [...]}, get_attr targets, call_module targets)``.

    ``output_value(output_node)`` returns the structure (of fx.Nodes) to emit for
    the output; by default the output node's own argument is used."""
    names = _node_names(graph)
    seen: set[fx.Node] = set()

    def ref(value: Any) -> str | None:
        if isinstance(value, fx.Node):
            if value not in seen:
                raise GraphExportError(f"node {value.name} is used before it is defined")
            return names[value]
        return None

    def enc(value: Any, what: str) -> Any:
        try:
            return _literals.encode(value, ref)
        except _literals.LiteralError as exc:
            raise GraphExportError(f"{what}: {exc}") from None

    nodes: list[dict] = []
    get_attrs: set[str] = set()
    modules_used: set[str] = set()
    n_out = 0
    for node in graph.nodes:
        entry: dict[str, Any] = {"op": node.op, "name": names[node]}
        where = f"node {node.name} ({node.op} {node.target})"
        if node.op == "placeholder":
            if not _literals.is_ident(node.target):
                raise GraphExportError(f"forward argument {node.target!r} is not a plain identifier (*args/**kwargs are not supported)")
            entry["target"] = node.target
            entry["args"] = [enc(a, where) for a in node.args]
        elif node.op == "get_attr":
            if not _literals.is_path(node.target):
                raise GraphExportError(f"attribute path {node.target!r} is not a valid path")
            entry["target"] = node.target
            get_attrs.add(node.target)
        elif node.op == "call_module":
            if not allow_call_module or node.target not in leaves:
                raise GraphExportError(f"{where}: module call is not a standard torch.nn leaf")
            entry["target"] = node.target
            modules_used.add(node.target)
        elif node.op == "call_function":
            name = _literals.canonical_name(node.target)
            if name is None:
                fn = node.target
                label = f"{getattr(fn, '__module__', '?')}.{getattr(fn, '__qualname__', repr(fn))}"
                raise GraphExportError(f"{where}: function {label} has no canonical torch/operator/math name")
            why = None if name.startswith("aten.") else _literals.host_refuses_function(name, node.target, node.args)
            if why:
                raise GraphExportError(f"{where}: {why}")
            entry["target"] = name
        elif node.op == "call_method":
            if not isinstance(node.target, str) or not _literals.is_ident(node.target) or node.target.startswith("_"):
                raise GraphExportError(f"{where}: method {node.target!r} is not a public Tensor method")
            if not hasattr(torch.Tensor, node.target):
                raise GraphExportError(f"{where}: method {node.target!r} is not a torch.Tensor method")
            why = _literals.host_refuses_method(node.target)
            if why:
                raise GraphExportError(f"{where}: {why}")
            entry["target"] = node.target
        elif node.op == "output":
            n_out += 1
            entry["target"] = "output"
            value = output_value(node) if output_value is not None else node.args[0]
            entry["args"] = [enc(value, "the model's output")]
            entry["kwargs"] = {}
            nodes.append(entry)
            seen.add(node)
            continue
        else:
            raise GraphExportError(f"{where}: unknown node kind")
        if len(node.args) > 1000:
            raise GraphExportError(f"{where}: more than 1000 arguments")
        if node.op in ("call_module", "call_function", "call_method"):
            entry["args"] = [enc(a, where) for a in node.args]
            kwargs = {}
            for k, v in node.kwargs.items():
                if not _literals.is_ident(k):
                    raise GraphExportError(f"{where}: keyword {k!r} is not an identifier")
                kwargs[k] = enc(v, where)
            entry["kwargs"] = kwargs
        else:
            entry.setdefault("args", [])
            entry["kwargs"] = {}
        nodes.append(entry)
        seen.add(node)
    if n_out != 1 or nodes[-1]["op"] != "output":
        raise GraphExportError("the graph must end in exactly one output")
    if len(nodes) > 200_000:
        raise GraphExportError(f"graph has {len(nodes)} nodes (limit 200000)")
    return {"nodes": nodes}, get_attrs, modules_used


def placeholders(graph_spec: dict) -> list[str]:
    return [n["target"] for n in graph_spec["nodes"] if n["op"] == "placeholder"]
