"""Error bounds of the CPU float32 elementwise passes, after float64 statistics.

- forward, out = (x - mean) * scale + shift, runs in float with the mean
  split into two floats (mean = mh + ml): five roundings, so
  |out - exact| <= 6 u (|(x - mean) * scale| + |shift|);
- backward, dx = a * dout + b * (x - mean) + e, runs in double and is rounded
  once (its terms cancel: dx sums to 0 in training), so
  |dx - exact| <= u |exact| + 2**-44 (|a * dout| + |b * (x - mean)| + |e|)
  (2**-44 leaves room for the float64 sums' order, far below float32's 2**-24);

u = 2**-24, `exact` in float64 from the same float64 mean and coefficients.
The forward bound fails for a mean kept as one float, the backward one for dx
computed in float (both checked by mutation)."""
from __future__ import annotations

import numpy as np
import pytest

from normdrop._contract import channels_geometry
from normdrop._cpu import _backend as _cpu
from normdrop._cpu import _kernels as _k

_AFF_TILE = 1024   # ND_AFF_TILE (src_c/nd_norm_channel.h): channels per float32 affine tile

U = 2.0 ** -24


def _geometry(x):
    return _cpu._geometry(x, channels_geometry(x.shape))


def _affine(x, out, geom, mean, scale, shift):
    """out = (x - mean) * scale + shift by nd_normalize (gamma = 1, so its
    per-channel scale gamma * invstd is exactly `scale`)."""
    _k.normalize(x, out, geom, mean, scale, np.ones_like(scale), shift)


def _check(x, mean, scale, shift):
    x, geom = _geometry(x)
    out = np.empty_like(x)
    _affine(x, out, geom, mean, scale, shift)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    m, a, b = (v.reshape(shape) for v in (mean, scale, shift))
    term = (x.astype(np.float64) - m) * a
    exact = term + b
    err = np.abs(out.astype(np.float64) - exact)
    bound = 6 * U * (np.abs(term) + np.abs(b))
    assert (err <= bound).all(), float(np.max(err / np.maximum(bound, 1e-300)))
    return float(np.max(err / np.maximum(np.abs(exact), 1e-30)))


def _check_dx(x, dout, mean, invstd, gamma):
    x, geom = _geometry(x)
    dout = _cpu._like(dout, x)
    dx = np.empty_like(x)
    _k.norm_bwd(dout, x, dx, geom, mean, invstd, gamma, True)
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    M = x.size // x.shape[1]
    d64, xm = dout.astype(np.float64), x.astype(np.float64) - mean.reshape(shape)
    sdy, sdyxm = d64.sum(axis=axes), (d64 * xm).sum(axis=axes)   # the kernel's sums, up to order
    a = gamma * invstd
    b = -a * invstd * (sdyxm * invstd) / M
    e = -a * sdy / M
    t1, t2 = a.reshape(shape) * d64, b.reshape(shape) * xm
    exact = t1 + t2 + e.reshape(shape)
    err = np.abs(dx.astype(np.float64) - exact)
    bound = U * np.abs(exact) + 2.0 ** -44 * (np.abs(t1) + np.abs(t2) + np.abs(e.reshape(shape)))
    assert (err <= bound).all(), float(np.max(err / np.maximum(bound, 1e-300)))


@pytest.mark.parametrize("stream", [False, True])
@pytest.mark.parametrize("shape", [(300, 37), (2, 5, 33, 31), (64, 1030)])
@pytest.mark.parametrize("center", [0.0, 1e4, -3e7])
def test_float32_error_bounds(shape, center, stream):
    rng = np.random.default_rng(len(shape) + int(abs(center)) % 97)
    C = shape[1]
    spread = abs(center) * 1e-6 if center else 3.0   # std 1e-6 of the mean: 1e-2 at 1e4
    x = (center + spread * rng.standard_normal(shape)).astype(np.float32)
    axes = (0,) if x.ndim == 2 else (0, 2, 3)
    mean = x.astype(np.float64).mean(axis=axes)
    scale = rng.uniform(0.5, 2.0, C) / x.astype(np.float64).std(axis=axes)
    shift = rng.uniform(-1, 1, C)
    old = _k.get_stream_bytes()
    _k.set_stream_bytes(0 if stream else 2**62)
    try:
        dout = rng.standard_normal(shape).astype(np.float32)
        invstd = 1 / x.astype(np.float64).std(axis=axes)
        gamma = rng.uniform(0.5, 2.0, C)
        layouts = [x]
        if x.ndim == 4:   # channels-last memory too
            layouts.append(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
        for xl in layouts:
            _check(xl, mean, scale, shift)
            _check_dx(xl, dout, mean, invstd, gamma)
    finally:
        _k.set_stream_bytes(old)



def _double_formula(x, mean, scale, shift):
    shape = (1, -1) if x.ndim == 2 else (1, -1, 1, 1)
    m, a, b = (v.reshape(shape) for v in (mean, scale, shift))
    with np.errstate(all="ignore"):
        return ((x.astype(np.float64) - m) * a + b).astype(np.float32)


@pytest.mark.parametrize("ndim", [2, 4])
def test_channels_outside_the_float_range_use_the_float64_formula(ndim):
    """Channels whose mean, scale or shift the float formula cannot carry
    (|mean| below 2**-100 or above 2**100, huge scale, inf) are computed with
    the float64 formula, bit for bit; in the 2-D layout a whole tile of
    _AFF_TILE channels switches, so its other channels match the float64
    formula too."""
    rng = np.random.default_rng(11)
    T = _AFF_TILE
    C = T + 300   # the last tile's first 260 channels are normal: they switch too
    shape = (16, C) if ndim == 2 else (2, C, 3, 5)
    x = rng.standard_normal(shape).astype(np.float32)
    mean = rng.uniform(-1, 1, C)
    scale = rng.uniform(0.5, 2, C)
    shift = rng.uniform(-1, 1, C)
    bad = {T + 260: ("mean", 1e-35), T + 270: ("mean", 3e35), T + 280: ("scale", 1e150),
           T + 290: ("mean", np.inf)}
    for c, (what, v) in bad.items():
        {"mean": mean, "scale": scale}[what][c] = v
    x_, geom = _geometry(x)
    out = np.empty_like(x_)
    with np.errstate(all="ignore"):
        _affine(x_, out, geom, mean, scale, shift)
    ref = _double_formula(x_, mean, scale, shift)
    switched = list(range(T, C)) if ndim == 2 else list(bad)
    np.testing.assert_array_equal(out[:, switched], ref[:, switched])
    # the other channels keep the float formula (which differs in the last bits)
    assert not np.array_equal(out[:, :T], ref[:, :T])


def test_constant_channel_with_tiny_eps_gives_beta():
    """var = 0 and eps = 1e-300 make 1/std = 1e150, past float's range: the
    output is beta, as the float64 formula gives, not NaN."""
    import normdrop as nd
    x = np.ones((8, 3), np.float32)
    beta = np.array([0.5, -1.0, 2.0])
    out, _ = nd.batchnorm_forward(x, np.ones(3), beta, {"mode": "train", "eps": 1e-300})
    np.testing.assert_array_equal(out, np.broadcast_to(beta.astype(np.float32), (8, 3)))
