"""The C kernels' scratch is bounded by their partition, not by the input's
sample x channel count: spatial inputs with few channels and tiny planes
(e.g. (4000000, 4, 1, 2), 8 values per sample) need no more than a few MiB
beyond their outputs, and small-plane inputs still match the reference.

The memory is measured as the growth of the peak resident set (VmHWM, reset
through /proc/self/clear_refs) of a fresh interpreter around one call."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import numpy as np
import pytest

import normdrop as nd
from conftest import assert_close

MIB = 1 << 20
SLACK = 8 * MIB   # beyond the outputs: the interpreter's own allocations, thread stacks


def _can_measure():
    if not sys.platform.startswith("linux"):
        return False
    try:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        return True
    except OSError:
        return False


PROBE = r"""
import json, sys
import numpy as np
import normdrop as nd

def status(key):
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(key + ":"):
                return int(line.split()[1]) * 1024
    raise KeyError(key)

def reset_peak():
    with open("/proc/self/clear_refs", "w") as f:
        f.write("5")
    return status("VmRSS")

shape, dtype = json.loads(sys.argv[1]), sys.argv[2]
rng = np.random.default_rng(0)
x = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
dout = rng.standard_normal(shape, dtype=np.float32).astype(dtype, copy=False)
C = shape[1]
gamma, beta = np.ones(C, dtype), np.zeros(C, dtype)
# every code path once on a small input: lazy imports, OpenMP threads
o, c = nd.spatial_batchnorm_forward(x[:64], gamma, beta, {"mode": "train"})
nd.spatial_batchnorm_backward(dout[:64], c)
del o, c

base = reset_peak()
out, cache = nd.spatial_batchnorm_forward(x, gamma, beta, {"mode": "train"})
fwd = status("VmHWM") - base
base = reset_peak()
dx, dgamma, dbeta = nd.spatial_batchnorm_backward(dout, cache)
bwd = status("VmHWM") - base
print(json.dumps({"forward": fwd, "backward": bwd, "out": out.nbytes, "dx": dx.nbytes}))
"""


@pytest.mark.skipif(not _can_measure(),
                    reason="needs Linux's /proc/self/clear_refs to reset the peak RSS")
@pytest.mark.parametrize("shape,dtype", [((4000000, 4, 1, 2), "float32"),
                                         ((1000000, 3, 3, 3), "float64")])
def test_spatial_scratch_is_a_few_mib(tmp_path, shape, dtype):
    script = tmp_path / "probe.py"
    script.write_text(textwrap.dedent(PROBE))
    env = dict(os.environ)
    env.pop("NORMDROP_BACKEND", None)
    res = subprocess.run([sys.executable, str(script), json.dumps(shape), dtype], cwd=tmp_path,
                         env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr
    m = json.loads(res.stdout.strip().splitlines()[-1])
    for step, output in (("forward", "out"), ("backward", "dx")):
        extra = m[step] - m[output]
        assert extra <= SLACK, (f"{step} of {shape} {dtype}: peak RSS grew by "
                                f"{m[step] / MIB:.1f} MiB for a {m[output] / MIB:.1f} MiB "
                                f"output ({extra / MIB:.1f} MiB more)")


# Small planes, several planes per unit and several units per channel; C >= 8
# (per-channel loops, fused where a channel fits in cache, or not) and C < 8
# (units of all channels in parallel).
SMALL_PLANES = [
    (20000, 3, 1, 2),    # 2 values a plane: 8192 planes a unit, 3 units a channel
    (700, 10, 7, 7),     # C >= 8, fused
    (6000, 8, 7, 7),     # C >= 8, a channel over the fused size in float32
    (900, 2, 9, 10),     # 182 planes a unit, the last unit short
    (5, 3, 100, 90),     # one unit of all planes
    (4, 2, 120, 100),    # planes just under a segment: one plane a unit
]


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("shape", SMALL_PLANES, ids=lambda s: "x".join(map(str, s)))
def test_small_planes_match_reference(shape, dtype):
    rng = np.random.default_rng(sum(shape))
    x = (rng.standard_normal(shape) * 2 + 5).astype(dtype)
    dout = rng.standard_normal(shape).astype(dtype)
    C = shape[1]
    gamma = rng.uniform(0.5, 2.0, C).astype(dtype)
    beta = rng.standard_normal(C).astype(dtype)
    p = {"mode": "train"}
    out, cache = nd.spatial_batchnorm_forward(x, gamma, beta, p)
    got = nd.spatial_batchnorm_backward(dout, cache)
    with nd.force_reference():
        rp = {"mode": "train"}
        rout, rcache = nd.spatial_batchnorm_forward(x.astype(np.float64), gamma, beta, rp)
        exp = nd.spatial_batchnorm_backward(dout.astype(np.float64), rcache)
    assert_close(out, rout, dtype, "out")
    assert_close(p["running_mean"], rp["running_mean"], dtype, "running_mean")
    assert_close(p["running_var"], rp["running_var"], dtype, "running_var")
    for g, e, what in zip(got, exp, ("dx", "dgamma", "dbeta")):
        assert_close(g, e, dtype, what)


@pytest.mark.parametrize("dtype", ["float32", "float64"])
@pytest.mark.parametrize("hw", [(1, 2), (7, 7), (100, 90)])
def test_channel_statistics_do_not_depend_on_the_channel_count(hw, dtype):
    """The partition of a channel depends on N and H * W only: a channel's
    mean and variance are the same bits whether it is computed among 9
    channels (per-channel loops) or alone (units of all channels at once)."""
    rng = np.random.default_rng(1)
    n = 3000 if hw == (1, 2) else 60
    x = rng.standard_normal((n, 9) + hw).astype(dtype)
    _, c9 = nd.spatial_batchnorm_forward(x, np.ones(9), np.zeros(9), {"mode": "train"})
    for ch in (0, 4, 8):
        alone = np.ascontiguousarray(x[:, ch:ch + 1])
        _, c1 = nd.spatial_batchnorm_forward(alone, np.ones(1), np.zeros(1), {"mode": "train"})
        np.testing.assert_array_equal(np.asarray(c1.mean), np.asarray(c9.mean)[ch:ch + 1])
        np.testing.assert_array_equal(np.asarray(c1.invstd), np.asarray(c9.invstd)[ch:ch + 1])
