"""The backend contract (normdrop/_contract.py): every backend implements the
same steps under the same names and no other public ones; the composites
equal, bit for bit, the composition of the steps on the same backend; the
shared C/CUDA helpers (the moments merge, the keep threshold) behave."""
from __future__ import annotations

import __future__
import inspect
import math
import types

import numpy as np
import pytest

from normdrop import _contract as K
from normdrop import _philox, _reference
from normdrop._cpu import _backend as cpu_backend
from normdrop._cpu import _kernels
from normdrop._cuda import _backend as cuda_backend
from conftest import _layout

BACKEND_MODULES = {"reference": _reference, "cpu": cpu_backend, "cuda": cuda_backend}


def _public(mod):
    return {n for n, v in vars(mod).items()
            if not n.startswith("_") and not isinstance(v, (types.ModuleType, __future__._Feature))}


@pytest.mark.parametrize("name", list(BACKEND_MODULES))
def test_backend_defines_exactly_the_contract(name):
    mod = BACKEND_MODULES[name]
    public = _public(mod)
    assert public == set(K.PUBLIC), (f"missing: {sorted(set(K.PUBLIC) - public)}; "
                                     f"extra: {sorted(public - set(K.PUBLIC))}")
    assert isinstance(mod, K.Backend)
    assert mod.NAME == name


@pytest.mark.parametrize("name", list(BACKEND_MODULES))
def test_steps_take_the_contract_arguments(name):
    mod = BACKEND_MODULES[name]
    for step in K.PUBLIC:
        if step in K.DESCRIPTORS:
            continue
        want = list(inspect.signature(getattr(K.Backend, step)).parameters)[1:]   # no self
        got = list(inspect.signature(getattr(mod, step)).parameters)
        if step == "dropout_mask":
            want = [p for p in want if p != "device"]
            got = [p for p in got if p != "device"]
        assert got == want, (name, step, got, want)


# ------------------------------------------------ composites == compositions
CPU_CASES = [
    # (logical shape, layout, groups)
    ((40, 7), "contiguous", 0), ((5000, 3), "contiguous", 0), ((60, 300), "fortran", 0),
    ((9, 12, 5, 6), "contiguous", 0),        # fused planes (C >= 8, small channels)
    ((3, 4, 70, 90), "contiguous", 0),       # few channels: units in parallel, then the merge
    ((3, 16, 160, 170), "contiguous", 0),    # large planes: not fused
    ((6, 5, 4, 3), "channels_last", 0),
    ((33, 48), "contiguous", 1),             # layernorm rows
    ((4, 12, 5, 7), "contiguous", 3),        # groupnorm planes
    ((4, 12, 5, 7), "channels_last", 4),     # groupnorm channels-last
    ((1, 64, 30, 30), "channels_last", 8),   # one sample's groups in ranges (threads > N)
    ((1, 24, 40, 40), "channels_last", 3),
    ((1, 96, 20, 20), "channels_last", 32),  # backward blocks < threads: ranges of groups
    ((2, 16, 32, 32), "channels_last", 4),   # (a block of 2 samples)
    ((2, 2, 200, 200), "contiguous", 1),     # one group of 80000 values: several units
]


def _geom(shape, groups):
    if groups and len(shape) == 2:
        return K.rows_geometry(shape)
    if groups:
        return K.groups_geometry(shape, groups)
    return K.channels_geometry(shape)


def _case(shape, layout, groups, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = _layout((rng.standard_normal(shape) * 2 + 1).astype(dtype), layout)
    dout = _layout(rng.standard_normal(shape).astype(dtype), layout)
    C = shape[-1] if groups and len(shape) == 2 else shape[1]
    gamma = rng.uniform(0.5, 2, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    return x, dout, gamma, beta, _geom(shape, groups)


def _host(a):
    return np.asarray(a)


@pytest.mark.parametrize("backend_name", ["cpu", "reference"])
@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,layout,groups", CPU_CASES,
                         ids=[f"{'x'.join(map(str, s))}-{lay}-g{g}" for s, lay, g in CPU_CASES])
def test_composites_equal_the_composition_of_the_steps(backend_name, dtype, shape, layout, groups):
    be = BACKEND_MODULES[backend_name]
    xp = np
    if backend_name == "reference":
        import array_api_compat.numpy as xp
    x, dout, gamma, beta, geom = _case(shape, layout, groups, dtype)
    eps = 1e-5
    out, mean, var, invstd = be.norm_train_fwd(xp, x, geom, gamma, beta, eps)
    count, m, m2 = be.moments(xp, x, geom)
    assert count == geom.count
    v, iv = K.finish_moments(xp, count, m, m2, eps)
    o = be.normalize(xp, x, geom, m, iv, gamma, beta)
    for a, b, what in ((out, o, "out"), (mean, m, "mean"), (var, v, "var"), (invstd, iv, "invstd")):
        np.testing.assert_array_equal(_host(a), _host(b), err_msg=what)
    assert _host(mean).shape == (geom.ngroups,)
    for train in (True, False) if groups == 0 else (True,):
        dx, dgamma, dbeta = be.norm_bwd(xp, dout, x, geom, mean, invstd, gamma, train)
        s1, s2, dg, db = be.grad_reduce(xp, dout, x, geom, mean, invstd, gamma)
        d = be.grad_input(xp, dout, x, geom, mean, invstd, gamma, s1, s2, train, geom.count)
        for a, b, what in ((dx, d, "dx"), (dgamma, dg, "dgamma"), (dbeta, db, "dbeta")):
            np.testing.assert_array_equal(_host(a), _host(b), err_msg=f"{what} train={train}")
        assert _host(dx).dtype == np.dtype(dtype) and _host(dgamma).dtype == np.dtype(dtype)


def test_steps_agree_with_the_reference():
    """Each step of the CPU backend against the reference's, to rounding."""
    for shape, layout, groups in CPU_CASES:
        x, dout, gamma, beta, geom = _case(shape, layout, groups, "float64", seed=3)
        import array_api_compat.numpy as xp
        _, m, m2 = cpu_backend.moments(np, x, geom)
        _, rm, rm2 = _reference.moments(xp, x, geom)
        np.testing.assert_allclose(m, rm, rtol=1e-12, atol=1e-12)
        np.testing.assert_allclose(m2, rm2, rtol=1e-10)
        iv = 1.0 / np.sqrt(m2 / geom.count + 1e-5)
        np.testing.assert_allclose(cpu_backend.normalize(np, x, geom, m, iv, gamma, beta),
                                   _reference.normalize(xp, x, geom, m, iv, gamma, beta),
                                   rtol=1e-12, atol=1e-12)
        got = cpu_backend.grad_reduce(np, dout, x, geom, m, iv, gamma)
        exp = _reference.grad_reduce(xp, dout, x, geom, m, iv, gamma)
        for g, e in zip(got, exp):
            np.testing.assert_allclose(g, e, rtol=1e-10, atol=1e-9)
        np.testing.assert_allclose(
            cpu_backend.grad_input(np, dout, x, geom, m, iv, gamma, got[0], got[1], True,
                                   geom.count),
            _reference.grad_input(xp, dout, x, geom, m, iv, gamma, exp[0], exp[1], True,
                                  geom.count),
            rtol=1e-9, atol=1e-10)


# ------------------------------------------------------ the shared headers
def test_merge_moments_huge_constant_channel():
    """Sets of the constant 1e200 (d * d overflows): the first set is taken as
    it is and later ones add d = 0, so the variance is 0, not NaN."""
    count = np.array([[4.0], [3.0], [5.0]])
    mean = np.full((3, 1), 1e200)
    m2 = np.zeros((3, 1))
    n, mu, q = _kernels.merge_moments(count, mean, m2)
    assert n[0] == 12.0 and mu[0] == 1e200 and q[0] == 0.0


def test_merge_moments_large_mean_small_spread():
    """float64 data of mean -3e7 and std 1e-2, cut into sets: the merged
    moments are those of the whole, to rounding."""
    rng = np.random.default_rng(5)
    x = -3e7 + 1e-2 * rng.standard_normal(10007)
    cuts = [0, 1, 2, 500, 501, 4000, 10007]
    parts = [x[a:b] for a, b in zip(cuts[:-1], cuts[1:])]
    count = np.array([[len(p)] for p in parts], np.float64)
    mean = np.array([[math.fsum(p) / len(p)] for p in parts])
    m2 = np.array([[math.fsum((p - mu[0]) ** 2)] for p, mu in zip(parts, mean)])
    n, mu, q = _kernels.merge_moments(count, mean, m2)
    exact_mean = math.fsum(x) / x.size
    assert n[0] == x.size
    assert abs(mu[0] - exact_mean) <= 1e-15 * abs(exact_mean)
    exact_m2 = math.fsum((x - exact_mean) ** 2)
    assert abs(q[0] - exact_m2) <= 1e-7 * exact_m2
    assert abs(q[0] / n[0] - 1e-4) < 1e-5


def test_merge_moments_one_value_per_set():
    """Sets of one value each (count 1, M2 0) merge to the two-pass moments."""
    vals = np.array([3.0, -1.5, 7.25, 0.0, 2.0, 1e-3])
    n, mu, q = _kernels.merge_moments(np.ones((6, 1)), vals[:, None], np.zeros((6, 1)))
    assert n[0] == 6
    np.testing.assert_allclose(mu[0], vals.mean(), rtol=1e-15)
    np.testing.assert_allclose(q[0], ((vals - vals.mean()) ** 2).sum(), rtol=1e-14)


def test_merge_moments_skips_empty_sets_and_checks_shapes():
    n, mu, q = _kernels.merge_moments([[0.0, 2.0], [3.0, 0.0]], [[9.0, 1.0], [2.0, 9.0]],
                                      [[9.0, 0.5], [0.25, 9.0]])
    np.testing.assert_array_equal(n, [3.0, 2.0])
    np.testing.assert_array_equal(mu, [2.0, 1.0])
    np.testing.assert_array_equal(q, [0.25, 0.5])
    with pytest.raises(ValueError, match="one \\(nsets, ngroups\\) shape"):
        _kernels.merge_moments(np.ones((2, 3)), np.ones((2, 2)), np.ones((2, 3)))


def test_keep_threshold_header_equals_reference():
    rng = np.random.default_rng(0)
    ps = [1.0, 0.5, 0.25, 0.1, 0.3, 1e-9, 1e-12, 2.0**-32, 2.0**-33, 5e-324, 1 - 2**-53,
          np.nextafter(0.5, 0), np.nextafter(0.5, 1)] + list(rng.uniform(0, 1, 2000))
    for p in ps:
        if p <= 0:
            continue
        assert _kernels.keep_threshold(float(p)) == _philox.keep_threshold(float(p)), p
    assert _kernels.keep_threshold(1.0) == 2**32
