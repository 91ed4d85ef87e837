"""Arrays of other libraries: PyTorch and JAX CPU arrays run on the C kernels
(zero-copy) and come back in their own type, bit for bit the NumPy path's;
tensors that require grad leave no graph behind; what NumPy cannot carry is
a dtype error; the reference path's defects with JAX without x64 are gone.
Each library's tests skip, with the reason, where it is not installed."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys

import numpy as np
import pytest

import normdrop as nd
from normdrop._optable import OPS
from conftest import _layout

ROOT = os.path.dirname(os.path.abspath(__file__))


def _data(op, dtype, seed=0):
    rng = np.random.default_rng(seed)
    shape = op.test_shape
    x = (rng.standard_normal(shape) * 2 + 1).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    if op.kind == "dropout":
        return x, dout, None, None
    C = op.channels(shape)
    return x, dout, rng.uniform(0.5, 2, C).astype(dtype), rng.standard_normal(C).astype(dtype)


def _run(op, x, dout, gamma, beta, mode="train", lib=None):
    """Forward and backward of op; every array result (and running statistic)."""
    if op.kind == "dropout":
        out, cache = op.forward(x, {"p": 0.6, "mode": mode, "seed": 99, "offset": 3})
        return [out, op.backward(dout, cache)], cache
    param = {"mode": mode}
    if op.running and mode == "test":
        param.update(running_mean=gamma * 0.5, running_var=gamma)
    out, cache = op.call_forward(x, gamma, beta, param, op.test_extra)
    results = [out, *op.backward(dout, cache)]
    if op.running:
        results += [param["running_mean"], param["running_var"]]
    return results, cache


CASES = [(name, layout, mode) for name, op in OPS.items() for layout in op.layouts
         for mode in (("train", "test") if op.running or op.kind == "dropout" else ("train",))]
IDS = [f"{n}-{lay}-{m}" for n, lay, m in CASES]


# ---------------------------------------------------------------- PyTorch
@pytest.fixture(scope="module")
def torch():
    return pytest.importorskip("torch", reason="torch is not installed (optional)")


def _owner(a):
    """What holds the memory of a view a (past its ndarray bases)."""
    b = a.base
    while isinstance(b, np.ndarray):
        b = b.base
    return b


@pytest.fixture(params=["exchange", "numpy"])
def conversion(request, torch, monkeypatch):
    """PyTorch CPU tensors converted through DLPack's C exchange API, or
    through Tensor.numpy()/torch.from_numpy (a PyTorch without the API):
    fresh adapters and routes for each, the kept ones put back after."""
    from normdrop import _dispatch, _interop
    if request.param == "numpy":
        monkeypatch.setattr(_interop, "_EXCHANGE", False)
    elif _interop._exchange_for(torch.Tensor) is None:
        pytest.skip("this PyTorch publishes no DLPack C exchange API")
    monkeypatch.setattr(_interop, "_ADAPTERS", {})
    monkeypatch.setattr(_dispatch, "_torch_cpu", None)
    return request.param


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name,layout,mode", CASES, ids=IDS)
def test_torch_tensors_bit_for_bit_the_numpy_path(torch, conversion, name, layout, mode, dtype):
    op = OPS[name]
    x, dout, gamma, beta = _data(op, dtype)
    xl, dl = _layout(x, layout), _layout(dout, layout)
    ref, _ = _run(op, xl, dl, gamma, beta, mode)
    t = lambda a: None if a is None else torch.from_numpy(a)  # noqa: E731
    got, cache = _run(op, t(xl), t(dl), t(gamma), t(beta), mode)
    for g, r in zip(got, ref):
        assert isinstance(g, torch.Tensor), type(g)
        assert g.dtype == getattr(torch, dtype) and tuple(g.shape) == r.shape
        np.testing.assert_array_equal(g.numpy(), r)
    if layout == "channels_last" and op.kind == "norm":      # (dropout answers in C order)
        assert got[0].is_contiguous(memory_format=torch.channels_last)
    if op.kind != "dropout":
        assert cache.x.ctypes.data == xl.ctypes.data        # computed on x's memory: no copy
        exchanged = type(_owner(cache.x)).__name__ == "_Owner"
        assert exchanged == (conversion == "exchange"), type(_owner(cache.x))


def test_torch_requires_grad_leaves_no_graph(torch):
    """Outputs, gradients and running statistics of tensors that require grad
    are plain tensors: no graph chains from one step to the next (the
    reference path attached the running statistics to the graph)."""
    x = torch.randn(32, 6, dtype=torch.float64, requires_grad=True)
    g = torch.ones(6, dtype=torch.float64, requires_grad=True)
    b = torch.zeros(6, dtype=torch.float64, requires_grad=True)
    for forced in (False, True):
        with nd.force_reference(forced):
            bp = {"mode": "train"}
            for _ in range(3):                 # running statistics fed back each step
                out, cache = nd.batchnorm_forward(x, g, b, bp)
            dx, dg, db = nd.batchnorm_backward(torch.ones(32, 6, dtype=torch.float64), cache)
            h, dcache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
            # test mode passes x and dout through: detached (a non-leaf x
            # came back with its grad_fn)
            xl = x * 2.0
            ht, tcache = nd.dropout_forward(xl, {"p": 0.5, "mode": "test"})
            dt = nd.dropout_backward(xl, tcache)
            for a in (out, dx, dg, db, bp["running_mean"], bp["running_var"], h, ht, dt):
                assert not a.requires_grad and a.grad_fn is None, forced
            assert ht.data_ptr() == xl.data_ptr() and dt.data_ptr() == xl.data_ptr()
    ref, _ = nd.batchnorm_forward(x.detach().numpy(), g.detach().numpy(), b.detach().numpy(),
                                  {"mode": "train"})
    out, _ = nd.batchnorm_forward(x, g, b, {"mode": "train"})
    np.testing.assert_array_equal(out.numpy(), ref)


def test_torch_parameters_and_views_on_the_c_kernels(torch):
    """A layer's nn.Parameter gamma/beta with a plain tensor x, a lazily
    negated view, and tensors on another device mixed in: the C
    kernels where every array is a CPU tensor (of any Tensor subclass), bit
    for bit the NumPy path; a device mix is the usual TypeError."""
    rng = np.random.default_rng(5)
    xn = rng.standard_normal((16, 5))
    gn, bn = rng.uniform(0.5, 2, 5), rng.standard_normal(5)
    ref, _ = nd.batchnorm_forward(xn, gn, bn, {"mode": "train"})
    g = torch.nn.Parameter(torch.from_numpy(gn.copy()))
    b = torch.nn.Parameter(torch.from_numpy(bn.copy()))
    for x in (torch.from_numpy(xn), torch.from_numpy(-xn)._neg_view()):   # values xn
        for args in ((x, g, b), (torch.nn.Parameter(x.clone()), g, b)):
            param = {"mode": "train"}
            out, cache = nd.batchnorm_forward(*args, param)
            assert cache.backend_name == "cpu"
            assert type(out) is torch.Tensor and not out.requires_grad
            np.testing.assert_array_equal(out.numpy(), ref)
            assert type(param["running_mean"]) is torch.Tensor
    # a test-mode dropout cache holds no array: dout of another library is
    # still refused, as with a training cache (it was the dtype error)
    for mode in ("test", "train"):
        _, dc = nd.dropout_forward(xn, {"p": 0.5, "mode": mode, "seed": 0})
        with pytest.raises(TypeError, match="different array libraries|not an array of the "
                                            "library of the forward's input \\(numpy\\)"):
            nd.dropout_backward(torch.ones(16, 5, dtype=torch.float64), dc)
    meta = torch.zeros(5, dtype=torch.float64, device="meta")
    with pytest.raises(TypeError, match="different devices"):
        nd.batchnorm_forward(torch.from_numpy(xn), meta, b, {"mode": "train"})
    with pytest.raises(TypeError, match="different array libraries"):
        nd.batchnorm_forward(torch.from_numpy(xn), g, bn, {"mode": "train"})


@pytest.mark.parametrize("seen", [False, True], ids=["first-call", "route-kept"])
def test_torch_subclasses_that_override_operations_and_sparse_tensors_are_refused(
        torch, monkeypatch, seen):
    """As for ndarray subclasses: a masked tensor, a Tensor subclass with its
    own __torch_function__ and a sparse tensor are clear TypeErrors (they
    were a "dtype float32" error, an AttributeError, or -- once a plain
    tensor had been seen -- read as plain data), whether or not the kept
    PyTorch route exists yet; a subclass that overrides nothing runs on
    the C kernels, bit for bit the NumPy path."""
    import warnings
    from normdrop import _dispatch

    class Traced(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return super().__torch_function__(func, types, args, kwargs or {})

    class Plain(torch.Tensor):
        pass

    rng = np.random.default_rng(6)
    xn = rng.standard_normal((12, 4))
    x, g, b = torch.from_numpy(xn), torch.ones(4, dtype=torch.float64), torch.zeros(4,
                                                                                  dtype=torch.float64)
    if seen:
        nd.batchnorm_forward(x, g, b, {"mode": "train"})
        assert _dispatch._torch_cpu is not None
    else:
        monkeypatch.setattr(_dispatch, "_torch_cpu", None)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")             # torch.masked is a prototype
        from torch.masked import masked_tensor
        masks = [masked_tensor(t, t > 0) for t in (x, g)]
    bad = [(lambda t: masks[t is g], "is a torch.masked.MaskedTensor: normdrop would use the "
            "masked values"),
           (lambda t: t.as_subclass(Traced), "is a .*Traced, a torch.Tensor subclass that "
            "overrides PyTorch's operations"),
           (lambda t: t.to_sparse(), "is a tensor of layout torch.sparse_coo; normdrop reads "
            "dense tensors only")]
    for make, msg in bad:
        with pytest.raises(TypeError, match="x " + msg):
            nd.batchnorm_forward(make(x), g, b, {"mode": "train"})
        with pytest.raises(TypeError, match="gamma " + msg):
            nd.layernorm_forward(x, make(g), b, {})
        with pytest.raises(TypeError, match="x " + msg):
            nd.dropout_forward(make(x), {"p": 0.5, "mode": "train", "seed": 1})
    ref, _ = nd.batchnorm_forward(xn, np.ones(4), np.zeros(4), {"mode": "train"})
    out, cache = nd.batchnorm_forward(x.as_subclass(Plain), g, b, {"mode": "train"})
    assert cache.backend_name == "cpu" and type(out) is torch.Tensor
    np.testing.assert_array_equal(out.numpy(), ref)


def test_torch_dtypes_numpy_cannot_carry_are_dtype_errors(torch):
    x = torch.randn(8, 3)
    for dt in (torch.bfloat16, torch.float16):
        with pytest.raises(TypeError, match=f"x has dtype {str(dt).split('.')[-1]}"):
            nd.batchnorm_forward(x.to(dt), torch.ones(3), torch.zeros(3), {"mode": "train"})
        with pytest.raises(TypeError, match="dtype"):
            nd.dropout_forward(x.to(dt), {"p": 0.5, "mode": "train"})
    # a gamma NumPy cannot carry is cast, like any real dtype
    out, _ = nd.batchnorm_forward(x, torch.ones(3, dtype=torch.bfloat16), torch.zeros(3),
                                  {"mode": "train"})
    ref, _ = nd.batchnorm_forward(x.numpy(), np.ones(3), np.zeros(3), {"mode": "train"})
    np.testing.assert_array_equal(out.numpy(), ref)
    with pytest.raises(TypeError, match="different devices|different array libraries"):
        nd.batchnorm_forward(x, np.ones(3), torch.zeros(3), {"mode": "train"})
    _, cache = nd.batchnorm_forward(x, torch.ones(3), torch.zeros(3), {"mode": "train"})
    with pytest.raises(TypeError, match="not an array of the library"):
        nd.batchnorm_backward(np.ones((8, 3), np.float32), cache)


def test_torch_masks_and_caches(torch):
    like = torch.zeros(1)
    for seed in (0, 12345, 2**64 - 1):
        m = nd.dropout_mask((37, 11), 0.4, seed, like=like)
        assert isinstance(m, torch.Tensor) and m.dtype == torch.bool
        np.testing.assert_array_equal(m.numpy(), nd.dropout_mask((37, 11), 0.4, seed))
    x = torch.randn(20, 7)
    out, cache = nd.batchnorm_forward(x, torch.ones(7), torch.zeros(7), {"mode": "train"})
    copy = pickle.loads(pickle.dumps(cache))
    d = torch.randn(20, 7)
    for a, b in zip(nd.batchnorm_backward(d, cache), nd.batchnorm_backward(d, copy)):
        assert isinstance(b, torch.Tensor)
        np.testing.assert_array_equal(a.numpy(), b.numpy())


@pytest.mark.parametrize("owning", [False, True], ids=["non-owning", "owning"])
def test_torch_exchange_views_and_what_it_leaves_to_the_general_route(torch, owning):
    """DLPack's C exchange: float32/float64 CPU tensors (any strides, 0-d,
    empty, requiring grad, nn.Parameter) as views of their memory, equal
    to Tensor.numpy(), through the non-owning import or the owning one
    (which a producer without the first gets); everything else -- other
    dtypes, devices and layouts, a negative view (the export drops the
    bit), a subclass that overrides operations -- None, for the general
    route and its errors."""
    import gc
    from normdrop import _dispatch, _interop
    if _interop._exchange_for(torch.Tensor) is None:
        pytest.skip("this PyTorch publishes no DLPack C exchange API")
    from normdrop._cpu._dlpack import Exchange, intact
    ex = Exchange(torch.Tensor, _dispatch._plain_tensor_type, torch.Tensor.untyped_storage,
                  torch.from_numpy, owning=owning)
    base = torch.randn(6, 7, dtype=torch.float64)
    cases = [base, base.float(), base.t(), base[1:5, ::3], torch.randn(1, 7).expand(6, 7),
             torch.tensor(2.5), torch.empty(0, 3), torch.randn(5, requires_grad=True),
             torch.nn.Parameter(torch.randn(4)), base.to(memory_format=torch.contiguous_format)]
    for t in cases:
        v = ex.view(t)
        assert type(v) is np.ndarray, t
        ref = t.detach().numpy()
        assert v.dtype == ref.dtype and v.shape == ref.shape and v.strides == ref.strides
        np.testing.assert_array_equal(v, ref)
        if t.numel():
            assert v.ctypes.data == t.data_ptr()            # the tensor's memory: no copy
    ex_views = ex.views([base, None, cases[1]], 1)
    assert ex_views[1] is None and ex_views[0].ctypes.data == base.data_ptr()
    # a view outlives its tensor (kept: through the storage; not kept:
    # through the managed tensor, or the tensor object itself)
    for keep in (True, False):
        t = torch.arange(1000, dtype=torch.float64)
        v = ex.view(t, keep)
        del t
        gc.collect()
        junk = [torch.full((1000,), 7.0, dtype=torch.float64) for _ in range(8)]  # noqa: F841
        np.testing.assert_array_equal(v, np.arange(1000.0))
        assert intact(v)

    class Traced(torch.Tensor):
        @classmethod
        def __torch_function__(cls, func, types, args=(), kwargs=None):
            return super().__torch_function__(func, types, args, kwargs or {})

    neg = torch.randn(4, dtype=torch.complex64).conj().imag       # a real view, negated lazily
    assert neg.is_neg()
    refused = [torch.randn(3, dtype=torch.bfloat16), torch.randn(3, dtype=torch.float16),
               torch.arange(3), torch.ones(3, dtype=torch.bool), torch.randn(3, dtype=torch.cfloat),
               torch.empty(3, device="meta"), base.to_sparse(), neg, base.as_subclass(Traced)]
    for t in refused:
        assert ex.view(t) is None, t
        assert ex.views([base, t], 2) is None
    # the general route reads the negative view right: values, not their negation
    g, b = torch.ones(4), torch.zeros(4)
    out, _ = nd.layernorm_forward(neg.reshape(1, 4), g, b, {})
    ref, _ = nd.layernorm_forward(neg.resolve_neg().numpy().reshape(1, 4), g.numpy(), b.numpy(),
                                  {})
    np.testing.assert_array_equal(out.numpy(), ref)


def test_torch_exchange_exports_keep_their_array_alive(torch):
    """An exported array becomes a tensor of its memory that holds the array
    until the tensor goes, from any thread; the tensor cannot be resized
    (the memory is the array's); an array the export does not take goes
    through torch.from_numpy."""
    import threading
    import weakref
    from normdrop import _interop
    ex = _interop._exchange_for(torch.Tensor)
    if ex is None:
        pytest.skip("this PyTorch publishes no DLPack C exchange API")
    a = np.arange(12, dtype=np.float32).reshape(3, 4)
    for arr in (a, a.T, a[:, ::2], np.zeros((0, 3)), np.full((), 3.0)):
        t = ex.export(arr)
        assert type(t) is torch.Tensor and tuple(t.shape) == arr.shape
        assert t.dtype == (torch.float32 if arr.dtype == np.float32 else torch.float64)
        assert tuple(s * arr.itemsize for s in t.stride()) == arr.strides
        np.testing.assert_array_equal(t.numpy(), arr)
    t = ex.export(a)
    t[0, 0] = 100.0
    assert a[0, 0] == 100.0                                  # one memory
    with pytest.raises(RuntimeError, match="not resizable"):
        t.resize_(1000)
    arr = np.ones(1000)
    alive = weakref.ref(arr)
    holder = [ex.export(arr)]
    del arr
    assert alive() is not None                               # the tensor holds it
    th = threading.Thread(target=holder.clear)               # the tensor goes in another thread
    th.start()
    th.join()
    assert alive() is None
    ints = ex.export(np.arange(3))                           # (not a float: torch.from_numpy)
    assert ints.dtype == torch.int64 and ints.tolist() == [0, 1, 2]
    assert ex.export(None) is None
    # what the exchange would hand over wrongly goes through torch.from_numpy
    # too: negative strides (PyTorch's import would abort the process) are
    # its ValueError, a read-only array its warning
    with pytest.raises(ValueError, match="negative"):
        ex.export(np.arange(6.0)[::-1])
    ro = np.arange(4.0)
    ro.flags.writeable = False
    with pytest.warns(UserWarning, match="not writable"):
        t = ex.export(ro)
    np.testing.assert_array_equal(t.numpy(), ro)


@pytest.mark.parametrize("op_name", ["batchnorm", "layernorm"])
def test_torch_input_storage_swapped_after_the_forward(torch, conversion, op_name):
    """x.set_(other) and gamma.set_(other) between forward and backward: the
    cache still reads the forward's values (their memory is held, not
    freed under it), bit for bit the NumPy path's backward."""
    import gc
    rng = np.random.default_rng(8)
    xn, gn, bn = rng.standard_normal((16, 200)), rng.uniform(0.5, 2, 200), rng.standard_normal(200)
    dn = rng.standard_normal((16, 200))
    fwd = getattr(nd, f"{op_name}_forward")
    bwd = getattr(nd, f"{op_name}_backward")
    param = lambda: {"mode": "train"}  # noqa: E731
    _, ref_cache = fwd(xn, gn, bn, param())
    ref = bwd(dn, ref_cache)
    x, g = torch.from_numpy(xn.copy()), torch.from_numpy(gn.copy())
    _, cache = fwd(x, g, torch.from_numpy(bn), param())
    x.set_(torch.zeros(3, dtype=torch.float64))
    g.set_(torch.zeros(3, dtype=torch.float64))
    gc.collect()
    junk = [torch.full((16, 200), 7.0, dtype=torch.float64) for _ in range(8)]  # reuse freed memory
    got = bwd(torch.from_numpy(dn), cache)
    for a, r in zip(got, ref):
        np.testing.assert_array_equal(a.numpy(), r)
    del junk


@pytest.mark.parametrize("name", ["x", "gamma"])
def test_torch_input_storage_reallocated_after_the_forward_is_an_error(torch, conversion, name):
    """x.resize_ (or gamma's) to a larger size between forward and backward
    reallocates the storage in place, so the cache's view would read freed
    memory: the backward says so (ValueError) instead.  Through
    Tensor.numpy() the storage cannot be resized at all (RuntimeError)."""
    x, g, b = torch.randn(32, 10), torch.rand(10) + 0.5, torch.randn(10)
    _, cache = nd.batchnorm_forward(x, g, b, {"mode": "train"})
    t = x if name == "x" else g
    if conversion == "numpy":
        with pytest.raises(RuntimeError, match="not resizable"):
            t.resize_(100000)
        return
    t.resize_(100000)
    lost = f"the memory of the forward's {name} \\(a torch tensor\\) was reallocated after the forward"
    for dout in (torch.randn(32, 10), torch.randn(32, 10, dtype=torch.float64)):  # (fast, general)
        with pytest.raises(ValueError, match=lost):
            nd.batchnorm_backward(dout, cache)
    # nor does anything else read the cache's views of it: its x and gamma,
    # a pickle, a copy
    import copy
    for read in (lambda: cache.x, lambda: cache.gamma, lambda: pickle.dumps(cache),
                 lambda: copy.deepcopy(cache)):
        with pytest.raises(ValueError, match=lost):
            read()


def test_torch_cache_keeps_no_tensor_of_the_caller(torch, conversion):
    """The cache holds x's memory, not x: a tensor of an autograd graph (and
    the graph) goes when the caller drops it, and the backward still reads
    the forward's values."""
    import gc
    import weakref
    rng = np.random.default_rng(9)
    xn, dn = rng.standard_normal((16, 6)), rng.standard_normal((16, 6))
    w = torch.from_numpy(xn / 2).requires_grad_()
    x = w * 2.0                                             # values xn, with a grad_fn
    g, b = torch.ones(6, dtype=torch.float64), torch.zeros(6, dtype=torch.float64)
    _, cache = nd.layernorm_forward(x, g, b, {})
    alive = weakref.ref(x)
    del x
    gc.collect()
    assert alive() is None
    _, ref_cache = nd.layernorm_forward(xn, g.numpy(), b.numpy(), {})
    for a, r in zip(nd.layernorm_backward(torch.from_numpy(dn), cache),
                    nd.layernorm_backward(dn, ref_cache)):
        np.testing.assert_array_equal(a.numpy(), r)


# -------------------------------------------------------------------- JAX
@pytest.fixture(scope="module")
def jnp():
    jax = pytest.importorskip("jax", reason="jax is not installed (optional)")
    jax.config.update("jax_enable_x64", True)
    import jax.numpy as jnp
    return jnp


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("name", list(OPS))
def test_jax_arrays_bit_for_bit_the_numpy_path(jnp, name, dtype):
    op = OPS[name]
    x, dout, gamma, beta = _data(op, dtype, seed=3)
    ref, _ = _run(op, x, dout, gamma, beta)
    j = lambda a: None if a is None else jnp.asarray(a)  # noqa: E731
    got, _ = _run(op, j(x), j(dout), j(gamma), j(beta))
    for g, r in zip(got, ref):
        assert type(g).__module__.startswith("jax"), type(g)
        assert str(g.dtype) == dtype
        np.testing.assert_array_equal(np.asarray(g), r)


JAX_NO_X64 = r"""
import warnings, numpy as np, jax, jax.numpy as jnp, normdrop as nd
assert not jax.config.jax_enable_x64
x = jnp.asarray(np.random.default_rng(0).standard_normal((64, 16)).astype(np.float32))
g, b = jnp.ones(16), jnp.zeros(16)
with warnings.catch_warnings():
    warnings.simplefilter("error")         # the C kernels: float64 accumulation, no warning
    out, _ = nd.batchnorm_forward(x, g, b, {"mode": "train"})
ref, _ = nd.batchnorm_forward(np.asarray(x), np.ones(16, np.float32), np.zeros(16, np.float32),
                              {"mode": "train"})
assert (np.asarray(out) == ref).all()
with warnings.catch_warnings(record=True) as w:
    warnings.simplefilter("always")
    with nd.force_reference():
        nd.batchnorm_forward(x, g, b, {"mode": "train"})
assert any(issubclass(v.category, nd.AccumulationWarning) for v in w), [str(v) for v in w]
for seed in (0, 7, 2**32, 2**63, 2**64 - 1):
    for offset in (0, 5, 2**40 + 3):
        expected = nd.dropout_mask((37, 11), 0.4, seed, offset=offset)
        m = nd.dropout_mask((37, 11), 0.4, seed, like=x, offset=offset)
        with nd.force_reference():
            mr = nd.dropout_mask((37, 11), 0.4, seed, like=x, offset=offset)
        assert (np.asarray(m) == expected).all() and (np.asarray(mr) == expected).all(), seed
# the reference's backward takes the float32 statistics its forward made
# (it rejected its own cache as changed: it expected float64)
rng = np.random.default_rng(1)
x4 = jnp.asarray(rng.standard_normal((4, 6, 3, 3)).astype(np.float32))
d4 = jnp.asarray(rng.standard_normal((4, 6, 3, 3)).astype(np.float32))
cases = [
    (lambda a, g, b: nd.batchnorm_forward(a, g, b, {"mode": "train"}), nd.batchnorm_backward,
     x, 16, (64, 16)),
    (lambda a, g, b: nd.layernorm_forward(a, g, b, {}), nd.layernorm_backward, x, 16, (64, 16)),
    (lambda a, g, b: nd.spatial_groupnorm_forward(a, g, b, 3, {}), nd.spatial_groupnorm_backward,
     x4, 6, x4.shape),
]
for fwd, bwd, xin, c, shape in cases:
    dout = d4 if xin is x4 else jnp.asarray(rng.standard_normal(shape).astype(np.float32))
    gj = jnp.asarray(rng.standard_normal(c).astype(np.float32)); bj = jnp.ones(c)
    o_c, c_c = fwd(xin, gj, bj)
    grads_c = bwd(dout, c_c)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", nd.AccumulationWarning)
        with nd.force_reference():
            o_r, c_r = fwd(xin, gj, bj)
            grads_r = bwd(dout, c_r)
    for got, want in zip((o_r, *grads_r), (o_c, *grads_c)):
        assert str(got.dtype) == "float32", got.dtype
        np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-4, atol=1e-4)
print("ok")
"""


def test_jax_without_x64(jnp):
    """Without JAX_ENABLE_X64: the C kernels still accumulate in float64; the
    reference path says it cannot (AccumulationWarning) instead of silently
    computing in float32; dropout masks work for every seed and offset on
    both paths (the reference's int64 Philox overflowed)."""
    env = dict(os.environ, JAX_ENABLE_X64="0", JAX_PLATFORMS="cpu")
    res = subprocess.run([sys.executable, "-c", JAX_NO_X64], env=env, capture_output=True,
                         text=True, timeout=300, cwd=ROOT)
    assert res.returncode == 0 and res.stdout.strip().endswith("ok"), res.stderr[-3000:]


# --------------------------------------------------------- other DLPack arrays
def test_array_api_strict_arrays_reach_the_c_kernels():
    """array_api_strict exports DLPack on the CPU: unless the reference is
    forced, its arrays run on the C kernels and come back as its arrays."""
    xps = pytest.importorskip("array_api_strict")
    rng = np.random.default_rng(1)
    x = rng.standard_normal((30, 4))
    out, cache = nd.batchnorm_forward(xps.asarray(x), xps.ones(4), xps.zeros(4),
                                      {"mode": "train"})
    assert type(out).__module__.startswith("array_api_strict")
    assert cache.backend_name == "cpu"
    ref, _ = nd.batchnorm_forward(x, np.ones(4), np.zeros(4), {"mode": "train"})
    np.testing.assert_array_equal(np.asarray(out), ref)
    with nd.force_reference():
        _, rcache = nd.batchnorm_forward(xps.asarray(x), xps.ones(4), xps.zeros(4),
                                         {"mode": "train"})
    assert rcache.backend_name == "reference"
