"""``python -m normdrop info`` / :func:`normdrop.show_config`."""
from __future__ import annotations

import os
import sys


def _cuda_status():
    """(usable, description) of the CUDA backend."""
    try:
        import cupy
    except Exception as exc:  # noqa: BLE001 - any import failure means unusable
        return False, f"CuPy not importable ({type(exc).__name__})"
    try:
        if not cupy.cuda.is_available():
            return False, f"CuPy {cupy.__version__}, no GPU available"
        dev = cupy.cuda.Device()
        props = cupy.cuda.runtime.getDeviceProperties(dev.id)
        name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
        return True, f"CuPy {cupy.__version__}, GPU {dev.id}: {name} (sm_{dev.compute_capability})"
    except Exception as exc:  # noqa: BLE001
        return False, f"CuPy {cupy.__version__}, GPU unusable ({exc})"


def config() -> dict:
    """The facts `show_config` prints, as a dict."""
    import normdrop
    from . import _cpu
    from ._dispatch import reference_forced

    threads = _cpu.max_threads()
    try:
        from threadpoolctl import threadpool_info
        for pool in threadpool_info():
            if pool.get("user_api") == "openmp" and "normdrop" in str(pool.get("filepath", "")) \
                    or pool.get("internal_api") == "openmp":
                threads = pool.get("num_threads", threads)
                break
    except Exception:  # noqa: BLE001 - threadpoolctl is optional
        pass
    cuda_ok, cuda_desc = _cuda_status()
    forced = reference_forced()
    return {
        "version": normdrop.__version__,
        "path": os.path.dirname(normdrop.__file__),
        "python": sys.version.split()[0],
        "numpy": __import__("numpy").__version__,
        "openmp": _cpu.have_openmp(),
        "threads": threads,
        "omp_num_threads_env": os.environ.get("OMP_NUM_THREADS"),
        "cuda": cuda_ok,
        "cuda_detail": cuda_desc,
        "reference_forced": forced,
        "backends": {
            "numpy": "reference (forced)" if forced else "cpu (C kernels)",
            "cupy": ("reference (forced)" if forced else "cuda (RawModule kernels)")
            if cuda_ok else "unavailable",
            "other array-API libraries": "reference",
        },
    }


def show_config(file=None) -> None:
    """Print normdrop's version, import path, OpenMP and thread count, CUDA
    availability and which backend each array library maps to."""
    c = config()
    out = file or sys.stdout
    print(f"normdrop {c['version']}", file=out)
    print(f"  imported from   {c['path']}", file=out)
    print(f"  python, numpy   {c['python']}, {c['numpy']}", file=out)
    print(f"  OpenMP          {'on' if c['openmp'] else 'off'}, {c['threads']} thread(s)"
          f" (OMP_NUM_THREADS={c['omp_num_threads_env'] or 'unset'})", file=out)
    print(f"  CUDA            {'usable' if c['cuda'] else 'not usable'}: {c['cuda_detail']}",
          file=out)
    print("  backends", file=out)
    for lib, be in c["backends"].items():
        print(f"    {lib:<26} -> {be}", file=out)
