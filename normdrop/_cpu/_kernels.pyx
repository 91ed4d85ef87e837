# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Cython bindings of the C kernels in ``src_c/`` (declared in ``_nd.pxd``),
one per kernel and under the kernel's name: ``moments`` calls
``nd_moments_f32`` or ``nd_moments_f64``, and so on.

Every function here trusts its caller (``normdrop._cpu._backend``) for the
memory layout: arrays are NumPy arrays of dtype float32 or float64 laid out
as the geometry says, and outputs are allocated.  What a kernel reads is
still checked here before it runs -- the sizes of the per-group and
per-channel arrays against the geometry, the operands against each other,
the packed mask against the values -- so that no array changed by a caller
(an edited cache) can make a kernel read or write out of bounds: a
``ValueError`` instead.  The GIL is released around every kernel.  A
geometry is the tuple ``(kind, n, c, s, sn, sc, ss, groups)`` of
``nd_geom`` (normdrop.h), in elements.

The float32/float64 dispatch is written once per kernel, as a function of
the fused type ``real``; the ``def`` bindings pick the specialization from
the data pointer's type.
"""
cimport numpy as cnp
import numpy as np
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t, uint64_t, uint8_t
from libc.string cimport memcpy

from normdrop._cpu._nd cimport *

cnp.import_array()

if not nd_isa_runnable():
    raise ImportError(f"this build is pinned to an instruction-set variant that this processor "
                      f"cannot run ({nd_norm_isa().decode()}: NORMDROP_ISA at build time); unset "
                      f"NORMDROP_ISA and rebuild")

# The fork handler (normdrop.h, nd_init): without it, a process forked after
# a parallel kernel would hang in its first parallel kernel.
if nd_init() != 0:
    import warnings
    warnings.warn("normdrop: pthread_atfork failed; a process forked after a parallel "
                  "kernel may hang in its first parallel kernel", RuntimeWarning)

ctypedef fused real:
    float
    double


# ------------------------------------------------------------------ helpers
cdef inline void _geom(tuple t, nd_geom *g):
    g.kind = t[0]
    g.n = t[1]
    g.c = t[2]
    g.s = t[3]
    g.sn = t[4]
    g.sc = t[5]
    g.ss = t[6]
    g.groups = t[7]


cdef inline void *_ptr(cnp.ndarray a) noexcept nogil:
    return cnp.PyArray_DATA(a)


cdef inline double *_dptr(cnp.ndarray a) noexcept nogil:
    return <double *>cnp.PyArray_DATA(a)


cdef inline bint _is_f32(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


cdef inline cnp.ndarray _as_f64(object a):
    """a as a C-contiguous native float64 ndarray (a copy only when needed).
    A C-contiguous float32 array (a float32 layer's gamma, beta) is widened
    here in one loop: NumPy's generic cast costs more than the small kernels."""
    cdef cnp.ndarray arr, wide
    cdef cnp.npy_intp n, k
    cdef const float *src
    cdef double *dst
    if type(a) is np.ndarray:
        arr = <cnp.ndarray>a
        if cnp.PyArray_ISCARRAY_RO(arr) and cnp.PyArray_ISNOTSWAPPED(arr):
            if cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT64:
                return arr
            if cnp.PyArray_TYPE(arr) == cnp.NPY_FLOAT32:
                wide = cnp.PyArray_EMPTY(cnp.PyArray_NDIM(arr), cnp.PyArray_DIMS(arr),
                                         cnp.NPY_FLOAT64, 0)
                n = cnp.PyArray_SIZE(arr)
                src = <const float *>cnp.PyArray_DATA(arr)
                dst = <double *>cnp.PyArray_DATA(wide)
                for k in range(n):
                    dst[k] = src[k]
                return wide
    return np.ascontiguousarray(a, dtype=np.float64)


def f64(a):
    """a as a C-contiguous float64 ndarray (a copy only when needed)."""
    return _as_f64(a)


cdef int _check_len(cnp.ndarray a, int64_t n, str name) except -1:
    """a (float64, C-contiguous after _as_f64) holds exactly n values."""
    if cnp.PyArray_SIZE(a) != n:
        raise ValueError(f"{name} has {cnp.PyArray_SIZE(a)} values; the geometry needs {n}")
    return 0


cdef int _check_operand(cnp.ndarray x, const nd_geom *g) except -1:
    """x holds the geometry's values (n * c * s of float32 or float64)."""
    if cnp.PyArray_SIZE(x) != g.n * g.c * g.s:
        raise ValueError(f"the operand has {cnp.PyArray_SIZE(x)} values; the geometry needs "
                         f"{g.n * g.c * g.s}")
    if cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT32 and cnp.PyArray_TYPE(x) != cnp.NPY_FLOAT64:
        raise ValueError(f"the operand has dtype {x.dtype}; the kernels take float32 or float64")
    return 0


cdef int _check_same(cnp.ndarray a, cnp.ndarray x, str name) except -1:
    """a has x's dtype, shape and strides (the same geometry; the strides of
    axes of length 1 do not matter)."""
    cdef object ao = a, xo = x
    cdef int nd = cnp.PyArray_NDIM(x), k
    cdef cnp.npy_intp *da = cnp.PyArray_DIMS(a)
    cdef cnp.npy_intp *dx = cnp.PyArray_DIMS(x)
    cdef cnp.npy_intp *sa = cnp.PyArray_STRIDES(a)
    cdef cnp.npy_intp *sx = cnp.PyArray_STRIDES(x)
    cdef bint same = cnp.PyArray_TYPE(a) == cnp.PyArray_TYPE(x) and cnp.PyArray_NDIM(a) == nd
    if same:
        for k in range(nd):
            if da[k] != dx[k]:
                same = False
    if same and cnp.PyArray_SIZE(x) > 0:         # (an empty array has no layout)
        for k in range(nd):
            if dx[k] > 1 and sa[k] != sx[k]:
                same = False
    if not same:
        raise ValueError(f"{name} must have the dtype, shape and memory layout of x: {name} is "
                         f"{a.dtype} {ao.shape} strides {ao.strides}, x is {x.dtype} {xo.shape} "
                         f"strides {xo.strides}")
    return 0


cdef int _check_bits(cnp.ndarray bits, int64_t n) except -1:
    """bits is a C-contiguous uint8 array of at least ceil(n / 8) bytes."""
    if (cnp.PyArray_TYPE(bits) != cnp.NPY_UINT8 or not cnp.PyArray_ISCARRAY(bits) or
            cnp.PyArray_SIZE(bits) < (n + 7) // 8):
        raise ValueError(f"the packed mask must be C-contiguous uint8 of at least {(n + 7) // 8} "
                         f"bytes; got {bits.dtype}, {cnp.PyArray_SIZE(bits)} values")
    return 0


cdef double *_scratch(int64_t n) except NULL:
    cdef double *p = <double *>PyMem_Malloc(<size_t>(n if n > 0 else 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


cdef inline void _to_real(const double *src, real *dst, int64_t n) noexcept nogil:
    """dst[0:n] <- src rounded to real."""
    cdef int64_t k
    if real is float:
        for k in range(n):
            dst[k] = <float>src[k]
    else:
        memcpy(dst, src, n * sizeof(double))


# ------------------------------------------------------- the dispatch, once
cdef inline void c_moments(const real *x, const nd_geom *g, double *w, double *mean,
                           double *m2) noexcept nogil:
    if real is float:
        nd_moments_f32(x, g, w, mean, m2)
    else:
        nd_moments_f64(x, g, w, mean, m2)


cdef inline void c_normalize(const real *x, real *out, const nd_geom *g, const double *mean,
                             const double *invstd, const double *gamma, const double *beta,
                             double *w) noexcept nogil:
    if real is float:
        nd_normalize_f32(x, out, g, mean, invstd, gamma, beta, w)
    else:
        nd_normalize_f64(x, out, g, mean, invstd, gamma, beta, w)


cdef inline void c_grad_reduce(const real *dout, const real *x, const nd_geom *g,
                               const double *mean, const double *invstd, const double *gamma,
                               double *w, double *s1, double *s2, double *dgamma,
                               double *dbeta) noexcept nogil:
    if real is float:
        nd_grad_reduce_f32(dout, x, g, mean, invstd, gamma, w, s1, s2, dgamma, dbeta)
    else:
        nd_grad_reduce_f64(dout, x, g, mean, invstd, gamma, w, s1, s2, dgamma, dbeta)


cdef inline void c_grad_input(const real *dout, const real *x, real *dx, const nd_geom *g,
                              const double *mean, const double *invstd, const double *gamma,
                              const double *s1, const double *s2, int train, double count,
                              double *w) noexcept nogil:
    if real is float:
        nd_grad_input_f32(dout, x, dx, g, mean, invstd, gamma, s1, s2, train, count, w)
    else:
        nd_grad_input_f64(dout, x, dx, g, mean, invstd, gamma, s1, s2, train, count, w)


cdef inline void c_norm_train_fwd(const real *x, real *out, const nd_geom *g,
                                  const double *gamma, const double *beta, double eps,
                                  double *w, double *mean, double *var,
                                  double *invstd) noexcept nogil:
    if real is float:
        nd_norm_train_fwd_f32(x, out, g, gamma, beta, eps, w, mean, var, invstd)
    else:
        nd_norm_train_fwd_f64(x, out, g, gamma, beta, eps, w, mean, var, invstd)


cdef inline void c_norm_bwd(const real *dout, const real *x, real *dx, const nd_geom *g,
                            const double *mean, const double *invstd, const double *gamma,
                            int train, double *w, double *dgamma,
                            double *dbeta) noexcept nogil:
    if real is float:
        nd_norm_bwd_f32(dout, x, dx, g, mean, invstd, gamma, train, w, dgamma, dbeta)
    else:
        nd_norm_bwd_f64(dout, x, dx, g, mean, invstd, gamma, train, w, dgamma, dbeta)


cdef inline void c_running_update(const float *o32, const double *o64, const double *batch,
                                  double momentum, real *out, int64_t c) noexcept nogil:
    if real is float:
        nd_running_update_f32(o32, o64, batch, momentum, out, c)
    else:
        nd_running_update_f64(o32, o64, batch, momentum, out, c)


cdef inline void c_dropout_fwd(const real *x, real *out, uint8_t *bits, int64_t n,
                               uint64_t seed, uint64_t offset, double p) noexcept nogil:
    if real is float:
        nd_dropout_fwd_f32(x, out, bits, n, seed, offset, p)
    else:
        nd_dropout_fwd_f64(x, out, bits, n, seed, offset, p)


cdef inline void c_dropout_bwd(const real *dout, const uint8_t *bits, real *dx, int64_t n,
                               double p) noexcept nogil:
    if real is float:
        nd_dropout_bwd_f32(dout, bits, dx, n, p)
    else:
        nd_dropout_bwd_f64(dout, bits, dx, n, p)


# ------------------------------------------------------------ the bindings
def have_openmp():
    """True when the kernels were compiled with OpenMP."""
    return bool(nd_have_openmp())


def max_threads():
    """Threads an OpenMP kernel would use now (1 without OpenMP, and 1 in a
    process that forked_serial names)."""
    return nd_max_threads()


def isa():
    """The instruction-set variant each kernel family runs here:
    {"normalization": ..., "dropout": ...}."""
    return {"normalization": nd_norm_isa().decode(), "dropout": nd_dropout_isa().decode()}


def forked_serial():
    """True in a process forked from a thread that had run a parallel kernel
    and whose OpenMP thread pool could not be released before fork() (a fork
    from inside a parallel region; an OpenMP runtime other than GNU libgomp,
    or one without ``omp_pause_resource_all``): the pool's threads did not
    survive fork(), so the kernels run on one thread (with the same
    results).  A fork elsewhere releases the forking thread's pool first,
    and the child keeps all its threads."""
    return bool(nd_forked_serial())


cdef object _moments(const real *x, nd_geom *g):
    cdef int64_t ng = nd_ngroups(g)
    cdef cnp.ndarray mean = np.empty(ng, np.float64)
    cdef cnp.ndarray m2 = np.empty(ng, np.float64)
    cdef double *w = _scratch(nd_work_size(g, 0))
    try:
        with nogil:
            c_moments(x, g, w, _dptr(mean), _dptr(m2))
    finally:
        PyMem_Free(w)
    return mean, m2


def moments(cnp.ndarray x, tuple geom):
    """(mean, m2): new float64 (ngroups,) arrays, the mean and the sum of
    squared deviations of every statistics group of x."""
    cdef nd_geom g
    _geom(geom, &g)
    _check_operand(x, &g)
    if _is_f32(x):
        return _moments(<const float *>_ptr(x), &g)
    return _moments(<const double *>_ptr(x), &g)


cdef object _normalize(const real *x, real *out, nd_geom *g, mean, invstd, gamma, beta):
    cdef cnp.ndarray mn = _as_f64(mean), iv = _as_f64(invstd)
    cdef cnp.ndarray gm = _as_f64(gamma), bt = _as_f64(beta)
    _check_len(mn, nd_ngroups(g), "mean")
    _check_len(iv, nd_ngroups(g), "invstd")
    _check_len(gm, g.c, "gamma")
    _check_len(bt, g.c, "beta")
    cdef double *w = _scratch(nd_work_size(g, 0))
    try:
        with nogil:
            c_normalize(x, out, g, _dptr(mn), _dptr(iv), _dptr(gm), _dptr(bt), w)
    finally:
        PyMem_Free(w)


def normalize(cnp.ndarray x, cnp.ndarray out, tuple geom, mean, invstd, gamma, beta):
    """out <- (x - mean[grp]) * (invstd[grp] * gamma[ch]) + beta[ch]; mean,
    invstd (ngroups,), gamma, beta (c,) of any real dtype."""
    cdef nd_geom g
    _geom(geom, &g)
    _check_operand(x, &g)
    _check_same(out, x, "out")
    if _is_f32(x):
        _normalize(<const float *>_ptr(x), <float *>_ptr(out), &g, mean, invstd, gamma, beta)
    else:
        _normalize(<const double *>_ptr(x), <double *>_ptr(out), &g, mean, invstd, gamma, beta)


cdef object _grad_reduce(const real *dout, const real *x, nd_geom *g, mean, invstd, gamma):
    cdef int64_t ng = nd_ngroups(g), C = g.c
    cdef cnp.ndarray mn = _as_f64(mean), iv = _as_f64(invstd), gm = _as_f64(gamma)
    _check_len(mn, ng, "mean")
    _check_len(iv, ng, "invstd")
    _check_len(gm, C, "gamma")
    cdef cnp.ndarray s1 = np.empty(ng, np.float64), s2 = np.empty(ng, np.float64)
    dt = np.float32 if real is float else np.float64
    cdef cnp.ndarray dgamma = np.empty(C, dt)
    cdef cnp.ndarray dbeta = np.empty(C, dt)
    cdef real *dgp = <real *>_ptr(dgamma)
    cdef real *dbp = <real *>_ptr(dbeta)
    cdef double *sp = _scratch(2 * C + nd_work_size(g, 1))   # dgamma, dbeta in double; work
    try:
        with nogil:
            c_grad_reduce(dout, x, g, _dptr(mn), _dptr(iv), _dptr(gm), sp + 2 * C,
                          _dptr(s1), _dptr(s2), sp, sp + C)
            _to_real(sp, dgp, C)
            _to_real(sp + C, dbp, C)
    finally:
        PyMem_Free(sp)
    return s1, s2, dgamma, dbeta


def grad_reduce(cnp.ndarray dout, cnp.ndarray x, tuple geom, mean, invstd, gamma):
    """(s1, s2, dgamma, dbeta): the per-group sums (new float64 (ngroups,)
    arrays) and the per-channel gradients (new (c,) arrays of x's dtype)."""
    cdef nd_geom g
    _geom(geom, &g)
    _check_operand(x, &g)
    _check_same(dout, x, "dout")
    if _is_f32(x):
        return _grad_reduce(<const float *>_ptr(dout), <const float *>_ptr(x), &g, mean,
                            invstd, gamma)
    return _grad_reduce(<const double *>_ptr(dout), <const double *>_ptr(x), &g, mean,
                        invstd, gamma)


cdef object _grad_input(const real *dout, const real *x, real *dx, nd_geom *g, mean, invstd,
                        gamma, s1, s2, int train, double count):
    cdef cnp.ndarray mn = _as_f64(mean), iv = _as_f64(invstd), gm = _as_f64(gamma)
    cdef cnp.ndarray a1 = _as_f64(s1), a2 = _as_f64(s2)
    cdef int64_t ng = nd_ngroups(g)
    _check_len(mn, ng, "mean")
    _check_len(iv, ng, "invstd")
    _check_len(a1, ng, "s1")
    _check_len(a2, ng, "s2")
    _check_len(gm, g.c, "gamma")
    cdef double *w = _scratch(nd_work_size(g, 1))
    try:
        with nogil:
            c_grad_input(dout, x, dx, g, _dptr(mn), _dptr(iv), _dptr(gm), _dptr(a1),
                         _dptr(a2), train, count, w)
    finally:
        PyMem_Free(w)


def grad_input(cnp.ndarray dout, cnp.ndarray x, cnp.ndarray dx, tuple geom, mean, invstd,
               gamma, s1, s2, bint train, double count):
    """dx <- the input gradient from grad_reduce's sums s1, s2 over count
    values per group."""
    cdef nd_geom g
    _geom(geom, &g)
    _check_operand(x, &g)
    _check_same(dout, x, "dout")
    _check_same(dx, x, "dx")
    if _is_f32(x):
        _grad_input(<const float *>_ptr(dout), <const float *>_ptr(x), <float *>_ptr(dx), &g,
                    mean, invstd, gamma, s1, s2, train, count)
    else:
        _grad_input(<const double *>_ptr(dout), <const double *>_ptr(x), <double *>_ptr(dx),
                    &g, mean, invstd, gamma, s1, s2, train, count)


cdef object _norm_train_fwd(const real *x, real *out, nd_geom *g, gamma, beta, double eps):
    cdef int64_t ng = nd_ngroups(g)
    cdef cnp.ndarray gm = _as_f64(gamma), bt = _as_f64(beta)
    _check_len(gm, g.c, "gamma")
    _check_len(bt, g.c, "beta")
    cdef cnp.ndarray stats = np.empty((3, ng), np.float64)
    cdef double *sp = _dptr(stats)
    cdef double *w = _scratch(nd_work_size(g, 0))
    try:
        with nogil:
            c_norm_train_fwd(x, out, g, _dptr(gm), _dptr(bt), eps, w, sp, sp + ng, sp + 2 * ng)
    finally:
        PyMem_Free(w)
    return stats


def norm_train_fwd(cnp.ndarray x, cnp.ndarray out, tuple geom, gamma, beta, double eps):
    """Training forward in one call: out written; returns a new (3, ngroups)
    float64 array, rows mean, var, invstd.  gamma, beta: (c,) of any real
    dtype."""
    cdef nd_geom g
    _geom(geom, &g)
    _check_operand(x, &g)
    _check_same(out, x, "out")
    if _is_f32(x):
        return _norm_train_fwd(<const float *>_ptr(x), <float *>_ptr(out), &g, gamma, beta, eps)
    return _norm_train_fwd(<const double *>_ptr(x), <double *>_ptr(out), &g, gamma, beta, eps)


cdef object _norm_bwd(const real *dout, const real *x, real *dx, nd_geom *g, mean, invstd,
                      gamma, int train):
    cdef int64_t C = g.c
    cdef cnp.ndarray mn = _as_f64(mean), iv = _as_f64(invstd), gm = _as_f64(gamma)
    _check_len(mn, nd_ngroups(g), "mean")
    _check_len(iv, nd_ngroups(g), "invstd")
    _check_len(gm, C, "gamma")
    dt = np.float32 if real is float else np.float64
    cdef cnp.ndarray dgamma = np.empty(C, dt)
    cdef cnp.ndarray dbeta = np.empty(C, dt)
    cdef real *dgp = <real *>_ptr(dgamma)
    cdef real *dbp = <real *>_ptr(dbeta)
    cdef double *sp = _scratch(2 * C + nd_work_size(g, 1))   # dgamma, dbeta in double; work
    try:
        with nogil:
            c_norm_bwd(dout, x, dx, g, _dptr(mn), _dptr(iv), _dptr(gm), train, sp + 2 * C,
                       sp, sp + C)
            _to_real(sp, dgp, C)
            _to_real(sp + C, dbp, C)
    finally:
        PyMem_Free(sp)
    return dgamma, dbeta


def norm_bwd(cnp.ndarray dout, cnp.ndarray x, cnp.ndarray dx, tuple geom, mean, invstd,
             gamma, bint train):
    """Backward in one call: dx written; returns (dgamma, dbeta), new (c,)
    arrays of x's dtype."""
    cdef nd_geom g
    _geom(geom, &g)
    _check_operand(x, &g)
    _check_same(dout, x, "dout")
    _check_same(dx, x, "dx")
    if _is_f32(x):
        return _norm_bwd(<const float *>_ptr(dout), <const float *>_ptr(x), <float *>_ptr(dx),
                         &g, mean, invstd, gamma, train)
    return _norm_bwd(<const double *>_ptr(dout), <const double *>_ptr(x), <double *>_ptr(dx),
                     &g, mean, invstd, gamma, train)


cdef object _running_update(real *out, old, cnp.ndarray batch, double momentum):
    cdef int64_t C = cnp.PyArray_SIZE(batch)
    cdef const double *b = <const double *>cnp.PyArray_DATA(batch)
    cdef cnp.ndarray o
    cdef const float *o32 = NULL
    cdef const double *o64 = NULL
    if old is not None:
        o = <cnp.ndarray>old
        if not (cnp.PyArray_ISCARRAY_RO(o) and cnp.PyArray_ISNOTSWAPPED(o) and
                cnp.PyArray_TYPE(o) in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)):
            o = np.ascontiguousarray(old, dtype=np.float64)
        if cnp.PyArray_TYPE(o) == cnp.NPY_FLOAT32:
            o32 = <const float *>cnp.PyArray_DATA(o)
        else:
            o64 = <const double *>cnp.PyArray_DATA(o)
    c_running_update(o32, o64, b, momentum, out, C)


def running_update(old, cnp.ndarray batch, double momentum, dtype):
    """new[c] = (1 - momentum) * batch[c] + momentum * old[c] in float64,
    rounded once to dtype (float32 or float64); old None counts as zeros.
    batch: C-contiguous float64 (C,).  Returns a new (C,) array, in native byte
    order (the kernel writes native values; a big-endian x's dtype would label
    them wrongly)."""
    cdef cnp.ndarray new = np.empty(cnp.PyArray_SIZE(batch), np.dtype(dtype).newbyteorder("="))
    if cnp.PyArray_TYPE(new) == cnp.NPY_FLOAT32:
        _running_update(<float *>_ptr(new), old, batch, momentum)
    elif cnp.PyArray_TYPE(new) == cnp.NPY_FLOAT64:
        _running_update(<double *>_ptr(new), old, batch, momentum)
    else:
        raise TypeError(f"running_update: dtype must be float32 or float64, got {new.dtype}")
    return new


cdef object _dropout_fwd(const real *x, real *out, uint8_t *bits, int64_t n, uint64_t seed,
                         uint64_t offset, double p):
    with nogil:
        c_dropout_fwd(x, out, bits, n, seed, offset, p)


def dropout_fwd(cnp.ndarray x, cnp.ndarray out, cnp.ndarray bits, uint64_t seed,
                uint64_t offset, double p):
    """out = keep ? x * (1/p rounded to x's dtype) : 0 and the packed keep bits
    (C-contiguous x, out); value i with the word of index offset + i."""
    cdef int64_t n = cnp.PyArray_SIZE(x)
    _check_same(out, x, "out")
    _check_bits(bits, n)
    cdef uint8_t *bp = <uint8_t *>_ptr(bits)
    if _is_f32(x):
        _dropout_fwd(<const float *>_ptr(x), <float *>_ptr(out), bp, n, seed, offset, p)
    else:
        _dropout_fwd(<const double *>_ptr(x), <double *>_ptr(out), bp, n, seed, offset, p)


cdef object _dropout_bwd(const real *dout, const uint8_t *bits, real *dx, int64_t n, double p):
    with nogil:
        c_dropout_bwd(dout, bits, dx, n, p)


def dropout_bwd(cnp.ndarray dout, cnp.ndarray bits, cnp.ndarray dx, double p):
    """dx = bit ? dout * (1/p rounded to dout's dtype) : 0 (C-contiguous dout, dx)."""
    cdef int64_t n = cnp.PyArray_SIZE(dout)
    _check_same(dx, dout, "dx")
    _check_bits(bits, n)
    cdef const uint8_t *bp = <const uint8_t *>_ptr(bits)
    if _is_f32(dout):
        _dropout_bwd(<const float *>_ptr(dout), bp, <float *>_ptr(dx), n, p)
    else:
        _dropout_bwd(<const double *>_ptr(dout), bp, <double *>_ptr(dx), n, p)


def dropout_mask(cnp.ndarray mask, uint64_t seed, uint64_t offset, double p):
    """Keep flags as bytes (0/1) into the C-contiguous bool/uint8 array mask,
    words from generator index offset."""
    cdef int64_t n = cnp.PyArray_SIZE(mask)
    if not cnp.PyArray_ISCARRAY(mask) or cnp.PyArray_ITEMSIZE(mask) != 1:
        raise ValueError("dropout_mask: mask must be a C-contiguous array of 1-byte items")
    cdef uint8_t *mp = <uint8_t *>_ptr(mask)
    with nogil:
        nd_dropout_mask(mp, n, seed, offset, p)


# ------------------------------------------------- shared helpers, for tests
def keep_threshold(double p):
    """floor(p * 2**32), computed by the header the kernels use (nd_philox.h)."""
    return nd_keep_threshold(p)


def merge_moments(count, mean, m2):
    """Merge per-set moments in set order (nd_moments.h).

    Parameters
    ----------
    count, mean, m2 : array_like (nsets, ngroups), float64

    Returns
    -------
    (count, mean, m2) : new float64 (ngroups,) arrays
    """
    cdef cnp.ndarray c = _as_f64(count), m = _as_f64(mean), q = _as_f64(m2)
    if c.ndim != 2 or m.shape[0] != c.shape[0] or q.shape[0] != c.shape[0] or \
            m.shape[1] != c.shape[1] or q.shape[1] != c.shape[1]:
        raise ValueError("merge_moments: count, mean and m2 must have one (nsets, ngroups) shape")
    cdef int64_t ns = c.shape[0], ng = c.shape[1]
    cdef cnp.ndarray oc = np.empty(ng, np.float64), om = np.empty(ng, np.float64)
    cdef cnp.ndarray oq = np.empty(ng, np.float64)
    with nogil:
        nd_merge_moments(ns, ng, _dptr(c), _dptr(m), _dptr(q), _dptr(oc), _dptr(om), _dptr(oq))
    return oc, om, oq


def philox4x32_10(counter, key):
    """Philox4x32-10 of a 4-word counter under a 2-word key, computed by the
    C header the kernels use (for known-answer tests)."""
    cdef unsigned int c[4]
    cdef unsigned int o[4]
    for i in range(4):
        c[i] = counter[i]
    nd_philox4x32_10(c, key[0], key[1], o)
    return (o[0], o[1], o[2], o[3])


def set_stream_bytes(int64_t nbytes):
    """Outputs of at least nbytes bytes use streaming stores."""
    nd_set_stream_bytes(nbytes)


def get_stream_bytes():
    return nd_get_stream_bytes()


def set_scratch_refusal(int mode):
    """For the tests: refuse the channels-last groupnorm passes' per-thread
    scratch (0 never, 1 on every thread, 2 on the odd-numbered threads), as
    a failed allocation would, so that their fallbacks run."""
    nd_set_scratch_refusal(mode)
