"""The CUDA backend: kernel-source assembly (runs everywhere) and CuPy-only
checks beyond the shared matrix (skipped, with the reason, where CuPy or a
GPU is missing): float16 tolerances, masks and outputs bit-identical to the
CPU backend, mixed libraries, statistics staying on the device, layouts,
determinism, streams."""
from __future__ import annotations

import importlib.util
import math
import os
import re
import subprocess
import sys

import numpy as np
import pytest

import normdrop as nd
from normdrop import _cuda, _philox
from normdrop._cuda import _backend as cuda_backend
from normdrop._cuda import _loader
from conftest import LAYOUTS_2D, LAYOUTS_4D, _layout, assert_close, oracle

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CUDA_DIR = os.path.dirname(os.path.abspath(_cuda.__file__))     # installed or in the tree
IN_SOURCE_TREE = os.path.isfile(os.path.join(ROOT, "pyproject.toml"))


# ============================================================ no GPU needed
def _launched_kernels():
    """Kernel names the backend launches (first argument of _launch(...))."""
    with open(os.path.join(CUDA_DIR, "_backend.py"), encoding="utf-8") as f:
        text = f.read()
    return set(re.findall(r'_launch\(\s*"(\w+)"', text))


def test_loader_sources_are_complete_and_well_formed():
    for module, (filename, templated, plain) in _loader.MODULES.items():
        src = _loader.source(module)
        for path in _loader.HEADERS:
            with open(path, encoding="utf-8") as f:
                assert f.read() in src, f"{path} is inlined verbatim"
        assert src.index("ND_PHILOX_H") < src.index("ND_MOMENTS_H") < src.index("ND_COMMON_CU") \
            < src.index(f'"{filename}"')
        for name in ("nd_philox.h", "nd_moments.h", _loader.COMMON_FILE, filename):
            assert f'#line 1 "{name}"' in src
        defined = _loader.defined_kernels(src)
        # every kernel the loader instantiates is defined, and every kernel
        # defined is instantiated (so the NVRTC check compiles all of them)
        assert set(templated) | set(plain) == defined, (module, defined)
        for k in templated:
            assert re.search(r"template\s*<typename T>\s*__global__\s+void\s+"
                             r"(__launch_bounds__\s*\(\w+\)\s*)?" + k + r"\s*\(", src), k
        for k in plain:
            assert not re.search(r"template\s*<typename T>\s*__global__\s+void\s+"
                                 r"(__launch_bounds__\s*\(\w+\)\s*)?" + k + r"\s*\(", src), k
        assert src.count("{") == src.count("}")


def test_name_expressions():
    exprs = _loader.name_expressions("nd_dropout")
    assert "nd_dropout_fwd<nd_half>" in exprs and "nd_dropout_fwd<double>" in exprs
    assert "nd_dropout_mask" in exprs
    assert len(exprs) == len(set(exprs))
    for module, (_, templated, plain) in _loader.MODULES.items():
        exprs = _loader.name_expressions(module)
        assert len(exprs) == len(templated) * len(_loader.CTYPES) + len(plain)
    assert _loader.kernel_name("nd_normalize", np.dtype(np.float16)) == "nd_normalize<nd_half>"
    assert _loader.kernel_name("nd_normalize", "float32") == "nd_normalize<float>"
    assert _loader.kernel_name("nd_moments_merge") == "nd_moments_merge"
    with pytest.raises(KeyError):
        _loader.module_of("nd_no_such_kernel")


def test_every_launched_kernel_exists():
    launched = _launched_kernels()
    assert {"nd_moments_part", "nd_moments_merge", "nd_normalize", "nd_grad_reduce_part",
            "nd_grad_reduce_affine_part", "nd_grad_reduce_merge", "nd_grad_input",
            "nd_running_update", "nd_dropout_fwd",
            "nd_dropout_bwd", "nd_dropout_mask"} == launched
    for k in launched:
        module = _loader.module_of(k)
        assert k in _loader.defined_kernels(_loader.source(module))


def test_kernel_types_cover_the_supported_dtypes():
    assert [d.name for d in cuda_backend.supported_dtypes(None)] == list(_loader.CTYPES)
    assert cuda_backend.NAME == "cuda"


def test_sources_are_package_data():
    for filename, _, _ in _loader.MODULES.values():
        assert os.path.isfile(_loader.cu_path(filename))
    assert os.path.isfile(_loader.cu_path(_loader.COMMON_FILE))
    for path in _loader.HEADERS:
        assert os.path.isfile(path)
    if IN_SOURCE_TREE:                  # (an installed wheel has no pyproject.toml)
        with open(os.path.join(ROOT, "pyproject.toml"), encoding="utf-8") as f:
            pyproject = f.read()
        assert '"normdrop._cuda" = ["*.cu"' in pyproject


def test_thread_count_agrees_with_the_kernels():
    src = _loader.source("nd_norm")
    m = re.search(r"#define ND_THREADS (\d+)", src)
    assert m and int(m.group(1)) == _loader.THREADS


def test_backend_imports_without_cupy():
    """The loader and the backend module import where CuPy is absent (CI)."""
    code = ("import sys; sys.modules['cupy'] = None\n"
            "from normdrop._cuda import _loader\n"
            "from normdrop._cuda._backend import NAME, supported_dtypes\n"
            "assert _loader.source('nd_dropout')\n"
            "assert 'cupy' not in [k for k, v in sys.modules.items() if v is not None]\n")
    r = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    assert r.returncode == 0, r.stderr


@pytest.mark.parametrize("geom", [
    (0, 8192, 4096, 1, 4096, 1), (0, 802816, 64, 1, 64, 1), (0, 10**8, 3, 1, 3, 1),
    (0, 5, 100000, 1, 100000, 1), (1, 256, 64, 3136, 200704, 3136), (1, 1, 4096, 8192, 0, 8192),
    (1, 3, 2, 10**6, 2 * 10**6, 10**6), (1, 10**6, 3, 4, 12, 4), (1, 2, 70000, 300, 0, 300)])
def test_reduction_plan_covers_and_fits_the_grid(geom):
    """Parts depend on the shape only, cover every value once, and the grid
    respects CUDA's limits."""
    geom = geom + (1, 0)                     # ss, groups
    kind, N, C, S = geom[:4]
    grid, pn, ps, G = cuda_backend._reduce_plan(geom)
    assert grid[0] <= 2**31 - 1 and grid[1] <= 65535 and grid[2] == 1
    assert min(grid) >= 1
    if kind == cuda_backend._ROWS:
        assert grid[1] == G and (G - 1) * pn < N <= G * pn
        assert grid[0] * min(C, 32) >= C
    else:
        nseg = -(-S // ps)
        assert G % nseg == 0 and (nseg - 1) * ps < S <= nseg * ps
        gp = G // nseg
        assert (gp - 1) * pn < N <= gp * pn
        assert grid[0] == G and grid[1] == min(C, 65535)
    eg = cuda_backend._elementwise_grid(geom)
    assert min(eg) >= 1 and eg[0] <= 2**31 - 1 and eg[1] <= 65535


def test_nvrtc_compiles_every_instantiation():
    """The CI compile check, run here too when the NVRTC wheels are installed."""
    try:
        from cuda.bindings import nvrtc  # noqa: F401
    except ImportError:
        pytest.skip("cuda-bindings (NVRTC) is not installed")
    path = os.path.join(ROOT, ".ci", "nvrtc_check.py")
    if not os.path.isfile(path):
        pytest.skip("the compile check script is in the source tree only")
    spec = importlib.util.spec_from_file_location("nvrtc_check", path)
    check = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(check)
    try:
        nv = check._nvrtc()
        nv.nvrtcVersion()
    except Exception as exc:  # noqa: BLE001 - libnvrtc missing
        pytest.skip(f"NVRTC unusable: {exc}")
    for module in _loader.MODULES:
        ok, _, log, lowered = check.compile_module(nv, _loader, module, "sm_80")
        assert ok, log
        assert set(lowered) == set(_loader.name_expressions(module))


# ================================================================ GPU only
def _gpu_skip_reason():
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001
        return f"CuPy is not importable ({type(exc).__name__}: {exc})"
    try:
        if not cupy.cuda.is_available():
            return "cupy.cuda.is_available() is False (no GPU)"
    except Exception as exc:  # noqa: BLE001
        return f"CUDA unusable ({type(exc).__name__}: {exc})"
    return None


_REASON = _gpu_skip_reason()
gpu = pytest.mark.skipif(_REASON is not None, reason=_REASON or "")


@pytest.fixture
def cp():
    if _REASON is not None:
        pytest.skip(_REASON)
    import cupy
    return cupy


def _to_cupy(cp, a, layout="contiguous"):
    """a (NumPy) on the GPU with the memory layout of conftest._layout."""
    a = np.asarray(a)
    if layout == "contiguous" or a.ndim == 0:
        return cp.asarray(np.ascontiguousarray(a))
    if layout == "fortran":
        return cp.asfortranarray(cp.asarray(np.ascontiguousarray(a)))
    if layout == "channels_last":
        return cp.ascontiguousarray(cp.asarray(a).transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2)
    if layout == "noncontiguous":
        big = cp.zeros(a.shape[:-1] + (2 * a.shape[-1] + 1,), dtype=a.dtype)
        view = big[..., 1::2]
        view[...] = cp.asarray(np.ascontiguousarray(a))
        return view
    raise ValueError(layout)


def _data(shape, dtype, seed=0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    C = shape[1]
    return x, rng.uniform(0.5, 2.0, C), rng.standard_normal(C), \
        rng.standard_normal(shape).astype(dtype)


def _is_layout(a, layout):
    if layout == "channels_last":
        return a.transpose(0, 2, 3, 1).flags.c_contiguous
    if layout == "fortran":
        return a.flags.f_contiguous
    return a.flags.c_contiguous


CASES = [("bn", s, lay) for s in [(16, 37), (700, 3), (600, 70)] for lay in LAYOUTS_2D] + \
        [("spatial", s, lay) for s in [(4, 5, 6, 7), (3, 2, 17, 19), (40, 3, 2, 2)] for lay in LAYOUTS_4D]


@gpu
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("op,shape,layout", CASES, ids=[f"{o}-{'x'.join(map(str, s))}-{lay}"
                                                         for o, s, lay in CASES])
def test_batchnorm_against_reference_and_layout(cp, op, shape, layout, dtype):
    """Forward (train and test) and backward against the reference on NumPy
    (float32 data for float16, with the float16 tolerance); outputs keep
    x's memory layout; running statistics stay on the device."""
    fwd, bwd = ((nd.batchnorm_forward, nd.batchnorm_backward) if op == "bn" else
                (nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward))
    x, gamma, beta, dout = _data(shape, dtype, seed=sum(shape))
    od = "float32" if dtype == "float16" else dtype
    xg = _to_cupy(cp, x, layout)
    for mode in ("train", "test"):
        C = shape[1]
        bp = {"mode": mode, "momentum": 0.8}
        bpr = dict(bp)
        if mode == "test":
            rm, rv = np.linspace(-1, 1, C).astype(dtype), np.linspace(0.5, 2, C).astype(dtype)
            bp.update(running_mean=cp.asarray(rm), running_var=cp.asarray(rv))
            bpr.update(running_mean=rm.astype(od), running_var=rv.astype(od))
        out, cache = fwd(xg, cp.asarray(gamma), cp.asarray(beta), bp)
        eout, ecache = oracle(fwd, x.astype(od), gamma, beta, bpr)
        assert isinstance(out, cp.ndarray) and out.dtype == np.dtype(dtype)
        assert _is_layout(out, layout)
        assert_close(cp.asnumpy(out), eout, dtype, f"{mode} out")
        if mode == "train":
            for k in ("running_mean", "running_var"):
                assert isinstance(bp[k], cp.ndarray) and bp[k].dtype == np.dtype(dtype)
                assert bp[k].device == xg.device and bp[k].shape == (C,)
                assert_close(cp.asnumpy(bp[k]), bpr[k], dtype, k)
        assert isinstance(cache.mean, cp.ndarray) and cache.mean.dtype == np.float64
        dx, dg, db = bwd(_to_cupy(cp, dout, layout), cache)
        edx, edg, edb = oracle(bwd, dout.astype(od), ecache)
        assert _is_layout(dx, layout)
        assert_close(cp.asnumpy(dx), edx, dtype, f"{mode} dx")
        assert_close(cp.asnumpy(dg), edg, dtype, f"{mode} dgamma")
        assert_close(cp.asnumpy(db), edb, dtype, f"{mode} dbeta")


@gpu
@pytest.mark.parametrize("dtype", ["float32", "float64"])
def test_batchnorm_matches_cpu_backend_on_large_shapes(cp, dtype):
    """Many reduction parts per channel (and more than 256 of them)."""
    for shape, layout in [((140000, 33), "contiguous"), ((20000, 3), "fortran"),
                          ((30, 8, 40, 41), "contiguous"), ((30, 8, 40, 41), "channels_last"),
                          ((1, 2, 130, 130), "contiguous")]:
        x, gamma, beta, dout = _data(shape, dtype, seed=3)
        fwd = nd.batchnorm_forward if len(shape) == 2 else nd.spatial_batchnorm_forward
        bwd = nd.batchnorm_backward if len(shape) == 2 else nd.spatial_batchnorm_backward
        out, cache = fwd(_to_cupy(cp, x, layout), cp.asarray(gamma), cp.asarray(beta),
                         {"mode": "train"})
        cout, ccache = fwd(_layout(x, layout), gamma, beta, {"mode": "train"})
        assert_close(cp.asnumpy(out), cout, dtype, f"{shape} out")
        got = bwd(_to_cupy(cp, dout, layout), cache)
        exp = bwd(_layout(dout, layout), ccache)
        for g, e, what in zip(got, exp, ("dx", "dgamma", "dbeta")):
            assert_close(cp.asnumpy(g), e, dtype, f"{shape} {what}")


@gpu
def test_batchnorm_is_deterministic(cp):
    """No atomics: the same input gives bitwise the same results."""
    x, gamma, beta, dout = _data((64, 32, 28, 28), "float32", seed=9)
    xg, dg = cp.asarray(x), cp.asarray(dout)
    runs = []
    for _ in range(3):
        out, cache = nd.spatial_batchnorm_forward(xg, cp.asarray(gamma), cp.asarray(beta),
                                                  {"mode": "train"})
        runs.append([cp.asnumpy(a) for a in (out, cache.mean, cache.invstd)
                     + nd.spatial_batchnorm_backward(dg, cache)])
    for r in runs[1:]:
        for a, b in zip(runs[0], r):
            np.testing.assert_array_equal(a, b)


@gpu
def test_float16_statistics_keep_precision(cp):
    """float16 data accumulate in float32 (merged in float64): the batch
    statistics of many values are those of the float32 copy."""
    rng = np.random.default_rng(0)
    x = (rng.standard_normal((50000, 4)) * 0.5 + 100).astype(np.float16)
    _, cache = nd.batchnorm_forward(cp.asarray(x), cp.ones(4, cp.float16),
                                    cp.zeros(4, cp.float16), {"mode": "train"})
    x64 = x.astype(np.float64)
    np.testing.assert_allclose(cp.asnumpy(cache.mean), x64.mean(axis=0), rtol=1e-6)
    np.testing.assert_allclose(cp.asnumpy(cache.invstd), 1 / np.sqrt(x64.var(axis=0) + 1e-5),
                               rtol=1e-5)


SEEDS = [0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32, 0x0123456789ABCDEF, 2**63, 2**64 - 2, 2**64 - 1]
SHAPES = [(), (1,), (3,), (7,), (8,), (63,), (64,), (65,), (1023,), (1024,), (1025,), (3, 5, 7),
          (257, 33), (2, 3, 4, 5), (1031, 517)]
PS = [1e-9, 0.25, 0.5, 0.7, 0.999999, 1.0]


@gpu
@pytest.mark.parametrize("seed", SEEDS)
def test_mask_equals_numpy_bit_for_bit(cp, seed):
    like = cp.zeros(1)
    for shape in SHAPES:
        for p in PS:
            m = nd.dropout_mask(shape, p, seed, like=like)
            assert isinstance(m, cp.ndarray) and m.dtype == np.bool_ and m.shape == shape
            expected = nd.dropout_mask(shape, p, seed)
            np.testing.assert_array_equal(cp.asnumpy(m), expected, err_msg=f"{shape} p={p}")
            if p == 1.0:
                assert bool(m.all())


@gpu
@pytest.mark.parametrize("dtype", ["float16", "float32", "float64"])
@pytest.mark.parametrize("seed", [0, 7, 2**32 + 5, 2**64 - 1])
def test_dropout_outputs_and_bits_bit_for_bit(cp, dtype, seed):
    """out, the packed bits and dx equal the reference (NumPy, same dtype)
    exactly, including float32/float16 subnormals and float16 overflow."""
    rng = np.random.default_rng(seed % 1000)
    for shape in [(), (5,), (1025,), (3, 5, 7), (513, 67)]:
        x = rng.standard_normal(shape).astype(dtype)
        dout = rng.standard_normal(shape).astype(dtype)
        if x.size > 4:
            tiny = {"float16": 3e-7, "float32": 1e-40, "float64": 1e-310}[dtype]
            x.flat[1], x.flat[2] = tiny, -tiny
            x.flat[3] = np.finfo(dtype).max / 1.5
        for p in (0.3, 0.6, 1.0):
            param = {"p": p, "mode": "train", "seed": seed}
            with np.errstate(over="ignore"):
                out, cache = nd.dropout_forward(cp.asarray(x), dict(param))
                eout, ecache = oracle(nd.dropout_forward, x, dict(param))
                edx = oracle(nd.dropout_backward, dout, ecache)
            assert out.shape == shape and out.dtype == np.dtype(dtype)
            np.testing.assert_array_equal(cp.asnumpy(out), eout, err_msg=f"{shape} p={p}")
            np.testing.assert_array_equal(cp.asnumpy(cache.bits), ecache.bits)
            dx = nd.dropout_backward(cp.asarray(dout), cache)
            np.testing.assert_array_equal(cp.asnumpy(dx), edx)
            if dtype != "float16" and len(shape):
                _, ccache = nd.dropout_forward(x, dict(param))
                np.testing.assert_array_equal(cp.asnumpy(cache.bits), ccache.bits)


@gpu
def test_dropout_unaligned_and_strided_inputs(cp):
    """Inputs off 16-byte alignment (scalar path) and strided views."""
    x = np.random.default_rng(2).standard_normal(4099).astype(np.float32)
    xg = cp.asarray(x)
    for view, host in [(xg[1:], x[1:]), (xg[3:], x[3:]), (xg[::2], x[::2])]:
        param = {"p": 0.45, "mode": "train", "seed": 11}
        out, cache = nd.dropout_forward(view, dict(param))
        eout, ecache = oracle(nd.dropout_forward, np.ascontiguousarray(host), dict(param))
        np.testing.assert_array_equal(cp.asnumpy(out), eout)
        np.testing.assert_array_equal(cp.asnumpy(nd.dropout_backward(view, cache)),
                                      oracle(nd.dropout_backward, host, ecache))


@gpu
def test_mixed_cupy_and_numpy_raise_type_error(cp):
    x = cp.ones((4, 3))
    with pytest.raises(TypeError, match="different array libraries"):
        nd.batchnorm_forward(x, np.ones(3), cp.zeros(3), {"mode": "train"})
    bp = {"mode": "train", "running_mean": np.zeros(3)}
    with pytest.raises(TypeError, match="running_mean"):
        nd.batchnorm_forward(x, cp.ones(3), cp.zeros(3), bp)
    assert isinstance(bp["running_mean"], np.ndarray)           # left as it was
    _, cache = nd.batchnorm_forward(x, cp.ones(3), cp.zeros(3), {"mode": "train"})
    with pytest.raises(TypeError, match="dout"):
        nd.batchnorm_backward(np.ones((4, 3)), cache)
    _, dcache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
    with pytest.raises(TypeError, match="dout"):
        nd.dropout_backward(np.ones((4, 3)), dcache)
    _, ncache = nd.dropout_forward(np.ones((4, 3)), {"p": 0.5, "mode": "train", "seed": 1})
    with pytest.raises(TypeError, match="dout"):
        nd.dropout_backward(x, ncache)


@gpu
def test_mixed_devices_raise_type_error(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs")
    x = cp.ones((4, 3))
    with cp.cuda.Device(1):
        g = cp.ones(3)
    with pytest.raises(TypeError, match="different devices"):
        nd.batchnorm_forward(x, g, cp.zeros(3), {"mode": "train"})


@gpu
def test_ops_on_a_non_default_stream(cp):
    x, gamma, beta, dout = _data((256, 16, 9, 9), "float32", seed=4)
    ref_out, _ = nd.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
    stream = cp.cuda.Stream(non_blocking=True)
    with stream:
        xg = cp.asarray(x)
        out, cache = nd.spatial_batchnorm_forward(xg, cp.asarray(gamma), cp.asarray(beta),
                                                  {"mode": "train"})
        dx = nd.spatial_batchnorm_backward(cp.asarray(dout), cache)[0]
        h, dc = nd.dropout_forward(out, {"p": 0.5, "mode": "train", "seed": 3})
    stream.synchronize()
    assert_close(cp.asnumpy(out), ref_out, "float32", "out on a stream")
    assert dx.shape == x.shape and h.shape == x.shape


@gpu
def test_dropout_test_mode_and_zero_sizes(cp):
    x = cp.ones((0, 5), cp.float16)
    out, cache = nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": 1})
    assert out.shape == (0, 5) and cache.bits.shape == (0,)
    assert nd.dropout_backward(cp.ones((0, 5), cp.float16), cache).shape == (0, 5)
    assert nd.dropout_mask((0, 3), 0.5, 1, like=x).shape == (0, 3)
    out, _ = nd.batchnorm_forward(cp.ones((0, 3)), cp.ones(3), cp.zeros(3), {"mode": "test"})
    assert out.shape == (0, 3)


@gpu
def test_philox_reference_on_cupy_matches_kernels(cp):
    """The reference's Philox on CuPy arrays agrees with the CUDA kernel."""
    import array_api_compat.cupy as xp
    n, seed = 1000, 2**64 - 1
    words = _philox.dropout_words(xp, n, seed)
    t = _philox.keep_threshold(0.37)
    np.testing.assert_array_equal(cp.asnumpy(words < t),
                                  cp.asnumpy(nd.dropout_mask((n,), 0.37, seed, like=cp.zeros(1))))
    assert math.floor(0.37 * 2**32) == t
