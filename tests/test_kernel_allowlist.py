"""The aten kernel allowlist: forward-only, derived from real models, and every
allowed kernel that takes index values or statistics refuses hostile ones cleanly.

The hostile calls run in a subprocess (an unchecked kernel may crash the
interpreter) through the host's own resolver (resolve_aten / function_allowlist),
so they exercise exactly what a rebuilt graph would call.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

from safehub._channel._allowlist import (
    aten_forward_ops,
    function_allowlist,
    kernel_refusal,
    method_allowlist,
    resolve_aten,
)
from safehub._channel._kernels import CHECKED
from safehub._errors import DisallowedTargetError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "hostile"))
import kernel_cases  # noqa: E402

DATA = ROOT / "safehub" / "_channel" / "aten_forward_ops.json"

# Schema arguments through which a spec hands a kernel index values, statistics or
# per-channel tensors (sizes a kernel might trust), and int arguments that address memory.
VALUE_ARGS = frozenset({"index", "indices", "offsets", "target", "per_sample_weights", "running_mean", "running_var",
                        "params", "hx", "mean", "invstd", "boundaries", "sorted_sequence", "repeats", "src", "g",
                        "attn_mask"})  # fmt: skip
# Ops whose extra tensor arguments only broadcast (elementwise) or that are covered by
# the shape checks of matmul; listed so that a new value-taking op cannot slip past.
INT_ADDRESS_OPS = ("select", "narrow", "split_with_sizes", "unbind", "im2col", "upsample")
NORM_OR_CHANNEL_OPS = ("norm", "prelu", "conv", "bilinear", "col2im", "lstm", "gru", "rnn", "embedding", "unpool")


def _value_taking(target: str) -> bool:
    _, op, overload = target.split(".")
    schema = getattr(getattr(torch.ops.aten, op), overload)._schema
    if any(a.name in VALUE_ARGS and "Tensor" in str(a.type) for a in schema.arguments):
        return True
    return any(part in op for part in INT_ADDRESS_OPS + NORM_OR_CHANNEL_OPS)


def test_the_allowlist_is_the_derived_file_minus_refused_kernels():
    data = json.loads(DATA.read_text())
    assert data["ops"] and all(models for models in data["ops"].values())  # each op names the models that need it
    allowed = aten_forward_ops()
    assert allowed <= set(data["ops"])
    for target in set(data["ops"]) - allowed:
        assert kernel_refusal(target.split(".")[1]) is not None, target
    for target in sorted(allowed):  # every listed overload exists in this torch (else regenerate the file)
        fn = resolve_aten(target, "test")
        assert fn is CHECKED.get(target) or fn._schema.name == "aten::" + target.split(".")[1]


def test_shape_trusting_kernels_run_behind_checked_wrappers_that_compute_the_same():
    """aten._weight_norm and aten.lstm.input (oneDNN) read by the shapes they assume;
    the wrappers check them and otherwise compute exactly what the kernel does."""
    torch.manual_seed(0)
    v, g = torch.randn(4, 3), torch.rand(4, 1) + 0.5
    assert torch.equal(resolve_aten("aten._weight_norm.default", "t")(v, g, 0), torch.ops.aten._weight_norm.default(v, g, 0))
    lstm = torch.nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, proj_size=3)
    x = torch.randn(2, 5, 4)
    hx = [torch.zeros(4, 2, 3), torch.zeros(4, 2, 6)]
    params = list(lstm._flat_weights)
    args = (x, hx, params, True, 2, 0.0, False, True, True)
    want = torch.ops.aten.lstm.input(*args)
    got = resolve_aten("aten.lstm.input", "t")(*args)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    # a stride-0 view of the right shape is a one-row buffer: the wrapper copies it first
    params[1] = params[1][:1].expand_as(params[1])
    got = resolve_aten("aten.lstm.input", "t")(x, hx, params, True, 2, 0.0, False, True, True)
    params[1] = params[1].contiguous()
    want = torch.ops.aten.lstm.input(x, hx, params, True, 2, 0.0, False, True, True)
    assert all(torch.equal(a, b) for a, b in zip(want, got))
    assert "lstm" not in {k.rsplit(".", 1)[-1] for k in function_allowlist()}  # fx graphs use nn.LSTM leaves


def test_no_backward_kernel_is_reachable_from_any_allowlist():
    assert not [t for t in aten_forward_ops() if "backward" in t]
    assert not [k for k in function_allowlist() if "backward" in k]
    assert not [m for m in method_allowlist() if "backward" in m]
    for target in ("aten.embedding_dense_backward.default", "aten.native_batch_norm_backward.default",
                   "aten.native_layer_norm_backward.default", "aten.max_pool2d_with_indices_backward.default",
                   "aten.native_group_norm_backward.default", "aten.convolution_backward.default"):  # fmt: skip
        with pytest.raises(DisallowedTargetError, match="backward kernel"):
            resolve_aten(target, "test")


@pytest.mark.parametrize(
    "target",
    ["aten.native_batch_norm.default", "aten._native_batch_norm_legit_no_training.default",
     "aten._native_batch_norm_legit.default", "aten.batch_norm_update_stats.default"],
)  # fmt: skip
def test_core_aten_stats_kernels_that_trust_sizes_are_refused(target):
    """Forward kernels, core ATen, found unchecked here: undersized running stats give
    values read from outside the buffers (aten.batch_norm checks them)."""
    with pytest.raises(DisallowedTargetError, match="statistics"):
        resolve_aten(target, "test")
    name = target.split(".")[1]
    assert not [k for k in function_allowlist() if k.endswith("." + name)]


@pytest.mark.parametrize("target", ["aten.scatter_reduce.two", "aten.scatter_add.default", "aten.avg_pool2d_backward.default"])
def test_core_aten_ops_outside_the_derived_list_are_refused(target):
    """Core ATen ops no real model's forward graph needed are refused like any other."""
    _, op, overload = target.split(".")
    assert torch.Tag.core in getattr(getattr(torch.ops.aten, op), overload).tags
    assert target not in aten_forward_ops()
    with pytest.raises(DisallowedTargetError):
        resolve_aten(target, "test")


def test_every_allowed_value_taking_op_has_hostile_cases():
    """Adding an op to the derived list that takes index values or statistics needs
    hostile cases in tests/hostile/kernel_cases.py first."""
    missing = sorted(t for t in aten_forward_ops() if _value_taking(t) and t not in kernel_cases.CASES)
    assert not missing, f"add hostile cases for {missing}"
    functions = function_allowlist()
    methods = {f"Tensor.{m}" for m in method_allowlist()}
    unknown = sorted(t for t in kernel_cases.CASES if t not in aten_forward_ops() and t not in functions and t not in methods)
    assert not unknown, f"cases for ops that are not allowed (drop them or fix the name): {unknown}"


FX_VALUE_NAMES = re.compile(
    r"gather|scatter|index|take|put|embedding|unpool|nll_loss|cross_entropy|margin_loss|one_hot|bincount|searchsorted"
    r"|bucketize|repeat_interleave|unravel|batch_norm|instance_norm|group_norm|layer_norm|rms_norm|lstm|gru|rnn_|fractional"
)


def test_every_index_or_stats_taking_fx_function_has_hostile_cases():
    """fx graphs call the same kernels by their torch names (torch.gather,
    F.embedding(max_norm=...), torch.native_group_norm...): each needs cases too."""
    functions = function_allowlist()
    covered = {id(functions[name]) for name in kernel_cases.CASES if name in functions}
    covered |= {id(functions[name]) for name in kernel_cases.FX_NOT_INDEXED if name in functions}
    missing = sorted(
        name for name, fn in functions.items()
        if not name.startswith("operator.") and FX_VALUE_NAMES.search(name.rsplit(".", 1)[-1]) and id(fn) not in covered
    )  # fmt: skip
    assert not missing, f"add hostile cases (tests/hostile/kernel_cases.py) for {missing}"
    methods = sorted(
        f"Tensor.{m}" for m in method_allowlist()
        if FX_VALUE_NAMES.search(m) or "renorm" in m or m.startswith("masked")
    )  # fmt: skip
    missing = [m for m in methods if m not in kernel_cases.CASES and m not in kernel_cases.METHODS_NOT_INDEXED]
    assert not missing, f"add hostile cases (tests/hostile/kernel_cases.py) for {missing}"


SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, sys.argv[1])
    import kernel_cases
    import torch
    from safehub._channel._allowlist import function_allowlist, method_allowlist, resolve_aten
    for target in sys.argv[2:]:
        if target.startswith("aten."):
            fn = resolve_aten(target, "test")
        elif target.startswith("Tensor."):
            assert target[7:] in method_allowlist()
            fn = getattr(torch.Tensor, target[7:])
        else:
            fn = function_allowlist()[target]
        for label, make in kernel_cases.CASES[target]:
            print("CASE", target, label, flush=True)
            print("RESULT", target, label, kernel_cases.run(fn, make, target in kernel_cases.WRAPPING), flush=True)
    """
)


def _run_hostile(cases_dir: Path, todo: list[str], script: Path) -> dict[tuple[str, str], str]:
    """(target, variant) -> 'clean <Exc>', 'silent' or 'crashed (rc)'. Restarts the
    subprocess after a crash so that one bad kernel does not hide the others."""
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    results: dict[tuple[str, str], str] = {}
    while todo:
        proc = subprocess.run(
            [sys.executable, str(script), str(cases_dir), *todo], capture_output=True, text=True, timeout=600, env=env
        )
        current = None
        for line in proc.stdout.splitlines():
            parts = line.split(" ", 3)
            if parts[0] == "CASE":
                current = (parts[1], parts[2])
            elif parts[0] == "RESULT":
                results[(parts[1], parts[2])] = parts[3]
                current = None
        if proc.returncode == 0:
            break
        if current is None:  # died outside a case (import, resolve)
            raise AssertionError(f"hostile-kernel subprocess failed: rc={proc.returncode} {proc.stderr[-2000:]}")
        results[current] = f"crashed (rc={proc.returncode})"
        todo = todo[todo.index(current[0]) + 1 :]  # the subprocess runs targets in this order
    return results


@pytest.fixture(scope="module")
def hostile_results(tmp_path_factory) -> dict[tuple[str, str], str]:
    script = tmp_path_factory.mktemp("kernels") / "hostile.py"
    return _run_hostile(ROOT / "tests" / "hostile", sorted(kernel_cases.CASES), script)


@pytest.mark.slow  # a torch subprocess of its own
def test_the_hostile_harness_reports_a_crash_and_runs_the_rest(tmp_path):
    """Control: a variant that kills the interpreter is reported as crashed, and the
    targets after it still run in a fresh subprocess."""
    fake = tmp_path / "fake"
    fake.mkdir()
    (fake / "kernel_cases.py").write_text(textwrap.dedent(
        """
        import os, signal
        WRAPPING = frozenset()
        def run(fn, make, wraps=False):
            return make()
        CASES = {"aten.add.Tensor": [("ok", lambda: "clean X"), ("boom", lambda: os.kill(os.getpid(), signal.SIGSEGV)),
                                     ("skipped", lambda: "clean Z")],
                 "aten.mul.Tensor": [("after", lambda: "clean Y")]}
        """
    ))  # fmt: skip
    got = _run_hostile(fake, ["aten.add.Tensor", "aten.mul.Tensor"], tmp_path / "hostile.py")
    assert got == {("aten.add.Tensor", "ok"): "clean X", ("aten.add.Tensor", "boom"): f"crashed (rc={-11})",
                   ("aten.mul.Tensor", "after"): "clean Y"}  # fmt: skip


@pytest.mark.parametrize("target", sorted(kernel_cases.CASES))
def test_allowed_kernel_refuses_hostile_values_cleanly(target, hostile_results):
    got = {label: hostile_results.get((target, label), "not run") for label, _ in kernel_cases.CASES[target]}
    bad = {label: r for label, r in got.items() if not r.startswith("clean ")}
    assert not bad, f"{target}: {bad} (expected a clean exception for every hostile variant)"


@pytest.mark.slow  # a torch subprocess of its own
def test_the_hostile_harness_detects_silent_garbage_and_crashes(tmp_path):
    """Control: the harness reports an unchecked kernel (native_batch_norm with an
    undersized running mean returns values read past the buffer) as 'silent'."""
    code = textwrap.dedent(
        """
        import torch, sys
        sys.path.insert(0, sys.argv[1])
        import kernel_cases
        print(kernel_cases.run(torch.ops.aten.native_batch_norm.default,
              lambda: ((torch.randn(2, 4, 3), None, None, torch.zeros(1), torch.ones(1), False, 0.1, 1e-5), {})))
        """
    )
    proc = subprocess.run([sys.executable, "-c", code, str(ROOT / "tests" / "hostile")], capture_output=True, text=True, timeout=300)
    assert proc.stdout.strip().splitlines()[-1] == "silent", (proc.returncode, proc.stdout[-500:], proc.stderr[-500:])


def test_derivation_script_records_models_for_each_op():
    """The committed data file came from scripts/derive_aten_allowlist.py with models
    from the zoo, the standard layers and the public corpus."""
    data = json.loads(DATA.read_text())
    sources = {m.split(":")[0] for m in data["models"]}
    assert {"zoo", "torch.nn"} <= sources and len(data["corpus"]) >= 5
    assert all(re.fullmatch(r"aten\.[A-Za-z_][A-Za-z0-9_]*\.[A-Za-z_][A-Za-z0-9_]*", t) for t in data["ops"])
    assert data["torch_version"].split(".")[:2] == torch.__version__.split("+")[0].split(".")[:2]


@pytest.mark.slow  # torch.export of each model
@pytest.mark.parametrize("name", ["recurrent", "weightnorm", "lstm_proj"])
def test_models_needing_checked_kernels_rebuild_in_aten_mode_and_match(name, tmp_path):
    """The wrappers must not refuse what real models do: LSTMs (zoo, projected and
    bidirectional) and weight norm, exported in aten mode, rebuild and compute the same."""
    for p in (str(ROOT / "runners"), str(ROOT / "tests" / "zoo")):
        if p not in sys.path:
            sys.path.insert(0, p)
    import _export  # runners/_export.py
    import hubconf as zoo

    from safehub._channel import rebuild_from_output

    torch.manual_seed(0)
    if name == "lstm_proj":
        model = torch.nn.LSTM(4, 6, 2, batch_first=True, bidirectional=True, proj_size=3)
        x = torch.randn(2, 5, 4)
    else:
        model = getattr(zoo, name)()
        x = torch.randn(2, 7, 6) if name == "recurrent" else torch.randn(2, 2, 9)
    model.eval()
    _export.export_object(model, str(tmp_path), options={"mode": "aten"}, example_inputs=(x,), hubconf=None, entrypoint=name)
    rebuilt = rebuild_from_output(tmp_path)
    uses = {getattr(n.target, "__name__", "") for n in rebuilt.graph.nodes if n.op == "call_function"}
    assert uses & {"lstm_input", "weight_norm"}, uses
    with torch.no_grad():
        want, got = model(x), rebuilt(x)
    flat = lambda o: [t for t in (o if isinstance(o, (tuple, list)) else [o]) for t in (t if isinstance(t, (tuple, list)) else [t])]  # noqa: E731
    assert all(torch.allclose(a, b, atol=1e-6) for a, b in zip(flat(want), flat(got)))


def test_the_runner_refuses_the_same_fx_kernels_as_the_host():
    """The sandbox checks fx graphs against a copy of the host's kernel refusals, so that
    such a graph falls back to aten mode there instead of failing at load."""
    from safehub._channel import _allowlist

    sys.path.insert(0, str(ROOT / "runners"))
    import _literals  # runners/_literals.py

    assert _literals.KERNEL_DENY == set(_allowlist._KERNEL_DENY) | _allowlist._FX_FUNCTION_DENY
    for name in ("native_batch_norm", "lstm", "batch_norm_backward_elemt", "batch_norm_update_stats"):
        fn = getattr(torch, name)
        assert _literals.host_refuses_function(f"torch.{name}", fn, ()) is not None
        assert f"torch.{name}" not in function_allowlist()
    assert _literals.host_refuses_function("torch.relu", torch.relu, ()) is None


def test_number_to_a_tensor_power_rebuilds_in_aten_mode(tmp_path):
    """xcit's positional encoding computes ``temperature ** tensor`` (aten.pow.Scalar):
    the corpus refused it ('pow_1'); it is derived now, and rebuilds and matches."""
    if str(ROOT / "runners") not in sys.path:
        sys.path.insert(0, str(ROOT / "runners"))
    import _export  # runners/_export.py

    from safehub._channel import rebuild_from_output

    class Fourier(torch.nn.Module):
        def forward(self, x):
            dim_t = torch.arange(6, dtype=torch.float32, device=x.device)
            return x * 10000 ** (2 * (dim_t // 2) / 6)

    x = torch.randn(2, 6)
    _export.export_object(Fourier().eval(), str(tmp_path), options={"mode": "aten"}, example_inputs=(x,), hubconf=None,
                          entrypoint="fourier")
    rebuilt = rebuild_from_output(tmp_path)
    assert "aten.pow.Scalar" in aten_forward_ops()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x), Fourier()(x))


def test_a_slice_assigned_in_place_rebuilds_in_aten_mode(tmp_path):
    """xcit's class-attention block assigns a slice in place (``x[:, 0:1] = norm(x[:, 0:1])``,
    aten.copy_ into a slice view): the corpus refused it ('copy_') once the pow above
    was allowed; it is derived now, and rebuilds and matches. Only the block's own
    tensor is written: the caller's input is unchanged."""
    if str(ROOT / "runners") not in sys.path:
        sys.path.insert(0, str(ROOT / "runners"))
    import _export  # runners/_export.py

    from safehub._channel import rebuild_from_output

    class ClassAttentionTail(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.norm = torch.nn.LayerNorm(6)

        def forward(self, x):
            x = x * 2
            x[:, 0:1] = self.norm(x[:, 0:1])
            return x

    model = ClassAttentionTail().eval()
    x = torch.randn(2, 3, 6)
    _export.export_object(model, str(tmp_path), options={"mode": "aten"}, example_inputs=(x,), hubconf=None,
                          entrypoint="cls_tail")
    rebuilt = rebuild_from_output(tmp_path)
    assert "aten.copy_.default" in aten_forward_ops()
    x2 = torch.randn(4, 3, 6)  # another batch size
    before = x2.clone()
    with torch.no_grad():
        assert torch.allclose(rebuilt(x2), model(x2), atol=1e-6)
    assert torch.equal(x2, before)


def test_unchecked_family_is_a_substring_test_of_every_family_on_every_torch_name():
    """``unchecked_family`` searches one compiled alternation: for every name torch
    exposes (functions, functional, Tensor methods, aten ops) it must say what a
    plain substring test of each family says."""
    from safehub._channel import _allowlist

    names = set(dir(torch)) | set(dir(torch.nn.functional)) | set(dir(torch.Tensor)) | set(dir(torch.ops.aten))
    names |= {"max_pool2d_with_indices", "sparse_with_indices", "x_unsafe_index_y", "QUANTIZE", ""}
    assert len(names) > 2000
    for name in sorted(names):
        plain = name.replace("_with_indices", "")
        want = any(part in plain for part in _allowlist._UNCHECKED_FAMILIES)
        assert _allowlist.unchecked_family(name) is want, name
    assert _allowlist.unchecked_family("sparse_coo_tensor") and not _allowlist.unchecked_family("max_pool2d_with_indices")
