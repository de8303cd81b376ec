"""Strict JSON for everything the sandbox writes, and small shape helpers.

``json.loads`` turns a few bytes into large objects (``{},`` is 3 bytes and a
72-byte dict), so a junk document at the size cap could cost the host 20-30x
its size. :func:`prescan` looks at the raw bytes first, with C-speed bytes
operations only (count, translate, replace, one regex over a small
projection), and refuses anything whose parse could need more than
``MEMORY_FACTOR`` x the file-size cap, nests deeper than the depth cap, or
holds a string longer than the string cap. Measured in
tests/test_channel_memory.py.
"""

from __future__ import annotations

import json
import math
import re
from typing import Any

from .._errors import SpecTooLargeError, UnsafeSpecError
from .._records import record
from ._names import show

__all__ = ["load_json", "prescan", "JsonScan", "MEMORY_FACTOR", "obj", "boolean", "dict_capped"]

# Peak host memory for reading and parsing a JSON file stays under this many
# times its file-size cap (raw bytes + decoded text + parsed objects).
MEMORY_FACTOR = 4
DEFAULT_MAX_DEPTH = 64
DEFAULT_MAX_STRING_BYTES = 1 << 20

# Upper bounds of what CPython 3.11-3.13 (64-bit) allocates per token while
# json.loads builds objects with our object_pairs_hook, from the measurements
# in tests/test_channel_memory.py (worst shapes: "{},", "[0],", '{"k":0}'):
_PER_VALUE = 40  # a value's slot in its container plus a boxed int/float
_PER_OBJECT = 120  # dict + the transient pairs list
_PER_ARRAY = 64
_PER_PAIR = 110  # (key, value) tuple, pairs-list slot, dict entry, key memo entry (the key str is a string)
_PER_STRING = 56  # str header beyond the value slot (72-80 bytes for non-ASCII; contents counted apart)

_STRUCTURE = b"[]{}\""
_DROP_ALL_BUT_STRUCTURE = bytes(b for b in range(256) if b not in _STRUCTURE)
_BRACES_AS_BRACKETS = bytes.maketrans(b"{}", b"[]")
_QUOTED = re.compile(rb'"[^"]*+"')
_SURROGATE_ESCAPE = re.compile(rb"\\u[dD][89abAB]")


# --- JSON --------------------------------------------------------------------


def _reject_constant(name: str) -> Any:
    raise ValueError(f"{name} is not allowed in safehub JSON")


def _finite_float(text: str) -> float:
    # json.loads turns an overflowing literal such as 1e400 into inf: NaN/Infinity by
    # another spelling. Non-finite values have their own literal encoding.
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"the number {text[:40]} is not finite")
    return value


def _no_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in pairs:
        if k in out:
            raise ValueError(f"duplicate key {k[:80]!r}")
        out[k] = v
    return out


@record(frozen=True)
class JsonScan:
    """What a pre-scan of untrusted JSON found, before any decoding."""

    depth: int
    values: int  # an upper bound on the number of values (containers and scalars)
    memory_bytes: int  # an upper bound on peak memory for decoding and parsing, raw bytes included


def _text_kind(raw: bytes) -> int:
    """Bytes per character of the str that decoding ``raw`` makes (CPython's PEP 393)."""
    if raw.isascii():
        return 1
    if re.search(rb"[\xf0-\xff]", raw):
        return 4  # characters beyond the BMP
    if re.search(rb"[\xc4-\xef]", raw):
        return 2  # characters beyond Latin-1
    return 1


def _unescaped(raw: bytes) -> bytes:
    """``raw`` without escaped backslashes and escaped quotes (left to right, as a
    parser reads them): every quote left opens or closes a string."""
    if b"\\" not in raw:
        return raw
    return raw.replace(b"\\\\", b"").replace(b'\\"', b"")


def _depth(text: bytes, what: str, max_depth: int) -> int:
    """Nesting depth of ``text`` (unescaped), strings excluded, in at most
    ``max_depth`` passes over a projection that keeps only brackets."""
    # Keep brackets, braces and quotes only; strings become '"..."' runs of brackets.
    proj = text.translate(None, _DROP_ALL_BUT_STRUCTURE).replace(b"\\", b"")
    proj = _QUOTED.sub(b"", proj.replace(b'""', b""))
    if b'"' in proj:
        raise UnsafeSpecError(f"{what} is not valid JSON: a string is not closed")
    proj = proj.translate(_BRACES_AS_BRACKETS)
    depth = 0
    while proj:
        if depth >= max_depth:  # another level is left
            raise SpecTooLargeError(f"{what} nests deeper than {max_depth} levels")
        shorter = proj.replace(b"[]", b"")
        if len(shorter) == len(proj):
            raise UnsafeSpecError(f"{what} is not valid JSON: its brackets do not balance")
        proj = shorter
        depth += 1
    return depth


def _long_string(text: bytes, max_bytes: int) -> bool:
    """Whether a string in ``text`` (unescaped) is longer than ``max_bytes`` (escape
    sequences count their bytes). A long run between a closing and an opening quote
    is not a string: the parity of the quotes before it says which it is."""
    pattern = re.compile(rb'"[^"]{%d}' % (max_bytes + 1))
    for m in pattern.finditer(text):
        if text.count(b'"', 0, m.start()) % 2 == 0:
            return True
    return False


def prescan(raw: bytes, what: str, *, cap_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
            max_string_bytes: int = DEFAULT_MAX_STRING_BYTES) -> JsonScan:
    """Bound the cost of parsing ``raw`` before parsing it. Raises SpecTooLargeError
    when its parse could take more than MEMORY_FACTOR x ``cap_bytes`` of memory, it
    nests deeper than ``max_depth`` or holds a string over ``max_string_bytes``."""
    n = len(raw)
    if n > cap_bytes:
        raise SpecTooLargeError(f"{what} is {n} bytes, over the {cap_bytes}-byte cap")
    objects, arrays = raw.count(b"{"), raw.count(b"[")
    commas, colons, quotes = raw.count(b","), raw.count(b":"), raw.count(b'"')
    # Counted in strings too: that only raises the estimate.
    values = commas + objects + arrays + 1
    kind = _text_kind(raw)
    # One \\u escape widens its whole string: a surrogate pair to 4 bytes a character.
    contents_kind = kind
    if b"\\u" in raw:
        contents_kind = 4 if _SURROGATE_ESCAPE.search(raw) else max(kind, 2)
    memory = (
        n  # the raw bytes
        + n * kind  # the decoded text
        + n * contents_kind  # string contents: at most every character
        + _PER_VALUE * values
        + _PER_OBJECT * objects
        + _PER_ARRAY * arrays
        + _PER_PAIR * colons
        + _PER_STRING * (quotes // 2)
    )
    budget = MEMORY_FACTOR * cap_bytes
    if memory > budget:
        raise SpecTooLargeError(
            f"{what} could take up to {memory >> 20} MiB of host memory to parse ({values} values in {n} bytes), "
            f"over the budget of {MEMORY_FACTOR} x its {cap_bytes}-byte cap",
            hint="a real export this dense is unexpected; if it is, raise the matching ChannelLimits cap",
        )
    text = _unescaped(raw)
    if _long_string(text, max_string_bytes):
        raise SpecTooLargeError(f"{what} holds a string longer than {max_string_bytes} bytes")
    return JsonScan(depth=_depth(text, what, max_depth), values=values, memory_bytes=memory)


def load_json(raw: bytes, what: str, *, cap_bytes: int, max_depth: int = DEFAULT_MAX_DEPTH,
              max_string_bytes: int = DEFAULT_MAX_STRING_BYTES) -> Any:
    """Strict JSON: UTF-8, no NaN/Infinity (nor 1e400), no duplicate keys, bounded nesting, and
    a parse whose memory is bounded by :func:`prescan` before it starts."""
    prescan(raw, what, cap_bytes=cap_bytes, max_depth=max_depth, max_string_bytes=max_string_bytes)
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError:
        raise UnsafeSpecError(f"{what} is not UTF-8") from None
    try:
        return json.loads(text, parse_constant=_reject_constant, parse_float=_finite_float,
                          object_pairs_hook=_no_duplicates)
    except RecursionError:
        raise SpecTooLargeError(f"{what} is nested too deeply to parse") from None
    except ValueError as exc:  # JSONDecodeError, NaN/Infinity, duplicates, huge ints
        raise UnsafeSpecError(f"{what} is not valid safehub JSON: {show(str(exc), 200)}") from None


def obj(value: Any, where: str, required: tuple[str, ...], optional: tuple[str, ...] = ()) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsafeSpecError(f"{where} must be a JSON object")
    missing = [k for k in required if k not in value]
    if missing:
        raise UnsafeSpecError(f"{where} lacks {', '.join(missing)}")
    extra = [k for k in value if k not in required and k not in optional]
    if extra:
        raise UnsafeSpecError(f"{where} has unknown keys {show(sorted(extra)[:5])}", hint="the producer and host disagree on the format version")
    return value


def boolean(value: Any, where: str) -> bool:
    if not isinstance(value, bool):
        raise UnsafeSpecError(f"{where} must be true or false")
    return value


def dict_capped(value: Any, where: str, cap: int) -> dict[str, Any]:
    if not isinstance(value, dict):
        raise UnsafeSpecError(f"{where} must be a JSON object")
    if len(value) > cap:
        raise SpecTooLargeError(f"{where} has {len(value)} entries, over the cap of {cap}")
    return value
