"""``python -m normdrop info`` / :func:`normdrop.show_config`: what this
installation of normdrop is and what it will compute on.

Nothing here changes state that outlives the call, and no optional array
library is imported except CuPy (whose import is needed to ask for GPUs).
"""
from __future__ import annotations

import importlib.util
import os
import sys

# Array-API libraries reported in the backend table (importable name, label).
# They are looked up, never imported: importing PyTorch or JAX is slow and
# loads their own thread pools.
#: (module, label, what its arrays run on): DLPack CPU arrays on the C
#: kernels, CUDA ones on the CUDA kernels (normdrop._interop).
_OTHER_LIBRARIES = (
    ("torch", "torch", "cpu for CPU tensors (zero-copy), cuda for CUDA tensors, reference else"),
    ("jax", "jax.numpy", "cpu for CPU arrays (DLPack), cuda for GPU arrays, reference else"),
    ("array_api_strict", "array_api_strict", "cpu (DLPack)"),
    ("dask", "dask.array", "reference (lazy arrays)"),
    ("sparse", "sparse", "reference"),
    ("ndonnx", "ndonnx", "reference"),
)


def _installed(name: str) -> bool:
    try:
        return importlib.util.find_spec(name) is not None
    except (ImportError, ValueError):
        return False


def _version_of(module_name: str) -> str:
    try:
        return getattr(__import__(module_name), "__version__", "unknown")
    except Exception as exc:  # noqa: BLE001 - reported, never raised
        return f"not importable ({type(exc).__name__})"


def _cpu_backend():
    """(module, None) or (None, error message) for the compiled CPU backend."""
    try:
        from . import _cpu
        return _cpu, None
    except Exception as exc:  # noqa: BLE001 - e.g. imported from an unbuilt source tree
        return None, f"C extension not importable ({type(exc).__name__}: {exc})"


def _openmp_runtime(cpu) -> str | None:
    """Path of the OpenMP runtime library that normdrop's kernels use.

    Found with threadpoolctl (when installed): among the OpenMP runtimes loaded
    in this process, the one whose thread limit changes what the kernels see
    (``omp_get_max_threads`` inside the extension).  Each probe is undone on
    leaving threadpoolctl's context; it only touches the calling thread.
    """
    try:
        from threadpoolctl import ThreadpoolController
    except ImportError:
        return None
    try:
        controller = ThreadpoolController()
        before = cpu.max_threads()
        probe = 2 if before == 1 else 1
        for lib in controller.select(user_api="openmp").lib_controllers:
            with controller.select(filepath=lib.filepath).limit(limits=probe):
                reached = cpu.max_threads() == probe
            if reached:
                return lib.filepath
    except Exception:  # noqa: BLE001 - diagnostics only
        return None
    return None


def _cuda_status() -> dict:
    """CuPy and GPU facts: ``usable`` (bool), ``detail`` (one line), ``devices``."""
    if not _installed("cupy"):
        return {"usable": False, "cupy": None, "devices": [],
                "detail": "CuPy not installed (pip install 'normdrop[cuda12]' or "
                          "'normdrop[cuda13]')"}
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - any import failure means unusable
        return {"usable": False, "cupy": None, "devices": [],
                "detail": f"CuPy not importable ({type(exc).__name__}: {exc})"}
    info = {"usable": False, "cupy": cupy.__version__, "devices": []}
    try:
        if not cupy.cuda.is_available():
            info["detail"] = f"CuPy {cupy.__version__}, no usable GPU (no device or driver)"
            return info
        rt = cupy.cuda.runtime
        current = cupy.cuda.Device().id
        for i in range(rt.getDeviceCount()):
            props = rt.getDeviceProperties(i)
            name = props["name"]
            name = name.decode() if isinstance(name, bytes) else str(name)
            info["devices"].append(
                f"{i}{'*' if i == current else ''}: {name} (sm_{props['major']}{props['minor']}, "
                f"{props['totalGlobalMem'] / 2**30:.0f} GiB)")
        parts = [f"CuPy {cupy.__version__}",
                 f"CUDA runtime {_cuda_version(rt.runtimeGetVersion())}",
                 f"driver {_cuda_version(rt.driverGetVersion())}"]
        try:
            major, minor = cupy.cuda.nvrtc.getVersion()
            parts.append(f"NVRTC {major}.{minor}")
            info["usable"] = True
        except Exception as exc:  # noqa: BLE001 - the kernels need NVRTC
            parts.append(f"NVRTC not found ({type(exc).__name__}), kernels cannot compile")
        info["detail"] = ", ".join(parts)
    except Exception as exc:  # noqa: BLE001
        info["detail"] = f"CuPy {cupy.__version__}, GPU unusable ({type(exc).__name__}: {exc})"
    return info


def _cuda_version(v: int) -> str:
    return f"{v // 1000}.{v % 1000 // 10}"


def _cuda_sources() -> list:
    """The CUDA kernel sources shipped as package data."""
    here = os.path.join(os.path.dirname(os.path.abspath(__file__)), "_cuda")
    try:
        return sorted(f for f in os.listdir(here) if f.endswith((".cu", ".cuh")))
    except OSError:
        return []


def config() -> dict:
    """The facts :func:`show_config` prints, as a dict."""
    import numpy as np

    import normdrop
    from ._dispatch import namespace_backend_name, reference_forced

    cpu, cpu_error = _cpu_backend()
    openmp = cpu.have_openmp() if cpu else None
    isa = cpu.isa() if cpu else None
    threads = cpu.max_threads() if cpu else None
    forked = cpu.forked_serial() if cpu else False
    # (in a forked serial child the thread count no longer follows the limits
    # the probe sets, so the probe would find nothing)
    runtime = _openmp_runtime(cpu) if openmp and not forked else None
    cache = stream = None
    if cpu is not None:
        from . import _memory
        cache = _memory.cache_info()
        stream = int(cpu._k.get_stream_bytes())
    cuda = _cuda_status()
    forced = reference_forced()

    backends = {}
    if namespace_backend_name(np) == "reference":
        backends["numpy"] = "reference (forced)"
    elif cpu is None:
        backends["numpy"] = "cpu, unavailable: the C extension is not importable"
    else:
        backends["numpy"] = ("cpu (C kernels, serial after fork)" if forked else
                             f"cpu (C kernels, OpenMP, {threads} thread(s))" if openmp
                             else "cpu (C kernels, serial)")
    if forced:
        backends["cupy"] = "reference (forced)"
    elif cuda["usable"]:
        backends["cupy"] = "cuda (CUDA kernels through CuPy RawModule)"
    else:
        backends["cupy"] = "cuda, unavailable: " + cuda["detail"]
    for module, label, route in _OTHER_LIBRARIES:
        if forced:
            route = "reference (forced)"
        backends[label] = route + ("" if _installed(module) else " (not installed)")
    backends["any other array-API library"] = ("reference (forced)" if forced else
                                               "cpu/cuda where it exports DLPack there, else "
                                               "reference")

    return {
        "version": normdrop.__version__,
        "path": os.path.dirname(os.path.abspath(normdrop.__file__)),
        "python": sys.version.split()[0],
        "executable": sys.executable,
        "numpy": np.__version__,
        "array_api_compat": _version_of("array_api_compat"),
        "extension_error": cpu_error,
        "openmp": openmp,
        "threads": threads,
        "forked_serial": forked,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "openmp_runtime": runtime,
        "isa": isa,
        "output_cache": cache,
        "stream_bytes": stream,
        "cuda": cuda["usable"],
        "cuda_detail": cuda["detail"],
        "cuda_devices": cuda["devices"],
        "cuda_sources": _cuda_sources(),
        "reference_forced": forced,
        "backends": backends,
    }


def show_config(file=None) -> None:
    """Print normdrop's version, where it was imported from, whether OpenMP
    was compiled in and how many threads the kernels will use now (this
    follows ``OMP_NUM_THREADS`` and ``threadpoolctl.threadpool_limits``),
    whether CuPy and a GPU are usable, and which backend each array library
    maps to.  ``python -m normdrop info`` prints the same.

    Parameters
    ----------
    file : file-like, optional
        Where to write (default ``sys.stdout``).
    """
    c = config()
    out = file or sys.stdout

    def line(label, value):
        print(f"  {label:<17}{value}", file=out)

    print(f"normdrop {c['version']}", file=out)
    line("imported from", c["path"])
    line("python", f"{c['python']} ({c['executable']})")
    line("numpy", c["numpy"])
    line("array-api-compat", c["array_api_compat"])
    if c["extension_error"]:
        line("OpenMP", f"unknown: {c['extension_error']}")
    else:
        line("OpenMP", "on (compiled in)" if c["openmp"] else
             "off (serial build: no OpenMP compiler, or NORMDROP_NO_OPENMP=1)")
        env = c["omp_num_threads_env"]
        if c["forked_serial"]:
            line("threads", f"{c['threads']} (serial: this process was forked from a thread "
                            "that had run parallel kernels, whose OpenMP threads could not be "
                            "released before fork() and did not survive it)")
        else:
            line("threads", f"{c['threads']} (OMP_NUM_THREADS={env if env is not None else 'unset'};"
                            " threadpoolctl limits apply)" if c["openmp"] else "1")
        if c["openmp"]:
            line("OpenMP runtime", c["openmp_runtime"] or (
                "not probed in a forked child" if c["forked_serial"]
                else "unknown (install threadpoolctl to see it)"))
        if c["isa"]:
            line("ISA variants", f"normalization {c['isa']['normalization']} (of x86-64-v4, avx2, "
                                 f"default), dropout {c['isa']['dropout']} (of avx512, avx2, "
                                 "generic)")
    if c["output_cache"] is not None:
        oc = c["output_cache"]
        line("output cache", f"{oc['bytes'] / 2**20:.1f} MiB in {oc['blocks']} block(s), limit "
                             f"{oc['limit'] / 2**20:.0f} MiB (NORMDROP_CACHE_LIMIT; "
                             "normdrop.set_cache_limit)")
        line("streaming", f"outputs of {c['stream_bytes'] / 2**20:g} MiB and more "
                          "(NORMDROP_STREAM_BYTES)")
    line("CUDA", ("usable: " if c["cuda"] else "not usable: ") + c["cuda_detail"])
    for dev in c["cuda_devices"]:
        line("GPU", dev)
    srcs = c["cuda_sources"]
    line("CUDA sources", f"{len(srcs)} file(s) in {os.path.join(c['path'], '_cuda')}"
                         + (f": {', '.join(srcs)}" if srcs else ""))
    if c["reference_forced"]:
        line("reference forced", "yes (force_reference() or NORMDROP_BACKEND=reference)")
    print("  backends", file=out)
    width = max(len(k) for k in c["backends"])
    for lib, be in c["backends"].items():
        print(f"    {lib:<{width}} -> {be}", file=out)
