"""The CPU backend: the contract of :mod:`normdrop._contract` on NumPy arrays,
computed by the C kernels through ``normdrop._cpu._kernels``.

The kernels read ``x`` in place when it is C-contiguous, Fortran-contiguous
(2-D, batchnorm), or channels-last (a 4-D NHWC array viewed as NCHW); outputs
keep that memory layout.  Any other strided input is copied once to C order.
Outputs of 1 MiB and more come from the output cache (:mod:`normdrop._memory`).
"""
from __future__ import annotations

import numpy as np

from . import _kernels as _k
from ._pool import pooled as _pooled

NAME = "cpu"

_ROWS, _PLANES, _CLAST = 0, 1, 2
_SUPPORTED = (np.dtype(np.float32), np.dtype(np.float64))
_POOLED_MIN = 1 << 20   # outputs this large come from the output cache


def supported_dtypes(xp=None) -> tuple:
    """float32 and float64."""
    return _SUPPORTED


# ----------------------------------------------------------------- layouts
def _usable(a) -> np.ndarray:
    """a as an aligned, native-byte-order ndarray (a copy only when needed;
    NumPy scalars become 0-d arrays)."""
    a = np.asarray(a)
    if not (a.flags.aligned and a.dtype.isnative):
        a = np.array(a, dtype=a.dtype.newbyteorder("="), order="K")
    return a


def _geometry(x, geom):
    """(x', g): x' is x or a C-ordered copy of it, g the kernel geometry
    ``(kind, n, c, s, sn, sc, ss, groups)`` of x' (normdrop.h) for the
    logical geometry ``geom`` (a :class:`normdrop._contract.Geometry`)."""
    x = _usable(x)
    n, c, s, groups = geom
    if x.flags.c_contiguous:
        if s == 1:
            return x, (_ROWS, n, c, 1, c, 1, 1, groups)
        return x, (_PLANES, n, c, s, c * s, s, 1, groups)
    if x.ndim == 2 and groups == 0 and x.flags.f_contiguous:
        # per-channel statistics do not tell rows from positions: one plane
        return x, (_PLANES, 1, c, n, 0, n, 1, 0)
    if x.ndim == 4 and s > 1 and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        if groups == 0:
            return x, (_ROWS, n * s, c, 1, c, 1, 1, 0)
        return x, (_CLAST, n, c, s, s * c, 1, c, groups)
    return _geometry(np.ascontiguousarray(x), geom)


def _like(dout, x):
    """dout in x's memory layout (strides) and dtype, copied only when they
    differ."""
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


def _out_like(x):
    """An uninitialized output in x's layout; 1 MiB and up from the output
    cache."""
    if x.nbytes >= _POOLED_MIN:
        return _pooled(np.empty_like, x)
    return np.empty_like(x)


def _out(shape, dtype, nbytes):
    """An uninitialized C-ordered output of nbytes bytes; 1 MiB and up from
    the output cache."""
    if nbytes >= _POOLED_MIN:
        return _pooled(np.empty, shape, dtype)
    return np.empty(shape, dtype)


# -------------------------------------------------------------- the steps
def moments(xp, x, geom):
    """(count, mean, m2) per statistics group (float64 (ngroups,))."""
    x, g = _geometry(x, geom)
    mean, m2 = _k.moments(x, g)
    return geom.count, mean, m2


def normalize(xp, x, geom, mean, invstd, gamma, beta):
    """out = (x - mean[grp]) * invstd[grp] * gamma[ch] + beta[ch], x's layout."""
    x, g = _geometry(x, geom)
    out = _out_like(x)
    _k.normalize(x, out, g, mean, invstd, gamma, beta)
    return out


def grad_reduce(xp, dout, x, geom, mean, invstd, gamma):
    """(s1, s2, dgamma, dbeta): see normdrop._contract."""
    x, g = _geometry(x, geom)
    return _k.grad_reduce(_like(dout, x), x, g, mean, invstd, gamma)


def grad_input(xp, dout, x, geom, mean, invstd, gamma, s1, s2, train, count):
    """dx from grad_reduce's sums over count values per group, x's layout."""
    x, g = _geometry(x, geom)
    dx = _out_like(x)
    _k.grad_input(_like(dout, x), x, dx, g, mean, invstd, gamma, s1, s2, train, count)
    return dx


def norm_train_fwd(xp, x, geom, gamma, beta, eps):
    """(out, mean, var, invstd): moments and normalize in one kernel call."""
    x, g = _geometry(x, geom)
    out = _out_like(x)
    stats = _k.norm_train_fwd(x, out, g, gamma, beta, eps)   # mean, var, invstd
    return out, stats[0], stats[1], stats[2]


def norm_bwd(xp, dout, x, geom, mean, invstd, gamma, train):
    """(dx, dgamma, dbeta): grad_reduce and grad_input in one kernel call."""
    x, g = _geometry(x, geom)
    dout = _like(dout, x)
    dx = _out_like(x)
    dgamma, dbeta = _k.norm_bwd(dout, x, dx, g, mean, invstd, gamma, train)
    return dx, dgamma, dbeta


def running_update(xp, old, batch, momentum, dtype):
    """(1 - momentum) * batch + momentum * old in float64, rounded to dtype
    (one loop in C: these (C,) updates run on every training step)."""
    return _k.running_update(old, batch, momentum, dtype)


# ---------------------------------------------------------------- dropout
def dropout_fwd(xp, x, p, seed, offset):
    """(out, bits): inverted dropout of x (any layout; out in C order), the
    words from generator index offset."""
    x = _c_order(_usable(x))
    out = _out(x.shape, x.dtype, x.nbytes)
    nb = (x.size + 7) // 8
    bits = _out((nb,), np.uint8, nb)
    _k.dropout_fwd(x, out, bits, seed, offset, p)
    return out, bits


def dropout_bwd(xp, dout, bits, p):
    """dx = dout * (1/p) where the packed mask keeps, else 0 (C order)."""
    dout = _c_order(_usable(dout))
    dx = _out(dout.shape, dout.dtype, dout.nbytes)
    _k.dropout_bwd(dout, bits, dx, p)
    return dx


def dropout_mask(xp, shape, p, seed, offset, device=None):
    """The boolean keep mask of shape (C order), words from index offset."""
    mask = np.empty(tuple(shape), np.bool_)
    _k.dropout_mask(mask, seed, offset, p)
    return mask
