"""CUDA backend: CuPy arrays on the kernels of ``normdrop/_cuda/*.cu``.

Implements the backend interface described in ``normdrop._reference``.  The
kernels are compiled lazily, once per device, by :mod:`normdrop._cuda._loader`
(``cupy.RawModule`` with ``name_expressions``), and launched on the current
stream of the input's device.  No op synchronizes with the host or copies
data to it; per-channel statistics are float64 CuPy arrays on the device.

Memory layouts, as in the CPU backend: ``x`` is read in place when it is
C-contiguous, Fortran-contiguous (2-D), or channels-last (a 4-D NHWC array
viewed as NCHW), and outputs keep that layout; any other strides are copied
once to C order.  Dropout works on the flat C-order index and returns C-order
arrays.

CuPy is imported only when an op runs, so this module (and the loader) can be
imported where CuPy is not installed.
"""
from __future__ import annotations

import numpy as np

from .._reference import keep_threshold as _threshold
from . import _loader

NAME = "cuda"
ROWS, PLANES = 0, 1
THREADS = _loader.THREADS

_SUPPORTED = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MAX_GRID_Y = 65535              # CUDA limit on gridDim.y (and z)
_MAX_BLOCKS = 1 << 20            # grid-stride loops cover the rest
_PER_THREAD = 64                 # values per thread and reduction part (target)
_ELEM_ROWS_PER_THREAD = 16       # rows per thread in the elementwise ROWS kernels


def supported_dtypes(xp=None) -> tuple:
    """float16, float32 and float64 (as NumPy dtypes, which CuPy uses)."""
    return _SUPPORTED


def stats_dtype(xp, dtype):
    """Per-channel statistics are float64 for every data type."""
    return np.float64


def _cupy():
    import cupy
    return cupy


def _i64(v):
    return np.int64(v)


def _cdiv(a, b):
    return -(-a // b)


# ----------------------------------------------------------------- geometry
def geometry(x):
    """(x', geom, layout): x' is x or a C-ordered copy of it, geom the kernel
    geometry ``(kind, n, c, s, sn, sc)`` of x' in elements (see
    ``nd_batchnorm.cu``), layout one of ``'C'``, ``'F'``, ``'NHWC'``: the
    memory order of x' (outputs are allocated in it)."""
    cp = _cupy()
    if x.ndim == 2:
        N, D = x.shape
        if x.flags.c_contiguous:
            return x, (ROWS, N, D, 1, D, 1), "C"
        if x.flags.f_contiguous:
            return x, (PLANES, 1, D, N, 0, N), "F"
    else:
        N, C, H, W = x.shape
        S = H * W
        if x.flags.c_contiguous:
            if S == 1:
                return x, (ROWS, N, C, 1, C, 1), "C"
            return x, (PLANES, N, C, S, C * S, S), "C"
        if x.transpose(0, 2, 3, 1).flags.c_contiguous:
            return x, (ROWS, N * S, C, 1, C, 1), "NHWC"
    return geometry(cp.ascontiguousarray(x))


def _empty(shape, dtype, layout):
    """An uninitialized array of ``shape`` in the memory ``layout``."""
    cp = _cupy()
    if layout == "F":
        return cp.empty(shape, dtype=dtype, order="F")
    if layout == "NHWC":
        N, C, H, W = shape
        return cp.empty((N, H, W, C), dtype=dtype).transpose(0, 3, 1, 2)
    return cp.empty(shape, dtype=dtype)


def _like(dout, x, layout):
    """dout with x's dtype and memory layout (copied only when they differ)."""
    if dout.dtype != x.dtype:
        dout = dout.astype(x.dtype)
    if tuple(dout.strides) == tuple(x.strides):
        return dout
    d = _empty(x.shape, x.dtype, layout)
    d[...] = dout
    return d


def _contig(a):
    """A (C,) per-channel array, contiguous (copied only when strided)."""
    return a if a.flags.c_contiguous else _cupy().ascontiguousarray(a)


def _reduce_plan(geom):
    """Launch geometry of nd_bn_stats / nd_bn_bwd_reduce for geom.

    Depends on the shape only, so every run and every GPU cuts the
    reduction into the same parts.

    Returns
    -------
    (grid, pn, ps, G)
        ``pn`` rows (ROWS) or planes (PLANES) per part, ``ps`` values of a
        plane per part (PLANES; 1 for ROWS), ``G`` parts per channel.
    """
    kind, N, C, S, _, _ = geom
    if kind == ROWS:
        ct = min(C, 32)
        rt = THREADS // ct
        pn = max(rt * _PER_THREAD, _cdiv(N, _MAX_GRID_Y))
        G = _cdiv(N, pn)
        return (_cdiv(C, ct), G, 1), pn, 1, G
    st = min(S, THREADS)
    npb = THREADS // st
    k_s = min(_cdiv(S, st), _PER_THREAD)
    ps = st * k_s
    nseg = _cdiv(S, ps)
    pn = npb * max(1, _PER_THREAD // k_s)
    G = _cdiv(N, pn) * nseg
    return (G, min(C, _MAX_GRID_Y), 1), pn, ps, G


def _elementwise_grid(geom):
    """Launch grid of nd_bn_affine / nd_bn_bwd_dx for geom."""
    kind, N, C, S, _, _ = geom
    if kind == ROWS:
        ct = min(C, 32)
        rt = THREADS // ct
        return (_cdiv(C, ct), max(1, min(_MAX_GRID_Y, _cdiv(N, rt * _ELEM_ROWS_PER_THREAD))), 1)
    npb = THREADS // min(S, THREADS)
    return (max(1, min(_MAX_BLOCKS, _cdiv(N * C, npb))), 1, 1)


def _channel_grid(C):
    return (max(1, min(C, _MAX_BLOCKS)), 1, 1)


def _geom_args(geom):
    kind, N, C, S, sn, sc = geom
    return (np.int32(kind), _i64(N), _i64(C), _i64(S), _i64(sn), _i64(sc))


def _launch(base, dtype, grid, args):
    _loader.function(base, dtype)(grid, (THREADS, 1, 1), args)


# ---------------------------------------------------------------- batchnorm
def _stats(x, geom, eps):
    """(mean, var, invstd) float64 (C,) of x in geometry geom."""
    cp = _cupy()
    C = geom[2]
    mean = cp.empty(C, np.float64)
    var = cp.empty(C, np.float64)
    invstd = cp.empty(C, np.float64)
    if C == 0:
        return mean, var, invstd
    grid, pn, ps, G = _reduce_plan(geom)
    part = cp.empty(3 * C * G, np.float64)
    _launch("nd_bn_stats", x.dtype, grid,
            (x,) + _geom_args(geom) + (_i64(pn), _i64(ps), _i64(G), part))
    _launch("nd_bn_stats_merge", None, _channel_grid(C),
            (part, _i64(C), _i64(G), np.float64(eps), mean, var, invstd))
    return mean, var, invstd


def _affine(x, geom, layout, mean, invstd, gamma, beta):
    out = _empty(x.shape, x.dtype, layout)
    if x.size:
        _launch("nd_bn_affine", x.dtype, _elementwise_grid(geom),
                (x, out) + _geom_args(geom) + (mean, invstd, _contig(gamma), _contig(beta)))
    return out


def bn_train(xp, x, gamma, beta, eps):
    """Training forward.

    Parameters
    ----------
    x : cupy.ndarray (N, D) or (N, C, H, W), float16/float32/float64
    gamma, beta : cupy.ndarray (C,), x's dtype
    eps : float

    Returns
    -------
    out : cupy.ndarray, x's shape, dtype and memory layout
    mean, var, invstd : cupy.ndarray (C,) float64
        Batch mean, biased batch variance, 1 / sqrt(var + eps).
    """
    with x.device:
        x, geom, layout = geometry(x)
        mean, var, invstd = _stats(x, geom, eps)
        out = _affine(x, geom, layout, mean, invstd, gamma, beta)
    return out, mean, var, invstd


def bn_test(xp, x, gamma, beta, running_mean, running_var, eps):
    """Test-mode forward with the running statistics.

    Parameters
    ----------
    x : cupy.ndarray (N, D) or (N, C, H, W), float16/float32/float64
    gamma, beta, running_mean, running_var : cupy.ndarray (C,), x's dtype
    eps : float

    Returns
    -------
    out : cupy.ndarray, x's shape, dtype and memory layout
    mean, invstd : cupy.ndarray (C,) float64
        running_mean and 1 / sqrt(running_var + eps).
    """
    cp = _cupy()
    with x.device:
        x, geom, layout = geometry(x)
        C = geom[2]
        mean = cp.empty(C, np.float64)
        invstd = cp.empty(C, np.float64)
        if C:
            _launch("nd_bn_test_stats", x.dtype, _channel_grid(_cdiv(C, THREADS)),
                    (_contig(running_mean), _contig(running_var), _i64(C), np.float64(eps),
                     mean, invstd))
        out = _affine(x, geom, layout, mean, invstd, gamma, beta)
    return out, mean, invstd


def bn_backward(xp, dout, x, gamma, mean, invstd, train):
    """Gradients of the forward that produced (mean, invstd).

    Parameters
    ----------
    dout, x : cupy.ndarray, the forward's shape, x's dtype
    gamma : cupy.ndarray (C,), x's dtype
    mean, invstd : cupy.ndarray (C,) float64
    train : bool
        Training-mode gradient (through the batch statistics) or test mode.

    Returns
    -------
    dx : cupy.ndarray, x's shape, dtype and memory layout
    dgamma, dbeta : cupy.ndarray (C,), x's dtype
        ``sum(dout * x_hat)`` and ``sum(dout)`` per channel.
    """
    cp = _cupy()
    with x.device:
        x, geom, layout = geometry(x)
        dout = _like(dout, x, layout)
        C = geom[2]
        dx = _empty(x.shape, x.dtype, layout)
        if x.size == 0:
            z = cp.zeros(C, x.dtype)
            return dx, z, z.copy()
        dgamma = cp.empty(C, x.dtype)
        dbeta = cp.empty(C, x.dtype)
        sum_dy = cp.empty(C, np.float64)
        sum_dyxm = cp.empty(C, np.float64)
        grid, pn, ps, G = _reduce_plan(geom)
        part = cp.empty(2 * C * G, np.float64)
        _launch("nd_bn_bwd_reduce", x.dtype, grid,
                (dout, x) + _geom_args(geom) + (_i64(pn), _i64(ps), _i64(G), mean, part))
        _launch("nd_bn_bwd_merge", x.dtype, _channel_grid(C),
                (part, _i64(C), _i64(G), invstd, sum_dy, sum_dyxm, dgamma, dbeta))
        _launch("nd_bn_bwd_dx", x.dtype, _elementwise_grid(geom),
                (dout, x, dx) + _geom_args(geom)
                + (mean, invstd, _contig(gamma), sum_dy, sum_dyxm,
                   np.float64(x.size // C), np.int32(bool(train))))
    return dx, dgamma, dbeta


# ------------------------------------------------------------------ dropout
def _scale(p, dtype):
    """1/p rounded to dtype, as the float64 value the kernels convert back."""
    return np.float64(np.asarray(1.0 / p, dtype=dtype))


def _aligned(*arrays):
    """np.int32(1) when every array's data is 16-byte aligned."""
    return np.int32(all(a.data.ptr % 16 == 0 for a in arrays))


def _tiles_grid(n, per_block):
    return (max(1, min(_MAX_BLOCKS, _cdiv(n, per_block))), 1, 1)


def dropout_train(xp, x, p, seed):
    """Inverted dropout.

    Parameters
    ----------
    x : cupy.ndarray, any shape, float16/float32/float64
    p : float in (0, 1]
    seed : int in [0, 2**64)

    Returns
    -------
    out : cupy.ndarray, x's shape and dtype, C order
        ``x * s`` where kept, 0 elsewhere; ``s = 1/p`` rounded to x's dtype.
    bits : cupy.ndarray (ceil(x.size / 8),) uint8
        The packed keep mask (value i in bit i % 8 of byte i // 8).
    """
    cp = _cupy()
    with x.device:
        xc = cp.ascontiguousarray(x)
        n = x.size
        out = cp.empty(x.shape, x.dtype)
        bits = cp.empty((n + 7) // 8, np.uint8)
        if n:
            _launch("nd_dropout_fwd", x.dtype, _tiles_grid(n, 4 * THREADS),
                    (xc, out, bits, _i64(n), np.uint64(seed), np.uint64(_threshold(p)),
                     _scale(p, x.dtype), _aligned(xc, out)))
    return out, bits


def dropout_backward(xp, dout, bits, p):
    """dx = dout * s where the packed mask ``bits`` keeps, else 0.

    Parameters
    ----------
    dout : cupy.ndarray, any shape, float16/float32/float64
    bits : cupy.ndarray (ceil(dout.size / 8),) uint8, from dropout_train
    p : float in (0, 1]

    Returns
    -------
    dx : cupy.ndarray, dout's shape and dtype, C order
    """
    cp = _cupy()
    with dout.device:
        dc = cp.ascontiguousarray(dout)
        n = dout.size
        dx = cp.empty(dout.shape, dout.dtype)
        if n:
            _launch("nd_dropout_bwd", dout.dtype, _tiles_grid(_cdiv(n, 4), THREADS),
                    (dc, _contig(bits), dx, _i64(n), _scale(p, dout.dtype), _aligned(dc, dx)))
    return dx


def dropout_mask(xp, shape, p, seed, device=None):
    """The boolean keep mask of ``shape`` (C order) on ``device`` (the
    current device when None)."""
    cp = _cupy()
    dev = cp.cuda.Device() if device is None else device
    with dev:
        mask = cp.empty(tuple(shape), dtype=np.bool_)
        n = mask.size
        if n:
            _launch("nd_dropout_mask", None, _tiles_grid(_cdiv(n, 4), THREADS),
                    (mask, _i64(n), np.uint64(seed), np.uint64(_threshold(p))))
    return mask
