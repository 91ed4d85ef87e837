"""The CUDA backend: the contract of :mod:`normdrop._contract` on CuPy arrays,
computed by the kernels of ``normdrop/_cuda/*.cu``.

The kernels are compiled lazily, once per device, by
:mod:`normdrop._cuda._loader` (``cupy.RawModule`` with ``name_expressions``),
and launched on the current stream of the input's device.  No op
synchronizes with the host or copies data to it; per-group statistics are
float64 CuPy arrays on the device.

Memory layouts, as in the CPU backend: ``x`` is read in place when it is
C-contiguous, Fortran-contiguous (2-D), or channels-last (a 4-D NHWC array
viewed as NCHW), and outputs keep that layout; any other strides are copied
once to C order.  Dropout works on the flat C-order index and returns C-order
arrays.  Each reduction step is two kernels: ``*_part`` (one block per part
of a channel, the parts fixed by the shape) and ``*_merge`` (the parts of a
channel in a fixed order).

CuPy is imported only when an op runs, so this module (and the loader) can be
imported where CuPy is not installed.
"""
from __future__ import annotations

import numpy as np

from . import _loader

NAME = "cuda"
_ROWS, _PLANES, _CLAST = 0, 1, 2
_THREADS = _loader.THREADS

_SUPPORTED = (np.dtype(np.float16), np.dtype(np.float32), np.dtype(np.float64))
_MAX_GRID_Y = 65535              # CUDA limit on gridDim.y (and z)
_MAX_BLOCKS = 1 << 20            # grid-stride loops cover the rest
_PER_THREAD = 64                 # values per thread and reduction part (target)
_ELEM_ROWS_PER_THREAD = 16       # rows per thread in the elementwise ROWS kernels


def supported_dtypes(xp=None) -> tuple:
    """float16, float32 and float64 (as NumPy dtypes, which CuPy uses)."""
    return _SUPPORTED


def _cupy():
    import cupy
    return cupy


def _i64(v):
    return np.int64(v)


def _cdiv(a, b):
    return -(-a // b)


# ----------------------------------------------------------------- geometry
def _geometry(x, geom):
    """(x', g, layout): x' is x or a C-ordered copy of it, g the kernel
    geometry ``(kind, n, c, s, sn, sc, ss, groups)`` of x' in elements (see
    ``nd_norm.cu``) for the logical ``geom``, layout one of ``'C'``, ``'F'``,
    ``'NHWC'``: the memory order of x' (outputs are allocated in it)."""
    cp = _cupy()
    n, c, s, groups = geom
    if x.flags.c_contiguous:
        if s == 1:
            return x, (_ROWS, n, c, 1, c, 1, 1, groups), "C"
        return x, (_PLANES, n, c, s, c * s, s, 1, groups), "C"
    if x.ndim == 2 and groups == 0 and x.flags.f_contiguous:
        return x, (_PLANES, 1, c, n, 0, n, 1, 0), "F"
    if x.ndim == 4 and s > 1 and x.transpose(0, 2, 3, 1).flags.c_contiguous:
        if groups == 0:
            return x, (_ROWS, n * s, c, 1, c, 1, 1, 0), "NHWC"
        return x, (_CLAST, n, c, s, s * c, 1, c, groups), "NHWC"
    return _geometry(cp.ascontiguousarray(x), geom)


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
    """A per-channel array, contiguous (copied only when strided)."""
    return a if a.flags.c_contiguous else _cupy().ascontiguousarray(a)


def _runs(g):
    """(runs per group, values per run) of a geometry with groups > 0
    (nd_group_runs in nd_norm.cu)."""
    kind, N, C, S, groups = g[0], g[1], g[2], g[3], g[7]
    cg = C // groups
    if kind == _PLANES:
        return cg, S
    return (S if kind == _CLAST else 1), cg


def _reduce_plan(g):
    """Launch geometry of the ``*_part`` reduction kernels for g.

    Depends on the shape only, so every run and every GPU cuts the
    reduction into the same parts.

    Returns
    -------
    (grid, pn, ps, G)
        ``pn`` rows (ROWS) or planes (PLANES) per part, ``ps`` values of a
        plane per part (PLANES; 1 for ROWS), ``G`` parts per channel; for
        groups > 0, runs and values of a run (nd_group_reduce_part), parts
        per group.
    """
    kind, N, C, S = g[:4]
    if g[7]:
        nrun, L = _runs(g)
        st = max(1, min(L, _THREADS))
        npb = _THREADS // st
        k_s = max(1, min(_cdiv(L, st), _PER_THREAD))
        ps = st * k_s
        nseg = max(1, _cdiv(L, ps))
        pn = npb * max(1, _PER_THREAD // k_s)
        G = max(1, _cdiv(nrun, pn)) * nseg
        return (G, max(1, min(N * g[7], _MAX_GRID_Y)), 1), pn, ps, G
    if kind == _ROWS:
        ct = min(C, 32)
        rt = _THREADS // ct
        pn = max(rt * _PER_THREAD, _cdiv(N, _MAX_GRID_Y))
        G = _cdiv(N, pn)
        return (_cdiv(C, ct), G, 1), pn, 1, G
    st = min(S, _THREADS)
    npb = _THREADS // st
    k_s = min(_cdiv(S, st), _PER_THREAD)
    ps = st * k_s
    nseg = _cdiv(S, ps)
    pn = npb * max(1, _PER_THREAD // k_s)
    G = _cdiv(N, pn) * nseg
    return (G, min(C, _MAX_GRID_Y), 1), pn, ps, G


def _elementwise_grid(g):
    """Launch grid of nd_normalize / nd_grad_input for g."""
    kind, N, C, S = g[:4]
    if g[7]:
        nrun, L = _runs(g)
        npb = _THREADS // max(1, min(L, _THREADS))
        return (max(1, min(_MAX_BLOCKS, _cdiv(N * g[7] * nrun, npb))), 1, 1)
    if kind == _ROWS:
        ct = min(C, 32)
        rt = _THREADS // ct
        return (_cdiv(C, ct), max(1, min(_MAX_GRID_Y, _cdiv(N, rt * _ELEM_ROWS_PER_THREAD))), 1)
    npb = _THREADS // min(S, _THREADS)
    return (max(1, min(_MAX_BLOCKS, _cdiv(N * C, npb))), 1, 1)


def _channel_grid(C):
    return (max(1, min(C, _MAX_BLOCKS)), 1, 1)


def _geom_args(g):
    kind, N, C, S, sn, sc, ss, groups = g
    return (np.int32(kind), _i64(N), _i64(C), _i64(S), _i64(sn), _i64(sc), _i64(ss),
            np.int32(groups))


def _launch(base, dtype, grid, args):
    _loader.function(base, dtype)(grid, (_THREADS, 1, 1), args)


def _ngroups(g):
    return g[2] if g[7] == 0 else g[1] * g[7]


def _merged_moments(x, g, eps):
    """(mean, m2, var, invstd), float64 (ngroups,), of x in kernel geometry g."""
    cp = _cupy()
    C = _ngroups(g)
    mean, m2, var, invstd = (cp.empty(C, np.float64) for _ in range(4))
    if C == 0:
        return mean, m2, var, invstd
    grid, pn, ps, G = _reduce_plan(g)
    part = cp.empty(3 * C * G, np.float64)
    _launch("nd_moments_part", x.dtype, grid,
            (x,) + _geom_args(g) + (_i64(pn), _i64(ps), _i64(G), part))
    _launch("nd_moments_merge", None, _channel_grid(C),
            (part, _i64(C), _i64(G), np.float64(eps), mean, m2, var, invstd))
    return mean, m2, var, invstd


def _channel_view(g):
    """(kind, N, C, S, sn, sc, ss, 0, rows) of g seen per channel (as
    batchnorm's geometry) and the positions of a sample per row."""
    kind, N, C, S, sn, sc, ss, _ = g
    if kind == _CLAST:
        return (_ROWS, N * S, C, 1, C, 1, 1, 0), S
    return (kind, N, C, S, sn, sc, ss, 0), 1


def _grad_sums(dout, x, g, mean, invstd, gamma):
    """(s1, s2, dgamma, dbeta) of dout, x in kernel geometry g."""
    cp = _cupy()
    C, ng = g[2], _ngroups(g)
    s1, s2 = cp.empty(ng, np.float64), cp.empty(ng, np.float64)
    dgamma, dbeta = cp.empty(C, x.dtype), cp.empty(C, x.dtype)
    if x.size == 0:
        for a in (s1, s2, dgamma, dbeta):
            a[...] = 0
        return s1, s2, dgamma, dbeta
    grid, pn, ps, G = _reduce_plan(g)
    part = cp.empty(2 * ng * G, np.float64)
    _launch("nd_grad_reduce_part", x.dtype, grid,
            (dout, x) + _geom_args(g) + (_i64(pn), _i64(ps), _i64(G), _contig(mean),
                                         _contig(gamma), part))
    mode = 1 if g[7] == 0 else 0            # groups > 0: dgamma, dbeta below
    _launch("nd_grad_reduce_merge", x.dtype, _channel_grid(ng),
            (part, _i64(ng), _i64(G), _contig(invstd), np.int32(mode), s1, s2, dgamma, dbeta))
    if g[7]:
        cv, rows = _channel_view(g)
        grid, pn, ps, G = _reduce_plan(cv)
        part = cp.empty(2 * C * G, np.float64)
        _launch("nd_grad_reduce_affine_part", x.dtype, grid,
                (dout, x) + _geom_args(cv)[:6] + (_i64(g[7]), _i64(rows), _i64(pn), _i64(ps),
                                                  _i64(G), _contig(mean), _contig(invstd), part))
        c1, c2 = cp.empty(C, np.float64), cp.empty(C, np.float64)
        _launch("nd_grad_reduce_merge", x.dtype, _channel_grid(C),
                (part, _i64(C), _i64(G), _contig(invstd), np.int32(2), c1, c2, dgamma, dbeta))
    return s1, s2, dgamma, dbeta


# -------------------------------------------------------------- the steps
def moments(xp, x, geom):
    """(count, mean, m2) per statistics group, float64 (ngroups,) on x's device."""
    with x.device:
        x, g, _ = _geometry(x, geom)
        mean, m2, _, _ = _merged_moments(x, g, 1.0)
    return geom.count, mean, m2


def normalize(xp, x, geom, mean, invstd, gamma, beta):
    """out = (x - mean[grp]) * (invstd[grp] * gamma[ch]) + beta[ch], x's layout."""
    with x.device:
        x, g, layout = _geometry(x, geom)
        out = _empty(x.shape, x.dtype, layout)
        if x.size:
            _launch("nd_normalize", x.dtype, _elementwise_grid(g),
                    (x, out) + _geom_args(g) + (_contig(mean), _contig(invstd), _contig(gamma),
                                                _contig(beta)))
    return out


def grad_reduce(xp, dout, x, geom, mean, invstd, gamma):
    """(s1, s2, dgamma, dbeta): see normdrop._contract."""
    with x.device:
        x, g, layout = _geometry(x, geom)
        return _grad_sums(_like(dout, x, layout), x, g, mean, invstd, gamma)


def grad_input(xp, dout, x, geom, mean, invstd, gamma, s1, s2, train, count):
    """dx from grad_reduce's sums over count values per group, x's layout."""
    with x.device:
        x, g, layout = _geometry(x, geom)
        dout = _like(dout, x, layout)
        dx = _empty(x.shape, x.dtype, layout)
        if x.size:
            _launch("nd_grad_input", x.dtype, _elementwise_grid(g),
                    (dout, x, dx) + _geom_args(g)
                    + (_contig(mean), _contig(invstd), _contig(gamma), _contig(s1), _contig(s2),
                       np.float64(count), np.int32(bool(train))))
    return dx


def norm_train_fwd(xp, x, geom, gamma, beta, eps):
    """(out, mean, var, invstd): moments (with the finish in the merge
    kernel), then normalize."""
    with x.device:
        xc, g, _ = _geometry(x, geom)
        mean, _, var, invstd = _merged_moments(xc, g, eps)
        out = normalize(xp, xc, geom, mean, invstd, gamma, beta)
    return out, mean, var, invstd


def norm_bwd(xp, dout, x, geom, mean, invstd, gamma, train):
    """(dx, dgamma, dbeta): grad_reduce, then grad_input."""
    with x.device:
        xc, g, layout = _geometry(x, geom)
        dout = _like(dout, xc, layout)
        s1, s2, dgamma, dbeta = _grad_sums(dout, xc, g, mean, invstd, gamma)
        dx = grad_input(xp, dout, xc, geom, mean, invstd, gamma, s1, s2, train, geom.count)
    return dx, dgamma, dbeta


def running_update(xp, old, batch, momentum, dtype):
    """(1 - momentum) * batch + momentum * old in float64, rounded once to
    dtype (nd_running_update; old None counts as zeros)."""
    cp = _cupy()
    with batch.device:
        C = batch.size
        out = cp.empty(C, dtype)
        batch = _contig(batch)
        o = batch if old is None else _contig(old.astype(np.float64, copy=False))
        if C:
            _launch("nd_running_update", np.dtype(dtype), _tiles_grid(C, _THREADS),
                    (o, np.int32(old is not None), batch, np.float64(momentum), out, _i64(C)))
    return out


# ------------------------------------------------------------------ dropout
def _tiles_grid(n, per_block):
    return (max(1, min(_MAX_BLOCKS, _cdiv(n, per_block))), 1, 1)


def dropout_fwd(xp, x, p, seed, offset):
    """(out, bits): inverted dropout of x (any layout; out in C order) and the
    packed keep mask (value i in bit i % 8 of byte i // 8); value i uses the
    generator's word for index offset + i."""
    cp = _cupy()
    with x.device:
        xc = cp.ascontiguousarray(x)
        n = x.size
        out = cp.empty(x.shape, x.dtype)
        bits = cp.empty((n + 7) // 8, np.uint8)
        if n:
            _launch("nd_dropout_fwd", x.dtype, _tiles_grid(n, 4 * _THREADS),
                    (xc, out, bits, _i64(n), np.uint64(seed), np.uint64(offset), np.float64(p)))
    return out, bits


def dropout_bwd(xp, dout, bits, p):
    """dx = dout * (1/p) where the packed mask keeps, else 0 (C order)."""
    cp = _cupy()
    with dout.device:
        dc = cp.ascontiguousarray(dout)
        n = dout.size
        dx = cp.empty(dout.shape, dout.dtype)
        if n:
            _launch("nd_dropout_bwd", dout.dtype, _tiles_grid(_cdiv(n, 4), _THREADS),
                    (dc, _contig(bits), dx, _i64(n), np.float64(p)))
    return dx


def dropout_mask(xp, shape, p, seed, offset, device=None):
    """The boolean keep mask of ``shape`` (C order) on ``device`` (the
    current device when None)."""
    cp = _cupy()
    dev = cp.cuda.Device() if device is None else device
    with dev:
        mask = cp.empty(tuple(shape), dtype=np.bool_)
        n = mask.size
        if n:
            _launch("nd_dropout_mask", None, _tiles_grid(_cdiv(n, 4), _THREADS),
                    (mask, _i64(n), np.uint64(seed), np.uint64(offset), np.float64(p)))
    return mask
