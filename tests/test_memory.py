"""Caches hold references and O(C) statistics, never (N, D) temporaries."""
from __future__ import annotations

import tracemalloc

import numpy as np
import pytest

import normdrop as nd


def _arrays(cache):
    from array_api_compat import is_array_api_obj
    return [getattr(cache, s) for s in cache.__slots__ if is_array_api_obj(getattr(cache, s))]


@pytest.mark.parametrize("spatial", [False, True])
def test_batchnorm_cache_holds_x_and_per_channel_arrays_only(backend, spatial):
    be = backend
    shape = (64, 8, 5, 5) if spatial else (256, 8)
    x = be.asarray(np.random.default_rng(0).standard_normal(shape))
    fwd = nd.spatial_batchnorm_forward if spatial else nd.batchnorm_forward
    for mode in ("train", "test"):
        _, cache = fwd(x, be.asarray(np.ones(8)), be.asarray(np.zeros(8)), {"mode": mode})
        big = [a for a in _arrays(cache) if a is not cache.x and int(np.prod(a.shape)) > 8]
        assert big == []
        # x itself, or a view of its memory (NumPy; the adapted libraries): no copy
        assert cache.x is x or np.shares_memory(cache.x, _host_view(x))


def _host_view(x):
    """x's memory as a NumPy array, without a copy."""
    if isinstance(x, np.ndarray):
        return x
    if type(x).__module__.startswith("torch"):
        return x.detach().numpy()
    return np.from_dlpack(x)


def test_batchnorm_forward_allocates_out_and_O_C_only():
    x = np.random.default_rng(0).standard_normal((2048, 256)).astype(np.float32)
    g, b = np.ones(256), np.zeros(256)
    nd.batchnorm_forward(x, g, b, {"mode": "train"})
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        base = tracemalloc.get_traced_memory()[0]
        out, _ = nd.batchnorm_forward(x, g, b, {"mode": "train"})
        peak = tracemalloc.get_traced_memory()[1] - base
    finally:
        tracemalloc.stop()
    # out, plus O(C) statistics and a workspace of a few doubles per channel and tile
    assert out.nbytes <= peak < out.nbytes + 200_000, peak
