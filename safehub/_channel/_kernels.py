"""Checked wrappers for allowlisted aten kernels that trust their arguments' shapes.

Real models need these ops (tests/zoo weightnorm, every LSTM exported in aten
mode), but their CPU kernels read by the sizes they assume, not the sizes they got
(measured on torch 2.13, tests/test_kernel_allowlist.py):

- ``aten._weight_norm`` with ``g`` shorter than ``v``'s ``dim`` reads ``g`` past its
  end (rows of 1e22-sized garbage).
- ``aten.lstm.input`` goes to oneDNN's RNN, which takes the parameter and state
  tensors as raw buffers: wrong shapes give a result computed from memory outside them.

:func:`resolve_aten` hands a rebuilt graph these wrappers instead of the bare
OpOverload. Each checks the exact shapes the kernel assumes, makes its tensors
contiguous (a stride-0 view of the right shape is still a small buffer), and only
then calls the kernel. They run at forward time, so they raise
:class:`TensorMismatchError` naming the mismatch.
"""

from __future__ import annotations

from typing import Any

from .._errors import TensorMismatchError

__all__ = ["CHECKED", "ZEROED_FUNCTIONS", "weight_norm", "lstm_input"]


def _fail(op: str, what: str) -> TensorMismatchError:
    return TensorMismatchError(
        f"{op}: {what}; the rebuilt graph called the kernel with tensors it would read out of bounds",
        hint="the spec's weights do not fit its graph; re-export the model",
    )


def weight_norm(v: Any, g: Any, dim: int = 0) -> Any:
    """``aten._weight_norm(v, g, dim)`` with ``g`` checked against ``v``."""
    import torch

    if not isinstance(v, torch.Tensor) or not isinstance(g, torch.Tensor) or isinstance(dim, bool) or not isinstance(dim, int):
        raise _fail("aten._weight_norm", "v and g must be tensors and dim an int")
    if dim == -1:
        if g.numel() != 1:
            raise _fail("aten._weight_norm", f"dim=-1 needs a single-element g, got shape {list(g.shape)}")
    elif 0 <= dim < v.dim():
        want = [v.size(d) if d == dim else 1 for d in range(v.dim())]
        if list(g.shape) != want:
            raise _fail("aten._weight_norm", f"g has shape {list(g.shape)}, v of shape {list(v.shape)} needs {want}")
    else:
        raise _fail("aten._weight_norm", f"dim={dim} is out of range for v with {v.dim()} dimensions")
    if g.dtype != v.dtype or g.device != v.device:
        raise _fail("aten._weight_norm", "v and g differ in dtype or device")
    return torch.ops.aten._weight_norm.default(v.contiguous(), g.contiguous(), dim)


def lstm_input(
    input: Any,
    hx: Any,
    params: Any,
    has_biases: bool,
    num_layers: int,
    dropout: float,
    train: bool,
    bidirectional: bool,
    batch_first: bool,
) -> Any:
    """``aten.lstm.input`` with every parameter and state shape checked exactly as
    nn.LSTM lays them out (w_ih, w_hh[, b_ih, b_hh][, w_hr] per layer and direction)."""
    import torch

    op = "aten.lstm.input"
    tensors = [input, *(hx if isinstance(hx, (list, tuple)) else [None]), *(params if isinstance(params, (list, tuple)) else [None])]
    if not all(isinstance(t, torch.Tensor) for t in tensors) or not isinstance(hx, (list, tuple)) or len(hx) != 2:
        raise _fail(op, "input, hx (two tensors) and params must be tensors")
    if any(isinstance(f, bool) or not isinstance(f, int) for f in (num_layers,)) or num_layers < 1:
        raise _fail(op, f"num_layers must be a positive int, got {num_layers!r}")
    if any(t.dtype != input.dtype or t.device != input.device for t in tensors):
        raise _fail(op, "all tensors must share the input's dtype and device")
    if input.dim() != 3:  # nn.LSTM adds the batch dimension to unbatched input before the kernel
        raise _fail(op, f"input must be 3-D, got shape {list(input.shape)}")
    h0, c0 = hx
    dirs = 2 if bidirectional else 1
    if c0.dim() != input.dim() or h0.dim() != input.dim():
        raise _fail(op, f"h0 {list(h0.shape)} and c0 {list(c0.shape)} must have the input's number of dimensions")
    hidden, out = c0.size(-1), h0.size(-1)
    proj = out != hidden
    batch = [input.size(0 if batch_first else 1)]
    if list(h0.shape) != [num_layers * dirs, *batch, out] or list(c0.shape) != [num_layers * dirs, *batch, hidden]:
        raise _fail(op, f"h0 {list(h0.shape)} / c0 {list(c0.shape)} do not fit {num_layers} layers x {dirs} directions, batch {batch}")
    if proj and not 0 < out < hidden:
        raise _fail(op, f"projection size {out} must be below the hidden size {hidden}")
    per = 2 + (2 if has_biases else 0) + (1 if proj else 0)
    if len(params) != num_layers * dirs * per:
        raise _fail(op, f"{len(params)} parameters, {num_layers} layers x {dirs} directions need {num_layers * dirs * per}")
    it = iter(params)
    for layer in range(num_layers):
        width = input.size(-1) if layer == 0 else out * dirs
        for _ in range(dirs):
            want = [[4 * hidden, width], [4 * hidden, out]]
            want += [[4 * hidden], [4 * hidden]] if has_biases else []
            want += [[out, hidden]] if proj else []
            for shape in want:
                p = next(it)
                if list(p.shape) != shape:
                    raise _fail(op, f"layer {layer}: parameter of shape {list(p.shape)} where {shape} is needed")
    return torch.ops.aten.lstm.input(
        input.contiguous(), [h0.contiguous(), c0.contiguous()], [p.contiguous() for p in params],
        has_biases, num_layers, dropout, train, bidirectional, batch_first,
    )  # fmt: skip


# aten target -> the wrapper resolve_aten returns for it.
# The empty* factories hand out whatever the allocator last held: in the host that is
# host memory (tensors it computed before), which a graph could return as its output.
# A rebuilt graph gets zero-filled tensors instead, a valid instance of "uninitialised".


def _zeroed(t: Any) -> Any:
    import torch

    with torch.no_grad():  # in place on a fresh tensor, even one made with requires_grad
        t.zero_()
    return t


def empty(*args: Any, **kwargs: Any) -> Any:
    """``torch.empty``, zero-filled."""
    import torch

    return _zeroed(torch.empty(*args, **kwargs))


def empty_like(*args: Any, **kwargs: Any) -> Any:
    """``torch.empty_like``, zero-filled."""
    import torch

    return _zeroed(torch.empty_like(*args, **kwargs))


def empty_strided(*args: Any, **kwargs: Any) -> Any:
    """``torch.empty_strided``, zero-filled."""
    import torch

    return _zeroed(torch.empty_strided(*args, **kwargs))


def _aten_zeroed(op: str, overload: str) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        import torch

        return _zeroed(getattr(getattr(torch.ops.aten, op), overload)(*args, **kwargs))  # fixed names below

    call.__name__ = call.__qualname__ = f"aten_{op}_zeroed"
    return call


# fx function names -> zero-filling replacements (the host's function table uses these).
ZEROED_FUNCTIONS = {"empty": empty, "empty_like": empty_like, "empty_strided": empty_strided}

CHECKED = {
    "aten._weight_norm.default": weight_norm,
    "aten.lstm.input": lstm_input,
    "aten.empty.memory_format": _aten_zeroed("empty", "memory_format"),
    "aten.empty_like.default": _aten_zeroed("empty_like", "default"),
    "aten.empty_strided.default": _aten_zeroed("empty_strided", "default"),
    "aten.new_empty.default": _aten_zeroed("new_empty", "default"),
    "aten.new_empty_strided.default": _aten_zeroed("new_empty_strided", "default"),
}
