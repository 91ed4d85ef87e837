"""A process forked after normdrop's kernels ran in parallel (``multiprocessing``
with the ``'fork'`` start method, the default on Linux before Python 3.14)
computes the same results as its parent and never hangs.

GNU libgomp's thread pool does not survive ``fork()``: a parallel region in
the child waits forever for threads that were not copied -- whichever library
(normdrop, PyTorch, ...) started the forking thread's pool in the shared
runtime.  normdrop releases the forking thread's pool before ``fork()``, so
the child keeps all its threads; where the runtime cannot release it (a fork
from inside a parallel region) a child of a thread that has run normdrop's
parallel kernels runs them on one thread (results do not depend on the thread
count) and says so.

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


def _run(tmp_path, *args, script_text=SCRIPT):
    """Run SCRIPT (or script_text) in a fresh interpreter in its own session;
    a timeout kills the whole session (the forked workers too) and fails the
    test."""
    script = tmp_path / "fork_script.py"
    script.write_text(textwrap.dedent(script_text))
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


def _threads_line(info):
    lines = [ln for ln in info.splitlines() if ln.strip().startswith("threads")]
    assert lines, info
    return lines[0]


def _uses_libgomp():
    """Whether this process's kernels run on GNU libgomp (GCC builds)."""
    if not _cpu.have_openmp():
        return False
    with open("/proc/self/maps") as f:
        return "libgomp" in f.read()


def test_forked_pool_after_parallel_parent(tmp_path):
    """The parent's main thread runs every op in parallel, then forks a Pool:
    the workers finish with the parent's bits, on all their threads (the
    forking thread's OpenMP pool was released before fork())."""
    res = _run(tmp_path)
    assert res["child"] == res["parent"]
    if _cpu.have_openmp():
        assert res["parent_threads"] == 2
        if _uses_libgomp():
            assert res["child_threads"] == [2]
            assert "fork" not in _threads_line(res["child_info"]), res["child_info"]
        else:   # another runtime: serial children, as before
            assert res["child_threads"] in ([1], [2])


# Another library's parallel region in the shared libgomp (through ctypes, as
# any OpenMP-built library would start one), never one of normdrop's, then a
# fork: the child's first parallel kernel must not wait for the pool's
# threads.  With --in-region the fork happens inside a parallel region that
# follows normdrop's own parallel kernels: the runtime cannot release the
# pool there, and the child runs the kernels serially.
FOREIGN = r"""
import ctypes, hashlib, json, os, signal, sys
import numpy as np
import normdrop as nd
from normdrop import _cpu

# the copy the kernels use, already loaded (a wheel's own, renamed copy, or
# the system's libgomp.so.1)
with open("/proc/self/maps") as f:
    gomp_paths = sorted({ln.split()[-1] for ln in f if "libgomp" in ln and "/" in ln})
assert len(gomp_paths) == 1, gomp_paths
gomp = ctypes.CDLL(gomp_paths[0])
BODY = ctypes.CFUNCTYPE(None, ctypes.c_void_p)
x = np.random.default_rng(3).standard_normal((4096, 512))

def work():
    out, cache = nd.batchnorm_forward(x, np.ones(512), np.zeros(512), {"mode": "train"})
    dx = nd.batchnorm_backward(out, cache)[0]
    return hashlib.sha256(out.tobytes() + dx.tobytes()).hexdigest()

def fork_and_work():
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:
        signal.alarm(30)
        os.close(r)
        res = {"digest": work(), "threads": _cpu.max_threads(), "serial": _cpu.forked_serial()}
        os.write(w, json.dumps(res).encode())
        os._exit(0)
    os.close(w)
    with os.fdopen(r) as f:
        data = f.read()
    _, st = os.waitpid(pid, 0)
    if os.WIFSIGNALED(st):
        return {"hung": True}
    return json.loads(data)

box = {}
in_region = "--in-region" in sys.argv
if in_region:
    parent = work()                          # normdrop's own parallel kernels first
else:
    parent = None

@BODY
def body(_):
    if in_region and gomp.omp_get_thread_num() == 0:
        box["child"] = fork_and_work()

gomp.GOMP_parallel(body, None, 2, 0)         # a parallel region of "another library"
if parent is None:
    parent = work()
    box["child"] = fork_and_work()
print(json.dumps({"parent": parent, **box["child"]}))
"""


@pytest.mark.skipif(not _uses_libgomp(), reason="the kernels do not run on GNU libgomp here")
def test_forked_child_after_another_librarys_parallel_region(tmp_path):
    """A parallel region of another library in the shared libgomp started the
    forking thread's pool (normdrop's kernels had not): the child used to wait
    forever in its first parallel kernel.  Now it finishes, on all its
    threads, with the parent's bits."""
    res = _run(tmp_path, script_text=FOREIGN)
    assert not res.get("hung"), "the forked child hung in its first parallel kernel"
    assert res["digest"] == res["parent"]
    assert res["threads"] == 2 and res["serial"] is False


@pytest.mark.skipif(not _uses_libgomp(), reason="the kernels do not run on GNU libgomp here")
def test_fork_inside_a_parallel_region_gives_a_serial_child(tmp_path):
    """fork() from inside a parallel region, after normdrop's parallel kernels:
    the runtime cannot release a pool in use, so the child computes on one
    thread, says so, and gets the parent's bits."""
    res = _run(tmp_path, "--in-region", script_text=FOREIGN)
    assert not res.get("hung"), "the forked child hung in its first parallel kernel"
    assert res["digest"] == res["parent"]
    assert res["threads"] == 1 and res["serial"] is True


TORCH = r"""
import json, multiprocessing, hashlib
import numpy as np
import torch
import normdrop as nd
from normdrop import _cpu

def job(_):
    x = np.random.default_rng(0).standard_normal((4096, 512))
    out, cache = nd.batchnorm_forward(x, np.ones(512), np.zeros(512), {"mode": "train"})
    return hashlib.sha256(out.tobytes()).hexdigest(), _cpu.max_threads()

if __name__ == "__main__":
    torch.set_num_threads(2)
    torch.randn(4_000_000).exp_()            # a parallel torch op in the forking thread
    with multiprocessing.get_context("fork").Pool(1) as pool:
        r = pool.map_async(job, [0])
        try:
            child = r.get(timeout=60)[0]
        except multiprocessing.TimeoutError:
            pool.terminate()
            print(json.dumps({"hung": True}))
            raise SystemExit(0)
    print(json.dumps({"hung": False, "child": child[0], "threads": child[1], "parent": job(0)[0]}))
"""


def test_forked_pool_after_a_torch_parallel_op(tmp_path):
    """PyTorch's wheel ships a libgomp that normdrop's kernels then share: a
    parallel torch op before a fork made the forked workers' first parallel
    kernel wait forever.  Now they finish, with the parent's bits."""
    pytest.importorskip("torch", reason="torch is not installed")
    res = _run(tmp_path, script_text=TORCH)
    assert not res["hung"], "the forked worker hung in its first parallel kernel"
    assert res["child"] == res["parent"]
    if _uses_libgomp():
        assert res["threads"] == 2


def test_forked_pool_after_parallel_parent_thread(tmp_path):
    """The ops ran in parallel in another thread of the parent, not in the one
    that forks: the workers keep all their threads (libgomp's pool belongs to
    the thread that started it, and the forking thread never did)."""
    res = _run(tmp_path, "--parent-thread")
    assert res["child"] == res["parent"]
    if _cpu.have_openmp():
        assert res["child_threads"] == [res["parent_threads"]] == [2]


# Another thread holds the output cache's lock (as cache_trim and
# cache_set_limit do, without the GIL) when the main thread forks; the child
# then takes a 2 MiB output from the cache.
HELD_LOCK = r"""
import json, os, signal, threading, time
import numpy as np
import normdrop as nd
from normdrop._cpu import _pool

x = np.random.default_rng(0).standard_normal((1024, 256))    # a 2 MiB output
t = threading.Thread(target=_pool._hold_lock, args=(1.0,))
t.start()
time.sleep(0.2)                                               # the lock is held now
pid = os.fork()
if pid == 0:
    signal.alarm(20)
    nd.batchnorm_forward(x, np.ones(256), np.zeros(256), {"mode": "train"})
    os._exit(0)
_, st = os.waitpid(pid, 0)
t.join()
print(json.dumps({"hung": os.WIFSIGNALED(st), "status": st}))
"""


def test_fork_while_another_thread_holds_the_cache_lock(tmp_path):
    """A child forked while another thread held the output cache's lock used
    to inherit it held, and spun forever on its first output of 1 MiB or
    more; fork() now waits for the holder, and the child's lock is free."""
    res = _run(tmp_path, script_text=HELD_LOCK)
    assert not res["hung"], "the forked child spun on the output cache's lock"
    assert res["status"] == 0
