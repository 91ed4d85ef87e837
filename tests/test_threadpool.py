"""The CPU kernels' thread count follows ``OMP_NUM_THREADS`` and
``threadpoolctl.threadpool_limits`` (DESIGN section 6), and threadpoolctl sees
the OpenMP runtime that normdrop's extension links: the system's in a source
build, the copy vendored into the wheel (``normdrop.libs/``, renamed by
auditwheel or delvewheel; ``normdrop/.dylibs/`` by delocate) in an installed
wheel.

``normdrop._cpu.max_threads()`` is ``omp_get_max_threads()`` called inside the
extension: the number of threads its next parallel region will use.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import numpy as np
import pytest

import normdrop
from normdrop import _cpu

threadpoolctl = pytest.importorskip("threadpoolctl")

needs_openmp = pytest.mark.skipif(
    not _cpu.have_openmp(),
    reason="normdrop was built without OpenMP (serial kernels: one thread whatever the limits)")

# Prints, as JSON, what a fresh interpreter sees: the OpenMP runtimes loaded by
# importing the extension, the one whose threadpoolctl limit reaches the
# kernels, and the thread counts before and inside threadpool_limits(1).
PROBE = r"""
import json, os
import numpy
from threadpoolctl import ThreadpoolController, threadpool_info, threadpool_limits

def openmp_paths():
    return {p["filepath"] for p in threadpool_info() if p["user_api"] == "openmp"}

before = openmp_paths()
import normdrop
from normdrop import _cpu
loaded = sorted(openmp_paths() - before)
threads = _cpu.max_threads()
controller = ThreadpoolController()
probe = 2 if threads == 1 else 1
used = []
for lib in controller.select(user_api="openmp").lib_controllers:
    with controller.select(filepath=lib.filepath).limit(limits=probe):
        if _cpu.max_threads() == probe:
            used.append(lib.filepath)
with threadpool_limits(1):
    limited = _cpu.max_threads()
info = [p for p in threadpool_info() if p["user_api"] == "openmp"]
print(json.dumps({
    "package": os.path.dirname(os.path.abspath(normdrop.__file__)),
    "openmp": _cpu.have_openmp(),
    "threads": threads,
    "limited": limited,
    "after": _cpu.max_threads(),
    "loaded_by_import": loaded,
    "used": used,
    "info": info,
}))
"""


def _probe(omp_num_threads=None, script=PROBE):
    env = dict(os.environ)
    env.pop("OMP_NUM_THREADS", None)
    if omp_num_threads is not None:
        env["OMP_NUM_THREADS"] = str(omp_num_threads)
    res = subprocess.run([sys.executable, "-c", script], env=env, capture_output=True,
                         text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return json.loads(res.stdout.strip().splitlines()[-1])


def _vendored_openmp(package_dir):
    """OpenMP runtimes that a wheel repair tool copied next to the package."""
    dirs = [os.path.join(os.path.dirname(package_dir), "normdrop.libs"),  # auditwheel, delvewheel
            os.path.join(package_dir, ".dylibs")]                         # delocate
    found = []
    for d in dirs:
        if os.path.isdir(d):
            found += [os.path.join(d, f) for f in os.listdir(d)
                      if f.lower().startswith(("libgomp", "libomp", "vcomp", "libiomp"))]
    return found


@needs_openmp
def test_threadpool_limits_reach_the_kernels():
    base = _cpu.max_threads()
    with threadpoolctl.threadpool_limits(limits=3, user_api="openmp"):
        assert _cpu.max_threads() == 3
        with threadpoolctl.threadpool_limits(limits=1):
            assert _cpu.max_threads() == 1
        assert _cpu.max_threads() == 3
    assert _cpu.max_threads() == base


@needs_openmp
def test_results_under_a_limit_are_identical():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4099, 37))
    gamma, beta = np.linspace(0.5, 2, 37), np.linspace(-1, 1, 37)
    with threadpoolctl.threadpool_limits(limits=3, user_api="openmp"):
        ref, _ = normdrop.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert _cpu.max_threads() == 1
        out, _ = normdrop.batchnorm_forward(x, gamma, beta, {"mode": "train"})
    assert np.array_equal(out, ref)


@needs_openmp
@pytest.mark.parametrize("n", [1, 3])
def test_omp_num_threads_reaches_the_kernels(n):
    r = _probe(omp_num_threads=n)
    assert r["threads"] == n
    assert r["limited"] == 1
    assert r["after"] == n
    runtimes = [p for p in r["info"] if p["filepath"] in r["used"]]
    assert runtimes and all(p["num_threads"] == n for p in runtimes), r


@needs_openmp
def test_threadpool_info_lists_the_openmp_runtime_normdrop_links():
    r = _probe()
    assert r["used"], f"no OpenMP runtime seen by threadpoolctl reaches normdrop's kernels: {r}"
    listed = {p["filepath"] for p in r["info"]}
    assert set(r["used"]) <= listed
    for path in r["used"]:
        name = os.path.basename(path).lower()
        assert name.startswith(("libgomp", "libomp", "vcomp", "libiomp")), path
    if r["loaded_by_import"]:
        # Importing the extension is what brought its runtime in.
        assert set(r["used"]) <= set(r["loaded_by_import"]), r
    vendored = _vendored_openmp(r["package"])
    if vendored:
        # An installed, repaired wheel: the kernels use the copy it carries,
        # not a runtime of the system.
        assert any(os.path.samefile(u, v) for u in r["used"] for v in vendored), (r, vendored)
    else:
        assert not any(os.sep + "normdrop.libs" + os.sep in u for u in r["used"]), r


@pytest.mark.skipif(_cpu.have_openmp(), reason="checks the serial (no OpenMP) build")
def test_serial_build_uses_one_thread():
    r = _probe(omp_num_threads=3, script=(
        "import json; from normdrop import _cpu; "
        "print(json.dumps({'threads': _cpu.max_threads(), 'openmp': _cpu.have_openmp()}))"))
    assert r == {"threads": 1, "openmp": False}


@needs_openmp
def test_limit_entered_before_the_first_call_reaches_the_kernels():
    r = _probe(omp_num_threads=3, script=(
        "import json, numpy as np, normdrop\n"
        "from threadpoolctl import threadpool_limits\n"
        "with threadpool_limits(limits=1, user_api='openmp'):\n"
        "    normdrop.batchnorm_forward(np.ones((8, 3)), np.ones(3), np.zeros(3), {'mode': 'train'})\n"
        "    from normdrop import _cpu\n"
        "    print(json.dumps({'threads': _cpu.max_threads()}))\n"))
    assert r["threads"] == 1
