"""The one dispatch point: which backend computes for a set of arrays.

NumPy arrays go to the C kernels (``normdrop._cpu._backend``), CuPy arrays to
the CUDA kernels (``normdrop._cuda._backend``), and arrays of any other
array-API library to the reference implementation (``normdrop._reference``).
Each is a backend of the contract in :mod:`normdrop._contract`.  The reference backend can
be forced for NumPy inputs (tests, benchmarks) with :func:`force_reference` or
the environment variable ``NORMDROP_BACKEND=reference`` (read at import).
"""
from __future__ import annotations

import contextlib
import contextvars
import os

import numpy as np

from . import _reference
from ._validate import _type_name

_force = contextvars.ContextVar(
    "normdrop_force_reference",
    default=os.environ.get("NORMDROP_BACKEND", "").strip().lower() == "reference")

# The C extension is loaded at import, so that its OpenMP runtime is there for
# threadpoolctl limits entered before the first call.
try:
    from ._cpu import _backend as _cpu_backend
except ImportError:          # a broken build: report it when NumPy arrays come
    _cpu_backend = None
_cuda_backend = None


def _cpu():
    if _cpu_backend is None:
        from ._cpu import _backend as mod    # raises the extension's ImportError
        return mod
    return _cpu_backend


def _cuda():
    global _cuda_backend
    if _cuda_backend is None:
        from ._cuda import _backend as mod
        _cuda_backend = mod
    return _cuda_backend


@contextlib.contextmanager
def force_reference(enabled: bool = True):
    """Context manager: inside it, NumPy (and CuPy) arrays run on the reference
    implementation instead of the compiled kernels.

    Examples
    --------
    >>> with normdrop.force_reference():
    ...     out, cache = normdrop.batchnorm_forward(x, gamma, beta, bn_param)
    """
    token = _force.set(bool(enabled))
    try:
        yield
    finally:
        _force.reset(token)


def reference_forced() -> bool:
    """True where the reference backend is forced (context or environment)."""
    return _force.get()


def backend_for(named):
    """(backend module, namespace) for the arrays in ``named``, a sequence of
    ``(name, array)``.

    Raises TypeError naming the arrays involved when one is not an array, when
    they come from different libraries, or when they live on different devices.
    """
    arrays = list(named)
    if all(type(a) is np.ndarray for _, a in arrays):
        if _force.get():
            import array_api_compat.numpy as npx
            return _reference, npx
        return _cpu(), np
    import array_api_compat as aac

    for n, a in arrays:
        if not aac.is_array_api_obj(a):
            raise TypeError(f"{n} must be an array (NumPy, CuPy or another array-API "
                            f"library), got {_type_name(a)}")
    try:
        xp = aac.array_namespace(*(a for _, a in arrays))
    except TypeError:
        kinds = ", ".join(f"{n} ({_type_name(a)})" for n, a in arrays)
        raise TypeError(f"arrays from different array libraries cannot be mixed: {kinds}") from None
    dev0 = aac.device(arrays[0][1])
    for n, a in arrays[1:]:
        d = aac.device(a)
        if d != dev0:
            raise TypeError(f"arrays on different devices: {arrays[0][0]} is on {dev0}, "
                            f"{n} is on {d}")
    if aac.is_numpy_namespace(xp):
        if _force.get():
            return _reference, xp
        return _cpu(), np
    if aac.is_cupy_namespace(xp) and not _force.get():
        return _cuda(), xp
    return _reference, xp


def namespace_backend_name(xp) -> str:
    """Name of the backend that serves arrays of namespace xp (for `info`)."""
    import array_api_compat as aac
    if aac.is_numpy_namespace(xp):
        return "reference" if _force.get() else "cpu"
    if aac.is_cupy_namespace(xp):
        return "reference" if _force.get() else "cuda"
    return "reference"
