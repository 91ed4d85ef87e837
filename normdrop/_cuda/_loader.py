"""Sources, compile options and lazy compilation of the CUDA kernels.

The kernels live in ``.cu`` files shipped beside this module (package data);
the dropout generator and the moments merge are the headers
``normdrop/include/nd_philox.h`` and ``nd_moments.h`` that the C kernels
compile too.  A module's source is assembled as the text of those headers,
``nd_common.cu`` and the module's ``.cu`` file, each behind a ``#line``
directive so that compiler messages name the original file and line.  The
headers are inlined rather than passed as ``-I``: the source string then
covers every byte that is compiled, so CuPy's on-disk kernel cache (keyed on
the source and options) can never serve a binary built from an older header.

This module imports nothing outside the standard library at import time, so
that the source assembly can be checked (and compiled by the NVRTC check in
CI) where CuPy is not installed; it can also be loaded on its own, by path.

Compilation is lazy and memoized per device: :func:`function` compiles a
module with ``cupy.RawModule`` on first use on a device, with every template
instantiation of :func:`name_expressions`.
"""
from __future__ import annotations

import os
import re

_HERE = os.path.dirname(os.path.abspath(__file__))
#: The shared C/CUDA headers, in the order they are inlined.
HEADERS = tuple(os.path.join(os.path.dirname(_HERE), "include", h)
                for h in ("nd_philox.h", "nd_moments.h"))
COMMON_FILE = "nd_common.cu"

#: C++ type of each supported NumPy/CuPy dtype name in the kernels.
CTYPES = {"float16": "nd_half", "float32": "float", "float64": "double"}

#: module name -> (its .cu file, templated kernels, plain kernels).  Every
#: templated kernel is instantiated for every type of CTYPES.
MODULES = {
    "nd_norm": ("nd_norm.cu",
                ("nd_moments_part", "nd_normalize", "nd_grad_reduce_part",
                 "nd_grad_reduce_affine_part", "nd_grad_reduce_merge", "nd_grad_input",
                 "nd_running_update"),
                ("nd_moments_merge",)),
    "nd_dropout": ("nd_dropout.cu",
                   ("nd_dropout_fwd", "nd_dropout_bwd"),
                   ("nd_dropout_mask",)),
}

#: Options given to NVRTC for every module (CuPy adds the target
#: architecture, and -ftz=true, which the kernels are written to tolerate).
COMPILE_OPTIONS = ("-std=c++14",)

#: Threads per block of every kernel; ND_THREADS in nd_common.cu.
THREADS = 256


def _read(path: str) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read()


def _piece(name: str, text: str) -> str:
    if not text.endswith("\n"):
        text += "\n"
    return f'#line 1 "{name}"\n{text}'


def cu_path(filename: str) -> str:
    """Path of a kernel source file shipped with the package."""
    return os.path.join(_HERE, filename)


def source(module: str) -> str:
    """The complete CUDA C++ source of ``module`` (a key of :data:`MODULES`).

    Returns
    -------
    str
        ``nd_philox.h``, ``nd_moments.h``, ``nd_common.cu`` and the module's
        ``.cu`` file, in this order, each preceded by a ``#line`` directive.
    """
    filename = MODULES[module][0]
    return "".join([_piece(os.path.basename(h), _read(h)) for h in HEADERS] + [
        _piece(COMMON_FILE, _read(cu_path(COMMON_FILE))),
        _piece(filename, _read(cu_path(filename))),
    ])


def kernel_name(base: str, dtype=None) -> str:
    """Name expression of kernel ``base``, instantiated for ``dtype`` (a
    NumPy dtype or its name) when the kernel is a template.

    Examples
    --------
    >>> kernel_name("nd_normalize", "float32")
    'nd_normalize<float>'
    >>> kernel_name("nd_dropout_mask")
    'nd_dropout_mask'
    """
    if dtype is None:
        return base
    name = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    return f"{base}<{CTYPES[name]}>"


def name_expressions(module: str) -> tuple:
    """Every kernel name expression of ``module``: each templated kernel for
    each type of :data:`CTYPES`, then the plain kernels.

    Returns
    -------
    tuple of str
    """
    _, templated, plain = MODULES[module]
    return tuple(kernel_name(k, d) for k in templated for d in CTYPES) + tuple(plain)


def module_of(base: str) -> str:
    """The module that defines kernel ``base``."""
    for module, (_, templated, plain) in MODULES.items():
        if base in templated or base in plain:
            return module
    raise KeyError(f"no CUDA kernel named {base!r}")


def defined_kernels(text: str) -> set:
    """Names of the ``__global__`` functions defined in CUDA source ``text``."""
    pattern = re.compile(r"__global__\s+void\s+(?:__launch_bounds__\s*\([^)]*\)\s*)?(\w+)\s*\(")
    return set(pattern.findall(text))


# ----------------------------------------------------------- compilation
_memo = {}


def _memoized():
    """(module getter, function getter), built on first use because they
    need CuPy; both memoized per device with ``cupy.memoize``."""
    fns = _memo.get("fns")
    if fns is None:
        import cupy

        @cupy.memoize(for_each_device=True)
        def raw_module(module):
            return cupy.RawModule(code=source(module), options=COMPILE_OPTIONS,
                                  name_expressions=name_expressions(module))

        @cupy.memoize(for_each_device=True)
        def raw_function(base, ctype_key):
            expr = kernel_name(base, ctype_key)
            return raw_module(module_of(base)).get_function(expr)

        fns = _memo["fns"] = (raw_module, raw_function)
    return fns


def function(base: str, dtype=None):
    """The compiled kernel ``base`` (instantiated for ``dtype`` if it is a
    template) on the current device, as a ``cupy.RawKernel``.

    The module is compiled on the first request on each device (and kept in
    CuPy's kernel cache on disk); later calls are a dictionary lookup.
    """
    key = None
    if dtype is not None:
        key = dtype if isinstance(dtype, str) else getattr(dtype, "name", str(dtype))
    return _memoized()[1](base, key)
