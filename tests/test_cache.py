"""The CPU output-buffer cache (normdrop._memory): outputs of 1 MiB and more
reuse freed blocks, within the limit, and are ordinary owned NumPy arrays."""
from __future__ import annotations

import os
import subprocess
import sys
import threading

import numpy as np
import pytest

import normdrop as nd
from normdrop._cpu import _pool as _k

MiB = 1 << 20


@pytest.fixture
def cache():
    """A clean cache with the default limit; restored afterwards."""
    nd.empty_cache()
    old = nd.set_cache_limit(512 * MiB)
    yield
    nd.set_cache_limit(old)
    nd.empty_cache()


def _drop(n, seed=1):
    x = np.arange(n, dtype=np.float32)
    return nd.dropout_forward(x, {"p": 0.5, "mode": "train", "seed": seed})


def test_a_freed_output_is_reused(cache):
    out, c = _drop(MiB)                     # 4 MiB output, 128 KiB bits
    addr = out.ctypes.data
    assert out.flags.owndata and out.flags.writeable
    assert addr % 64 == 0
    del out
    info = nd.cache_info()
    assert info["blocks"] == 1 and info["bytes"] >= 4 * MiB
    hits = info["hits"]
    out2, _ = _drop(MiB, seed=2)
    assert out2.ctypes.data == addr
    assert nd.cache_info()["hits"] == hits + 1
    # the reused block holds the new result, not the old one
    keep = nd.dropout_mask((MiB,), 0.5, 2)
    np.testing.assert_array_equal(out2, np.where(keep, np.arange(MiB, dtype=np.float32) * 2, 0))


def test_small_outputs_do_not_use_the_cache(cache):
    before = nd.cache_info()
    out, _ = _drop(1000)
    del out
    after = nd.cache_info()
    assert (after["hits"], after["misses"], after["blocks"]) == \
        (before["hits"], before["misses"], before["blocks"])


def test_limit_is_respected_and_zero_turns_the_cache_off(cache):
    nd.set_cache_limit(6 * MiB)
    outs = [_drop(MiB, seed=s)[0] for s in range(3)]   # three 4 MiB blocks in use
    del outs
    info = nd.cache_info()
    assert info["bytes"] <= 6 * MiB and info["blocks"] == 1
    assert nd.set_cache_limit(0) == 6 * MiB
    assert nd.cache_info()["bytes"] == 0
    out, _ = _drop(MiB)
    del out
    assert nd.cache_info()["blocks"] == 0


def test_empty_cache_releases_every_block(cache):
    a = [_drop(MiB, seed=s)[0] for s in range(4)]
    del a
    assert nd.cache_info()["blocks"] >= 1
    nd.empty_cache()
    assert nd.cache_info()["blocks"] == 0 and nd.cache_info()["bytes"] == 0


def test_at_most_16_blocks_are_kept(cache):
    arrays = [_k.pooled(np.empty, MiB + 4096 * i, np.uint8) for i in range(20)]
    del arrays
    assert nd.cache_info()["blocks"] == 16


def test_a_block_is_reused_only_for_a_similar_size(cache):
    big = _k.pooled(np.empty, 8 * MiB, np.uint8)
    addr = big.ctypes.data
    del big
    small = _k.pooled(np.empty, 2 * MiB, np.uint8)   # 1/4 of the block: a new one
    assert small.ctypes.data != addr
    close = _k.pooled(np.empty, 8 * MiB - 100, np.uint8)
    assert close.ctypes.data == addr


def test_resize_and_zeros_through_the_cache(cache):
    a = _k.pooled(np.empty, 2 * MiB, np.uint8)
    a[:] = 7
    del a
    z = _k.pooled(np.zeros, 2 * MiB, np.uint8)         # calloc: reused block zeroed
    assert not z.any()
    z[:10] = np.arange(10)
    z.resize(5 * MiB, refcheck=False)                 # realloc: grows, keeps the data
    assert z[:10].tolist() == list(range(10)) and not z[10:2 * MiB].any()
    z.resize(MiB, refcheck=False)
    assert z[:10].tolist() == list(range(10))


def test_concurrent_allocation_and_release(cache):
    errors = []

    def work(seed):
        try:
            for k in range(30):
                out, c = _drop(MiB // 2 + 64 * (seed % 3), seed=seed * 100 + k)
                dx = nd.dropout_backward(out, c)
                assert dx.shape == out.shape
        except Exception as e:   # noqa: BLE001 - reported below
            errors.append(e)

    threads = [threading.Thread(target=work, args=(s,)) for s in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors
    info = nd.cache_info()
    assert info["blocks"] <= 16 and info["bytes"] <= info["limit"]


def test_other_threads_keep_numpys_allocator(cache):
    """The allocator switch is per thread (a context variable): arrays another
    thread makes meanwhile come from NumPy's own allocator."""
    from numpy._core.multiarray import get_handler_name
    stop = threading.Event()
    names = set()

    def other():
        while not stop.is_set():
            names.add(get_handler_name(np.empty(2 * MiB, np.uint8)))

    t = threading.Thread(target=other)
    t.start()
    try:
        for s in range(200):
            out, _ = _drop(MiB // 2, seed=s)
            assert get_handler_name(out) == "normdrop_output_cache"
    finally:
        stop.set()
        t.join()
    assert names == {"default_allocator"}


def test_large_outputs_keep_the_input_layout(cache):
    rng = np.random.default_rng(0)
    xf = np.asfortranarray(rng.standard_normal((1024, 300)).astype(np.float32))   # 1.2 MB
    out, c = nd.batchnorm_forward(xf, np.ones(300), np.zeros(300), {"mode": "train"})
    dx = nd.batchnorm_backward(np.ones_like(out), c)[0]
    from numpy._core.multiarray import get_handler_name
    assert get_handler_name(out) == "normdrop_output_cache"
    assert out.flags.f_contiguous and dx.flags.f_contiguous
    x4 = np.ascontiguousarray(rng.standard_normal((8, 40, 40, 32)).astype(np.float32))
    xl = x4.transpose(0, 3, 1, 2)                                                  # channels-last, 1.6 MB
    out, c = nd.spatial_batchnorm_forward(xl, np.ones(32), np.zeros(32), {"mode": "train"})
    dx = nd.spatial_batchnorm_backward(np.ones_like(out), c)[0]
    assert out.strides == xl.strides and dx.strides == xl.strides


def test_import_without_the_extension():
    """A reference-only install (no C extension) imports, and the cache
    functions report an empty cache with limit 0."""
    code = ("import sys; sys.modules['normdrop._cpu._kernels'] = None\n"
            "import numpy as np, normdrop as nd\n"
            "assert nd.cache_info()['limit'] == 0 and nd.set_cache_limit(5) == 0\n"
            "nd.empty_cache()\n"
            "with nd.force_reference():\n"
            "    out, c = nd.batchnorm_forward(np.ones((4, 3)), np.ones(3), np.zeros(3), {'mode': 'train'})\n"
            "print(out.shape)")
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "(4, 3)"


def test_limits_above_size_max_are_clamped(cache):
    nd.set_cache_limit(2**70)
    assert nd.cache_info()["limit"] == 2**64 - 1


@pytest.mark.parametrize("bad, exc", [(-1, ValueError), (1.5, TypeError), ("1", TypeError),
                                      (True, TypeError)])
def test_set_cache_limit_rejects_bad_values(cache, bad, exc):
    with pytest.raises(exc, match="set_cache_limit"):
        nd.set_cache_limit(bad)


def _from_env(name, value):
    code = ("import warnings; warnings.simplefilter('always');\n"
            "import normdrop as nd; from normdrop._cpu import _kernels as k\n"
            "print(nd.cache_info()['limit'], k.get_stream_bytes())")
    env = dict(os.environ)
    env.pop("NORMDROP_CACHE_LIMIT", None)
    env.pop("NORMDROP_STREAM_BYTES", None)
    env[name] = value
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    limit, stream = (int(v) for v in res.stdout.split())
    return limit, stream, name in res.stderr


@pytest.mark.parametrize("value, limit, warns", [("0", 0, False), ("1048576", MiB, False),
                                                 ("lots", 512 * MiB, True), ("-3", 512 * MiB, True),
                                                 (str(2**80), 2**64 - 1, False)])
def test_limit_from_the_environment(value, limit, warns):
    assert _from_env("NORMDROP_CACHE_LIMIT", value)[::2] == (limit, warns)


@pytest.mark.parametrize("value, stream, warns", [("1048576", MiB, False), ("0", 0, False),
                                                  ("-5", 48 * MiB, True), ("x", 48 * MiB, True),
                                                  (str(2**80), 2**63 - 1, False)])
def test_streaming_threshold_from_the_environment(value, stream, warns):
    assert _from_env("NORMDROP_STREAM_BYTES", value)[1:] == (stream, warns)


def _mapping(addr):
    """(VmFlags, AnonHugePages in KiB) of this process's mapping holding addr,
    from /proc/self/smaps; None where the file cannot be read."""
    try:
        with open("/proc/self/smaps") as f:
            text = f.read()
    except OSError:
        return None
    flags, huge, inside = None, None, False
    for line in text.splitlines():
        head = line.split()[0] if line else ""
        if "-" in head and ":" not in head:       # a mapping's first line: lo-hi perms ...
            lo, hi = (int(v, 16) for v in head.split("-"))
            if inside:
                break
            inside = lo <= addr < hi
        elif inside and line.startswith("AnonHugePages:"):
            huge = int(line.split()[1])
        elif inside and line.startswith("VmFlags:"):
            flags = line.split()[1:]
    return (flags, huge) if inside and flags is not None else None


def _thp_mode():
    try:
        with open("/sys/kernel/mm/transparent_hugepage/enabled") as f:
            return f.read().split("[")[1].split("]")[0]
    except (OSError, IndexError):
        return None


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_HUGEPAGE) is Linux's")
@pytest.mark.skipif(_thp_mode() in (None, "never"), reason="no transparent huge pages here")
def test_large_new_blocks_ask_for_huge_pages_as_numpy_does(cache):
    """A new block of 4 MiB or more is advised MADV_HUGEPAGE (VmFlags 'hg'),
    as NumPy's allocator advises its arrays, and not when turned off; where
    NumPy's own array of the size got huge pages, the output does too."""
    n = 16 * MiB                                     # 64 MiB of float32
    ref = np.ones(n, np.float32)                     # NumPy's allocator, same size
    mid = ref.ctypes.data + ref.nbytes // 2          # past the first page
    seen = _mapping(mid)
    if seen is None:
        pytest.skip("/proc/self/smaps unreadable")
    if "hg" not in seen[0]:
        pytest.skip("NumPy's own arrays are not advised here (its setting, or an emulator)")
    old = _k.cache_set_hugepage(True)
    if old is None:
        pytest.skip("this build cannot advise huge pages")
    try:
        out, _ = _drop(n)
        flags, huge = _mapping(out.ctypes.data + out.nbytes // 2)
        assert "hg" in flags
        if _mapping(mid)[1] > 0:
            assert huge > 0
        assert _k.cache_set_hugepage(False) is True
        out2, _ = _drop(n, seed=2)                   # a new block (out is alive)
        flags, _ = _mapping(out2.ctypes.data + out2.nbytes // 2)
        assert "hg" not in flags
    finally:
        _k.cache_set_hugepage(old)


@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="madvise(MADV_HUGEPAGE) is Linux's")
@pytest.mark.parametrize("numpy_says", ["0", "1"])
def test_huge_page_advice_follows_numpys_setting(numpy_says):
    """NUMPY_MADVISE_HUGEPAGE sets NumPy's choice; normdrop's cache takes the
    same one at import."""
    code = ("import normdrop\n"
            "from normdrop._cpu import _pool\n"
            "print(_pool.cache_set_hugepage(False))")
    env = dict(os.environ, NUMPY_MADVISE_HUGEPAGE=numpy_says)
    res = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=120)
    assert res.returncode == 0, res.stderr
    assert res.stdout.split()[-1] == {"0": "False", "1": "True"}[numpy_says]
