# cython: language_level=3
"""The output-buffer cache (``src_c/nd_pool.c``) as NumPy's data allocator
(NEP 49), and its controls.  See ``normdrop._memory`` for the policy."""
cimport numpy as cnp
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_New
from libc.stdint cimport uint64_t, uint8_t
from libc.string cimport memcpy, memset

from normdrop._cpu._nd cimport (nd_pool_calloc, nd_pool_free, nd_pool_hold, nd_pool_info,
                                nd_pool_init, nd_pool_malloc, nd_pool_realloc,
                                nd_pool_set_hugepage, nd_pool_set_limit, nd_pool_trim)


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

cnp.import_array()

# The fork handlers (nd_pool_init): without them, a process forked while
# another thread held the cache's lock would spin forever on its first
# large output.
if nd_pool_init() != 0:
    import warnings
    warnings.warn("normdrop: pthread_atfork failed; a process forked while another thread "
                  "trims the output cache may hang", RuntimeWarning)


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


def cache_set_hugepage(bint on):
    """Whether new blocks of 4 MiB or more ask for transparent huge pages;
    returns the previous setting (True or False), or None where this build
    cannot ask (not Linux)."""
    cdef int old = nd_pool_set_hugepage(on)
    return None if old < 0 else bool(old)


def cache_trim():
    """Release every cached block."""
    with nogil:
        nd_pool_trim()


def _hold_lock(double seconds):
    """For tests: hold the cache's lock for `seconds`, without the GIL (as
    cache_trim and cache_set_limit hold it, briefly)."""
    with nogil:
        nd_pool_hold(seconds)


def cache_info():
    """(blocks, bytes, limit, hits, misses) of the output cache."""
    cdef uint64_t info[5]
    nd_pool_info(info)
    return (info[0], info[1], info[2], info[3], info[4])
