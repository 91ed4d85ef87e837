"""CPU tensors as NumPy views through DLPack's C exchange API.

A library that publishes the API (DLPack 1.3: a ``PyCapsule`` named
``"dlpack_exchange_api"`` as the array type's ``__dlpack_c_exchange_api__``;
PyTorch does) lends its tensors to C code and takes C buffers as tensors
without the Python-level ``__dlpack__`` protocol, each in a fraction of a
microsecond.  An :class:`Exchange` makes NumPy arrays of a type's tensors
and tensors of NumPy arrays.

A view (:meth:`Exchange.view`) reads the tensor's memory (no copy) and holds
it: through the producer's owning ``DLManagedTensorVersioned``, whose
deleter runs when the last view goes, or, where the producer has the
non-owning ``dltensor_from_py_object_no_sync``, the tensor object itself
(a view read during the call only) or the tensor's storage object (a view
to be kept, where the exchange is given a way to it: PyTorch's ``set_``
swaps the storage of the very tensor object, and the storage object keeps
the old memory alive).  What no reference can prevent
-- a storage reallocated in place (``resize_`` to a larger size) --
:func:`intact` detects, before a kept view is read again.  An export
(:meth:`Exchange.export`) hands the producer a managed tensor of the
array's memory that holds the array until the tensor goes.

Only what needs no judgement is imported here: dense float32/float64
tensors on the CPU whose data the export describes as it is.  Anything
else -- another device or dtype, a producer error, a tensor with PyTorch's
negative bit (the export would drop it: the values would change sign) --
makes :meth:`Exchange.views` answer None, and the caller takes its general
route, whose checks and error messages apply.
"""
cimport numpy as cnp
from cpython.exc cimport PyErr_Clear
from cpython.pycapsule cimport PyCapsule_GetPointer, PyCapsule_IsValid
from cpython.ref cimport Py_DECREF, Py_INCREF, PyObject
from libc.stdint cimport int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.stdlib cimport free, malloc

cdef extern from "Python.h":
    int Py_IsInitialized() nogil

cnp.import_array()

# The DLPack 1.x ABI (dlpack.h, major version 1), declared for this module.
cdef extern from *:
    """
    typedef struct { uint32_t major; uint32_t minor; } ndl_version;
    typedef struct { int32_t device_type; int32_t device_id; } ndl_device;
    typedef struct { uint8_t code; uint8_t bits; uint16_t lanes; } ndl_dtype;
    typedef struct {
        void *data;
        ndl_device device;
        int32_t ndim;
        ndl_dtype dtype;
        int64_t *shape;
        int64_t *strides;
        uint64_t byte_offset;
    } ndl_tensor;
    typedef struct ndl_managed {
        ndl_version version;
        void *manager_ctx;
        void (*deleter)(struct ndl_managed *self);
        uint64_t flags;
        ndl_tensor dl_tensor;
    } ndl_managed;
    typedef int (*ndl_from_py)(void *py_object, ndl_managed **out);
    typedef int (*ndl_to_py)(ndl_managed *tensor, void **out_py_object);
    typedef int (*ndl_tensor_from_py)(void *py_object, ndl_tensor *out);
    typedef struct ndl_api_header {
        ndl_version version;
        struct ndl_api_header *prev_api;
    } ndl_api_header;
    typedef struct {
        ndl_api_header header;
        void *managed_tensor_allocator;
        ndl_from_py managed_tensor_from_py_object_no_sync;
        ndl_to_py managed_tensor_to_py_object_no_sync;
        ndl_tensor_from_py dltensor_from_py_object_no_sync;
        void *current_work_stream;
    } ndl_api;
    """
    ctypedef struct ndl_version:
        uint32_t major
        uint32_t minor
    ctypedef struct ndl_device:
        int32_t device_type
        int32_t device_id
    ctypedef struct ndl_dtype:
        uint8_t code
        uint8_t bits
        uint16_t lanes
    ctypedef struct ndl_tensor:
        void *data
        ndl_device device
        int32_t ndim
        ndl_dtype dtype
        int64_t *shape
        int64_t *strides
        uint64_t byte_offset
    ctypedef struct ndl_managed:
        ndl_version version
        void *manager_ctx
        void (*deleter)(ndl_managed *)
        uint64_t flags
        ndl_tensor dl_tensor
    ctypedef int (*ndl_from_py)(void *, ndl_managed **)
    ctypedef int (*ndl_to_py)(ndl_managed *, void **)
    ctypedef int (*ndl_tensor_from_py)(void *, ndl_tensor *)
    ctypedef struct ndl_api_header:
        ndl_version version
        ndl_api_header *prev_api
    ctypedef struct ndl_api:
        ndl_api_header header
        ndl_from_py managed_tensor_from_py_object_no_sync
        ndl_to_py managed_tensor_to_py_object_no_sync
        ndl_tensor_from_py dltensor_from_py_object_no_sync

cdef enum:
    _MAX_NDIM = 32              # more dimensions: the general route
    _KDL_CPU = 1
    _KDL_FLOAT = 2
    _FLAG_READ_ONLY = 1


cdef class _Owner:
    """The base of a view: holds one managed tensor (its deleter runs when
    the owner goes, so when the last view goes; NULL for the non-owning
    export) and the tensor's storage object (or None), which :func:`intact`
    asks."""
    cdef ndl_managed *m
    cdef object storage

    def __dealloc__(self):
        if self.m != NULL and self.m.deleter != NULL:
            self.m.deleter(self.m)
        self.m = NULL


cdef ndl_api *_find_api(object capsule) except? NULL:
    """The exchange API table of DLPack major version 1 (walking to an older
    table where the producer's is newer), or NULL."""
    cdef ndl_api_header *h
    if not PyCapsule_IsValid(capsule, "dlpack_exchange_api"):
        return NULL
    h = <ndl_api_header *>PyCapsule_GetPointer(capsule, "dlpack_exchange_api")
    while h != NULL and h.version.major > 1:
        h = h.prev_api
    if h == NULL or h.version.major != 1:
        return NULL
    return <ndl_api *>h


# An exported NumPy array: the managed tensor and its shape and strides, in
# one allocation; manager_ctx holds a reference to the array.
ctypedef struct _export:
    ndl_managed m
    int64_t shape[_MAX_NDIM]
    int64_t strides[_MAX_NDIM]


cdef void _export_deleter(ndl_managed *m) noexcept nogil:
    """The deleter of an exported array: the consumer may call it from any
    thread, with or without the GIL; after the interpreter's end the array's
    reference is left (its memory goes with the process)."""
    if m.manager_ctx != NULL and Py_IsInitialized():
        with gil:
            Py_DECREF(<object>m.manager_ctx)
    free(m)


cdef class Exchange:
    """NumPy views of one array type's CPU tensors, and NumPy arrays as
    tensors of that type (see the module docstring).

    Parameters
    ----------
    array_type : type
        The tensor type (``torch.Tensor``); its ``__dlpack_c_exchange_api__``
        is read once.  Instances of a subclass are imported where
        ``plain_type(subclass)`` says they mean what the type's own do.
    plain_type : callable
        type -> bool (``nn.Parameter``: True; a subclass that overrides the
        library's operations: False).
    storage : callable or None
        tensor -> its storage object, with ``data_ptr()`` and ``nbytes()``
        (``torch.Tensor.untyped_storage``), held by every view made to be
        kept (the default) and asked by :func:`intact`.
    fallback : callable or None
        ndarray -> tensor, for the arrays :meth:`export` cannot hand over
        (``torch.from_numpy``).
    owning : bool
        Import through the owning ``managed_tensor_from_py_object_no_sync``
        even where the producer has the non-owning call (the tests take
        both ways).

    Raises
    ------
    TypeError
        When the type publishes no exchange API of DLPack major version 1.
    """
    cdef ndl_from_py from_py
    cdef ndl_to_py to_py
    cdef ndl_tensor_from_py tensor_from_py
    cdef object array_type
    cdef object plain_type
    cdef object capsule
    cdef object storage
    cdef object fallback

    def __init__(self, array_type, plain_type, storage=None, fallback=None, owning=False):
        cdef ndl_api *api
        capsule = getattr(array_type, "__dlpack_c_exchange_api__", None)
        api = NULL if capsule is None else _find_api(capsule)
        if api == NULL or api.managed_tensor_from_py_object_no_sync == NULL or \
                api.managed_tensor_to_py_object_no_sync == NULL:
            raise TypeError(f"{array_type!r} publishes no DLPack 1.x C exchange API")
        self.from_py = api.managed_tensor_from_py_object_no_sync
        self.to_py = api.managed_tensor_to_py_object_no_sync
        self.tensor_from_py = NULL if owning else api.dltensor_from_py_object_no_sync
        self.capsule = capsule          # the table lives as long as the producer module
        self.array_type = array_type
        self.plain_type = plain_type
        self.storage = storage
        self.fallback = fallback

    cdef object _view(self, object a, bint keep):
        """a as a NumPy view, or None where it is not importable as it is;
        keep: the view holds a's storage object too."""
        cdef ndl_managed *m = NULL
        cdef ndl_tensor *t
        cdef ndl_tensor local
        cdef cnp.npy_intp dims[_MAX_NDIM]
        cdef cnp.npy_intp strides[_MAX_NDIM]
        cdef int typenum, ndim, k, flags
        cdef int64_t itemsize, step
        cdef _Owner owner = None
        cdef cnp.ndarray arr
        tp = type(a)
        if tp is not self.array_type and not (isinstance(a, self.array_type)
                                              and self.plain_type(tp)):
            return None
        if a.is_neg():                  # the export would drop the bit
            return None
        if self.tensor_from_py != NULL:
            if self.tensor_from_py(<void *>a, &local) != 0:
                PyErr_Clear()
                return None
            t = &local
        else:
            if self.from_py(<void *>a, &m) != 0:
                PyErr_Clear()
                return None
            owner = _Owner.__new__(_Owner)
            owner.m = m                     # from here the deleter runs whatever happens
            if m.version.major != 1:
                return None
            t = &m.dl_tensor
        if t.device.device_type != _KDL_CPU or t.dtype.code != _KDL_FLOAT or t.dtype.lanes != 1:
            return None
        if t.dtype.bits == 32:
            typenum = cnp.NPY_FLOAT32
        elif t.dtype.bits == 64:
            typenum = cnp.NPY_FLOAT64
        else:
            return None
        ndim = t.ndim
        if ndim < 0 or ndim > _MAX_NDIM or (ndim > 0 and t.shape == NULL):
            return None
        itemsize = t.dtype.bits // 8
        step = itemsize
        for k in range(ndim - 1, -1, -1):
            dims[k] = <cnp.npy_intp>t.shape[k]
            if dims[k] < 0:
                return None
            if t.strides != NULL:
                strides[k] = <cnp.npy_intp>(t.strides[k] * itemsize)
            else:                       # (no strides: compact, row-major)
                strides[k] = <cnp.npy_intp>step
                step *= dims[k]
        if t.data == NULL:
            for k in range(ndim):
                if dims[k] == 0:
                    break
            else:
                return None             # no data for a non-empty tensor
        # (the non-owning export carries no flags: PyTorch's tensors are writable)
        flags = 0 if m != NULL and m.flags & _FLAG_READ_ONLY else cnp.NPY_ARRAY_WRITEABLE
        arr = cnp.PyArray_New(cnp.ndarray, ndim, dims, typenum, strides,
                              <char *>t.data + t.byte_offset, <int>itemsize, flags, None)
        if keep and self.storage is not None:
            # the storage object holds the memory (not the tensor: a cache
            # keeps no caller's tensor, nor the autograd graph it may carry)
            if owner is None:
                owner = _Owner.__new__(_Owner)
            owner.storage = self.storage(a)
        # (a view read during the call only, of the non-owning export: the
        # tensor itself is its base)
        cnp.set_array_base(arr, a if owner is None else owner)
        return arr

    def view(self, a, bint keep=True):
        """a as a NumPy view (float32 or float64, a's shape and strides), or
        None where a is not a dense CPU tensor of those dtypes that the
        export describes as it is.  keep=False: the view is read only
        during the call that made it (it holds the tensor, not its storage
        object: a ``set_`` of the tensor from another thread meanwhile would
        free its memory, as under any of the producer's own operations)."""
        return self._view(a, keep)

    def views(self, arrays, Py_ssize_t keep):
        """The NumPy views of arrays (a sequence; None entries stay None), or
        None when any one is not importable (see :meth:`view`); the first
        ``keep`` are made to be kept."""
        cdef list out = []
        cdef Py_ssize_t i = 0
        for a in arrays:
            if a is None:
                out.append(None)
            else:
                v = self._view(a, i < keep)
                if v is None:
                    return None
                out.append(v)
            i += 1
        return out

    def export(self, cnp.ndarray arr):
        """arr as a tensor of the type sharing its memory, which keeps arr
        alive (float32 or float64, native byte order, writable, at most 32
        dimensions, strides whole non-negative elements); any other array,
        or one the producer refuses, through ``fallback`` (None without
        one): ``torch.from_numpy`` warns of a read-only array and refuses
        negative strides, where the exchange would not.  None stays None."""
        if arr is None:
            return None
        tensor = self._export(arr)
        if tensor is None and self.fallback is not None:
            return self.fallback(arr)
        return tensor

    cdef object _export(self, cnp.ndarray arr):
        cdef _export *e
        cdef ndl_tensor *t
        cdef int k, ndim = cnp.PyArray_NDIM(arr)
        cdef int typenum = cnp.PyArray_TYPE(arr)
        cdef Py_ssize_t itemsize = cnp.PyArray_ITEMSIZE(arr), st
        cdef void *out = NULL
        if (typenum != cnp.NPY_FLOAT32 and typenum != cnp.NPY_FLOAT64) or ndim > _MAX_NDIM or \
                not cnp.PyArray_ISNOTSWAPPED(arr) or not cnp.PyArray_ISWRITEABLE(arr):
            return None
        e = <_export *>malloc(sizeof(_export))
        if e == NULL:
            return None
        t = &e.m.dl_tensor
        for k in range(ndim):
            st = cnp.PyArray_STRIDE(arr, k)
            if st < 0 or st % itemsize:
                free(e)
                return None
            e.shape[k] = cnp.PyArray_DIM(arr, k)
            e.strides[k] = st // itemsize
        e.m.version.major = 1
        e.m.version.minor = 0
        e.m.flags = 0
        e.m.deleter = _export_deleter
        t.data = cnp.PyArray_DATA(arr)
        t.device.device_type = _KDL_CPU
        t.device.device_id = 0
        t.ndim = ndim
        t.dtype.code = _KDL_FLOAT
        t.dtype.bits = <uint8_t>(8 * itemsize)
        t.dtype.lanes = 1
        t.shape = e.shape
        t.strides = e.strides
        t.byte_offset = 0
        Py_INCREF(arr)
        e.m.manager_ctx = <void *>arr
        if self.to_py(&e.m, &out) != 0:
            # the producer failed; whether it ran the deleter is not said,
            # so the allocation and arr's reference are left
            PyErr_Clear()
            return None
        tensor = <object>out            # (the cast takes a reference of its own)
        Py_DECREF(tensor)
        return tensor


def intact(cnp.ndarray arr):
    """False where arr views an imported tensor whose storage no longer
    holds arr's memory (reallocated in place since the import: the view
    would read freed memory); True otherwise, and for arrays of any other
    origin."""
    cdef object b = cnp.get_array_base(arr)
    cdef cnp.ndarray top = arr
    cdef int k
    cdef Py_ssize_t lo, hi, d, st
    cdef _Owner owner
    while isinstance(b, cnp.ndarray):
        b = cnp.get_array_base(<cnp.ndarray>b)
    if not isinstance(b, _Owner):
        return True
    owner = <_Owner>b
    if owner.storage is None:
        return True
    lo = hi = <Py_ssize_t>cnp.PyArray_DATA(top)
    for k in range(cnp.PyArray_NDIM(top)):
        d = cnp.PyArray_DIM(top, k)
        if d == 0:
            return True                 # nothing is read
        st = cnp.PyArray_STRIDE(top, k)
        if st < 0:
            lo += (d - 1) * st
        else:
            hi += (d - 1) * st
    hi += cnp.PyArray_ITEMSIZE(top)
    start = owner.storage.data_ptr()
    return start <= lo and hi <= start + owner.storage.nbytes()
