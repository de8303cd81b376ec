"""Red team: rebuilt graphs that call kernels trusting their arguments.

Found by the red-team review (safehub issue 10, item 1):

- a graph called a *backward* kernel (``embedding_dense_backward``: core ATen) with
  hostile index values: the host segfaulted at the first forward, other values gave
  silent heap writes;
- a graph called a norm backward kernel with undersized statistics tensors: most
  output rows were computed from host memory outside them, and the model was accepted.

Found while building the fix (same class, forward kernels): ``native_batch_norm`` /
``_native_batch_norm_legit_no_training`` (core ATen) read past undersized running
stats, ``_weight_norm`` reads past an undersized ``g``, and ``lstm`` (oneDNN) computes
from memory outside undersized parameters.

Each spec goes through the host's validation (rebuild_from_output) in a subprocess,
because a forward of an accepted spec may crash the interpreter. Backward and
statistics kernels must be refused at validation; the two that real models need
(_weight_norm, lstm) are accepted and must fail cleanly at forward.
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

SCRIPT = textwrap.dedent(
    """
    import json, sys
    from pathlib import Path
    import torch
    from st_save import save_file
    from safehub._channel import rebuild_from_output
    from safehub._errors import SafehubError

    out, mode, variant = Path(sys.argv[1]), sys.argv[2], sys.argv[3]
    out.mkdir()
    big = 100_000_000
    N = lambda name: {"node": name}  # noqa: E731
    L = lambda *v: {"list": list(v)}  # noqa: E731
    F = lambda v: {"float": repr(v)}  # noqa: E731
    # variant -> (weights, target, args, input shape); the weights are what an attacker ships
    table = {
        "embedding_backward": ({"idx": torch.tensor([[3, big]]), "g": torch.ones(1, 2, 4)},
                               "aten.embedding_dense_backward.default", [N("g"), N("idx"), 10, -1, False], [10, 4]),
        "maxpool_backward": ({"g": torch.ones(1, 1, 2, 2), "idx": torch.full((1, 1, 2, 2), big)},
                             "aten.max_pool2d_with_indices_backward.default",
                             [N("g"), N("x"), L(2, 2), L(2, 2), L(0, 0), L(1, 1), False, N("idx")], [1, 1, 4, 4]),
        "batchnorm_backward": ({"g": torch.ones(2, 64, 3), "w": torch.ones(64), "m": torch.zeros(1), "v": torch.ones(1)},
                               "aten.native_batch_norm_backward.default",
                               [N("g"), N("x"), N("w"), N("m"), N("v"), N("m"), N("v"), False, F(1e-5), L(True, False, False)],
                               [2, 64, 3]),
        "layernorm_backward": ({"g": torch.ones(64, 8), "m": torch.zeros(1, 1), "r": torch.ones(1, 1)},
                               "aten.native_layer_norm_backward.default",
                               [N("g"), N("x"), L(8), N("m"), N("r"), None, None, L(True, False, False)], [64, 8]),
        "batchnorm_forward": ({"m": torch.zeros(1), "v": torch.ones(1)}, "aten.native_batch_norm.default",
                              [N("x"), None, None, N("m"), N("v"), False, F(0.1), F(1e-5)], [2, 64, 3]),
        "batchnorm_legit": ({"m": torch.zeros(1), "v": torch.ones(1)},
                            "aten._native_batch_norm_legit_no_training.default",
                            [N("x"), None, None, N("m"), N("v"), F(0.1), F(1e-5)], [2, 64, 3]),
        "batchnorm_update_stats": ({"m": torch.zeros(1), "v": torch.ones(1)}, "aten.batch_norm_update_stats.default",
                                   [N("x"), N("m"), N("v"), F(0.1)], [2, 64, 3]),
        "batchnorm_fx_function": ({"m": torch.zeros(1), "v": torch.ones(1)}, "torch.native_batch_norm",
                                  [N("x"), None, None, N("m"), N("v"), False, F(0.1), F(1e-5)], [2, 64, 3]),
        "weight_norm_short_g": ({"v": torch.ones(64, 3), "gg": torch.ones(2, 1)}, "aten._weight_norm.default",
                                [N("v"), N("gg"), 0], [64, 3]),
        "lstm_short_params": ({"wi": torch.randn(12, 4), "wh": torch.randn(12, 1), "bi": torch.randn(12), "bh": torch.randn(12),
                               "h": torch.zeros(1, 2, 3)},
                              "aten.lstm.input",
                              [N("x"), L(N("h"), N("h")), L(N("wi"), N("wh"), N("bi"), N("bh")), True, 1, F(0.0), False, False, True],
                              [2, 5, 4]),
    }
    tensors, target, args, shape = table[variant]
    const = {"kind": "constant", "requires_grad": False, "persistent": False}
    nodes = [{"op": "placeholder", "name": "x", "target": "x"}]
    nodes += [{"op": "get_attr", "name": n, "target": n} for n in tensors]
    nodes += [{"op": "call_function", "name": "k", "target": target, "args": args},
              {"op": "output", "name": "output", "target": "output", "args": [N("k")]}]
    infos = {n: {"dtype": str(t.dtype).split(".")[1], "shape": list(t.shape), **const} for n, t in tensors.items()}
    spec = {"format": "safehub-arch", "version": 1, "torch_version": torch.__version__, "root": {"module": "m0"},
            "modules": {"m0": {"mode": mode, "training": False, "tensors": infos, "aliases": {}, "leaves": {},
                               "submodules": {}, "graphs": {"eval": {"nodes": nodes}}}}}
    (out / "spec.json").write_text(json.dumps(spec))
    save_file({f"m0.{n}": t for n, t in tensors.items()}, str(out / "weights.safetensors"))
    try:
        model = rebuild_from_output(out)
    except SafehubError as exc:
        print("REFUSED", type(exc).__name__, str(exc).splitlines()[0], flush=True)
        sys.exit(0)
    print("BUILT", flush=True)
    try:
        result = model(torch.randn(shape))
    except SafehubError as exc:
        print("FORWARD-REFUSED", type(exc).__name__, str(exc).splitlines()[0], flush=True)
        sys.exit(0)
    print("FORWARD", [r.flatten()[:4].tolist() if isinstance(r, torch.Tensor) else r for r in (result if isinstance(result, tuple) else (result,))], flush=True)
    """
)


def _run(tmp_path: Path, mode: str, variant: str) -> subprocess.CompletedProcess[str]:
    script = tmp_path / "kernel_attack.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "hostile"), os.environ.get("PYTHONPATH", "")])}
    return subprocess.run(
        [sys.executable, str(script), str(tmp_path / f"out-{mode}-{variant}"), mode, variant],
        capture_output=True, text=True, timeout=300, env=env,
    )


def _detail(proc: subprocess.CompletedProcess[str]) -> str:
    return f"rc={proc.returncode} stdout={proc.stdout[-600:]!r} stderr={proc.stderr[-600:]!r}"


@pytest.mark.parametrize(
    "mode,variant",
    [("aten", "embedding_backward"), ("fx", "embedding_backward"), ("aten", "maxpool_backward"),
     ("aten", "batchnorm_backward"), ("aten", "layernorm_backward")],
)  # fmt: skip
def test_backward_kernels_are_refused_at_validation(mode, variant, tmp_path):
    """Before the fix: BUILT, then SIGSEGV or rows read from outside the stats (core ATen tag)."""
    proc = _run(tmp_path, mode, variant)
    assert "REFUSED DisallowedTargetError" in proc.stdout and "backward kernel" in proc.stdout, _detail(proc)


@pytest.mark.parametrize(
    "mode,variant",
    [("aten", "batchnorm_forward"), ("aten", "batchnorm_legit"), ("aten", "batchnorm_update_stats"),
     ("fx", "batchnorm_fx_function")],
)  # fmt: skip
def test_statistics_kernels_that_trust_sizes_are_refused_at_validation(mode, variant, tmp_path):
    """Forward kernels with undersized running stats: before the fix the model was
    built and its forward returned values read past the one-element buffers."""
    proc = _run(tmp_path, mode, variant)
    assert "REFUSED DisallowedTargetError" in proc.stdout, _detail(proc)


@pytest.mark.parametrize("variant", ["weight_norm_short_g", "lstm_short_params"])
def test_shape_trusting_kernels_real_models_need_fail_cleanly_at_forward(variant, tmp_path):
    """Real models need these two (weight norm, LSTM in aten mode), so they are
    built behind checked wrappers: the forward raises a typed error instead of
    reading outside the undersized tensors."""
    proc = _run(tmp_path, "aten", variant)
    assert proc.returncode == 0 and "BUILT" in proc.stdout, _detail(proc)
    assert "FORWARD-REFUSED TensorMismatchError" in proc.stdout, _detail(proc)
