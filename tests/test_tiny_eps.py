"""Tiny eps on a constant channel (or row, or group): var = 0, so invstd =
1/sqrt(eps) is huge (1e150 for eps = 1e-300, 4.5e161 for the smallest
subnormal), and the backward's coefficient of (x - mean) multiplies
gamma * invstd**2 (batchnorm) or invstd**3 (groupnorm, layernorm) by a sum
that is exactly 0.  That product must not become inf * 0 = NaN: dx is finite
and the reference's, for normal and subnormal eps alike, gamma up to 1e10.
The other channels are unaffected."""
from __future__ import annotations

import numpy as np
import pytest

import normdrop as nd

EPS = [1e-300, 2.2250738585072014e-308,  # the smallest normal float64
       5e-309, 4e-320, 5e-324]           # subnormal
GAMMA = [1.0, 10.0, 1e10]


def _case(op):
    """(forward, backward, x, extra args, index of the constant slice, axis
    of the statistics groups' slices): float64 data with one constant
    channel, row or group."""
    rng = np.random.default_rng(11)
    if op == "batchnorm":
        x = rng.standard_normal((16, 5))
        x[:, 2] = 3.0
        return nd.batchnorm_forward, nd.batchnorm_backward, x, ()
    if op == "spatial":
        x = rng.standard_normal((3, 4, 5, 6))
        x[:, 1] = -2.0
        return nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward, x, ()
    if op == "spatial_c8":
        x = rng.standard_normal((3, 9, 5, 6))
        x[:, 7] = 0.5
        return nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward, x, ()
    if op == "layernorm":
        x = rng.standard_normal((4, 12))
        x[1] = 7.0
        return nd.layernorm_forward, nd.layernorm_backward, x, ()
    x = rng.standard_normal((2, 6, 3, 4))
    x[1, 2:4] = 1.25                      # group 1 of sample 1 (G = 3)
    return nd.spatial_groupnorm_forward, nd.spatial_groupnorm_backward, x, (3,)


def _slices(op, a):
    """a cut into its statistics groups' values (channel, row or group)."""
    a = np.asarray(a)
    if op in ("batchnorm",):
        return [a[:, j] for j in range(a.shape[1])]
    if op in ("spatial", "spatial_c8"):
        return [a[:, j] for j in range(a.shape[1])]
    if op == "layernorm":
        return list(a)
    return [a[i, 2 * q:2 * q + 2] for i in range(a.shape[0]) for q in range(3)]


def _close_per_group(op, got, exp, what):
    """Within 1e-9 of the largest |expected| of the same group (dx of a
    constant channel is ~1e150 and cancels to it; the others are O(1))."""
    for k, (g, e) in enumerate(zip(_slices(op, got), _slices(op, exp))):
        assert np.isfinite(g).all(), f"{what}, group {k}: not finite: {g.ravel()[:4]}"
        scale = max(1.0, float(np.max(np.abs(e))))
        err = float(np.max(np.abs(g - e)))
        assert err <= 1e-9 * scale, f"{what}, group {k}: error {err:.3g}, scale {scale:.3g}"


@pytest.mark.parametrize("gamma", GAMMA)
@pytest.mark.parametrize("eps", EPS)
@pytest.mark.parametrize("op", ["batchnorm", "spatial", "spatial_c8", "layernorm", "groupnorm"])
def test_tiny_eps_on_a_constant_group(op, eps, gamma):
    fwd, bwd, x, extra = _case(op)
    C = x.shape[-1] if op == "layernorm" else x.shape[1]
    g = np.full(C, gamma)
    b = np.linspace(-1.0, 1.0, C)
    dout = np.random.default_rng(5).standard_normal(x.shape)

    def run():
        p = {"mode": "train", "eps": eps}
        out, cache = fwd(x, g, b, *extra, p)
        return (out,) + tuple(bwd(dout, cache))

    got = run()
    with nd.force_reference():
        exp = run()
    for e in exp:
        assert np.isfinite(e).all()       # the reference computes through
    _close_per_group(op, got[0], exp[0], "out")
    _close_per_group(op, got[1], exp[1], "dx")
    for a, e, what in ((got[2], exp[2], "dgamma"), (got[3], exp[3], "dbeta")):
        assert np.isfinite(a).all(), what
        np.testing.assert_allclose(a, e, rtol=1e-9, atol=1e-9, err_msg=what)


# Groups of one value: layernorm with D = 1 (rows two at a time, and the odd
# last one), groupnorm with G = C on 1x1 planes, NCHW and channels-last.
def _one_value_groups(layout, dtype):
    rng = np.random.default_rng(12)
    if layout == "layernorm":
        x, d = rng.standard_normal((5, 1)), rng.standard_normal((5, 1)) * 30
        return nd.layernorm_forward, nd.layernorm_backward, x.astype(dtype), d.astype(dtype), ()
    x, d = rng.standard_normal((3, 4, 1, 1)), rng.standard_normal((3, 4, 1, 1)) * 30
    x, d = x.astype(dtype), d.astype(dtype)
    if layout == "channels_last":
        x = np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    return nd.spatial_groupnorm_forward, nd.spatial_groupnorm_backward, x, d, (4,)


@pytest.mark.parametrize("eps", [1e-5, 1e-30, 1e-300])
@pytest.mark.parametrize("layout", ["layernorm", "nchw", "channels_last"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_a_group_of_one_value_has_dx_zero(layout, eps, dtype):
    """A group of one value normalizes to beta whatever x is, so dx is 0, the
    reference's dxhat - dxhat.  The kernels' a * dout + e was
    r gamma dout - r (gamma dout): a rounding error times r = 1/sqrt(eps),
    1e-12 at eps 1e-5, ~1e136 at 1e-300 and inf in float32.  NaN stays NaN:
    a NaN dout or an infinite x gives NaN in its group only, as in the
    reference."""
    fwd, bwd, x, d, extra = _one_value_groups(layout, dtype)
    C = x.shape[-1] if layout == "layernorm" else x.shape[1]
    g, b = np.linspace(0.7, 1.9, C), np.zeros(C)

    def run(x, d):
        _, cache = fwd(x, g, b, *extra, {"eps": eps})
        return bwd(d, cache)

    dx, dgamma, dbeta = run(x, d)
    np.testing.assert_array_equal(dx, np.zeros_like(dx))
    with nd.force_reference():
        rdx, rdgamma, rdbeta = run(x, d)
    np.testing.assert_array_equal(rdx, np.zeros_like(rdx))
    np.testing.assert_allclose(dgamma, rdgamma, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(dbeta, rdbeta, rtol=1e-6, atol=1e-6)
    x2, d2 = x.copy(), d.copy()
    x2.flat[0], d2.flat[-1] = np.inf, np.nan
    got = run(x2, d2)[0]
    with nd.force_reference(), np.errstate(all="ignore"):
        exp = run(x2, d2)[0]
    np.testing.assert_array_equal(np.isnan(got), np.isnan(exp))
    assert np.isnan(got).sum() == 2
    np.testing.assert_array_equal(got[~np.isnan(got)], 0.0)
