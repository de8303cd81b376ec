"""``@record``: ``@dataclass`` at a third of its import-time cost.

``@dataclass(frozen=True)`` compiles six generated methods, one ``exec`` each: about
0.7 ms a class on the 2-core machine, ~35 ms for safehub's records in every fresh
process that loads a model, ahead of the host's ``import torch``. ``@record`` lets
``dataclasses`` process the fields (so ``fields``, ``replace``, ``asdict`` and
``is_dataclass`` work as usual) without generating anything, compiles ``__init__``
alone (its signature must be real), and makes the other methods closures over the
field names: 0.24 ms a frozen class, 0.18 ms another.

What it makes is what ``@dataclass`` / ``@dataclass(frozen=True)`` would (``eq=False``
too):
``__init__`` (defaults, ``default_factory``, ``init=False`` fields,
``__post_init__``), ``__repr__``, ``__eq__``, ``__hash__`` (None unless frozen) and,
when frozen, ``__setattr__`` / ``__delattr__`` raising ``FrozenInstanceError``.
tests/test_records.py compares every record in safehub with the ``@dataclass`` twin
of its class body. A class that uses anything else (``kw_only``, ``InitVar``, a
dataclass base, its own ``__eq__`` ...) is refused at import: use ``@dataclass`` there.
"""

from __future__ import annotations

import dataclasses
import operator
import reprlib
import sys
from typing import Any, Callable, TypeVar, overload

_T = TypeVar("_T", bound=type)
_F = TypeVar("_F")

if sys.version_info >= (3, 11):
    from typing import dataclass_transform
else:  # (3.10: only type checkers read it)
    def dataclass_transform(**_: Any) -> Callable[[_F], _F]:
        return lambda fn: fn

__all__ = ["record"]

_GENERATED = ("__init__", "__repr__", "__eq__", "__hash__", "__setattr__", "__delattr__")


class _HasDefaultFactory:
    """The default of an ``__init__`` parameter whose field has a ``default_factory``."""

    def __repr__(self) -> str:
        return "<factory>"


_HAS_DEFAULT_FACTORY = _HasDefaultFactory()


@overload
def record(cls: _T, /) -> _T: ...
@overload
def record(*, frozen: bool = False, eq: bool = True) -> Callable[[_T], _T]: ...
@dataclass_transform(field_specifiers=(dataclasses.field, dataclasses.Field))  # type checkers: a @dataclass
def record(cls: Any = None, /, *, frozen: bool = False, eq: bool = True) -> Any:
    """``@dataclass`` with these two options: the same class, its ``__init__`` compiled
    alone and the other methods closures (nothing else to compile)."""

    def wrap(c: _T) -> _T:
        return _process(c, frozen, eq)

    return wrap if cls is None else wrap(cls)


def _check_plain(cls: type) -> None:
    """Refuse what :func:`_process` does not generate exactly (a developer's error, at import)."""
    own = [name for name in _GENERATED if name in cls.__dict__]
    annotations = [str(a) for a in cls.__dict__.get("__annotations__", {}).values()]
    kw_only = [k for k, v in cls.__dict__.items() if isinstance(v, dataclasses.Field) and v.kw_only is True]
    if own or kw_only or any("InitVar" in a or "KW_ONLY" in a for a in annotations) or any(
        dataclasses.is_dataclass(base) for base in cls.__mro__[1:]
    ):
        raise TypeError(f"@record {cls.__qualname__}: defines {own or 'kw_only, InitVar or a dataclass base'}, "
                        "which @record does not generate; use @dataclass for it")


def _process(cls: _T, frozen: bool, eq: bool) -> _T:
    _check_plain(cls)
    # Fields only: with nothing to generate, dataclasses compiles nothing.
    dataclasses.dataclass(init=False, repr=False, eq=False, frozen=False)(cls)
    fields = dataclasses.fields(cls)
    names = tuple(f.name for f in fields)
    local: dict[str, Any] = {"__HAS_DEFAULT_FACTORY": _HAS_DEFAULT_FACTORY, "__object_setattr": object.__setattr__}
    params: list[str] = []
    body: list[str] = []
    seen_default = False
    for f in fields:
        has_default = f.default is not dataclasses.MISSING
        has_factory = f.default_factory is not dataclasses.MISSING
        if has_default:
            local[f"__dflt_{f.name}"] = f.default
        if has_factory:
            local[f"__factory_{f.name}"] = f.default_factory
        if f.init:
            if has_default:
                params.append(f"{f.name}=__dflt_{f.name}")
                value = f.name
            elif has_factory:
                params.append(f"{f.name}=__HAS_DEFAULT_FACTORY")
                value = f"__factory_{f.name}() if {f.name} is __HAS_DEFAULT_FACTORY else {f.name}"
            else:
                if seen_default:
                    raise TypeError(f"non-default argument {f.name!r} follows default argument")
                params.append(f.name)
                value = f.name
            seen_default = seen_default or has_default or has_factory
        elif has_default:
            value = f"__dflt_{f.name}"
        elif has_factory:
            value = f"__factory_{f.name}()"
        else:
            continue
        body.append(f"  __object_setattr(self, {f.name!r}, {value})" if frozen else f"  self.{f.name} = {value}")
    if hasattr(cls, "__post_init__"):
        body.append("  self.__post_init__()")
    text = (f"def __create_fn__({', '.join(local)}):\n"
            f" def __init__(self{''.join(', ' + p for p in params)}):\n"
            + "\n".join(body or ["  pass"]) + "\n return __init__\n")
    module = sys.modules.get(cls.__module__)
    namespace: dict[str, Any] = {}
    exec(text, module.__dict__ if module is not None else {}, namespace)  # noqa: S102 - our own generated source
    init = namespace["__create_fn__"](**local)
    init.__qualname__ = f"{cls.__qualname__}.__init__"
    init.__annotations__ = {**{f.name: f.type for f in fields if f.init}, "return": None}
    methods: dict[str, Any] = {"__init__": init, **_compare_and_show(fields, eq)}
    if eq:  # (eq=False: object's __eq__ and __hash__, as @dataclass)
        methods["__hash__"] = _hash(fields) if frozen else None  # eq without frozen: unhashable, as @dataclass
    if frozen:
        methods.update(_frozen(cls, frozenset(names)))
    for name, fn in methods.items():
        if fn is not None:
            fn.__qualname__ = f"{cls.__qualname__}.{name}"
        setattr(cls, name, fn)
    cls.__safehub_record__ = {"frozen": frozen, "eq": eq}  # type: ignore[attr-defined]  # (tests/test_records.py)
    return cls


def _values(names: list[str]) -> Callable[[Any], tuple[Any, ...]]:
    """``obj -> (obj.a, obj.b, ...)`` for ``names``, as @dataclass's generated tuples."""
    if len(names) >= 2:
        return operator.attrgetter(*names)  # a tuple for two names or more
    if len(names) == 1:
        only = operator.attrgetter(names[0])
        return lambda obj: (only(obj),)
    return lambda obj: ()


def _compare_and_show(fields: tuple[dataclasses.Field, ...], eq: bool) -> dict[str, Callable[..., Any]]:
    """``__repr__`` and, with ``eq``, ``__eq__`` (the bodies @dataclass generates, as closures)."""
    shown = [f.name for f in fields if f.repr]
    compared = _values([f.name for f in fields if f.compare])

    @reprlib.recursive_repr()
    def __repr__(self: Any) -> str:
        return self.__class__.__qualname__ + "(" + ", ".join(f"{n}={getattr(self, n)!r}" for n in shown) + ")"

    def __eq__(self: Any, other: Any) -> Any:
        if other.__class__ is self.__class__:
            return compared(self) == compared(other)
        return NotImplemented

    return {"__repr__": __repr__, "__eq__": __eq__} if eq else {"__repr__": __repr__}


def _hash(fields: tuple[dataclasses.Field, ...]) -> Callable[[Any], int]:
    hashed = _values([f.name for f in fields if (f.hash is None and f.compare) or f.hash])

    def __hash__(self: Any) -> int:
        return hash(hashed(self))

    return __hash__


def _frozen(cls: type, names: frozenset[str]) -> dict[str, Callable[..., Any]]:
    owner: Any = cls  # (for super(): mypy narrows cls after the identity check)

    def __setattr__(self: Any, name: str, value: Any) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot assign to field {name!r}")
        super(owner, self).__setattr__(name, value)

    def __delattr__(self: Any, name: str) -> None:
        if type(self) is cls or name in names:
            raise dataclasses.FrozenInstanceError(f"cannot delete field {name!r}")
        super(owner, self).__delattr__(name)

    return {"__setattr__": __setattr__, "__delattr__": __delattr__}
