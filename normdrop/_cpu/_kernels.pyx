# cython: language_level=3, boundscheck=False, wraparound=False, cdivision=True
"""Thin Cython bindings of the C kernels in ``src_c/`` (see ``normdrop.h``).

Every function here trusts its caller (``normdrop._cpu``): arrays are NumPy
arrays of dtype float32 or float64 laid out as the geometry says, outputs and
statistics arrays are allocated, and float64 per-channel arrays are
C-contiguous.  The GIL is released around every kernel.  Geometry tuples are
``(kind, n, c, s, sn, sc)`` in elements; ``kind`` 0 is rows, 1 is planes.
"""
cimport numpy as cnp
import numpy as np
from libc.stdint cimport int64_t, uint64_t, uint8_t

cnp.import_array()

cdef extern from "normdrop.h" nogil:
    ctypedef struct nd_geom:
        int64_t kind
        int64_t n
        int64_t c
        int64_t s
        int64_t sn
        int64_t sc
    int64_t nd_bn_work_size(const nd_geom *g)
    int nd_max_threads()
    int nd_have_openmp()
    void nd_bn_stats_f32(const float *x, const nd_geom *g, double *work, double *mean, double *var)
    void nd_bn_stats_f64(const double *x, const nd_geom *g, double *work, double *mean, double *var)
    void nd_bn_affine_f32(const float *x, float *out, const nd_geom *g, const double *mean,
                          const double *scale, const double *shift)
    void nd_bn_affine_f64(const double *x, double *out, const nd_geom *g, const double *mean,
                          const double *scale, const double *shift)
    void nd_bn_train_fwd_f32(const float *x, float *out, const nd_geom *g, const double *gamma,
                             const double *beta, double eps, double *work, double *mean,
                             double *var, double *invstd, double *scale)
    void nd_bn_train_fwd_f64(const double *x, double *out, const nd_geom *g, const double *gamma,
                             const double *beta, double eps, double *work, double *mean,
                             double *var, double *invstd, double *scale)
    void nd_bn_backward_f32(const float *dout, const float *x, float *dx, const nd_geom *g,
                            const double *gamma, const double *mean, const double *invstd,
                            int train, double *work, double *coef, double *dgamma, double *dbeta)
    void nd_bn_backward_f64(const double *dout, const double *x, double *dx, const nd_geom *g,
                            const double *gamma, const double *mean, const double *invstd,
                            int train, double *work, double *coef, double *dgamma, double *dbeta)
    void nd_bn_bwd_reduce_f32(const float *dout, const float *x, const nd_geom *g,
                              const double *mean, double *work, double *sum_dy, double *sum_dyxm)
    void nd_bn_bwd_reduce_f64(const double *dout, const double *x, const nd_geom *g,
                              const double *mean, double *work, double *sum_dy, double *sum_dyxm)
    void nd_bn_bwd_dx_f32(const float *dout, const float *x, float *dx, const nd_geom *g,
                          const double *mean, const double *a, const double *b, const double *e)
    void nd_bn_bwd_dx_f64(const double *dout, const double *x, double *dx, const nd_geom *g,
                          const double *mean, const double *a, const double *b, const double *e)
    void nd_dropout_fwd_f32(const float *x, float *out, uint8_t *bits, int64_t n,
                            uint64_t seed, uint64_t threshold, float scale)
    void nd_dropout_fwd_f64(const double *x, double *out, uint8_t *bits, int64_t n,
                            uint64_t seed, uint64_t threshold, double scale)
    void nd_dropout_bwd_f32(const float *dout, const uint8_t *bits, float *dx, int64_t n, float scale)
    void nd_dropout_bwd_f64(const double *dout, const uint8_t *bits, double *dx, int64_t n, double scale)
    void nd_dropout_bits(uint8_t *bits, int64_t n, uint64_t seed, uint64_t threshold)
    void nd_dropout_mask(uint8_t *mask, int64_t n, uint64_t seed, uint64_t threshold)
    void nd_set_stream_bytes(int64_t nbytes)
    int64_t nd_get_stream_bytes()
    void *nd_pool_malloc(void *ctx, size_t size)
    void *nd_pool_calloc(void *ctx, size_t nelem, size_t elsize)
    void *nd_pool_realloc(void *ctx, void *ptr, size_t new_size)
    void nd_pool_free(void *ctx, void *ptr, size_t size)
    size_t nd_pool_set_limit(size_t limit)
    void nd_pool_trim()
    void nd_pool_info(uint64_t *info)

cdef extern from "numpy/arrayobject.h":
    ctypedef struct PyDataMemAllocator:
        void *ctx
        void *(*malloc)(void *ctx, size_t size) noexcept nogil
        void *(*calloc)(void *ctx, size_t nelem, size_t elsize) noexcept nogil
        void *(*realloc)(void *ctx, void *ptr, size_t new_size) noexcept nogil
        void (*free)(void *ctx, void *ptr, size_t size) noexcept nogil
    ctypedef struct PyDataMem_Handler:
        char name[127]
        uint8_t version
        PyDataMemAllocator allocator
    object PyDataMem_SetHandler(object handler)
    object PyDataMem_GetHandler()

from cpython.pycapsule cimport PyCapsule_New, PyCapsule_GetPointer
from libc.string cimport memcpy, memset
from cpython.mem cimport PyMem_Malloc, PyMem_Free


cdef inline void _geom(tuple t, nd_geom *g):
    g.kind = t[0]
    g.n = t[1]
    g.c = t[2]
    g.s = t[3]
    g.sn = t[4]
    g.sc = t[5]


cdef inline void *_ptr(cnp.ndarray a):
    return cnp.PyArray_DATA(a)


cdef inline double *_dptr(cnp.ndarray a):
    return <double *>cnp.PyArray_DATA(a)


cdef inline bint _is_f32(cnp.ndarray a):
    return cnp.PyArray_TYPE(a) == cnp.NPY_FLOAT32


def have_openmp():
    """True when the kernels were compiled with OpenMP."""
    return bool(nd_have_openmp())


def max_threads():
    """Threads an OpenMP kernel would use now (1 without OpenMP)."""
    return nd_max_threads()





def bn_affine(cnp.ndarray x, cnp.ndarray out, tuple geom, cnp.ndarray mean,
              cnp.ndarray scale, cnp.ndarray shift):
    """out = (x - mean[c]) * scale[c] + shift[c]."""
    cdef nd_geom g
    _geom(geom, &g)
    cdef void *xp = _ptr(x)
    cdef void *op = _ptr(out)
    cdef double *mp = _dptr(mean)
    cdef double *ap = _dptr(scale)
    cdef double *bp = _dptr(shift)
    if _is_f32(x):
        with nogil:
            nd_bn_affine_f32(<const float *>xp, <float *>op, &g, mp, ap, bp)
    else:
        with nogil:
            nd_bn_affine_f64(<const double *>xp, <double *>op, &g, mp, ap, bp)


cdef inline cnp.ndarray _as_f64(object a):
    """a as a C-contiguous native float64 ndarray (a copy only when needed)."""
    if (type(a) is np.ndarray and cnp.PyArray_TYPE(<cnp.ndarray>a) == cnp.NPY_FLOAT64 and
            cnp.PyArray_ISCARRAY_RO(<cnp.ndarray>a) and cnp.PyArray_ISNOTSWAPPED(<cnp.ndarray>a)):
        return <cnp.ndarray>a
    return np.ascontiguousarray(a, dtype=np.float64)


def f64(a):
    """a as a C-contiguous float64 ndarray (a copy only when needed)."""
    return _as_f64(a)


cdef double *_scratch(int64_t n) except NULL:
    cdef double *p = <double *>PyMem_Malloc(<size_t>(n if n > 0 else 1) * sizeof(double))
    if p == NULL:
        raise MemoryError()
    return p


def bn_train_fwd(cnp.ndarray x, cnp.ndarray out, tuple geom, gamma, beta, double eps):
    """Training forward: out = (x - mean) * (gamma * invstd) + beta.  Returns
    stats, a new (4, C) float64 array: rows mean, var, invstd, gamma * invstd.
    gamma, beta: (C,) arrays of any real dtype."""
    cdef nd_geom g
    _geom(geom, &g)
    cdef int64_t C = g.c
    cdef cnp.ndarray gm = _as_f64(gamma)
    cdef cnp.ndarray bt = _as_f64(beta)
    cdef cnp.ndarray stats = np.empty((4, C), np.float64)
    cdef void *xp = _ptr(x)
    cdef void *op = _ptr(out)
    cdef double *gp = _dptr(gm)
    cdef double *bp = _dptr(bt)
    cdef double *sp = _dptr(stats)
    cdef double *wp = _scratch(nd_bn_work_size(&g))
    try:
        if _is_f32(x):
            with nogil:
                nd_bn_train_fwd_f32(<const float *>xp, <float *>op, &g, gp, bp, eps, wp,
                                    sp, sp + C, sp + 2 * C, sp + 3 * C)
        else:
            with nogil:
                nd_bn_train_fwd_f64(<const double *>xp, <double *>op, &g, gp, bp, eps, wp,
                                    sp, sp + C, sp + 2 * C, sp + 3 * C)
    finally:
        PyMem_Free(wp)
    return stats


def bn_backward(cnp.ndarray dout, cnp.ndarray x, cnp.ndarray dx, tuple geom, gamma, mean,
                invstd, bint train):
    """Backward: dx (written), and returns (dgamma, dbeta) as new (C,) arrays
    of x's dtype.  gamma, mean, invstd: (C,) arrays (any real dtype)."""
    cdef nd_geom g
    _geom(geom, &g)
    cdef int64_t C = g.c, c
    cdef cnp.ndarray gm = _as_f64(gamma)
    cdef cnp.ndarray mn = _as_f64(mean)
    cdef cnp.ndarray iv = _as_f64(invstd)
    cdef void *dp = _ptr(dout)
    cdef void *xp = _ptr(x)
    cdef void *op = _ptr(dx)
    cdef double *gp = _dptr(gm)
    cdef double *mp = _dptr(mn)
    cdef double *ip = _dptr(iv)
    cdef int tr = train
    cdef bint f32 = _is_f32(x)
    cdef cnp.ndarray dgamma = np.empty(C, np.float32 if f32 else np.float64)
    cdef cnp.ndarray dbeta = np.empty(C, np.float32 if f32 else np.float64)
    cdef double *sp = _scratch(5 * C + nd_bn_work_size(&g))   # a, b, e, dgamma, dbeta; work
    cdef double *wp = sp + 5 * C
    try:
        if f32:
            with nogil:
                nd_bn_backward_f32(<const float *>dp, <const float *>xp, <float *>op, &g, gp, mp,
                                   ip, tr, wp, sp, sp + 3 * C, sp + 4 * C)
                for c in range(C):
                    (<float *>cnp.PyArray_DATA(dgamma))[c] = <float>sp[3 * C + c]
                    (<float *>cnp.PyArray_DATA(dbeta))[c] = <float>sp[4 * C + c]
        else:
            with nogil:
                nd_bn_backward_f64(<const double *>dp, <const double *>xp, <double *>op, &g, gp,
                                   mp, ip, tr, wp, sp, sp + 3 * C, sp + 4 * C)
                memcpy(cnp.PyArray_DATA(dgamma), sp + 3 * C, C * sizeof(double))
                memcpy(cnp.PyArray_DATA(dbeta), sp + 4 * C, C * sizeof(double))
    finally:
        PyMem_Free(sp)
    return dgamma, dbeta




def dropout_fwd(cnp.ndarray x, cnp.ndarray out, cnp.ndarray bits, uint64_t seed,
                uint64_t threshold, double scale):
    """out = keep ? x * scale : 0 and the packed keep bits (C-contiguous x, out)."""
    cdef int64_t n = cnp.PyArray_SIZE(x)
    cdef void *xp = _ptr(x)
    cdef void *op = _ptr(out)
    cdef uint8_t *bp = <uint8_t *>_ptr(bits)
    cdef float s32 = <float>scale
    if _is_f32(x):
        with nogil:
            nd_dropout_fwd_f32(<const float *>xp, <float *>op, bp, n, seed, threshold, s32)
    else:
        with nogil:
            nd_dropout_fwd_f64(<const double *>xp, <double *>op, bp, n, seed, threshold, scale)


def dropout_bwd(cnp.ndarray dout, cnp.ndarray bits, cnp.ndarray dx, double scale):
    """dx = bit ? dout * scale : 0 (C-contiguous dout, dx)."""
    cdef int64_t n = cnp.PyArray_SIZE(dout)
    cdef void *dp = _ptr(dout)
    cdef void *op = _ptr(dx)
    cdef const uint8_t *bp = <const uint8_t *>_ptr(bits)
    cdef float s32 = <float>scale
    if _is_f32(dout):
        with nogil:
            nd_dropout_bwd_f32(<const float *>dp, bp, <float *>op, n, s32)
    else:
        with nogil:
            nd_dropout_bwd_f64(<const double *>dp, bp, <double *>op, n, scale)



def dropout_mask(cnp.ndarray mask, uint64_t seed, uint64_t threshold):
    """Keep flags as bytes (0/1) into the C-contiguous bool/uint8 array mask."""
    cdef int64_t n = cnp.PyArray_SIZE(mask)
    cdef uint8_t *mp = <uint8_t *>_ptr(mask)
    with nogil:
        nd_dropout_mask(mp, n, seed, threshold)


def running_update(old, cnp.ndarray batch, double momentum, dtype):
    """new[c] = (1 - momentum) * batch[c] + momentum * old[c] in float64,
    rounded once to dtype (float32 or float64); old None counts as zeros.
    batch: C-contiguous float64 (C,).  Returns a new (C,) array."""
    cdef Py_ssize_t C = cnp.PyArray_SIZE(batch), c
    cdef const double *b = <const double *>cnp.PyArray_DATA(batch)
    cdef double om = 1.0 - momentum, v
    cdef cnp.ndarray new = np.empty(C, dtype)
    if cnp.PyArray_TYPE(new) not in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64):
        raise TypeError(f"running_update: dtype must be float32 or float64, got {new.dtype}")
    cdef cnp.ndarray o = None
    cdef const float *of = NULL
    cdef const double *od = NULL
    cdef float *nf = NULL
    cdef double *nd = NULL
    if old is not None:
        o = <cnp.ndarray>old
        if not (cnp.PyArray_ISCARRAY_RO(o) and cnp.PyArray_ISNOTSWAPPED(o) and
                cnp.PyArray_TYPE(o) in (cnp.NPY_FLOAT32, cnp.NPY_FLOAT64)):
            o = np.ascontiguousarray(old, dtype=np.float64)
        if cnp.PyArray_TYPE(o) == cnp.NPY_FLOAT32:
            of = <const float *>cnp.PyArray_DATA(o)
        else:
            od = <const double *>cnp.PyArray_DATA(o)
    if cnp.PyArray_TYPE(new) == cnp.NPY_FLOAT32:
        nf = <float *>cnp.PyArray_DATA(new)
    else:
        nd = <double *>cnp.PyArray_DATA(new)
    for c in range(C):
        v = b[c] * om
        if of != NULL:
            v = v + <double>of[c] * momentum
        elif od != NULL:
            v = v + od[c] * momentum
        if nf != NULL:
            nf[c] = <float>v
        else:
            nd[c] = v
    return new


# ------------------------------------------------------------ output buffers

cdef PyDataMem_Handler _pool_handler
memset(_pool_handler.name, 0, sizeof(_pool_handler.name))
memcpy(_pool_handler.name, b"normdrop_output_cache", 21)
_pool_handler.version = 1
_pool_handler.allocator.ctx = NULL
_pool_handler.allocator.malloc = nd_pool_malloc
_pool_handler.allocator.calloc = nd_pool_calloc
_pool_handler.allocator.realloc = nd_pool_realloc
_pool_handler.allocator.free = nd_pool_free
# Arrays hold a reference to this capsule and free through it; the module
# keeps it (and the static struct it points to) alive for the process.
_POOL_CAPSULE = PyCapsule_New(<void *>&_pool_handler, "mem_handler", NULL)


cdef bint _default_handler(object capsule) except -1:
    """True when capsule is NumPy's default data allocator (an exception
    propagates if it is no allocator capsule at all)."""
    cdef PyDataMem_Handler *h = <PyDataMem_Handler *>PyCapsule_GetPointer(capsule, "mem_handler")
    return h.name[:17] == b"default_allocator" and h.name[17] == 0


def pooled(f, *args):
    """f(*args) with NumPy's data allocator set to the output cache (NEP 49),
    so the arrays f allocates take their memory from it and give it back when
    they are freed.  Restores the previous allocator afterwards.  Where the
    caller has installed an allocator of their own (numpy.lib's NEP 49 hook),
    that one is used instead: f(*args) as is."""
    if not _default_handler(PyDataMem_GetHandler()):
        return f(*args)
    old = PyDataMem_SetHandler(_POOL_CAPSULE)
    try:
        return f(*args)
    finally:
        PyDataMem_SetHandler(old)


def cache_set_limit(size_t limit):
    """Set the cache's byte limit (releasing cached blocks above it); returns
    the previous limit."""
    with nogil:
        limit = nd_pool_set_limit(limit)
    return limit


def cache_trim():
    """Release every cached block."""
    with nogil:
        nd_pool_trim()


def cache_info():
    """(blocks, bytes, limit, hits, misses) of the output cache."""
    cdef uint64_t info[5]
    nd_pool_info(info)
    return (info[0], info[1], info[2], info[3], info[4])


def set_stream_bytes(int64_t nbytes):
    """Outputs of at least nbytes bytes use streaming stores."""
    nd_set_stream_bytes(nbytes)


def get_stream_bytes():
    return nd_get_stream_bytes()


cdef extern from "nd_philox.h" nogil:
    void nd_philox4x32_10(const unsigned int *ctr, unsigned int k0, unsigned int k1, unsigned int *out)


def philox4x32_10(counter, key):
    """Philox4x32-10 of a 4-word counter under a 2-word key, computed by the
    C header the kernels use (for known-answer tests)."""
    cdef unsigned int c[4]
    cdef unsigned int o[4]
    for i in range(4):
        c[i] = counter[i]
    nd_philox4x32_10(c, key[0], key[1], o)
    return (o[0], o[1], o[2], o[3])
