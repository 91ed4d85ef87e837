"""Dropout on every backend, the RNG contract (DESIGN section 3) and the
cs231n notebook's statistics checks."""
from __future__ import annotations

import math
import tracemalloc

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import normdrop as nd
from normdrop import _philox
from normdrop._cpu import _kernels
from conftest import LAYOUTS_4D, _layout, oracle

KAT = [
    ((0, 0, 0, 0), (0, 0), (0x6627E8D5, 0xE169C58D, 0xBC57AC4C, 0x9B00DBD8)),
    ((0xFFFFFFFF,) * 4, (0xFFFFFFFF,) * 2, (0x408F276D, 0x41C83B0E, 0xA20BC7C6, 0x6D5451FD)),
    ((0x243F6A88, 0x85A308D3, 0x13198A2E, 0x03707344), (0xA4093822, 0x299F31D0),
     (0xD16CFE09, 0x94FDCCEB, 0x5001E420, 0x24126EA1)),
]
SEEDS = [0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32, 0x0123456789ABCDEF, 2**63, 2**64 - 1]
SHAPES = [(), (1,), (3,), (7,), (8,), (63,), (64,), (65,), (129,), (3, 5, 7), (257, 33),
          (2, 3, 4, 5)]
PS = [1e-9, 0.25, 0.5, 0.7, 0.999999, 1.0]


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_c_header(counter, key, expected):
    assert _kernels.philox4x32_10(counter, key) == expected


@pytest.mark.parametrize("counter,key,expected", KAT)
def test_philox_known_answers_reference(backend, counter, key, expected):
    xp = backend.xp
    arrs = [xp.asarray([c], dtype=xp.int64) for c in counter]
    out = _philox.philox4x32_10(xp, *arrs, key[0], key[1])
    assert tuple(int(backend.to_numpy(o)[0]) for o in out) == expected


def test_keep_threshold():
    assert _philox.keep_threshold(1.0) == 2**32
    assert _philox.keep_threshold(0.5) == 2**31
    assert _philox.keep_threshold(0.25) == 2**30
    assert _philox.keep_threshold(1e-12) == 0
    assert _philox.keep_threshold(0.1) == 429496729


def _words_python(n, seed, offset=0):
    """The contract spelled out in scalar Python: the word of each flat index
    offset, offset + 1, ..., offset + n - 1."""
    k0, k1 = seed & 0xFFFFFFFF, seed >> 32
    words = []
    for i in range(offset, offset + n):
        b = i >> 2
        c = [b & 0xFFFFFFFF, b >> 32, 0, 0]
        for r in range(10):
            rk0 = (k0 + r * 0x9E3779B9) & 0xFFFFFFFF
            rk1 = (k1 + r * 0xBB67AE85) & 0xFFFFFFFF
            p0, p1 = 0xD2511F53 * c[0], 0xCD9E8D57 * c[2]
            c = [(p1 >> 32) ^ c[1] ^ rk0, p1 & 0xFFFFFFFF, (p0 >> 32) ^ c[3] ^ rk1,
                 p0 & 0xFFFFFFFF]
        words.append(c[i & 3])
    return words


@pytest.mark.parametrize("seed", [0, 7, 2**32 + 5, 2**64 - 1])
def test_mask_follows_the_contract_spelled_out(seed):
    n = 37
    for p in (0.3, 0.5, 1.0):
        t = math.floor(p * 2**32)
        expected = np.array([w < t for w in _words_python(n, seed)])
        np.testing.assert_array_equal(nd.dropout_mask((n,), p, seed), expected)
        np.testing.assert_array_equal(oracle(nd.dropout_mask, (n,), p, seed), expected)


@pytest.mark.parametrize("seed", SEEDS)
def test_mask_c_equals_reference_many_seeds_shapes_p(seed):
    import array_api_strict as xps
    like = xps.asarray([0.0])
    for shape in SHAPES:
        for p in PS:
            m_c = nd.dropout_mask(shape, p, seed)
            m_ref = oracle(nd.dropout_mask, shape, p, seed)
            m_strict = np.asarray(nd.dropout_mask(shape, p, seed, like=like))
            assert m_c.shape == shape and m_c.dtype == np.bool_
            np.testing.assert_array_equal(m_c, m_ref, err_msg=f"{shape} p={p}")
            np.testing.assert_array_equal(m_c, m_strict, err_msg=f"{shape} p={p}")
            if p == 1.0:
                assert m_c.all()


@settings(max_examples=60, deadline=None)
@given(n=st.integers(0, 5000), seed=st.integers(0, 2**64 - 1),
       p=st.floats(1e-6, 1.0, exclude_min=False))
def test_hypothesis_bits_c_equal_reference(n, seed, p):
    x = np.ones(n, np.float32)
    out, cache = nd.dropout_forward(x, {"p": p, "mode": "train", "seed": seed})
    rout, rcache = oracle(nd.dropout_forward, x, {"p": p, "mode": "train", "seed": seed})
    np.testing.assert_array_equal(cache.bits, rcache.bits)
    np.testing.assert_array_equal(out, rout)


def test_large_mask_c_equals_reference():
    """Many Philox blocks, the threaded path and a ragged tail."""
    shape = (1031, 517)
    for seed in (3, 2**64 - 1):
        np.testing.assert_array_equal(nd.dropout_mask(shape, 0.37, seed),
                                      oracle(nd.dropout_mask, shape, 0.37, seed))


@pytest.mark.parametrize("layout", LAYOUTS_4D)
def test_forward_backward_match_reference_exactly(backend, dtype, layout):
    """Outputs are x * (1/p rounded to x's dtype) where kept: bit-identical to
    the reference, whatever the memory layout (the mask follows the logical
    C-order index)."""
    be = backend
    rng = np.random.default_rng(0)
    x = rng.standard_normal((3, 4, 5, 7)).astype(dtype)
    dout = rng.standard_normal(x.shape).astype(dtype)
    param = {"p": 0.6, "mode": "train", "seed": 2024}
    out, cache = nd.dropout_forward(be.asarray(x, layout), dict(param))
    rout, rcache = oracle(nd.dropout_forward, x, dict(param))
    np.testing.assert_array_equal(be.to_numpy(out), rout)
    np.testing.assert_array_equal(be.to_numpy(cache.bits), rcache.bits)
    dx = nd.dropout_backward(be.asarray(dout, layout), cache)
    np.testing.assert_array_equal(be.to_numpy(dx), oracle(nd.dropout_backward, dout, rcache))
    keep = nd.dropout_mask(x.shape, 0.6, 2024)
    s = np.asarray(1 / 0.6, dtype=dtype)
    np.testing.assert_array_equal(rout, np.where(keep, x * s, 0))


@pytest.mark.parametrize("p", [0.25, 0.4, 0.7])
def test_cs231n_zero_fraction_and_mean(backend, p):
    """cs231n: on a 500x500 input the fraction of zeros is ~ 1 - p and the mean
    of the output is ~ the mean of the input (binomial bounds, 6 sigma)."""
    be = backend
    rng = np.random.default_rng(231)
    x = rng.standard_normal((500, 500)) + 10
    out, _ = nd.dropout_forward(be.asarray(x), {"p": p, "mode": "train", "seed": 123})
    o = be.to_numpy(out)
    n = x.size
    zero_frac = float(np.mean(o == 0))
    assert abs(zero_frac - (1 - p)) < 6 * math.sqrt(p * (1 - p) / n)
    se = math.sqrt(float(np.mean(x * x)) * (1 / p - 1) / n)
    assert abs(float(o.mean()) - float(x.mean())) < 6 * se
    test_out, _ = nd.dropout_forward(be.asarray(x), {"p": p, "mode": "test"})
    np.testing.assert_array_equal(be.to_numpy(test_out), x)


def test_zero_dimensional_input(backend):
    be = backend
    x = be.asarray(np.asarray(2.5))
    out, cache = nd.dropout_forward(x, {"p": 1.0, "mode": "train", "seed": 0})
    assert tuple(out.shape) == ()
    assert float(be.to_numpy(out)) == 2.5
    assert tuple(nd.dropout_backward(x, cache).shape) == ()


def test_numpy_scalars_are_accepted():
    x = np.float64(2.5)
    out, cache = nd.dropout_forward(x, {"p": 1.0, "mode": "train", "seed": 0})
    assert out.shape == () and float(out) == 2.5
    assert float(nd.dropout_backward(out * 1.0, cache)) == 2.5


def test_test_mode_passes_through(backend):
    be = backend
    x = be.asarray(np.arange(12.0).reshape(3, 4))
    out, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "test"})
    assert out is x
    assert cache.bits is None
    d = be.asarray(np.ones((3, 4)))
    assert nd.dropout_backward(d, cache) is d


def test_test_mode_backward_has_the_forwards_dtype(backend, dtype):
    """dout of the other float dtype is cast to the forward's (test mode
    returned it as it came, training cast it)."""
    be = backend
    other = "float32" if dtype == "float64" else "float64"
    x = be.asarray(np.arange(12.0).reshape(3, 4).astype(dtype))
    d = be.asarray(np.linspace(-1, 1, 12).reshape(3, 4).astype(other))
    for mode in ("test", "train"):
        _, cache = nd.dropout_forward(x, {"p": 1.0, "mode": mode, "seed": 0})
        dx = nd.dropout_backward(d, cache)
        assert str(dx.dtype).rsplit(".", 1)[-1] == dtype, mode
        np.testing.assert_array_equal(be.to_numpy(dx),
                                      np.linspace(-1, 1, 12).reshape(3, 4).astype(other)
                                      .astype(dtype))


def test_p_one_keeps_everything(backend):
    be = backend
    x = np.random.default_rng(1).standard_normal((33, 17))
    out, cache = nd.dropout_forward(be.asarray(x), {"p": 1.0, "mode": "train", "seed": 5})
    np.testing.assert_array_equal(be.to_numpy(out), x)
    np.testing.assert_array_equal(be.to_numpy(nd.dropout_backward(be.asarray(x), cache)), x)


def test_seed_from_numpy_global_generator():
    x = np.ones((50, 50))
    np.random.seed(7)
    a, ca = nd.dropout_forward(x, {"p": 0.5, "mode": "train"})
    b, cb = nd.dropout_forward(x, {"p": 0.5, "mode": "train"})
    np.random.seed(7)
    c, cc = nd.dropout_forward(x, {"p": 0.5, "mode": "train"})
    np.testing.assert_array_equal(a, c)
    assert ca.seed == cc.seed and ca.seed != cb.seed
    assert not np.array_equal(a, b)


def test_explicit_seed_leaves_global_state_alone():
    np.random.seed(11)
    before = np.random.get_state()[1].copy()
    param = {"p": 0.5, "mode": "train", "seed": 99}
    nd.dropout_forward(np.ones(100), param)
    np.testing.assert_array_equal(np.random.get_state()[1], before)
    assert param == {"p": 0.5, "mode": "train", "seed": 99}


def test_cache_holds_one_bit_per_value():
    for shape in [(1,), (9,), (4096,), (31, 77)]:
        x = np.ones(shape, np.float32)
        _, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
        n = math.prod(shape)
        assert cache.bits.dtype == np.uint8
        assert cache.bits.nbytes == (n + 7) // 8
        arrays = [getattr(cache, s) for s in cache.__slots__
                  if isinstance(getattr(cache, s), np.ndarray)]
        assert sum(a.nbytes for a in arrays) == (n + 7) // 8


def test_forward_allocates_only_out_and_bits():
    x = np.random.default_rng(0).standard_normal((512, 1024)).astype(np.float32)
    nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})      # warm up
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    expected = out.nbytes + cache.bits.nbytes
    assert expected <= peak < expected + 16384, (peak, expected)


def test_noncontiguous_input_uses_logical_order():
    x = np.random.default_rng(0).standard_normal((40, 30))
    param = {"p": 0.5, "mode": "train", "seed": 3}
    a, _ = nd.dropout_forward(x, dict(param))
    b, _ = nd.dropout_forward(np.asfortranarray(x), dict(param))
    c, _ = nd.dropout_forward(_layout(x, "noncontiguous"), dict(param))
    np.testing.assert_array_equal(a, b)
    np.testing.assert_array_equal(a, c)


def test_dout_dtype_is_cast_to_forward_dtype():
    x = np.ones((10, 10), np.float32)
    _, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 3})
    dx = nd.dropout_backward(np.ones((10, 10)), cache)
    assert dx.dtype == np.float32
