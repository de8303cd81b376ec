"""repr() of a rebuilt model is safe to print (issue 10, "Strings that are safe to print").

The attack: control characters in a pooling layer's ``padding`` string reached
``repr(model)`` raw (a fake "verified" line, a cleared screen, a new terminal title).
"""

from __future__ import annotations

from pathlib import Path

import pytest
import torch

import specgen
from safehub._channel import rebuild_from_output
from safehub._errors import UnsafeSpecError


def _pool_spec(padding) -> dict:
    nodes = [
        {"op": "placeholder", "name": "x", "target": "x"},
        {"op": "call_module", "name": "pool", "target": "pool", "args": [{"node": "x"}]},
        {"op": "output", "name": "output", "target": "output", "args": [{"node": "pool"}]},
    ]
    module = {"mode": "fx", "training": False, "tensors": {},
              "leaves": {"pool": {"cls": "MaxPool2d", "kwargs": {"kernel_size": 2, "padding": padding}, "training": False}},
              "graphs": {"eval": {"nodes": nodes}}}  # fmt: skip
    return {"format": "safehub-arch", "version": 1, "root": {"module": "m0"}, "modules": {"m0": module}}


HOSTILE = [
    "\x1b[2J\x1b[H",  # clear the screen
    "0)\r\n[safehub] signature verified: OK",  # a fake line
    "\x1b]0;new title\x07",  # terminal title
    "\x9b31m",  # C1 CSI
    "abc\u202edcba",  # bidi override
    "\u2066x\u2069",  # bidi isolate
    "a\u200bb",  # zero-width space
    "a\u200db",  # zero-width joiner
    "\ufeff",  # BOM / zero-width no-break space
    "a\u2028b",  # line separator
    "a\x85b",  # next line
    "a\tb",  # tab
    {"tuple": [0, "\x1b[31m"]},  # nested in a tuple
]


@pytest.mark.parametrize("padding", HOSTILE, ids=range(len(HOSTILE)))
def test_unprintable_layer_strings_are_refused(tmp_path: Path, padding) -> None:
    out = specgen.write(tmp_path / "o", _pool_spec(padding), {})
    with pytest.raises(UnsafeSpecError, match="unprintable|control or invisible") as err:
        rebuild_from_output(out)
    assert "\x1b" not in str(err.value) and "\u202e" not in str(err.value)


def test_printable_layer_strings_still_load(tmp_path: Path) -> None:
    # MaxPool2d stores padding unchecked until forward; a printable string builds (and repr shows it).
    model = rebuild_from_output(specgen.write(tmp_path / "o", _pool_spec("voilà"), {}))
    assert "padding=voilà" in repr(model)


def _safe_to_print(text: str) -> bool:
    return all(c.isprintable() or c == "\n" for c in text)


def test_repr_and_str_of_a_rebuilt_model_are_printable(tmp_path: Path) -> None:
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.BatchNorm1d(8), torch.nn.ReLU(), torch.nn.Dropout(0.5))
    model = rebuild_from_output(specgen.write(tmp_path / "o", *specgen.full_spec(net.eval())))
    assert _safe_to_print(repr(model)) and _safe_to_print(str(model)) and _safe_to_print(model.code)
    assert isinstance(model(torch.randn(3, 4)), torch.Tensor)


def test_graph_strings_are_escaped_in_the_printed_code(tmp_path: Path) -> None:
    """Strings in graph arguments are printed by repr() in model.code: escaped, never raw."""
    nodes = [
        {"op": "placeholder", "name": "x", "target": "x"},
        {"op": "call_function", "name": "e", "target": "torch.einsum", "args": ["i\u202e,i\x1b[2J->", {"node": "x"}, {"node": "x"}]},
        {"op": "output", "name": "output", "target": "output", "args": [{"node": "e"}]},
    ]
    spec = {"format": "safehub-arch", "version": 1, "root": {"module": "m0"},
            "modules": {"m0": {"mode": "fx", "training": False, "tensors": {}, "graphs": {"eval": {"nodes": nodes}}}}}  # fmt: skip
    model = rebuild_from_output(specgen.write(tmp_path / "o", spec, {}))
    assert _safe_to_print(str(model)) and _safe_to_print(model.code)
    assert "\\u202e" in model.code
