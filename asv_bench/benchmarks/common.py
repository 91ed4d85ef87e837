"""Set-up shared by the benchmarks: backends, data, and the calls to time.

Every benchmark class is parametrized by ``backend``:

- ``cpu``: NumPy arrays on the C kernels;
- ``reference``: NumPy arrays on the array-API reference implementation
  (each call runs inside ``normdrop.force_reference()``);
- ``cupy``: CuPy arrays on the CUDA kernels, the stream synchronised inside
  the timed call; skipped (``NotImplementedError``, as asv expects) where
  CuPy or a GPU is missing.

Inputs, caches and warm-up are built once per process and parameter
combination (asv re-runs ``setup`` before every sample) by :func:`memo`.
"""
import numpy as np

import normdrop

BACKENDS = ["cpu", "reference", "cupy"]
HOST_BACKENDS = ["cpu", "reference"]
DTYPES = ["float32", "float64"]

_memo = {}


def memo(key, build):
    """build() for this key, computed once; only the latest key is kept, so
    the inputs of one parameter combination are freed before the next."""
    if key not in _memo:
        _memo.clear()
        _memo[key] = build()
    return _memo[key]


def shape_of(text):
    """'4096x1024' -> (4096, 1024)."""
    return tuple(int(s) for s in text.split("x"))


def _cupy():
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - any import failure skips
        raise NotImplementedError(f"CuPy is not importable ({type(exc).__name__})") from None
    try:
        usable = cupy.cuda.is_available()
    except Exception:  # noqa: BLE001
        usable = False
    if not usable:
        raise NotImplementedError("no GPU available to CuPy")
    return cupy


class Backend:
    """Arrays and calls for one backend."""

    def __init__(self, name):
        self.name = name
        self.xp = np
        self._sync = None
        if name == "cupy":
            cupy = _cupy()
            self.xp = cupy
            self._sync = cupy.cuda.get_current_stream().synchronize

    def asarray(self, a):
        return a if self.xp is np else self.xp.asarray(a)

    def call(self, fn):
        """fn as it must be timed on this backend: forced onto the reference
        implementation, or followed by a stream synchronisation."""
        if self.name == "reference":
            def forced():
                with normdrop.force_reference():
                    return fn()
            return forced
        if self._sync is not None:
            sync = self._sync

            def synced():
                out = fn()
                sync()
                return out
            return synced
        return fn


def arrays(backend, dtype, shape, layout="nchw", with_dout=True, channels=None):
    """(x, dout, gamma, beta) on the backend (dout None unless with_dout);
    x and dout in the given memory layout ('nhwc': channels-last memory
    viewed as NCHW); gamma and beta of `channels` values (default shape[1])."""
    rng = np.random.default_rng(0)
    dt = np.dtype(dtype)
    c = shape[1] if channels is None else channels
    made = shape if layout == "nchw" else (shape[0], shape[2], shape[3], c)
    x = backend.asarray(rng.standard_normal(made, dtype=dt))
    dout = backend.asarray(rng.standard_normal(made, dtype=dt)) if with_dout else None
    gamma = backend.asarray(1.0 + 0.1 * rng.standard_normal(c, dtype=dt))
    beta = backend.asarray(0.1 * rng.standard_normal(c, dtype=dt))
    if layout == "nhwc":
        x = x.transpose(0, 3, 1, 2)
        dout = None if dout is None else dout.transpose(0, 3, 1, 2)
    return x, dout, gamma, beta


def slow_reference(bench, backend, size):
    """Fewer samples for the reference backend on the large shapes (up to
    seconds a call): asv reads these attributes again after setup."""
    if backend == "reference" and size > 1_000_000:
        bench.repeat = (1, 5, 4.0)
        bench.warmup_time = 0.0
