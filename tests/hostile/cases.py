"""The hostile-spec corpus: crafted sandbox outputs that the host must refuse.

Each case writes ``spec.json`` / ``weights.safetensors`` (or something worse)
into an output folder. Payloads aim at a canary file: if any of them ran, the
canary would exist. Every case names the typed error it must raise.

A case is ``Case(id, writer, error)``; ``writer(out_dir, canary_path)``.
"""

from __future__ import annotations

import copy
import json
import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable

import torch
from st_save import save_file

from safehub._errors import (
    DisallowedTargetError,
    InvalidNameError,
    SpecTooLargeError,
    TensorMismatchError,
    UnsafeSpecError,
)


@dataclass(frozen=True)
class Case:
    id: str
    write: Callable[[Path, str], None]
    error: type[UnsafeSpecError]


def base_spec() -> dict[str, Any]:
    """A small valid fx-mode spec: Linear leaf, get_attr, call_function, call_method."""
    graph = {
        "nodes": [
            {"op": "placeholder", "name": "x", "target": "x"},
            {"op": "call_module", "name": "fc", "target": "fc", "args": [{"node": "x"}]},
            {"op": "get_attr", "name": "scale", "target": "scale"},
            {"op": "call_function", "name": "mul", "target": "operator.mul", "args": [{"node": "fc"}, {"node": "scale"}]},
            {"op": "call_method", "name": "relu", "target": "relu", "args": [{"node": "mul"}]},
            {"op": "output", "name": "output", "target": "output", "args": [{"node": "relu"}]},
        ]
    }  # fmt: skip
    return {
        "format": "safehub-arch",
        "version": 1,
        "torch_version": torch.__version__,
        "root": {"module": "m0"},
        "modules": {
            "m0": {
                "mode": "fx",
                "training": False,
                "tensors": {
                    "fc.weight": {"dtype": "float32", "shape": [3, 4], "kind": "parameter", "requires_grad": True},
                    "fc.bias": {"dtype": "float32", "shape": [3], "kind": "parameter", "requires_grad": True},
                    "scale": {"dtype": "float32", "shape": [3], "kind": "parameter", "requires_grad": True},
                },
                "aliases": {},
                "leaves": {"fc": {"cls": "Linear", "kwargs": {"in_features": 4, "out_features": 3}, "training": False}},
                "submodules": {},
                "graphs": {"eval": graph},
            }
        },
    }


def base_weights() -> dict[str, torch.Tensor]:
    return {"m0.fc.weight": torch.ones(3, 4), "m0.fc.bias": torch.zeros(3), "m0.scale": torch.ones(3)}


def write_files(out: Path, spec: Any, weights: dict[str, torch.Tensor], *, raw: bytes | None = None) -> None:
    out.mkdir(parents=True, exist_ok=True)
    (out / "spec.json").write_bytes(raw if raw is not None else json.dumps(spec).encode())
    save_file(weights, str(out / "weights.safetensors"))


def mutate(fn: Callable[[dict, dict, str], Any]) -> Callable[[Path, str], None]:
    """A writer that edits a copy of the base spec/weights. ``fn`` may return raw
    spec bytes to write instead of the edited dict."""

    def write(out: Path, canary: str) -> None:
        spec, weights = copy.deepcopy(base_spec()), base_weights()
        raw = fn(spec, weights, canary)
        write_files(out, spec, weights, raw=raw)

    return write


def m0(spec: dict) -> dict:
    return spec["modules"]["m0"]


def nodes(spec: dict) -> list[dict]:
    return m0(spec)["graphs"]["eval"]["nodes"]


def node(spec: dict, name: str) -> dict:
    return next(n for n in nodes(spec) if n["name"] == name)


def insert_before_output(spec: dict, *new: dict) -> None:
    ns = nodes(spec)
    ns[-1:-1] = list(new)


def to_aten(spec: dict) -> None:
    """Turn the base spec into an aten-mode one (no leaves, no call_module)."""
    m0(spec)["mode"] = "aten"
    m0(spec)["leaves"] = {}
    m0(spec)["submodules"] = {"fc": {"training": False}}
    fc = node(spec, "fc")
    fc.update(op="call_function", target="aten.relu.default")


def shell(canary: str) -> str:
    return f"touch {canary}"


def py(canary: str) -> str:
    return f"open({canary!r}, 'w').write('pwned')"


# --- the corpus ------------------------------------------------------------------

CASES: list[Case] = []


def case(id: str, error: type[UnsafeSpecError]) -> Callable:
    def register(fn: Callable[[dict, dict, str], Any]) -> Callable:
        CASES.append(Case(id, mutate(fn), error))
        return fn

    return register


def raw_case(id: str, error: type[UnsafeSpecError]) -> Callable:
    def register(fn: Callable[[Path, str], None]) -> Callable:
        CASES.append(Case(id, fn, error))
        return fn

    return register


# Names carrying code (the FX codegen injection class, sinks 10 and 11).
@case("node_name_code", InvalidNameError)
def _(spec, w, c):
    node(spec, "relu")["name"] = f"x); {py(c)}; ("
    nodes(spec)[-1]["args"] = [{"node": f"x); {py(c)}; ("}]


@case("placeholder_target_code", InvalidNameError)
def _(spec, w, c):
    node(spec, "x")["target"] = f"x=__import__('os').system('{shell(c)}')"


@case("placeholder_shadows_getattr", InvalidNameError)
def _(spec, w, c):
    # forward(self, getattr): generated `getattr(self, "a-b")` would call the caller's argument
    node(spec, "x")["target"] = "getattr"


@case("placeholder_shadows_torch", InvalidNameError)
def _(spec, w, c):
    node(spec, "x")["target"] = "torch"
    node(spec, "relu").update(op="call_function", target="torch.relu")


@case("placeholder_shadows_generated_global", InvalidNameError)
def _(spec, w, c):
    # argument "math_sqrt" on a node named "p": FX names the math.sqrt global "math_sqrt" too
    node(spec, "x").update(name="p", target="math_sqrt")
    node(spec, "fc")["args"] = [{"node": "p"}]
    insert_before_output(spec, {"op": "call_function", "name": "s", "target": "math.sqrt", "args": [2]})


@case("placeholder_default_order", UnsafeSpecError)
def _(spec, w, c):
    # def forward(self, a=1, x): a SyntaxError when FX execs the generated code
    nodes(spec).insert(0, {"op": "placeholder", "name": "a", "target": "a", "args": [1]})


# Generated text that means something else than the graph (issue 18).
@case("complex_literal_prints_as_a_name", UnsafeSpecError)
def _(spec, w, c):
    # complex(0, inf) printed as `infj`, which read the argument named infj
    nodes(spec).insert(1, {"op": "placeholder", "name": "infj", "target": "infj"})
    node(spec, "mul")["args"] = [{"node": "fc"}, {"complex": ["0.0", "inf"]}]


@case("placeholder_aliasing", InvalidNameError)
def _(spec, w, c):
    # nodes b <- argument c and a <- argument b printed `b = c; a = b`
    nodes(spec)[0:1] = [{"op": "placeholder", "name": "b", "target": "c"}, {"op": "placeholder", "name": "a", "target": "b"}]
    node(spec, "fc")["args"] = [{"node": "a"}]


@case("node_named_self", UnsafeSpecError)
def _(spec, w, c):
    # `self = fc(x)` made the next `self.scale` read the node's attribute
    node(spec, "fc")["name"] = "self"
    node(spec, "mul")["args"] = [{"node": "self"}, {"node": "scale"}]


@case("leaf_string_with_terminal_escapes", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["leaves"]["pool"] = {"cls": "MaxPool1d", "kwargs": {"kernel_size": 1, "padding": "\x1b]0;pwned\x07\x1b[2J"}}
    insert_before_output(spec, {"op": "call_module", "name": "pool", "target": "pool", "args": [{"node": "relu"}]})


@case("kwarg_key_code", InvalidNameError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {f"inplace=__import__('os').system('{shell(c)}')": False}


@case("get_attr_path_quote", InvalidNameError)
def _(spec, w, c):
    evil = f'scale")+__import__("os").system("{shell(c)}")+("'
    m0(spec)["tensors"][evil] = m0(spec)["tensors"].pop("scale")
    node(spec, "scale")["target"] = evil
    w[f"m0.{evil}"] = w.pop("m0.scale")


@case("tensor_path_dunder", InvalidNameError)
def _(spec, w, c):
    m0(spec)["tensors"]["__class__.x"] = m0(spec)["tensors"].pop("scale")
    node(spec, "scale")["target"] = "__class__.x"
    w["m0.__class__.x"] = w.pop("m0.scale")


@case("node_name_dunder", InvalidNameError)
def _(spec, w, c):
    node(spec, "relu")["name"] = "__init__"
    nodes(spec)[-1]["args"] = [{"node": "__init__"}]


@case("path_atom_with_space", InvalidNameError)
def _(spec, w, c):
    m0(spec)["leaves"]["f c"] = m0(spec)["leaves"].pop("fc")


@case("path_atom_backslash", InvalidNameError)
def _(spec, w, c):
    m0(spec)["tensors"]["scale\\x"] = m0(spec)["tensors"].pop("scale")


@case("path_atom_keyword", InvalidNameError)
def _(spec, w, c):
    m0(spec)["tensors"]["import"] = m0(spec)["tensors"].pop("scale")


@case("root_attr_to_folder", InvalidNameError)
def _(spec, w, c):
    # generated code `self.to_folder(...)` would call GraphModule.to_folder, which writes files
    m0(spec)["leaves"]["to_folder"] = m0(spec)["leaves"].pop("fc")
    for name in ("weight", "bias"):
        m0(spec)["tensors"][f"to_folder.{name}"] = m0(spec)["tensors"].pop(f"fc.{name}")
    node(spec, "fc")["target"] = "to_folder"
    node(spec, "fc")["args"] = [c]


@case("module_attr_training", InvalidNameError)
def _(spec, w, c):
    m0(spec)["submodules"]["block"] = {"training": False}
    m0(spec)["tensors"]["block.training"] = m0(spec)["tensors"].pop("scale")


@case("module_id_code", InvalidNameError)
def _(spec, w, c):
    spec["modules"] = {f"m0; {shell(c)}": m0(spec)}
    spec["root"] = {"module": f"m0; {shell(c)}"}


@case("dict_key_control_chars", InvalidNameError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"inplace": {"dict": {"\x1b[2J\x00": 1}}}


# Targets outside the allowlists (sink 13: getattr walks from torch).
@case("target_torch_os_system", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "torch.os.system", "args": [shell(c)]})


@case("target_torch_ops_load_library", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "torch.ops.load_library", "args": [c]})


@case("target_builtins_eval", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "builtins.eval", "args": [py(c)]})


@case("target_builtins_exec", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "builtins.exec", "args": [py(c)]})


@case("target_operator_attrgetter", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "operator.attrgetter", "args": ["__class__"]})


@case("target_torch_load", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "torch.load", "args": [c], "kwargs": {"weights_only": False}})


@case("target_torch_save", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "torch.save", "args": [{"node": "x"}, c]})


@case("target_torch_from_file", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "torch.from_file", "args": [c, True, 1]})


@case("target_dunder_walk", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "torch.__builtins__.eval", "args": [py(c)]})


@case("target_aten_from_file", DisallowedTargetError)
def _(spec, w, c):
    to_aten(spec)
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "aten.from_file.default", "args": [c]})


@case("target_aten_dunder", DisallowedTargetError)
def _(spec, w, c):
    to_aten(spec)
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "aten.__class__.__init__", "args": []})


@case("target_aten_python_attr", DisallowedTargetError)
def _(spec, w, c):
    to_aten(spec)
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "aten.add.overloads", "args": []})


@case("target_aten_set_in_fx_mode", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "a", "target": "aten.set_.source_Tensor", "args": [{"node": "x"}, {"node": "x"}]})


@case("target_aten_storage_argument", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "a", "target": "aten.set.source_Storage", "args": [{"node": "x"}, c]})


@case("call_module_in_aten_mode", DisallowedTargetError)
def _(spec, w, c):
    m0(spec)["mode"] = "aten"
    m0(spec)["leaves"] = {}
    m0(spec)["submodules"] = {"fc": {"training": False}}


@case("method_apply_", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_method", "name": "pwn", "target": "apply_", "args": [{"node": "x"}, c]})


@case("method_reduce_ex", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_method", "name": "pwn", "target": "__reduce_ex__", "args": [{"node": "x"}, 2]})


@case("method_register_hook", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_method", "name": "pwn", "target": "register_hook", "args": [{"node": "x"}, c]})


@case("getattr_dunder_class", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "builtins.getattr", "args": [{"node": "x"}, "__class__"]})


@case("getattr_three_args", DisallowedTargetError)
def _(spec, w, c):
    insert_before_output(spec, {"op": "call_function", "name": "pwn", "target": "builtins.getattr", "args": [{"node": "x"}, "shape", None]})


@case("leaf_class_os_system", DisallowedTargetError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["cls"] = "os.system"


@case("leaf_class_module", DisallowedTargetError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["cls"] = "Module"


@case("leaf_class_dotted", DisallowedTargetError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["cls"] = "torch.nn.Linear"


# Leaf constructor arguments.
@case("leaf_private_kwarg", InvalidNameError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["kwargs"]["_weight"] = None


@case("leaf_device_kwarg", InvalidNameError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["kwargs"]["device"] = "cpu"


@case("leaf_unknown_kwarg", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["kwargs"]["evil"] = 1


@case("leaf_kwarg_rejected_by_ctor", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"]["kwargs"]["in_features"] = "four"


@case("leaf_huge_linear_declared", TensorMismatchError)
def _(spec, w, c):
    # The spec tells the truth about a 400 TB layer; the weights cannot back it.
    m0(spec)["leaves"]["fc"]["kwargs"] = {"in_features": 10**7, "out_features": 10**7}
    m0(spec)["tensors"]["fc.weight"]["shape"] = [10**7, 10**7]
    m0(spec)["tensors"]["fc.bias"]["shape"] = [10**7]


@case("leaf_huge_linear_lying", TensorMismatchError)
def _(spec, w, c):
    # The spec lies: small tensors, huge constructor. Built on meta, compared, refused.
    m0(spec)["leaves"]["fc"]["kwargs"] = {"in_features": 10**7, "out_features": 10**7}


@case("leaf_lstm_layers_cap", SpecTooLargeError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc"] = {"cls": "LSTM", "kwargs": {"input_size": 4, "hidden_size": 3, "num_layers": 10**9}}


@case("leaf_adaptive_softmax_cutoffs_cap", SpecTooLargeError)
def _(spec, w, c):
    # one tail submodule per cutoff, built before any comparison could refuse it
    cutoffs = {"list": list(range(1, 50_001))}
    m0(spec)["leaves"]["fc"] = {"cls": "AdaptiveLogSoftmaxWithLoss", "kwargs": {"in_features": 4, "n_classes": 50_002, "cutoffs": cutoffs}}


@case("leaf_tensor_not_owned", TensorMismatchError)
def _(spec, w, c):
    m0(spec)["tensors"]["fc.extra"] = {"dtype": "float32", "shape": [3], "kind": "buffer"}
    w["m0.fc.extra"] = torch.zeros(3)


@case("leaf_inside_leaf", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["leaves"]["fc.inner"] = {"cls": "ReLU", "kwargs": {}}


@case("tensor_inside_tensor", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["tensors"]["scale.x"] = {"dtype": "float32", "shape": [3], "kind": "buffer"}
    w["m0.scale.x"] = torch.zeros(3)


# Graph structure.
@case("forward_reference", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "fc")["args"] = [{"node": "relu"}]


@case("reference_to_unknown", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "fc")["args"] = [{"node": "nope"}]


@case("two_outputs", UnsafeSpecError)
def _(spec, w, c):
    nodes(spec).append({"op": "output", "name": "output2", "target": "output", "args": [{"node": "x"}]})


@case("no_output", UnsafeSpecError)
def _(spec, w, c):
    nodes(spec).pop()


@case("duplicate_node_name", InvalidNameError)
def _(spec, w, c):
    node(spec, "mul")["name"] = "fc"


@case("unknown_op", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["op"] = "call_python"


@case("unknown_literal_tag", UnsafeSpecError)
def _(spec, w, c):
    import base64
    import pickle

    class Boom:
        def __reduce__(self):
            return (os.system, (shell(c),))

    node(spec, "relu")["kwargs"] = {"x": {"pickle": base64.b64encode(pickle.dumps(Boom())).decode()}}


@case("float_literal_code", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"x": {"float": f"__import__('os').system('{shell(c)}')"}}


@case("device_literal_code", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"x": {"device": f"cpu'); __import__('os').system('{shell(c)}'); ('"}}


@case("bare_json_float", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"x": 1.5}


@case("int_literal_overflow", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"x": 2**70}


@case("nan_literal", UnsafeSpecError)
def _(spec, w, c):
    return json.dumps(spec).replace('"version": 1', '"version": 1, "nan": NaN').encode()


@case("infinity_literal", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"x": "INF_HERE"}
    return json.dumps(spec).replace('"INF_HERE"', "-Infinity").encode()


@case("huge_int_digits", UnsafeSpecError)
def _(spec, w, c):
    node(spec, "relu")["kwargs"] = {"x": "BIG_HERE"}
    return json.dumps(spec).replace('"BIG_HERE"', "9" * 100_000).encode()


@case("duplicate_json_keys", UnsafeSpecError)
def _(spec, w, c):
    return json.dumps(spec).replace('"format": "safehub-arch"', '"format": "safehub-arch", "format": "other"').encode()


@case("literal_too_deep", SpecTooLargeError)
def _(spec, w, c):
    value: Any = 1
    for _ in range(40):
        value = {"tuple": [value]}
    node(spec, "relu")["kwargs"] = {"x": value}


@case("json_too_deep", SpecTooLargeError)
def _(spec, w, c):
    return ("[" * 200_000 + "]" * 200_000).encode()


@case("root_too_deep", SpecTooLargeError)
def _(spec, w, c):
    root: Any = {"module": "m0"}
    for _ in range(20):
        root = {"list": [root]}
    spec["root"] = root


@case("million_nodes", SpecTooLargeError)
def _(spec, w, c):
    head = json.dumps(spec).split('"nodes": [', 1)
    filler = '{"op": "placeholder", "name": "p"},' * 1_000_000
    return (head[0] + '"nodes": [' + filler + head[1]).encode()


@case("format_mismatch", UnsafeSpecError)
def _(spec, w, c):
    spec["format"] = "torch-export"


@case("version_mismatch", UnsafeSpecError)
def _(spec, w, c):
    spec["version"] = True  # bool is not the int 1


@case("torch_version_mismatch", UnsafeSpecError)
def _(spec, w, c):
    spec["torch_version"] = "1.13.1"


@case("unknown_top_level_key", UnsafeSpecError)
def _(spec, w, c):
    spec["guards_code"] = [py(c)]


@case("alias_to_missing", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["aliases"] = {"tied": "nowhere"}


@case("alias_chain", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["aliases"] = {"a1": "scale", "a2": "a1"}


@case("requires_grad_on_int", UnsafeSpecError)
def _(spec, w, c):
    m0(spec)["tensors"]["scale"]["dtype"] = "int64"
    w["m0.scale"] = torch.ones(3, dtype=torch.int64)


# Tensors vs. safetensors.
@case("tensor_missing", TensorMismatchError)
def _(spec, w, c):
    del w["m0.scale"]


@case("tensor_extra", TensorMismatchError)
def _(spec, w, c):
    w["m0.hidden"] = torch.zeros(1)


@case("tensor_wrong_shape", TensorMismatchError)
def _(spec, w, c):
    w["m0.scale"] = torch.ones(4)


@case("tensor_wrong_dtype", TensorMismatchError)
def _(spec, w, c):
    w["m0.scale"] = torch.ones(3, dtype=torch.float64)


@case("leaf_shape_lie", TensorMismatchError)
def _(spec, w, c):
    m0(spec)["tensors"]["fc.weight"]["shape"] = [4, 3]
    w["m0.fc.weight"] = torch.ones(4, 3)


# Files: sizes, links, and lying safetensors headers.
def _valid(out: Path) -> None:
    write_files(out, base_spec(), base_weights())


@raw_case("spec_symlink", UnsafeSpecError)
def _(out, c):
    _valid(out)
    target = out.parent / "elsewhere.json"
    (out / "spec.json").rename(target)
    (out / "spec.json").symlink_to(target)


@raw_case("weights_symlink_to_host_file", UnsafeSpecError)
def _(out, c):
    _valid(out)
    (out / "weights.safetensors").unlink()
    (out / "weights.safetensors").symlink_to("/etc/passwd")


@raw_case("spec_hardlink", UnsafeSpecError)
def _(out, c):
    _valid(out)
    os.link(out / "spec.json", out.parent / "second-link.json")


@raw_case("spec_is_fifo", UnsafeSpecError)
def _(out, c):
    _valid(out)
    (out / "spec.json").unlink()
    os.mkfifo(out / "spec.json")


@raw_case("out_dir_symlink", UnsafeSpecError)
def _(out, c):
    real = out.parent / "real-out"
    _valid(real)
    out.symlink_to(real)


@raw_case("spec_oversized_sparse", SpecTooLargeError)
def _(out, c):
    _valid(out)
    with open(out / "spec.json", "r+b") as f:
        f.truncate(65 * 1024 * 1024)


@raw_case("weights_oversized_sparse", SpecTooLargeError)
def _(out, c):
    _valid(out)
    with open(out / "weights.safetensors", "r+b") as f:
        f.truncate(65 * 1024**3)


def _rewrite_header(out: Path, edit: Callable[[dict], Any], *, length: int | None = None) -> None:
    _valid(out)
    data = (out / "weights.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = json.loads(data[8 : 8 + n])
    edit(header)
    blob = json.dumps(header).encode()
    (out / "weights.safetensors").write_bytes(struct.pack("<Q", length if length is not None else len(blob)) + blob + data[8 + n :])


@raw_case("st_offsets_past_end", UnsafeSpecError)
def _(out, c):
    _rewrite_header(out, lambda h: h["m0.scale"].__setitem__("data_offsets", [0, 10**12]))


@raw_case("st_offsets_overlap", UnsafeSpecError)
def _(out, c):
    def edit(h):
        h["m0.scale"]["data_offsets"] = list(h["m0.fc.bias"]["data_offsets"])

    _rewrite_header(out, edit)


@raw_case("st_header_length_lie", SpecTooLargeError)
def _(out, c):
    _rewrite_header(out, lambda h: None, length=2**63)


@raw_case("st_header_length_past_file", UnsafeSpecError)
def _(out, c):
    _rewrite_header(out, lambda h: None, length=10**6)


@raw_case("st_unknown_dtype", TensorMismatchError)
def _(out, c):
    _rewrite_header(out, lambda h: h["m0.scale"].__setitem__("dtype", "F8_E4M3"))


@raw_case("st_shape_lies_about_size", UnsafeSpecError)
def _(out, c):
    _rewrite_header(out, lambda h: h["m0.scale"].__setitem__("shape", [300]))


@raw_case("st_header_nan", UnsafeSpecError)
def _(out, c):
    _valid(out)
    data = (out / "weights.safetensors").read_bytes()
    n = struct.unpack("<Q", data[:8])[0]
    header = data[8 : 8 + n].replace(b'"__metadata__"', b'"x": NaN, "__metadata__"', 1)
    if header == data[8 : 8 + n]:
        header = b'{"x": NaN,' + data[9 : 8 + n]
    (out / "weights.safetensors").write_bytes(struct.pack("<Q", len(header)) + header + data[8 + n :])


@raw_case("st_truncated", UnsafeSpecError)
def _(out, c):
    _valid(out)
    (out / "weights.safetensors").write_bytes(b"\x05\x00")


@raw_case("spec_missing", UnsafeSpecError)
def _(out, c):
    _valid(out)
    (out / "spec.json").unlink()


@raw_case("spec_not_utf8", UnsafeSpecError)
def _(out, c):
    _valid(out)
    (out / "spec.json").write_bytes(b"\xff\xfe{}")
