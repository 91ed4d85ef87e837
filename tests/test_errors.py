"""Every row of the bad-input table (DESIGN section 5) on every backend, and
bn_param exactly as it was after each error."""
from __future__ import annotations

import copy

import numpy as np
import pytest

import normdrop as nd


def _np(a):
    """A host copy of any backend's array (CuPy refuses np.asarray)."""
    if type(a).__module__.startswith("cupy"):
        return a.get()
    if type(a).__module__.startswith("torch"):
        return a.detach().numpy().copy()
    return np.array(a, copy=True)


def _snapshot(d):
    return {k: (v, _np(v) if hasattr(v, "shape") else copy.deepcopy(v))
            for k, v in d.items()}


def _assert_unchanged(d, snap):
    assert set(d) == set(snap)
    for k, (obj, val) in snap.items():
        assert d[k] is obj, f"bn_param[{k!r}] was replaced"
        if hasattr(obj, "shape"):
            np.testing.assert_array_equal(_np(obj), val)
        elif val == val:                    # (NaN is only checked by identity)
            assert d[k] == val


def _bn_case(backend, spatial=False, C=3, dtype="float64"):
    shape = (4, C, 2, 2) if spatial else (4, C)
    rng = np.random.default_rng(0)
    be = backend
    x = be.asarray(rng.standard_normal(shape).astype(dtype))
    g = be.asarray(np.ones(C))
    b = be.asarray(np.zeros(C))
    bp = {"mode": "train", "running_mean": be.asarray(np.full(C, 0.5)),
          "running_var": be.asarray(np.full(C, 2.0)), "eps": 1e-5, "momentum": 0.9}
    return x, g, b, bp


def _raises_untouched(exc, match, fn, x, g, b, bp):
    snap = _snapshot(bp)
    with pytest.raises(exc, match=match):
        fn(x, g, b, bp)
    _assert_unchanged(bp, snap)


# ----------------------------------------------------------- arrays / types
def test_not_an_array(backend):
    x, g, b, bp = _bn_case(backend)
    _raises_untouched(TypeError, "x must be an array", nd.batchnorm_forward,
                      [[1.0, 2.0, 3.0]] * 4, g, b, bp)
    _raises_untouched(TypeError, "gamma must be an array", nd.batchnorm_forward,
                      x, [1.0, 1.0, 1.0], b, bp)
    _raises_untouched(TypeError, "beta must be an array", nd.batchnorm_forward,
                      x, g, object(), bp)
    with pytest.raises(TypeError, match="x must be an array"):
        nd.dropout_forward("abc", {"p": 0.5, "mode": "train"})


def test_none_instead_of_an_array(backend):
    x, g, b, bp = _bn_case(backend)
    _raises_untouched(TypeError, "x must be an array", nd.batchnorm_forward, None, g, b, bp)
    _raises_untouched(TypeError, "gamma must be an array", nd.batchnorm_forward, x, None, b, bp)
    _raises_untouched(TypeError, "beta must be an array", nd.batchnorm_forward, x, g, None, bp)
    with pytest.raises(TypeError, match="x must be an array"):
        nd.dropout_forward(None, {"p": 0.5, "mode": "train"})
    _, cache = nd.batchnorm_forward(x, g, b, bp)
    with pytest.raises(TypeError, match="dout must be an array"):
        nd.batchnorm_backward(None, cache)
    for mode in ("train", "test"):
        _, dcache = nd.dropout_forward(x, {"p": 0.5, "mode": mode, "seed": 1})
        with pytest.raises(TypeError, match="dout must be an array"):
            nd.dropout_backward(None, dcache)


def test_mixed_libraries():
    xps = pytest.importorskip("array_api_strict")
    x = np.ones((4, 3))
    bp = {"mode": "train", "running_mean": np.zeros(3)}
    _raises_untouched(TypeError, r"x \(numpy.ndarray\).*gamma \(array_api_strict",
                      nd.batchnorm_forward, x, xps.ones(3), np.zeros(3), bp)
    _raises_untouched(TypeError, "running_var", nd.batchnorm_forward,
                      x, np.ones(3), np.zeros(3), {"mode": "train", "running_var": xps.ones(3)})
    _, cache = nd.batchnorm_forward(x, np.ones(3), np.zeros(3), {"mode": "train"})
    with pytest.raises(TypeError, match="dout"):
        nd.batchnorm_backward(xps.ones((4, 3)), cache)
    _, dcache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
    with pytest.raises(TypeError, match="dout"):
        nd.dropout_backward(xps.ones((4, 3)), dcache)


def test_mixed_devices():
    xps = pytest.importorskip("array_api_strict")
    other = xps.Device("device1")
    x = xps.ones((4, 3))
    g = xps.asarray(np.ones(3), device=other)
    bp = {"mode": "train"}
    _raises_untouched(TypeError, "different devices.*gamma", nd.batchnorm_forward,
                      x, g, xps.zeros(3), bp)


@pytest.mark.parametrize("bad", ["int64", "int32", "bool", "complex128", "uint8"])
def test_non_floating_x(backend, bad):
    x, g, b, bp = _bn_case(backend)
    xb = backend.asarray(np.ones((4, 3), dtype=bad))
    # the supported dtypes by their names (the NumPy reference's list read
    # "float32'>, float64'>, float16'>": str() of numpy.float32, the type)
    names = r"supported floating dtypes here: float(16|32|64)(, float(16|32|64))*$"
    _raises_untouched(TypeError, f"dtype {bad}; " + names, nd.batchnorm_forward, xb, g, b, bp)
    with pytest.raises(TypeError, match=f"dtype {bad}; " + names):
        nd.dropout_forward(xb, {"p": 0.5, "mode": "train"})


def test_float16_on_cpu_names_supported_dtypes():
    with pytest.raises(TypeError, match="float16.*float32, float64"):
        nd.batchnorm_forward(np.ones((4, 3), np.float16), np.ones(3), np.zeros(3),
                             {"mode": "train"})


@pytest.mark.parametrize("bad", ["bool", "complex128"])
def test_non_real_gamma(backend, bad):
    x, g, b, bp = _bn_case(backend)
    _raises_untouched(TypeError, "gamma has dtype", nd.batchnorm_forward, x,
                      backend.asarray(np.ones(3, dtype=bad)), b, bp)


# ------------------------------------------------------------------ shapes
def test_wrong_ndim(backend):
    x, g, b, bp = _bn_case(backend)
    x4, _, _, _ = _bn_case(backend, spatial=True)
    _raises_untouched(ValueError, r"\(N, D\), got shape \(4, 3, 2, 2\)",
                      nd.batchnorm_forward, x4, g, b, bp)
    _raises_untouched(ValueError, r"\(N, C, H, W\), got shape \(4, 3\)",
                      nd.spatial_batchnorm_forward, x, g, b, bp)


def test_wrong_channel_param_sizes(backend):
    be = backend
    x, g, b, bp = _bn_case(be)
    _raises_untouched(ValueError, r"gamma must have shape \(3,\).*got shape \(4,\)",
                      nd.batchnorm_forward, x, be.asarray(np.ones(4)), b, bp)
    _raises_untouched(ValueError, r"beta must have shape", nd.batchnorm_forward,
                      x, g, be.asarray(np.ones((3, 1))), bp)
    bad = dict(bp, running_mean=be.asarray(np.zeros(5)))
    _raises_untouched(ValueError, r"running_mean'\] must have shape \(3,\)",
                      nd.batchnorm_forward, x, g, b, bad)
    bad = dict(bp, running_var=be.asarray(np.zeros(2)), mode="test")
    _raises_untouched(ValueError, r"running_var'\] must have shape", nd.batchnorm_forward,
                      x, g, b, bad)
    x4, _, _, bp4 = _bn_case(be, spatial=True)
    _raises_untouched(ValueError, r"\(1, 3, 1, 1\)", nd.spatial_batchnorm_forward,
                      x4, be.asarray(np.ones((3, 1, 1))), b, bp4)


# ------------------------------------------------------------ bn_param keys
def test_mode_missing_or_invalid(backend):
    x, g, b, bp = _bn_case(backend)
    del bp["mode"]
    _raises_untouched(KeyError, "mode", nd.batchnorm_forward, x, g, b, bp)
    bp["mode"] = "eval"
    _raises_untouched(ValueError, "'train', 'test'", nd.batchnorm_forward, x, g, b, bp)
    with pytest.raises(KeyError, match="mode"):
        nd.dropout_forward(x, {"p": 0.5})
    with pytest.raises(ValueError, match="'train', 'test'"):
        nd.dropout_forward(x, {"p": 0.5, "mode": "Train"})


@pytest.mark.parametrize("p", [None, "0.5", 0, -0.1, 1.5, float("nan"), True, [0.5]])
def test_bad_p(backend, p):
    x, _, _, _ = _bn_case(backend)
    param = {"mode": "train"} if p is None else {"mode": "train", "p": p}
    snap = dict(param)
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        nd.dropout_forward(x, param)
    assert param == snap


def test_dropout_mask_bad_arguments():
    with pytest.raises(ValueError, match=r"\(0, 1\]"):
        nd.dropout_mask((3,), 0.0, 1)
    with pytest.raises(ValueError, match="2\\*\\*64"):
        nd.dropout_mask((3,), 0.5, -1)
    with pytest.raises(TypeError, match="seed"):
        nd.dropout_mask((3,), 0.5, 1.5)
    with pytest.raises(ValueError, match="negative"):
        nd.dropout_mask((3, -1), 0.5, 1)
    with pytest.raises(TypeError, match="shape"):
        nd.dropout_mask(3, 0.5, 1)
    with pytest.raises(TypeError, match="shape"):
        nd.dropout_mask((2.7, 3), 0.5, 1)


@pytest.mark.parametrize("seed,exc", [(-1, ValueError), (2**64, ValueError), (2**70, ValueError),
                                      (1.0, TypeError), ("1", TypeError), (True, TypeError)])
def test_bad_seed(backend, seed, exc):
    x, _, _, _ = _bn_case(backend)
    with pytest.raises(exc, match="seed"):
        nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": seed})


def test_seed_extremes_accepted():
    x = np.ones(10)
    nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 0})
    nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 2**64 - 1})
    nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": np.uint64(2**64 - 1)})


@pytest.mark.parametrize("key,value,exc", [
    ("eps", 0.0, ValueError), ("eps", -1e-5, ValueError), ("eps", float("nan"), ValueError),
    ("eps", float("inf"), ValueError), ("eps", "1e-5", TypeError),
    ("momentum", -0.1, ValueError), ("momentum", 1.1, ValueError),
    ("momentum", float("nan"), ValueError), ("momentum", None, TypeError)])
def test_bad_eps_momentum(backend, key, value, exc):
    x, g, b, bp = _bn_case(backend)
    bp[key] = value
    _raises_untouched(exc, key, nd.batchnorm_forward, x, g, b, bp)


def test_bn_param_not_a_dict(backend):
    x, g, b, _ = _bn_case(backend)
    with pytest.raises(TypeError, match="bn_param must be a dict"):
        nd.batchnorm_forward(x, g, b, [("mode", "train")])
    with pytest.raises(TypeError, match="dropout_param must be a dict"):
        nd.dropout_forward(x, None)


# -------------------------------------------------------- too few values
@pytest.mark.parametrize("shape", [(1, 3), (0, 3)])
def test_training_needs_more_than_one_value(backend, shape):
    be = backend
    x = be.asarray(np.ones(shape))
    _, g, b, bp = _bn_case(be)
    _raises_untouched(ValueError, "expected more than 1 value per channel when training",
                      nd.batchnorm_forward, x, g, b, bp)


@pytest.mark.parametrize("shape", [(1, 3, 1, 1), (0, 3, 4, 4), (5, 3, 0, 2)])
def test_spatial_training_needs_more_than_one_value(backend, shape):
    be = backend
    x = be.asarray(np.ones(shape))
    _, g, b, bp = _bn_case(be)
    _raises_untouched(ValueError, "expected more than 1 value per channel when training",
                      nd.spatial_batchnorm_forward, x, g, b, bp)


def test_test_mode_accepts_single_values(backend):
    be = backend
    _, g, b, bp = _bn_case(be)
    bp["mode"] = "test"
    out, _ = nd.batchnorm_forward(be.asarray(np.ones((1, 3))), g, b, bp)
    assert tuple(out.shape) == (1, 3)


# ---------------------------------------------------------------- backward
def test_backward_wrong_dout_shape_or_cache(backend):
    be = backend
    x, g, b, bp = _bn_case(be)
    _, cache = nd.batchnorm_forward(x, g, b, bp)
    with pytest.raises(ValueError, match=r"dout has shape \(4, 4\).*\(4, 3\)"):
        nd.batchnorm_backward(be.asarray(np.ones((4, 4))), cache)
    x4, g4, b4, bp4 = _bn_case(be, spatial=True)
    _, scache = nd.spatial_batchnorm_forward(x4, g4, b4, bp4)
    with pytest.raises(TypeError, match="batchnorm_forward"):
        nd.batchnorm_backward(be.asarray(np.ones((4, 3, 2, 2))), scache)
    with pytest.raises(TypeError, match="spatial_batchnorm_forward"):
        nd.spatial_batchnorm_backward(be.asarray(np.ones((4, 3))), cache)
    _, dcache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
    with pytest.raises(TypeError, match="dropout_forward"):
        nd.batchnorm_backward(be.asarray(np.ones((4, 3))), dcache)
    with pytest.raises(TypeError, match="dropout_forward"):
        nd.dropout_backward(be.asarray(np.ones((4, 3))), cache)
    with pytest.raises(ValueError, match="dout has shape"):
        nd.dropout_backward(be.asarray(np.ones((3, 4))), dcache)
    with pytest.raises(TypeError, match="cache"):
        nd.batchnorm_backward(be.asarray(np.ones((4, 3))), (1, 2, 3))
    with pytest.raises(TypeError, match="dout has dtype"):
        nd.batchnorm_backward(be.asarray(np.ones((4, 3), dtype="int64")), cache)


def test_numbers_beyond_the_float_range_are_value_errors(backend):
    """An int too large for a float as eps, momentum or p: float() raised
    OverflowError, outside the table (and, in a synchronized batchnorm,
    past the exchange of verdicts: the other ranks hung)."""
    x, g, b, bp = _bn_case(backend)
    for key, match in (("eps", r"bn_param\['eps'\] must be a finite number > 0, got an "
                               r"integer of 401 digits"),
                       ("momentum", r"bn_param\['momentum'\] must be in \[0, 1\], got an "
                                    r"integer of 401 digits")):
        for sign in (1, -1):
            bp[key] = sign * 10**400
            _raises_untouched(ValueError, match, nd.batchnorm_forward, x, g, b, bp)
        bp[key] = 0.5 if key == "momentum" else 1e-5
    with pytest.raises(ValueError, match=r"ln_param\['eps'\] must be a finite number"):
        nd.layernorm_forward(x, g, b, {"eps": 10**400})
    with pytest.raises(ValueError, match=r"p must be in \(0, 1\].*integer of 401 digits"):
        nd.dropout_forward(x, {"p": 10**400, "mode": "train"})


def test_the_empty_last_shard_may_start_at_2_to_the_64(backend):
    """offset + size <= 2**64 allows offset 2**64 for an empty array (the
    last shard of a 2**64-value batch): the C kernels raised OverflowError
    converting it to 64 bits, the reference computed."""
    x = backend.asarray(np.ones((0, 5)))
    out, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1, "offset": 2**64})
    assert tuple(out.shape) == (0, 5)
    assert tuple(nd.dropout_backward(x, cache).shape) == (0, 5)
    assert tuple(nd.dropout_mask((0,), 0.5, 7, offset=2**64, like=x).shape) == (0,)
    with pytest.raises(ValueError, match=r"offset must be in \[0, 2\*\*64 - size\] \(size 1\)"):
        nd.dropout_mask((1,), 0.5, 7, offset=2**64, like=x)
