"""Test-only reference consumer for the producer's tests.

It checks a written spec against docs/architecture-format.md (structure, names,
tensor keys, targets resolvable through the host's allowlists) and rebuilds the
modules with plain torch.fx so numerics can be compared. It is NOT the host's
consumer (safehub/_channel/); it trusts the producer (tests only) and exists so
the producer can be tested on its own.
"""

from __future__ import annotations

import json
import keyword
import re
from pathlib import Path
from typing import Any

import torch
from torch import fx, nn

IDENT = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
ATOM = re.compile(r"^[A-Za-z0-9_][A-Za-z0-9_-]*$")
MID = re.compile(r"^m[0-9]{1,6}$")
DTYPES = {
    "float64": torch.float64, "float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16,
    "int64": torch.int64, "int32": torch.int32, "int16": torch.int16, "int8": torch.int8, "uint8": torch.uint8,
    "bool": torch.bool, "complex64": torch.complex64, "complex128": torch.complex128,
}  # fmt: skip
MEMORY_FORMATS = {
    "contiguous_format": torch.contiguous_format, "channels_last": torch.channels_last,
    "preserve_format": torch.preserve_format, "channels_last_3d": torch.channels_last_3d,
}  # fmt: skip
FLOAT = re.compile(r"[+-]?(?:[0-9]+(?:\.[0-9]*)?|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?inf|nan")


def is_ident(s: Any) -> bool:
    return isinstance(s, str) and len(s) <= 128 and bool(IDENT.match(s)) and not keyword.iskeyword(s) and not (
        s.startswith("__") and s.endswith("__")
    )


def is_path(s: Any) -> bool:
    if not isinstance(s, str) or not s or len(s) > 1024 or len(s.split(".")) > 64:
        return False
    return all(
        len(a) <= 128 and ATOM.match(a) and not keyword.iskeyword(a) and not (a.startswith("__") and a.endswith("__"))
        for a in s.split(".")
    )


def decode(lit: Any, nodes: dict[str, fx.Node] | None) -> Any:
    if lit is None or isinstance(lit, (bool, str)):
        return lit
    if isinstance(lit, int):
        assert -(2**63) < lit < 2**63
        return lit
    assert isinstance(lit, dict) and len(lit) == 1, f"bad literal {lit!r}"
    (tag, v), = lit.items()
    if tag == "node":
        assert nodes is not None and v in nodes, f"reference to unknown/later node {v!r}"
        return nodes[v]
    if tag == "float":
        assert FLOAT.fullmatch(v), v
        return float(v)
    if tag == "complex":
        return complex(float(v[0]), float(v[1]))
    if tag == "tuple":
        return tuple(decode(x, nodes) for x in v)
    if tag == "list":
        return [decode(x, nodes) for x in v]
    if tag == "dict":
        return {k: decode(x, nodes) for k, x in v.items()}
    if tag == "slice":
        return slice(*(decode(x, nodes) for x in v))
    if tag == "ellipsis":
        return ...
    if tag == "dtype":
        return DTYPES[v]
    if tag == "device":
        return torch.device("cpu")  # re-pointed to the build device
    if tag == "layout":
        assert v == "strided"
        return torch.strided
    if tag == "memory_format":
        return MEMORY_FORMATS[v]
    raise AssertionError(f"unknown literal tag {tag!r}")


def _set(root: nn.Module, path: str, make_leaf=None) -> tuple[nn.Module, str]:
    *parents, last = path.split(".")
    mod = root
    for atom in parents:
        if atom not in mod._modules:
            mod.add_module(atom, nn.Module())
        mod = mod._modules[atom]
    return mod, last


def check_and_rebuild(out_dir: str | Path) -> tuple[dict, Any]:
    """Validate the files in ``out_dir``; return ``(spec, rebuilt root value)``."""
    from safetensors import safe_open

    from safehub._channel._allowlist import function_allowlist, leaf_allowlist, method_allowlist, resolve_aten

    out_dir = Path(out_dir)
    spec = json.loads((out_dir / "spec.json").read_text(), parse_constant=lambda c: (_ for _ in ()).throw(ValueError(c)))
    assert spec["format"] == "safehub-arch" and spec["version"] == 1
    assert set(spec) == {"format", "version", "torch_version", "root", "modules"}
    with safe_open(str(out_dir / "weights.safetensors"), "pt") as f:
        weights = {k: f.get_tensor(k) for k in f.keys()}
    expected_keys = {f"{mid}.{p}" for mid, m in spec["modules"].items() for p in m["tensors"]}
    assert set(weights) == expected_keys, set(weights) ^ expected_keys

    functions, methods, leaf_classes = function_allowlist(), method_allowlist(), leaf_allowlist()
    built: dict[str, nn.Module] = {}
    for mid, m in spec["modules"].items():
        assert MID.match(mid)
        assert set(m) <= {"mode", "training", "tensors", "aliases", "leaves", "submodules", "graphs"}
        assert m["mode"] in ("fx", "aten")
        root = nn.Module()
        leaves: dict[str, nn.Module] = {}
        # Leaves: built on meta from the recipe, then filled from the weights.
        for lpath, leaf in m["leaves"].items():
            assert is_path(lpath) and leaf["cls"] in leaf_classes, leaf["cls"]
            assert m["mode"] == "fx"
            kwargs = {k: decode(v, None) for k, v in leaf["kwargs"].items()}
            assert all(is_ident(k) and not k.startswith("_") for k in kwargs)
            with torch.device("meta"):
                meta = leaf_classes[leaf["cls"]](**kwargs)
            own = {n: (tuple(t.shape), t.dtype) for n, t in list(meta.named_parameters()) + list(meta.named_buffers())}
            spec_own = {}
            for p, info in m["tensors"].items():
                if p.startswith(lpath + "."):
                    spec_own[p[len(lpath) + 1 :]] = (tuple(info["shape"]), DTYPES[info["dtype"]])
            for p, target in m["aliases"].items():
                if p.startswith(lpath + "."):
                    info = m["tensors"][target]
                    spec_own[p[len(lpath) + 1 :]] = (tuple(info["shape"]), DTYPES[info["dtype"]])
            assert own == spec_own, (lpath, own, spec_own)
            mod = leaf_classes[leaf["cls"]](**kwargs)  # tests only: small real allocation
            mod.train(leaf["training"])
            parent, last = _set(root, lpath)
            parent.add_module(last, mod)
            leaves[lpath] = mod
        # Tensors.
        objects: dict[str, torch.Tensor] = {}
        for p, info in m["tensors"].items():
            assert is_path(p)
            t = weights[f"{mid}.{p}"]
            assert list(t.shape) == info["shape"] and t.dtype == DTYPES[info["dtype"]]
            parent, last = _set(root, p)
            if info["kind"] == "parameter":
                value: torch.Tensor = nn.Parameter(t.clone(), requires_grad=info["requires_grad"])
                setattr(parent, last, value)
            else:
                value = t.clone()
                parent.register_buffer(last, value, persistent=info["kind"] == "buffer" and info["persistent"])
            objects[p] = value
        for p, target in m["aliases"].items():
            assert is_path(p) and target in m["tensors"] and target not in m["aliases"]
            parent, last = _set(root, p)
            obj = objects[target]
            if isinstance(obj, nn.Parameter):
                setattr(parent, last, obj)
            else:
                parent.register_buffer(last, obj)
        for p, flags in m.get("submodules", {}).items():
            parent, last = _set(root, p)
            if last not in parent._modules:
                parent.add_module(last, nn.Module())
            parent._modules[last].training = flags["training"]
        # Graphs.
        assert "eval" in m["graphs"] and set(m["graphs"]) <= {"eval", "train"}
        gms = {}
        placeholder_lists = []
        for gname, g in m["graphs"].items():
            graph = fx.Graph()
            env: dict[str, fx.Node] = {}
            outputs = 0
            for i, n in enumerate(g["nodes"]):
                assert is_ident(n["name"]) and n["name"] not in env
                args = tuple(decode(a, env) for a in n.get("args", []))
                kwargs = {k: decode(v, env) for k, v in n.get("kwargs", {}).items()}
                assert all(is_ident(k) for k in kwargs)
                op, target = n["op"], n["target"]
                if op == "placeholder":
                    assert is_ident(target)
                    node = graph.placeholder(target, default_value=args[0] if args else fx.node.inspect.Signature.empty)
                elif op == "get_attr":
                    assert target in m["tensors"] or target in m["aliases"], target
                    node = graph.get_attr(target)
                elif op == "call_module":
                    assert target in leaves, target
                    node = graph.call_module(target, args, kwargs)
                elif op == "call_function":
                    fn = resolve_aten(target, "test") if target.startswith("aten.") else functions[target]
                    node = graph.call_function(fn, args, kwargs)
                elif op == "call_method":
                    assert target in methods, target
                    node = graph.call_method(target, args, kwargs)
                elif op == "output":
                    outputs += 1
                    assert i == len(g["nodes"]) - 1
                    node = graph.output(args[0])
                else:
                    raise AssertionError(op)
                node.name = n["name"]
                env[n["name"]] = node
            assert outputs == 1
            graph.lint()
            placeholder_lists.append([n["target"] for n in g["nodes"] if n["op"] == "placeholder"])
            gms[gname] = fx.GraphModule(root, graph)
        assert all(p == placeholder_lists[0] for p in placeholder_lists)
        built[mid] = Dispatch(root, gms["eval"], gms.get("train", gms["eval"]), m["training"])

    def value(v: dict) -> Any:
        (tag, x), = v.items()
        if tag == "module":
            return built[x]
        if tag == "tuple":
            return tuple(value(i) for i in x)
        if tag == "list":
            return [value(i) for i in x]
        if tag == "dict":
            return {k: value(i) for k, i in x.items()}
        raise AssertionError(tag)

    return spec, value(spec["root"])


class Dispatch(nn.Module):
    """Runs the train graph when training, the eval graph otherwise (one module tree)."""

    def __init__(self, root: nn.Module, g_eval: fx.GraphModule, g_train: fx.GraphModule, training: bool) -> None:
        super().__init__()
        self.root = root
        # GraphModules share the root's submodules and tensors; keep them out of _modules.
        object.__setattr__(self, "_graphs", (g_eval, g_train))
        self.training = training

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return (self._graphs[1] if self.training else self._graphs[0])(*args, **kwargs)

    def train(self, mode: bool = True) -> "Dispatch":
        super().train(mode)
        for g in self._graphs:
            g.train(mode)
        return self
