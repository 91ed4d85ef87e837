"""CPU backend: NumPy arrays on the OpenMP C kernels of ``src_c/``.

The backend itself (the contract of :mod:`normdrop._contract`) is
:mod:`normdrop._cpu._backend`; this package loads the C extension at import,
so that its OpenMP runtime is there for ``threadpoolctl`` limits entered
before the first call, and reports on it.
"""
from __future__ import annotations

from .._build_check import load_kernels

_k = load_kernels()   # the C extension; a one-line reason and fix when it is not built


def have_openmp() -> bool:
    """True when the kernels were compiled with OpenMP."""
    return _k.have_openmp()


def max_threads() -> int:
    """Threads an OpenMP kernel would use now (1 without OpenMP, and 1 in a
    process forked after a parallel kernel: see :func:`forked_serial`)."""
    return _k.max_threads()


def isa() -> dict:
    """The instruction-set variant each kernel family runs on this processor,
    e.g. {"normalization": "avx2", "dropout": "avx2"}."""
    return _k.isa()


def forked_serial() -> bool:
    """True in a process forked (e.g. by ``multiprocessing`` with the
    ``'fork'`` start method) from a thread that had run a parallel kernel.
    GNU libgomp's threads do not survive ``fork()``, and a parallel region in
    the child would wait for them forever; the kernels run on one thread
    there instead, with the same results."""
    return _k.forked_serial()
