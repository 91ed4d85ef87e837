"""Infinite and NaN values in x: the CPU statistics are the reference's (and
the cs231n code's) -- a channel or group holding +inf has mean +inf and a
NaN variance, one holding +inf and -inf or a NaN has a NaN mean -- on every
CPU path where the statistics of a channel or group are merged from several
units (nd_moments.h): rows of several row blocks, planes with C >= 8 and
C < 8, layernorm rows and groupnorm groups longer than one unit.  The other
channels and groups keep their finite statistics."""
from __future__ import annotations

import numpy as np
import pytest

import normdrop as nd
from normdrop import _cpu  # noqa: F401 - the CPU backend must be built
from normdrop._cpu import _kernels
from conftest import assert_close


def _same_nonfinite(got, exp, dtype, what):
    got = np.asarray(got, np.float64)
    exp = np.asarray(exp, np.float64)
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp), err_msg=f"{what}: NaN positions")
    inf = np.isinf(exp)
    np.testing.assert_array_equal(got[inf], exp[inf], err_msg=f"{what}: inf values")
    np.testing.assert_array_equal(np.isinf(got), inf, err_msg=f"{what}: inf positions")
    fin = np.isfinite(exp)
    assert_close(got[fin], exp[fin], dtype, what)


# Each case: (op, shape, extra args, two positions in one channel or group).
# The positions are in early units of a channel or group with several units
# after them, so a merge that computes inf - inf shows.
def _cases():
    return {
        # ND_ROWS: 64 channels -> blocks of 512 rows; 2000 rows are 4 blocks
        "rows": (nd.batchnorm_forward, (2000, 64), (), [(700, 3), (1300, 3)]),
        # ND_PLANES, C >= 8: 6 planes of 10000 values per channel
        "planes_c8": (nd.spatial_batchnorm_forward, (6, 8, 100, 100), (),
                      [(1, 2, 5, 5), (2, 2, 0, 0)]),
        # ND_PLANES, C < 8
        "planes_c3": (nd.spatial_batchnorm_forward, (6, 3, 100, 100), (),
                      [(1, 2, 5, 5), (2, 2, 9, 9)]),
        # planes of 2 segments each
        "planes_2seg": (nd.spatial_batchnorm_forward, (3, 2, 150, 150), (),
                        [(0, 1, 3, 4), (1, 1, 0, 0)]),
        # layernorm rows of 40000 values: 2 units per row
        "layernorm": (nd.layernorm_forward, (3, 40000), (), [(1, 100), (1, 20000)]),
        # groupnorm groups of 2 channels x 25600 values: a unit per channel
        "groupnorm": (nd.spatial_groupnorm_forward, (2, 4, 160, 160), (2,),
                      [(1, 2, 100, 3), (1, 2, 150, 3)]),
    }


CASES = _cases()
BAD = {
    "+inf": [np.inf],
    "-inf": [-np.inf],
    "+inf,-inf": [np.inf, -np.inf],
    "nan": [np.nan],
}


def _forward(op, x, extra):
    C = x.shape[-1] if op is nd.layernorm_forward else x.shape[1]
    gamma = np.linspace(0.5, 1.5, C)
    beta = np.linspace(-1, 1, C)
    param = {"mode": "train"}
    out, cache = op(x, gamma, beta, *extra, param)
    return out, cache, param


@pytest.mark.parametrize("bad", list(BAD))
@pytest.mark.parametrize("case", list(CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_nonfinite_statistics_match_reference(case, bad, dtype):
    op, shape, extra, positions = CASES[case]
    rng = np.random.default_rng(3)
    x = rng.standard_normal(shape).astype(dtype)
    for pos, v in zip(positions, BAD[bad]):
        x[pos] = v
    out, cache, param = _forward(op, x, extra)
    with nd.force_reference(), np.errstate(invalid="ignore"):
        rout, rcache, rparam = _forward(op, x, extra)
    _same_nonfinite(cache.mean, rcache.mean, "float64", f"{case} {bad}: mean")
    _same_nonfinite(cache.invstd, rcache.invstd, "float64", f"{case} {bad}: invstd")
    if op is not nd.layernorm_forward and op is not nd.spatial_groupnorm_forward:
        for key in ("running_mean", "running_var"):
            _same_nonfinite(param[key], rparam[key], dtype, f"{case} {bad}: {key}")
    # the channel or group of the bad values: mean as the reference, var NaN
    mean = np.asarray(cache.mean)
    expected = {"+inf": np.inf, "-inf": -np.inf}.get(bad)
    bad_groups = ~np.isfinite(mean)
    assert bad_groups.sum() == 1, mean[bad_groups]
    if expected is None:
        assert np.isnan(mean[bad_groups]).all()
    else:
        assert (mean[bad_groups] == expected).all()
    assert np.isnan(np.asarray(cache.invstd)[bad_groups]).all()
    _same_nonfinite(out, rout, dtype, f"{case} {bad}: out")


def test_merge_rules_for_nonfinite_means():
    """nd_moments.h: a difference of the means that is not finite merges to
    mean_a + mean_b and a NaN M2 (+inf stays +inf, +inf with -inf is NaN,
    NaN stays NaN) in either order; finite means whose difference overflows
    merge to their weighted mean with an infinite M2."""
    inf, nan = np.inf, np.nan
    sets = [  # (set a, set b, merged mean, merged m2)
        ((4.0, 1.0, 2.0), (3.0, inf, nan), inf, nan),
        ((3.0, inf, nan), (4.0, 1.0, 2.0), inf, nan),
        ((3.0, -inf, nan), (4.0, 1.0, 2.0), -inf, nan),
        ((3.0, inf, nan), (4.0, -inf, nan), nan, nan),
        ((3.0, nan, nan), (4.0, 1.0, 2.0), nan, nan),
        ((4.0, 1.0, 2.0), (3.0, nan, nan), nan, nan),
        ((1.0, -1.5e308, 0.0), (3.0, 1.5e308, 0.0), 0.75e308, inf),
    ]
    for a, b, mean, m2 in sets:
        count = np.array([[a[0]], [b[0]]])
        means = np.array([[a[1]], [b[1]]])
        m2s = np.array([[a[2]], [b[2]]])
        n, mu, q = _kernels.merge_moments(count, means, m2s)
        assert n[0] == a[0] + b[0]
        np.testing.assert_array_equal(mu, [mean], err_msg=f"{a} + {b}: mean")
        np.testing.assert_array_equal(q, [m2], err_msg=f"{a} + {b}: m2")
    # a third, finite set after an infinite one keeps the mean infinite
    n, mu, q = _kernels.merge_moments([[4.0], [3.0], [5.0]], [[1.0], [inf], [2.0]],
                                      [[2.0], [nan], [1.0]])
    assert mu[0] == inf and np.isnan(q[0])


# Test mode: dx = gamma * invstd * dout, which x and the running mean do not
# enter.  Each case: (forward, backward, x shape, channels-last?).  The fused
# planes path (small NCHW), the general planes path, rows and channels-last
# rows, all of whose dx loops used to compute a * dout + 0 * (x - mean), NaN
# where x or the mean is infinite or NaN.
TEST_MODE_CASES = {
    "rows": (nd.batchnorm_forward, nd.batchnorm_backward, (40, 6), False),
    "planes_fused": (nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward,
                     (3, 8, 5, 5), False),
    "planes": (nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward,
               (4, 8, 100, 100), False),
    "planes_c3": (nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward,
                  (4, 3, 9, 9), False),
    "channels_last": (nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward,
                      (3, 6, 5, 5), True),
}


@pytest.mark.parametrize("where", ["x", "running_mean"])
@pytest.mark.parametrize("case", list(TEST_MODE_CASES))
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_test_mode_dx_does_not_depend_on_x_or_the_mean(case, where, dtype):
    fwd, bwd, shape, clast = TEST_MODE_CASES[case]
    C = shape[1]
    rng = np.random.default_rng(8)
    x = rng.standard_normal(shape).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    if clast:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
        dout = np.ascontiguousarray(dout.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    rm = rng.standard_normal(C).astype(dtype)
    if where == "x":
        x[(0, 1) + (0,) * (x.ndim - 2)] = np.inf
        x[(1, 2) + (1,) * (x.ndim - 2)] = np.nan
        x[(2, 0) + (0,) * (x.ndim - 2)] = -np.inf
    else:
        rm[1], rm[2] = np.inf, np.nan
    gamma, beta = np.linspace(0.5, 1.5, C), np.linspace(-1, 1, C)

    def run():
        param = {"mode": "test", "running_mean": rm,
                 "running_var": np.linspace(0.5, 2.0, C).astype(dtype)}
        _, cache = fwd(x, gamma, beta, param)
        return bwd(dout, cache)

    dx, dgamma, dbeta = run()
    with nd.force_reference(), np.errstate(invalid="ignore"):
        rdx, rdgamma, rdbeta = run()
    assert np.isfinite(dx).all() and np.isfinite(rdx).all()
    assert_close(dx, rdx, dtype, f"{case} {where}: dx")
    invstd = 1.0 / np.sqrt(np.linspace(0.5, 2.0, C).astype(dtype).astype(np.float64) + 1e-5)
    a = gamma.astype(dtype).astype(np.float64) * invstd      # gamma is cast to x's dtype
    exp = a.reshape((1, C) + (1,) * (x.ndim - 2)) * dout.astype(np.float64)
    np.testing.assert_array_equal(dx, exp.astype(dtype))      # a * dout, rounded once
    _same_nonfinite(dgamma, rdgamma, dtype, f"{case} {where}: dgamma")
    _same_nonfinite(dbeta, rdbeta, dtype, f"{case} {where}: dbeta")


@pytest.mark.parametrize("case", ["rows", "planes_fused", "planes", "channels_last"])
def test_test_mode_infinite_invstd_dgamma_is_the_references(case):
    """running_var = -eps in test mode: invstd = inf.  The reference's dgamma
    sums dout * (x - mean) * inf, +-inf terms, NaN where they differ in sign;
    the kernels' (sum dout (x - mean)) * inf was -inf or +inf.  The other
    channels keep the kernels' values."""
    fwd, bwd, shape, clast = TEST_MODE_CASES[case]
    C = shape[1]
    rng = np.random.default_rng(9)
    x = rng.standard_normal(shape)
    dout = rng.standard_normal(shape)
    if clast:
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    rv = np.linspace(0.5, 2.0, C)
    rv[1] = -1e-5                                   # + eps (1e-5) == 0 exactly

    def run(rv):
        param = {"mode": "test", "running_mean": np.zeros(C), "running_var": rv}
        _, cache = fwd(x, np.ones(C), np.zeros(C), param)
        return bwd(dout, cache)

    with np.errstate(divide="ignore"):
        dx, dgamma, dbeta = run(rv)
    with nd.force_reference(), np.errstate(all="ignore"):
        rdx, rdgamma, rdbeta = run(rv)
    assert np.isnan(rdgamma[1])
    _same_nonfinite(dgamma, rdgamma, "float64", f"{case}: dgamma")
    _same_nonfinite(dx, rdx, "float64", f"{case}: dx")
    fine = run(np.linspace(0.5, 2.0, C))[1]          # the kernels' dgamma of the other channels
    mask = np.arange(C) != 1
    np.testing.assert_array_equal(dgamma[mask], fine[mask])
