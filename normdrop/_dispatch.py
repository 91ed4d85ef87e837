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

def _forced_by_environment() -> bool:
    """NORMDROP_BACKEND=reference (any case); another value is ignored with a
    warning, as the other variables' bad values are."""
    raw = os.environ.get("NORMDROP_BACKEND", "")
    value = raw.strip().lower()
    if value not in ("", "reference"):
        import warnings
        warnings.warn(f"normdrop: ignoring NORMDROP_BACKEND={raw!r} (the one value it takes is "
                      "'reference')", RuntimeWarning, stacklevel=2)
    return value == "reference"


_force = contextvars.ContextVar("normdrop_force_reference", default=_forced_by_environment())

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


def _as_is(a, name: str = "", floating: bool = False):
    return a


class Route:
    """Where one call computes and how its arrays get there and back.

    ``backend`` and ``xp`` (the backend's array namespace); ``adapter`` is
    None when the arrays are the backend's own (NumPy, CuPy, the reference's
    namespace), else a :class:`normdrop._interop.Adapter` that converts the
    caller's arrays and the results.

    ``native(a, name, floating=False)``: a (of the caller's library) as the
    backend's array; ``wrap(a)``: a result of the backend as an array of the
    caller's library.  Both pass None through, and are the adapter's own
    methods (or the identity), bound once: they run for every array of
    every call.
    """

    __slots__ = ("backend", "xp", "adapter", "native", "wrap")

    def __init__(self, backend, xp, adapter=None):
        self.backend = backend
        self.xp = xp
        self.adapter = adapter
        if adapter is None:
            self.native = self.wrap = _as_is
        else:
            self.native, self.wrap = adapter.converters()

    def accepts(self, a) -> bool:
        """Whether a comes from the library and device this route serves."""
        if self.adapter is None:
            return True
        return self.adapter.owns(a)


def _refuse_subclass(name, a):
    """TypeError for ndarray subclasses whose semantics normdrop cannot
    honour: masks (their masked values would enter the statistics), matrix
    semantics, and subclasses that override NumPy's operations (units, ...).
    Plain views such as np.memmap are fine."""
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{name} is a numpy.ma.MaskedArray: normdrop would use the masked values "
                        "too; pass an ndarray (e.g. the unmasked rows, or x.filled(value))")
    if isinstance(a, np.matrix):
        raise TypeError(f"{name} is a numpy.matrix; pass an ndarray (np.asarray({name}))")
    t = type(a)
    if t.__array_ufunc__ is not np.ndarray.__array_ufunc__ or \
            t.__array_function__ is not np.ndarray.__array_function__:
        raise TypeError(f"{name} is a {_type_name(a)}, an ndarray subclass that overrides NumPy's "
                        "operations, whose meaning normdrop cannot keep; pass an ndarray")


#: torch.Tensor subclasses already judged: type -> True where normdrop may
#: read them as plain tensors.
_TENSOR_TYPES = {}


def _plain_tensor_type(t) -> bool:
    """Whether instances of t, a torch.Tensor subclass, mean what a plain
    tensor of the same data means: t overrides neither __torch_function__
    (nn.Parameter's disabled one is no override) nor __torch_dispatch__."""
    ok = _TENSOR_TYPES.get(t)
    if ok is None:
        import torch
        tf = t.__torch_function__
        tf = getattr(tf, "__func__", tf)
        base = torch.Tensor.__torch_function__
        ok = (tf is getattr(base, "__func__", base) or tf is torch._C._disabled_torch_function_impl) \
            and getattr(t, "__torch_dispatch__", None) is getattr(torch.Tensor, "__torch_dispatch__",
                                                                  None)
        _TENSOR_TYPES[t] = ok
    return ok


def _refuse_tensor_subclass(name, a):
    """TypeError for torch.Tensor subclasses that override PyTorch's
    operations (masked tensors, tensor wrappers, ...), as for the ndarray
    subclasses of _refuse_subclass; nn.Parameter and plain subclasses are
    fine."""
    t = type(a)
    if _plain_tensor_type(t):
        return
    if t.__module__.startswith("torch.masked"):
        raise TypeError(f"{name} is a torch.masked.MaskedTensor: normdrop would use the masked "
                        "values too; pass a plain tensor (e.g. the unmasked rows)")
    raise TypeError(f"{name} is a {_type_name(a)}, a torch.Tensor subclass that overrides PyTorch's "
                    "operations (__torch_function__ or __torch_dispatch__), whose meaning normdrop "
                    f"cannot keep; pass a plain tensor ({name}.as_subclass(torch.Tensor))")


def backend_for(named):
    """The :class:`Route` for the arrays in ``named``, a sequence of
    ``(name, array)``: NumPy arrays on the C kernels, CuPy arrays on the CUDA
    kernels, arrays of other libraries that export DLPack on the CPU (on a
    CUDA device) on the C (CUDA) kernels through an adapter, anything else
    on the reference implementation.  With no arrays, NumPy's route.

    Raises TypeError naming the arrays involved when one is not an array, when
    they come from different libraries, or when they live on different devices.
    """
    arrays = list(named)
    for _, a in arrays:
        if type(a) is not np.ndarray:
            break
    else:                                   # NumPy arrays only (the common case)
        if _force.get():
            import array_api_compat.numpy as npx
            return Route(_reference, npx)
        return _numpy_route()
    torch_cpu = _torch_cpu
    if torch_cpu is not None and arrays and not _force.get():
        tensor = torch_cpu.adapter._type
        for _, a in arrays:
            if not isinstance(a, tensor) or not a.is_cpu or \
                    (type(a) is not tensor and not _plain_tensor_type(type(a))):
                break
        else:       # PyTorch CPU tensors only: the C kernels (what the steps below find)
            return torch_cpu
    from ._interop import tensor_type
    tensor = tensor_type()
    for n, a in arrays:
        if isinstance(a, np.ndarray) and type(a) is not np.ndarray:
            _refuse_subclass(n, a)
        elif tensor is not None and isinstance(a, tensor) and type(a) is not tensor:
            _refuse_tensor_subclass(n, a)
    import array_api_compat as aac

    t_first = type(arrays[0][1])
    if not (t_first.__module__.startswith("torch") and all(type(a) is t_first
                                                           for _, a in arrays)):
        for n, a in arrays:
            if not aac.is_array_api_obj(a):
                raise TypeError(f"{n} must be an array (NumPy, CuPy or another array-API "
                                f"library), got {_type_name(a)}")
    first = arrays[0][1]
    t0 = type(first)
    if t0.__module__.startswith("torch") and all(type(a) is t0 for _, a in arrays):
        # PyTorch tensors of one type: the fast path (no namespace needed yet)
        dev = first.device
        for n, a in arrays[1:]:
            if a.device != dev:
                raise TypeError(f"arrays on different devices: {arrays[0][0]} is on {dev}, "
                                f"{n} is on {a.device}")
        from ._interop import adapter_for
        ad = adapter_for(first)
        if not _force.get() and ad.kind == "cpu":
            route = Route(_cpu(), np, ad)
            if t0.__name__ == "Tensor" and t0.__module__ == "torch":
                _remember_torch_cpu(route)
            return route
        xp = None
    else:
        try:
            xp = aac.array_namespace(*(a for _, a in arrays))
        except TypeError:
            kinds = ", ".join(f"{n} ({_type_name(a)})" for n, a in arrays)
            raise TypeError(f"arrays from different array libraries cannot be mixed: {kinds}") \
                from None
        if aac.is_numpy_namespace(xp):
            if _force.get():
                return Route(_reference, xp)
            return _numpy_route()
        if aac.is_cupy_namespace(xp):
            _same_device(arrays, aac)
            return Route(_reference if _force.get() else _cuda(), xp)
    _same_device(arrays, aac)
    from ._interop import adapter_for
    ad = adapter_for(first)
    if _force.get() or ad.kind == "reference":
        from ._interop import Adapter
        ref = Adapter(ad.library, "reference", t0)
        return Route(_reference, xp if xp is not None else aac.array_namespace(first), ref)
    if ad.kind == "cpu":
        return Route(_cpu(), np, ad)
    import cupy
    return Route(_cuda(), cupy, ad)


_numpy = None


def _numpy_route():
    """The route of NumPy arrays (made once: routes are not changed)."""
    global _numpy
    if _numpy is None:
        _numpy = Route(_cpu(), np)
    return _numpy


#: The route of PyTorch CPU tensors, kept once torch.Tensor has been seen
#: (torch is imported by then): a tensor or its subclass (nn.Parameter)
#: on the CPU takes it without the generic checks.
_torch_cpu = None


def _remember_torch_cpu(route):
    global _torch_cpu
    _torch_cpu = route


def _same_device(arrays, aac):
    dev0 = aac.device(arrays[0][1])
    for n, a in arrays[1:]:
        d = aac.device(a)
        if d != dev0:
            raise TypeError(f"arrays on different devices: {arrays[0][0]} is on {dev0}, "
                            f"{n} is on {d}")


def backend_by_name(name: str):
    """The backend module called ``name`` (for unpickled caches)."""
    if name == "cpu":
        return _cpu()
    if name == "cuda":
        return _cuda()
    if name == "reference":
        return _reference
    raise ValueError(f"no normdrop backend named {name!r}")


def namespace_backend_name(xp) -> str:
    """Name of the backend that serves arrays of namespace xp (for `info`)."""
    import array_api_compat as aac
    if aac.is_numpy_namespace(xp):
        return "reference" if _force.get() else "cpu"
    if aac.is_cupy_namespace(xp):
        return "reference" if _force.get() else "cuda"
    return "reference"
