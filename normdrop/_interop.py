"""Arrays of other libraries on the compiled kernels (DESIGN section 2,
"Arrays of other libraries"): how an array that is not a NumPy or CuPy array
reaches a backend, and how the results go back to the caller's library.

An :class:`Adapter` converts one library's arrays, without a copy, to the
backend's own arrays and back:

- PyTorch CPU tensors: DLPack's C exchange API, which PyTorch publishes as
  ``torch.Tensor.__dlpack_c_exchange_api__`` (:mod:`normdrop._cpu._dlpack`:
  the buffer exchange of ``__dlpack__`` without its Python-level per-call
  cost), for float32/float64 tensors; ``Tensor.numpy()`` /
  ``torch.from_numpy`` for the rest, and where the API is missing.  A
  tensor that requires grad is read through its data, so no result is
  attached to a graph;
- any other array that exports DLPack on the CPU (JAX, ...):
  ``np.from_dlpack`` and the library's ``from_dlpack``;
- arrays that export DLPack on a CUDA device: ``cupy.from_dlpack`` and back,
  computed on the producer's current stream where the library says which
  (PyTorch);
- arrays the compiled kernels cannot take (other devices, lazy arrays, no
  DLPack) stay on the reference implementation; PyTorch tensors there are
  detached too.

Dtypes the backend cannot carry (bfloat16, ...) are refused with the usual
dtype ``TypeError`` before any conversion.
"""
from __future__ import annotations

import contextlib
import sys
import warnings

import numpy as np

from ._validate import _dtype_name

class AccumulationWarning(RuntimeWarning):
    """normdrop's reference implementation computes in float32 because the
    array library has no float64 (JAX without ``jax_enable_x64``): the
    statistics lose the float64 accumulation of normdrop's other backends."""


_NO_STREAM = contextlib.nullcontext()     # reusable: the CPU's "stream"

_KDL_CPU, _KDL_CUDA, _KDL_CUDA_HOST, _KDL_CUDA_MANAGED = 1, 2, 3, 13


class Adapter:
    """Conversions of one library's arrays (see the module docstring).

    Attributes
    ----------
    library : str
        The array type's top-level module ("torch", "jax", ...): the adapter
        is found again from it (pickled caches keep the name only).
    kind : str
        "cpu" (to NumPy), "cuda" (to CuPy) or "reference" (no conversion).
    """

    __slots__ = ("library", "kind", "_type")

    def __init__(self, library: str, kind: str, array_type):
        self.library = library
        self.kind = kind
        self._type = array_type

    def __reduce__(self):
        return (_adapter_by_name, (self.library, self.kind))

    def owns(self, a) -> bool:
        """Whether a is an array of this adapter's library (and, for the
        compiled kernels, on their kind of device)."""
        if not isinstance(a, self._type):
            return False
        return self.kind == "reference" or _device_kind(a) == self.kind

    # -- to the backend --------------------------------------------------------
    def native(self, a, name: str, floating: bool = False):
        """a as the backend's array (a itself on the reference path).
        floating: a must be one of the float dtypes NumPy/CuPy carry (x,
        dout); else any real dtype, cast in its library first when the
        backend's library cannot carry it (a bfloat16 gamma).  None stays
        None."""
        if a is None:
            return None
        if self.kind == "reference":
            return _detached(a)
        try:
            return self._convert(a)
        except (TypeError, BufferError, RuntimeError, ValueError):
            pass
        if self.library == "torch":      # requires grad, or a conjugate/negative view
            a = _detached(a).resolve_conj().resolve_neg()
            try:
                return self._convert(a)
            except (TypeError, BufferError, RuntimeError, ValueError):
                pass
        if self.library == "torch":
            _refuse_layout(name, a)
        if floating:
            raise TypeError(f"{name} has dtype {_dtype_name(a.dtype)}; supported floating "
                            f"dtypes here: float32, float64") from None
        return self._convert(_as_float64(a))

    def _convert(self, a):
        if self.kind == "cuda":
            import cupy
            return cupy.from_dlpack(a)
        if self.library == "torch":
            return a.numpy()
        return np.from_dlpack(a)

    # -- back to the caller ------------------------------------------------------
    def wrap(self, a):
        """The backend's array a as an array of this library (zero-copy where
        the library allows it)."""
        if self.kind == "reference" or a is None:
            return a
        if self.library == "torch" and self.kind == "cpu":
            import torch
            return torch.from_numpy(a)
        return _from_dlpack(self.library)(a)

    def kept_intact(self, arrays) -> bool:
        """Whether the arrays this adapter made, kept in a cache, still have
        their memory (see :class:`_TorchCpu`; the other conversions keep
        their producer's array, which cannot lose it)."""
        return True

    def converters(self):
        """The (native, wrap) pair a Route binds (see normdrop._dispatch)."""
        return self.native, self.wrap

    def stream(self, a):
        """A context in which the CUDA kernels run on a's producer's stream
        (PyTorch's current stream on a's device); nothing on the CPU."""
        if self.kind != "cuda" or self.library != "torch":
            return _NO_STREAM
        import cupy
        import torch
        s = torch.cuda.current_stream(a.device)
        return cupy.cuda.ExternalStream(s.cuda_stream, a.device.index)


class _TorchCpu(Adapter):
    """The adapter of PyTorch CPU tensors: the conversions of
    :class:`Adapter` for them, without its generic steps (these run for
    every tensor of every call, a few times per small batchnorm)."""

    __slots__ = ("_from_numpy", "_exchange", "_intact")

    def __init__(self, array_type):
        super().__init__("torch", "cpu", array_type)
        import torch
        self._from_numpy = torch.from_numpy
        self._exchange = _exchange_for(array_type)
        if self._exchange is not None:
            from ._cpu._dlpack import intact
            self._intact = intact

    def native(self, a, name: str, floating: bool = False):
        if a is None:
            return None
        ex = self._exchange
        if ex is not None:
            v = ex.view(a)
            if v is not None:
                return v
        if a.requires_grad:
            a = a.detach()
        try:
            return a.numpy()
        except (TypeError, BufferError, RuntimeError, ValueError):
            return Adapter.native(self, a, name, floating)   # its fallbacks and errors

    def wrap(self, a):
        return None if a is None else self._from_numpy(a)

    def converters(self):
        """(native, wrap); wrap is the exchange's export where there is one
        (it passes None through and hands what it cannot export to
        torch.from_numpy)."""
        return self.native, self.wrap if self._exchange is None else self._exchange.export

    def natives(self, arrays, plain_type, keep: int):
        """The NumPy views of arrays (None entries stay None) where every
        one is a dense CPU tensor of torch.Tensor or a plain subclass
        (``plain_type(t)``) that ``Tensor.numpy()`` takes as it is (after a
        detach where it requires grad); else None, and the caller takes the
        general route, whose checks and errors apply; the first ``keep`` may
        be kept beyond the call (a cache's x and gamma), the others are read
        during it only.  The route check and
        the conversions of the common call in one loop: ``numpy()`` refuses
        other devices, layouts, conjugate and negative views and the dtypes
        NumPy lacks, so no separate device test is needed.  Float32 and
        float64 tensors go through DLPack's C exchange API where PyTorch
        publishes it (:mod:`normdrop._cpu._dlpack`: under half of
        ``numpy()``'s cost), with the same refusals."""
        ex = self._exchange
        if ex is not None:
            out = ex.views(arrays, keep)
            if out is not None:
                return out
        tensor = self._type
        out = []
        for a in arrays:
            if a is None:
                out.append(None)
                continue
            t = type(a)
            if t is not tensor and not (isinstance(a, tensor) and plain_type(t)):
                return None
            if a.requires_grad:
                a = a.detach()
            try:
                out.append(a.numpy())
            except (TypeError, BufferError, RuntimeError, ValueError):
                return None
        return out

    def kept_intact(self, arrays) -> bool:
        """Whether every array (a view this adapter made, kept in a cache)
        still has its memory: False where a tensor's storage was
        reallocated in place since (``resize_`` to a larger size)."""
        if self._exchange is None:
            return True
        intact = self._intact
        for a in arrays:
            if type(a) is np.ndarray and not intact(a):
                return False
        return True


#: Whether PyTorch CPU tensors go through DLPack's C exchange API where it
#: is there (the tests turn it off to check the other conversion).
_EXCHANGE = True


def _exchange_for(array_type):
    """The DLPack C exchange of PyTorch CPU tensors
    (normdrop._cpu._dlpack), or None where this PyTorch publishes no
    exchange API or the extension is not built: then ``Tensor.numpy()`` and
    ``torch.from_numpy`` convert."""
    if not _EXCHANGE:
        return None
    try:
        from ._cpu._dlpack import Exchange
        from ._dispatch import _plain_tensor_type
        import torch
        return Exchange(array_type, _plain_tensor_type, array_type.untyped_storage,
                        torch.from_numpy)
    except (ImportError, TypeError, AttributeError):
        return None


def _refuse_layout(name, a):
    """TypeError for a tensor that is not a dense (strided) one -- sparse,
    MKL-DNN, nested -- which no backend reads (asked only once a conversion
    has failed, so dense tensors pay nothing)."""
    import torch
    if a.layout is not torch.strided:
        raise TypeError(f"{name} is a tensor of layout {a.layout}; normdrop reads dense tensors "
                        f"only: pass {name}.to_dense()") from None
    if getattr(a, "is_nested", False):
        raise TypeError(f"{name} is a nested tensor; normdrop reads dense tensors only") from None


def _new_adapter(library: str, kind: str, array_type):
    if library == "torch" and kind == "cpu":
        return _TorchCpu(array_type)
    return Adapter(library, kind, array_type)


def _detached(a):
    if getattr(a, "requires_grad", False):
        return a.detach()
    return a


def _as_float64(a):
    import array_api_compat as aac
    xp = aac.array_namespace(a)
    return xp.astype(a, xp.float64)


def _from_dlpack(library: str):
    if library == "jax":
        import jax.numpy as jnp
        return jnp.from_dlpack
    import importlib
    mod = importlib.import_module(library)
    fn = getattr(mod, "from_dlpack", None)
    if fn is None:
        import array_api_compat as aac
        fn = aac.array_namespace(mod.asarray(0)).from_dlpack
    return fn


def _device_kind(a) -> str:
    """"cpu", "cuda" or "reference" for an array of another library."""
    if type(a).__module__.startswith("torch"):
        kind = a.device.type           # cheaper than __dlpack_device__
        return kind if kind in ("cpu", "cuda") else "reference"
    dev = getattr(a, "__dlpack_device__", None)
    if dev is None or not hasattr(a, "__dlpack__"):
        return "reference"
    try:
        kind = int(dev()[0])
    except Exception:  # noqa: BLE001 - a producer that cannot say: reference path
        return "reference"
    if kind == _KDL_CPU:
        return "cpu"
    if kind in (_KDL_CUDA, _KDL_CUDA_MANAGED):
        return "cuda"
    return "reference"


_ADAPTERS = {}


def adapter_for(a):
    """The Adapter for array a of a library other than NumPy and CuPy (kept
    per array type and device kind, so a call costs a dict lookup)."""
    t = type(a)
    kind = _device_kind(a)
    key = (t, kind)
    ad = _ADAPTERS.get(key)
    if ad is None:
        library = t.__module__.split(".")[0]
        if library == "jaxlib":
            library = "jax"
        elif _is_tensor_type(t):
            library = "torch"       # a subclass defined elsewhere (nn.Parameter-like)
        if kind == "cuda":
            try:
                import cupy  # noqa: F401
            except ImportError:
                kind = "reference"          # no CUDA backend here: the reference computes
        ad = _ADAPTERS[key] = _new_adapter(library, kind, t)
    return ad


def tensor_type():
    """torch.Tensor where torch has been imported (a tensor can exist only
    then), else None; torch is never imported here."""
    return getattr(sys.modules.get("torch"), "Tensor", None)


def _is_tensor_type(t) -> bool:
    tensor = tensor_type()
    return tensor is not None and issubclass(t, tensor)


def _adapter_by_name(library: str, kind: str):
    """The adapter of a pickled cache (its array type found again)."""
    for ad in _ADAPTERS.values():
        if ad.library == library and ad.kind == kind:
            return ad
    import importlib
    mod = importlib.import_module(library)
    if library == "jax":
        import jax.numpy as jnp
        sample = jnp.zeros(0)
    elif library == "torch":
        sample = mod.zeros(0)
    else:
        sample = mod.asarray([0.0])
    ad = _new_adapter(library, kind, type(sample))
    _ADAPTERS[(type(sample), kind)] = ad
    return ad


def _has_dtype(xp, name: str) -> bool:
    dt = getattr(xp, name, None)
    if dt is None:
        return False
    with warnings.catch_warnings():      # JAX warns that it truncates the dtype
        warnings.simplefilter("ignore")
        try:
            return xp.zeros(1, dtype=dt).dtype == dt
        except Exception:  # noqa: BLE001
            return False


def float64_available(xp) -> bool:
    """Whether the namespace really has float64 (JAX without x64 silently
    makes float32 arrays instead)."""
    return _has_dtype(xp, "float64")


def int64_available(xp) -> bool:
    """Whether the namespace really has int64 (not JAX without x64)."""
    return _has_dtype(xp, "int64")
