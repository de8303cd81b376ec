"""Hostile arguments for every allowlisted kernel that takes index values, statistics
or per-channel tensors whose *sizes or values* it could trust (tests/test_kernel_allowlist.py).

Each entry maps an allowlisted target (``aten.<op>.<overload>`` or an fx function
name) to variants ``(label, make)``: ``make()`` returns ``(args, kwargs)`` that are
out of range (past the end, negative past the start, huge) or undersized. A kernel
passes when every variant raises a clean Python exception; a crash, or a result
(garbage read from outside the buffers), fails. Values come from weights in a real
attack, so each variant is a plain tensor a spec could carry.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

Make = Callable[[], tuple[tuple, dict]]
Variants = list[tuple[str, Make]]


def _bad(n: int) -> list[tuple[str, int]]:
    """Index values outside [-n, n): just past the end, just before the start, huge."""
    return [("end", n), ("neg", -n - 1), ("2^31", 2**31), ("2^40", 2**40), ("-2^62", -(2**62))]


def _idx(v: int, *shape: int) -> torch.Tensor:
    t = torch.zeros(shape or (2,), dtype=torch.long)
    t.view(-1)[-1] = v
    return t


def _index_variants(n: int, build: Callable[[int], tuple[tuple, dict]]) -> Variants:
    return [(label, (lambda v=v: build(v))) for label, v in _bad(n)]


def _x(*shape: int) -> torch.Tensor:
    return torch.randn(*shape)


# Index-taking kernels: tensor values select memory.
_EMB = torch.randn(10, 3)
INDEX_CASES: dict[str, Variants] = {
    "aten.embedding.default": _index_variants(10, lambda v: ((_EMB, _idx(v, 2, 2)), {})),
    "aten.embedding_bag.padding_idx": [
        *_index_variants(10, lambda v: ((_EMB, _idx(v, 4), torch.tensor([0, 2]), False, 1, False, None, False, None), {})),
        *[(f"offset-{label}", (lambda v=v: ((_EMB, torch.zeros(4, dtype=torch.long), torch.tensor([0, v]), False, 1, False, None, False, None), {})))
          for label, v in _bad(4) if v > 4],  # an offset past the indices
        ("offset-neg", lambda: ((_EMB, torch.zeros(4, dtype=torch.long), torch.tensor([-3, 2]), False, 1, False, None, False, None), {})),
        ("offset-decreasing", lambda: ((_EMB, torch.zeros(4, dtype=torch.long), torch.tensor([3, 1]), False, 1, False, None, False, None), {})),
        ("weights-short", lambda: ((_EMB, torch.zeros(4, dtype=torch.long), torch.tensor([0, 2]), False, 0, False, torch.ones(1), False, None), {})),
        *[(f"padding_idx-{label}", (lambda v=v: ((_EMB, torch.zeros(4, dtype=torch.long), torch.tensor([0, 2]), False, 1, False, None, False, v), {})))
          for label, v in _bad(10)],
    ],
    "aten.index.Tensor": [*_index_variants(4, lambda v: ((_x(4, 3), [_idx(v)]), {})),
                          ("mask-shape", lambda: ((_x(4, 3), [torch.ones(5, dtype=torch.bool)]), {})),
                          *[(f"dim1-{label}", (lambda v=v: ((_x(4, 3), [None, _idx(v)]), {}))) for label, v in _bad(3)]],
    "aten.index_put_.default": [
        *_index_variants(4, lambda v: ((_x(4, 3), [_idx(v)], torch.ones(3)), {})),
        *[(f"accumulate-{label}", (lambda v=v: ((_x(4, 3), [_idx(v)], torch.ones(3), True), {}))) for label, v in _bad(4)],
        ("mask-shape", lambda: ((_x(4, 3), [torch.ones(5, dtype=torch.bool)], torch.ones(3)), {})),
    ],
    "aten.index_select.default": _index_variants(4, lambda v: ((_x(4, 3), 0, _idx(v)), {})),
    # src is written into self: a src that does not broadcast to self (larger, or
    # undersized but not broadcastable), a self whose elements alias one another
    # (an expanded view), and a src overlapping self in part (a shifted view).
    "aten.copy_.default": [
        ("src-larger", lambda: ((_x(2, 3), _x(4, 3)), {})),
        ("src-undersized", lambda: ((_x(4, 3), _x(2, 3)), {})),
        ("src-more-dims", lambda: ((_x(3), _x(2, 3)), {})),
        ("self-expanded", lambda: ((_x(1, 3).expand(4, 3), _x(4, 3)), {})),
        ("partial-overlap", lambda: ((lambda b: (b[1:], b[:-1]))(_x(8)), {})),
    ],
    "aten.gather.default": _index_variants(3, lambda v: ((_x(4, 3), 1, _idx(v, 4, 1)), {})),
    "aten.scatter.value": _index_variants(3, lambda v: ((_x(4, 3), 1, _idx(v, 4, 1), 1.0), {})),
    "aten.max_unpool2d.default": _index_variants(16, lambda v: ((_x(1, 1, 2, 2), _idx(v, 1, 1, 2, 2), [4, 4]), {})),
    # int arguments that address memory
    "aten.select.int": _index_variants(4, lambda v: ((_x(4, 3), 0, v), {})),
    "aten.narrow.default": [(f"start-{label}", (lambda v=v: ((_x(4, 3), 0, v, 2), {}))) for label, v in _bad(4)],
    "aten.split_with_sizes.default": [("sizes-over", lambda: ((_x(4, 3), [3, 3]), {})), ("sizes-neg", lambda: ((_x(4, 3), [6, -2]), {}))],
    "aten.unbind.int": [("dim", lambda: ((_x(4, 3), 5), {}))],
    "aten.topk.default": [("k-over", lambda: ((_x(4, 3), 5), {})), ("k-neg", lambda: ((_x(4, 3), -1), {})),
                          ("dim", lambda: ((_x(4, 3), 1, 7), {}))],
    "aten.pad.default": [("neg-past", lambda: ((_x(1, 2, 4), [-10, -10]), {})),
                         ("reflect-over", lambda: ((_x(1, 2, 4), [5, 5], "reflect"), {})),
                         ("replicate-neg", lambda: ((_x(1, 2, 4), [-5, 0], "replicate"), {})),
                         ("circular-over", lambda: ((_x(1, 2, 4), [9, 9], "circular"), {}))],
    "aten.pixel_shuffle.default": [("factor", lambda: ((_x(1, 6, 2, 2), 2), {}))],
    "aten.channel_shuffle.default": [("groups", lambda: ((_x(1, 6, 2, 2), 4), {}))],
    "aten.cat.default": [("shapes", lambda: (([_x(4, 3), _x(4, 5)], 0), {}))],
}  # fmt: skip


def _bn(mean: int, var: int, w: int, training: bool) -> tuple[tuple, dict]:
    return ((_x(2, 4, 3), torch.ones(w), torch.ones(w), torch.zeros(mean), torch.ones(var), training, 0.1, 1e-5, False), {})


def _lstm_params(hidden: int, inp: int, bad: str) -> list[torch.Tensor]:
    wi, wh, bi, bh = torch.randn(4 * hidden, inp), torch.randn(4 * hidden, hidden), torch.randn(4 * hidden), torch.randn(4 * hidden)
    if bad == "w_ih":
        wi = torch.randn(1, inp)
    elif bad == "w_hh":
        wh = torch.randn(4 * hidden, 1)
    elif bad == "bias":
        bi = torch.randn(1)
    elif bad == "count":
        return [wi, wh, bi]
    return [wi, wh, bi, bh]


def _gru_params(hidden: int, inp: int, bad: str) -> list[torch.Tensor]:
    ps = [torch.randn(3 * hidden, inp), torch.randn(3 * hidden, hidden), torch.randn(3 * hidden), torch.randn(3 * hidden)]
    if bad == "w_hh":
        ps[1] = torch.randn(2, hidden)
    elif bad == "bias":
        ps[3] = torch.randn(2)
    return ps


# Kernels with statistics or per-channel tensors whose sizes they could trust
# (the red team's second finding was a norm kernel reading past undersized stats).
STAT_CASES: dict[str, Variants] = {
    "aten.batch_norm.default": [
        ("stats-short-eval", lambda: _bn(1, 1, 4, False)),
        ("stats-short-train", lambda: _bn(1, 1, 4, True)),
        ("var-short-eval", lambda: _bn(4, 1, 4, False)),
        ("weight-short-train", lambda: _bn(4, 4, 1, True)),
        ("weight-short-eval", lambda: _bn(4, 4, 2, False)),
    ],
    "aten.instance_norm.default": [
        ("stats-short", lambda: ((_x(2, 4, 3), None, None, torch.zeros(1), torch.ones(1), True, 0.1, 1e-5, False), {})),
        ("weight-short", lambda: ((_x(2, 4, 3), torch.ones(1), torch.ones(1), None, None, True, 0.1, 1e-5, False), {})),
        ("stats-eval-short", lambda: ((_x(2, 4, 3), None, None, torch.zeros(1), torch.ones(1), False, 0.1, 1e-5, False), {})),
    ],
    "aten.group_norm.default": [("weight-short", lambda: ((_x(2, 4, 3), 2, torch.ones(1), torch.ones(1), 1e-5, False), {})),
                                ("groups", lambda: ((_x(2, 4, 3), 3, None, None, 1e-5, False), {}))],
    "aten.layer_norm.default": [("weight-short", lambda: ((_x(2, 4, 3), [3], torch.ones(1), torch.ones(1), 1e-5, False), {})),
                                ("shape", lambda: ((_x(2, 4, 3), [5], None, None, 1e-5, False), {}))],
    "aten.rms_norm.default": [("weight-short", lambda: ((_x(2, 4, 3), [3], torch.ones(1), 1e-5), {}))],
    "aten.lstm.input": [
        (bad, (lambda bad=bad: ((_x(2, 5, 4), [torch.zeros(1, 2, 3), torch.zeros(1, 2, 3)], _lstm_params(3, 4, bad), True, 1, 0.0, False, False, True), {})))
        for bad in ("w_ih", "w_hh", "bias", "count")
    ] + [("hx-short", lambda: ((_x(2, 5, 4), [torch.zeros(1, 2, 1), torch.zeros(1, 2, 1)], _lstm_params(3, 4, ""), True, 1, 0.0, False, False, True), {})),
         ("layers", lambda: ((_x(2, 5, 4), [torch.zeros(2, 2, 3), torch.zeros(2, 2, 3)], _lstm_params(3, 4, ""), True, 2, 0.0, False, False, True), {}))],
    "aten.gru.input": [
        (bad, (lambda bad=bad: ((_x(2, 5, 4), torch.zeros(1, 2, 3), _gru_params(3, 4, bad), True, 1, 0.0, False, False, True), {})))
        for bad in ("w_hh", "bias")
    ] + [("hx-short", lambda: ((_x(2, 5, 4), torch.zeros(1, 2, 1), _gru_params(3, 4, ""), True, 1, 0.0, False, False, True), {}))],
    "aten.rnn_tanh.input": [("hx-short", lambda: ((_x(2, 5, 4), torch.zeros(1, 2, 1), [torch.randn(3, 4), torch.randn(3, 3), torch.randn(3), torch.randn(3)], True, 1, 0.0, False, False, True), {})),
                            ("w-short", lambda: ((_x(2, 5, 4), torch.zeros(1, 2, 3), [torch.randn(3, 4), torch.randn(1, 3), torch.randn(3), torch.randn(3)], True, 1, 0.0, False, False, True), {}))],
    "aten.lstm_cell.default": [("w-short", lambda: ((_x(2, 4), [torch.zeros(2, 3), torch.zeros(2, 3)], torch.randn(12, 4), torch.randn(2, 3)), {})),
                               ("b-short", lambda: ((_x(2, 4), [torch.zeros(2, 3), torch.zeros(2, 3)], torch.randn(12, 4), torch.randn(12, 3), torch.randn(2), torch.randn(2)), {}))],
    "aten.gru_cell.default": [("w-short", lambda: ((_x(2, 4), torch.zeros(2, 3), torch.randn(9, 4), torch.randn(2, 3)), {})),
                              ("b-short", lambda: ((_x(2, 4), torch.zeros(2, 3), torch.randn(9, 4), torch.randn(9, 3), torch.randn(2), torch.randn(2)), {}))],
    "aten.prelu.default": [("weight-short", lambda: ((_x(2, 4, 3), torch.ones(3)), {}))],
    "aten.conv2d.default": [("bias-short", lambda: ((_x(1, 2, 4, 4), torch.randn(4, 2, 3, 3), torch.ones(2)), {}))],
    "aten.conv1d.default": [("bias-short", lambda: ((_x(1, 2, 4), torch.randn(4, 2, 3), torch.ones(2)), {}))],
    "aten.conv3d.default": [("bias-short", lambda: ((_x(1, 2, 4, 4, 4), torch.randn(4, 2, 3, 3, 3), torch.ones(2)), {}))],
    "aten.conv_transpose1d.default": [("bias-short", lambda: ((_x(1, 2, 4), torch.randn(2, 4, 3), torch.ones(2)), {}))],
    "aten.conv_transpose3d.input": [("bias-short", lambda: ((_x(1, 2, 4, 4, 4), torch.randn(2, 4, 3, 3, 3), torch.ones(2)), {}))],
    "aten.upsample_bilinear2d.vec": [("size-neg", lambda: ((_x(1, 2, 4, 4), [-3, 5], False, None), {})),
                                     ("scale-neg", lambda: ((_x(1, 2, 4, 4), None, False, [-2.0, 2.0]), {}))],
    "aten.linalg_vector_norm.default": [("dim", lambda: ((_x(2, 3), 2, [5]), {}))],
    "aten.upsample_bicubic2d.vec": [("size-neg", lambda: ((_x(1, 2, 4, 4), [-3, 5], False, None), {})),
                                    ("scale-neg", lambda: ((_x(1, 2, 4, 4), None, False, [-2.0, 2.0]), {}))],
    # schema (input, output_size, align_corners, scale_factors), like upsample_bicubic2d.vec
    "aten._upsample_bicubic2d_aa.vec": [("size-neg", lambda: ((_x(1, 2, 4, 4), [-3, 5], False, None), {})),
                                        ("scale-neg", lambda: ((_x(1, 2, 4, 4), None, False, [-2.0, 2.0]), {})),
                                        ("size-huge", lambda: ((_x(1, 2, 4, 4), [2**40, 2**40], False, None), {}))],
    "aten._upsample_bilinear2d_aa.vec": [("size-neg", lambda: ((_x(1, 2, 4, 4), [-3, 5], False, None), {})),
                                         ("scale-neg", lambda: ((_x(1, 2, 4, 4), None, False, [-2.0, 2.0]), {})),
                                         ("size-huge", lambda: ((_x(1, 2, 4, 4), [2**40, 2**40], False, None), {}))],
    "aten.upsample_nearest2d.vec": [("size-neg", lambda: ((_x(1, 2, 4, 4), [-3, 5], None), {})),
                                    ("scale-neg", lambda: ((_x(1, 2, 4, 4), None, [-2.0, 2.0]), {}))],
    "aten.upsample_linear1d.vec": [("size-neg", lambda: ((_x(1, 2, 4), [-3], False, None), {})),
                                   ("scale-neg", lambda: ((_x(1, 2, 4), None, False, [-2.0]), {}))],
    "aten.upsample_trilinear3d.vec": [("size-neg", lambda: ((_x(1, 2, 4, 4, 4), [-3, 5, 5], False, None), {})),
                                      ("scale-neg", lambda: ((_x(1, 2, 4, 4, 4), None, False, [-2.0, 2.0, 2.0]), {}))],
    "aten.im2col.default": [("pad-neg", lambda: ((_x(1, 2, 4, 4), [2, 2], [1, 1], [-3, -3], [1, 1]), {})),
                            ("dilation-huge", lambda: ((_x(1, 2, 4, 4), [2, 2], [2**40, 2**40], [0, 0], [1, 1]), {})),
                            ("kernel-huge", lambda: ((_x(1, 2, 4, 4), [2**31, 2], [1, 1], [0, 0], [1, 1]), {}))],
    "aten.conv_transpose2d.input": [("bias-short", lambda: ((_x(1, 2, 4, 4), torch.randn(2, 4, 3, 3), torch.ones(2)), {}))],
    "aten.bilinear.default": [("bias-short", lambda: ((_x(2, 4), _x(2, 4), torch.randn(3, 4, 4), torch.ones(2)), {}))],
    "aten._weight_norm.default": [("g-short", lambda: ((_x(4, 3), torch.ones(2, 1), 0), {}))],
    "aten.col2im.default": [("output-small", lambda: ((_x(1, 12, 4), [2, 2], [2, 2], [1, 1], [0, 0], [1, 1]), {}))],
    "aten.scaled_dot_product_attention.default": [("mask-shape", lambda: ((_x(1, 2, 5, 4), _x(1, 2, 5, 4), _x(1, 2, 5, 4), torch.ones(3, 3, dtype=torch.bool)), {}))],
}  # fmt: skip


CASES: dict[str, Variants] = {**INDEX_CASES, **STAT_CASES}


# Kernels that define out-of-range indices as wrapping (take_along_dim reduces them
# modulo the size) or clamp them (fractional pooling's window positions): memory-safe
# if every value they return is one of the source's.
WRAPPING = frozenset({"torch.take_along_dim", "torch.nn.functional.fractional_max_pool2d_with_indices",
                      "torch.nn.functional.fractional_max_pool3d_with_indices",
                      "torch.nn.functional.fractional_max_pool2d", "torch.nn.functional.fractional_max_pool3d"})


def run(fn: Any, make: Make, wraps: bool = False) -> str:
    """'clean <Exc>' if the kernel refused the arguments, 'clean wrapped' if it wraps
    them and returned only values of its source, 'silent' if it returned anything else."""
    args, kwargs = make()
    try:
        out = fn(*args, **kwargs)
    except (RuntimeError, IndexError, ValueError, TypeError) as exc:
        return f"clean {type(exc).__name__}"
    first = out[0] if isinstance(out, tuple) else out  # (values, indices) for pooling
    if wraps and isinstance(first, torch.Tensor) and bool(torch.isin(first, args[0]).all()):
        return "clean wrapped"
    return "silent"


# fx graphs call torch functions directly: the same kernels, reached by their public names.
def _fx() -> dict[str, Variants]:
    import torch.nn.functional as F

    x = lambda: _x(4, 3)  # noqa: E731
    iv = _index_variants
    w = torch.randn(10, 3)
    bag = lambda fn, v, **kw: ((_idx(v, 4), w, torch.tensor([0, 2])), kw) if fn == "F" else ((w, _idx(v, 4), torch.tensor([0, 2]), False, 1, False, None, False, None), {})  # noqa: E731
    nonneg = lambda n: [(lbl, v) for lbl, v in _bad(n) if lbl in ("end", "neg")]  # noqa: E731  - huge = allocation size, not an index
    cases: dict[str, Variants] = {
        "torch.gather": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1)), {})),
        "torch.scatter": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1), 1.0), {})),
        "torch.scatter_add": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1), _x(4, 1)), {})),
        "torch.scatter_reduce": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1), _x(4, 1), "amax"), {})),
        "torch.index_select": iv(4, lambda v: ((x(), 0, _idx(v)), {})),
        "torch.index_add": iv(4, lambda v: ((x(), 0, _idx(v), _x(2, 3)), {})),
        "torch.index_copy": iv(4, lambda v: ((x(), 0, _idx(v), _x(2, 3)), {})),
        "torch.index_fill": iv(4, lambda v: ((x(), 0, _idx(v), 1.0), {})),
        "torch.index_put": iv(4, lambda v: ((x(), (_idx(v),), torch.ones(3)), {})),
        "torch.index_reduce": iv(4, lambda v: ((x(), 0, _idx(v), _x(2, 3), "prod"), {})),
        "torch.take": iv(12, lambda v: ((x(), _idx(v)), {})),
        "torch.take_along_dim": iv(3, lambda v: ((torch.arange(12.0).view(4, 3), _idx(v, 4, 1), 1), {})),
        "torch.put": iv(12, lambda v: ((x(), _idx(v), torch.ones(2)), {})),
        "torch.embedding": iv(10, lambda v: ((w, _idx(v, 2, 2)), {})),
        "torch.embedding_bag": iv(10, lambda v: bag("torch", v)),
        "torch.nn.functional.embedding": [*iv(10, lambda v: ((_idx(v, 2, 2), w), {})),
                                          *[(f"max_norm-{lbl}", (lambda v=v: ((_idx(v, 2, 2), w.clone()), {"max_norm": 1.0}))) for lbl, v in _bad(10)]],
        "torch.nn.functional.embedding_bag": [*iv(10, lambda v: bag("F", v)),
                                              *[(f"max_norm-{lbl}", (lambda v=v: bag("F", v, max_norm=1.0))) for lbl, v in _bad(10)]],
        "torch.nn.functional.max_unpool1d": iv(4, lambda v: ((_x(1, 1, 2), _idx(v, 1, 1, 2), 2), {})),
        "torch.nn.functional.max_unpool2d": iv(16, lambda v: ((_x(1, 1, 2, 2), _idx(v, 1, 1, 2, 2), 2), {})),
        "torch.nn.functional.max_unpool3d": iv(64, lambda v: ((_x(1, 1, 2, 2, 2), _idx(v, 1, 1, 2, 2, 2), 2), {})),
        "torch.nn.functional.nll_loss": iv(5, lambda v: ((_x(2, 5).log_softmax(1), _idx(v)), {})),
        "torch.nn.functional.cross_entropy": iv(5, lambda v: ((_x(2, 5), _idx(v)), {})),
        "torch.nn.functional.multi_margin_loss": iv(5, lambda v: ((_x(2, 5), _idx(v)), {})),
        "torch.nn.functional.multilabel_margin_loss": iv(5, lambda v: ((_x(2, 5), _idx(v, 2, 5)), {})),
        "torch.nn.functional.linear_cross_entropy": iv(5, lambda v: ((_x(2, 4), torch.randn(5, 4), _idx(v)), {})),
        "torch.nn.functional.one_hot": iv(5, lambda v: ((_idx(v, 3), 5), {})),
        "torch.bincount": [(lbl, (lambda v=v: ((_idx(v, 3),), {}))) for lbl, v in nonneg(0) if v < 0]
        + [("weights-short", lambda: ((torch.tensor([0, 1, 2]), torch.ones(1)), {}))],
        "torch.searchsorted": iv(5, lambda v: ((torch.arange(5.0), torch.tensor([2.5])), {"sorter": _idx(v, 5)})),
        "torch.repeat_interleave": [("neg", lambda: ((x(), torch.tensor([1, -2, 1, 1])), {"dim": 0})),
                                    ("length", lambda: ((x(), torch.tensor([1, 2])), {"dim": 0}))],
        "torch.masked_scatter": [("source-short", lambda: ((x(), torch.ones(4, 3, dtype=torch.bool), torch.ones(2)), {}))],
        "torch.diagonal_scatter": [("src-shape", lambda: ((_x(3, 3), torch.ones(5)), {})), ("offset", lambda: ((_x(3, 3), torch.ones(3), 2**40), {}))],
        "torch.select_scatter": iv(4, lambda v: ((x(), torch.ones(3), 0, v), {})),
        "torch.slice_scatter": [("src-shape", lambda: ((x(), torch.ones(5, 3)), {})), ("start", lambda: ((x(), torch.ones(2, 3), 0, 2**40, 2**40 + 2), {}))],
        # window positions come from _random_samples values: the kernel clamps them into the input
        "torch.nn.functional.fractional_max_pool2d_with_indices": [
            *[(lbl, (lambda v=v: ((torch.arange(64.0).view(1, 1, 8, 8), 2), {"output_size": (3, 3), "_random_samples": torch.full((1, 1, 2), v)})))
              for lbl, v in (("huge", 1e9), ("neg", -1e9), ("nan", float("nan")), ("inf", float("inf")), ("below", -0.5))],
            ("samples-short", lambda: ((torch.arange(64.0).view(1, 1, 8, 8), 2), {"output_size": (3, 3), "_random_samples": torch.full((1, 1, 1), 0.5)})),
        ],
        "torch.nn.functional.fractional_max_pool3d_with_indices": [
            *[(lbl, (lambda v=v: ((torch.arange(216.0).view(1, 1, 6, 6, 6), 2), {"output_size": (2, 2, 2), "_random_samples": torch.full((1, 1, 3), v)})))
              for lbl, v in (("huge", 1e9), ("neg", -1e9), ("nan", float("nan")))],
            ("samples-short", lambda: ((torch.arange(216.0).view(1, 1, 6, 6, 6), 2), {"output_size": (2, 2, 2), "_random_samples": torch.full((1, 1, 1), 0.5)})),
        ],
        "torch.native_group_norm": [("ints", lambda: ((_x(2, 4, 3), None, None, 2, 4, 100000, 2, 1e-5), {})),
                                    ("weight-short", lambda: ((_x(2, 4, 3), torch.ones(1), torch.ones(1), 2, 4, 3, 2, 1e-5), {}))],
        "torch.native_layer_norm": [("weight-short", lambda: ((_x(2, 4, 3), [3], torch.ones(1), torch.ones(1), 1e-5), {}))],
        "torch.lstm_cell": STAT_CASES["aten.lstm_cell.default"],
        "torch.gru_cell": STAT_CASES["aten.gru_cell.default"],
        "torch.rnn_tanh_cell": [("w-short", lambda: ((_x(2, 4), torch.zeros(2, 3), torch.randn(3, 4), torch.randn(1, 3)), {}))],
        "torch.rnn_relu_cell": [("w-short", lambda: ((_x(2, 4), torch.zeros(2, 3), torch.randn(3, 4), torch.randn(1, 3)), {}))],
        "torch.gru": STAT_CASES["aten.gru.input"],
        "torch.rnn_tanh": STAT_CASES["aten.rnn_tanh.input"],
        "torch.rnn_relu": STAT_CASES["aten.rnn_tanh.input"],
    }  # fmt: skip
    for d in ("2d", "3d"):
        cases[f"torch.nn.functional.fractional_max_pool{d}"] = cases[f"torch.nn.functional.fractional_max_pool{d}_with_indices"]
    for name in ("batch_norm", "instance_norm", "group_norm", "layer_norm", "rms_norm"):
        cases[f"torch.{name}"] = STAT_CASES[f"aten.{name}.default"]
    # The functional forms take keyword-friendly signatures: undersized stats and weights.
    cases["torch.nn.functional.batch_norm"] = [
        ("stats-short", lambda: ((_x(2, 4, 3), torch.zeros(1), torch.ones(1)), {})),
        ("weight-short", lambda: ((_x(2, 4, 3), torch.zeros(4), torch.ones(4), torch.ones(1), torch.ones(1)), {})),
        ("train-stats-short", lambda: ((_x(2, 4, 3), torch.zeros(1), torch.ones(1)), {"training": True})),
    ]
    cases["torch.nn.functional.instance_norm"] = [("stats-short", lambda: ((_x(2, 4, 3), torch.zeros(1), torch.ones(1)), {"use_input_stats": False}))]
    cases["torch.nn.functional.group_norm"] = [("weight-short", lambda: ((_x(2, 4, 3), 2, torch.ones(1), torch.ones(1)), {}))]
    cases["torch.nn.functional.layer_norm"] = [("weight-short", lambda: ((_x(2, 4, 3), [3], torch.ones(1), torch.ones(1)), {}))]
    cases["torch.nn.functional.rms_norm"] = [("weight-short", lambda: ((_x(2, 4, 3), [3], torch.ones(1)), {}))]
    return cases


FX_CASES = _fx()
# fx functions the completeness check's name pattern matches that take no index
# values or statistics: float targets and boundaries, compared or combined elementwise.
FX_NOT_INDEXED = frozenset(
    {"torch.bucketize", "torch.cosine_embedding_loss", "torch.hinge_embedding_loss", "torch.poisson_nll_loss",
     "torch.binary_cross_entropy_with_logits", "torch.triplet_margin_loss", "torch.nn.functional.poisson_nll_loss",
     "torch.nn.functional.gaussian_nll_loss", "torch.nn.functional.binary_cross_entropy",
     "torch.nn.functional.binary_cross_entropy_with_logits", "torch.nn.functional.hinge_embedding_loss",
     "torch.nn.functional.soft_margin_loss", "torch.nn.functional.multilabel_soft_margin_loss",
     "torch.nn.functional.cosine_embedding_loss", "torch.nn.functional.triplet_margin_loss",
     # arithmetic on the index values (// and %), reads no memory by them
     "torch.unravel_index", "torch.functional.unravel_index"}
)  # fmt: skip
CASES.update(FX_CASES)


# fx graphs also call Tensor methods: the in-place forms have kernels of their own
# (index_put_ with accumulate=True, put_ with accumulate=True take other paths).
def _methods() -> dict[str, Variants]:
    x = lambda: _x(4, 3)  # noqa: E731
    iv = _index_variants
    cases: dict[str, Variants] = {
        "scatter_": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1), 1.0), {})),
        "scatter_add_": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1), _x(4, 1)), {})),
        "scatter_reduce_": iv(3, lambda v: ((x(), 1, _idx(v, 4, 1), _x(4, 1), "prod"), {})),
        "index_add_": iv(4, lambda v: ((x(), 0, _idx(v), _x(2, 3)), {})),
        "index_copy_": iv(4, lambda v: ((x(), 0, _idx(v), _x(2, 3)), {})),
        "index_fill_": iv(4, lambda v: ((x(), 0, _idx(v), 1.0), {})),
        "index_put_": [*iv(4, lambda v: ((x(), (_idx(v),), torch.ones(3)), {})),
                       *[(f"accumulate-{lbl}", (lambda v=v: ((x(), (_idx(v),), torch.ones(3), True), {}))) for lbl, v in _bad(4)]],
        "index_reduce_": iv(4, lambda v: ((x(), 0, _idx(v), _x(2, 3), "amax"), {})),
        "put_": [*iv(12, lambda v: ((x(), _idx(v), torch.ones(2)), {})),
                 *[(f"accumulate-{lbl}", (lambda v=v: ((x(), _idx(v), torch.ones(2), True), {}))) for lbl, v in _bad(12)]],
        "masked_scatter_": [("source-short", lambda: ((x(), torch.ones(4, 3, dtype=torch.bool), torch.ones(2)), {}))],
        "renorm_": [("dim", lambda: ((x(), 2, 5, 1.0), {}))],
    }  # fmt: skip
    for name in ("gather", "scatter", "scatter_add", "scatter_reduce", "index_add", "index_copy", "index_fill",
                 "index_put", "index_reduce", "index_select", "put", "take", "take_along_dim", "bincount",
                 "repeat_interleave", "masked_scatter", "select_scatter", "slice_scatter", "diagonal_scatter"):  # fmt: skip
        cases[name] = FX_CASES[f"torch.{name}"]
    cases["renorm"] = cases["renorm_"]
    return {f"Tensor.{name}": variants for name, variants in cases.items()}


# Methods the completeness pattern matches that index nothing by values (a boolean
# mask must match the shape; Tensor.index binds functorch first-class dims).
METHODS_NOT_INDEXED = frozenset({"Tensor.masked_fill", "Tensor.masked_fill_", "Tensor.masked_select", "Tensor.index"})
METHOD_CASES = _methods()
CASES.update(METHOD_CASES)
WRAPPING = WRAPPING | {"Tensor.take_along_dim"}
