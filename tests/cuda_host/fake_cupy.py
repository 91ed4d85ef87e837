"""A NumPy-backed stand-in for the part of CuPy a RawModule backend uses.

:class:`FakeCupy` is a module-like object: ``empty``, ``zeros``, ``asarray``,
``ascontiguousarray``, ``asnumpy``, ``cuda.Device``, ``RawModule`` (whose
kernels run on the host through :mod:`launcher`) and the dtype names.  Its
arrays are :class:`ndarray`, a NumPy subclass with CuPy's ``.device`` (a
context manager) and ``.data.ptr`` (the address of the first element).

It behaves like a device, not like NumPy, where that finds bugs:

- memory from ``empty`` is poisoned (all bytes 0xFF: NaN in every float
  type), so an output element that no thread writes shows up;
- every allocation is 256-byte aligned, as CuPy's are, so kernels take
  their aligned (vector) paths, and is surrounded by guard bytes that are
  checked after every launch, so a write past either end is reported;
- kernels accept device arrays and NumPy scalars only, as CuPy's do, and
  the launcher checks each against the kernel's parameter type.
"""
from __future__ import annotations

import contextlib
import os
import types

import numpy as np

from . import launcher

ALIGN = 256          # bytes; CuPy's allocations are at least this aligned
#: Guard bytes on each side of an allocation.  ``ND_CUDA_HOST_GUARD=0`` gives
#: exact-size buffers instead (malloc's alignment, at least 16 bytes), so that
#: AddressSanitizer sees reads past the end too (README.md).
GUARD = int(os.environ.get("ND_CUDA_HOST_GUARD", "512"))
POISON = 0xFF


class Device:
    """CuPy's ``cuda.Device``: a context manager (there is one device, 0)."""

    def __init__(self, device_id=0):
        self.id = int(getattr(device_id, "id", device_id))

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __eq__(self, other):
        return isinstance(other, Device) and other.id == self.id

    def __hash__(self):
        return hash(("Device", self.id))

    def __repr__(self):
        return f"<CUDA Device {self.id} (host harness)>"


class MemoryPointer:
    """CuPy's ``MemoryPointer``: only ``ptr``."""

    def __init__(self, ptr):
        self.ptr = ptr


class ndarray(np.ndarray):
    """A "device" array: NumPy memory with CuPy's ``device`` and ``data.ptr``."""

    @property
    def device(self):
        return Device(0)

    @property
    def data(self):
        return MemoryPointer(self.ctypes.data)

    def get(self):
        """A NumPy copy (``cupy.ndarray.get``)."""
        return np.array(self.view(np.ndarray), order="K", copy=True)


class _Allocation:
    """A buffer with guard bytes around its data."""

    def __init__(self, nbytes, what):
        self.what = what
        self.nbytes = nbytes
        if GUARD:
            self.buf = np.empty(nbytes + 2 * GUARD + ALIGN, np.uint8)
            start = GUARD + (-(self.buf.ctypes.data + GUARD) % ALIGN)
        else:
            self.buf = np.empty(nbytes, np.uint8)
            start = 0
        self.lo, self.hi = start, start + nbytes
        self.pattern_lo = _pattern(self.lo)
        self.pattern_hi = _pattern(len(self.buf) - self.hi)
        self.buf[:self.lo] = self.pattern_lo
        self.buf[self.hi:] = self.pattern_hi
        self.buf[self.lo:self.hi] = POISON

    def data(self):
        return self.buf[self.lo:self.hi]

    def damage(self):
        """A description of overwritten guard bytes, or None."""
        bad_lo = np.flatnonzero(self.buf[:self.lo] != self.pattern_lo)
        bad_hi = np.flatnonzero(self.buf[self.hi:] != self.pattern_hi)
        if bad_lo.size == 0 and bad_hi.size == 0:
            return None
        parts = []
        if bad_lo.size:
            parts.append(f"{self.lo - bad_lo[0]} bytes before the start")
        if bad_hi.size:
            parts.append(f"{bad_hi[-1] + 1} bytes past the end")
        return f"{self.what}: written up to " + " and ".join(parts)


def _pattern(n):
    """Guard bytes: a position-dependent pattern (no constant a kernel would
    plausibly write)."""
    return ((np.arange(n, dtype=np.uint32) * 151 + 89) % 251).astype(np.uint8)


class FakeCupy:
    """A CuPy stand-in; one per test (it owns the allocations it checks).

    Attributes
    ----------
    reverse : bool
        Run every launch with the blocks and threads in reverse order.
    launches : list
        ``(name expression, grid, block)`` of each launch, in order.
    """

    float16, float32, float64 = np.float16, np.float32, np.float64
    int32, int64, uint8, uint64, bool_ = np.int32, np.int64, np.uint8, np.uint64, np.bool_
    ndarray = ndarray

    def __init__(self):
        self._allocations = []
        self.reverse = False
        self.launches = []
        self.cuda = types.SimpleNamespace(Device=Device)

    # ------------------------------------------------------------- memory
    def _alloc(self, shape, dtype, strides=None, order="C"):
        shape = (int(shape),) if np.isscalar(shape) else tuple(int(s) for s in shape)
        dtype = np.dtype(dtype)
        if strides is None:
            nbytes = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
        else:
            if any(s < 0 for s in strides):
                raise ValueError("negative strides are not supported")
            nbytes = 0 if 0 in shape else \
                sum((n - 1) * s for n, s in zip(shape, strides)) + dtype.itemsize
        a = _Allocation(nbytes, f"array {shape} {dtype}")
        self._allocations.append(a)
        if strides is None:
            arr = np.ndarray(shape, dtype, buffer=a.data(), order=order)
        else:
            arr = np.ndarray(shape, dtype, buffer=a.data(), strides=strides)
        return arr.view(ndarray)

    def empty(self, shape, dtype=np.float64, order="C"):
        """Uninitialized (poisoned) memory."""
        return self._alloc(shape, dtype, order=order)

    def zeros(self, shape, dtype=np.float64, order="C"):
        a = self._alloc(shape, dtype, order=order)
        a[...] = 0
        return a

    def asarray(self, a, dtype=None):
        """A device copy of ``a`` with its memory layout (strides) kept; a
        device array is returned as it is."""
        if isinstance(a, ndarray) and (dtype is None or a.dtype == np.dtype(dtype)):
            return a
        a = np.asarray(a, dtype=dtype)
        strides = a.strides if all(s >= 0 for s in a.strides) else None
        out = self._alloc(a.shape, a.dtype, strides=strides)
        out[...] = a
        return out

    def ascontiguousarray(self, a, dtype=None):
        a = self.asarray(a, dtype)
        if a.flags.c_contiguous:
            return a
        out = self._alloc(a.shape, a.dtype)
        out[...] = a
        return out

    @staticmethod
    def asnumpy(a):
        return np.array(np.asarray(a).view(np.ndarray), order="K", copy=True)

    def check_guards(self):
        """Raise AssertionError if any kernel wrote outside an allocation."""
        damage = [d for d in (a.damage() for a in self._allocations) if d]
        assert not damage, "out-of-bounds writes: " + "; ".join(damage)

    # ------------------------------------------------------------ kernels
    def RawModule(self, code, options=(), name_expressions=()):  # noqa: N802 (CuPy's name)
        """``cupy.RawModule``: ``code`` compiled for the host by the launcher."""
        return RawModule(self, code, tuple(options), tuple(name_expressions))


class RawModule:
    """``cupy.RawModule``: ``code`` and its ``name_expressions`` built for the
    host (:func:`launcher.build`); ``options`` are NVRTC's and only kept."""

    def __init__(self, cp, code, options, name_expressions):
        self._cp = cp
        self.options = options
        self.name_expressions = name_expressions
        self.host = launcher.build(code, name_expressions)

    def get_function(self, name):
        if name not in self.host.signatures:
            raise RuntimeError(f"CUDA_ERROR_NOT_FOUND: named symbol not found: {name!r} "
                               f"(not among the name expressions {self.name_expressions})")
        return RawKernel(self._cp, self.host, name)


class RawKernel:
    """A kernel of a :class:`RawModule`, called as CuPy's:
    ``kernel(grid, block, args)``."""

    def __init__(self, cp, host, name):
        self._cp, self.host, self.name = cp, host, name

    def __call__(self, grid, block, args, shared_mem=0, stream=None):
        if shared_mem:
            raise NotImplementedError("dynamic shared memory is not emulated")
        for i, a in enumerate(args):
            if isinstance(a, np.ndarray) and not isinstance(a, ndarray):
                raise TypeError(f"argument {i} of {self.name} is a host numpy.ndarray, "
                                f"not a device array")
            if not isinstance(a, (ndarray, np.generic)):
                raise TypeError(f"argument {i} of {self.name}: unsupported type "
                                f"{type(a).__name__}")
        self._cp.launches.append((self.name, grid, block))
        self.host.launch(self.name, grid, block, tuple(args), reverse=self._cp.reverse)
        self._cp.check_guards()


def loader_function(cp, loader):
    """A replacement for ``loader.function(base, dtype)`` (a kernel loader
    module with ``source``, ``name_expressions``, ``kernel_name``,
    ``module_of`` and ``COMPILE_OPTIONS``) that compiles each module with
    ``cp.RawModule`` exactly as the loader describes it."""
    modules = {}

    def function(base, dtype=None):
        module = loader.module_of(base)
        if module not in modules:
            modules[module] = cp.RawModule(code=loader.source(module),
                                           options=getattr(loader, "COMPILE_OPTIONS", ()),
                                           name_expressions=loader.name_expressions(module))
        return modules[module].get_function(loader.kernel_name(base, dtype))
    return function


@contextlib.contextmanager
def reversed_order(cp):
    """Inside: ``cp``'s launches run blocks and threads in reverse order."""
    old, cp.reverse = cp.reverse, True
    try:
        yield cp
    finally:
        cp.reverse = old
