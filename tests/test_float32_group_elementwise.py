"""Error bounds of the CPU float32 elementwise passes of the group kernels
(layernorm, spatial groupnorm), after float64 statistics.

The forward, out = (x - mean) * scale + shift with scale = invstd[grp] *
gamma[ch] and shift = beta[ch], runs in float with the group's mean split
into two floats, mean = mh + ml + e (mh = fl(mean), ml = fl(mean - mh), so
|e| <= u |mean - mh| <= u**2 |mean|).  t = (x - mh) - ml is within
2 u |x - mean| + |e| of x - mean: x - mh is exact when x is within a factor
2 of mh, and otherwise |x - mh| >= |mh| / 2, so that |ml| <= 2 u |x - mean|.

- plane runs (NCHW) take batchnorm's formula out = t * a + b with
  a = fl(scale), b = fl(shift): a and the product add 2 u to the term, b and
  the sum u |shift| and u |out|, so
  |out - exact| <= 6 u (|(x - mean) * scale| + |shift|) + 2 u**2 |mean * scale|;
- channel runs (rows, channels-last) take out = ((t * rf) * ga) + gb with
  rf = fl(invstd), ga = fl(gamma), gb = fl(beta) (ga and gb, the same for
  every row, are formed once per call): rf, ga and the two products add 4 u
  to the term, so 8 u in place of 6 u.

A group outside the float formula's range (mean 0 or in [2**-100, 2**100],
invstd, its largest |gamma| and their product, and its largest |beta| at most
2**100) is computed with the float64 formula instead, bit for bit.

The backward, dx = a * dout + b * (x - mean) + e with a = invstd * gamma,
b = -invstd**3 * s2 / M, e = -invstd * s1 / M, runs in double and is rounded
once (its terms cancel: dx sums to 0 over a group), so
|dx - exact| <= u |exact| + 2**-44 (|a * dout| + |b * (x - mean)| + |e|)
(2**-44 leaves room for the order of the float64 sums).

u = 2**-24; `exact` in float64 from the same float64 mean and coefficients."""
from __future__ import annotations

import numpy as np
import pytest

from normdrop._contract import groups_geometry, rows_geometry
from normdrop._cpu import _backend as _cpu
from normdrop._cpu import _kernels as _k

U = 2.0 ** -24
CENTERS = (0.0, 1e4, -3e7)


def _nhwc(a):
    return np.ascontiguousarray(a.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)


def _geom(x, G):
    return _cpu._geometry(x, rows_geometry(x.shape) if G is None else
                          groups_geometry(x.shape, G))


def _grouped(a, G):
    """a as (groups, values per group): rows for layernorm, (n, G, rest) for
    groupnorm."""
    if G is None:
        return a.reshape(a.shape[0], -1)
    return a.reshape(a.shape[0] * G, -1)


def _per_value(v, shape, G):
    """A per-group vector (ngroups,) broadcast over the values of x."""
    if G is None:
        return v.reshape(shape[0], 1)
    return np.repeat(v.reshape(shape[0], G), shape[1] // G, axis=1).reshape(
        shape[0], shape[1], *([1] * (len(shape) - 2)))


def _per_channel(v, shape, G):
    return v.reshape(1, -1) if G is None else v.reshape(1, -1, *([1] * (len(shape) - 2)))


def _data(shape, G, rng):
    """float32 data whose groups have the centers 0, 1e4, -3e7 in turn, each
    with std 3 (center 0) or 1e-6 of its center."""
    ng = shape[0] if G is None else shape[0] * G
    centers = np.array([CENTERS[k % 3] for k in range(ng)])
    spread = np.where(centers == 0, 3.0, np.abs(centers) * 1e-6)
    z = _grouped(rng.standard_normal(shape), G)
    return (centers[:, None] + spread[:, None] * z).reshape(shape).astype(np.float32)


def _stats(x, G):
    v = _grouped(x.astype(np.float64), G)
    return v.mean(axis=1), 1.0 / v.std(axis=1)


def _check_forward(x, G, mean, invstd, gamma, beta, k):
    xl, geom = _geom(x, G)
    out = np.empty_like(xl)
    _k.normalize(xl, out, geom, mean, invstd, gamma, beta)
    m = _per_value(mean, x.shape, G)
    scale = _per_value(invstd, x.shape, G) * _per_channel(gamma, x.shape, G)
    shift = _per_channel(beta, x.shape, G)
    term = (x.astype(np.float64) - m) * scale
    exact = term + shift
    err = np.abs(out.astype(np.float64) - exact)
    bound = k * U * (np.abs(term) + np.abs(shift)) + 2 * U * U * np.abs(m * scale)
    assert (err <= bound).all(), float(np.max(err / np.maximum(bound, 1e-300)))
    return out


def _check_dx(x, G, dout, mean, invstd, gamma):
    xl, geom = _geom(x, G)
    dl = _cpu._like(dout, xl)
    dx = np.empty_like(xl)
    _k.norm_bwd(dl, xl, dx, geom, mean, invstd, gamma, True)
    M = _grouped(x, G).shape[1]
    g = _per_channel(gamma, x.shape, G)
    d64, xm = dout.astype(np.float64), x.astype(np.float64) - _per_value(mean, x.shape, G)
    s1 = _grouped(d64 * g, G).sum(axis=1)               # the kernel's sums, up to order
    s2 = _grouped(d64 * g * xm, G).sum(axis=1)
    a = _per_value(invstd, x.shape, G) * g
    b = _per_value(-invstd ** 3 * s2 / M, x.shape, G)
    e = _per_value(-invstd * s1 / M, x.shape, G)
    t1, t2 = a * d64, b * xm
    exact = t1 + t2 + e
    err = np.abs(dx.astype(np.float64) - exact)
    bound = U * np.abs(exact) + 2.0 ** -44 * (np.abs(t1) + np.abs(t2) + np.abs(e))
    assert (err <= bound).all(), float(np.max(err / np.maximum(bound, 1e-300)))


# (shape, G): G None is layernorm over the last axis
CASES = [((300, 37), None), ((64, 1030), None), ((7, 5000), None),    # 5000: coefficients per tile
         ((6, 6, 33, 31), 3), ((4, 160, 3, 5), 80),                   # 80 groups: ranges per group
         ((30, 12, 1, 1), 4)]                                         # 1x1 planes: rows of groups


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape,G", CASES, ids=[f"{'x'.join(map(str, s))}-G{g}" for s, g in CASES])
def test_float32_group_error_bounds(shape, G, stream):
    rng = np.random.default_rng(sum(shape))
    C = shape[-1] if G is None else shape[1]
    x = _data(shape, G, rng)
    mean, invstd = _stats(x, G)
    gamma = rng.uniform(0.5, 2.0, C)
    beta = rng.uniform(-1, 1, C)
    dout = rng.standard_normal(shape).astype(np.float32)
    old = _k.get_stream_bytes()
    _k.set_stream_bytes(0 if stream else 2**62)
    try:
        layouts = [(x, 8 if G is None else 6)]
        if G is not None and shape[2] * shape[3] > 1:
            layouts = [(x, 6), (_nhwc(x), 8)]       # planes; channels-last: channel runs
        elif G is not None:
            layouts = [(x, 8)]                      # 1x1 planes are rows of channel runs
        for xl, k in layouts:
            _check_forward(xl, G, mean, invstd, gamma, beta, k)
            _check_dx(xl, G, dout, mean, invstd, gamma)
    finally:
        _k.set_stream_bytes(old)


def _double_formula(x, G, mean, invstd, gamma, beta):
    m = _per_value(mean, x.shape, G)
    scale = _per_value(invstd, x.shape, G) * _per_channel(gamma, x.shape, G)
    with np.errstate(all="ignore"):
        return ((x.astype(np.float64) - m) * scale + _per_channel(beta, x.shape, G)).astype(
            np.float32)


def _normalized(x, G, mean, invstd, gamma, beta):
    xl, geom = _geom(x, G)
    out = np.empty_like(xl)
    with np.errstate(all="ignore"):
        _k.normalize(xl, out, geom, mean, invstd, gamma, beta)
    return out


def _group_case(layout, seed, rows_shape, planes_shape):
    """Data of one out-of-range case: layernorm rows (layout "rows", shape
    rows_shape) or groupnorm with G = 4 on planes_shape, NCHW ("planes") or
    channels-last ("nhwc"); random per-group mean and invstd, per-channel
    gamma and beta.  Returns (x, G, ngroups, C, mean, invstd, gamma, beta)."""
    rng = np.random.default_rng(seed)
    G = None if layout == "rows" else 4
    shape = rows_shape if G is None else planes_shape
    x = rng.standard_normal(shape).astype(np.float32)
    if layout == "nhwc":
        x = _nhwc(x)
    ng = shape[0] if G is None else shape[0] * G
    C = shape[-1] if G is None else shape[1]
    mean = rng.uniform(-1, 1, ng)
    invstd = rng.uniform(0.5, 2, ng)
    gamma, beta = rng.uniform(0.5, 2, C), rng.uniform(-1, 1, C)
    return x, G, ng, C, mean, invstd, gamma, beta


@pytest.mark.parametrize("layout", ["rows", "planes", "nhwc"])
def test_groups_outside_the_float_range_use_the_float64_formula(layout):
    """Groups whose mean or invstd the float formula cannot carry (|mean|
    below 2**-100 or above 2**100, invstd 1e150, inf) are computed with the
    float64 formula bit for bit; the other groups keep the float formula
    (which differs in the last bits)."""
    x, G, ng, C, mean, invstd, gamma, beta = _group_case(layout, 5, (40, 48), (10, 8, 6, 7))
    bad = {3: ("mean", 1e-35), 7: ("mean", 3e35), 11: ("invstd", 1e150), 13: ("mean", np.inf),
           17: ("invstd", np.nan), 19: ("mean", -2e30)}
    for k, (what, v) in bad.items():
        {"mean": mean, "invstd": invstd}[what][k] = v
    out = _grouped(_normalized(x, G, mean, invstd, gamma, beta), G)
    ref = _grouped(_double_formula(x, G, mean, invstd, gamma, beta), G)
    np.testing.assert_array_equal(out[list(bad)], ref[list(bad)])
    good = [k for k in range(ng) if k not in bad]
    assert not np.array_equal(out[good], ref[good])
    # the groups in range are those of the float formula: the same with the bad groups fixed
    fixed_mean, fixed_inv = mean.copy(), invstd.copy()
    fixed_mean[list(bad)], fixed_inv[list(bad)] = 0.5, 1.0
    fixed = _grouped(_normalized(x, G, fixed_mean, fixed_inv, gamma, beta), G)
    np.testing.assert_array_equal(out[good], fixed[good])


@pytest.mark.parametrize("layout", ["rows", "planes", "nhwc"])
@pytest.mark.parametrize("what,value", [("gamma", 1e35), ("gamma", np.nan), ("beta", 1e31),
                                        ("beta", -np.inf), ("gamma", 1e-35)])
def test_a_channel_out_of_range_moves_its_group_to_float64(layout, what, value):
    """gamma or beta out of the float range in one channel: every group that
    holds that channel (for layernorm every row) takes the float64 formula;
    the other groups keep the float formula.  A tiny gamma (1e-35, times
    invstd 2e-5 below float's normal range) is in range: the term it scales
    is below the shift's rounding."""
    x, G, ng, C, mean, invstd, gamma, beta = _group_case(layout, 9, (12, 40), (5, 8, 6, 7))
    invstd[::2] = 2e-5
    ch = 5                                     # channel 5: group 2 of 4 (channels 4, 5)
    {"gamma": gamma, "beta": beta}[what][ch] = value
    out = _grouped(_normalized(x, G, mean, invstd, gamma, beta), G)
    ref = _grouped(_double_formula(x, G, mean, invstd, gamma, beta), G)
    if what == "gamma" and value == 1e-35:
        _check_forward(x, G, mean, invstd, gamma, beta, 6 if layout == "planes" else 8)
        assert not np.array_equal(out, ref)
        return
    hit = list(range(ng)) if G is None else [k for k in range(ng) if k % G == ch // (C // G)]
    np.testing.assert_array_equal(out[hit], ref[hit])
    if G is not None:
        rest = [k for k in range(ng) if k not in hit]
        assert not np.array_equal(out[rest], ref[rest])


def test_constant_group_with_tiny_eps_gives_beta():
    """var = 0 and eps = 1e-300 make invstd = 1e150, past float's range: the
    output is beta, as the float64 formula gives, not NaN."""
    import normdrop as nd
    x = np.ones((4, 3), np.float32)
    beta = np.array([0.5, -1.0, 2.0])
    out, _ = nd.layernorm_forward(x, np.ones(3), beta, {"eps": 1e-300})
    np.testing.assert_array_equal(out, np.broadcast_to(beta.astype(np.float32), (4, 3)))
    x = np.ones((2, 4, 3, 3), np.float32)
    beta = np.array([0.5, -1.0, 2.0, 3.0])
    out, _ = nd.spatial_groupnorm_forward(x, np.ones(4), beta, 2, {"eps": 1e-300})
    np.testing.assert_array_equal(out, np.broadcast_to(
        beta.astype(np.float32).reshape(1, 4, 1, 1), (2, 4, 3, 3)))
