"""CPU results are bitwise identical for any OMP_NUM_THREADS (fixed chunking,
fixed merge order), and with streaming stores on or off.  Each configuration
runs in its own process."""
from __future__ import annotations

import os
import subprocess
import sys

import pytest

from normdrop import _cpu

SCRIPT = r"""
import hashlib, numpy as np, normdrop as nd
from normdrop import _cpu
h = hashlib.sha256()
rng = np.random.default_rng(5)
def feed(*arrays):
    for a in arrays:
        h.update(np.ascontiguousarray(a).tobytes())
for dtype in ("float32", "float64"):
    for shape, fwd, bwd in [((3001, 130), nd.batchnorm_forward, nd.batchnorm_backward),
                            ((70000, 3), nd.batchnorm_forward, nd.batchnorm_backward),
                            # sweeps of 1024, 512 and 256 channels at 1, 2 and 3 threads
                            ((300, 1100), nd.batchnorm_forward, nd.batchnorm_backward),
                            # 700 channels: one sweep at 1 thread, two (512 + 188) at 2
                            ((512, 700), nd.batchnorm_forward, nd.batchnorm_backward),
                            ((9, 16, 41, 40), nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward),
                            ((2, 3, 150, 130), nd.spatial_batchnorm_forward, nd.spatial_batchnorm_backward)]:
        x = (rng.standard_normal(shape) * 3 + 1).astype(dtype)
        dout = rng.standard_normal(shape).astype(dtype)
        C = shape[1]
        layouts = [x]
        if x.ndim == 4:
            layouts.append(np.ascontiguousarray(x.transpose(0, 2, 3, 1)).transpose(0, 3, 1, 2))
        else:
            layouts.append(np.asfortranarray(x))
        for xl in layouts:
            bp = {"mode": "train"}
            out, cache = fwd(xl, np.linspace(0.5, 2, C), np.linspace(-1, 1, C), bp)
            feed(out, bp["running_mean"], bp["running_var"], *bwd(dout, cache))
    x = rng.standard_normal(300007).astype(dtype)
    out, cache = nd.dropout_forward(x, {"p": 0.3, "mode": "train", "seed": 2**64 - 1})
    feed(out, cache.bits, nd.dropout_backward(x, cache))
print(_cpu.max_threads(), h.hexdigest())
"""


def _run(threads, stream_bytes=None):
    env = dict(os.environ, OMP_NUM_THREADS=str(threads))
    env.pop("NORMDROP_STREAM_BYTES", None)
    if stream_bytes is not None:   # 0: every output streamed (most are >= 1 MiB: aligned)
        env["NORMDROP_STREAM_BYTES"] = str(stream_bytes)
    res = subprocess.run([sys.executable, "-c", SCRIPT], env=env, capture_output=True,
                         text=True, timeout=600)
    assert res.returncode == 0, res.stderr
    n, digest = res.stdout.split()
    return int(n), digest


def test_bitwise_identical_for_1_2_3_threads():
    results = {t: _run(t) for t in (1, 2, 3)}
    if _cpu.have_openmp():
        assert [results[t][0] for t in (1, 2, 3)] == [1, 2, 3]
    digests = {d for _, d in results.values()}
    assert len(digests) == 1, results


def test_streaming_stores_write_the_same_bits():
    """Outputs written with streaming stores (NORMDROP_STREAM_BYTES=0) are the
    ones written through the caches, at 1 and 3 threads; 2**62 turns them off."""
    digests = {(t, s): _run(t, s)[1] for t in (1, 3) for s in (0, 2**62)}
    assert len(set(digests.values())) == 1, digests


@pytest.mark.skipif(not _cpu.have_openmp(), reason="built without OpenMP")
def test_threads_follow_omp_num_threads():
    assert _run(3)[0] == 3
