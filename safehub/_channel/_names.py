"""Identifier and path rules for strings from the sandbox.

These strings reach FX code generation verbatim (placeholder targets, kwarg
keys) or as ``getattr(self, "<atom>")`` without escaping (sinks 10 and 11 of
shared/design/return-channel.md), so the patterns are strict and checked before
any use.
"""

from __future__ import annotations

import keyword
import re

from .._errors import InvalidNameError, SpecTooLargeError, escape_untrusted
from ._limits import ChannelLimits

__all__ = ["IDENT_RE", "ATOM_RE", "check_ident", "check_path", "is_dunder", "show"]

IDENT_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_]*")
ATOM_RE = re.compile(r"[A-Za-z0-9_][A-Za-z0-9_-]*")


def show(text: object, limit: int = 80) -> str:
    """A short, escaped rendering of an untrusted value for error messages."""
    s = text if isinstance(text, str) else repr(text)
    if len(s) > limit:
        s = s[:limit] + "..."
    return repr(escape_untrusted(s, limit=limit + 3))


def is_dunder(name: str) -> bool:
    return len(name) > 4 and name.startswith("__") and name.endswith("__")


def check_ident(name: object, what: str, limits: ChannelLimits) -> str:
    """``name`` must be a Python identifier: ASCII, not a keyword, not a dunder."""
    if not isinstance(name, str):
        raise InvalidNameError(f"{what} must be a string, got {type(name).__name__}")
    if len(name) > limits.name_chars:
        raise SpecTooLargeError(f"{what} {show(name)} is longer than {limits.name_chars} characters")
    if not IDENT_RE.fullmatch(name) or keyword.iskeyword(name) or name.startswith("__"):
        raise InvalidNameError(
            f"{what} {show(name)} is not a plain identifier",
            hint="names must match [A-Za-z_][A-Za-z0-9_]*, not be a Python keyword and not start with '__'",
        )
    return name


def check_path(path: object, what: str, limits: ChannelLimits, reserved: frozenset[str] = frozenset()) -> tuple[str, ...]:
    """``path`` must be ``atom(.atom)*``; returns the atoms. ``reserved`` atoms
    (attributes of nn.Module / GraphModule) are refused: generated code would
    reach the attribute instead of the submodule."""
    if not isinstance(path, str):
        raise InvalidNameError(f"{what} must be a string, got {type(path).__name__}")
    if len(path) > limits.path_chars:
        raise SpecTooLargeError(f"{what} {show(path)} is longer than {limits.path_chars} characters")
    atoms = tuple(path.split("."))
    if len(atoms) > limits.path_atoms:
        raise SpecTooLargeError(f"{what} {show(path)} has more than {limits.path_atoms} parts")
    for atom in atoms:
        if len(atom) > limits.name_chars or not ATOM_RE.fullmatch(atom) or keyword.iskeyword(atom) or atom.startswith("__"):
            raise InvalidNameError(
                f"{what} {show(path)} has an invalid part {show(atom)}",
                hint="path parts must match [A-Za-z0-9_][A-Za-z0-9_-]*, not be a keyword and not start with '__'",
            )
        if atom in reserved:
            raise InvalidNameError(
                f"{what} {show(path)} uses {show(atom)}, which is an attribute of nn.Module/GraphModule",
                hint="rename that attribute in the model; safehub cannot carry it",
            )
    return atoms
