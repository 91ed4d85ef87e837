"""normdrop.layers: the layer objects compute exactly what the functional API
computes (bitwise), switch between training and evaluation, keep their
gradients and running statistics, and round-trip their state."""
from __future__ import annotations

import re

import numpy as np
import pytest

import normdrop
from normdrop.layers import BatchNorm, Dropout, LayerNorm, SpatialBatchNorm, SpatialGroupNorm

eq = np.testing.assert_array_equal



def _data(shape, dtype, seed=0, shift=0.0):
    rng = np.random.default_rng(seed)
    return (rng.standard_normal(shape) * 2.0 + shift).astype(dtype)


def _np(backend, a):
    return np.asarray(backend.to_numpy(a))


# -------------------------------------------------------------- batchnorm
BN_CASES = [
    (BatchNorm, "batchnorm_forward", "batchnorm_backward", (32, 7)),
    (SpatialBatchNorm, "spatial_batchnorm_forward", "spatial_batchnorm_backward", (4, 5, 3, 6)),
]


@pytest.mark.parametrize("cls, fwd, bwd, shape", BN_CASES, ids=["BatchNorm", "SpatialBatchNorm"])
def test_batchnorm_layers_match_the_functions_bitwise(backend, dtype, cls, fwd, bwd, shape):
    """Three training steps and an evaluation step: outputs, running
    statistics and gradients equal the functional API's bit for bit."""
    C = shape[1]
    layer = cls(C, eps=1e-4, momentum=0.8)
    gamma = backend.asarray(np.ones(C, dtype))
    beta = backend.asarray(np.zeros(C, dtype))
    bn_param = {"mode": "train", "eps": 1e-4, "momentum": 0.8}
    for step in range(3):
        x = backend.asarray(_data(shape, dtype, seed=step, shift=step))
        dout = backend.asarray(_data(shape, dtype, seed=10 + step))
        out = layer.forward(x)
        ref, cache = getattr(normdrop, fwd)(x, gamma, beta, bn_param)
        eq(_np(backend, out), _np(backend, ref))
        eq(_np(backend, layer.running_mean), _np(backend, bn_param["running_mean"]))
        eq(_np(backend, layer.running_var), _np(backend, bn_param["running_var"]))
        dx = layer.backward(dout)
        rdx, rdg, rdb = getattr(normdrop, bwd)(dout, cache)
        eq(_np(backend, dx), _np(backend, rdx))
        eq(_np(backend, layer.dgamma), _np(backend, rdg))
        eq(_np(backend, layer.dbeta), _np(backend, rdb))
        assert layer.dgamma.shape == (C,) and layer.dgamma.dtype == x.dtype
        # a step of SGD on both, so later steps use gamma != 1 and beta != 0
        layer.gamma = layer.gamma - 0.1 * layer.dgamma
        layer.beta = layer.beta - 0.1 * layer.dbeta
        gamma, beta = gamma - 0.1 * rdg, beta - 0.1 * rdb
    x = backend.asarray(_data(shape, dtype, seed=99))
    running = (_np(backend, layer.running_mean), _np(backend, layer.running_var))
    out = layer.eval().forward(x)
    ref, _ = getattr(normdrop, fwd)(x, gamma, beta, dict(bn_param, mode="test"))
    eq(_np(backend, out), _np(backend, ref))
    eq(_np(backend, layer.running_mean), running[0])      # evaluation leaves them alone
    eq(_np(backend, layer.running_var), running[1])


def test_parameters_are_made_in_the_inputs_library_and_dtype(backend, dtype):
    """gamma, beta and the running statistics come from the input's own
    namespace (no NumPy arrays for an array_api_strict or CuPy input)."""
    x = backend.asarray(_data((16, 5), dtype))
    bn = BatchNorm(5)
    assert bn.gamma is None and bn.dgamma is None
    bn.forward(x)
    for a in (bn.gamma, bn.beta, bn.running_mean, bn.running_var):
        assert type(a) is type(x), (type(a), type(x))
        assert a.dtype == x.dtype and tuple(a.shape) == (5,)
    eq(_np(backend, bn.gamma), np.ones(5, dtype))
    eq(_np(backend, bn.beta), np.zeros(5, dtype))
    made = BatchNorm(5, like=x)            # like=: made at construction
    assert type(made.gamma) is type(x) and made.gamma.dtype == x.dtype
    assert type(made.state_dict()["running_var"]) is type(x)


def test_eval_uses_the_running_statistics():
    rng = np.random.default_rng(1)
    bn = BatchNorm(4, momentum=0.5)
    for _ in range(4):
        bn.forward(rng.standard_normal((64, 4)) * 3 + 5)
    assert bn.training
    x = rng.standard_normal((8, 4))
    train_out = bn.forward(x.copy())                    # batch statistics of x
    rm, rv = bn.running_mean.copy(), bn.running_var.copy()
    assert bn.eval() is bn and not bn.training
    out = bn.forward(x)
    np.testing.assert_allclose(out, (x - rm) / np.sqrt(rv + bn.eps), rtol=1e-12)  # gamma 1, beta 0
    eq(bn.running_mean, rm)
    assert not np.allclose(out, train_out)
    bn.train()
    assert bn.training
    bn.forward(x)
    assert not np.array_equal(bn.running_mean, rm)     # training updates them again


@pytest.mark.parametrize("cls, shape", [(BatchNorm, (20, 6)), (SpatialBatchNorm, (3, 6, 4, 4))])
def test_state_dict_round_trips_into_a_fresh_layer(cls, shape):
    src = cls(6, momentum=0.7)
    for step in range(3):
        x = _data(shape, np.float32, seed=step, shift=1.0)
        src.forward(x)
        src.backward(_data(shape, np.float32, seed=5 + step))
        src.gamma = src.gamma - 0.5 * src.dgamma
        src.beta = src.beta - 0.5 * src.dbeta
    state = src.state_dict()
    assert set(state) == {"gamma", "beta", "running_mean", "running_var"}
    assert all(type(v) is np.ndarray and v.shape == (6,) for v in state.values())
    dst = cls(6, momentum=0.7)
    dst.load_state_dict(state)
    x = _data(shape, np.float32, seed=42)
    eq(dst.eval().forward(x), src.eval().forward(x))
    src.train(), dst.train()
    eq(dst.forward(x), src.forward(x))
    eq(dst.running_mean, src.running_mean)
    # the state dict holds copies: changing it (or the layer) changes nothing else
    state["gamma"][:] = 123.0
    assert not np.any(src.gamma == 123.0) and not np.any(dst.gamma == 123.0)


def test_load_state_dict_errors():
    bn = BatchNorm(3)
    good = {"gamma": np.ones(3), "beta": np.zeros(3), "running_mean": np.zeros(3),
            "running_var": np.ones(3)}
    with pytest.raises(KeyError, match="missing \\['running_var'\\]"):
        bn.load_state_dict({k: v for k, v in good.items() if k != "running_var"})
    with pytest.raises(KeyError, match="unexpected \\['extra'\\]"):
        bn.load_state_dict(dict(good, extra=np.ones(3)))
    with pytest.raises(ValueError, match="gamma has shape \\(4,\\), expected \\(3,\\)"):
        bn.load_state_dict(dict(good, gamma=np.ones(4)))
    assert bn.gamma is None                         # nothing was loaded
    bn.load_state_dict(good)
    eq(bn.running_var, np.ones(3))


def test_errors_before_the_first_forward_and_bad_arguments():
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm(3).backward(np.ones((4, 3)))
    with pytest.raises(RuntimeError, match="no parameters yet"):
        BatchNorm(3).state_dict()
    with pytest.raises(RuntimeError, match="backward called before forward"):
        Dropout(0.5).backward(np.ones(3))
    with pytest.raises(ValueError, match="num_features must be at least 1"):
        BatchNorm(0)
    with pytest.raises(ValueError, match="expected|shape"):
        BatchNorm(3).forward(np.ones((4, 5)))            # the functional op's shape check
    with pytest.raises(ValueError, match="keep probability"):
        Dropout(0.0)
    with pytest.raises(ValueError, match="seed must be in"):
        Dropout(0.5, seed=2**32)
    with pytest.raises(ValueError, match="must divide"):
        SpatialGroupNorm(6, 4)


@pytest.mark.parametrize("cls, args, shape", [(BatchNorm, (4,), (8, 4)),
                                               (SpatialBatchNorm, (4,), (2, 4, 3, 3)),
                                               (LayerNorm, (4,), (8, 4)),
                                               (SpatialGroupNorm, (4, 2), (2, 4, 3, 3))],
                         ids=["BatchNorm", "SpatialBatchNorm", "LayerNorm", "SpatialGroupNorm"])
def test_a_bad_first_input_leaves_no_parameters_behind(cls, args, shape):
    """Parameters are made from the first input: when the op then refuses it
    (bool, int, float16 on the CPU), the layer is as it was -- it used to keep
    bool or int parameters, so every later call failed ("gamma has dtype
    bool") or SGD on them did."""
    layer = cls(*args)
    for dt in (np.bool_, np.int64, np.float16):
        with pytest.raises(TypeError, match="dtype"):
            layer.forward(np.zeros(shape, dt))
        for name in layer._state_names:
            assert getattr(layer, name) is None, (dt, name)
    x = np.random.default_rng(3).standard_normal(shape)
    out = layer.forward(x)
    assert out.dtype == layer.gamma.dtype == np.float64
    layer.backward(np.ones(shape))
    layer.gamma -= 0.1 * layer.dgamma                      # a float parameter update
    fresh = cls(*args)
    np.testing.assert_array_equal(fresh.forward(x), out)


def test_errors_name_the_callers_mistake():
    """A wrong-width x is an error about x (it blamed the layer's own gamma:
    "gamma must have shape (5,)"), a state that is not an array a TypeError
    (it was an AttributeError), and Dropout refuses what dropout_forward
    refuses (p=True was taken as 1.0)."""
    for layer, x, axis in [(LayerNorm(4), np.zeros((3, 5)), -1), (BatchNorm(4), np.zeros((3, 5)), 1),
                           (SpatialBatchNorm(4), np.zeros((2, 5, 3, 3)), 1),
                           (SpatialGroupNorm(4, 2), np.zeros((2, 6, 3, 3)), 1)]:
        msg = (f"x has shape {x.shape}: {x.shape[axis]} features on axis {axis}, but this "
               f"{type(layer).__name__} has num_features=4")
        with pytest.raises(ValueError, match=re.escape(msg)):
            layer.forward(x)
        assert layer.gamma is None
    layer = BatchNorm(3)
    layer.forward(np.ones((4, 3)))
    state = layer.state_dict()
    state["gamma"] = [1.0, 1.0, 1.0]
    with pytest.raises(TypeError, match="gamma must be an array, got list"):
        layer.load_state_dict(state)
    for p in (True, "0.5"):
        with pytest.raises(ValueError, match="p must be a real number"):
            Dropout(p)
        with pytest.raises(ValueError, match="p must be a real number"):
            normdrop.dropout_forward(np.ones(3), {"p": p, "mode": "train"})
    assert Dropout(np.float32(0.25)).p == 0.25
    # eps and momentum are checked when the layer is made (they were taken,
    # and refused at the first forward as bn_param['eps']); a bool seed and a
    # non-integer or out-of-range step are refused (True was seed 1, 2.7 was
    # step 2, 2**40 failed only at the next forward)
    for make, exc, msg in ((lambda: BatchNorm(3, eps=0), ValueError, r"^eps must be a finite"),
                           (lambda: LayerNorm(3, eps="a"), TypeError, r"^eps must be a real"),
                           (lambda: SpatialGroupNorm(4, 2, eps=-1.0), ValueError, r"^eps must"),
                           (lambda: SpatialBatchNorm(3, momentum=2), ValueError,
                            r"^momentum must be in \[0, 1\], got 2"),
                           (lambda: Dropout(0.5, seed=True), TypeError, "seed must be an int"),
                           (lambda: Dropout(0.5).load_state_dict({"step": 2.7}), TypeError,
                            "step must be an integer"),
                           (lambda: Dropout(0.5).load_state_dict({"step": 2**40}), ValueError,
                            r"step must be in \[0, 2\*\*32\]")):
        with pytest.raises(exc, match=msg):
            make()
    d = Dropout(0.5, seed=3)
    d.load_state_dict({"step": 7})
    assert d.step == 7


# ---------------------------------------------------------------- dropout
def test_dropout_with_a_seed_uses_seed_plus_step(backend, dtype):
    """Training forward k uses the seed ``seed + k * 2**32``: masks differ per
    step, repeat per run, and match dropout_forward's bitwise."""
    x = backend.asarray(_data((33, 17), dtype))
    drop = Dropout(0.6, seed=7)
    outs = []
    for k in range(3):
        out = drop.forward(x)
        ref, cache = normdrop.dropout_forward(x, {"p": 0.6, "mode": "train",
                                                  "seed": 7 + k * 2**32})
        eq(_np(backend, out), _np(backend, ref))
        dout = backend.asarray(_data((33, 17), dtype, seed=k))
        eq(_np(backend, drop.backward(dout)), _np(backend, normdrop.dropout_backward(dout, cache)))
        outs.append(_np(backend, out))
    assert drop.step == 3
    assert not np.array_equal(outs[0] != 0, outs[1] != 0)
    again = Dropout(0.6, seed=7)
    eq(_np(backend, again.forward(x)), outs[0])                  # reproducible
    other = Dropout(0.6, seed=8)
    assert not np.array_equal(_np(backend, other.forward(x)) != 0, outs[0] != 0)


def test_dropout_step_seed_is_the_philox_key_seed_step():
    drop = Dropout(0.5, seed=5)
    assert drop.step_seed() == 5 and drop.step_seed(3) == 5 + (3 << 32)
    mask = normdrop.dropout_mask((64, 9), 0.5, drop.step_seed(2))
    drop.step = 2
    out = drop.forward(np.ones((64, 9)))
    eq(out != 0, mask)
    assert Dropout(0.5).step_seed() is None


def test_dropout_eval_is_the_identity(backend, dtype):
    x = backend.asarray(_data((10, 4), dtype))
    drop = Dropout(0.3, seed=1).eval()
    assert drop.forward(x) is x
    dout = backend.asarray(_data((10, 4), dtype, seed=3))
    assert drop.backward(dout) is dout
    assert drop.step == 0                          # evaluation does not count as a step
    drop.train()
    assert not np.array_equal(_np(backend, drop.forward(x)), _np(backend, x))
    assert drop.step == 1


def test_dropout_without_a_seed_draws_a_fresh_mask_each_call():
    x = np.ones((50, 50))
    drop = Dropout(0.5)
    np.random.seed(3)
    a, b = drop.forward(x), drop.forward(x)
    assert not np.array_equal(a, b)
    np.random.seed(3)                               # the seeds come from np.random
    eq(Dropout(0.5).forward(x), a)


def test_dropout_state_dict_resumes_the_mask_sequence():
    x = np.ones((40, 40), np.float32)
    src = Dropout(0.5, seed=11)
    for _ in range(4):
        src.forward(x)
    state = src.state_dict()
    assert list(state) == ["step"] and int(state["step"]) == 4
    dst = Dropout(0.5, seed=11)
    dst.load_state_dict(state)
    eq(dst.forward(x), src.forward(x))
    with pytest.raises(KeyError):
        dst.load_state_dict({"steps": 1})
    # the last step's state (every step used) loads, and its next forward
    # raises as the saved layer's would (load_state_dict refused it)
    src.step = 2**32 - 1
    src.forward(x)
    dst.load_state_dict(src.state_dict())
    assert dst.step == 2**32
    for layer in (src, dst):
        with pytest.raises(OverflowError, match="outside"):
            layer.forward(x)
    with pytest.raises(ValueError, match="step"):
        dst.load_state_dict({"step": np.int64(2**32 + 1)})


# ---------------------------------------------- layer norm and group norm
def test_layernorm_matches_the_functions_bitwise(backend, dtype):
    shape = (12, 9)
    ln = LayerNorm(9, eps=1e-4)
    gamma = backend.asarray(np.ones(9, dtype))
    beta = backend.asarray(np.zeros(9, dtype))
    for step in range(2):
        x = backend.asarray(_data(shape, dtype, seed=step, shift=3.0))
        dout = backend.asarray(_data(shape, dtype, seed=7 + step))
        ref, cache = normdrop.layernorm_forward(x, gamma, beta, {"eps": 1e-4})
        eq(_np(backend, ln.forward(x)), _np(backend, ref))
        rdx, rdg, rdb = normdrop.layernorm_backward(dout, cache)
        eq(_np(backend, ln.backward(dout)), _np(backend, rdx))
        eq(_np(backend, ln.dgamma), _np(backend, rdg))
        eq(_np(backend, ln.dbeta), _np(backend, rdb))
        ln.gamma, gamma = ln.gamma - 0.1 * ln.dgamma, gamma - 0.1 * rdg
    x = backend.asarray(_data(shape, dtype, seed=5))
    eq(_np(backend, ln.eval().forward(x)), _np(backend, ln.train().forward(x)))   # no running stats
    fresh = LayerNorm(9, eps=1e-4)
    fresh.load_state_dict(ln.state_dict())
    eq(_np(backend, fresh.forward(x)), _np(backend, ln.forward(x)))


def test_groupnorm_matches_the_functions_bitwise(backend, dtype):
    shape, G = (3, 6, 4, 5), 3
    gn = SpatialGroupNorm(6, G)
    gamma = backend.asarray(np.ones((1, 6, 1, 1), dtype))
    beta = backend.asarray(np.zeros((1, 6, 1, 1), dtype))
    x = backend.asarray(_data(shape, dtype, shift=2.0))
    dout = backend.asarray(_data(shape, dtype, seed=1))
    ref, cache = normdrop.spatial_groupnorm_forward(x, gamma, beta, G, {"eps": 1e-5})
    eq(_np(backend, gn.forward(x)), _np(backend, ref))
    rdx, rdg, rdb = normdrop.spatial_groupnorm_backward(dout, cache)
    eq(_np(backend, gn.backward(dout)), _np(backend, rdx))
    eq(_np(backend, gn.dgamma), _np(backend, rdg))
    eq(_np(backend, gn.dbeta), _np(backend, rdb))
    eq(_np(backend, gn.eval().forward(x)), _np(backend, ref))
    fresh = SpatialGroupNorm(6, G)
    fresh.load_state_dict(gn.state_dict())
    eq(_np(backend, fresh.forward(x)), _np(backend, ref))
