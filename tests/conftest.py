"""The shared test matrix: backends x dtypes x layouts, and the one place
tolerances live.

A backend is one entry of BACKENDS: how to turn a NumPy array into the
backend's array (in a given memory layout), how to read it back, which dtypes
it runs, and whether it is usable here.  A new backend joins every test of
the matrix by adding one entry.
"""
from __future__ import annotations

import contextlib
import dataclasses
from typing import Callable

import numpy as np
import pytest

import normdrop

# ------------------------------------------------------------- tolerances
# Against the float64 reference (DESIGN section 4).  atol is relative to the
# largest magnitude of the expected array ("after scaling").
TOLERANCES = {
    "float64": dict(rtol=1e-10, atol=1e-12),
    "float32": dict(rtol=1e-5, atol=1e-6),
    "float16": dict(rtol=5e-3, atol=5e-3),
}
# Finite-difference gradient check (float64): cs231n's bar for batchnorm.
GRAD_REL_ERROR = 1e-8


def assert_close(actual, expected, dtype, what=""):
    """|actual - expected| <= atol * max(1, max|expected|) + rtol * |expected|."""
    a = np.asarray(actual, dtype=np.float64)
    e = np.asarray(expected, dtype=np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape} != {e.shape}"
    tol = TOLERANCES[np.dtype(dtype).name]
    scale = max(1.0, float(np.max(np.abs(e)))) if e.size else 1.0
    bound = tol["atol"] * scale + tol["rtol"] * np.abs(e)
    err = np.abs(a - e)
    bad = ~(err <= bound)
    assert not bad.any(), (f"{what}: {int(bad.sum())} of {a.size} values differ; worst "
                           f"|diff| {float(np.nanmax(err)):.3e} (tolerance {tol})")


def rel_error(x, y):
    """cs231n's relative error."""
    x = np.asarray(x, np.float64)
    y = np.asarray(y, np.float64)
    return float(np.max(np.abs(x - y) / np.maximum(1e-8, np.abs(x) + np.abs(y))))


# ----------------------------------------------------------------- layouts
def _layout(a: np.ndarray, layout: str) -> np.ndarray:
    """a (C order) re-laid in memory; the values and logical shape are kept."""
    if layout == "contiguous":
        return np.array(a, order="C")          # (ascontiguousarray makes 0-d arrays 1-d)
    if layout == "fortran":
        return np.asfortranarray(a)
    if layout == "channels_last":
        return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "noncontiguous":
        big = np.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
        view = big[..., 1::2]
        view[...] = a
        return view
    raise ValueError(layout)


LAYOUTS_2D = ("contiguous", "fortran", "noncontiguous")
LAYOUTS_4D = ("contiguous", "channels_last", "noncontiguous")


# ---------------------------------------------------------------- backends
@dataclasses.dataclass
class Backend:
    name: str
    dtypes: tuple
    layouts: bool                       # honours memory layouts
    convert: Callable                   # numpy array -> backend array
    to_numpy: Callable                  # backend array -> numpy array
    context: Callable = contextlib.nullcontext
    skip: str | None = None
    xp: object = None

    def asarray(self, a, layout="contiguous"):
        a = np.asarray(a)
        if self.layouts:
            a = _layout(a, layout)
        return self.convert(a)


def _numpy_backends():
    ident = lambda a: a  # noqa: E731
    return [
        Backend("cpu", ("float32", "float64"), True, ident, np.asarray, xp=np),
        Backend("reference-numpy", ("float32", "float64"), True, ident, np.asarray,
                context=normdrop.force_reference, xp=np),
    ]


def _strict_backend():
    try:
        import array_api_strict as xps
    except ImportError:
        return Backend("reference-strict", (), False, None, None,
                       skip="array_api_strict is not installed")
    # array_api_strict exports DLPack, so its CPU arrays would reach the C
    # kernels: the reference is forced, so that this entry keeps exercising
    # the reference implementation on a library other than NumPy.
    return Backend("reference-strict", ("float32", "float64"), False,
                   lambda a: xps.asarray(a), lambda a: np.asarray(a),
                   context=normdrop.force_reference, xp=xps)


def _cupy_backend():
    try:
        import cupy
        if not cupy.cuda.is_available():
            raise RuntimeError("cupy.cuda.is_available() is False")
    except Exception as exc:  # noqa: BLE001
        return Backend("cupy", (), True, None, None,
                       skip=f"CUDA backend not testable here: {type(exc).__name__}: {exc}")
    try:                                # the array-API namespace (cupy.astype etc. on any CuPy)
        import array_api_compat.cupy as xp
    except ImportError:
        xp = cupy
    return Backend("cupy", ("float16", "float32", "float64"), True,
                   lambda a: cupy.asarray(a, order="K") if a.flags.c_contiguous or a.flags.f_contiguous
                   else _cupy_strided(cupy, a),
                   lambda a: cupy.asnumpy(a), xp=xp)


def _cupy_strided(cupy, a):
    """A CuPy array with a's strides (channels-last / non-contiguous views)."""
    if a.ndim == 4 and a.transpose(0, 2, 3, 1).flags.c_contiguous:
        return cupy.asarray(np.ascontiguousarray(a.transpose(0, 2, 3, 1))).transpose(0, 3, 1, 2)
    big = cupy.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
    view = big[..., 1::2]
    view[...] = cupy.asarray(np.ascontiguousarray(a))
    return view


def _torch_backend():
    """PyTorch CPU tensors: on the C kernels (zero-copy), results as tensors."""
    try:
        import torch
        import array_api_compat.torch as xp
    except Exception as exc:  # noqa: BLE001 - any import failure skips
        return Backend("torch", (), True, None, None,
                       skip=f"torch is not installed (optional): {type(exc).__name__}")
    return Backend("torch", ("float32", "float64"), True, lambda a: torch.from_numpy(a),
                   lambda t: t.detach().numpy() if isinstance(t, torch.Tensor) else np.asarray(t),
                   xp=xp)


def _jax_backend():
    """JAX CPU arrays (float64 with jax_enable_x64): on the C kernels through
    DLPack, results as JAX arrays.  JAX has no memory layouts to give."""
    try:
        import jax
        jax.config.update("jax_enable_x64", True)
        import jax.numpy as jnp
    except Exception as exc:  # noqa: BLE001
        return Backend("jax", (), False, None, None,
                       skip=f"jax is not installed (optional): {type(exc).__name__}")
    return Backend("jax", ("float32", "float64"), False, lambda a: jnp.asarray(a),
                   lambda a: np.asarray(a), xp=jnp)


BACKENDS = _numpy_backends() + [_strict_backend(), _torch_backend(), _jax_backend(),
                                _cupy_backend()]
BACKEND_IDS = [b.name for b in BACKENDS]


def pytest_generate_tests(metafunc):
    """Parametrize ``backend`` (and ``backend`` x ``dtype`` over the dtypes each
    backend runs) for every test that asks for them."""
    if "backend" not in metafunc.fixturenames:
        return
    if "dtype" in metafunc.fixturenames:
        combos = [(b, d) for b in BACKENDS for d in (b.dtypes or ("any",))]
        metafunc.parametrize("backend,dtype", combos, indirect=["backend"],
                             ids=[f"{b.name}-{d}" for b, d in combos])
    else:
        metafunc.parametrize("backend", BACKENDS, indirect=True, ids=BACKEND_IDS)


@pytest.fixture
def backend(request):
    """Each backend of the matrix, its context (e.g. forced reference) entered."""
    be = request.param
    if be.skip:
        pytest.skip(be.skip)
    with be.context():
        yield be


def oracle(fn, *args, **kwargs):
    """fn run by the reference backend on NumPy arrays (the specification)."""
    with normdrop.force_reference():
        return fn(*args, **kwargs)
