"""Reading hubconf.py without running it.

Only :mod:`ast` touches the file. We learn:

* ``dependencies``: must be a literal list (or tuple) of strings, or absent;
* the public top-level names and whether each is certainly callable, certainly
  not callable, or unknowable statically (an imported name, ``from x import *``,
  a computed assignment, anything defined under ``if``/``try``...);
* for functions and classes defined in the file: their signature text and docstring.

``torch.hub.list`` returns ``dir(hubconf)`` filtered to public callables. When
every top-level name is certain, the static answer equals it; otherwise the
caller asks the sandbox (see :attr:`Hubconf.complete`).
"""

from __future__ import annotations

import ast
import difflib
import inspect
import re
from dataclasses import field
from pathlib import Path
from typing import Any

from ._errors import EntrypointArgumentsError, EntrypointNotFoundError, HubconfError, escape_untrusted
from ._records import record

__all__ = ["Entrypoint", "Hubconf", "read_hubconf", "parse_hubconf", "MAX_HUBCONF_BYTES"]

MAX_HUBCONF_BYTES = 2 * 1024 * 1024
MAX_DEPENDENCIES = 256
MAX_DEPENDENCY_LEN = 200
_IDENT = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")

# Names bound by module-level constructs whose callability ast cannot decide.
_DYNAMIC_CALLS = {"globals", "setattr", "exec", "eval", "__import__", "vars", "locals"}


@record(frozen=True)
class Entrypoint:
    """One entrypoint as the static reading of hubconf.py found it."""

    name: str
    kind: str  # "function", "class", "imported", "assigned"
    signature: str | None = None  # e.g. "(pretrained=False, **kwargs)"
    doc: str | None = None
    lineno: int | None = None
    # (name, inspect kind, has a default) of each parameter, only when the call binding
    # is certain from the syntax alone (see _static_params); None: unknown, never checked.
    params: tuple[tuple[str, inspect._ParameterKind, bool], ...] | None = None


@record
class Hubconf:
    """What the static reading of a hubconf.py found."""

    path: Path
    dependencies: list[str]
    entrypoints: dict[str, Entrypoint]  # certainly callable, or possibly callable
    certain: set[str] = field(default_factory=set)  # names certainly callable
    uncertain: set[str] = field(default_factory=set)  # names that may or may not be callable
    complete: bool = True  # False: dir() may hold names we cannot see (star imports, dynamic code)
    reasons: list[str] = field(default_factory=list)  # why the static answer is incomplete
    # Every name any statement in the file binds, at any depth (a superset of the module's names).
    bound_anywhere: set[str] = field(default_factory=set)

    @property
    def static_list_is_exact(self) -> bool:
        return self.complete and not self.uncertain

    def names(self) -> list[str]:
        """The entrypoint names when the static answer is exact, sorted like ``dir()``."""
        return sorted(self.certain)

    def find(self, model: str) -> Entrypoint | None:
        return self.entrypoints.get(model)

    def require(self, model: str) -> Entrypoint | None:
        """Fail early only when the static reading proves ``model`` is absent."""
        if not isinstance(model, str) or not _IDENT.fullmatch(model):
            raise EntrypointNotFoundError(
                f"{model!r} is not a valid entrypoint name", hint="entrypoints are Python identifiers"
            )
        if model.startswith("_"):
            # The runner refuses private names too; fail before building anything.
            raise EntrypointNotFoundError(
                f"Cannot find callable {model} in hubconf",
                hint="entrypoints are hubconf's public callables; names starting with '_' are private",
            )
        ep = self.entrypoints.get(model)
        # Absent for certain: the list is exact, or no statement anywhere binds the name
        # and nothing can bind names we cannot see.
        proven_absent = self.static_list_is_exact or (self.complete and model not in self.bound_anywhere)
        if ep is None and proven_absent:
            known = sorted(n for n in self.entrypoints if not n.startswith("_"))
            close = difflib.get_close_matches(model, known, n=1)
            maybe = f"did you mean {close[0]!r}? " if close else ""
            listed = "available entrypoints" if self.static_list_is_exact else "public names that may be entrypoints"
            raise EntrypointNotFoundError(
                f"Cannot find callable {model} in hubconf",
                hint=f"{maybe}{listed}: {', '.join(known) or '(none)'}",
            )
        return ep

    def check_call(self, model: str, args: tuple[Any, ...], kwargs: dict[str, Any]) -> None:
        """Fail before any sandbox starts when ``args``/``kwargs`` cannot bind to the
        entrypoint's signature. Only for signatures the syntax fixes for certain;
        anything else is left to the real call (never refuse what torch.hub accepts)."""
        ep = self.entrypoints.get(model)
        if ep is None or ep.params is None or not self.complete or model not in self.certain:
            return
        # Placeholder defaults: nothing of the repo's is evaluated, only the shape is used.
        sig = inspect.Signature([
            inspect.Parameter(name, kind, default=None if has_default else inspect.Parameter.empty)
            for name, kind, has_default in ep.params
        ])
        try:
            sig.bind(*args, **kwargs)
        except TypeError as exc:
            keywordable = [n for n, kind, _ in ep.params if kind is not inspect.Parameter.POSITIONAL_ONLY]
            unknown = [k for k in kwargs if k not in keywordable]
            hints = []
            for key in unknown[:5]:
                close = difflib.get_close_matches(key, keywordable, n=1)
                if close:
                    hints.append(f"did you mean {close[0]}= instead of {key}=?")
            where = f"{self.path.name}" + (f" line {ep.lineno}" if ep.lineno else "")
            raise EntrypointArgumentsError(
                f"{model}{ep.signature or '()'} does not accept these arguments: {exc}",
                hint=" ".join(hints) or f"see the signature of {model} in {where}, or safehub.help()",
            ) from None


def read_hubconf(repo_dir: Path) -> Hubconf:
    path = Path(repo_dir) / "hubconf.py"
    try:
        with open(path, "rb") as f:
            source = f.read(MAX_HUBCONF_BYTES + 1)
    except FileNotFoundError:
        raise HubconfError(
            f"{repo_dir} has no hubconf.py", hint="point safehub at the root folder of a torch.hub repo"
        ) from None
    if len(source) > MAX_HUBCONF_BYTES:
        raise HubconfError(f"{path} is larger than {MAX_HUBCONF_BYTES} bytes; refusing to parse it")
    return parse_hubconf(source, path)


def parse_hubconf(source: bytes | str, path: Path = Path("hubconf.py")) -> Hubconf:
    try:
        tree = ast.parse(source, filename=str(path))
    except (SyntaxError, ValueError) as exc:
        raise HubconfError(
            f"{path} is not valid Python: {escape_untrusted(str(exc), limit=300)}",
            hint="the repo's hubconf.py must parse with this Python version",
        ) from None
    except (RecursionError, MemoryError):
        raise HubconfError(
            f"{path} nests expressions too deeply to be read statically",
            hint="safehub refuses hubconf files built to exhaust the parser",
        ) from None
    try:
        return _read_tree(tree, path)
    except (RecursionError, MemoryError):
        raise HubconfError(f"{path} nests expressions too deeply to be read statically") from None


def _read_tree(tree: ast.Module, path: Path) -> Hubconf:

    hub = Hubconf(path=Path(path), dependencies=[], entrypoints={})
    deps_node: ast.expr | None = None
    bound: dict[str, str] = {}  # name -> "callable" | "value" | "unknown"

    for stmt in tree.body:
        _visit_top_level(stmt, hub, bound, conditional=False)
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            if any(isinstance(t, ast.Name) and t.id == "dependencies" for t in targets):
                deps_node = stmt.value

    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in _DYNAMIC_CALLS:
            hub.complete = False
            hub.reasons.append(f"line {node.lineno}: calls {node.func.id}()")
        if isinstance(node, ast.Global):
            hub.complete = False
            hub.reasons.append(f"line {node.lineno}: a function rebinds module globals")

    if "__getattr__" in bound or "__dir__" in bound:
        hub.complete = False
        hub.reasons.append("defines a module-level __getattr__/__dir__")

    for name, state in bound.items():
        if name.startswith("_"):
            continue
        if state == "callable":
            hub.certain.add(name)
        elif state == "unknown":
            hub.uncertain.add(name)
            hub.entrypoints.setdefault(name, Entrypoint(name=name, kind="imported"))
        else:
            hub.entrypoints.pop(name, None)

    _drop_unsure_params(tree, hub)
    hub.bound_anywhere = _names_bound_anywhere(tree)
    hub.dependencies = _read_dependencies(deps_node, path) if deps_node is not None else []
    return hub


# Attributes through which code can change how a function binds its arguments, or
# rebind module names without a visible assignment.
_SIGNATURE_HAZARDS = frozenset({"__code__", "__defaults__", "__kwdefaults__", "__dict__", "__wrapped__",
                                "__signature__", "__call__", "modules", "__globals__", "__builtins__"})


def _names_bound_anywhere(tree: ast.Module) -> set[str]:
    names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            names.add(node.id)
        elif isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            names.add(node.name)
        elif isinstance(node, ast.MatchMapping) and node.rest:
            names.add(node.rest)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, ast.Global):
            names.update(node.names)
    return names


def _static_params(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> tuple[tuple[str, inspect._ParameterKind, bool], ...] | None:
    """The parameters of a plain, undecorated function without ``**kwargs``, else None."""
    a = fn.args
    if fn.decorator_list or a.kwarg is not None:
        return None
    P = inspect.Parameter
    positional = [(arg.arg, P.POSITIONAL_ONLY) for arg in a.posonlyargs] + \
                 [(arg.arg, P.POSITIONAL_OR_KEYWORD) for arg in a.args]
    first_default = len(positional) - len(a.defaults)
    params: list[tuple[str, inspect._ParameterKind, bool]] = [
        (name, kind, i >= first_default) for i, (name, kind) in enumerate(positional)
    ]
    if a.vararg is not None:
        params.append((a.vararg.arg, P.VAR_POSITIONAL, False))
    for arg, default in zip(a.kwonlyargs, a.kw_defaults):
        params.append((arg.arg, P.KEYWORD_ONLY, default is not None))
    return tuple(params)


def _drop_unsure_params(tree: ast.Module, hub: Hubconf) -> None:
    """Forget every static signature the file could change at run time: names that
    are not certainly one plain function, and any file that reaches a function's
    code/defaults, the module dict or sys.modules, or assigns an attribute named
    like an entrypoint (``hubconf.tiny = ...`` through a self-import)."""
    hazard = not hub.complete
    stored_attrs: set[str] = set()
    stored_names: set[str] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute):
            if node.attr in _SIGNATURE_HAZARDS:
                hazard = True
            if isinstance(node.ctx, (ast.Store, ast.Del)):
                stored_attrs.add(node.attr)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, (ast.Store, ast.Del)):
            stored_names.add(node.id)  # `tiny = lambda **kw: ...` keeps it "callable" but not this def
        elif isinstance(node, (ast.ExceptHandler, ast.MatchAs, ast.MatchStar)) and node.name:
            stored_names.add(node.name)
        if isinstance(node, ast.Name) and node.id in ("__builtins__", "__spec__", "__loader__"):
            hazard = True
    for name, ep in list(hub.entrypoints.items()):
        if ep.params is not None and (hazard or name not in hub.certain or name in stored_attrs
                                       or name in stored_names):
            hub.entrypoints[name] = Entrypoint(
                name=ep.name, kind=ep.kind, signature=ep.signature, doc=ep.doc, lineno=ep.lineno
            )


def _visit_top_level(stmt: ast.stmt, hub: Hubconf, bound: dict[str, str], *, conditional: bool) -> None:
    def bind(name: str, state: str) -> None:
        # A name bound under a condition, or twice with different kinds, is uncertain.
        if conditional or (name in bound and bound[name] != state):
            state = "unknown"
        bound[name] = state

    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
        is_class = isinstance(stmt, ast.ClassDef)
        bind(stmt.name, "callable")
        sig = None if is_class else _signature_text(stmt)  # type: ignore[arg-type]
        if is_class:
            init = next(
                (b for b in stmt.body if isinstance(b, ast.FunctionDef) and b.name == "__init__"), None
            )
            if init is not None:
                sig = _signature_text(init, drop_first=True)
        hub.entrypoints[stmt.name] = Entrypoint(
            name=stmt.name,
            kind="class" if is_class else "function",
            signature=sig,
            doc=ast.get_docstring(stmt, clean=False),  # __doc__ is not cleaned either
            lineno=stmt.lineno,
            params=None if is_class or conditional else _static_params(stmt),  # type: ignore[arg-type]
        )
    elif isinstance(stmt, ast.Import):
        for alias in stmt.names:
            # `import a.b` binds `a`; a module object is never callable.
            bind(alias.asname or alias.name.split(".")[0], "value")
    elif isinstance(stmt, ast.ImportFrom):
        for alias in stmt.names:
            if alias.name == "*":
                hub.complete = False
                hub.reasons.append(f"line {stmt.lineno}: from {stmt.module or '.'} import *")
                continue
            bind(alias.asname or alias.name, "unknown")
    elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        value = stmt.value
        state = _value_state(value) if value is not None else "value"
        if isinstance(stmt, ast.AugAssign):
            state = "unknown"
        for target in targets:
            for name in _target_names(target):
                bind(name, state if isinstance(target, ast.Name) else "unknown")
    elif isinstance(stmt, (ast.If, ast.Try, ast.For, ast.While, ast.With, ast.AsyncFor, ast.AsyncWith)):
        for child in _child_statements(stmt):
            _visit_top_level(child, hub, bound, conditional=True)
    elif isinstance(stmt, ast.Delete):
        hub.complete = False
        hub.reasons.append(f"line {stmt.lineno}: deletes module names")
    elif isinstance(stmt, ast.Expr) or isinstance(stmt, ast.Pass):
        pass
    elif hasattr(ast, "TypeAlias") and isinstance(stmt, getattr(ast, "TypeAlias")):
        bind(stmt.name.id, "value")
    elif isinstance(stmt, ast.Match):
        for case in stmt.cases:
            for child in case.body:
                _visit_top_level(child, hub, bound, conditional=True)


def _child_statements(stmt: ast.stmt) -> list[ast.stmt]:
    out: list[ast.stmt] = []
    for attr in ("body", "orelse", "finalbody"):
        out.extend(getattr(stmt, attr, []) or [])
    for handler in getattr(stmt, "handlers", []) or []:
        out.extend(handler.body)
    return out


def _target_names(target: ast.expr) -> list[str]:
    if isinstance(target, ast.Name):
        return [target.id]
    if isinstance(target, (ast.Tuple, ast.List)):
        return [n for elt in target.elts for n in _target_names(elt)]
    if isinstance(target, ast.Starred):
        return _target_names(target.value)
    return []  # attribute/subscript assignment binds no module name


_LITERAL_DISPLAYS = (ast.Constant, ast.List, ast.Tuple, ast.Dict, ast.Set, ast.JoinedStr,
                     ast.ListComp, ast.DictComp, ast.SetComp, ast.GeneratorExp)
_OPERATORS = (ast.BinOp, ast.Compare, ast.BoolOp, ast.UnaryOp)


def _value_state(value: ast.expr) -> str:
    if isinstance(value, ast.Lambda):
        return "callable"
    if isinstance(value, _LITERAL_DISPLAYS):
        return "value"  # displays and comprehensions are never callable
    if isinstance(value, _OPERATORS):
        # `a | b` on objects may return anything; operators over pure constants may not.
        exprs = [n for n in ast.walk(value) if isinstance(n, ast.expr)]
        if all(isinstance(n, (ast.Constant, *_OPERATORS)) for n in exprs):
            return "value"
    return "unknown"


def _signature_text(fn: ast.FunctionDef | ast.AsyncFunctionDef, drop_first: bool = False) -> str:
    args = fn.args
    if drop_first:
        args = ast.arguments(
            posonlyargs=args.posonlyargs[1:] if args.posonlyargs else [],
            args=args.args[1:] if not args.posonlyargs else args.args,
            vararg=args.vararg,
            kwonlyargs=args.kwonlyargs,
            kw_defaults=args.kw_defaults,
            kwarg=args.kwarg,
            defaults=args.defaults,
        )
    # ast.unparse only renders text; nothing is evaluated.
    text = ast.unparse(args)
    return escape_untrusted(f"({text})", limit=2000)


def _read_dependencies(node: ast.expr, path: Path) -> list[str]:
    if not isinstance(node, (ast.List, ast.Tuple)):
        raise HubconfError(
            f"{path}: `dependencies` must be a literal list of strings, found {type(node).__name__} "
            f"at line {getattr(node, 'lineno', '?')}",
            hint="safehub reads hubconf without running it; write e.g. dependencies = ['torch', 'yaml']",
        )
    if len(node.elts) > MAX_DEPENDENCIES:
        raise HubconfError(f"{path}: `dependencies` lists {len(node.elts)} entries (max {MAX_DEPENDENCIES})")
    deps: list[str] = []
    for elt in node.elts:
        if not (isinstance(elt, ast.Constant) and isinstance(elt.value, str)):
            raise HubconfError(
                f"{path}: every entry of `dependencies` must be a string literal "
                f"(line {getattr(elt, 'lineno', '?')} is not)",
                hint="computed dependency lists cannot be read without running the repo's code",
            )
        value = elt.value.strip()
        if not value or len(value) > MAX_DEPENDENCY_LEN or any(ord(c) < 32 for c in value):
            raise HubconfError(f"{path}: dependency {escape_untrusted(value, limit=80)!r} is not a valid name")
        deps.append(value)
    return deps
