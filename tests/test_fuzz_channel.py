"""Property-based fuzzing of the return-channel validators: whatever the sandbox
writes, the only exceptions that may escape are safehub's typed UnsafeSpecError
family (or a successful, validated build)."""

from __future__ import annotations

import copy
import json
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

sys.path.insert(0, str(Path(__file__).resolve().parent / "hostile"))
import cases as corpus  # noqa: E402

from safehub._channel import ChannelLimits, rebuild_from_output  # noqa: E402
from safehub._channel._build import build_graphs  # noqa: E402
from safehub._channel._literals import LiteralContext, decode_literal  # noqa: E402
from safehub._channel._spec import parse_spec  # noqa: E402
from safehub._channel._weights import read_header  # noqa: E402
from safehub._errors import UnsafeSpecError  # noqa: E402

# CI runs a fixed, modest set; SAFEHUB_FUZZ_EXAMPLES=5000 runs a deeper, random campaign.
_DEEP = int(os.environ.get("SAFEHUB_FUZZ_EXAMPLES", "0"))
FUZZ = settings(
    max_examples=_DEEP or 200,
    deadline=None,  # no timed assertions in tests
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
    derandomize=not _DEEP,
)

# Strings that matter to the validators, mixed with arbitrary text.
_INTERESTING = st.sampled_from(
    ["x", "fc", "fc.weight", "scale", "m0", "relu", "torch.relu", "operator.mul", "aten.add.Tensor", "Linear",
     "__class__", "a.b", "1", "", "float32", "cpu", "cuda:0", "node", "tuple", "list", "dict", "float", "device",
     "dtype", "getattr", "builtins.getattr", "shape", "placeholder", "output", "call_function", "call_method",
     "get_attr", "call_module", "parameter", "buffer", "constant", "inf", "nan", "-1e5", "self", "torch"]
)  # fmt: skip
_TEXT = st.one_of(_INTERESTING, st.text(max_size=12))
JSON = st.recursive(
    st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**70), max_value=2**70),
        st.floats(allow_nan=False, allow_infinity=False),
        _TEXT,
    ),
    lambda children: st.one_of(
        st.lists(children, max_size=4),
        st.dictionaries(_TEXT, children, max_size=4),
    ),
    max_leaves=25,
)


def _paths(value: Any, prefix: tuple = ()) -> list[tuple]:
    """Every location inside a JSON value (dict keys and list indices)."""
    out = [prefix]
    if isinstance(value, dict):
        for k, v in value.items():
            out += _paths(v, prefix + (k,))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            out += _paths(v, prefix + (i,))
    return out


def _replace(doc: Any, path: tuple, new: Any) -> Any:
    if not path:
        return new
    doc = copy.deepcopy(doc)
    target = doc
    for step in path[:-1]:
        target = target[step]
    target[path[-1]] = new
    return doc


BASE = corpus.base_spec()
BASE_PATHS = _paths(BASE)


@FUZZ
@given(JSON)
def test_parse_spec_arbitrary_json(doc: Any) -> None:
    try:
        parse_spec(json.dumps(doc).encode(), limits=ChannelLimits())
    except UnsafeSpecError:
        pass


@FUZZ
@given(st.binary(max_size=200))
def test_parse_spec_arbitrary_bytes(raw: bytes) -> None:
    with pytest.raises(UnsafeSpecError):
        parse_spec(raw, limits=ChannelLimits())


@FUZZ
@given(st.sampled_from(BASE_PATHS), JSON)
def test_mutated_valid_spec_validates_or_refuses(path: tuple, new: Any) -> None:
    doc = _replace(BASE, path, new)
    try:
        spec = parse_spec(json.dumps(doc).encode(), limits=ChannelLimits())
        for mspec in spec.modules.values():
            build_graphs(mspec)
    except UnsafeSpecError:
        pass


@FUZZ
@given(st.sampled_from(BASE_PATHS), JSON)
def test_mutated_spec_full_rebuild(path: tuple, new: Any) -> None:
    doc = _replace(BASE, path, new)
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp) / "out"
        corpus.write_files(out, doc, corpus.base_weights())
        try:
            rebuild_from_output(out)
        except UnsafeSpecError:
            pass


@FUZZ
@given(JSON)
def test_decode_literal_arbitrary(value: Any) -> None:
    ctx = LiteralContext(ChannelLimits(), "fuzz", resolve_ref=lambda name: None)
    try:
        decode_literal(value, ctx)
    except UnsafeSpecError:
        pass


def _header_file(header: bytes, *, declared: int | None = None, data: bytes = b"") -> int:
    fd, name = tempfile.mkstemp()
    os.unlink(name)
    os.write(fd, struct.pack("<Q", len(header) if declared is None else declared) + header + data)
    return fd


@FUZZ
@given(st.binary(max_size=300))
def test_safetensors_header_arbitrary_bytes(blob: bytes) -> None:
    fd, name = tempfile.mkstemp()
    os.unlink(name)
    try:
        os.write(fd, blob)
        try:
            read_header(fd, ChannelLimits())
        except UnsafeSpecError:
            pass
    finally:
        os.close(fd)


_ENTRY = st.fixed_dictionaries(
    {
        "dtype": st.one_of(st.sampled_from(["F32", "F16", "I64", "BOOL", "U8", "F8_E4M3", "x"]), JSON),
        "shape": st.one_of(st.lists(st.integers(min_value=-2, max_value=2**40), max_size=4), JSON),
        "data_offsets": st.one_of(st.lists(st.integers(min_value=-5, max_value=2**64), min_size=2, max_size=2), JSON),
    }
)


@FUZZ
@given(
    st.dictionaries(_TEXT, st.one_of(_ENTRY, JSON), max_size=4),
    st.one_of(st.none(), st.integers(min_value=0, max_value=2**64 - 1)),
    st.binary(max_size=64),
)
def test_safetensors_header_structured(header: dict, declared: int | None, data: bytes) -> None:
    fd = _header_file(json.dumps(header).encode(), declared=declared, data=data)
    try:
        try:
            entries = read_header(fd, ChannelLimits())
        except UnsafeSpecError:
            return
        # Accepted headers tile the data section exactly.
        size = os.fstat(fd).st_size
        n = struct.unpack("<Q", os.pread(fd, 8, 0))[0]
        assert sum(e.end - e.begin for e in entries.values()) == size - 8 - n
    finally:
        os.close(fd)


@pytest.fixture(scope="module")
def producer_spec(tmp_path_factory: pytest.TempPathFactory) -> dict:
    """A real spec written by the sandbox-side producer (runners/_export.py) for
    the zoo's ResNet, as a larger, realistic base for mutation."""
    import importlib.util

    root = Path(__file__).resolve().parent.parent
    for p in (str(root / "runners"), str(root / "tests" / "zoo")):
        if p not in sys.path:
            sys.path.insert(0, p)
    import _export

    spec = importlib.util.spec_from_file_location("safehub_fuzz_zoo_hubconf", root / "tests" / "zoo" / "hubconf.py")
    zoo = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(zoo)
    out = tmp_path_factory.mktemp("resnet")
    _export.export_object(zoo.resnet(), str(out), options={"mode": "fx"}, example_inputs=None, hubconf=zoo, entrypoint="resnet")
    return json.loads((out / "spec.json").read_text())


@settings(FUZZ, max_examples=_DEEP or 100)
@given(data=st.data())
def test_mutated_producer_spec_validates_or_refuses(producer_spec: dict, data: st.DataObject) -> None:
    paths = _paths(producer_spec)
    path = data.draw(st.sampled_from(paths))
    doc = _replace(producer_spec, path, data.draw(JSON))
    try:
        spec = parse_spec(json.dumps(doc).encode(), limits=ChannelLimits())
        for mspec in spec.modules.values():
            build_graphs(mspec)
    except UnsafeSpecError:
        pass
