"""A process forked after normdrop's kernels ran in parallel (``multiprocessing``
with the ``'fork'`` start method, the default on Linux before Python 3.14)
computes the same results as its parent and never hangs.

GNU libgomp's thread pool does not survive ``fork()``: a parallel region in
the child waits forever for threads that were not copied.  A forked child of
a thread that has run a parallel region therefore runs the kernels on one
thread (results do not depend on the thread count) and says so; a child of a
thread that never did keeps all its threads.

Every scenario runs in a subprocess with a timeout and in its own session, so
that a hang fails the test (and its processes are killed) instead of blocking
the suite.
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap

import pytest

from normdrop import _cpu

pytestmark = pytest.mark.skipif(
    not sys.platform.startswith("linux"),
    reason="fork() with the OpenMP runtimes of Linux builds (macOS wheels are serial, "
           "Windows has no fork)")

TIMEOUT_S = 120

# Runs every op forward and backward on inputs large enough to go parallel,
# in this process (from the main thread, or from another thread with
# --parent-thread), then in a Pool of 2 forked workers; prints JSON with the
# digests, the workers' thread counts and show_config() text.
SCRIPT = r"""
import hashlib, io, json, multiprocessing, sys, threading, zlib
import numpy as np
import normdrop as nd
from normdrop import _cpu

def digest(*arrays):
    h = hashlib.sha256()
    for a in arrays:
        a = np.ascontiguousarray(np.asarray(a))
        h.update(str((a.dtype.str, a.shape)).encode())
        h.update(a.tobytes())
    return h.hexdigest()

def run(case):
    name, dtype = case
    rng = np.random.default_rng(zlib.crc32(name.encode()))
    f = lambda *s: rng.standard_normal(s).astype(dtype)
    if name == "batchnorm":
        x = f(512, 128); p = {"mode": "train"}
        out, c = nd.batchnorm_forward(x, f(128), f(128), p)
        grads = nd.batchnorm_backward(f(512, 128), c)
        extra = (p["running_mean"], p["running_var"])
    elif name in ("spatial", "spatial_c4"):
        C = 16 if name == "spatial" else 4
        x = f(8, C, 32, 32); p = {"mode": "train"}
        out, c = nd.spatial_batchnorm_forward(x, f(C), f(C), p)
        grads = nd.spatial_batchnorm_backward(f(*x.shape), c)
        extra = (p["running_mean"], p["running_var"])
    elif name == "layernorm":
        x = f(256, 512)
        out, c = nd.layernorm_forward(x, f(512), f(512), {})
        grads = nd.layernorm_backward(f(256, 512), c)
        extra = ()
    elif name == "groupnorm":
        x = f(8, 16, 32, 32)
        out, c = nd.spatial_groupnorm_forward(x, f(1, 16, 1, 1), f(1, 16, 1, 1), 4, {})
        grads = nd.spatial_groupnorm_backward(f(*x.shape), c)
        extra = ()
    else:
        x = f(1 << 18)
        out, c = nd.dropout_forward(x, {"mode": "train", "p": 0.6, "seed": 7})
        grads = (nd.dropout_backward(f(1 << 18), c),)
        extra = ()
    return digest(out, *grads, *extra)

CASES = [(n, d) for n in ("batchnorm", "spatial", "spatial_c4", "layernorm", "groupnorm",
                          "dropout") for d in ("float32", "float64")]

def child(case):
    buf = io.StringIO()
    nd.show_config(file=buf)
    return run(case), _cpu.max_threads(), buf.getvalue()

def parent():
    return [run(c) for c in CASES]

if __name__ == "__main__":
    res = {"parent_threads": _cpu.max_threads()}
    if "--parent-thread" in sys.argv:
        box = {}
        t = threading.Thread(target=lambda: box.update(d=parent()))
        t.start(); t.join()
        res["parent"] = box["d"]
    else:
        res["parent"] = parent()
    with multiprocessing.get_context("fork").Pool(2) as pool:
        got = pool.map(child, CASES)
    res["child"] = [g[0] for g in got]
    res["child_threads"] = sorted({g[1] for g in got})
    res["child_info"] = got[0][2]
    print(json.dumps(res))
"""


def _run(tmp_path, *args):
    """Run SCRIPT in a fresh interpreter in its own session; a timeout kills
    the whole session (the forked workers too) and fails the test."""
    script = tmp_path / "fork_script.py"
    script.write_text(textwrap.dedent(SCRIPT))
    env = dict(os.environ)
    env["OMP_NUM_THREADS"] = "2"   # at least 2: a one-thread parent starts no thread pool
    env.pop("NORMDROP_BACKEND", None)
    proc = subprocess.Popen([sys.executable, str(script), *args], cwd=tmp_path, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            start_new_session=True)
    try:
        out, err = proc.communicate(timeout=TIMEOUT_S)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.communicate()
        pytest.fail(f"a forked child hung: no answer within {TIMEOUT_S} s")
    assert proc.returncode == 0, err
    return json.loads(out.strip().splitlines()[-1])


def test_forked_pool_after_parallel_parent(tmp_path):
    """The parent's main thread runs every op in parallel, then forks a Pool:
    the workers finish with the parent's bits, on one thread, and say why."""
    res = _run(tmp_path)
    assert res["child"] == res["parent"]
    if _cpu.have_openmp():
        assert res["parent_threads"] == 2
        assert res["child_threads"] == [1]
        threads_line = [ln for ln in res["child_info"].splitlines()
                        if ln.strip().startswith("threads")]
        assert threads_line and "fork" in threads_line[0], res["child_info"]


def test_forked_pool_after_parallel_parent_thread(tmp_path):
    """The ops ran in parallel in another thread of the parent, not in the one
    that forks: the workers keep all their threads (libgomp's pool belongs to
    the thread that started it, and the forking thread never did)."""
    res = _run(tmp_path, "--parent-thread")
    assert res["child"] == res["parent"]
    if _cpu.have_openmp():
        assert res["child_threads"] == [res["parent_threads"]] == [2]
