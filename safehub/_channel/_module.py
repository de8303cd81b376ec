"""``SafehubGraphModule``: one module tree, two graphs.

The rebuilt model is a single ``torch.fx.GraphModule`` whose ``forward`` runs
the train graph when ``self.training`` and the eval graph otherwise. Both graphs
read the same submodules and parameters, so ``m.fc = nn.Linear(...)`` or
``m.half()`` applies to both.

FX generates and ``exec``s Python for each graph, but the graphs were built by
:mod:`._build` from validated nodes only: identifiers, allowlisted callables
(emitted through FX's own globals table) and ``repr()`` of literals, and each
graph's code generator is :class:`._codecheck.CheckedCodeGen`, so the source
``recompile`` compiles has been checked against the graph first.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, ClassVar

from torch import fx, nn
from torch.fx.graph_module import _forward_from_src

__all__ = ["SafehubGraphModule", "reserved_root_attrs", "reserved_module_attrs"]


class SafehubGraphModule(fx.GraphModule):
    """A GraphModule rebuilt by safehub from a validated architecture spec.

    ``graph``/``code`` are the eval graph; ``train_graph``/``train_code`` the
    train graph (the same objects when the model has a single graph).
    """

    # Set by recompile() on the class FX generates per instance.
    _safehub_eval_forward: ClassVar[Callable[..., Any]]
    _safehub_train_forward: ClassVar[Callable[..., Any]]

    def __init__(
        self,
        root: nn.Module,
        graph: fx.Graph,
        train_graph: fx.Graph | None = None,
        class_name: str = "SafehubGraphModule",
    ) -> None:
        # Read by recompile(), which GraphModule.__init__ calls.
        self.__dict__["_safehub_train_graph"] = train_graph
        super().__init__(root, graph, class_name)
        # GraphModule copies only what the eval graph references and makes every
        # buffer persistent; install the whole tree as built instead.
        for name, child in root._modules.items():
            setattr(self, name, child)
        for name, param in root._parameters.items():
            if param is not None:
                setattr(self, name, param)
        non_persistent: set[str] = getattr(root, "_non_persistent_buffers_set", set())
        for name, buf in root._buffers.items():
            if buf is not None:
                self.register_buffer(name, buf, persistent=name not in non_persistent)
        if train_graph is not None:
            train_graph.owning_module = self

    @property
    def train_graph(self) -> fx.Graph:
        return self.__dict__.get("_safehub_train_graph") or self.graph

    @property
    def train_code(self) -> str:
        return self.__dict__.get("_safehub_train_code") or self.code

    def recompile(self) -> Any:
        python_code = super().recompile()  # installs the eval forward as cls.forward
        cls = type(self)
        cls._safehub_eval_forward = cls.forward
        train_graph = self.__dict__.get("_safehub_train_graph")
        if train_graph is None:
            cls._safehub_train_forward = cls.forward
        else:
            train_code = train_graph.python_code(root_module="self")
            self.__dict__["_safehub_train_code"] = train_code.src
            cls._safehub_train_forward = _forward_from_src(train_code.src, train_code.globals, {})
        cls.forward = _dispatch_forward
        return python_code

    def _deepcopy_init(self) -> Any:
        def init(res: Any, fake_mod: Any, graph: fx.Graph) -> None:
            SafehubGraphModule.__init__(res, fake_mod, graph, fake_mod.__dict__.get("_safehub_train_graph"))
            if "_safehub_origin" in fake_mod.__dict__:  # a copy can still be saved with safehub.save
                res.__dict__["_safehub_origin"] = fake_mod.__dict__["_safehub_origin"]

        return init

    def __copy__(self) -> "SafehubGraphModule":
        res = SafehubGraphModule(self, self.graph, self.__dict__.get("_safehub_train_graph"))
        res.meta = getattr(self, "meta", {})
        res.training = self.training
        return res

    def __reduce__(self) -> Any:
        raise TypeError(
            "a SafehubGraphModule cannot be pickled (torch.save(model) pickles it): use safehub.save(model, folder) "
            "and safehub.load_artifact(folder), a code-free artifact, or save model.state_dict() with safetensors "
            "(unpickling a model is the code-execution path safehub exists to avoid)"
        )


def _dispatch_forward(self: SafehubGraphModule, *args: Any, **kwargs: Any) -> Any:
    cls = type(self)
    fn = cls._safehub_train_forward if self.training else cls._safehub_eval_forward
    return fn(self, *args, **kwargs)


SafehubGraphModule.forward = _dispatch_forward


@functools.lru_cache(maxsize=None)
def reserved_root_attrs() -> frozenset[str]:
    """Names a top-level path atom may not use: generated code would reach the
    GraphModule's own attribute (e.g. ``self.to_folder(...)``) instead."""
    graph = fx.Graph()
    graph.output(None)
    probe = SafehubGraphModule(nn.Module(), graph)
    # Plus the instance attributes safehub sets later (build origin, load info):
    # a tensor of that name would be shadowed by them in generated code.
    names = set(dir(probe)) | {"_in_spec", "_out_spec", "_safehub_train_code", "_safehub_train_graph",
                               "_safehub_origin", "safehub_info"}
    return frozenset(names)


@functools.lru_cache(maxsize=None)
def reserved_module_attrs() -> frozenset[str]:
    """Names a deeper path atom may not use (attributes of every nn.Module)."""
    return frozenset(dir(nn.Module())) | {"forward"}


