"""The common call's few-comparison checks (_api._prepare_common,
_api._backward_args_common) against the full ones (_api._prepare,
_api._backward_args): where they answer, they answer what the full checks
answer; everywhere else they decline, so that the full checks report."""
import pickle

import numpy as np
import pytest

import normdrop as nd
from normdrop import _api as A

_FIELDS = ("mode", "eps", "momentum", "gamma_shape", "C", "geom")


def _bn(dt=np.float32, N=6, C=5, **param):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((N, C)).astype(dt)
    g = rng.standard_normal(C).astype(dt)
    b = rng.standard_normal(C).astype(dt)
    p = {"mode": "train", "running_mean": np.zeros(C, dt), "running_var": np.ones(C, dt)}
    p.update(param)
    return x, g, b, p


COMMON = [
    ("bn f32", A._BATCHNORM, _bn(), None),
    ("bn f64 test", A._BATCHNORM, _bn(np.float64, mode="test"), None),
    ("bn no running", A._BATCHNORM, _bn(running_mean=None, running_var=None), None),
    ("bn f64 running of f32 x", A._BATCHNORM,
     _bn(running_mean=np.zeros(5), running_var=np.ones(5, np.int64)), None),
    ("bn eps momentum", A._BATCHNORM, _bn(eps=1e-3, momentum=0.0), None),
    ("spatial", A._SPATIAL_BATCHNORM,
     (np.ones((2, 3, 4, 5), np.float32), np.ones(3, np.float32), np.zeros(3, np.float32),
      {"mode": "train"}), None),
    ("layernorm 3-d", A._LAYERNORM,
     (np.ones((2, 3, 4)), np.ones(4), np.zeros(4), {"mode": "train"}), None),
    ("layernorm 1 row", A._LAYERNORM,
     (np.ones((1, 4)), np.ones(4), np.zeros(4), {}), None),
    ("bn unpickled arrays", A._BATCHNORM,
     tuple(pickle.loads(pickle.dumps(a)) for a in _bn()), None),
    ("groupnorm", A._SPATIAL_GROUPNORM,
     (np.ones((2, 6, 3, 3)), np.ones(6), np.zeros(6), {}), 3),
]


@pytest.mark.parametrize("name,spec,args,extra", COMMON, ids=[c[0] for c in COMMON])
def test_answers_what_prepare_answers(name, spec, args, extra):
    x, g, b, p = args
    fast = A._prepare_common(spec, x, g, b, p, extra)
    assert fast is not None, "the common call takes the quick check"
    full = A._prepare(spec, x, g, b, p, extra, check_count=True)
    for f in _FIELDS:
        assert getattr(fast, f) == getattr(full, f), f
    assert fast.route is full.route
    for f in ("xn", "g", "b", "rm", "rv"):
        a, e = getattr(fast, f), getattr(full, f)
        if e is None:
            assert a is None, f
        else:
            assert a.dtype == e.dtype and a.shape == e.shape, f
            assert np.shares_memory(a, e) or a.size == 0, f   # the same data, no copy


def _declined():
    x, g, b, p = _bn()
    cases = {
        "param not a dict": (x, g, b, type("M", (dict,), {})(p)),
        "float16 x": (x.astype(np.float16), g, b, p),
        "big-endian x": (x.astype(">f4"), g, b, p),
        "x a subclass": (x.view(np.memmap), g, b, p),
        "x 3-d": (x[None], g, b, p),
        "gamma (1, C)": (x, g[None], b, p),
        "gamma float64": (x, g.astype(np.float64), b, p),
        "beta a list": (x, g, list(b), p),
        "gamma wrong size": (x, g[:-1], b, p),
        "mode missing": (x, g, b, {k: v for k, v in p.items() if k != "mode"}),
        "mode bad": (x, g, b, {**p, "mode": "eval"}),
        "mode a str subclass": (x, g, b, {**p, "mode": type("S", (str,), {})("train")}),
        "eps int": (x, g, b, {**p, "eps": 1}),
        "eps 0": (x, g, b, {**p, "eps": 0.0}),
        "eps nan": (x, g, b, {**p, "eps": float("nan")}),
        "eps inf": (x, g, b, {**p, "eps": float("inf")}),
        "momentum 1.5": (x, g, b, {**p, "momentum": 1.5}),
        "momentum numpy float": (x, g, b, {**p, "momentum": np.float64(0.5)}),
        "running_mean bool": (x, g, b, {**p, "running_mean": np.zeros(5, bool)}),
        "running_var (1, C)": (x, g, b, {**p, "running_var": np.ones((1, 5), np.float32)}),
        "running_var a list": (x, g, b, {**p, "running_var": [1.0] * 5}),
        "one row in training": (x[:1], g, b, p),
    }
    return cases


@pytest.mark.parametrize("case", sorted(_declined()))
def test_declines_everything_else(case):
    x, g, b, p = _declined()[case]
    assert A._prepare_common(A._BATCHNORM, x, g, b, p, None) is None


def test_declines_when_the_reference_is_forced():
    x, g, b, p = _bn()
    with nd.force_reference():
        assert A._prepare_common(A._BATCHNORM, x, g, b, p, None) is None


@pytest.mark.parametrize("G", [4, 0, -3, True, 3.0, np.int64(3)])
def test_groupnorm_declines_all_but_a_divisor(G):
    x = np.ones((2, 6, 3, 3))
    got = A._prepare_common(A._SPATIAL_GROUPNORM, x, np.ones(6), np.zeros(6), {}, G)
    assert got is None


def test_declined_calls_still_raise_the_tables_errors():
    x, g, b, p = _bn()
    before = {k: (v.copy() if hasattr(v, "copy") else v) for k, v in p.items()}
    with pytest.raises(ValueError, match=r"bn_param\['eps'\]"):
        nd.batchnorm_forward(x, g, b, {**p, "eps": 0.0})
    with pytest.raises(ValueError, match="more than 1 value per channel"):
        nd.batchnorm_forward(x[:1], g, b, p)
    with pytest.raises(ValueError, match="gamma must have shape"):
        nd.batchnorm_forward(x, g[:-1], b, p)
    assert p.keys() == before.keys()
    for k in p:
        assert np.array_equal(p[k], before[k])


# ------------------------------------------------------------ the backward
def _cache(dt=np.float32, **param):
    x, g, b, p = _bn(dt, **param)
    out, cache = nd.batchnorm_forward(x, g, b, p)
    return np.ones_like(out), cache


def _edited(cache, **fields):
    """A copy of cache with some fields replaced (as a hand-edited pickle)."""
    values = [fields.get(f.lstrip("_"), getattr(cache, f)) for f in cache._fields]   # (_x: x)
    return A._restore_cache(type(cache), tuple(values))


@pytest.mark.parametrize("dt", [np.float32, np.float64])
@pytest.mark.parametrize("mode", ["train", "test"])
def test_backward_answers_what_the_full_check_answers(dt, mode):
    dout, cache = _cache(dt, mode=mode)
    fast = A._backward_args_common(dout, cache)
    assert fast is not None, "the common backward takes the quick check"
    A._backward_args_common, saved = (lambda d, c: None), A._backward_args_common
    try:
        full = A._backward_args("batchnorm_backward", dout, cache)
    finally:
        A._backward_args_common = saved
    assert fast[0] is full[0]
    assert fast[1] is full[1]


def test_an_unpickled_cache_takes_the_quick_check():
    """An unpickled array's dtype equals NumPy's float32 but is another object."""
    dout, cache = _cache()
    back = pickle.loads(pickle.dumps(cache))
    assert back.x.dtype is not cache.x.dtype and back.x.dtype == cache.x.dtype
    fast = A._backward_args_common(dout, back)
    assert fast is not None and fast[1] is dout
    np.testing.assert_array_equal(nd.batchnorm_backward(dout, back)[0],
                                  nd.batchnorm_backward(dout, cache)[0])


def _backward_declined():
    dout, cache = _cache()
    big_x = np.ones((6, 5), ">f4")
    _, big = nd.batchnorm_forward(big_x, np.ones(5, np.float32), np.zeros(5, np.float32),
                                  {"mode": "train"})
    with nd.force_reference():
        _, ref = nd.batchnorm_forward(np.ones((6, 5), np.float32), np.ones(5, np.float32),
                                      np.zeros(5, np.float32), {"mode": "train"})
    return {
        "dout float64": (dout.astype(np.float64), cache),
        "dout a list": (dout.tolist(), cache),
        "dout wrong shape": (dout[:-1], cache),
        "dout a subclass": (dout.view(np.memmap), cache),
        "x big-endian": (np.ones((6, 5), ">f4"), big),
        "a cache of the reference": (dout, ref),
        "mean float32": (dout, _edited(cache, mean=cache.mean.astype(np.float32))),
        "invstd wrong size": (dout, _edited(cache, invstd=cache.invstd[:-1])),
        "gamma float64": (dout, _edited(cache, gamma=cache.gamma.astype(np.float64))),
        "x reshaped": (dout, _edited(cache, x=cache.x.reshape(5, 6))),
    }


@pytest.mark.parametrize("case", sorted(_backward_declined()))
def test_backward_declines_everything_else(case):
    dout, cache = _backward_declined()[case]
    assert A._backward_args_common(dout, cache) is None


def test_backward_declines_when_the_reference_is_forced():
    dout, cache = _cache()
    with nd.force_reference():
        assert A._backward_args_common(dout, cache) is None


def _full_backward_args(dout, cache):
    saved = A._backward_args_common
    A._backward_args_common = lambda d, c: None
    try:
        return A._backward_args("batchnorm_backward", dout, cache)
    finally:
        A._backward_args_common = saved


@pytest.mark.parametrize("library", ["torch", "jax"])
def test_backward_of_other_libraries_answers_what_the_full_check_answers(library):
    if library == "torch":
        torch = pytest.importorskip("torch")
        x, g, b, p = _tensors(torch, grad=True)
        dout = torch.ones(6, 5, requires_grad=True)
        others = [dout.double(), dout.to(torch.bfloat16), dout[:-1], dout.numpy(force=True)]
    else:
        jnp = pytest.importorskip("jax.numpy")
        x, g, b, p = (jnp.ones((6, 5), jnp.float32), jnp.ones(5, jnp.float32),
                      jnp.zeros(5, jnp.float32), {"mode": "train"})
        dout = jnp.ones((6, 5), jnp.float32)
        others = [dout[:-1], np.ones((6, 5), np.float32), dout.astype(jnp.bfloat16)]
    _, cache = nd.batchnorm_forward(x, g, b, p)
    fast = A._backward_args_common(dout, cache)
    assert fast is not None, "the common backward takes the quick check"
    full = _full_backward_args(dout, cache)
    assert (fast[0].backend, fast[0].xp, fast[0].adapter) == \
        (full[0].backend, full[0].xp, full[0].adapter)
    assert type(fast[1]) is np.ndarray and np.shares_memory(fast[1], full[1])
    for other in others:            # another dtype, shape or library: the full checks
        assert A._backward_args_common(other, cache) is None
    with nd.force_reference():
        assert A._backward_args_common(dout, cache) is None
    for other in others:
        quick, full_outcome = _public_outcome(lambda: nd.batchnorm_backward(other, cache))
        assert quick[0] == full_outcome[0] and quick[1] == full_outcome[1]
        for a, e in zip(quick[2], full_outcome[2]):
            np.testing.assert_array_equal(a, e)


def test_declined_backwards_still_raise_the_tables_errors():
    dout, cache = _cache()
    with pytest.raises(ValueError, match="dout has shape"):
        nd.batchnorm_backward(dout[:-1], cache)
    with pytest.raises(ValueError, match="cache was changed"):
        nd.batchnorm_backward(dout, _edited(cache, mean=cache.mean.astype(np.float32)))
    with pytest.raises(TypeError, match="dout"):
        nd.batchnorm_backward(dout.astype(np.int32), cache)


# ------------------------------------------- odd objects: the full checks report
class _EpsLikeKey:
    """A key that hashes as 'eps' and cannot be compared."""

    def __hash__(self):
        return hash("eps")

    def __eq__(self, other):
        raise RuntimeError("this key cannot be compared")


class _RaisingTuple(tuple):
    def __ne__(self, other):
        raise RuntimeError("this shape cannot be compared")

    __eq__ = __ne__
    __hash__ = tuple.__hash__


def _public_error(call):
    """(type, message) of what call raises, with and without the quick checks."""
    outcomes = _public_outcome(call)
    assert all(kind is not None for kind, _, _ in outcomes), "the call raises"
    return [(kind, message) for kind, message, _ in outcomes]


def _public_outcome(call):
    """What call gives, with and without the quick checks: (error type,
    message, ()) or (None, "", its arrays as NumPy arrays)."""
    seen = []
    saved = A._prepare_common, A._backward_args_common
    for quick in (True, False):
        if not quick:
            A._prepare_common = A._backward_args_common = lambda *a: None
        try:
            got = call()
            seen.append((None, "", tuple(np.asarray(a) for a in got)))
        except Exception as exc:  # noqa: BLE001 - the outcome compared
            seen.append((type(exc), str(exc), ()))
        finally:
            A._prepare_common, A._backward_args_common = saved
    return seen


def test_an_odd_param_key_is_reported_by_the_full_checks():
    x, g, b, _ = _bn()
    for p in ({_EpsLikeKey(): 1, "mode": "eval"}, {_EpsLikeKey(): 1}):
        assert A._prepare_common(A._BATCHNORM, x, g, b, p, None) is None
        quick, full = _public_error(lambda: nd.batchnorm_forward(x, g, b, p))
        assert quick == full


@pytest.mark.parametrize("out_shape", [np.array([6, 5]), _RaisingTuple((6, 5))],
                         ids=["ndarray", "tuple subclass"])
def test_an_odd_cached_shape_is_reported_by_the_full_checks(out_shape):
    dout, cache = _cache()
    edited = _edited(cache, out_shape=out_shape)
    bad = np.ones((6, 4), np.float32)
    for d in (dout, bad):
        assert A._backward_args_common(d, edited) is None
    quick, full = _public_error(lambda: nd.batchnorm_backward(bad, edited))
    assert quick == full


@pytest.mark.parametrize("geom", [None, (6, 5, 1, 0)], ids=["None", "plain tuple"])
def test_an_odd_cached_geometry_is_the_cache_error(geom):
    dout, cache = _cache()
    edited = _edited(cache, geom=geom)
    assert A._backward_args_common(dout, edited) is None
    with pytest.raises(ValueError, match="cache was changed"):
        nd.batchnorm_backward(dout, edited)


# --------------------------------------- other libraries' arrays on the C kernels
def _tensors(torch, dt=None, grad=False, **param):
    x, g, b, p = _bn(**param)
    t = {k: (torch.from_numpy(v) if isinstance(v, np.ndarray) else v) for k, v in p.items()}
    gt = torch.nn.Parameter(torch.from_numpy(g)) if grad else torch.from_numpy(g)
    return torch.from_numpy(x), gt, torch.from_numpy(b), t


def _same_prepared(spec, x, g, b, p, extra=None):
    fast = A._prepare_common(spec, x, g, b, p, extra)
    assert fast is not None, "the common call takes the quick checks"
    full = A._prepare(spec, x, g, b, p, extra, check_count=True)
    for f in _FIELDS:
        assert getattr(fast, f) == getattr(full, f), f
    assert fast.route.adapter is full.route.adapter and fast.route.backend is full.route.backend
    for f in ("xn", "g", "b", "rm", "rv"):
        a, e = getattr(fast, f), getattr(full, f)
        assert (a is None) == (e is None), f
        if e is not None:
            assert type(a) is np.ndarray and a.dtype == e.dtype and a.shape == e.shape, f
            assert np.shares_memory(a, e), f


@pytest.mark.parametrize("grad", [False, True], ids=["plain", "parameter"])
def test_tensors_answer_what_prepare_answers(grad):
    torch = pytest.importorskip("torch")
    _same_prepared(A._BATCHNORM, *_tensors(torch, grad=grad))
    _same_prepared(A._BATCHNORM, *_tensors(torch, mode="test", running_mean=None))
    x = torch.randn(2, 3, 4, dtype=torch.float64)
    _same_prepared(A._LAYERNORM, x, torch.ones(4, dtype=torch.float64),
                   torch.zeros(4, dtype=torch.float64), {})


def test_jax_arrays_answer_what_prepare_answers():
    jnp = pytest.importorskip("jax.numpy")
    x = jnp.ones((2, 3, 4), dtype=jnp.float32)
    _same_prepared(A._LAYERNORM, x, jnp.ones(4, dtype=jnp.float32),
                   jnp.zeros(4, dtype=jnp.float32), {})


def test_tensors_decline_everything_else():
    torch = pytest.importorskip("torch")
    x, g, b, p = _tensors(torch)
    for args in ((x.to(torch.bfloat16), g, b, p), (x.double(), g, b, p),
                 (x, g.double(), b, p), (x, g, b.numpy(), p), (x, g, b, {**p, "eps": 0}),
                 (x, g, b, {**p, "running_mean": p["running_mean"].numpy()}),
                 (x.T, g, b, p), (x[:1], g, b, p)):
        assert A._prepare_common(A._BATCHNORM, *args, None) is None
    with nd.force_reference():
        assert A._prepare_common(A._BATCHNORM, x, g, b, p, None) is None


def test_declined_tensor_calls_raise_what_the_full_checks_raise():
    torch = pytest.importorskip("torch")
    x, g, b, p = _tensors(torch)
    for args in ((x.to(torch.bfloat16), g, b, {**p, "mode": "eval"}),
                 (x, g, b.numpy(), p), (x[:1], g, b, p), (x, g[:-1], b, p)):
        quick, full = _public_error(lambda: nd.batchnorm_forward(*args))
        assert quick == full
