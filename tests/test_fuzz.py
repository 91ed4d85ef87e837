"""Fuzzing the public API with valid and invalid arguments mixed (DESIGN
section 5): shapes, dtypes (ints, bool, complex, float16 too), memory
layouts, gamma/beta shapes and dtypes, eps/momentum/p/seed values, modes,
running statistics, G, dout and caches, for every normalization op and
dropout, forward then backward.

For every call on NumPy arrays (the C kernels): either a result equal to the
reference's (``normdrop.force_reference()``, within conftest's TOLERANCES)
or one of the documented exceptions (TypeError, ValueError, KeyError) --
never another exception or a crash -- and after an error the param dict is
exactly as it was (same keys, same objects, same contents); the inputs are
never modified.  A fixed number of derandomized examples, so CI runs the
same ones every time."""
from __future__ import annotations

import contextlib
import dataclasses
import math

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import normdrop as nd
from conftest import TOLERANCES, _layout

ALLOWED = (TypeError, ValueError, KeyError)
NORM_OPS = {
    "batchnorm": (nd.batchnorm_forward, nd.batchnorm_backward, "bn_param"),
    "spatial_batchnorm": (nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward,
                          "bn_param"),
    "layernorm": (nd.layernorm_forward, nd.layernorm_backward, "ln_param"),
    "spatial_groupnorm": (nd.spatial_groupnorm_forward, nd.spatial_groupnorm_backward,
                          "gn_param"),
}
BACKWARDS = {"dropout": nd.dropout_backward,
             **{k: v[1] for k, v in NORM_OPS.items()}}
ABSENT = object()   # a key left out of the param dict


# ---------------------------------------------------------------- strategies
# Each argument has a strategy of valid values and one of invalid (or odd)
# ones; a call corrupts a few of its arguments (often none), so that both
# results and every error are reached.
def _good_shape(op):
    if op in ("spatial_batchnorm", "spatial_groupnorm"):
        return st.tuples(st.integers(1, 4), st.integers(1, 6), st.integers(1, 4),
                         st.integers(1, 4))
    if op == "batchnorm":
        return st.tuples(st.integers(1, 6), st.integers(1, 5))
    if op == "layernorm":
        return st.lists(st.integers(1, 5), min_size=1, max_size=3).map(tuple)
    return st.lists(st.integers(0, 6), min_size=0, max_size=4).map(tuple)


BAD_SHAPE = st.lists(st.integers(0, 4), min_size=0, max_size=5).map(tuple)
JUNK_NUMBERS = st.sampled_from([0.0, -1.0, math.nan, math.inf, -math.inf, "0.5", True, None,
                                np.float32(0.3), np.int64(1), [0.5], 2**70])
GOOD_PDTYPES = st.sampled_from(["float64", "float32", "int64", "float16", "uint8"])
BAD_PDTYPES = st.sampled_from(["bool", "complex128"])


def _pshapes(C, spatial):
    good = [(C,), (1, C)] + ([(1, C, 1, 1)] if spatial else [])
    bad = [(C + 1,), (), (C, 1), (1, 1, C, 1)] + ([] if spatial else [(1, C, 1, 1)])
    return st.sampled_from(good), st.sampled_from(bad)


@dataclasses.dataclass
class Call:
    op: str
    shape: tuple
    dtype: str
    layout: str
    x_kind: str                 # "array", "list", "scalar"
    gamma: object               # (shape, dtype), "junk" or None
    beta: object
    param: dict                 # values, ABSENT for a left-out key
    param_kind: str             # "dict" or "list"
    G: object
    dout: tuple                 # (shape or None for the forward's, dtype, layout)
    backward: str | None        # which backward gets the cache (None: none)
    seed: int
    corrupted: tuple            # the arguments drawn from their invalid values


@st.composite
def calls(draw):
    op = draw(st.sampled_from(["batchnorm", "spatial_batchnorm", "layernorm",
                               "spatial_groupnorm", "dropout"]))
    fields = ["shape", "dtype", "x", "gamma", "beta", "mode", "mode", "p", "seed", "momentum",
              "eps", "running", "running", "param", "G", "dout", "backward"]
    nbad = draw(st.sampled_from([0, 0, 0, 1, 1, 1, 2, 3]))
    bad = set(draw(st.lists(st.sampled_from(fields), min_size=nbad, max_size=nbad)))

    def pick(name, good, badv):
        return draw(badv if name in bad else good)

    shape = pick("shape", _good_shape(op), BAD_SHAPE)
    dtype = pick("dtype", st.sampled_from(["float32", "float64", ">f8", "<f4"]),
                 st.sampled_from(["float16", "int32", "int64", "bool", "complex64", "uint8"]))
    layout = draw(st.sampled_from(["contiguous", "fortran", "noncontiguous", "channels_last"]))
    x_kind = pick("x", st.just("array"), st.sampled_from(["list", "scalar"]))
    if op == "layernorm":
        C = shape[-1] if shape else 1
    else:
        C = shape[1] if len(shape) >= 2 else 1
    spatial = op in ("spatial_batchnorm", "spatial_groupnorm")
    good_ps, bad_ps = _pshapes(C, spatial)
    good_param = st.tuples(good_ps, GOOD_PDTYPES)
    bad_param = st.one_of(st.tuples(bad_ps, GOOD_PDTYPES), st.tuples(good_ps, BAD_PDTYPES),
                          st.sampled_from(["junk", None]))
    gamma = pick("gamma", good_param, bad_param)
    beta = pick("beta", good_param, bad_param)
    param = {}
    if op == "dropout":
        param["mode"] = pick("mode", st.sampled_from(["train", "train", "test"]),
                             st.sampled_from([ABSENT, ABSENT, ABSENT, "eval", None, 1]))
        param["p"] = pick("p", st.one_of(st.floats(0.05, 1.0), st.just(1)),
                          st.one_of(JUNK_NUMBERS, st.just(ABSENT), st.just(1.5)))
        param["seed"] = pick("seed", st.one_of(st.integers(0, 2**64 - 1), st.just(ABSENT),
                                               st.just(None), st.just(np.uint64(9))),
                             st.sampled_from([-1, 2**64, 1.5, True, "7", np.float64(3.0)]))
    else:
        if op in ("batchnorm", "spatial_batchnorm"):
            param["mode"] = pick("mode", st.sampled_from(["train", "train", "test"]),
                                 st.sampled_from([ABSENT, ABSENT, ABSENT, "eval", 3, None]))
            param["momentum"] = pick("momentum", st.one_of(st.just(ABSENT), st.floats(0.0, 1.0)),
                                     st.one_of(JUNK_NUMBERS, st.just(1.5), st.just(-0.25)))
            for key in ("running_mean", "running_var"):
                param[key] = pick("running", st.one_of(st.just(ABSENT), good_param), bad_param)
        else:
            param["mode"] = draw(st.sampled_from([ABSENT, "train", "test", "whatever"]))
        param["eps"] = pick("eps", st.one_of(st.just(ABSENT), st.floats(1e-8, 1e-2),
                                             # (tiny eps: tests/test_tiny_eps.py; here it
                                             # would make one-value groups' dx a cancellation
                                             # of 1e150-size terms)
                                             st.sampled_from([np.float32(1e-3), 1])),
                            st.sampled_from([0.0, -1e-5, math.nan, math.inf, "1e-5", None,
                                             True, [1e-5]]))
    param_kind = pick("param", st.just("dict"), st.just("list"))
    G = pick("G", st.sampled_from([d for d in range(1, C + 1) if C % d == 0] or [1]),
             st.sampled_from([0, -1, C + 1, True, 2.0, "2", None]))
    dshape = pick("dout", st.just(None), st.sampled_from([(2, 3), (), (1,)]))
    ddtype = pick("dout", st.sampled_from(["same", "same", "float64", "float32"]),
                  st.sampled_from(["int32", "complex64", "bool"]))
    dlayout = draw(st.sampled_from(["contiguous", "fortran", "noncontiguous", "channels_last"]))
    backward = pick("backward", st.sampled_from([op] * 8 + [None]),
                    st.sampled_from(list(BACKWARDS)))
    seed = draw(st.integers(0, 2**32 - 1))
    return Call(op, shape, dtype, layout, x_kind, gamma, beta, param, param_kind, G,
                (dshape, ddtype, dlayout), backward, seed, tuple(sorted(bad)))


# ------------------------------------------------------------------ running
def _array(rng, shape, dtype, layout="contiguous", positive=False):
    dt = np.dtype(dtype)
    if dt.kind == "b":
        a = rng.integers(0, 2, shape).astype(bool)
    elif dt.kind in "iu":
        a = rng.integers(1 if positive else -3, 4, shape).astype(dt)
    elif dt.kind == "c":
        a = (rng.standard_normal(shape) + 1j * rng.standard_normal(shape)).astype(dt)
    else:
        v = rng.standard_normal(shape)
        a = (np.abs(v) + 0.5 if positive else v * 2 + 1).astype(dt)
    try:
        return _layout(a, layout)
    except (ValueError, IndexError):       # a layout the shape does not have
        return np.array(a)


def _param_value(rng, spec, positive=False):
    if spec in ("junk", None):
        return [1.0, 2.0] if spec == "junk" else None
    shape, dtype = spec
    return _array(rng, shape, dtype, positive=positive)


def _build(call):
    """Fresh inputs for one run (the CPU's or the reference's: the same values)."""
    rng = np.random.default_rng(call.seed)
    x = _array(rng, call.shape, call.dtype, call.layout)
    if call.x_kind == "list":
        x = x.tolist()
    elif call.x_kind == "scalar":
        x = 1.5
    gamma = _param_value(rng, call.gamma)
    beta = _param_value(rng, call.beta)
    param = {}
    for k, v in call.param.items():
        if v is ABSENT:
            continue
        if k in ("running_mean", "running_var"):
            v = _param_value(rng, v, positive=(k == "running_var"))
        param[k] = v
    if call.param_kind == "list":
        param = list(param.items())
    dshape, ddtype, dlayout = call.dout
    shape = tuple(np.shape(x)) if dshape is None else dshape
    dt = (call.dtype if ddtype == "same" else ddtype)
    dout = _array(rng, shape, dt, dlayout)
    return x, gamma, beta, param, dout


def _snapshot(obj):
    """What must not change: the object itself and a copy of its contents."""
    if isinstance(obj, np.ndarray):
        return (obj, obj.copy())
    if isinstance(obj, dict):
        return (obj, {k: _snapshot(v) for k, v in obj.items()})
    if isinstance(obj, list):
        return (obj, [_snapshot(v) for v in obj])
    return (obj, obj)


def _unchanged(snap, what):
    obj, copy = snap
    if isinstance(obj, np.ndarray):
        assert obj.dtype == copy.dtype and obj.shape == copy.shape, what
        eq = np.array_equal(obj, copy, equal_nan=obj.dtype.kind in "fc")
        assert eq, f"{what} was modified"
    elif isinstance(obj, dict):
        assert set(obj) == set(copy), f"{what}: keys {set(obj)} != {set(copy)}"
        for k, s in copy.items():
            assert obj[k] is s[0], f"{what}[{k!r}] was replaced"
            _unchanged(s, f"{what}[{k!r}]")
    elif isinstance(obj, list):
        assert len(obj) == len(copy), f"{what} changed length"
        for i, s in enumerate(copy):
            _unchanged(s, f"{what}[{i}]")


def _run(call, reference):
    """(forward outcome, backward outcome): each ("ok", values) or
    ("error", exception); asserts the error rules on the way."""
    x, gamma, beta, param, dout = _build(call)
    inputs = {"x": _snapshot(x), "gamma": _snapshot(gamma), "beta": _snapshot(beta),
              "dout": _snapshot(dout)}
    before = _snapshot(param)
    np.random.seed(call.seed)                # dropout without a seed draws from here
    ctx = nd.force_reference() if reference else contextlib.nullcontext()
    with ctx, np.errstate(all="ignore"):
        try:
            if call.op == "dropout":
                out, cache = nd.dropout_forward(x, param)
            elif call.op == "spatial_groupnorm":
                out, cache = nd.spatial_groupnorm_forward(x, gamma, beta, call.G, param)
            else:
                out, cache = NORM_OPS[call.op][0](x, gamma, beta, param)
        except Exception as exc:  # noqa: BLE001 - checked below
            _check_error(exc, f"{call.op} forward")
            _unchanged(before, "the param dict after an error")
            for k, s in inputs.items():
                _unchanged(s, k)
            return ("error", exc), None
        fwd = ("ok", {"out": np.asarray(out),
                      **{k: v for k, v in param.items() if k in ("running_mean", "running_var")}})
        bwd = None
        if call.backward is not None:
            try:
                grads = BACKWARDS[call.backward](dout, cache)
                grads = grads if isinstance(grads, tuple) else (grads,)
                bwd = ("ok", tuple(np.asarray(g) for g in grads), _dx_terms(cache, dout))
            except Exception as exc:  # noqa: BLE001
                _check_error(exc, f"{call.backward} backward")
                bwd = ("error", exc)
    for k, s in inputs.items():
        _unchanged(s, k)
    return fwd, bwd


def _dx_terms(cache, dout):
    """The size of the terms that cancel in a normalization's dx (gamma *
    invstd * dout, e.g. 1e4 for one value per group and eps = 1e-8, where dx
    is 0 up to their rounding): the scale of dx's tolerance."""
    invstd = getattr(cache, "invstd", None)
    if invstd is None or not np.size(dout):
        return 1.0
    with np.errstate(all="ignore"):
        t = (float(np.max(np.abs(np.asarray(cache.gamma, np.float64)), initial=0.0)) *
             float(np.max(np.asarray(invstd, np.float64), initial=0.0)) *
             float(np.max(np.abs(np.asarray(dout, np.float64)))))
    return t if math.isfinite(t) else 1.0


def _check_error(exc, where):
    if not isinstance(exc, ALLOWED):
        raise AssertionError(f"{where} raised {type(exc).__name__}: {exc}") from exc
    assert str(exc), f"{where}: {type(exc).__name__} without a message"


def _close(got, exp, what, scale=1.0):
    got, exp = np.asarray(got), np.asarray(exp)
    # (byte order aside: the C kernels answer big-endian data in native order)
    assert got.shape == exp.shape and \
        got.dtype.newbyteorder("=") == exp.dtype.newbyteorder("="), (
            f"{what}: {got.dtype}{got.shape} != {exp.dtype}{exp.shape}")
    if got.dtype.kind not in "fc" or got.size == 0:
        np.testing.assert_array_equal(got, exp, err_msg=what)
        return
    a, e = got.astype(np.float64), exp.astype(np.float64)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: NaN positions")
    inf = np.isinf(e)
    np.testing.assert_array_equal(a[inf], e[inf], err_msg=f"{what}: inf")
    fin = np.isfinite(e)
    tol = TOLERANCES.get(got.dtype.name, TOLERANCES["float16"])
    scale = max(scale, float(np.max(np.abs(e[fin])))) if fin.any() else scale
    err = np.abs(a[fin] - e[fin])
    bad = ~(err <= tol["atol"] * scale + tol["rtol"] * np.abs(e[fin]))
    assert not bad.any(), f"{what}: {int(bad.sum())} values differ, worst {err.max():.3g}"


def _compare(cpu, ref, what):
    if cpu is None or ref is None:
        assert cpu is None and ref is None, what
        return
    if cpu[0] == "error":
        # the reference computes dtypes the C kernels do not (float16): there
        # it may compute, or meet another error, where the CPU refuses the dtype
        dtype_refused = isinstance(cpu[1], TypeError) and "supported floating dtypes" in str(cpu[1])
        if ref[0] == "ok":
            assert dtype_refused, f"{what}: the CPU raised {cpu[1]!r} where the reference computed"
        else:
            assert dtype_refused or type(cpu[1]) is type(ref[1]), (
                f"{what}: {cpu[1]!r} vs the reference's {ref[1]!r}")
        return
    assert ref[0] == "ok", f"{what}: the reference raised {ref[1]!r} where the CPU computed"
    if isinstance(cpu[1], dict):              # a forward: out and the running statistics
        assert set(cpu[1]) == set(ref[1]), what
        for k in cpu[1]:
            _close(cpu[1][k], ref[1][k], f"{what}: {k}")
    else:                                     # a backward: the gradients
        assert len(cpu[1]) == len(ref[1])
        for i, (g, r) in enumerate(zip(cpu[1], ref[1])):
            _close(g, r, f"{what}: gradient {i}", scale=max(1.0, ref[2]) if i == 0 else 1.0)


@settings(max_examples=200, deadline=None, derandomize=True, database=None,
          suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large,
                                 HealthCheck.filter_too_much])
@given(call=calls())
def test_fuzz_public_api(call):
    cpu_fwd, cpu_bwd = _run(call, reference=False)
    ref_fwd, ref_bwd = _run(call, reference=True)
    _compare(cpu_fwd, ref_fwd, f"{call.op} forward")
    if cpu_fwd[0] == "ok" and ref_fwd[0] == "ok":
        _compare(cpu_bwd, ref_bwd, f"{call.backward} backward")


def test_fuzz_reaches_results_and_every_error():
    """The strategy is not all errors (nor all successes): over its examples
    the CPU computes forwards and backwards of every op and raises each
    documented exception type."""
    seen = set()

    @settings(max_examples=200, deadline=None, derandomize=True, database=None,
              suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
    @given(call=calls())
    def collect(call):
        fwd, bwd = _run(call, reference=False)
        seen.add((call.op, "forward", fwd[0] if fwd[0] == "ok" else type(fwd[1]).__name__))
        if bwd is not None:
            seen.add((call.backward, "backward",
                      bwd[0] if bwd[0] == "ok" else type(bwd[1]).__name__))

    collect()
    for op in ("batchnorm", "spatial_batchnorm", "layernorm", "spatial_groupnorm", "dropout"):
        assert (op, "forward", "ok") in seen, op
        assert (op, "backward", "ok") in seen, op
    kinds = {k for _, _, k in seen}
    assert {"TypeError", "ValueError", "KeyError"} <= kinds, kinds


# ------------------------------------------------ what the fuzzer found
@pytest.mark.parametrize("dtype", [">f8", ">f4"])
@pytest.mark.parametrize("op", ["batchnorm", "spatial_batchnorm"])
def test_big_endian_x_running_statistics(op, dtype):
    """Big-endian x: the running statistics are the values of native x's (they
    were native bytes labelled big-endian: garbage such as -3.6e-190)."""
    rng = np.random.default_rng(0)
    shape = (6, 4) if op == "batchnorm" else (3, 4, 5, 2)
    x = rng.standard_normal(shape) + 2.0
    fwd = NORM_OPS[op][0]
    old = rng.uniform(0.5, 1.5, 4)
    for running in (None, old.astype(dtype)):
        p, q = {"mode": "train"}, {"mode": "train"}
        if running is not None:
            p["running_mean"] = running
            q["running_mean"] = running.astype(running.dtype.newbyteorder("="))
        out, _ = fwd(x.astype(dtype), np.ones(4), np.zeros(4), p)
        nout, _ = fwd(x.astype(np.dtype(dtype).newbyteorder("=")), np.ones(4), np.zeros(4), q)
        np.testing.assert_array_equal(out, nout)
        for key in ("running_mean", "running_var"):
            assert p[key].dtype.newbyteorder("=") == np.dtype(dtype).newbyteorder("=")
            np.testing.assert_array_equal(p[key], q[key], err_msg=key)
