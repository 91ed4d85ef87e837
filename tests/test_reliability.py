"""What a hostile caller can do to the arrays and caches it holds: reshape x
in place between forward and backward, edit a cache, pickle or copy it, pass
masked arrays and other ndarray subclasses, zero channels, a subnormal eps.
Every case is either the right answer or a clear error before any kernel
runs, never an out-of-bounds read."""
from __future__ import annotations

import copy
import pickle

import numpy as np
import pytest

import normdrop as nd
from normdrop._optable import OPS
from conftest import oracle


def _norm_call(name, x, seed=0):
    op = OPS[name]
    rng = np.random.default_rng(seed)
    C = op.channels(x.shape)
    return op.call_forward(x, rng.uniform(0.5, 2, C), rng.standard_normal(C),
                           op.params("train"), op.test_extra)


# ------------------------------------------------ x reshaped under the cache
@pytest.mark.parametrize("name", ["batchnorm", "layernorm"])
def test_reshaping_x_in_place_after_the_forward_changes_nothing(name):
    """The cache keeps its own view of x: `x.shape = ...` on the caller's
    array leaves the cache as the forward made it (before: the backward read
    past the per-channel arrays, then raised)."""
    x = np.random.default_rng(0).standard_normal((16, 8))
    out, cache = _norm_call(name, x)
    dout = np.random.default_rng(1).standard_normal((16, 8))
    expected = OPS[name].backward(dout, cache)
    x.shape = (8, 16)
    got = OPS[name].backward(dout, cache)
    for g, e in zip(got, expected):
        np.testing.assert_array_equal(g, e)
    with pytest.raises(ValueError, match="dout has shape"):
        OPS[name].backward(dout.reshape(8, 16), cache)


# ------------------------------------------------------------ edited caches
def test_caches_are_read_only():
    x = np.ones((6, 3))
    _, cache = nd.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    _, dcache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
    for c, attr in ((cache, "mean"), (cache, "x"), (dcache, "bits"), (dcache, "p")):
        with pytest.raises(AttributeError, match="read-only"):
            setattr(c, attr, getattr(c, attr)[:1] if hasattr(getattr(c, attr), "shape") else 0.1)
        with pytest.raises(AttributeError, match="read-only"):
            delattr(c, attr)


def test_shrunk_mask_is_an_error_not_an_out_of_bounds_read():
    """Shortening the cached mask (resize behind the cache's back): a clear
    error before the kernel (before: dropout_backward read past it and
    returned garbage)."""
    x = np.ones(1000)
    _, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 3})
    cache.bits.resize(10, refcheck=False)
    with pytest.raises(ValueError, match="mask"):
        nd.dropout_backward(x, cache)


def test_edited_statistics_are_an_error():
    x = np.random.default_rng(2).standard_normal((50, 40))
    _, cache = nd.batchnorm_forward(x, np.ones(40), np.zeros(40), {"mode": "train"})
    object.__setattr__(cache, "mean", cache.mean[:3])     # past the read-only guard
    with pytest.raises(ValueError, match="cache was changed"):
        nd.batchnorm_backward(x, cache)
    _, cache = nd.layernorm_forward(x, np.ones(40), np.zeros(40), {})
    object.__setattr__(cache, "invstd", np.ones(7))         # even past the read-only guard
    with pytest.raises(ValueError, match="invstd"):
        nd.layernorm_backward(x, cache)


def _with_geometry(cache, geom):
    from normdrop._api import _restore_cache
    values = [geom if f == "geom" else getattr(cache, f) for f in cache._fields]
    return _restore_cache(type(cache), tuple(values))


@pytest.mark.parametrize("torch_arrays", [False, True])
def test_an_edited_geometry_is_an_error(torch_arrays):
    """A cache whose geometry is not its op's for x's shape (before: groups
    that do not divide C left dx partly unwritten, uninitialised memory; a
    batchnorm cache read x as planes)."""
    from normdrop._contract import Geometry
    rng = np.random.default_rng(4)
    x = rng.standard_normal((2, 6, 3, 3))
    if torch_arrays:
        torch = pytest.importorskip("torch")
        x = torch.from_numpy(x)
        ones, zeros = torch.ones(6, dtype=x.dtype), torch.zeros(6, dtype=x.dtype)
    else:
        ones, zeros = np.ones(6), np.zeros(6)
    _, cache = nd.spatial_groupnorm_forward(x, ones, zeros, 3, {})
    # 4 groups of 6 // 4 = 1 channel: statistics of the right length (2 * 4)
    edited = _with_geometry(cache, Geometry(2, 6, 9, 4))
    object.__setattr__(edited, "mean", np.zeros(8))
    object.__setattr__(edited, "invstd", np.ones(8))
    with pytest.raises(ValueError, match="geometry"):
        nd.spatial_groupnorm_backward(np.ones((2, 6, 3, 3)) if not torch_arrays else x, edited)
    xb = rng.standard_normal((8, 6))
    _, cache = nd.batchnorm_forward(xb, np.ones(6), np.zeros(6), {"mode": "train"})
    for geom in (Geometry(4, 6, 2, 0), Geometry(8, 6, 1, 2), (8, 6, 1, 0), Geometry(8, "6", 1, 0)):
        with pytest.raises(ValueError, match="cache was changed"):
            nd.batchnorm_backward(xb, _with_geometry(cache, geom))


def test_kernels_check_what_they_read():
    """The bindings refuse arrays that do not fit the geometry, whatever the
    caller: a last line of defence below the API's checks."""
    from normdrop._cpu import _kernels as k
    x = np.ones((4, 3))
    geom = (0, 4, 3, 1, 3, 1, 1, 0)
    out = np.empty_like(x)
    with pytest.raises(ValueError, match="mean has 2 values"):
        k.normalize(x, out, geom, np.zeros(2), np.ones(3), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError, match="gamma"):
        k.norm_train_fwd(x, out, geom, np.ones(2), np.zeros(3), 1e-5)
    with pytest.raises(ValueError, match="operand has"):
        k.moments(np.ones((2, 3)), geom)
    with pytest.raises(ValueError, match="memory layout of x"):
        k.norm_bwd(np.ones((3, 4)).T, x, out, geom, np.zeros(3), np.ones(3), np.ones(3), True)
    for bad in (np.empty((3, 4)), np.empty(12), np.empty((4, 3, 1)), np.empty((4, 3), np.float32)):
        with pytest.raises(ValueError, match="memory layout of x"):   # shape, ndim, dtype
            k.norm_train_fwd(x, bad, geom, np.ones(3), np.zeros(3), 1e-5)
    with pytest.raises(ValueError, match="gamma"):                  # float32, widened in C
        k.norm_train_fwd(x, out, geom, np.ones(2, np.float32), np.zeros(3), 1e-5)
    xr = np.random.default_rng(1).standard_normal((4, 3))
    g32 = np.array([0.1, 3.7, -2.3], np.float32)
    stats = k.norm_train_fwd(xr, out, geom, g32, np.zeros(3), 1e-5)
    ref = np.empty_like(xr)
    k.norm_train_fwd(xr, ref, geom, g32.astype(np.float64), np.zeros(3), 1e-5)
    assert stats.shape == (3, 3) and np.all(out != 0)
    np.testing.assert_array_equal(out, ref)     # the float32 gamma widened exactly
    with pytest.raises(ValueError, match="packed mask"):
        k.dropout_bwd(np.ones(100), np.zeros(3, np.uint8), np.empty(100), 0.5)


# ------------------------------------------------------ pickling and copies
@pytest.mark.parametrize("name", list(OPS))
def test_caches_pickle_and_deep_copy(name):
    """Caches pickle and deep-copy (the backend and namespace kept by name),
    and the backward on a copy gives the same bits (before: "cannot pickle
    'module' object")."""
    op = OPS[name]
    rng = np.random.default_rng(4)
    x = rng.standard_normal(op.test_shape)
    dout = rng.standard_normal(op.test_shape)
    if op.kind == "dropout":
        _, cache = op.forward(x, {"p": 0.4, "mode": "train", "seed": 5})
    else:
        _, cache = _norm_call(name, x)
    expected = op.backward(dout, cache)
    for clone in (pickle.loads(pickle.dumps(cache)), copy.deepcopy(cache), copy.copy(cache)):
        got = op.backward(dout, clone)
        for g, e in zip(got if isinstance(got, tuple) else (got,),
                        expected if isinstance(expected, tuple) else (expected,)):
            np.testing.assert_array_equal(g, e)


def test_caches_of_the_reference_backend_pickle():
    xps = pytest.importorskip("array_api_strict")
    with nd.force_reference():
        x = xps.asarray(np.random.default_rng(0).standard_normal((9, 4)))
        _, cache = nd.batchnorm_forward(x, xps.ones(4), xps.zeros(4), {"mode": "train"})
        clone = pickle.loads(pickle.dumps(cache))
        a = nd.batchnorm_backward(x, cache)[0]
        b = nd.batchnorm_backward(x, clone)[0]
    np.testing.assert_array_equal(np.asarray(a), np.asarray(b))


# ----------------------------------------------------------- ndarray subclasses
def test_masked_arrays_are_refused():
    """A masked array's mask would be dropped and its masked values would
    enter the statistics: refused (before: accepted silently)."""
    x = np.ma.masked_array(np.ones((6, 3)), mask=np.zeros((6, 3), bool))
    x.mask[0, 0] = True
    bp = {"mode": "train"}
    with pytest.raises(TypeError, match="MaskedArray"):
        nd.batchnorm_forward(x, np.ones(3), np.zeros(3), bp)
    assert bp == {"mode": "train"}
    with pytest.raises(TypeError, match="MaskedArray"):
        nd.dropout_forward(x, {"p": 0.5, "mode": "train"})
    with pytest.raises(TypeError, match="gamma is a numpy.ma.MaskedArray"):
        nd.layernorm_forward(np.ones((6, 3)), np.ma.masked_array(np.ones(3)), np.zeros(3), {})
    with pytest.raises(TypeError, match="matrix"):
        nd.batchnorm_forward(np.asmatrix(np.ones((6, 3))), np.ones(3), np.zeros(3), bp)


def test_subclasses_that_override_numpy_are_refused_and_memmaps_work(tmp_path):
    class Quantity(np.ndarray):
        def __array_ufunc__(self, *args, **kwargs):
            return NotImplemented

    q = np.ones((6, 3)).view(Quantity)
    with pytest.raises(TypeError, match="overrides NumPy"):
        nd.batchnorm_forward(q, np.ones(3), np.zeros(3), {"mode": "train"})
    m = np.memmap(tmp_path / "x.dat", dtype=np.float64, mode="w+", shape=(6, 3))
    m[:] = np.arange(18.0).reshape(6, 3)
    out, _ = nd.batchnorm_forward(m, np.ones(3), np.zeros(3), {"mode": "train"})
    ref, _ = nd.batchnorm_forward(np.asarray(m).copy(), np.ones(3), np.zeros(3), {"mode": "train"})
    np.testing.assert_array_equal(np.asarray(out), ref)


# ------------------------------------------------------- zero channels, eps
@pytest.mark.parametrize("shape,name", [((4, 0), "batchnorm"), ((2, 0, 3, 3), "spatial_batchnorm"),
                                        ((3, 0), "layernorm")])
def test_zero_channels_give_empty_results_on_every_backend(backend, shape, name):
    """D = 0 (C = 0): empty outputs and gradients everywhere (before: the
    reference divided by zero)."""
    op = OPS[name]
    be = backend
    x = be.asarray(np.ones(shape))
    out, cache = op.call_forward(x, be.asarray(np.ones(0)), be.asarray(np.zeros(0)),
                                 op.params("train"))
    dx, dg, db = op.backward(be.asarray(np.ones(shape)), cache)
    assert tuple(out.shape) == shape and tuple(dx.shape) == shape
    assert tuple(dg.shape) == (0,) and tuple(db.shape) == (0,)
