"""The CUDA kernels on the CPU: ``normdrop/_cuda/*.cu`` compiled by the host
C++ compiler against ``tests/cuda_host/cuda_shim.h`` and run through the CUDA
backend (``normdrop/_cuda/_backend.py``, unchanged) with a NumPy-backed
stand-in for CuPy.  No GPU is needed; the module is skipped, with the
reason, where g++ or the kernel sources are missing.

First the harness itself (float16 conversions, barriers, thread order, and
the checks that must fire: divergent barriers, races, argument types,
out-of-bounds writes, launch limits), then the backend: batchnorm against
the reference, dropout and masks bit for bit against the CPU backend, and
the extreme inputs (huge constant channels, large means, one value per
channel, inf).
"""
from __future__ import annotations

import math
import os
import platform
import struct

import numpy as np
import pytest

import normdrop as nd
from normdrop import _contract as K
from normdrop import _reference
from normdrop._cuda import _backend as cuda_be
from normdrop._cuda import _loader
from conftest import TOLERANCES, _layout, assert_close


def _skip_reason():
    if os.name != "posix":
        return "the CUDA host harness needs a POSIX system (mmap, fibers)"
    try:
        import cuda_host
    except ImportError as exc:
        return f"tests/cuda_host is not importable: {exc}"
    if not os.path.isfile(cuda_host.launcher.SHIM_PATH):
        return "tests/cuda_host/cuda_shim.h is missing"
    if cuda_host.compiler() is None:
        return "no host C++ compiler (g++) on PATH"
    sources = list(_loader.HEADERS) + [_loader.cu_path(_loader.COMMON_FILE)] + \
        [_loader.cu_path(f) for f, _, _ in _loader.MODULES.values()]
    missing = [p for p in sources if not os.path.isfile(p)]
    if missing:
        return "CUDA kernel sources absent: " + ", ".join(os.path.basename(p) for p in missing)
    return None


_SKIP = _skip_reason()
if _SKIP:
    pytest.skip(_SKIP, allow_module_level=True)

import array_api_compat.numpy as npx  # noqa: E402

import cuda_host  # noqa: E402
from cuda_host import FakeCupy, LaunchError, loader_function, reversed_order  # noqa: E402

EPS = 1e-5
DTYPES = ("float16", "float32", "float64")


# The batchnorm steps of a backend (the CUDA one, or the reference) through
# the contract: training forward, test-mode forward, backward.
def _geom_of(x):
    return K.channels_geometry(tuple(x.shape))


def _geometry(x):
    return cuda_be._geometry(x, _geom_of(x))


def _train(be, xp, x, gamma, beta, eps):
    return be.norm_train_fwd(xp, x, _geom_of(x), gamma, beta, eps)


def _test(be, xp, x, gamma, beta, rm, rv, eps):
    """normalize with the running statistics, as normdrop._api does."""
    host = FakeCupy.asnumpy if be is cuda_be else np.asarray
    mean = np.asarray(host(rm), np.float64)
    invstd = 1.0 / np.sqrt(np.asarray(host(rv), np.float64) + eps)
    if be is cuda_be:
        mean, invstd = xp.asarray(mean), xp.asarray(invstd)
    return be.normalize(xp, x, _geom_of(x), mean, invstd, gamma, beta), mean, invstd


def _backward(be, xp, dout, x, gamma, mean, invstd, train):
    return be.norm_bwd(xp, dout, x, _geom_of(x), mean, invstd, gamma, train)


# ================================================================ fixtures
@pytest.fixture(scope="module")
def modules():
    """Every kernel module of the loader, built once (in parallel)."""
    names = list(_loader.MODULES)
    built = cuda_host.build_many([(_loader.source(m), _loader.name_expressions(m))
                                  for m in names])
    return dict(zip(names, built))


@pytest.fixture
def cp(monkeypatch, modules):
    """The fake CuPy, installed where the CUDA backend looks for CuPy and its
    kernels; its guard bytes are checked once more at the end."""
    fake = FakeCupy()
    monkeypatch.setattr(cuda_be, "_cupy", lambda: fake)
    monkeypatch.setattr(_loader, "function", loader_function(fake, _loader))
    yield fake
    fake.check_guards()


def _np(a):
    return FakeCupy.asnumpy(a)


def _bits(a):
    """The bytes of a as unsigned integers of its item size (bit-for-bit
    comparisons: -0.0 differs from +0.0, unwritten poison from anything)."""
    a = np.ascontiguousarray(_np(a))
    return a.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}[a.dtype.itemsize])


def _is_layout(a, layout):
    if layout == "channels_last":
        return a.transpose(0, 2, 3, 1).flags.c_contiguous
    if layout == "fortran":
        return a.flags.f_contiguous
    return a.flags.c_contiguous


def _assert_close_nonfinite(actual, expected, dtype, what):
    """assert_close where expected is finite; NaN and +-inf exactly where
    expected has them."""
    a = _np(actual).astype(np.float64)
    e = np.asarray(expected, np.float64)
    fin = np.isfinite(e)
    np.testing.assert_array_equal(np.isnan(a), np.isnan(e), err_msg=f"{what}: NaN positions")
    np.testing.assert_array_equal(a[np.isinf(e)], e[np.isinf(e)], err_msg=f"{what}: inf")
    assert_close(a[fin], e[fin], dtype, what)


# ======================================================== the harness itself
@pytest.fixture(scope="module")
def shim():
    """The shim alone (no kernels): its conversion entry points."""
    return cuda_host.build("", ())


def _half_oracle(d):
    """binary16 bits of the double d, rounded once to nearest even
    (Python's struct, independent of NumPy and of the shim)."""
    try:
        return struct.unpack("<H", struct.pack("<e", d))[0]
    except OverflowError:
        return 0xFC00 if d < 0 else 0x7C00


def test_shim_half_to_float_is_exact(shim):
    h = np.arange(65536, dtype=np.uint16)
    got = shim.shim_apply(0, h)
    exp = h.view(np.float16).astype(np.float32)
    nan = np.isnan(exp)
    np.testing.assert_array_equal(np.isnan(got), nan)
    np.testing.assert_array_equal(got.view(np.uint32)[~nan], exp.view(np.uint32)[~nan])


def test_shim_double_to_half_rounds_once(shim):
    """Every finite half, the midpoints between neighbours (ties to even),
    one double ulp either side of them (a double rounding through float
    would make those ties), subnormals, the overflow threshold, random
    values over the whole range."""
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = (halves[:-1] + halves[1:]) / 2          # exact in double
    vals = [halves, mids, np.nextafter(mids, np.inf), np.nextafter(mids, -np.inf),
            np.array([65504.0, 65519.99999999999, 65520.0, 65536.0, 1e300, np.inf,
                      2.0**-24, 2.0**-25, np.nextafter(2.0**-25, 1.0), 3 * 2.0**-26,
                      2.0**-14, 2.0**-14 - 2.0**-25, 1e-300, 5e-324, 0.0])]
    rng = np.random.default_rng(5)
    vals.append(np.exp2(rng.uniform(-30, 17, 20000)))
    d = np.concatenate(vals)
    d = np.concatenate([d, -d])
    got = shim.shim_apply(2, d)
    exp = np.array([_half_oracle(float(v)) for v in d], np.uint16)
    bad = np.flatnonzero(got != exp)
    assert bad.size == 0, [(float(d[i]), hex(got[i]), hex(exp[i])) for i in bad[:5]]
    nan = shim.shim_apply(2, np.array([np.nan, -np.nan]))
    assert np.isnan(nan.view(np.float16)).all()


def test_shim_float_to_half_rounds_once(shim):
    rng = np.random.default_rng(6)
    f = rng.integers(0, 2**32, 200000, dtype=np.uint64).astype(np.uint32).view(np.float32)
    halves = np.arange(0x7C00, dtype=np.uint16).view(np.float16).astype(np.float64)
    mids = ((halves[:-1] + halves[1:]) / 2).astype(np.float32)       # exact in float32
    f = np.concatenate([f[~np.isnan(f)], mids, np.nextafter(mids, np.float32(np.inf)),
                        np.nextafter(mids, np.float32(-np.inf))])
    f = np.concatenate([f, -f])
    with np.errstate(over="ignore"):
        exp = f.astype(np.float16).view(np.uint16)
    np.testing.assert_array_equal(shim.shim_apply(1, f), exp)


def test_shim_float_conversions_and_products_keep_subnormals(shim):
    rng = np.random.default_rng(7)
    d = np.concatenate([np.exp2(rng.uniform(-160, 130, 5000)), [1e-45, 1.4e-45, 7e-46, 3e38, 4e38]])
    d = np.concatenate([d, -d])
    with np.errstate(over="ignore"):
        f = d.astype(np.float32)
    np.testing.assert_array_equal(_bits(shim.shim_apply(4, d)), _bits(f))
    np.testing.assert_array_equal(shim.shim_apply(3, f), f.astype(np.float64))
    a = np.array([1e-20, 3e-30, -2e-25, 1e20], np.float32)
    b = np.array([1e-20, 1e-10, 3e-20, 1e20], np.float32)
    with np.errstate(over="ignore", under="ignore"):
        prod = shim.shim_apply(5, a, b)
        np.testing.assert_array_equal(_bits(prod), _bits(a * b))
    assert prod[0] != 0 and abs(prod[0]) < np.finfo(np.float32).tiny, "float32 subnormal flushed"
    x = np.array([1e-160, 3e-300], np.float64)
    y = np.array([1e-160, 1e-20], np.float64)
    with np.errstate(under="ignore"):
        dprod = shim.shim_apply(6, x, y)
        np.testing.assert_array_equal(dprod, x * y)
    assert 0 < dprod[0] < np.finfo(np.float64).tiny, "float64 subnormal flushed"


# Kernels exercising the scheduler and the launcher's checks.
TOY_SOURCE = r"""
#line 1 "toy.cu"
/* Reverse each block through shared memory, three barriers deep; locals
 * live across the barriers (callee-saved registers of the fibers). */
__global__ void toy_reverse(const double *in, double *out)
{
    __shared__ double sh[1024];
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned long long b = blockIdx.x + gridDim.x * (blockIdx.y + (unsigned long long)gridDim.y * blockIdx.z);
    const double mine = in[b * n + t];
    sh[t] = mine;
    __syncthreads();
    const double v = sh[n - 1 - t];
    __syncthreads();
    sh[t] = v + 0.5 * mine;
    __syncthreads();
    out[b * n + t] = sh[(t + 1) % n] - mine;
}

/* Every thread writes its coordinates and the launch dimensions. */
__global__ void toy_index(int *out)
{
    const unsigned n = blockDim.x * blockDim.y * blockDim.z;
    const unsigned t = threadIdx.x + blockDim.x * (threadIdx.y + blockDim.y * threadIdx.z);
    const unsigned b = blockIdx.x + gridDim.x * (blockIdx.y + gridDim.y * blockIdx.z);
    int *o = out + 12 * (b * n + t);
    o[0] = threadIdx.x; o[1] = threadIdx.y; o[2] = threadIdx.z;
    o[3] = blockIdx.x; o[4] = blockIdx.y; o[5] = blockIdx.z;
    o[6] = blockDim.x; o[7] = blockDim.y; o[8] = blockDim.z;
    o[9] = gridDim.x; o[10] = gridDim.y; o[11] = gridDim.z;
}

/* Threads k.. return at once; the others still meet at the barrier. */
__global__ void toy_early_exit(int *out, int k)
{
    __shared__ int sh[1024];
    const int t = threadIdx.x;
    if (t >= k) return;
    sh[t] = 10 * t;
    __syncthreads();
    out[t] = sh[k - 1 - t];
}

/* Odd and even threads wait at different barriers: undefined in CUDA. */
__global__ void toy_divergent(int *out)
{
    if (threadIdx.x & 1) {
        __syncthreads();
    } else {
        __syncthreads();
    }
    out[threadIdx.x] = 1;
}

/* Reads a neighbour's shared-memory write with no barrier between. */
__global__ void toy_race(int *out, int salt)
{
    __shared__ int sh[1024];
    sh[threadIdx.x] = (int)threadIdx.x + salt;
    out[threadIdx.x] = sh[(threadIdx.x + 1) % blockDim.x];
}

/* Block b reads what block b - 1 writes in the same launch. */
__global__ void toy_block_race(int *buf)
{
    if (threadIdx.x == 0) buf[blockIdx.x + 1] = buf[blockIdx.x] + 1;
}

/* Writes one element past the end. */
__global__ void toy_oob(float *out, long long n)
{
    if (threadIdx.x == 0) out[n] = 1.0f;
}

/* Scalar parameters of every width the backend passes. */
template <typename T>
__global__ void __launch_bounds__(32) toy_args(const T *in, T *out, long long *iout,
                                               unsigned long long *uout, int a, long long b,
                                               unsigned long long c, double d)
{
    if (threadIdx.x == 0) {
        out[0] = in[0];
        iout[0] = a;
        iout[1] = b;
        uout[0] = c;
        out[1] = (T)d;
    }
}
"""
TOY_NAMES = ("toy_reverse", "toy_index", "toy_early_exit", "toy_divergent", "toy_race",
             "toy_block_race", "toy_oob", "toy_args<float>", "toy_args<double>")
SWITCHES = ["default", "ucontext"]


@pytest.fixture(scope="module", params=SWITCHES)
def toy(request):
    """The toy kernels, built with the default fiber switch and with the
    portable ucontext one."""
    defines = ("ND_SHIM_UCONTEXT",) if request.param == "ucontext" else ()
    mod = cuda_host.build(TOY_SOURCE, TOY_NAMES, defines)
    if request.param == "ucontext":
        assert mod.context_switch == "ucontext"
    elif platform.machine().lower() in ("x86_64", "amd64", "aarch64", "arm64") \
            and not os.environ.get("ND_CUDA_HOST_CXXFLAGS"):
        assert mod.context_switch == "asm"          # the fast switch is the one tested
    return mod


@pytest.mark.parametrize("block", [(256, 1, 1), (1, 1, 1), (7, 3, 2), (1024, 1, 1)])
@pytest.mark.parametrize("reverse", [False, True])
def test_barriers_order_the_phases_of_a_block(toy, block, reverse):
    grid = (3, 2, 1)
    n = block[0] * block[1] * block[2]
    x = np.random.default_rng(1).standard_normal(6 * n)
    out = np.full_like(x, np.nan)
    toy.launch("toy_reverse", grid, block, (x, out), reverse=reverse)
    xb = x.reshape(6, n)
    t = np.arange(n)
    u = (t + 1) % n
    exp = (xb[:, n - 1 - u] + 0.5 * xb[:, u]) - xb
    np.testing.assert_array_equal(out.reshape(6, n), exp)


def test_thread_and_block_coordinates(toy):
    grid, block = (3, 2, 2), (4, 3, 2)
    n, nb = 24, 12
    out = np.full(12 * n * nb, -1, np.int32)
    toy.launch("toy_index", grid, block, (out,))
    o = out.reshape(nb, n, 12)
    tz, ty, tx = np.meshgrid(range(2), range(3), range(4), indexing="ij")
    bz, by, bx = np.meshgrid(range(2), range(2), range(3), indexing="ij")
    for k, v in enumerate((tx, ty, tz)):
        np.testing.assert_array_equal(o[:, :, k], np.broadcast_to(v.reshape(-1), (nb, n)))
    for k, v in enumerate((bx, by, bz)):
        np.testing.assert_array_equal(o[:, :, 3 + k], np.broadcast_to(v.reshape(-1)[:, None], (nb, n)))
    np.testing.assert_array_equal(o[:, :, 6:], np.broadcast_to(block + grid, (nb, n, 6)))


@pytest.mark.parametrize("k", [1, 100, 255])
def test_threads_that_return_leave_the_barrier(toy, k):
    out = np.full(256, -1, np.int32)
    toy.launch("toy_early_exit", 1, 256, (out, np.int32(k)))
    np.testing.assert_array_equal(out[:k], 10 * (k - 1 - np.arange(k)))
    assert (out[k:] == -1).all()


def test_divergent_barriers_are_reported(toy):
    out = np.zeros(64, np.int32)
    with pytest.raises(LaunchError, match=r"divergent __syncthreads\(\).*toy\.cu:\d+.*toy\.cu:\d+"):
        toy.launch("toy_divergent", 1, 64, (out,))


def test_races_show_in_the_reverse_order(toy):
    """What the order-independence tests of the backend rely on: a missing
    barrier, or blocks that depend on each other, give different results in
    the forward and the reverse order."""
    fwd, rev = np.zeros(64, np.int32), np.zeros(64, np.int32)
    toy.launch("toy_race", 1, 64, (fwd, np.int32(1000)))
    toy.launch("toy_race", 1, 64, (rev, np.int32(2000)), reverse=True)
    synchronized = (np.arange(64) + 1) % 64          # what a barrier would give, minus salt
    assert not np.array_equal(fwd - 1000, synchronized)
    assert not np.array_equal(rev - 2000, synchronized)
    assert not np.array_equal(fwd - 1000, rev - 2000)
    a, b = np.zeros(9, np.int32), np.zeros(9, np.int32)
    toy.launch("toy_block_race", 8, 32, (a,))
    toy.launch("toy_block_race", 8, 32, (b,), reverse=True)
    assert not np.array_equal(a, b)


def test_scalar_arguments_keep_their_width(toy):
    for T in (np.float32, np.float64):
        name = f"toy_args<{'float' if T is np.float32 else 'double'}>"
        inp, out = np.array([1.25], T), np.zeros(2, T)
        iout, uout = np.zeros(2, np.int64), np.zeros(1, np.uint64)
        toy.launch(name, 1, 32, (inp, out, iout, uout, np.int32(-7), np.int64(-(2**40) - 3),
                                 np.uint64(2**64 - 5), np.float64(0.1)))
        assert out[0] == 1.25 and out[1] == T(0.1)
        assert iout.tolist() == [-7, -(2**40) - 3] and int(uout[0]) == 2**64 - 5


def test_argument_mismatches_are_errors(toy):
    inp, out = np.zeros(1, np.float32), np.zeros(2, np.float32)
    iout, uout = np.zeros(2, np.int64), np.zeros(1, np.uint64)
    good = [inp, out, iout, uout, np.int32(1), np.int64(2), np.uint64(3), np.float64(4)]
    name = "toy_args<float>"
    for i, bad in [(4, np.int64(1)), (5, np.int32(2)), (6, np.int64(3)), (7, np.float32(4)),
                   (5, 2), (7, 4.0), (0, np.zeros(1)), (2, np.zeros(2, np.uint64)),
                   (0, np.float32(1))]:
        args = list(good)
        args[i] = bad
        with pytest.raises(TypeError, match=f"argument {i} of"):
            toy.launch(name, 1, 32, tuple(args))
    ro = out.copy()
    ro.flags.writeable = False
    with pytest.raises(TypeError, match="read-only"):
        toy.launch(name, 1, 32, (inp, ro) + tuple(good[2:]))
    with pytest.raises(TypeError, match="takes 8 arguments"):
        toy.launch(name, 1, 32, tuple(good[:-1]))
    with pytest.raises(KeyError):
        toy.launch("toy_args<int>", 1, 32, tuple(good))
    toy.launch(name, 1, 32, tuple(good))             # and the good ones pass


def test_launch_limits_are_enforced(toy):
    out = np.zeros(1, np.int32)
    for grid, block in [((1, 65536), 1), ((2**31, 1), 1), (0, 1), (1, 1025), (1, (32, 1, 65)),
                        (1, (64, 32, 1))]:
        with pytest.raises(ValueError, match="invalid launch configuration"):
            toy.launch("toy_index", grid, block, (out,))


def test_fake_cupy_finds_out_of_bounds_writes_and_host_arrays(toy):
    if cuda_host.fake_cupy.GUARD == 0:
        pytest.skip("guard bytes are off (ND_CUDA_HOST_GUARD=0)")
    cp = FakeCupy()
    kernel = cuda_host.fake_cupy.RawKernel(cp, toy, "toy_oob")
    a = cp.empty(5, np.float32)
    kernel((1,), (32,), (a, np.int64(4)))            # the last element: fine
    assert a[4] == 1.0 and np.isnan(a[:4]).all()     # and the rest is still poison
    with pytest.raises(AssertionError, match=r"array \(5,\) float32: written up to 4 bytes past the end"):
        kernel((1,), (32,), (a, np.int64(5)))
    with pytest.raises(TypeError, match="host numpy.ndarray"):
        kernel((1,), (32,), (np.zeros(5, np.float32), np.int64(0)))
    b = cp.empty(3, np.float32)
    assert b.data.ptr % 256 == 0 and b[1:].data.ptr % 16 != 0


def test_fake_cupy_keeps_layouts():
    cp = FakeCupy()
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    for layout in ("contiguous", "channels_last", "noncontiguous"):
        xl = _layout(x, layout)
        d = cp.asarray(xl)
        assert isinstance(d, cp.ndarray) and d.strides == xl.strides
        np.testing.assert_array_equal(_np(d), x)
        assert cp.ascontiguousarray(d).flags.c_contiguous
        assert (cp.ascontiguousarray(d) is d) == xl.flags.c_contiguous
    f = cp.empty((3, 4), np.float64, order="F")
    assert f.flags.f_contiguous and np.isnan(f).all()
    assert (cp.zeros(4, np.float16) == 0).all()
    with cp.cuda.Device(), d.device:
        pass


# ======================================================== the CUDA backend
def _data(shape, dtype, seed=0, center=3.0, spread=2.0):
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(shape) * spread + center).astype(dtype)
    C = shape[1]
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    return x, gamma, beta, dout


def _f64(*arrays):
    return [np.asarray(a, np.float64) for a in arrays]


# (shape, layout): what each exercises, in the launch geometry of
# normdrop/_cuda/_backend.py (ROWS: rows x channel tiles of 32; PLANES:
# planes x segments of a plane); test_cases_cover_the_geometry checks it.
BN_CASES = [
    ((7, 5), "contiguous"),            # ROWS, one part, partial warp of channels
    ((7, 5), "fortran"),               # PLANES, one plane of 7 per channel
    ((7, 5), "noncontiguous"),         # copied to C order first
    ((3, 37), "contiguous"),           # ROWS, two channel tiles (32 + 5)
    ((3, 37), "fortran"),
    ((600, 70), "contiguous"),         # ROWS, three tiles x two parts
    ((600, 70), "fortran"),            # PLANES, S = 600 > 256 threads
    ((5441, 3), "contiguous"),         # ROWS, two parts, the second of one row
    ((20000, 3), "fortran"),           # PLANES, a plane cut in two segments
    ((2, 3, 5, 7), "contiguous"),      # PLANES, S = 35
    ((2, 3, 5, 7), "channels_last"),   # ROWS over N*H*W rows
    ((4, 5, 6, 7), "contiguous"),
    ((4, 5, 6, 7), "channels_last"),
    ((3, 40, 4, 5), "contiguous"),     # C > 32
    ((3, 40, 4, 5), "channels_last"),  # ROWS, two channel tiles
    ((5, 4, 1, 1), "contiguous"),      # H * W == 1: ROWS
    ((70, 2, 16, 16), "contiguous"),   # PLANES, two parts of planes
    ((70, 2, 16, 16), "channels_last"),  # ROWS, three parts
    ((2, 1, 130, 130), "contiguous"),  # PLANES, 2 planes x 2 segments = 4 parts
    ((33, 2, 15, 20), "contiguous"),   # PLANES, S = 300, two parts
    ((3, 2, 4, 5), "noncontiguous"),
]


def _case_id(case):
    shape, layout = case
    return "x".join(map(str, shape)) + "-" + layout


def test_cases_cover_the_geometry(cp):
    """The case list reaches what it is meant to: several reduction parts
    in both geometries, a plane cut into segments, several channel tiles."""
    seen = set()
    for shape, layout in BN_CASES:
        xd = cp.asarray(_layout(np.zeros(shape, np.float32), layout))
        _, geom, _ = _geometry(xd)
        kind, N, C, S = geom[:4]
        _, pn, ps, G = cuda_be._reduce_plan(geom)
        name = "rows" if kind == cuda_be._ROWS else "planes"
        seen.add(f"{name}-G{min(G, 2)}")
        if kind == cuda_be._PLANES and ps < S:
            seen.add("segments")
        if kind == cuda_be._ROWS and C > 32:
            seen.add("tiles")
        if kind == cuda_be._PLANES and S > cuda_be._THREADS:
            seen.add("long-planes")
    assert {"rows-G1", "rows-G2", "planes-G1", "planes-G2", "segments", "tiles",
            "long-planes"} <= seen, seen


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", BN_CASES, ids=_case_id)
def test_batchnorm_against_reference(cp, case, dtype):
    """bn_train, bn_test and bn_backward (both modes) against the reference
    on the float64 values of the same data; outputs keep x's layout; the
    statistics are float64, as accurate as the design says (float32/float64
    data accumulate in double, float16 data in float then double)."""
    shape, layout = case
    x, gamma, beta, dout = _data(shape, dtype, seed=sum(shape))
    x64, g64, b64, d64 = _f64(x, gamma, beta, dout)
    stats_tol = "float32" if dtype == "float16" else "float64"
    xd = cp.asarray(_layout(x, layout))
    gd, bd = cp.asarray(gamma), cp.asarray(beta)
    out_layout = "contiguous" if layout == "noncontiguous" else layout

    out, mean, var, invstd = _train(cuda_be, cp, xd, gd, bd, EPS)
    eout, emean, evar, einvstd = _train(_reference, npx, x64, g64, b64, EPS)
    assert isinstance(out, cp.ndarray) and out.dtype == np.dtype(dtype) and out.shape == shape
    assert _is_layout(out, out_layout)
    assert_close(_np(out), eout, dtype, "train out")
    for got, exp, what in ((mean, emean, "mean"), (var, evar, "var"), (invstd, einvstd, "invstd")):
        assert got.dtype == np.float64 and got.shape == (shape[1],)
        assert_close(_np(got), exp, stats_tol, what)

    dxd = cp.asarray(_layout(dout, layout))
    dx, dgamma, dbeta = _backward(cuda_be, cp, dxd, xd, gd, mean, invstd, True)
    edx, edgamma, edbeta = _backward(_reference, npx, d64, x64, g64, emean, einvstd, True)
    assert _is_layout(dx, out_layout) and dgamma.dtype == np.dtype(dtype)
    assert_close(_np(dx), edx, dtype, "train dx")
    assert_close(_np(dgamma), edgamma, dtype, "train dgamma")
    assert_close(_np(dbeta), edbeta, dtype, "train dbeta")

    C = shape[1]
    rm = np.linspace(-1, 1, C).astype(dtype)
    rv = np.linspace(0.5, 2, C).astype(dtype)
    out, mean, invstd = _test(cuda_be, cp, xd, gd, bd, cp.asarray(rm), cp.asarray(rv), EPS)
    eout, emean, einvstd = _test(_reference, npx, x64, g64, b64, *_f64(rm, rv), EPS)
    assert _is_layout(out, out_layout)
    assert_close(_np(out), eout, dtype, "test out")
    assert_close(_np(invstd), einvstd, "float64", "test invstd")
    np.testing.assert_array_equal(_np(mean), rm.astype(np.float64))
    dx, dgamma, dbeta = _backward(cuda_be, cp, dxd, xd, gd, mean, invstd, False)
    edx, edgamma, edbeta = _backward(_reference, npx, d64, x64, g64, emean, einvstd, False)
    assert_close(_np(dx), edx, dtype, "test dx")
    assert_close(_np(dgamma), edgamma, dtype, "test dgamma")
    assert_close(_np(dbeta), edbeta, dtype, "test dbeta")


def test_batchnorm_dout_in_another_layout_and_dtype(cp):
    x, gamma, beta, dout = _data((6, 5, 4, 3), "float32", seed=2)
    xd = cp.asarray(_layout(x, "channels_last"))
    _, mean, _, invstd = _train(cuda_be, cp, xd, cp.asarray(gamma), cp.asarray(beta), EPS)
    same = _backward(cuda_be, cp, cp.asarray(_layout(dout, "channels_last")), xd,
                             cp.asarray(gamma), mean, invstd, True)
    other = _backward(cuda_be, cp, cp.asarray(_layout(dout.astype(np.float64), "noncontiguous")),
                              xd, cp.asarray(gamma), mean, invstd, True)
    for a, b in zip(same, other):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_batchnorm_more_than_256_parts(cp):
    """More parts per channel than a merge block has threads (each merge
    thread takes a strided subset of the parts)."""
    _, pn, _, G = cuda_be._reduce_plan((cuda_be._ROWS, 10**6, 1, 1, 1, 1, 1, 0))
    N = 257 * pn + 1
    x, gamma, beta, dout = _data((N, 1), "float32", seed=4)
    xd = cp.asarray(x)
    _, geom, _ = _geometry(xd)
    assert cuda_be._reduce_plan(geom)[3] > cuda_be._THREADS
    out, mean, var, invstd = _train(cuda_be, cp, xd, cp.asarray(gamma), cp.asarray(beta), EPS)
    x64, g64, b64, d64 = _f64(x, gamma, beta, dout)
    eout, emean, evar, einvstd = _train(_reference, npx, x64, g64, b64, EPS)
    assert_close(_np(out), eout, "float32", "out")
    assert_close(_np(mean), emean, "float64", "mean")
    assert_close(_np(var), evar, "float64", "var")
    dx, dgamma, dbeta = _backward(cuda_be, cp, cp.asarray(dout), xd, cp.asarray(gamma), mean,
                                          invstd, True)
    edx, edgamma, edbeta = _backward(_reference, npx, d64, x64, g64, emean, einvstd, True)
    assert_close(_np(dx), edx, "float32", "dx")
    assert_close(_np(dgamma), edgamma, "float32", "dgamma")
    assert_close(_np(dbeta), edbeta, "float32", "dbeta")


def test_batchnorm_zero_sizes(cp):
    for shape in [(0, 3), (0, 2, 3, 3)]:
        x = cp.zeros(shape, np.float32)
        g, b = cp.zeros(shape[1], np.float32), cp.zeros(shape[1], np.float32)
        out, mean, invstd = _test(cuda_be, cp, x, g, b, g, g + 1, EPS)
        assert out.shape == shape and _np(invstd).tolist() == [1 / math.sqrt(1 + EPS)] * shape[1]
        dx, dg, db = _backward(cuda_be, cp, x, x, g, mean, invstd, False)
        assert dx.shape == shape and (_np(dg) == 0).all() and (_np(db) == 0).all()
    out, mean, var, invstd = _train(cuda_be, cp, cp.zeros((4, 0), np.float64),
                                            cp.zeros(0), cp.zeros(0), EPS)
    assert out.shape == (4, 0) and mean.shape == (0,)


ORDER_CASES = [((600, 70), "contiguous"), ((20000, 3), "fortran"),
               ((70, 2, 16, 16), "channels_last"), ((2, 1, 130, 130), "contiguous")]


@pytest.mark.parametrize("dtype", ["float16", "float64"])
@pytest.mark.parametrize("case", ORDER_CASES, ids=_case_id)
def test_results_do_not_depend_on_thread_or_block_order(cp, case, dtype):
    """Every result, bit for bit, with the blocks and the threads of each
    phase run in reverse order: no missing barrier, no block depending on
    another, no order-dependent merge."""
    shape, layout = case
    x, gamma, beta, dout = _data(shape, dtype, seed=11)

    def run():
        xd = cp.asarray(_layout(x, layout))
        gd, bd = cp.asarray(gamma), cp.asarray(beta)
        out, mean, var, invstd = _train(cuda_be, cp, xd, gd, bd, EPS)
        grads = _backward(cuda_be, cp, cp.asarray(_layout(dout, layout)), xd, gd, mean, invstd,
                                  True)
        drop, bits = cuda_be.dropout_fwd(cp, xd, 0.4, 123, 0)
        ddx = cuda_be.dropout_bwd(cp, cp.asarray(dout), bits, 0.4)
        return [_bits(a) for a in (out, mean, var, invstd, *grads, drop, bits, ddx)]

    forward = run()
    with reversed_order(cp):
        backward = run()
    for a, b in zip(forward, backward):
        np.testing.assert_array_equal(a, b)


def _small_grids(monkeypatch):
    """Launch the grid-stride kernels on one or two blocks: the kernels take
    any grid (their documented contract) except the x extent of a ROWS
    elementwise grid (one block per channel tile) and the parts of a
    reduction; the backend's own grids reach the grid-stride loops only for
    sizes too large to run here."""
    def elementwise(geom):
        kind, N, C, S = geom[:4]
        return (-(-C // min(C, 32)), 1, 1) if kind == cuda_be._ROWS else (1, 1, 1)

    plan = cuda_be._reduce_plan

    def reduce_plan(geom):                  # PLANES: one block row for all channels
        grid, pn, ps, G = plan(geom)
        return ((grid[0], 1, 1) if geom[0] == cuda_be._PLANES else grid), pn, ps, G
    monkeypatch.setattr(cuda_be, "_elementwise_grid", elementwise)
    monkeypatch.setattr(cuda_be, "_reduce_plan", reduce_plan)
    monkeypatch.setattr(cuda_be, "_channel_grid", lambda C: (min(C, 2), 1, 1))
    monkeypatch.setattr(cuda_be, "_tiles_grid", lambda n, per_block: (1, 1, 1))


@pytest.mark.parametrize("case", [((600, 70), "contiguous"), ((7, 5), "fortran"),
                                  ((70, 2, 16, 16), "contiguous"),
                                  ((3, 40, 4, 5), "channels_last")], ids=_case_id)
def test_kernels_accept_any_grid(cp, monkeypatch, case):
    """The same bits from one or two blocks looping over the work as from the
    backend's grids, in the forward and the reverse order (a barrier missing
    between two iterations of a block's loop shows in the reverse order)."""
    shape, layout = case
    x, gamma, beta, dout = _data(shape, "float32", seed=12)
    C = shape[1]
    rm, rv = np.linspace(-1, 1, C).astype(np.float32), np.linspace(0.5, 2, C).astype(np.float32)

    def run():
        xd = cp.asarray(_layout(x, layout))
        gd, bd = cp.asarray(gamma), cp.asarray(beta)
        out, mean, var, invstd = _train(cuda_be, cp, xd, gd, bd, EPS)
        ddx = cp.asarray(_layout(dout, layout))
        grads = _backward(cuda_be, cp, ddx, xd, gd, mean, invstd, True)
        tout, tmean, tinvstd = _test(cuda_be, cp, xd, gd, bd, cp.asarray(rm), cp.asarray(rv), EPS)
        tgrads = _backward(cuda_be, cp, ddx, xd, gd, tmean, tinvstd, False)
        drop, bits = cuda_be.dropout_fwd(cp, xd, 0.4, 5, 0)
        dropdx = cuda_be.dropout_bwd(cp, ddx, bits, 0.4)
        mask = cuda_be.dropout_mask(cp, shape, 0.4, 5, 0)
        return [_bits(a) for a in (out, mean, var, invstd, *grads, tout, tinvstd, *tgrads,
                                   drop, bits, dropdx, mask)]

    expected = run()
    with monkeypatch.context() as m:
        _small_grids(m)
        small = run()
        with reversed_order(cp):
            small_reversed = run()
    for got in (small, small_reversed):
        for a, b in zip(got, expected):
            np.testing.assert_array_equal(a, b)


# ----------------------------------------------------------------- dropout
SEEDS = [0, 1, 42, 2**31 - 1, 2**32 - 1, 2**32, 0x0123456789ABCDEF, 2**63, 2**64 - 2, 2**64 - 1]
MASK_SHAPES = [(), (1,), (3,), (7,), (8,), (63,), (64,), (65,), (1023,), (1024,), (1025,),
               (3, 5, 7), (257, 33), (2, 3, 4, 5), (0, 3)]
PS = [1e-9, 0.25, 0.5, 0.7, 0.999999, 1.0]


@pytest.mark.parametrize("seed", SEEDS)
def test_mask_equals_the_cpu_backend_bit_for_bit(cp, seed):
    for shape in MASK_SHAPES:
        for p in PS:
            m = cuda_be.dropout_mask(cp, shape, p, seed, 0)
            assert isinstance(m, cp.ndarray) and m.dtype == np.bool_ and m.shape == shape
            expected = nd.dropout_mask(shape, p, seed)
            np.testing.assert_array_equal(_bits(m), _bits(expected), err_msg=f"{shape} p={p}")


def _dropout_expected(x, dout, p, seed):
    """(out, bits, dx) of the CPU backend (float32, float64) or, for float16,
    which NumPy arrays do not take, the reference on NumPy float16."""
    if x.dtype == np.float16:
        out, bits = _reference.dropout_fwd(npx, x, p, seed, 0)
        return out, bits, _reference.dropout_bwd(npx, dout, bits, p)
    param = {"p": p, "mode": "train", "seed": seed}
    out, cache = nd.dropout_forward(x, param)
    return out, cache.bits, nd.dropout_backward(dout, cache)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("seed", [0, 7, 2**32 + 5, 2**64 - 1])
def test_dropout_bit_for_bit(cp, dtype, seed):
    """out, the packed bits and dx, bit for bit, including subnormals and
    products that overflow (float16)."""
    rng = np.random.default_rng(seed % 1000)
    for shape in [(), (5,), (7,), (1025,), (3, 5, 7), (513, 67), (2, 3, 4, 5)]:
        x = rng.standard_normal(shape).astype(dtype)
        dout = rng.standard_normal(shape).astype(dtype)
        if x.size > 4:
            tiny = {"float16": 3e-7, "float32": 1e-40, "float64": 1e-310}[dtype]
            x.flat[1], x.flat[2] = tiny, -tiny
            x.flat[3] = np.finfo(dtype).max / 1.5
        for p in (0.3, 0.6, 1.0):
            with np.errstate(over="ignore"):
                out, bits = cuda_be.dropout_fwd(cp, cp.asarray(x), p, seed, 0)
                dx = cuda_be.dropout_bwd(cp, cp.asarray(dout), bits, p)
                eout, ebits, edx = _dropout_expected(x, dout, p, seed)
            assert out.shape == shape and out.dtype == np.dtype(dtype) and bits.dtype == np.uint8
            np.testing.assert_array_equal(_bits(out), _bits(eout), err_msg=f"{shape} p={p} out")
            np.testing.assert_array_equal(_bits(bits), _bits(ebits), err_msg=f"{shape} p={p} bits")
            np.testing.assert_array_equal(_bits(dx), _bits(edx), err_msg=f"{shape} p={p} dx")


@pytest.mark.parametrize("dtype", DTYPES)
def test_dropout_unaligned_and_strided_inputs(cp, dtype):
    """Views off 16-byte alignment take the scalar path; strided views are
    copied to C order first."""
    x = np.random.default_rng(2).standard_normal(4099).astype(dtype)
    xd = cp.asarray(x)
    for view, host in [(xd[1:], x[1:]), (xd[3:], x[3:]), (xd[::2], x[::2])]:
        out, bits = cuda_be.dropout_fwd(cp, view, 0.45, 11, 0)
        dx = cuda_be.dropout_bwd(cp, view, bits, 0.45)
        eout, ebits, edx = _dropout_expected(np.ascontiguousarray(host),
                                             np.ascontiguousarray(host), 0.45, 11)
        np.testing.assert_array_equal(_bits(out), _bits(eout))
        np.testing.assert_array_equal(_bits(bits), _bits(ebits))
        np.testing.assert_array_equal(_bits(dx), _bits(edx))


def test_dropout_zero_sizes(cp):
    x = cp.zeros((0, 5), np.float16)
    out, bits = cuda_be.dropout_fwd(cp, x, 0.5, 1, 0)
    assert out.shape == (0, 5) and bits.shape == (0,)
    assert cuda_be.dropout_bwd(cp, x, bits, 0.5).shape == (0, 5)


# ------------------------------------------------------------ extreme data
HUGE_CASES = [((4, 2), "contiguous"), ((4, 2), "fortran"), ((1, 2, 4, 1), "contiguous"),
              ((1, 2, 4, 1), "channels_last"), ((4, 40), "contiguous")]


@pytest.mark.parametrize("case", HUGE_CASES, ids=_case_id)
def test_huge_constant_channel(cp, case):
    """Channels of four 1e200s: their mean is exact in every summation order,
    the variance is 0 and out is beta exactly (as on the CPU backend).  Each
    merge thread starts empty: the first-unit guard of nd_moments.h keeps d * d
    (inf) from meeting a count of 0."""
    shape, layout = case
    C = shape[1]
    x = np.full(shape, 1e200)
    beta = np.linspace(-3.0, 0.25, C)
    out, mean, var, invstd = _train(cuda_be, cp, cp.asarray(_layout(x, layout)),
                                            cp.asarray(np.ones(C)), cp.asarray(beta), EPS)
    np.testing.assert_array_equal(_np(mean), 1e200)
    np.testing.assert_array_equal(_np(var), 0.0)
    bshape = (1, C) if len(shape) == 2 else (1, C, 1, 1)
    np.testing.assert_array_equal(_np(out), np.broadcast_to(beta.reshape(bshape), shape))


@pytest.mark.parametrize("value", [3.5, 1e200], ids=["normal", "huge"])
@pytest.mark.parametrize("case", [((1, 5), "contiguous"), ((1, 5), "fortran"),
                                  ((1, 40), "contiguous"), ((1, 3, 1, 1), "contiguous"),
                                  ((1, 3, 1, 1), "channels_last")], ids=_case_id)
def test_one_value_per_channel(cp, case, value):
    """M = 1: every part but one is empty and the merge sees a single value:
    mean = the value, var = 0, out = beta, dx = 0 (up to its sign)."""
    shape, layout = case
    C = shape[1]
    x = np.full(shape, value) * np.linspace(1, 2, C).reshape((1, C) + (1,) * (len(shape) - 2))
    beta = np.linspace(-1.0, 1.0, C)
    xd = cp.asarray(_layout(x, layout))
    gd = cp.asarray(np.ones(C))
    out, mean, var, invstd = _train(cuda_be, cp, xd, gd, cp.asarray(beta), EPS)
    np.testing.assert_array_equal(_np(mean), x.reshape(C))
    np.testing.assert_array_equal(_np(var), 0.0)
    np.testing.assert_array_equal(_np(out).reshape(C), beta)
    dx, dgamma, dbeta = _backward(cuda_be, cp, cp.asarray(_layout(np.ones(shape), layout)), xd,
                                          gd, mean, invstd, True)
    np.testing.assert_array_equal(np.abs(_np(dx)), 0.0)
    np.testing.assert_array_equal(_np(dbeta), 1.0)
    np.testing.assert_array_equal(_np(dgamma), 0.0)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [((8, 3), "contiguous"), ((8, 3), "fortran"),
                                  ((2, 3, 2, 2), "contiguous")], ids=_case_id)
def test_constant_channel_with_tiny_eps(cp, case, dtype):
    """var = 0 and eps = 1e-300 make invstd = 1e150: x - mean = 0, so out is
    beta exactly, and dx is the reference's (infinite where it overflows).
    float16 keeps its coefficients in float, which cannot hold 1e150: such a
    channel is computed in double (nd_acc_holds)."""
    shape, layout = case
    C = shape[1]
    x = np.ones(shape, dtype)
    gamma = np.ones(C, dtype)
    beta = np.array([0.5, -1.0, 2.0], dtype)
    dout = np.linspace(-1, 1, x.size).reshape(shape).astype(dtype)
    x64, g64, b64, d64 = _f64(x, gamma, beta, dout)
    xd = cp.asarray(_layout(x, layout))
    out, mean, var, invstd = _train(cuda_be, cp, xd, cp.asarray(gamma), cp.asarray(beta), 1e-300)
    bshape = (1, C) if len(shape) == 2 else (1, C, 1, 1)
    np.testing.assert_array_equal(_np(out), np.broadcast_to(beta.reshape(bshape), shape))
    _, emean, _, einvstd = _train(_reference, npx, x64, g64, b64, 1e-300)
    dx, _, _ = _backward(cuda_be, cp, cp.asarray(_layout(dout, layout)), xd, cp.asarray(gamma),
                                 mean, invstd, True)
    edx = _backward(_reference, npx, d64, x64, g64, emean, einvstd, True)[0]
    with np.errstate(over="ignore"):
        edx = edx.astype(dtype).astype(np.float64)     # the reference rounded to dtype
    _assert_close_nonfinite(dx, edx, dtype, "dx")


@pytest.mark.parametrize("eps,gamma", [(1e-300, 1e10), (2.2250738585072014e-308, 10.0),
                                       (5e-309, 1.0), (5e-324, 10.0)])
@pytest.mark.parametrize("shape,layout,groups", [((16, 3), "contiguous", 0),
                                                 ((3, 4, 5, 6), "contiguous", 0),
                                                 ((4, 12), "contiguous", 1),
                                                 ((2, 6, 3, 4), "channels_last", 3)])
def test_tiny_eps_coefficients_stay_finite(cp, shape, layout, groups, eps, gamma):
    """A constant channel, row or group (float64) with a tiny eps: gamma *
    invstd**2 or invstd**3 overflows, times a sum that is exactly 0; dx must
    be the reference's, finite, not inf * 0 = NaN (as src_c's ch_coef and
    gr_coef)."""
    geom = _contract_geom(shape, groups)
    rng = np.random.default_rng(2)
    x = rng.standard_normal(shape)
    if groups == 0:
        x[:, 1] = 3.0
    elif len(shape) == 2:
        x[1] = 3.0
    else:
        x[1, 2:4] = 3.0
    C = geom.c
    g, b = np.full(C, gamma), np.linspace(-1, 1, C)
    dout = rng.standard_normal(shape)
    xd = cp.asarray(_layout(x, layout))
    out, mean, var, invstd = cuda_be.norm_train_fwd(cp, xd, geom, cp.asarray(g), cp.asarray(b),
                                                    eps)
    dx, _, _ = cuda_be.norm_bwd(cp, cp.asarray(_layout(dout, layout)), xd, geom, mean, invstd,
                                cp.asarray(g), True)
    _, emean, _, einvstd = _reference.norm_train_fwd(npx, x, geom, g, b, eps)
    edx = _reference.norm_bwd(npx, dout, x, geom, emean, einvstd, g, True)[0]
    assert np.isfinite(edx).all()
    got = _np(dx)
    assert np.isfinite(got).all(), "dx not finite"
    np.testing.assert_allclose(got, edx, rtol=0, atol=1e-9 * float(np.max(np.abs(edx))))


@pytest.mark.parametrize("eps", [1e-5, 1e-300])
@pytest.mark.parametrize("shape,layout,groups", [((5, 1), "contiguous", 1),
                                                 ((3, 4, 1, 1), "contiguous", 4),
                                                 ((3, 4, 1, 1), "channels_last", 4)])
def test_groups_of_one_value_have_dx_zero(cp, shape, layout, groups, eps):
    """A group of one value: dx is exactly 0, the reference's (its output is
    beta whatever x), not r gamma dout - r (gamma dout), a rounding error
    times r = 1/sqrt(eps) (as src_c's gr_coef)."""
    geom = _contract_geom(shape, groups)
    rng = np.random.default_rng(4)
    x, dout = rng.standard_normal(shape), 30 * rng.standard_normal(shape)
    C = geom.c
    g, b = np.linspace(0.7, 1.9, C), np.zeros(C)
    xd = cp.asarray(_layout(x, layout))
    _, mean, _, invstd = cuda_be.norm_train_fwd(cp, xd, geom, cp.asarray(g), cp.asarray(b), eps)
    dx, _, _ = cuda_be.norm_bwd(cp, cp.asarray(_layout(dout, layout)), xd, geom, mean, invstd,
                                cp.asarray(g), True)
    _, emean, _, einvstd = _reference.norm_train_fwd(npx, x, geom, g, b, eps)
    edx = _reference.norm_bwd(npx, dout, x, geom, emean, einvstd, g, True)[0]
    np.testing.assert_array_equal(edx, 0.0)
    np.testing.assert_array_equal(_np(dx), 0.0)


@pytest.mark.parametrize("case", [((600, 37), "contiguous"), ((20000, 3), "fortran"),
                                  ((70, 2, 16, 16), "contiguous"),
                                  ((70, 2, 16, 16), "channels_last")], ids=_case_id)
def test_large_mean_small_std(cp, case):
    """float64 data of mean -3e7 and std 1e-2 (mean / std = 3e9).

    Against statistics computed exactly (math.fsum) and the exact out from
    them.  A mean rounded to float64 is off by about eps * |x| (3.3e-9 here),
    which moves x - mean by as much: no method, the reference included,
    gets out within the float64 tolerance of conftest (3e-12).  The bounds
    are therefore those of a backward-stable computation, with K = 16 roundings
    of eps * max|x| per value: |mean error| <= K eps X, |var error| <=
    2 K eps X std, |out error| <= K eps X |gamma| / std, each on top of the
    float64 tolerance.  The textbook E[x^2] - E[x]^2 misses the variance
    bound by eight orders of magnitude; the kernels' shifted sums and Chan
    merges meet it."""
    shape, layout = case
    rng = np.random.default_rng(8)
    x = -3e7 + 1e-2 * rng.standard_normal(shape)
    C = shape[1]
    gamma, beta = rng.uniform(0.5, 2.0, C), rng.standard_normal(C)
    out, mean, var, invstd = _train(cuda_be, cp, cp.asarray(_layout(x, layout)),
                                            cp.asarray(gamma), cp.asarray(beta), EPS)
    rows = np.moveaxis(x, 1, 0).reshape(C, -1)
    tmean = np.array([math.fsum(r) / r.size for r in rows])
    tvar = np.array([math.fsum((r - m) ** 2) / r.size for r, m in zip(rows, tmean)])
    bshape = (1, C) if len(shape) == 2 else (1, C, 1, 1)
    tout = (x - tmean.reshape(bshape)) * (gamma / np.sqrt(tvar + EPS)).reshape(bshape) \
        + beta.reshape(bshape)
    K, eps = 16, np.finfo(np.float64).eps
    X, std = float(np.max(np.abs(x))), np.sqrt(tvar)
    tol = TOLERANCES["float64"]
    for got, exp, extra, what in (
            (mean, tmean, K * eps * X, "mean"),
            (var, tvar, 2 * K * eps * X * std, "var"),
            (out, tout, (K * eps * X * gamma / std).reshape(bshape), "out")):
        got = _np(got)
        bound = tol["atol"] * max(1.0, float(np.max(np.abs(exp)))) + tol["rtol"] * np.abs(exp) \
            + extra
        err = np.abs(got - exp)
        assert (err <= bound).all(), f"{what}: worst error / bound {float(np.max(err / bound)):.3g}"


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("case", [((8, 3), "contiguous"), ((8, 3), "fortran"),
                                  ((2, 3, 2, 2), "contiguous"), ((2, 3, 2, 2), "channels_last"),
                                  ((600, 37), "contiguous")], ids=_case_id)
def test_inf_and_nan_in_x(cp, case, dtype):
    """+inf in one channel and NaN in another make those channels NaN, as in
    the reference; the other channels are unaffected; dbeta stays finite."""
    shape, layout = case
    x, gamma, beta, dout = _data(shape, dtype, seed=3)
    x[(3 % shape[0], 2) + (1,) * (len(shape) - 2)] = np.inf
    x[(2 % shape[0], 1) + (0,) * (len(shape) - 2)] = np.nan
    x64, g64, b64, d64 = _f64(x, gamma, beta, dout)
    xd = cp.asarray(_layout(x, layout))
    gd = cp.asarray(gamma)
    with np.errstate(invalid="ignore"):
        out, mean, var, invstd = _train(cuda_be, cp, xd, gd, cp.asarray(beta), EPS)
        eout, emean, evar, einvstd = _train(_reference, npx, x64, g64, b64, EPS)
        _assert_close_nonfinite(out, eout, dtype, "out")
        _assert_close_nonfinite(var, evar, "float32" if dtype == "float16" else "float64", "var")
        dx, dgamma, dbeta = _backward(cuda_be, cp, cp.asarray(_layout(dout, layout)), xd, gd,
                                              mean, invstd, True)
        edx, edgamma, edbeta = _backward(_reference, npx, d64, x64, g64, emean, einvstd, True)
    _assert_close_nonfinite(dx, edx, dtype, "dx")
    _assert_close_nonfinite(dgamma, edgamma, dtype, "dgamma")
    assert_close(_np(dbeta), edbeta, dtype, "dbeta")


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape,layout,groups", [
    ((600, 70), "contiguous", 0),       # ROWS, two parts: +inf in the first
    ((20000, 3), "fortran", 0),         # PLANES, a plane cut in two segments
    ((70, 2, 16, 16), "contiguous", 0),  # PLANES, two parts of planes
    ((2, 6, 40, 50), "contiguous", 2),  # groupnorm: several parts per group
], ids=lambda v: "x".join(map(str, v)) if isinstance(v, tuple) else str(v))
def test_inf_in_an_early_part_keeps_the_mean_infinite(cp, shape, layout, groups, dtype):
    """+inf (and -inf in another channel) in the first part of a statistics
    group with later parts: the merge (nd_moments.h) gives the reference's
    mean, +inf and -inf, not inf - inf = NaN, and a NaN variance."""
    geom = _contract_geom(shape, groups)
    x, gamma, beta, _ = _data(shape, dtype, seed=4)
    x[(1, 0) + (0,) * (len(shape) - 2)] = np.inf
    x[(0, shape[1] - 1) + (0,) * (len(shape) - 2)] = -np.inf
    xd = cp.asarray(_layout(x, layout))
    _, mean, var, _ = cuda_be.norm_train_fwd(cp, xd, geom, cp.asarray(gamma), cp.asarray(beta),
                                             EPS)
    with np.errstate(invalid="ignore"):
        _, emean, evar, _ = _reference.norm_train_fwd(npx, np.asarray(x, np.float64), geom,
                                                      np.asarray(gamma, np.float64),
                                                      np.asarray(beta, np.float64), EPS)
    assert np.isinf(emean).sum() == 2
    _assert_close_nonfinite(mean, emean, "float64", "mean")
    _assert_close_nonfinite(var, evar, "float64", "var")


# ----------------------------------------- every op through the contract
CONTRACT_CASES = [
    ((7, 5), "contiguous", 0), ((300, 37), "fortran", 0), ((3, 5, 4, 6), "channels_last", 0),
    ((33, 48), "contiguous", 1),            # layernorm rows
    ((3, 7, 300), "contiguous", 1),         # layernorm (B, T, D): a run longer than a block
    ((4, 12, 5, 7), "contiguous", 3),       # groupnorm planes
    ((4, 12, 5, 7), "channels_last", 4),    # groupnorm channels-last runs
    ((2, 6, 40, 50), "contiguous", 2),      # groupnorm: several parts per group
    ((2, 64, 3, 3), "channels_last", 1),    # one group per sample, runs of 64
]


def _contract_geom(shape, groups):
    if groups and len(shape) != 4:
        return K.rows_geometry(shape)
    return K.groups_geometry(shape, groups) if groups else K.channels_geometry(shape)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("shape,layout,groups", CONTRACT_CASES,
                         ids=[f"{'x'.join(map(str, s))}-{lay}-g{g}" for s, lay, g in CONTRACT_CASES])
def test_contract_steps_and_composites(cp, shape, layout, groups, dtype):
    """Every step on the CUDA kernels against the reference (float16 with
    float32 data on the reference and the float16 tolerance), and the
    composites equal to the composition of the CUDA steps, bit for bit."""
    rng = np.random.default_rng(sum(shape) + groups)
    geom = _contract_geom(shape, groups)
    C = geom.c
    x = (rng.standard_normal(shape) * 2 + 3).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    gamma = rng.uniform(0.5, 2, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    od = "float32" if dtype == "float16" else dtype
    xd, dd = cp.asarray(_layout(x, layout)), cp.asarray(_layout(dout, layout))
    gd, bd = cp.asarray(gamma), cp.asarray(beta)
    out, mean, var, invstd = cuda_be.norm_train_fwd(cp, xd, geom, gd, bd, EPS)
    eout, emean, evar, einvstd = _reference.norm_train_fwd(
        npx, x.astype(od), geom, gamma.astype(od), beta.astype(od), EPS)
    assert _is_layout(_np(out), layout if layout != "fortran" or groups == 0 else "contiguous")
    assert_close(_np(out), eout, dtype, "out")
    assert_close(_np(mean), emean, dtype, "mean")
    assert_close(_np(var), evar, dtype, "var")
    count, m, m2 = cuda_be.moments(cp, xd, geom)
    v, iv = K.finish_moments(np, count, _np(m), _np(m2), EPS)
    np.testing.assert_array_equal(_bits(m), _bits(mean))
    np.testing.assert_array_equal(_bits(cp.asarray(v)), _bits(var))
    np.testing.assert_array_equal(_bits(cp.asarray(iv)), _bits(invstd))
    o2 = cuda_be.normalize(cp, xd, geom, mean, invstd, gd, bd)
    np.testing.assert_array_equal(_bits(o2), _bits(out))
    dx, dgamma, dbeta = cuda_be.norm_bwd(cp, dd, xd, geom, mean, invstd, gd, True)
    edx, edgamma, edbeta = _reference.norm_bwd(npx, dout.astype(od), x.astype(od), geom,
                                               emean, einvstd, gamma.astype(od), True)
    assert_close(_np(dx), edx, dtype, "dx")
    assert_close(_np(dgamma), edgamma, dtype, "dgamma")
    assert_close(_np(dbeta), edbeta, dtype, "dbeta")
    s1, s2, dg, db = cuda_be.grad_reduce(cp, dd, xd, geom, mean, invstd, gd)
    es1, es2, _, _ = _reference.grad_reduce(npx, dout.astype(od), x.astype(od), geom, emean,
                                            einvstd, gamma.astype(od))
    assert_close(_np(s1), es1, dtype, "s1")
    assert_close(_np(s2), es2, dtype, "s2")
    d2 = cuda_be.grad_input(cp, dd, xd, geom, mean, invstd, gd, s1, s2, True, geom.count)
    for a, b in ((d2, dx), (dg, dgamma), (db, dbeta)):
        np.testing.assert_array_equal(_bits(a), _bits(b))


def test_running_update_matches_the_cpu_kernel(cp):
    rng = np.random.default_rng(0)
    batch = rng.standard_normal(300)
    for old in (None, rng.standard_normal(300).astype(np.float32), rng.standard_normal(300)):
        for dtype in ("float32", "float64"):
            got = cuda_be.running_update(cp, None if old is None else cp.asarray(old),
                                         cp.asarray(batch), 0.8, np.dtype(dtype))
            from normdrop._cpu import _backend as cpu_be
            exp = cpu_be.running_update(np, old, batch, 0.8, np.dtype(dtype))
            np.testing.assert_array_equal(_bits(got), _bits(cp.asarray(exp)))
