"""CUDA host harness: normdrop's CUDA kernels compiled by the host C++
compiler and run on the CPU, behind a NumPy-backed stand-in for CuPy.

- ``cuda_shim.h``: the CUDA keywords, built-in variables, a deterministic
  fiber scheduler with real ``__syncthreads()`` barriers, and the float16
  conversions the kernels need off the GPU;
- :mod:`.launcher`: builds a CUDA source into a cached shared library and
  launches its kernels by name expression (ctypes);
- :mod:`.fake_cupy`: the ``cupy`` the CUDA backend sees, with poisoned
  allocations and guard bytes checked after every launch.

See README.md in this folder for what the harness proves and what it cannot.
"""
from .fake_cupy import FakeCupy, loader_function, reversed_order
from .launcher import CompileError, HostModule, LaunchError, build, build_many, compiler

__all__ = ["FakeCupy", "loader_function", "reversed_order", "CompileError", "HostModule",
           "LaunchError", "build", "build_many", "compiler"]
