"""The one table of normdrop's ops that the test matrix (``tests/``),
``python -m normdrop bench`` and the asv suite (``asv_bench/``) read: a new
op joins all three by one entry here.

Each :class:`Op` says how to call the op (its parameters, its extra
positional argument), what input the test matrix gives it (shape, memory
layouts), which rows the bench measures (shapes, the bytes each must move,
PyTorch's equivalent) and which cs231n NumPy code it replaces.
"""
from __future__ import annotations

import dataclasses
import math
from typing import Callable

from . import _api


@dataclasses.dataclass(frozen=True)
class BenchRow:
    """One row of ``python -m normdrop bench`` (and one asv shape).

    ``part``: ``'fwd'`` (training forward), ``'bwd'`` (backward of a
    training forward) or ``'both'`` (forward then backward).  ``arrays``:
    value-sized arrays the op must move (see ``normdrop._bench``), plus one
    bit per value for a packed mask (``mask_bits``).  ``in_cache``: the data
    fit in cache, so the bandwidth bound is only indicative.
    """
    key: str
    title: str
    part: str
    shape: tuple
    arrays: float
    extra: object = None
    mask_bits: bool = False
    in_cache: bool = False

    def bytes(self, itemsize: int) -> int:
        n = math.prod(self.shape)
        return int(self.arrays * n * itemsize + (n / 8 if self.mask_bits else 0))

    @property
    def label(self) -> str:
        """The shape as the bench prints it, e.g. '4096x1024'."""
        return "x".join(map(str, self.shape))


@dataclasses.dataclass(frozen=True)
class Op:
    """A normalization op (``kind == 'norm'``: forward(x, gamma, beta[, extra],
    param) -> (out, cache), backward(dout, cache) -> (dx, dgamma, dbeta)) or
    dropout (``kind == 'dropout'``)."""
    name: str                      # the public name's stem: batchnorm_forward -> "batchnorm"
    kind: str
    forward: Callable
    backward: Callable
    test_shape: tuple              # the test matrix's input shape
    layouts: tuple                 # the memory layouts the matrix gives it
    bench: tuple = ()              # BenchRow(s)
    running: bool = False          # keeps running statistics (has train/test modes)
    channel_axis: int = 1          # the axis gamma and beta run along
    test_extra: object = None      # extra positional argument of the test matrix's call
    seed: str | None = None        # stem of the cs231n functions in normdrop._bench_seed
    torch: Callable | None = None  # (torch, part, x, dout, w, b, extra) -> (call, note)

    def channels(self, shape) -> int:
        return shape[self.channel_axis]

    def params(self, mode: str = "train", **extra) -> dict:
        """A fresh parameter dict for a call in ``mode``."""
        if self.kind == "dropout":
            return {"p": 0.5, "mode": mode, "seed": 1234, **extra}
        return {"mode": mode, **extra}

    def call_forward(self, x, gamma, beta, param, extra=None):
        """forward(x, gamma, beta[, extra], param) for a normalization op."""
        if extra is None:
            return self.forward(x, gamma, beta, param)
        return self.forward(x, gamma, beta, extra, param)


# ------------------------------------------------------------ PyTorch's side
def _torch_batchnorm(torch, part, x, dout, w, b, extra):
    """PyTorch's batch norm: F.batch_norm(training=True) forward; the backward
    kernel that its autograd calls (aten.native_batch_norm_backward with the
    saved mean and 1/std), or autograd itself where that op is missing."""
    F = torch.nn.functional
    c = x.shape[1]
    rm = torch.zeros(c, dtype=x.dtype, device=x.device)
    rv = torch.ones(c, dtype=x.dtype, device=x.device)
    # PyTorch's momentum is the weight of the new value: cs231n's 0.9 is 0.1 here.
    tm, eps = 0.1, 1e-5
    if part == "fwd":
        return (lambda: F.batch_norm(x, rm, rv, w, b, training=True, momentum=tm, eps=eps),
                "F.batch_norm(training=True)")
    aten = getattr(torch.ops, "aten", None)
    try:
        nbn, nbn_bwd = aten.native_batch_norm, aten.native_batch_norm_backward
    except (AttributeError, RuntimeError):
        nbn = nbn_bwd = None
    if nbn_bwd is not None:
        mask = [True, True, True]
        if part == "bwd":
            _, sm, si = nbn(x, w, b, rm, rv, True, tm, eps)
            return (lambda: nbn_bwd(dout, x, w, rm, rv, sm, si, True, eps, mask),
                    "aten.native_batch_norm_backward (autograd's kernel)")

        def both():
            _, sm, si = nbn(x, w, b, rm, rv, True, tm, eps)
            nbn_bwd(dout, x, w, rm, rv, sm, si, True, eps, mask)
        return both, "aten.native_batch_norm + native_batch_norm_backward"
    xg, wg, bg = (t.detach().clone().requires_grad_() for t in (x, w, b))
    if part == "bwd":
        out = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=tm, eps=eps)
        return (lambda: torch.autograd.grad(out, (xg, wg, bg), dout, retain_graph=True),
                "autograd backward of F.batch_norm")

    def both_autograd():
        out = F.batch_norm(xg, rm, rv, wg, bg, training=True, momentum=tm, eps=eps)
        torch.autograd.grad(out, (xg, wg, bg), dout)
    return both_autograd, "F.batch_norm + autograd backward"


def _torch_layernorm(torch, part, x, dout, w, b, extra):
    """aten.native_layer_norm and native_layer_norm_backward (what F.layer_norm
    and its autograd run), over the last axis."""
    aten, shape, eps = torch.ops.aten, [x.shape[-1]], 1e-5
    mask = [True, True, True]
    if part == "fwd":
        return (lambda: aten.native_layer_norm(x, shape, w, b, eps),
                "aten.native_layer_norm (F.layer_norm)")
    _, mean, rstd = aten.native_layer_norm(x, shape, w, b, eps)
    if part == "bwd":
        return (lambda: aten.native_layer_norm_backward(dout, x, shape, mean, rstd, w, b, mask),
                "aten.native_layer_norm_backward (autograd's kernel)")

    def both():
        _, m, r = aten.native_layer_norm(x, shape, w, b, eps)
        aten.native_layer_norm_backward(dout, x, shape, m, r, w, b, mask)
    return both, "aten.native_layer_norm + native_layer_norm_backward"


def _torch_groupnorm(torch, part, x, dout, w, b, G):
    """aten.native_group_norm and native_group_norm_backward (what
    F.group_norm and its autograd run)."""
    aten, eps = torch.ops.aten, 1e-5
    N, C = x.shape[:2]
    hw = x.numel() // (N * C) if N * C else 0
    mask = [True, True, True]
    if part == "fwd":
        return (lambda: aten.native_group_norm(x, w, b, N, C, hw, G, eps),
                "aten.native_group_norm (F.group_norm)")
    _, mean, rstd = aten.native_group_norm(x, w, b, N, C, hw, G, eps)
    if part == "bwd":
        return (lambda: aten.native_group_norm_backward(dout, x, mean, rstd, w, N, C, hw, G, mask),
                "aten.native_group_norm_backward (autograd's kernel)")

    def both():
        _, m, r = aten.native_group_norm(x, w, b, N, C, hw, G, eps)
        aten.native_group_norm_backward(dout, x, m, r, w, N, C, hw, G, mask)
    return both, "aten.native_group_norm + native_group_norm_backward"


def _torch_dropout(torch, part, x, dout, w, b, extra):
    """F.dropout forward; its autograd backward (dout times the saved noise on
    the CPU, aten.native_dropout_backward on a GPU)."""
    keep = 0.5
    torch.manual_seed(0)
    if part == "fwd":
        return (lambda: torch.nn.functional.dropout(x, p=1.0 - keep, training=True),
                "F.dropout(p=0.5, training=True)")
    if x.device.type == "cpu":
        # What autograd does for F.dropout on the CPU: grad times the saved
        # noise (the keep mask scaled by 1/keep).
        noise = torch.empty_like(x).bernoulli_(keep).div_(keep)
        return (lambda: dout.mul(noise)), "dout * noise (F.dropout's autograd backward)"
    # On a GPU, F.dropout is the fused native_dropout; its backward:
    _, mask = torch.ops.aten.native_dropout(x, 1.0 - keep, True)
    return (lambda: torch.ops.aten.native_dropout_backward(dout, mask, 1.0 / keep),
            "aten.native_dropout_backward (F.dropout's autograd backward)")


# ----------------------------------------------------------------- the table
OPS = {op.name: op for op in (
    Op("batchnorm", "norm", _api.batchnorm_forward, _api.batchnorm_backward,
       test_shape=(16, 37), layouts=("contiguous", "fortran", "noncontiguous"),
       bench=(BenchRow("bn-fwd", "batchnorm forward (train)", "fwd", (4096, 1024), 3),
              BenchRow("bn-bwd", "batchnorm backward", "bwd", (4096, 1024), 5),
              BenchRow("bn-small", "batchnorm forward+backward, small", "both", (64, 256), 8,
                       in_cache=True),
              BenchRow("bn-small-fwd", "batchnorm forward (train), small", "fwd", (64, 256), 3,
                       in_cache=True)),
       running=True, seed="batchnorm", torch=_torch_batchnorm),
    Op("spatial_batchnorm", "norm", _api.spatial_batchnorm_forward,
       _api.spatial_batchnorm_backward,
       test_shape=(4, 5, 6, 7), layouts=("contiguous", "channels_last", "noncontiguous"),
       bench=(BenchRow("spatial-fwd", "spatial batchnorm forward (train)", "fwd",
                       (32, 64, 56, 56), 3),
              BenchRow("spatial-bwd", "spatial batchnorm backward", "bwd",
                       (32, 64, 56, 56), 5)),
       running=True, seed="spatial_batchnorm", torch=_torch_batchnorm),
    Op("layernorm", "norm", _api.layernorm_forward, _api.layernorm_backward,
       test_shape=(12, 37), layouts=("contiguous", "fortran", "noncontiguous"),
       bench=(BenchRow("ln-fwd", "layernorm forward", "fwd", (4096, 1024), 2),
              BenchRow("ln-fwd", "layernorm forward", "fwd", (8, 512, 768), 2),
              BenchRow("ln-bwd", "layernorm backward", "bwd", (4096, 1024), 3),
              BenchRow("ln-bwd", "layernorm backward", "bwd", (8, 512, 768), 3)),
       channel_axis=-1, seed="layernorm", torch=_torch_layernorm),
    Op("spatial_groupnorm", "norm", _api.spatial_groupnorm_forward,
       _api.spatial_groupnorm_backward,
       test_shape=(4, 6, 5, 7), layouts=("contiguous", "channels_last", "noncontiguous"),
       test_extra=3,
       bench=(BenchRow("gn-fwd", "spatial groupnorm forward", "fwd", (32, 64, 56, 56), 2,
                       extra=8),
              BenchRow("gn-fwd", "spatial groupnorm forward", "fwd", (8, 256, 28, 28), 2,
                       extra=32),
              BenchRow("gn-bwd", "spatial groupnorm backward", "bwd", (32, 64, 56, 56), 3,
                       extra=8),
              BenchRow("gn-bwd", "spatial groupnorm backward", "bwd", (8, 256, 28, 28), 3,
                       extra=32)),
       seed="spatial_groupnorm", torch=_torch_groupnorm),
    Op("dropout", "dropout", _api.dropout_forward, _api.dropout_backward,
       test_shape=(3, 4, 5, 7), layouts=("contiguous", "channels_last", "noncontiguous"),
       bench=(BenchRow("dropout-fwd", "dropout forward (p=0.5)", "fwd", (4096, 4096), 2,
                       mask_bits=True),
              BenchRow("dropout-bwd", "dropout backward", "bwd", (4096, 4096), 2,
                       mask_bits=True)),
       seed="dropout", torch=_torch_dropout),
)}

#: The normalization ops (everything but dropout).
NORM_OPS = {k: v for k, v in OPS.items() if v.kind == "norm"}


def bench_rows():
    """(op, row) for every bench row, in table order."""
    return [(op, row) for op in OPS.values() for row in op.bench]
