"""Batchnorm and spatial batchnorm on every backend of the matrix, against the
reference on NumPy float64/float32 (the specification), by finite
differences, and by the checks the cs231n notebooks print."""
from __future__ import annotations

import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normdrop as nd
from conftest import (GRAD_REL_ERROR, LAYOUTS_2D, LAYOUTS_4D, assert_close, oracle,
                      rel_error)

from normdrop._optable import NORM_OPS

# The ops with running statistics, from the op table: (forward, backward,
# the matrix's shape, its layouts).
OPS = {name: (op.forward, op.backward, op.test_shape, op.layouts)
       for name, op in NORM_OPS.items() if op.running}
CASES = [(op, layout) for op, v in OPS.items() for layout in v[3]]
CASE_IDS = [f"{op}-{layout}" for op, layout in CASES]


def _data(shape, dtype, seed=0, loc=3.0, scale=2.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * scale + loc).astype(dtype)
    C = shape[1]
    gamma = rng.uniform(0.5, 2.0, C)
    beta = rng.standard_normal(C)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def _oracle_dtype(dtype):
    """The dtype the reference runs on NumPy for a backend's dtype."""
    return "float32" if dtype == "float16" else dtype


def _check_layout(backend, out, x, layout):
    """Outputs keep channels-last and Fortran memory layouts (NumPy only)."""
    if backend.xp is not np:
        return
    if layout == "channels_last":
        assert out.transpose(0, 2, 3, 1).flags.c_contiguous
    elif layout == "fortran":
        assert out.flags.f_contiguous
    else:
        assert out.flags.c_contiguous


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("op,layout", CASES, ids=CASE_IDS)
def test_forward_backward_match_reference(backend, dtype, op, layout, mode):
    fwd, bwd, shape, _ = OPS[op]
    x, gamma, beta, dout = _data(shape, dtype)
    C = shape[1]
    rng = np.random.default_rng(1)
    rm = rng.standard_normal(C)
    rv = rng.uniform(0.5, 3.0, C)
    be = backend
    bp = {"mode": mode, "eps": 1e-5, "momentum": 0.8}
    bp_ref = dict(bp)
    if mode == "test":
        bp.update(running_mean=be.asarray(rm.astype(dtype)), running_var=be.asarray(rv.astype(dtype)))
        bp_ref.update(running_mean=rm.astype(dtype), running_var=rv.astype(dtype))
    xb = be.asarray(x, layout)
    out, cache = fwd(xb, be.asarray(gamma), be.asarray(beta), bp)
    od = _oracle_dtype(dtype)
    x_ref = x.astype(od)
    exp_out, exp_cache = oracle(fwd, x_ref, gamma, beta, bp_ref)
    assert be.to_numpy(out).dtype == np.dtype(dtype)
    assert_close(be.to_numpy(out), exp_out, dtype, "out")
    _check_layout(be, out, xb, layout)
    if mode == "train":
        for k in ("running_mean", "running_var"):
            got = be.to_numpy(bp[k])
            assert got.shape == (C,) and got.dtype == np.dtype(dtype)
            assert_close(got, bp_ref[k], dtype, k)

    db = be.asarray(dout, layout)
    dx, dgamma, dbeta = bwd(db, cache)
    edx, edgamma, edbeta = oracle(bwd, dout.astype(od), exp_cache)
    assert_close(be.to_numpy(dx), edx, dtype, "dx")
    assert_close(be.to_numpy(dgamma), edgamma, dtype, "dgamma")
    assert_close(be.to_numpy(dbeta), edbeta, dtype, "dbeta")
    _check_layout(be, dx, xb, layout)


@pytest.mark.parametrize("op", list(OPS))
def test_reference_matches_cs231n_formulas(op):
    """The reference itself against the seed's cs231n formulas, written out."""
    fwd, bwd, shape, _ = OPS[op]
    x, gamma, beta, dout = _data(shape, "float64", seed=5)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    bshape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    eps = 1e-5
    mu = x.mean(axis=axes, keepdims=True)
    var = x.var(axis=axes, keepdims=True)
    xn = (x - mu) / np.sqrt(var + eps)
    g, b = gamma.reshape(bshape), beta.reshape(bshape)
    out, cache = oracle(fwd, x, gamma, beta, {"mode": "train", "eps": eps})
    np.testing.assert_allclose(out, g * xn + b, rtol=1e-12, atol=1e-12)
    m = x.size // x.shape[1]
    dxn = dout * g
    dvar = np.sum(dxn * (x - mu), axis=axes, keepdims=True) * -0.5 * (var + eps) ** -1.5
    dmu = -np.sum(dxn, axis=axes, keepdims=True) / np.sqrt(var + eps) \
        - 2.0 * dvar * np.mean(x - mu, axis=axes, keepdims=True)
    dx = dxn / np.sqrt(var + eps) + 2.0 / m * dvar * (x - mu) + dmu / m
    gdx, gdg, gdb = oracle(bwd, dout, cache)
    np.testing.assert_allclose(gdx, dx, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(gdg, np.sum(dout * xn, axis=axes), rtol=1e-12, atol=1e-12)
    np.testing.assert_allclose(gdb, np.sum(dout, axis=axes), rtol=1e-12, atol=1e-12)


def _num_grad(f, a, df, h=1e-3):
    """d sum(f(a) * df) / da by the fourth-order central difference
    (f(a-2h) - 8 f(a-h) + 8 f(a+h) - f(a+2h)) / 12h, each difference taken
    elementwise before an exactly rounded sum (cs231n's
    eval_numerical_gradient_array, with an O(h^4) stencil so that the check
    measures the analytic gradient rather than the stencil's error)."""
    grad = np.zeros_like(a)
    it = np.nditer(a, flags=["multi_index"])
    for _ in it:
        i = it.multi_index
        old = a[i]
        vals = []
        for k in (-2, -1, 1, 2):
            a[i] = old + k * h
            vals.append(f(a).copy())
        a[i] = old
        m2, m1, p1, p2 = vals
        grad[i] = math.fsum(((m2 - p2 + 8.0 * (p1 - m1)) * df).ravel()) / (12.0 * h)
    return grad


@pytest.mark.parametrize("mode", ["train", "test"])
@pytest.mark.parametrize("op", list(OPS))
def test_gradients_by_finite_differences(backend, op, mode):
    """float64 gradients within cs231n's relative error bar (1e-8)."""
    if "float64" not in backend.dtypes:
        pytest.skip("needs float64")
    fwd, bwd, _, _ = OPS[op]
    shape = (4, 5) if op == "batchnorm" else (2, 3, 4, 5)
    x, gamma, beta, dout = _data(shape, "float64", seed=11, loc=5.0, scale=2.0)
    C = shape[1]
    rng = np.random.default_rng(2)
    be = backend
    extra = {} if mode == "train" else {"running_mean": rng.standard_normal(C),
                                         "running_var": rng.uniform(0.5, 2.0, C)}

    def param():
        return {"mode": mode, **{k: be.asarray(v) for k, v in extra.items()}}

    def run(xa, ga, ba):
        out, _ = fwd(be.asarray(xa), be.asarray(ga), be.asarray(ba), param())
        return be.to_numpy(out)

    _, cache = fwd(be.asarray(x), be.asarray(gamma), be.asarray(beta), param())
    dx, dgamma, dbeta = (be.to_numpy(a) for a in bwd(be.asarray(dout), cache))
    ndx = _num_grad(lambda a: run(a, gamma, beta), x.copy(), dout)
    ndg = _num_grad(lambda a: run(x, a, beta), gamma.copy(), dout)
    ndb = _num_grad(lambda a: run(x, gamma, a), beta.copy(), dout)
    assert rel_error(dx, ndx) < GRAD_REL_ERROR
    assert rel_error(dgamma, ndg) < GRAD_REL_ERROR
    assert rel_error(dbeta, ndb) < GRAD_REL_ERROR


@pytest.mark.parametrize("op,layout", CASES, ids=CASE_IDS)
def test_running_statistics_and_test_mode(backend, dtype, op, layout):
    """Running stats after several training steps, then test mode uses them."""
    fwd, _, shape, _ = OPS[op]
    be = backend
    bp = {"mode": "train", "momentum": 0.7}
    bp_ref = dict(bp)
    od = _oracle_dtype(dtype)
    for step in range(4):
        x, gamma, beta, _ = _data(shape, dtype, seed=100 + step, loc=step, scale=1 + step)
        fwd(be.asarray(x, layout), be.asarray(gamma), be.asarray(beta), bp)
        oracle(fwd, x.astype(od), gamma, beta, bp_ref)
        for k in ("running_mean", "running_var"):
            assert_close(be.to_numpy(bp[k]), bp_ref[k], dtype, f"step {step} {k}")
    # the update rule itself, on the reference: running = m * running + (1 - m) * batch
    x, gamma, beta, _ = _data(shape, "float64", seed=7)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    r = {"mode": "train", "momentum": 0.7, "running_mean": np.full(shape[1], 2.0),
         "running_var": np.full(shape[1], 3.0)}
    oracle(fwd, x, gamma, beta, r)
    np.testing.assert_allclose(r["running_mean"], 0.7 * 2.0 + 0.3 * x.mean(axis=axes), rtol=1e-12)
    np.testing.assert_allclose(r["running_var"], 0.7 * 3.0 + 0.3 * x.var(axis=axes), rtol=1e-12)

    bp["mode"] = bp_ref["mode"] = "test"
    x, gamma, beta, _ = _data(shape, dtype, seed=999)
    out, _ = fwd(be.asarray(x, layout), be.asarray(gamma), be.asarray(beta), bp)
    exp, _ = oracle(fwd, x.astype(od), gamma, beta, bp_ref)
    assert_close(be.to_numpy(out), exp, dtype, "test-mode out")
    rm = np.asarray(bp_ref["running_mean"], np.float64)
    rv = np.asarray(bp_ref["running_var"], np.float64)
    bshape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    formula = gamma.reshape(bshape) * (x.astype(np.float64) - rm.reshape(bshape)) \
        / np.sqrt(rv.reshape(bshape) + 1e-5) + beta.reshape(bshape)
    assert_close(be.to_numpy(out), formula, dtype, "test-mode formula")


def test_default_running_stats_are_zeros_in_test_mode(backend, dtype):
    x, gamma, beta, _ = _data((8, 6), dtype)
    be = backend
    out, _ = nd.batchnorm_forward(be.asarray(x), be.asarray(gamma), be.asarray(beta),
                                  {"mode": "test"})
    formula = gamma * x.astype(np.float64) / np.sqrt(1e-5) + beta
    assert_close(be.to_numpy(out), formula, dtype, "zeros running stats")


@pytest.mark.parametrize("op", list(OPS))
def test_cs231n_means_and_stds(backend, dtype, op):
    """cs231n: after batchnorm in training, means ~ beta and stds ~ gamma."""
    fwd = OPS[op][0]
    shape = (200, 3) if op == "batchnorm" else (20, 3, 4, 5)
    rng = np.random.default_rng(231)
    x = (rng.standard_normal(shape) * 6 + 11).astype(dtype)
    gamma = np.asarray([1, 2, 3])          # integers, as the notebook passes them
    beta = np.asarray([11.0, 12.0, 13.0])
    be = backend
    out, _ = fwd(be.asarray(x), be.asarray(gamma), be.asarray(beta), {"mode": "train"})
    o = be.to_numpy(out).astype(np.float64)
    axes = (0,) if o.ndim == 2 else (0, 2, 3)
    tol = 2e-3 if dtype == "float16" else 1e-4
    np.testing.assert_allclose(o.mean(axis=axes), beta, atol=tol * 20)
    np.testing.assert_allclose(o.std(axis=axes), gamma, rtol=tol)


@pytest.mark.parametrize("op", list(OPS))
def test_float32_stability_large_mean_small_std(backend, op):
    """float32 data with mean 1e4 and std 1e-2 normalizes to unit variance."""
    if "float32" not in backend.dtypes:
        pytest.skip("needs float32")
    fwd = OPS[op][0]
    shape = (4000, 4) if op == "batchnorm" else (16, 4, 10, 25)
    rng = np.random.default_rng(3)
    x = (1e4 + 1e-2 * rng.standard_normal(shape)).astype(np.float32)
    C = shape[1]
    be = backend
    out, _ = fwd(be.asarray(x), be.asarray(np.ones(C)), be.asarray(np.zeros(C)),
                 {"mode": "train", "eps": 1e-12})
    o = be.to_numpy(out).astype(np.float64)
    axes = (0,) if o.ndim == 2 else (0, 2, 3)
    np.testing.assert_allclose(o.var(axis=axes), 1.0, atol=1e-3)
    np.testing.assert_allclose(o.mean(axis=axes), 0.0, atol=1e-3)


@pytest.mark.parametrize("shape", [(2, 1), (3, 1000), (1000, 3), (70000, 2), (5, 300)])
def test_cpu_reduction_shapes(shape):
    """Shapes around the kernels' tile and segment sizes, against the reference."""
    for dtype in ("float32", "float64"):
        x, gamma, beta, dout = _data(shape, dtype, seed=sum(shape))
        for layout in ("contiguous", "fortran"):
            from conftest import _layout
            xl = _layout(x, layout)
            out, cache = nd.batchnorm_forward(xl, gamma, beta, {"mode": "train"})
            exp, ecache = oracle(nd.batchnorm_forward, x, gamma, beta, {"mode": "train"})
            assert_close(out, exp, dtype, f"{shape} {layout}")
            got = nd.batchnorm_backward(_layout(dout, layout), cache)
            ref = oracle(nd.batchnorm_backward, dout, ecache)
            for g, r in zip(got, ref):
                assert_close(g, r, dtype, f"{shape} {layout} backward")


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (2, 3, 1, 1), (1, 2, 200, 100), (3, 1, 5, 7)])
def test_cpu_spatial_edge_shapes(shape):
    for layout in LAYOUTS_4D:
        x, gamma, beta, dout = _data(shape, "float64", seed=sum(shape))
        from conftest import _layout
        mode = "train" if shape[0] * shape[2] * shape[3] > 1 else "test"
        out, cache = nd.spatial_batchnorm_forward(_layout(x, layout), gamma, beta, {"mode": mode})
        exp, ecache = oracle(nd.spatial_batchnorm_forward, x, gamma, beta, {"mode": mode})
        assert_close(out, exp, "float64", f"{shape} {layout}")
        for g, r in zip(nd.spatial_batchnorm_backward(_layout(dout, layout), cache),
                        oracle(nd.spatial_batchnorm_backward, dout, ecache)):
            assert_close(g, r, "float64", f"{shape} {layout} backward")


def test_gamma_shapes_and_gradient_shapes():
    x, gamma, beta, dout = _data((6, 4, 3, 2), "float64")
    for gshape in [(4,), (1, 4), (1, 4, 1, 1)]:
        g = gamma.reshape(gshape)
        b = beta.reshape(gshape)
        out, cache = nd.spatial_batchnorm_forward(x, g, b, {"mode": "train"})
        exp, _ = nd.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
        np.testing.assert_array_equal(out, exp)
        _, dg, db = nd.spatial_batchnorm_backward(dout, cache)
        assert dg.shape == gshape and db.shape == gshape


def test_inputs_not_modified():
    x, gamma, beta, dout = _data((9, 4, 3, 3), "float32")
    copies = [a.copy() for a in (x, gamma, beta, dout)]
    rm, rv = np.ones(4, np.float32), np.ones(4, np.float32)
    bp = {"mode": "train", "running_mean": rm, "running_var": rv}
    _, cache = nd.spatial_batchnorm_forward(x, gamma, beta, bp)
    nd.spatial_batchnorm_backward(dout, cache)
    for a, c in zip((x, gamma, beta, dout), copies):
        np.testing.assert_array_equal(a, c)
    np.testing.assert_array_equal(rm, 1.0)       # replaced in bn_param, not written into
    assert bp["running_mean"] is not rm


def test_big_endian_input():
    x, gamma, beta, dout = _data((7, 5), "float64")
    out, cache = nd.batchnorm_forward(x.astype(">f8"), gamma, beta, {"mode": "train"})
    exp, ecache = nd.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    np.testing.assert_array_equal(out, exp)
    for u, v in zip(nd.batchnorm_backward(dout.astype(">f8"), cache),
                    nd.batchnorm_backward(dout, ecache)):
        np.testing.assert_array_equal(u, v)
    d, _ = nd.dropout_forward(x.astype(">f4"), {"p": 0.5, "mode": "train", "seed": 2})
    np.testing.assert_array_equal(
        d, nd.dropout_forward(x.astype("f4"), {"p": 0.5, "mode": "train", "seed": 2})[0])


def test_nan_and_inf_propagate():
    x, gamma, beta, dout = _data((8, 3), "float64")
    x[2, 1] = np.nan
    x[3, 2] = np.inf
    out, cache = nd.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert np.isnan(out[:, 1]).all() and np.isnan(out[:, 2]).all()
    assert np.isfinite(out[:, 0]).all()
    dx, dg, db = nd.batchnorm_backward(dout, cache)
    assert np.isnan(dx[:, 1]).all() and np.isfinite(dx[:, 0]).all()


def test_dout_in_other_layout_and_dtype():
    """dout need not share x's layout or dtype: it is brought to them once."""
    x, gamma, beta, dout = _data((5, 6, 4, 3), "float32")
    from conftest import _layout
    xl = _layout(x, "channels_last")
    _, cache = nd.spatial_batchnorm_forward(xl, gamma, beta, {"mode": "train"})
    a = nd.spatial_batchnorm_backward(dout, cache)
    b = nd.spatial_batchnorm_backward(_layout(dout.astype(np.float64), "noncontiguous"), cache)
    for u, v in zip(a, b):
        assert u.dtype == np.float32
        np.testing.assert_array_equal(u, v)


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(n=st.integers(2, 40), c=st.integers(1, 70), hw=st.sampled_from([(1, 1), (1, 3), (5, 4), (9, 13)]),
       layout=st.sampled_from(LAYOUTS_4D), dtype=st.sampled_from(["float32", "float64"]),
       seed=st.integers(0, 2**32 - 1))
def test_hypothesis_spatial_shapes_cpu(n, c, hw, layout, dtype, seed):
    from conftest import _layout
    shape = (n, c) + hw
    x, gamma, beta, dout = _data(shape, dtype, seed=seed)
    out, cache = nd.spatial_batchnorm_forward(_layout(x, layout), gamma, beta, {"mode": "train"})
    exp, ecache = oracle(nd.spatial_batchnorm_forward, x, gamma, beta, {"mode": "train"})
    assert_close(out, exp, dtype, "out")
    got = nd.spatial_batchnorm_backward(_layout(dout, layout), cache)
    for g, r in zip(got, oracle(nd.spatial_batchnorm_backward, dout, ecache)):
        assert_close(g, r, dtype, "backward")


@settings(max_examples=40, deadline=None)
@given(n=st.integers(2, 600), d=st.integers(1, 600), layout=st.sampled_from(LAYOUTS_2D),
       dtype=st.sampled_from(["float32", "float64"]), seed=st.integers(0, 2**32 - 1))
def test_hypothesis_batchnorm_shapes_cpu(n, d, layout, dtype, seed):
    from conftest import _layout
    x, gamma, beta, dout = _data((n, d), dtype, seed=seed)
    out, cache = nd.batchnorm_forward(_layout(x, layout), gamma, beta, {"mode": "train"})
    exp, ecache = oracle(nd.batchnorm_forward, x, gamma, beta, {"mode": "train"})
    assert_close(out, exp, dtype, "out")
    got = nd.batchnorm_backward(_layout(dout, layout), cache)
    for g, r in zip(got, oracle(nd.batchnorm_backward, dout, ecache)):
        assert_close(g, r, dtype, "backward")


def test_huge_constant_channel_is_the_same_on_every_cpu_path():
    """A channel of four 1e200s (their mean is exact, in every summation order) in one unit:
    the Chan merge of a first unit into nothing would compute inf * 0 = NaN;
    it takes the unit as is, so rows and planes agree: variance 0, out = beta.
    (Where the mean rounds, (x - mean)**2 overflows float64 in any method and
    the variance is inf, as in the reference.)"""
    n = 4
    x = np.full((n, 2), 1e200)
    beta = np.array([0.25, -3.0])
    outs = []
    for xx, fwd in ((x, nd.batchnorm_forward),
                    (x.T.reshape(1, 2, n, 1).copy(), nd.spatial_batchnorm_forward)):
        bp = {"mode": "train"}
        g = np.ones(2)
        out, _ = fwd(xx, g, beta, bp)
        assert np.all(np.isfinite(bp["running_var"])) and np.all(bp["running_var"] == 0.0)
        outs.append(out.reshape(2, -1) if out.ndim == 4 else out.T)
    for o in outs:
        np.testing.assert_array_equal(o, np.broadcast_to(beta[:, None], o.shape))
