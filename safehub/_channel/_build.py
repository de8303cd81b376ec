"""Build validated modules: the module tree, the tensors, and one fx.Graph per mode.

Input is only what :mod:`._spec`, :mod:`._weights` and :mod:`._leaves` have
checked. Graph nodes are created with ``Graph.create_node`` from validated
identifiers, allowlisted callables and decoded literals; no spec string is
evaluated. There is no ``recompile`` after construction. Every graph generates
its code through :class:`._codecheck.CheckedCodeGen`, which checks the source
against the graph before FX compiles it.
"""

from __future__ import annotations

from typing import Any

from .._errors import InvalidNameError, TensorMismatchError, UnsafeSpecError
from ._literals import NodeRef
from ._names import show
from ._graphspec import GraphSpec
from ._spec import ModuleSpec

__all__ = ["build_module", "build_graphs"]


def build_graphs(mspec: ModuleSpec) -> dict[str, Any]:
    """Create the fx.Graphs of one module and check the code FX will generate
    for them. Needs no tensors, so it runs with the other validation steps."""
    graphs = {name: _build_graph(gspec, f"module {mspec.mid} {name} graph") for name, gspec in mspec.graphs.items()}
    for name, graph in graphs.items():
        _check_generated_names(graph, mspec.graphs[name], f"module {mspec.mid} {name} graph")
        # Generates the forward's source and checks it against the graph
        # (CheckedCodeGen); build_module's recompile() takes that checked code over.
        graph._codegen.hand_off(graph)
        try:
            graph.lint()
        except Exception as exc:  # noqa: BLE001 - lint raises RuntimeError and others
            raise UnsafeSpecError(f"module {mspec.mid} {name} graph failed Graph.lint(): {show(str(exc), 300)}") from None
    return graphs


def _check_generated_names(graph: Any, gspec: GraphSpec, where: str) -> None:
    """Placeholder targets become argument names of the generated ``forward``
    verbatim. One that equals a name the generated code uses as a global
    (``torch``, ``getattr``, ``device``...) would shadow it, so that
    ``torch.relu(...)`` would call an attribute of a caller's argument."""
    from torch.fx.graph import _custom_builtins

    def refuse(target: str) -> None:
        raise InvalidNameError(
            f"{where}: argument name {show(target)} would shadow {show(target)} in the generated forward",
            hint="rename that forward() argument in the model",
        )

    # Names FX emits literally (not through its namespace), and its fixed globals.
    fixed = set(_custom_builtins) | {"self", "getattr", "slice", "Ellipsis"}
    placeholders = [n for n in graph.nodes if n.op == "placeholder"]
    for n in placeholders:
        if n.target in fixed:
            refuse(n.target)
    # Codegen registers every node name before it picks names for globals, so an
    # argument named like its own node cannot collide. Otherwise look at the code.
    if all(n.name == n.target for n in placeholders):
        return
    code = graph.python_code(root_module="self")
    for n in placeholders:
        if n.target in code.globals:
            refuse(n.target)


def build_module(mspec: ModuleSpec, leaves: dict[str, Any], tensors: dict[str, Any], graphs: dict[str, Any]) -> Any:
    """``leaves`` are the meta-built leaves, ``tensors`` maps spec paths to loaded
    tensors (already on the target device), ``graphs`` come from build_graphs."""
    from torch import nn

    from ._leaves import leaf_members
    from ._module import SafehubGraphModule

    # One object per tensor; aliases share it (tied weights stay tied).
    objects: dict[str, Any] = {}
    for path, info in mspec.tensors.items():
        t = tensors[path]
        objects[path] = nn.Parameter(t, requires_grad=info.requires_grad) if info.kind == "parameter" else t
    for path, target in mspec.aliases.items():
        objects[path] = objects[target]

    root = nn.Module()

    def module_at(atoms: list[str] | tuple[str, ...]) -> nn.Module:
        mod = root
        for atom in atoms:
            child = mod._modules.get(atom)
            if child is None:
                child = nn.Module()
                mod.add_module(atom, child)
            mod = child
        return mod

    in_leaf: set[str] = set()
    for path, leaf in leaves.items():
        lspec = mspec.leaves[path]
        for rel, (_, kind, _) in leaf_members(leaf).items():
            full = lspec.members[rel]
            *owner_atoms, name = rel.split(".")
            owner = leaf.get_submodule(".".join(owner_atoms)) if owner_atoms else leaf
            setattr(owner, name, objects[full])  # Module.__setattr__ keeps RNN flat weights in sync
            in_leaf.add(full)
        if any(t.is_meta for t in leaf.parameters()) or any(t.is_meta for t in leaf.buffers()):
            raise TensorMismatchError(f"module {mspec.mid} leaf {show(path)}: a tensor stayed on meta")
        *parent, name = path.split(".")
        module_at(parent).add_module(name, leaf)

    for path in (*mspec.tensors, *mspec.aliases):
        if path in in_leaf:
            continue
        *parent_atoms, name = path.split(".")
        owner = module_at(parent_atoms)
        obj = objects[path]
        info = mspec.tensors[mspec.aliases.get(path, path)]
        if isinstance(obj, nn.Parameter):
            owner.register_parameter(name, obj)
        else:
            owner.register_buffer(name, obj, persistent=info.persistent)

    # Training flags: root first, then submodules from the outside in, then leaves.
    root.train(mspec.training)
    for path in sorted(mspec.submodules, key=lambda p: p.count(".")):
        module_at(path.split(".")).training = mspec.submodules[path]
    for path, lspec in mspec.leaves.items():
        leaves[path].train(lspec.training)

    if mspec.mode == "deferred":
        from .._deferred import DeferredModule

        return DeferredModule(root, mspec.mid)
    eval_graph, train_graph = graphs["eval"], graphs.get("train")
    try:
        gm = SafehubGraphModule(root, eval_graph, train_graph)
    except Exception as exc:  # noqa: BLE001 - fail closed with a typed error whatever FX raised
        raise UnsafeSpecError(
            f"module {mspec.mid}: FX could not compile the validated graphs: {type(exc).__name__}: {show(str(exc), 300)}"
        ) from None
    gm.training = mspec.training
    for name, graph in (("eval", eval_graph), ("train", train_graph)):
        if graph is None:
            continue
        try:
            graph.lint()  # again, now that targets resolve against the module
        except Exception as exc:  # noqa: BLE001 - lint raises RuntimeError and others
            raise UnsafeSpecError(f"module {mspec.mid} {name} graph failed Graph.lint(): {show(str(exc), 300)}") from None
    return gm


def _build_graph(gspec: GraphSpec, where: str) -> Any:
    from torch import fx

    from ._codecheck import CheckedCodeGen

    graph = fx.Graph()
    graph.set_codegen(CheckedCodeGen(where))
    env: dict[str, Any] = {}

    def resolve(value: Any) -> Any:
        if isinstance(value, NodeRef):
            return env[value.name]
        if isinstance(value, tuple):
            return tuple(resolve(v) for v in value)
        if isinstance(value, list):
            return [resolve(v) for v in value]
        if isinstance(value, dict):
            return {k: resolve(v) for k, v in value.items()}
        if isinstance(value, slice):
            return slice(resolve(value.start), resolve(value.stop), resolve(value.step))
        return value

    for node in gspec.nodes:
        if node.op == "output":
            env[node.name] = graph.output(resolve(node.args[0]))
            continue
        env[node.name] = graph.create_node(
            node.op,
            node.target,
            args=resolve(node.args),
            kwargs=resolve(node.kwargs),
            name=node.name,
        )
    return graph
