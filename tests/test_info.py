"""``python -m normdrop info`` and ``normdrop.show_config()``: the facts they
print agree with the installation they run from."""
from __future__ import annotations

import io
import os
import subprocess
import sys
import textwrap

import pytest

import normdrop
from normdrop import _cpu


def _info(tmp_path, **env_changes):
    """Run ``python -m normdrop info`` outside the source tree; return
    (fields, backends): fields maps each label to its values (a list: GPU
    lines repeat), backends maps each array library to its backend."""
    env = dict(os.environ)
    for k in ("OMP_NUM_THREADS", "NORMDROP_BACKEND"):
        env.pop(k, None)
    for k, v in env_changes.items():
        if v is None:
            env.pop(k, None)
        else:
            env[k] = v
    res = subprocess.run([sys.executable, "-m", "normdrop", "info"], cwd=tmp_path, env=env,
                         capture_output=True, text=True, timeout=120)
    assert res.returncode == 0, res.stderr
    return _parse(res.stdout)


def _parse(text):
    lines = text.splitlines()
    fields = {"title": [lines[0]]}
    backends = {}
    in_backends = False
    for line in lines[1:]:
        if line == "  backends":
            in_backends = True
        elif in_backends and line.startswith("    "):
            lib, be = line.strip().split(" -> ", 1)
            backends[lib.strip()] = be
        else:
            assert line.startswith("  ") and not line.startswith("   "), line
            in_backends = False
            fields.setdefault(line[2:19].rstrip(), []).append(line[19:])
    return fields, backends


def test_info_reports_this_installation(tmp_path):
    fields, backends = _info(tmp_path)
    assert fields["title"] == [f"normdrop {normdrop.__version__}"]
    path = fields["imported from"][0]
    assert os.path.samefile(path, os.path.dirname(normdrop.__file__))
    assert fields["numpy"] == [__import__("numpy").__version__]
    openmp = fields["OpenMP"][0]
    assert openmp.startswith("on" if _cpu.have_openmp() else "off"), openmp
    assert backends["numpy"].startswith("cpu")
    assert backends["any other array-API library"].startswith("cpu/cuda where it exports DLPack")
    assert backends["array_api_strict"].startswith("cpu (DLPack)")
    assert backends["dask.array"].startswith("reference")
    isa = fields["ISA variants"][0]
    assert isa.startswith("normalization ") and "dropout " in isa, isa
    assert _cpu.isa()["normalization"] in isa and _cpu.isa()["dropout"] in isa
    cuda = fields["CUDA"][0]
    assert cuda.startswith(("usable", "not usable"))
    if cuda.startswith("not usable"):
        assert backends["cupy"].startswith("cuda, unavailable")
    assert fields["CUDA sources"][0].split()[0].isdigit()


@pytest.mark.parametrize("n", [1, 3])
def test_info_threads_follow_omp_num_threads(tmp_path, n):
    fields, backends = _info(tmp_path, OMP_NUM_THREADS=str(n))
    threads = fields["threads"][0]
    if _cpu.have_openmp():
        assert threads.split()[0] == str(n), threads
        assert f"OMP_NUM_THREADS={n}" in threads
        assert f"OpenMP, {n} thread(s)" in backends["numpy"]
        assert fields["OpenMP runtime"][0] != ""
    else:
        assert threads == "1"
        assert "serial" in backends["numpy"]


def test_info_reference_forced(tmp_path):
    fields, backends = _info(tmp_path, NORMDROP_BACKEND="reference")
    assert backends["numpy"] == "reference (forced)"
    assert backends["cupy"] == "reference (forced)"
    assert "reference forced" in fields


def test_an_unknown_backend_in_the_environment_is_a_warning(tmp_path):
    """NORMDROP_BACKEND takes 'reference' (any case); anything else was
    ignored without a word, so a typo ran the C kernels unannounced."""
    env = {k: v for k, v in os.environ.items() if k != "NORMDROP_BACKEND"}
    code = "import normdrop, numpy as np; print(normdrop.batchnorm_forward(np.ones((3, 2)), " \
           "np.ones(2), np.zeros(2), {'mode': 'train'})[1].backend_name)"
    for value, backend, warned in (("refrence", "cpu", True), (" Reference ", "reference", False),
                                   ("", "cpu", False)):
        res = subprocess.run([sys.executable, "-c", code], cwd=tmp_path, capture_output=True,
                             text=True, timeout=120, env=dict(env, NORMDROP_BACKEND=value))
        assert res.returncode == 0, res.stderr
        assert res.stdout.strip() == backend
        assert ("ignoring NORMDROP_BACKEND='refrence'" in res.stderr) is warned, res.stderr


@pytest.mark.skipif(not _cpu.have_openmp(), reason="normdrop was built without OpenMP")
def test_show_config_follows_threadpool_limits():
    threadpoolctl = pytest.importorskip("threadpoolctl")
    _cpu.max_threads()  # the extension (and its OpenMP runtime) is loaded
    with threadpoolctl.threadpool_limits(limits=1):
        out = io.StringIO()
        normdrop.show_config(file=out)
        assert normdrop._info.config()["threads"] == 1
    fields, _ = _parse(out.getvalue())
    assert fields["threads"][0].split()[0] == "1"


def test_config_dict():
    c = normdrop._info.config()
    assert c["version"] == normdrop.__version__
    assert c["openmp"] == _cpu.have_openmp()
    assert c["threads"] == _cpu.max_threads()
    assert c["extension_error"] is None
    assert isinstance(c["cuda"], bool) and isinstance(c["backends"], dict)


# A stand-in for CuPy with the attributes `info` reads, so the GPU branch of the
# report runs on machines without a GPU.
FAKE_CUPY = '''
__version__ = "99.1.0"

class _Runtime:
    @staticmethod
    def getDeviceCount():
        return 2
    @staticmethod
    def getDeviceProperties(i):
        return {"name": b"Fake GPU %d" % i, "major": 9, "minor": 0, "totalGlobalMem": 80 * 2**30}
    @staticmethod
    def runtimeGetVersion():
        return 12080
    @staticmethod
    def driverGetVersion():
        return 12090

class _Nvrtc:
    @staticmethod
    def getVersion():
        return (12, 8)

class _Device:
    id = 0

class cuda:
    runtime = _Runtime
    nvrtc = _Nvrtc
    Device = _Device
    @staticmethod
    def is_available():
        return AVAILABLE
'''


@pytest.mark.parametrize("available", [True, False])
def test_info_cuda_report(tmp_path, available):
    (tmp_path / "fake").mkdir()
    (tmp_path / "fake" / "cupy.py").write_text(
        textwrap.dedent(FAKE_CUPY).replace("AVAILABLE", str(available)))
    fields, backends = _info(tmp_path, PYTHONPATH=str(tmp_path / "fake"))
    cuda = fields["CUDA"][0]
    if available:
        assert cuda == "usable: CuPy 99.1.0, CUDA runtime 12.8, driver 12.9, NVRTC 12.8"
        assert fields["GPU"] == ["0*: Fake GPU 0 (sm_90, 80 GiB)", "1: Fake GPU 1 (sm_90, 80 GiB)"]
        assert backends["cupy"].startswith("cuda (")
    else:
        assert cuda == "not usable: CuPy 99.1.0, no usable GPU (no device or driver)"
        assert "GPU" not in fields
        assert backends["cupy"].startswith("cuda, unavailable")


def test_info_reports_the_output_cache_and_streaming_threshold():
    import io

    import normdrop as nd
    from normdrop._info import config
    old = nd.set_cache_limit(3 << 20)
    try:
        c = config()
        assert c["output_cache"]["limit"] == 3 << 20
        assert c["stream_bytes"] > 0
        buf = io.StringIO()
        nd.show_config(file=buf)
        assert "limit 3 MiB" in buf.getvalue()
    finally:
        nd.set_cache_limit(old)
