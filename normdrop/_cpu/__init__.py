"""CPU backend: NumPy arrays on the OpenMP C kernels of ``src_c/``.

Implements the backend interface described in ``normdrop._reference``.  The
kernels read ``x`` in place when it is C-contiguous, Fortran-contiguous (2-D),
or channels-last (a 4-D NHWC array viewed as NCHW); outputs keep that memory
layout.  Any other strided input is copied once to C order.
"""
from __future__ import annotations

import numpy as np

from .._reference import keep_threshold as _threshold
from .._build_check import load_kernels

_k = load_kernels()   # the C extension; a one-line reason and fix when it is not built

NAME = "cpu"


ROWS, PLANES = 0, 1
_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))


def supported_dtypes(xp=None) -> tuple:
    return _SUPPORTED


def stats_dtype(xp, dtype):
    return np.float64


def have_openmp() -> bool:
    return _k.have_openmp()


def max_threads() -> int:
    return _k.max_threads()


def _usable(a) -> np.ndarray:
    """a as an aligned, native-byte-order ndarray (a copy only when needed;
    NumPy scalars become 0-d arrays)."""
    a = np.asarray(a)
    if not (a.flags.aligned and a.dtype.isnative):
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="K")
    return a


def geometry(x):
    """(x', geom) where x' is x or a C-ordered copy of it and geom the kernel
    geometry ``(kind, n, c, s, sn, sc)`` describing x' in elements."""
    x = _usable(x)
    if x.ndim == 2:
        N, D = x.shape
        if x.flags.c_contiguous:
            return x, (ROWS, N, D, 1, D, 1)
        if x.flags.f_contiguous:
            return x, (PLANES, 1, D, N, 0, N)
    else:
        N, C, H, W = x.shape
        S = H * W
        if x.flags.c_contiguous:
            if S == 1:
                return x, (ROWS, N, C, 1, C, 1)
            return x, (PLANES, N, C, S, C * S, S)
        if x.transpose(0, 2, 3, 1).flags.c_contiguous:
            return x, (ROWS, N * S, C, 1, C, 1)
    return geometry(np.ascontiguousarray(x))


def _like(dout, x):
    """dout in x's memory layout (strides), copied only when they differ."""
    dout = _usable(dout)
    if dout.dtype != x.dtype:
        dout = dout.astype(x.dtype)
    if dout.strides == x.strides:
        return dout
    d = np.empty_like(x)
    np.copyto(d, dout)
    return d


def _c_order(a):
    """a in C order (a copy only when needed; 0-d arrays stay 0-d, unlike
    np.ascontiguousarray)."""
    return a if a.flags.c_contiguous else np.ascontiguousarray(a)


_f64 = _k.f64   # a as a C-contiguous float64 array (a copy only when needed)


_POOLED_MIN = 1 << 20   # outputs this large come from the output cache (normdrop._memory)


def _out_like(x):
    """An uninitialized output in x's layout; 1 MiB and up from the output
    cache (normdrop._memory)."""
    if x.nbytes >= _POOLED_MIN:
        return _k.pooled(np.empty_like, x)
    return np.empty_like(x)


def _out(shape, dtype, nbytes):
    """An uninitialized C-ordered output of nbytes bytes; 1 MiB and up from
    the output cache."""
    if nbytes >= _POOLED_MIN:
        return _k.pooled(np.empty, shape, dtype)
    return np.empty(shape, dtype)


def bn_train(xp, x, gamma, beta, eps):
    x, geom = geometry(x)
    out = _out_like(x)
    stats = _k.bn_train_fwd(x, out, geom, gamma, beta, eps)   # mean, var, invstd, scale
    return out, stats[0], stats[1], stats[2]


def bn_test(xp, x, gamma, beta, running_mean, running_var, eps):
    x, geom = geometry(x)
    mean = _f64(running_mean).copy()
    invstd = 1.0 / np.sqrt(_f64(running_var) + eps)
    out = _out_like(x)
    _k.bn_affine(x, out, geom, mean, _f64(gamma) * invstd, _f64(beta))
    return out, mean, invstd


def running_update(xp, old, batch, momentum, dtype):
    """(1 - momentum) * batch + momentum * old in float64, rounded to dtype
    (one loop in C: these (C,) updates run on every training step)."""
    return _k.running_update(old, batch, momentum, dtype)


def bn_backward(xp, dout, x, gamma, mean, invstd, train):
    x, geom = geometry(x)
    dout = _like(dout, x)
    dx = _out_like(x)
    dgamma, dbeta = _k.bn_backward(dout, x, dx, geom, gamma, mean, invstd, train)
    return dx, dgamma, dbeta




def dropout_train(xp, x, p, seed):
    x = _c_order(_usable(x))
    out = _out(x.shape, x.dtype, x.nbytes)
    nb = (x.size + 7) // 8
    bits = _out((nb,), np.uint8, nb)
    _k.dropout_fwd(x, out, bits, seed, _threshold(p), 1.0 / p)
    return out, bits


def dropout_backward(xp, dout, bits, p):
    dout = _c_order(_usable(dout))
    dx = _out(dout.shape, dout.dtype, dout.nbytes)
    _k.dropout_bwd(dout, bits, dx, 1.0 / p)
    return dx




def dropout_mask(xp, shape, p, seed, device=None):
    mask = np.empty(tuple(shape), np.bool_)
    _k.dropout_mask(mask, seed, _threshold(p))
    return mask
