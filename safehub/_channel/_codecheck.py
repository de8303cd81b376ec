"""Check the Python FX generates for a graph against the graph, before it is compiled.

FX turns a graph into source text (``repr()`` of literals, names from its own
namespace) and ``exec``s it. Text can mean something other than the graph it
came from: a complex literal with an infinite part prints as the bare name
``infj`` (which then reads a node called ``infj``), a placeholder whose target
is another placeholder's name prints ``b = c; a = b`` (aliasing), an argument
named like a global shadows it. Special cases close one such hole at a time;
this check closes the class.

:class:`CheckedCodeGen` is installed on every graph safehub builds. After FX has
generated the source and before anyone compiles it, the source is parsed with
:mod:`ast` and interpreted *symbolically* with Python's own scoping rules:

- a name is local if it is an argument or assigned anywhere in ``forward``,
  and then reads exactly the value last bound to it (a placeholder, a node's
  result); otherwise it reads ``code.globals``; the only builtins allowed are
  ``getattr``, ``slice`` and ``Ellipsis``;
- every statement must be the one the next graph node explains (one
  operation whose operands are names or literals), plus FX's ``a = b = None``
  deletions of bound locals; nothing else (no imports, no nested operations);
- every literal operand must be literal syntax (constants, tuples, lists,
  dicts, ``slice(...)``, ``device(...)``, ``torch.<dtype>``, the globals
  ``inf``/``nan``) and evaluate to exactly the graph's value.

Any difference raises :class:`UnsafeSpecError`; no generated code is run.
"""

from __future__ import annotations

import ast
import builtins
import gc
import math
import operator
from typing import Any

import torch
from torch.fx.graph import CodeGen, PythonCode

from .._errors import UnsafeSpecError
from .._records import record
from ._names import show

__all__ = ["CheckedCodeGen", "check_python_code"]

_BINOPS = {
    ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: operator.truediv,
    ast.FloorDiv: operator.floordiv, ast.Mod: operator.mod, ast.Pow: operator.pow, ast.LShift: operator.lshift,
    ast.RShift: operator.rshift, ast.BitAnd: operator.and_, ast.BitOr: operator.or_, ast.BitXor: operator.xor,
    ast.MatMult: operator.matmul,
}  # fmt: skip
_INPLACE = {
    ast.Add: operator.iadd, ast.Sub: operator.isub, ast.Mult: operator.imul, ast.Div: operator.itruediv,
    ast.FloorDiv: operator.ifloordiv, ast.Mod: operator.imod, ast.Pow: operator.ipow, ast.LShift: operator.ilshift,
    ast.RShift: operator.irshift, ast.BitAnd: operator.iand, ast.BitOr: operator.ior, ast.BitXor: operator.ixor,
    ast.MatMult: operator.imatmul,
}  # fmt: skip
_UNARY = {ast.USub: operator.neg, ast.UAdd: operator.pos, ast.Invert: operator.invert}
_COMPARE = {ast.Eq: operator.eq, ast.NotEq: operator.ne, ast.Lt: operator.lt, ast.Gt: operator.gt,
            ast.LtE: operator.le, ast.GtE: operator.ge}  # fmt: skip
_BUILTINS = {"getattr": builtins.getattr, "slice": builtins.slice, "Ellipsis": Ellipsis}
_UNBOUND = object()
PARSE_FILENAME = "<safehub-codecheck>"


@record(frozen=True)
class _Arg:
    """The value of a ``forward`` argument, as passed by the caller."""

    name: str


@record(frozen=True)
class _Op:
    """One operation of a graph, as the code check compares it."""

    op: str
    target: Any
    args: tuple
    kwargs: dict


class _Refused(Exception):
    pass


class CheckedCodeGen(CodeGen):
    """FX's code generator, followed by :func:`check_python_code` on its output.

    Every ``Graph.python_code`` call (``GraphModule.recompile`` included) returns
    only checked source. ``verbose``/``colored`` renderings are for printing
    (``print_readable``); GraphModule never compiles them, so they pass unchecked.
    """

    def __init__(self, where: str = "graph") -> None:
        super().__init__()
        self.where = where
        # The last source that passed, with the globals and nodes it was checked
        # against: validation and GraphModule.recompile() generate the same text,
        # and identical text over identical objects needs no second check.
        self._passed: tuple | None = None
        self._handoff: tuple | None = None

    def _gen_python_code(self, nodes: Any, root_module: str, namespace: Any, **kwargs: Any) -> PythonCode:
        plain = not (kwargs.get("verbose") or kwargs.get("colored"))
        nodes = list(nodes)
        handoff, self._handoff = self._handoff, None
        if handoff is not None and not any(kwargs.values()) and handoff[0] == (root_module, tuple(map(id, nodes))):
            return handoff[1]
        code = super()._gen_python_code(nodes, root_module, namespace, **kwargs)
        if plain:
            key = (code.src, root_module, tuple((k, id(v)) for k, v in code.globals.items()), tuple(map(id, nodes)))
            if key != self._passed:
                check_python_code(code, nodes, root_module, self.where)
                self._passed = key
        return code

    def hand_off(self, graph: Any, root_module: str = "self") -> PythonCode:
        """Generate and check the code now (validation), and let the very next
        generation of the same nodes (GraphModule's recompile during the build,
        with nothing run in between) reuse it instead of generating it twice.
        One use only: a later recompile, after any edit, generates afresh."""
        code = graph.python_code(root_module=root_module)
        self._handoff = ((root_module, tuple(map(id, graph.nodes))), code)
        return code

    def __deepcopy__(self, memo: dict) -> "CheckedCodeGen":
        return CheckedCodeGen(self.where)  # a copied graph has new nodes: check afresh


def check_python_code(code: PythonCode, nodes: list, root_module: str = "self", where: str = "graph") -> None:
    """Raise UnsafeSpecError unless ``code.src`` computes exactly ``nodes``."""
    # The AST is acyclic (freed by reference counting); pausing the cycle collector
    # while it is built and walked halves the time for large graphs.
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        _Checker(code, nodes, root_module).run()
    except _Refused as exc:
        why = str(exc)
    except Exception as exc:  # noqa: BLE001 - anything unexpected in FX's output fails closed
        why = f"{type(exc).__name__} while checking it: {show(str(exc), 200)}"
    else:
        return
    finally:
        if was_enabled:
            gc.enable()
    raise UnsafeSpecError(
        f"{where}: the code FX generated does not compute the validated graph: {why}",
        hint="this is a spec crafted to make the generated forward differ from its graph; nothing was built",
    )


def _same(expected: Any, got: Any) -> bool:
    """Exact equality of an expected graph argument and an evaluated operand."""
    from torch.fx import Node

    if isinstance(expected, Node):
        return got is expected
    # FX stores lists and dicts as its immutable_list / immutable_dict subclasses.
    kind: Any = list if isinstance(expected, list) else dict if isinstance(expected, dict) else type(expected)
    if type(got) is not kind:
        return False
    if isinstance(expected, (tuple, list)):
        return len(expected) == len(got) and all(_same(a, b) for a, b in zip(expected, got))
    if isinstance(expected, dict):
        return list(expected) == list(got) and all(_same(v, got[k]) for k, v in expected.items())
    if isinstance(expected, slice):
        return all(_same(a, b) for a, b in ((expected.start, got.start), (expected.stop, got.stop), (expected.step, got.step)))
    if isinstance(expected, float):
        if math.isnan(expected):
            return math.isnan(got)
        return expected == got and math.copysign(1.0, expected) == math.copysign(1.0, got)
    if isinstance(expected, complex):
        # repr() drops the sign of a zero real part ("(-0+1j)" reads back as 0+1j).
        return all(
            (math.isnan(a) and math.isnan(b)) or a == b
            for a, b in ((expected.real, got.real), (expected.imag, got.imag))
        )
    if expected is None or expected is Ellipsis:
        return got is expected
    return bool(expected == got)


class _Checker:
    def __init__(self, code: PythonCode, nodes: list, root_module: str) -> None:
        self.globals = code.globals
        self.src = code.src
        self.nodes = nodes
        self.root = root_module
        self.env: dict[str, Any] = {}
        self.locals: set[str] = set()

    # --- names -----------------------------------------------------------------

    def read(self, name: str, *, in_function: bool = True) -> Any:
        if in_function and name in self.locals:
            value = self.env.get(name, _UNBOUND)
            if value is _UNBOUND:
                raise _Refused(f"{show(name)} is read before it is bound (or after it was deleted)")
            return value
        if name in self.globals:
            return self.globals[name]
        if name in _BUILTINS:
            return _BUILTINS[name]
        raise _Refused(f"the name {show(name)} is neither a local, a generated global nor an allowed builtin")

    # --- literals and operands -------------------------------------------------

    def operand(self, expr: ast.expr, *, in_function: bool = True) -> Any:
        """A node value (fx.Node / _Arg) or a literal; no operation."""
        ev = lambda e: self.operand(e, in_function=in_function)  # noqa: E731
        if isinstance(expr, ast.Constant):
            if isinstance(expr.value, bytes):
                raise _Refused("a bytes constant")
            return expr.value
        if isinstance(expr, ast.Name) and isinstance(expr.ctx, ast.Load):
            value = self.read(expr.id, in_function=in_function)
            if isinstance(value, float) and expr.id in ("inf", "nan") and value is self.globals.get(expr.id):
                return value
            if value is Ellipsis and expr.id == "Ellipsis":
                return value
            from torch.fx import Node

            if isinstance(value, (Node, _Arg)):
                return value
            raise _Refused(f"the name {show(expr.id)} is used as a value but names {show(type(value).__name__)}")
        if isinstance(expr, (ast.Tuple, ast.List)):
            if any(isinstance(e, ast.Starred) for e in expr.elts):
                raise _Refused("a starred expression")
            items = [ev(e) for e in expr.elts]
            return tuple(items) if isinstance(expr, ast.Tuple) else items
        if isinstance(expr, ast.Dict):
            if any(k is None for k in expr.keys):
                raise _Refused("a ** expansion in a dict")
            keys = [ev(k) for k in expr.keys]
            if not all(isinstance(k, str) for k in keys):
                raise _Refused("a dict literal with a non-string key")
            return dict(zip(keys, (ev(v) for v in expr.values)))
        if isinstance(expr, ast.UnaryOp) and isinstance(expr.op, (ast.USub, ast.UAdd)):
            value = ev(expr.operand)
            if type(value) not in (int, float, complex):
                raise _Refused("a unary operation inside an operand")
            return -value if isinstance(expr.op, ast.USub) else +value
        if isinstance(expr, ast.BinOp) and isinstance(expr.op, (ast.Add, ast.Sub)):
            # Only the spelling of a complex literal: (re +/- imj).
            left, right = ev(expr.left), ev(expr.right)
            if type(left) not in (int, float) or type(right) is not complex or right.real != 0:
                raise _Refused("an operation nested inside an operand")
            return left + right if isinstance(expr.op, ast.Add) else left - right
        if isinstance(expr, ast.Call):
            fn = self.callee_object(expr.func, in_function=in_function)
            args = [ev(a) for a in expr.args]
            kwargs = {k.arg: ev(k.value) for k in expr.keywords if k.arg is not None}
            if len(kwargs) != len(expr.keywords) or any(isinstance(a, ast.Starred) for a in expr.args):
                raise _Refused("argument unpacking in a literal")
            if fn is builtins.slice and len(args) == 3 and not kwargs:
                return slice(*args)
            if fn is torch.device and not args and set(kwargs) <= {"type", "index"} and all(
                type(v) in (str, int) for v in kwargs.values()
            ):
                return torch.device(**kwargs)
            raise _Refused("a call inside an operand")
        if isinstance(expr, ast.Attribute) and isinstance(expr.value, ast.Name):
            base = self.read(expr.value.id, in_function=in_function)
            if base is torch and not expr.attr.startswith("_"):
                value = getattr(torch, expr.attr, None)
                if isinstance(value, (torch.dtype, torch.layout, torch.memory_format)):
                    return value
        raise _Refused(f"{show(ast.unparse(expr), 120)} is not a name or a literal")

    def callee_object(self, expr: ast.expr, *, in_function: bool = True) -> Any:
        """A global callable: a generated global or builtin, or a torch attribute chain."""
        if isinstance(expr, ast.Name):
            value = self.read(expr.id, in_function=in_function)
            from torch.fx import Node

            if isinstance(value, (Node, _Arg)):
                raise _Refused(f"{show(expr.id)} is called but holds a value of the graph")
            return value
        if isinstance(expr, ast.Attribute):
            chain: list[str] = []
            cur: ast.expr = expr
            while isinstance(cur, ast.Attribute):
                chain.append(cur.attr)
                cur = cur.value
            if not isinstance(cur, ast.Name) or self.read(cur.id, in_function=in_function) is not torch:
                raise _Refused(f"{show(ast.unparse(expr), 120)} is not a global function")
            obj: Any = torch
            for attr in reversed(chain):
                if attr.startswith("__"):
                    raise _Refused(f"dunder attribute {show(attr)}")
                obj = getattr(obj, attr)
            return obj
        raise _Refused(f"{show(ast.unparse(expr), 120)} is not a function name")

    def path(self, expr: ast.expr) -> str | None:
        """``self.a.b`` / ``getattr(self.a, "0")`` -> "a.b" / "a.0"; None if not a path."""
        atoms: list[str] = []
        cur = expr
        while True:
            if isinstance(cur, ast.Attribute):
                atoms.append(cur.attr)
                cur = cur.value
            elif (
                isinstance(cur, ast.Call) and isinstance(cur.func, ast.Name) and len(cur.args) == 2
                and not cur.keywords and isinstance(cur.args[1], ast.Constant) and isinstance(cur.args[1].value, str)
            ):
                if self.read(cur.func.id) is not builtins.getattr:
                    return None
                atoms.append(cur.args[1].value)
                cur = cur.args[0]
            else:
                break
        if not atoms or not isinstance(cur, ast.Name) or cur.id != self.root:
            return None
        if self.read(cur.id) != _Arg(self.root):
            raise _Refused(f"{show(self.root)} no longer holds the module")
        return ".".join(reversed(atoms))

    # --- one operation ---------------------------------------------------------

    def operation(self, expr: ast.expr) -> _Op:
        from torch.fx import Node

        path = self.path(expr)
        if path is not None:
            return _Op("get_attr", path, (), {})
        if isinstance(expr, ast.Call):
            if any(isinstance(a, ast.Starred) for a in expr.args) or any(k.arg is None for k in expr.keywords):
                raise _Refused("argument unpacking in a call")
            args = tuple(self.operand(a) for a in expr.args)
            kwargs = {k.arg: self.operand(k.value) for k in expr.keywords}
            module = self.path(expr.func)
            if module is not None:
                return _Op("call_module", module, args, kwargs)
            root = expr.func
            while isinstance(root, ast.Attribute):
                root = root.value
            if isinstance(expr.func, ast.Attribute) and not (isinstance(root, ast.Name) and self.read(root.id) is torch):
                obj = self.operand(expr.func.value)
                if not isinstance(obj, (Node, _Arg)):
                    raise _Refused("a method call on a literal")
                return _Op("call_method", expr.func.attr, (obj, *args), kwargs)
            return _Op("call_function", self.callee_object(expr.func), args, kwargs)
        if isinstance(expr, ast.Attribute):
            obj = self.operand(expr.value)
            if not isinstance(obj, (Node, _Arg)):
                raise _Refused("an attribute of a literal")
            return _Op("call_function", builtins.getattr, (obj, expr.attr), {})
        if isinstance(expr, ast.BinOp) and type(expr.op) in _BINOPS:
            return _Op("call_function", _BINOPS[type(expr.op)], (self.operand(expr.left), self.operand(expr.right)), {})
        if isinstance(expr, ast.UnaryOp) and type(expr.op) in _UNARY:
            return _Op("call_function", _UNARY[type(expr.op)], (self.operand(expr.operand),), {})
        if isinstance(expr, ast.Compare) and len(expr.ops) == 1 and type(expr.ops[0]) in _COMPARE:
            fn = _COMPARE[type(expr.ops[0])]
            return _Op("call_function", fn, (self.operand(expr.left), self.operand(expr.comparators[0])), {})
        if isinstance(expr, ast.Subscript) and not isinstance(expr.slice, ast.Slice):
            return _Op("call_function", operator.getitem, (self.operand(expr.value), self.operand(expr.slice)), {})
        raise _Refused(f"{show(ast.unparse(expr), 120)} is not one operation")

    @staticmethod
    def matches(node: Any, got: _Op) -> bool:
        if node.op != got.op:
            return False
        if node.op == "call_function":
            if node.target is not got.target:
                return False
        elif node.target != got.target:
            return False
        if set(node.kwargs) != set(got.kwargs):
            return False
        return _same(tuple(node.args), got.args) and all(_same(v, got.kwargs[k]) for k, v in node.kwargs.items())

    # --- the function -------------------------------------------------------------

    def run(self) -> None:
        try:
            # Parsing to an AST creates no code object; the filename tells audit hooks so.
            tree = ast.parse(self.src, filename=PARSE_FILENAME)
        except (SyntaxError, ValueError) as exc:
            raise _Refused(f"it does not parse ({type(exc).__name__}: {show(str(exc), 120)})") from None
        if len(tree.body) != 1 or not isinstance(tree.body[0], ast.FunctionDef):
            raise _Refused("the module holds more than the forward function")
        fn = tree.body[0]
        a = fn.args
        if fn.name != "forward" or fn.decorator_list or fn.returns or a.posonlyargs or a.vararg or a.kwonlyargs or a.kwarg:
            raise _Refused("the forward function's signature has unexpected parts")
        placeholders = [n for n in self.nodes if n.op == "placeholder"]
        names = [arg.arg for arg in a.args]
        if names != [self.root, *(str(p.target) for p in placeholders)] or any(arg.annotation for arg in a.args):
            raise _Refused(f"forward's arguments {show(names, 200)} are not the graph's placeholders")
        self.locals = set(names) | {t.id for t in ast.walk(fn) if isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
        # Defaults are evaluated where forward is defined: module globals only.
        with_default = [p for p in placeholders if p.args]
        if len(a.defaults) != len(with_default) or placeholders[len(placeholders) - len(with_default) :] != with_default:
            raise _Refused("argument defaults differ from the graph's")
        for p, default in zip(with_default, a.defaults):
            if not _same(p.args[0], self.operand(default, in_function=False)):
                raise _Refused(f"the default of {show(p.target)} differs from the graph's")
        self.env = {name: _Arg(name) for name in names}
        self.body(list(fn.body))

    def bind(self, target: ast.expr, value: Any) -> None:
        if not isinstance(target, ast.Name):
            raise _Refused("an assignment to something other than a name")
        self.env[target.id] = value

    def body(self, stmts: list[ast.stmt]) -> None:
        i = 0

        def take() -> ast.stmt:
            nonlocal i
            if i >= len(stmts):
                raise _Refused("the code ends before the graph does")
            i += 1
            return stmts[i - 1]

        def single_assign(stmt: ast.stmt) -> tuple[ast.expr, ast.expr] | None:
            if isinstance(stmt, ast.Assign) and len(stmt.targets) == 1 and not isinstance(stmt.targets[0], ast.Tuple):
                return stmt.targets[0], stmt.value
            return None

        for node in self.nodes:
            where = f"node {show(node.name)}"
            if node.op == "placeholder":
                nxt = single_assign(stmts[i]) if i < len(stmts) else None
                if nxt and isinstance(nxt[1], ast.Name) and self.env.get(nxt[1].id) == _Arg(str(node.target)) \
                        and nxt[1].id in self.locals:
                    take()
                    self.bind(nxt[0], node)
                elif self.env.get(str(node.target)) == _Arg(str(node.target)):
                    self.env[str(node.target)] = node
                else:
                    raise _Refused(f"{where}: argument {show(node.target)} is not what the placeholder reads")
                continue
            stmt = take()
            if node.op == "output":
                if not isinstance(stmt, ast.Return) or stmt.value is None:
                    raise _Refused(f"{where}: expected the return statement")
                if not _same(node.args[0], self.operand(stmt.value)):
                    raise _Refused(f"{where}: the returned value differs from the graph's output")
                break
            pair = single_assign(stmt)
            if isinstance(stmt, ast.AugAssign) and isinstance(stmt.target, ast.Name) and type(stmt.op) in _INPLACE:
                # FX prints operator.iadd(a, b) as "a += b;  iadd = a".
                got = _Op("call_function", _INPLACE[type(stmt.op)],
                          (self.read(stmt.target.id), self.operand(stmt.value)), {})  # fmt: skip
                self.expect(node, got, where)
                self.env[stmt.target.id] = node
                alias = single_assign(take())
                if not alias or not isinstance(alias[1], ast.Name) or alias[1].id != stmt.target.id:
                    raise _Refused(f"{where}: an in-place operation without its result binding")
                self.bind(alias[0], node)
            elif pair and isinstance(pair[0], ast.Subscript):
                # operator.setitem(a, i, v) prints as "a[i] = v;  setitem = a".
                got = _Op("call_function", operator.setitem,
                          (self.operand(pair[0].value), self.operand(pair[0].slice), self.operand(pair[1])), {})  # fmt: skip
                self.expect(node, got, where)
                alias = single_assign(take())
                if not alias or not _same(node.args[0], self.operand(alias[1])):
                    raise _Refused(f"{where}: an item assignment without its result binding")
                self.bind(alias[0], node)
            elif pair:
                self.expect(node, self.operation(pair[1]), where)
                self.bind(pair[0], node)
            else:
                raise _Refused(f"{where}: the statement {show(ast.unparse(stmt), 120)} is not an operation")
            # FX frees values after their last use: "a = b = None".
            if i < len(stmts) and self.is_deletion(stmts[i]):
                for t in take().targets:  # type: ignore[attr-defined]
                    self.env[t.id] = _UNBOUND
        else:
            raise _Refused("the graph has no output")
        if i != len(stmts):
            raise _Refused("statements follow the return")

    def is_deletion(self, stmt: ast.stmt) -> bool:
        if not (isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Constant) and stmt.value.value is None):
            return False
        for t in stmt.targets:
            if not isinstance(t, ast.Name) or self.env.get(t.id, _UNBOUND) is _UNBOUND or t.id == self.root:
                raise _Refused(f"the deletion {show(ast.unparse(stmt), 120)} frees something that is not a bound value")
        return True

    def expect(self, node: Any, got: _Op, where: str) -> None:
        if not self.matches(node, got):
            raise _Refused(
                f"{where}: the code computes {show(got.op)} {show(got.target)} on other arguments "
                f"than the graph's {show(node.op)} {show(node.target)}"
            )
