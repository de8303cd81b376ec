"""What an entrypoint returned when it was an object holding modules.

A GAN wrapper exposing ``.netG`` comes back as a read-only namespace: the
modules (rebuilt like any other) and the plain data attributes (int, float,
str, bool, None and tuples of them). None of the object's methods or class
travel: they are code.
"""

from __future__ import annotations

from types import MappingProxyType
from typing import Any

__all__ = ["SafehubNamespace"]


class SafehubNamespace:
    """Attribute access to what the returned object held; assignments are refused."""

    __slots__ = ("_safehub_type", "_safehub_attrs")

    def __init__(self, type_name: str, attrs: dict[str, Any]) -> None:
        object.__setattr__(self, "_safehub_type", type_name)
        object.__setattr__(self, "_safehub_attrs", MappingProxyType(dict(attrs)))

    def __getattr__(self, name: str) -> Any:
        try:
            return self._safehub_attrs[name]
        except KeyError:
            raise AttributeError(
                f"the {self._safehub_type} object the entrypoint returned has no carried attribute {name!r} "
                f"(carried: {', '.join(sorted(self._safehub_attrs)) or 'none'}; methods are code and do not travel)"
            ) from None

    def __setattr__(self, name: str, value: Any) -> None:
        raise AttributeError(f"a safehub namespace is read-only (cannot set {name!r})")

    def __delattr__(self, name: str) -> None:
        raise AttributeError(f"a safehub namespace is read-only (cannot delete {name!r})")

    def __dir__(self) -> list[str]:
        return sorted(self._safehub_attrs)

    def __repr__(self) -> str:
        return f"SafehubNamespace({self._safehub_type}: {', '.join(sorted(self._safehub_attrs))})"

    def __reduce__(self) -> tuple:
        # copy/deepcopy/pickle rebuild through __init__ (the slots are read-only).
        return (SafehubNamespace, (self._safehub_type, dict(self._safehub_attrs)))

    def safehub_attrs(self) -> MappingProxyType:
        return self._safehub_attrs

    @property
    def safehub_type(self) -> str:
        return self._safehub_type
