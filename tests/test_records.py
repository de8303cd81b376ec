"""``@record`` (safehub/_records.py) against ``@dataclass``: every record in safehub is
compared with the ``@dataclass`` twin of its class body, and crafted classes cover each
option (defaults, factories, ``init=False``, ``__post_init__``, ``compare``/``hash``)."""

from __future__ import annotations

import copy
import dataclasses
import importlib
import inspect
import pkgutil
from typing import Any

import pytest

import safehub
from safehub._records import record

_SKIP_MODULES = ("safehub.__main__",)


def _all_records() -> list[type]:
    found: dict[str, type] = {}
    for info in pkgutil.walk_packages(safehub.__path__, "safehub."):
        if info.name in _SKIP_MODULES:
            continue
        mod = importlib.import_module(info.name)
        for obj in vars(mod).values():
            if isinstance(obj, type) and "__safehub_record__" in obj.__dict__:
                found[f"{obj.__module__}.{obj.__qualname__}"] = obj
    return [found[k] for k in sorted(found)]


RECORDS = _all_records()


def test_every_dataclass_in_safehub_is_a_record():
    """A plain @dataclass costs a fresh process ~0.5 ms more at import (see _records.py)."""
    assert len(RECORDS) >= 50
    plain = []
    for info in pkgutil.walk_packages(safehub.__path__, "safehub."):
        if info.name in _SKIP_MODULES:
            continue
        for obj in vars(importlib.import_module(info.name)).values():
            if (isinstance(obj, type) and obj.__module__ == info.name and dataclasses.is_dataclass(obj)
                    and "__safehub_record__" not in obj.__dict__):
                plain.append(f"{info.name}.{obj.__qualname__}")
    assert not plain, f"use @record for {plain}"


def _twin(cls: type) -> type:
    """The @dataclass of ``cls``'s class body, with the same options."""
    params = cls.__safehub_record__
    body = {k: v for k, v in cls.__dict__.items()
            if k not in ("__dict__", "__weakref__", "__dataclass_fields__", "__dataclass_params__", "__match_args__",
                         "__safehub_record__", "__init__", "__repr__", "__eq__", "__hash__", "__setattr__",
                         "__delattr__")}
    for f in cls.__dataclass_fields__.values():
        body[f.name] = dataclasses.field(default=f.default, default_factory=f.default_factory, init=f.init,
                                         repr=f.repr, hash=f.hash, compare=f.compare)
    return dataclasses.dataclass(frozen=params["frozen"], eq=params["eq"])(type(cls.__name__, cls.__bases__, body))


class _Value:
    """A field value that also survives ``__post_init__``s that compute (``root / "out"``)."""

    def __init__(self, tag: str) -> None:
        self.tag = tag

    def __repr__(self) -> str:
        return f"<{self.tag}>"

    def __truediv__(self, other: Any) -> _Value:
        return _Value(f"{self.tag}/{other}")

    def __eq__(self, other: object) -> bool:
        return isinstance(other, _Value) and other.tag == self.tag

    def __hash__(self) -> int:
        return hash(self.tag)

    def __deepcopy__(self, memo: dict) -> _Value:
        return _Value(self.tag)


def _try(act: Any) -> Any:
    try:
        return act()
    except Exception as exc:  # noqa: BLE001 - compared with the twin's
        return (type(exc).__name__, str(exc))


def _required(cls: type) -> dict[str, Any]:
    sig = inspect.signature(cls)
    return {n: _Value(n) for n, p in sig.parameters.items() if p.default is inspect.Parameter.empty}


def _behaviour(cls: type) -> dict[str, Any]:
    out: dict[str, Any] = {"signature": str(inspect.signature(cls)),
                           "fields": [(f.name, f.init, f.repr, f.compare, f.hash) for f in dataclasses.fields(cls)],
                           "match_args": getattr(cls, "__match_args__", None),
                           "hashable": cls.__hash__ is not None,
                           "init_annotations": dict(cls.__init__.__annotations__)}
    kwargs = _required(cls)
    try:
        a, b = cls(**kwargs), cls(**kwargs)
    except Exception as exc:  # noqa: BLE001 - a __post_init__ that checks its values: both must refuse alike
        out["init_error"] = (type(exc), str(exc))
        return out
    out["repr"] = repr(a)
    out["eq"] = a == b
    out["eq_other"] = a.__eq__(object())
    out["hash"] = _try(lambda: "identity" if hash(a) == object.__hash__(a) else hash(a)) if out["hashable"] else None
    out["asdict"] = _try(lambda: repr(dataclasses.asdict(a)))
    out["replace"] = repr(dataclasses.replace(a))
    out["deepcopy"] = _try(lambda: repr(copy.deepcopy(a)))
    for name in kwargs:
        changed = dataclasses.replace(a, **{name: _Value(name + "'")})
        out[f"eq_after_{name}"] = changed == a
    first = dataclasses.fields(cls)[0].name if dataclasses.fields(cls) else None
    if first is not None:
        for what, act in (("set", lambda: setattr(a, first, _Value("x"))), ("del", lambda: delattr(a, first)),
                          ("set_new", lambda: setattr(a, "not_a_field", 1))):
            out[what] = _try(act)
    return out


@pytest.mark.parametrize("cls", RECORDS, ids=lambda c: f"{c.__module__}.{c.__qualname__}")
def test_a_record_behaves_as_its_dataclass_twin(cls):
    assert _behaviour(cls) == _behaviour(_twin(cls))


def _crafted(deco: Any) -> list[type]:
    @deco(frozen=True)
    class Frozen:
        """f"""

        a: int
        b: str = "b"
        c: dict = dataclasses.field(default_factory=dict, hash=False, compare=False)
        d: tuple = dataclasses.field(default_factory=tuple, repr=False)
        e: int = dataclasses.field(default=5, compare=False)

    @deco()
    class Plain:
        """p"""

        root: Any
        out: Any = dataclasses.field(init=False)
        seen: set = dataclasses.field(default_factory=set)
        fixed: int = dataclasses.field(default=3, init=False)
        made: list = dataclasses.field(default_factory=list, init=False)

        def __post_init__(self) -> None:
            self.out = (self.root, "out")

    @deco(eq=False)
    class NoEq:
        """n"""

        x: int = 0

    @deco(frozen=True, eq=False)
    class FrozenNoEq:
        """fn"""

        x: int = 0

    @deco(frozen=True)
    class Empty:
        """e"""

    @deco(frozen=True)
    class One:
        """o"""

        x: int

    return [Frozen, Plain, NoEq, FrozenNoEq, Empty, One]


def test_crafted_records_behave_as_dataclasses():
    ours = _crafted(record)
    theirs = _crafted(lambda **kw: dataclasses.dataclass(**kw))
    for a, b in zip(ours, theirs):
        assert _behaviour(a) == _behaviour(b), a.__qualname__
    frozen = ours[0](1)
    assert frozen == ours[0](1, c={"x": 1}, e=9)  # c and e are not compared
    assert hash(frozen) == hash(ours[0](1, c={"y": 2}))
    assert frozen != ours[0](2)
    plain = ours[1]("r")
    assert plain.out == ("r", "out") and plain.fixed == 3 and plain.made == [] and plain.seen == set()
    assert ours[1]("r").seen is not plain.seen  # a new default per instance
    with pytest.raises(dataclasses.FrozenInstanceError):
        frozen.a = 2
    with pytest.raises(TypeError):
        ours[0]()  # a is required
    with pytest.raises(TypeError):
        ours[0](1, "b", {}, [], 5, 6)


@pytest.mark.parametrize("body", [
    {"__eq__": lambda self, other: True},
    {"__init__": lambda self: None},
    {"__annotations__": {"x": "InitVar[int]"}},
    {"__annotations__": {"x": "int"}, "x": dataclasses.field(kw_only=True)},
])
def test_what_record_does_not_generate_is_refused_at_import(body):
    with pytest.raises(TypeError, match="use @dataclass"):
        record(type("C", (), {"__doc__": "c", "__module__": __name__, **body}))


def test_a_dataclass_base_is_refused():
    @dataclasses.dataclass
    class Base:
        """b"""

        x: int = 0

    with pytest.raises(TypeError, match="use @dataclass"):
        record(type("C", (Base,), {"__doc__": "c", "__module__": __name__}))
