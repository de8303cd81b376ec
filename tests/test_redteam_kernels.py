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

Backward and statistics kernels must be refused at validation (checked in this
process: validation runs no kernel). The two that real models need (_weight_norm,
lstm) are accepted and must fail cleanly at forward; that forward runs in a
subprocess, because before the fix it read outside the buffers (or crashed).
"""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from safehub._channel import rebuild_from_output
from safehub._errors import DisallowedTargetError

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "tests" / "hostile"))
import kernel_specs  # noqa: E402


@pytest.mark.parametrize(
    "mode,variant",
    [("aten", "embedding_backward"), ("fx", "embedding_backward"), ("aten", "maxpool_backward"),
     ("aten", "batchnorm_backward"), ("aten", "layernorm_backward")],
)  # fmt: skip
def test_backward_kernels_are_refused_at_validation(mode, variant, tmp_path):
    """Before the fix embedding_dense_backward was BUILT (core ATen), and its forward
    segfaulted or wrote to the heap; norm backwards read rows outside the stats."""
    kernel_specs.write(tmp_path / "out", mode, variant)
    with pytest.raises(DisallowedTargetError, match="backward kernel"):
        rebuild_from_output(tmp_path / "out")


@pytest.mark.parametrize(
    "mode,variant",
    [("aten", "batchnorm_forward"), ("aten", "batchnorm_legit"), ("aten", "batchnorm_update_stats"),
     ("fx", "batchnorm_fx_function")],
)  # fmt: skip
def test_statistics_kernels_that_trust_sizes_are_refused_at_validation(mode, variant, tmp_path):
    """Forward kernels with one-element running stats for 64 channels: before the fix
    the model was built and its forward returned values read past the buffers."""
    kernel_specs.write(tmp_path / "out", mode, variant)
    with pytest.raises(DisallowedTargetError):
        rebuild_from_output(tmp_path / "out")


SCRIPT = textwrap.dedent(
    """
    import sys
    from pathlib import Path
    import torch
    import kernel_specs
    from safehub._channel import rebuild_from_output
    from safehub._errors import SafehubError

    out, variant = Path(sys.argv[1]), sys.argv[2]
    shape = kernel_specs.write(out, "aten", variant)
    model = rebuild_from_output(out)
    print("BUILT", flush=True)
    try:
        result = model(torch.randn(shape))
    except SafehubError as exc:
        print("FORWARD-REFUSED", type(exc).__name__, str(exc).splitlines()[0], flush=True)
        sys.exit(0)
    print("FORWARD", [r.flatten()[:4].tolist() for r in (result if isinstance(result, tuple) else (result,))], flush=True)
    """
)


@pytest.mark.slow  # a torch subprocess per case
@pytest.mark.parametrize("variant", ["weight_norm_short_g", "lstm_short_params"])
def test_shape_trusting_kernels_real_models_need_fail_cleanly_at_forward(variant, tmp_path):
    """Real models need these two (weight norm, LSTM in aten mode), so they are built
    behind checked wrappers: the forward raises a typed error instead of reading
    outside the undersized tensors (before: garbage rows, or a crash)."""
    script = tmp_path / "kernel_attack.py"
    script.write_text(SCRIPT)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), str(ROOT / "tests" / "hostile"), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run([sys.executable, str(script), str(tmp_path / "out"), variant],
                          capture_output=True, text=True, timeout=300, env=env)  # fmt: skip
    detail = f"rc={proc.returncode} stdout={proc.stdout[-600:]!r} stderr={proc.stderr[-600:]!r}"
    assert proc.returncode == 0 and "BUILT" in proc.stdout, detail
    assert "FORWARD-REFUSED TensorMismatchError" in proc.stdout, detail
