"""The import graph of safehub/ has no cycles, lazy imports inside functions included
(a lower layer that imports its caller, even lazily, is how layers rot).

Built from the syntax tree, never by importing: every ``import``/``from ... import``
anywhere in a module is an edge to the safehub module it names (and to the
submodule, for ``from package import submodule``). The implicit import of a parent
package is not an edge."""

from __future__ import annotations

import ast
import functools
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "safehub"


def _modules() -> dict[str, Path]:
    out = {}
    for path in sorted(PACKAGE.rglob("*.py")):
        parts = list(path.relative_to(ROOT).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _resolve(module: str, is_package: bool, level: int, name: str | None) -> str:
    base = module.split(".") if is_package else module.split(".")[:-1]
    if level > 1:
        base = base[: len(base) - (level - 1)]
    return ".".join(base + ([name] if name else []))


@functools.lru_cache(maxsize=None)
def _import_graph() -> dict[str, frozenset[str]]:
    graph = import_graph()
    return {k: frozenset(v) for k, v in graph.items()}


def import_graph() -> dict[str, set[str]]:
    modules = _modules()
    graph: dict[str, set[str]] = {m: set() for m in modules}
    for module, path in modules.items():
        is_package = path.name == "__init__.py"
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                target = _resolve(module, is_package, node.level, node.module) if node.level else (node.module or "")
                # `from package import submodule` imports the submodule (the package
                # only implicitly); `from module import name` imports the module.
                targets = [f"{target}.{a.name}" if f"{target}.{a.name}" in modules else target for a in node.names]
            for target in targets:
                if target in modules and target != module:
                    graph[module].add(target)
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    counter = 0

    def visit(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_the_graph_is_built_from_real_edges():
    graph = _import_graph()
    # Known edges, so an empty or broken graph cannot pass vacuously.
    assert "safehub._errors" in graph["safehub._jobs"]
    assert "safehub._channel._result" in graph["safehub._channel"]
    assert "safehub._jobs" in graph["safehub._api"]  # a lazy import inside a function counts
    assert "safehub._sandbox._seccomp_policy" in graph["safehub._sandbox._seccomp"]  # from . import submodule
    assert "safehub._sandbox" not in graph["safehub._sandbox._seccomp"]
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


# docs/architecture.md, "Layers": a module imports only from lower layers.
LAYERS = {
    "safehub._contract": 0, "safehub._errors": 0, "safehub._config": 0.5, "safehub._fsutil": 0.5, "safehub._owned": 0.6, "safehub._basesite": 0.5, "safehub._resources": 0.5, "safehub._cgroupfs": 0.5,
    "safehub._status": 0.75,
    "safehub._fetch": 1.5, "safehub._hubconf": 1, "safehub._env": 1, "safehub._sandbox": 1, "safehub._channel": 1,
    "safehub._artifact_format": 1.5, "safehub._jobs": 2, "safehub._doctor": 2, "safehub._artifact": 2,
    "safehub._api": 3, "safehub._load_info": 2.5, "safehub._checkpoints": 3, "safehub._artifact_cli": 3.5,
    "safehub._audit": 3.5,
    "safehub": 4, "safehub._cli_text": 4.5, "safehub._cli": 5, "safehub.__main__": 6,
    "safehub._summary": 0.5, "safehub._namespace": 0.5, "safehub._deferred": 0.75, "safehub._deferred_jobs": 2.5,
    "safehub._policy_match": 0.5, "safehub._lockfile": 0.75, "safehub._policy": 1.25, "safehub._guard": 1.75,
    "safehub._policy_cli": 3.5,
    "safehub._cache_key": 1, "safehub._artifact_stat_memo": 2, "safehub._artifact_cache": 2.25, "safehub._artifact_cache_cli": 3.5,
    "safehub._host_torch": 0.5, "safehub._worker": 1.75, "safehub._bytecode": 0.75, "safehub._cache_writer": 0,
    "safehub._lazy": 0,
    "safehub._records": 0,
}  # fmt: skip


def _component(module: str) -> str:
    return ".".join(module.split(".")[:2])


def test_modules_import_only_from_lower_layers():
    graph = _import_graph()
    wrong = []
    for module, targets in graph.items():
        for target in targets:
            a, b = _component(module), _component(target)
            if a == b:
                continue
            assert a in LAYERS and b in LAYERS, f"{a} or {b} is not placed in a layer (docs/architecture.md)"
            if LAYERS[b] >= LAYERS[a]:
                wrong.append(f"{module} -> {target}")
    assert not wrong, wrong


def test_safehub_has_no_import_cycles():
    found = cycles({k: set(v) for k, v in _import_graph().items()})
    assert not found, "import cycles in safehub/: " + "; ".join(" <-> ".join(c) for c in found)


def test_every_dataclass_has_a_docstring():
    """Without one, ``@dataclass`` builds ``__doc__`` from ``inspect.signature`` at import
    (0.2 ms a class, 58 classes): import cost in every fresh process."""
    missing = []
    for module, path in _modules().items():
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if (isinstance(node, ast.ClassDef) and ast.get_docstring(node) is None
                    and any("dataclass" in ast.unparse(d) or ast.unparse(d).startswith("record")
                            for d in node.decorator_list)):
                missing.append(f"{module}.{node.name}")
    assert missing == []
