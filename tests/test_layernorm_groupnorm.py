"""Layernorm and spatial groupnorm on every backend of the matrix: the cs231n
notebook's checks, against the reference (and the reference against the
cs231n NumPy code), by finite differences, extreme data, every bad input,
and what their caches hold."""
from __future__ import annotations

import copy
import tracemalloc

import numpy as np
import pytest

import normdrop as nd
from normdrop import _bench_seed
from normdrop._optable import OPS
from conftest import assert_close, oracle, rel_error

LN, GN = OPS["layernorm"], OPS["spatial_groupnorm"]


def _gn_case(shape=(4, 6, 5, 7), G=3, dtype="float64", seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    C = shape[1]
    return x, rng.uniform(0.5, 2, (1, C, 1, 1)), rng.standard_normal((1, C, 1, 1)), \
        rng.standard_normal(shape).astype(dtype)


def _ln_case(shape=(12, 37), dtype="float64", seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    D = shape[-1]
    return x, rng.uniform(0.5, 2, D), rng.standard_normal(D), \
        rng.standard_normal(shape).astype(dtype)


def _oracle_dtype(dtype):
    return "float32" if dtype == "float16" else dtype


# ------------------------------------------------- the cs231n notebook cells
def _eval_numerical_gradient_array(f, x, df, h=1e-5):
    """cs231n's gradient_check.eval_numerical_gradient_array, as written:
    x is modified in place and restored."""
    grad = np.zeros_like(x)
    it = np.nditer(x, flags=["multi_index"], op_flags=["readwrite"])
    while not it.finished:
        ix = it.multi_index
        oldval = x[ix]
        x[ix] = oldval + h
        pos = f(x).copy()
        x[ix] = oldval - h
        neg = f(x).copy()
        x[ix] = oldval
        grad[ix] = np.sum((pos - neg) * df) / (2 * h)
        it.iternext()
    return grad


def test_cs231n_layernorm_means_and_stds(backend):
    """The notebook's cell, with its data (np.random.seed(231)): a two-layer
    net's activations; after layernorm each row has mean beta and std gamma."""
    if "float64" not in backend.dtypes:
        pytest.skip("needs float64")
    be = backend
    rs = np.random.RandomState(231)
    N, D1, D2, D3 = 4, 50, 60, 3
    X = rs.randn(N, D1)
    W1 = rs.randn(D1, D2)
    W2 = rs.randn(D2, D3)
    a = np.maximum(0, X.dot(W1)).dot(W2)
    for g, b in ((np.ones(D3), np.zeros(D3)), (np.asarray([3, 3, 3]), np.asarray([5, 5, 5]))):
        out, _ = nd.layernorm_forward(be.asarray(a), be.asarray(g), be.asarray(b),
                                      {"mode": "train"})
        o = be.to_numpy(out)
        np.testing.assert_allclose(o.mean(axis=1), b[0], atol=1e-7)
        np.testing.assert_allclose(o.std(axis=1), g[0], rtol=1e-4)   # eps shrinks stds a bit


def test_cs231n_layernorm_gradient_check(backend):
    """The notebook's check, with its data and its numerical gradient:
    relative errors of dx, dgamma, dbeta <= 1e-8."""
    if "float64" not in backend.dtypes:
        pytest.skip("needs float64")
    be = backend
    rs = np.random.RandomState(231)
    N, D = 4, 5
    x = 5 * rs.randn(N, D) + 12
    gamma = rs.randn(D)
    beta = rs.randn(D)
    dout = rs.randn(N, D)
    ln_param = {}

    def f(a_x, a_g, a_b):
        return be.to_numpy(nd.layernorm_forward(be.asarray(a_x), be.asarray(a_g),
                                                be.asarray(a_b), ln_param)[0])

    dx_num = _eval_numerical_gradient_array(lambda a: f(a, gamma, beta), x, dout)
    da_num = _eval_numerical_gradient_array(lambda a: f(x, a, beta), gamma.copy(), dout)
    db_num = _eval_numerical_gradient_array(lambda b: f(x, gamma, b), beta.copy(), dout)
    _, cache = nd.layernorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta), ln_param)
    dx, dgamma, dbeta = (be.to_numpy(v) for v in nd.layernorm_backward(be.asarray(dout), cache))
    assert rel_error(dx_num, dx) <= 1e-8
    assert rel_error(da_num, dgamma) <= 1e-8
    assert rel_error(db_num, dbeta) <= 1e-8
    assert ln_param == {}


def test_cs231n_groupnorm_means_and_stds(backend):
    """The notebook's cell, with its data: per (sample, group) mean 0, std 1."""
    if "float64" not in backend.dtypes:
        pytest.skip("needs float64")
    be = backend
    rs = np.random.RandomState(231)
    N, C, H, W = 2, 6, 4, 5
    G = 2
    x = 4 * rs.randn(N, C, H, W) + 10
    gamma, beta = np.ones((1, C, 1, 1)), np.zeros((1, C, 1, 1))
    out, _ = nd.spatial_groupnorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta),
                                          G, {"mode": "train"})
    o = be.to_numpy(out).reshape((N * G, -1))
    np.testing.assert_allclose(o.mean(axis=1), 0.0, atol=1e-7)
    np.testing.assert_allclose(o.std(axis=1), 1.0, rtol=1e-4)


def test_cs231n_groupnorm_gradient_check(backend):
    """The notebook's check, with its data and its lambdas: fg and fb ignore
    their argument and read gamma and beta, which the numerical gradient
    changes in place, so each call must read them afresh.  Relative errors
    <= 1e-7."""
    if "float64" not in backend.dtypes:
        pytest.skip("needs float64")
    be = backend
    rs = np.random.RandomState(231)
    N, C, H, W = 2, 6, 4, 5
    G = 2
    x = 5 * rs.randn(N, C, H, W) + 12
    gamma = rs.randn(1, C, 1, 1)
    beta = rs.randn(1, C, 1, 1)
    dout = rs.randn(N, C, H, W)
    gn_param = {}

    def fwd(a_x):
        return be.to_numpy(nd.spatial_groupnorm_forward(be.asarray(a_x), be.asarray(gamma),
                                                        be.asarray(beta), G, gn_param)[0])

    dx_num = _eval_numerical_gradient_array(fwd, x, dout)
    da_num = _eval_numerical_gradient_array(lambda a: fwd(x), gamma, dout)
    db_num = _eval_numerical_gradient_array(lambda b: fwd(x), beta, dout)
    _, cache = nd.spatial_groupnorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta),
                                            G, gn_param)
    dx, dgamma, dbeta = (be.to_numpy(v)
                         for v in nd.spatial_groupnorm_backward(be.asarray(dout), cache))
    assert dgamma.shape == (1, C, 1, 1) and dbeta.shape == (1, C, 1, 1)
    assert rel_error(dx_num, dx) <= 1e-7
    assert rel_error(da_num, dgamma) <= 1e-7
    assert rel_error(db_num, dbeta) <= 1e-7


# ------------------------------------------------------ against the reference
CASES = [("layernorm", lay) for lay in LN.layouts] + [("spatial_groupnorm", lay)
                                                     for lay in GN.layouts]


@pytest.mark.parametrize("name,layout", CASES, ids=[f"{n}-{lay}" for n, lay in CASES])
def test_forward_backward_match_reference(backend, dtype, name, layout):
    op = OPS[name]
    be = backend
    if name == "layernorm":
        x, gamma, beta, dout = _ln_case(op.test_shape, dtype)
        G = None
    else:
        x, gamma, beta, dout = _gn_case(op.test_shape, op.test_extra, dtype)
        G = op.test_extra
    od = _oracle_dtype(dtype)
    param = {"eps": 1e-5}
    out, cache = op.call_forward(be.asarray(x, layout), be.asarray(gamma), be.asarray(beta),
                                 param, G)
    eout, ecache = oracle(op.call_forward, x.astype(od), gamma, beta, {"eps": 1e-5}, G)
    assert be.to_numpy(out).dtype == np.dtype(dtype)
    assert_close(be.to_numpy(out), eout, dtype, "out")
    if be.xp is np and layout == "channels_last":
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous
    dx, dg, db = op.backward(be.asarray(dout, layout), cache)
    edx, edg, edb = oracle(op.backward, dout.astype(od), ecache)
    assert_close(be.to_numpy(dx), edx, dtype, "dx")
    assert_close(be.to_numpy(dg), edg, dtype, "dgamma")
    assert_close(be.to_numpy(db), edb, dtype, "dbeta")
    assert tuple(dg.shape) == tuple(np.shape(gamma))
    assert param == {"eps": 1e-5}


def test_reference_matches_the_cs231n_code():
    """The reference (the specification) against the cs231n-style NumPy code."""
    x, gamma, beta, dout = _ln_case((9, 13), seed=4)
    out, cache = oracle(nd.layernorm_forward, x, gamma, beta, {})
    sout, scache = _bench_seed.layernorm_forward(x, gamma, beta, {})
    np.testing.assert_allclose(out, sout, rtol=1e-12, atol=1e-12)
    for a, b in zip(oracle(nd.layernorm_backward, dout, cache),
                    _bench_seed.layernorm_backward(dout, scache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)
    x, gamma, beta, dout = _gn_case((3, 8, 4, 5), 4, seed=5)
    out, cache = oracle(nd.spatial_groupnorm_forward, x, gamma, beta, 4, {})
    sout, scache = _bench_seed.spatial_groupnorm_forward(x, gamma, beta, 4, {})
    np.testing.assert_allclose(out, sout, rtol=1e-12, atol=1e-12)
    for a, b in zip(oracle(nd.spatial_groupnorm_backward, dout, cache),
                    _bench_seed.spatial_groupnorm_backward(dout, scache)):
        np.testing.assert_allclose(a, b, rtol=1e-10, atol=1e-11)


@pytest.mark.parametrize("shape", [(3, 7, 64), (2, 1, 5), (1, 1), (5, 1), (6, 70000), (2, 2, 3),
                                   (7, 1030), (11, 600), (2, 5, 768)])
def test_layernorm_shapes_cpu(shape):
    """(..., D) inputs, a single feature, rows longer than a statistics unit,
    and rows the backward prefetches ahead of (2-16 KiB, an odd row count,
    vector tails)."""
    for dtype in ("float32", "float64"):
        x, gamma, beta, dout = _ln_case(shape, dtype, seed=sum(shape))
        out, cache = nd.layernorm_forward(x, gamma, beta, {})
        eout, ecache = oracle(nd.layernorm_forward, x, gamma, beta, {})
        assert_close(out, eout, dtype, f"{shape} out")
        for g, e in zip(nd.layernorm_backward(dout, cache), oracle(nd.layernorm_backward, dout,
                                                                    ecache)):
            assert_close(g, e, dtype, f"{shape} backward")


@pytest.mark.parametrize("shape,G", [((2, 4, 1, 1), 2), ((3, 6, 1, 7), 6), ((1, 8, 180, 200), 1),
                                     ((2, 32, 3, 3), 32), ((5, 3, 2, 2), 1), ((3, 16, 7, 9), 4)])
def test_groupnorm_shapes_cpu(shape, G):
    from conftest import _layout
    for dtype in ("float32", "float64"):
        for layout in GN.layouts:
            x, gamma, beta, dout = _gn_case(shape, G, dtype, seed=sum(shape))
            out, cache = nd.spatial_groupnorm_forward(_layout(x, layout), gamma, beta, G, {})
            eout, ecache = oracle(nd.spatial_groupnorm_forward, x, gamma, beta, G, {})
            assert_close(out, eout, dtype, f"{shape} {layout} out")
            for g, e in zip(nd.spatial_groupnorm_backward(_layout(dout, layout), cache),
                            oracle(nd.spatial_groupnorm_backward, dout, ecache)):
                assert_close(g, e, dtype, f"{shape} {layout} backward")


# ------------------------------------------------------------- extreme data
def test_float32_large_mean_small_std(backend):
    """float32 data with mean 1e4 and std 1e-2 normalizes to unit variance."""
    if "float32" not in backend.dtypes:
        pytest.skip("needs float32")
    be = backend
    rng = np.random.default_rng(3)
    x = (1e4 + 1e-2 * rng.standard_normal((64, 500))).astype(np.float32)
    out, _ = nd.layernorm_forward(be.asarray(x), be.asarray(np.ones(500)),
                                  be.asarray(np.zeros(500)), {"eps": 1e-12})
    o = be.to_numpy(out).astype(np.float64)
    np.testing.assert_allclose(o.var(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(o.mean(axis=1), 0.0, atol=1e-3)
    x = (1e4 + 1e-2 * rng.standard_normal((8, 6, 10, 25))).astype(np.float32)
    out, _ = nd.spatial_groupnorm_forward(be.asarray(x), be.asarray(np.ones(6)),
                                          be.asarray(np.zeros(6)), 3, {"eps": 1e-12})
    o = be.to_numpy(out).astype(np.float64).reshape(8 * 3, -1)
    np.testing.assert_allclose(o.var(axis=1), 1.0, atol=1e-3)
    np.testing.assert_allclose(o.mean(axis=1), 0.0, atol=1e-3)


@pytest.mark.filterwarnings("ignore:invalid value:RuntimeWarning")
def test_nan_stays_in_its_row_or_group(backend):
    be = backend
    x, gamma, beta, dout = _ln_case((6, 9))
    x[2, 4] = np.nan
    out, cache = nd.layernorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta), {})
    o = be.to_numpy(out)
    assert np.isnan(o[2]).all() and np.isfinite(np.delete(o, 2, axis=0)).all()
    dx = be.to_numpy(nd.layernorm_backward(be.asarray(dout), cache)[0])
    assert np.isnan(dx[2]).all() and np.isfinite(np.delete(dx, 2, axis=0)).all()
    x, gamma, beta, dout = _gn_case((3, 6, 4, 5), 3)
    x[1, 3, 2, 2] = np.inf
    out, cache = nd.spatial_groupnorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta),
                                              3, {})
    o = be.to_numpy(out).reshape(3, 3, -1)
    bad = np.zeros((3, 3), bool)
    bad[1, 1] = True                          # sample 1, group of channels 2 and 3
    assert np.isnan(o[bad]).all() and np.isfinite(o[~bad]).all()


# ----------------------------------------------------------------- bad input
def _untouched(exc, match, fn, *args):
    param = args[-1]
    snap = copy.deepcopy(param)
    with pytest.raises(exc, match=match):
        fn(*args)
    assert param == snap


@pytest.mark.parametrize("G,exc,match", [
    (True, TypeError, "G must be an int"), (2.0, TypeError, "G must be an int"),
    ("2", TypeError, "G must be an int"), (None, TypeError, "G must be an int"),
    (0, ValueError, "C = 6 and G = 0"), (-3, ValueError, "C = 6 and G = -3"),
    (4, ValueError, "C = 6 and G = 4"), (12, ValueError, "C = 6 and G = 12")])
def test_bad_group_count(backend, G, exc, match):
    be = backend
    x, gamma, beta, _ = _gn_case((2, 6, 3, 3), 3)
    _untouched(exc, match, nd.spatial_groupnorm_forward, be.asarray(x), be.asarray(gamma),
               be.asarray(beta), G, {"eps": 1e-5})


def test_numpy_integer_group_count_is_accepted():
    x, gamma, beta, _ = _gn_case((2, 6, 3, 3), 3)
    a, _ = nd.spatial_groupnorm_forward(x, gamma, beta, np.int64(3), {})
    b, _ = nd.spatial_groupnorm_forward(x, gamma, beta, 3, {})
    np.testing.assert_array_equal(a, b)


def test_bad_inputs_layernorm_and_groupnorm(backend):
    be = backend
    x, gamma, beta, _ = _ln_case((4, 5))
    xb, gb, bb = be.asarray(x), be.asarray(gamma), be.asarray(beta)
    ints = be.asarray(np.ones((4, 5), dtype="int64"))
    _untouched(TypeError, "dtype int64", nd.layernorm_forward, ints, gb, bb, {})
    _untouched(ValueError, r"\(N, D\) or \(\.\.\., D\), got shape \(\)",
               nd.layernorm_forward, be.asarray(np.asarray(1.0)), gb, bb, {})
    _untouched(ValueError, r"gamma must have shape \(5,\) or \(1, 5\)",
               nd.layernorm_forward, xb, be.asarray(np.ones(4)), bb, {})
    _untouched(ValueError, "beta must have shape", nd.layernorm_forward, xb, gb,
               be.asarray(np.ones((5, 1))), {})
    for eps, exc in ((0.0, ValueError), (-1.0, ValueError), ("x", TypeError)):
        _untouched(exc, r"ln_param\['eps'\]", nd.layernorm_forward, xb, gb, bb, {"eps": eps})
    with pytest.raises(TypeError, match="ln_param must be a dict"):
        nd.layernorm_forward(xb, gb, bb, None)
    x4, g4, b4, _ = _gn_case((2, 6, 3, 3), 3)
    x4b, g4b, b4b = be.asarray(x4), be.asarray(g4), be.asarray(b4)
    _untouched(ValueError, r"\(N, C, H, W\), got shape \(4, 5\)", nd.spatial_groupnorm_forward,
               xb, gb, bb, 1, {})
    _untouched(ValueError, "gamma must have shape", nd.spatial_groupnorm_forward, x4b,
               be.asarray(np.ones((1, 5, 1, 1))), b4b, 3, {})
    _untouched(ValueError, r"gn_param\['eps'\]", nd.spatial_groupnorm_forward, x4b, g4b, b4b, 3,
               {"eps": 0})
    # backward: dout shape, caches of other ops
    _, lcache = nd.layernorm_forward(xb, gb, bb, {})
    _, gcache = nd.spatial_groupnorm_forward(x4b, g4b, b4b, 3, {})
    _, bcache = nd.batchnorm_forward(xb, gb, bb, {"mode": "train"})
    with pytest.raises(ValueError, match=r"dout has shape \(4, 6\)"):
        nd.layernorm_backward(be.asarray(np.ones((4, 6))), lcache)
    with pytest.raises(TypeError, match="layernorm_forward"):
        nd.layernorm_backward(be.asarray(np.ones((4, 5))), bcache)
    with pytest.raises(TypeError, match="spatial_groupnorm_forward"):
        nd.spatial_groupnorm_backward(be.asarray(np.ones((4, 5))), lcache)
    with pytest.raises(TypeError, match="batchnorm_forward"):
        nd.batchnorm_backward(be.asarray(np.ones((2, 6, 3, 3))), gcache)


def test_mode_is_optional_and_ignored():
    x, gamma, beta, _ = _ln_case((5, 4))
    ref, _ = nd.layernorm_forward(x, gamma, beta, {})
    for param in ({"mode": "train"}, {"mode": "test"}, {"mode": "anything"}):
        out, _ = nd.layernorm_forward(x, gamma, beta, param)
        np.testing.assert_array_equal(out, ref)
    x4, g4, b4, _ = _gn_case((2, 4, 3, 3), 2)
    a, _ = nd.spatial_groupnorm_forward(x4, g4, b4, 2, {"mode": "test"})
    b, _ = nd.spatial_groupnorm_forward(x4, g4, b4, 2, {})
    np.testing.assert_array_equal(a, b)


# --------------------------------------------------------------- memory
def test_caches_hold_x_gamma_and_per_group_statistics_only(backend):
    be = backend
    from array_api_compat import is_array_api_obj
    x, gamma, beta, _ = _ln_case((300, 40))
    xb = be.asarray(x)
    _, cache = nd.layernorm_forward(xb, be.asarray(gamma), be.asarray(beta), {})
    arrays = [getattr(cache, s) for s in cache.__slots__ if is_array_api_obj(getattr(cache, s))]
    assert [tuple(a.shape) for a in arrays if a is not cache.x] == [(40,), (300,), (300,)]
    x4, g4, b4, _ = _gn_case((20, 6, 5, 5), 3)
    _, cache = nd.spatial_groupnorm_forward(be.asarray(x4), be.asarray(g4), be.asarray(b4), 3, {})
    arrays = [getattr(cache, s) for s in cache.__slots__ if is_array_api_obj(getattr(cache, s))]
    assert sorted(tuple(a.shape) for a in arrays if a is not cache.x) == [(6,), (60,), (60,)]


@pytest.mark.parametrize("name", ["layernorm", "spatial_groupnorm"])
def test_forward_and_backward_allocate_outputs_and_O_groups_only(name):
    op = OPS[name]
    if name == "layernorm":
        x, gamma, beta, dout = _ln_case((4096, 256), "float32")
        G = None
    else:
        x, gamma, beta, dout = _gn_case((32, 32, 16, 16), 8, "float32")
        G = 8
    op.call_forward(x, gamma, beta, {}, G)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out, cache = op.call_forward(x, gamma, beta, {}, G)
        fwd_peak = tracemalloc.get_traced_memory()[1] - base
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        dx, _, _ = op.backward(dout, cache)
        bwd_peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # beyond the output: the per-group statistics, dgamma/dbeta, and in the
    # backward the kernels' scratch (3 c doubles per block of samples, at
    # most 1M doubles in all, and 2 per group): 266 KB here
    assert out.nbytes <= fwd_peak < out.nbytes + 200_000, fwd_peak
    assert dx.nbytes <= bwd_peak < dx.nbytes + 600_000, bwd_peak
