"""Compile CUDA kernel sources with the host C++ compiler and launch them.

:func:`build` turns a CUDA source (the exact text NVRTC would compile, e.g.
``normdrop._cuda._loader.source(module)``) and its name expressions into a
shared library: one translation unit made of ``cuda_shim.h``, the source and
a generated table with one entry per name expression, compiled by g++ with
IEEE-preserving options.  The library is cached on disk under the hash of
that translation unit, the options and the compiler's identity, so a source
change rebuilds it and nothing else does.

:class:`HostModule` launches a kernel by name expression with
cudaLaunchKernel's convention: one pointer per kernel parameter, pointing at
its value.  Arguments are NumPy arrays (passed as the address of their first
element) and NumPy scalars (passed by address, with their exact C size);
both are checked against the kernel's parameter types, which the library
reports, so a scalar of the wrong width or an array of the wrong dtype is an
error here rather than garbage on a GPU.

Nothing here knows normdrop's kernel names; see ``fake_cupy.py`` for the
CuPy-like layer and ``tests/test_cuda_host.py`` for the tests.
"""
from __future__ import annotations

import ctypes
import hashlib
import os
import shutil
import subprocess
import tempfile
import threading

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
SHIM_PATH = os.path.join(HERE, "cuda_shim.h")

#: Options of every build: C++17 (the shim's argument unpacking), optimized
#: but IEEE: no contraction into fused multiply-adds, no fast-math.
CXX_FLAGS = ("-std=c++17", "-O1", "-ffp-contract=off", "-fno-fast-math", "-fPIC", "-shared",
             "-fvisibility=hidden", "-Wall", "-Wno-unknown-pragmas")

#: CUDA's limits on launch dimensions (compute capability 3.0 and later).
MAX_GRID = (2**31 - 1, 65535, 65535)
MAX_BLOCK = (1024, 1024, 64)
MAX_THREADS_PER_BLOCK = 1024


class CompileError(RuntimeError):
    """The host compiler rejected a translation unit."""


class LaunchError(RuntimeError):
    """A launch failed in the shim (e.g. a divergent __syncthreads())."""


def compiler() -> str | None:
    """Path of the host C++ compiler (``$ND_CUDA_HOST_CXX``, default g++), or
    None when it is not installed."""
    return shutil.which(os.environ.get("ND_CUDA_HOST_CXX", "g++"))


def cache_dir() -> str:
    """Where built libraries are kept: ``$ND_CUDA_HOST_CACHE``, or a folder of
    the system's temporary directory (per user)."""
    d = os.environ.get("ND_CUDA_HOST_CACHE")
    if not d:
        uid = os.getuid() if hasattr(os, "getuid") else "user"
        d = os.path.join(tempfile.gettempdir(), f"normdrop-cuda-host-{uid}")
    os.makedirs(d, exist_ok=True)
    return d


def translation_unit(source: str, name_expressions) -> str:
    """The C++ text compiled for ``source``: the shim, the source, and the
    table of ``name_expressions`` (each instantiated by taking its address)."""
    with open(SHIM_PATH, encoding="utf-8") as f:
        shim = f.read()
    rows = "".join(f'    {{"{e}", &::nd_shim::thunk<&{e}>, &::nd_shim::signature<&{e}>}},\n'
                   for e in name_expressions)
    return "".join([
        '#line 1 "cuda_shim.h"\n', shim, "\n",
        source, "" if source.endswith("\n") else "\n",
        '#line 1 "<kernel table>"\n',
        "const nd_shim::kernel_entry nd_shim_kernels[] = {\n", rows,
        "    {nullptr, nullptr, nullptr}\n};\n",
        f"const int nd_shim_nkernels = {len(tuple(name_expressions))};\n",
    ])


_compiler_ids = {}


def _compiler_id(cxx: str) -> tuple:
    """(``--version`` text, target triple) of compiler ``cxx``."""
    if cxx not in _compiler_ids:
        _compiler_ids[cxx] = tuple(
            subprocess.run([cxx, flag], capture_output=True, text=True).stdout.strip()
            for flag in ("--version", "-dumpmachine"))
    return _compiler_ids[cxx]


# ------------------------------------------------------------------ build
_loaded = {}                # library path -> HostModule
_lock = threading.Lock()    # one launch at a time (the shim's scheduler is global)


def _flags(cxx, defines):
    """CXX_FLAGS, the macros, and ``$ND_CUDA_HOST_CXXFLAGS`` (extra options,
    e.g. ``-fsanitize=undefined``; see README.md).  On x86 the library is
    built without control-flow protection: the fibers' stack switch is not
    shadow-stack aware, so the library must not claim to be."""
    target = _compiler_id(cxx)[1]
    cet = ("-fcf-protection=none",) if target.startswith(("x86_64", "i686", "i386")) else ()
    extra = tuple(os.environ.get("ND_CUDA_HOST_CXXFLAGS", "").split())
    return CXX_FLAGS + cet + tuple(f"-D{d}" for d in defines) + extra


def _plan(source, name_expressions, defines):
    """(cxx, key, tu): what to compile and its cache key."""
    cxx = compiler()
    if cxx is None:
        raise CompileError("no host C++ compiler (g++) found")
    tu = translation_unit(source, name_expressions)
    h = hashlib.sha256()
    for part in (tu, "\0".join(_flags(cxx, defines)), *_compiler_id(cxx)):
        h.update(part.encode())
        h.update(b"\0\0")
    return cxx, h.hexdigest()[:24], tu


def build_many(jobs, defines=()) -> list:
    """Build several ``(source, name_expressions)`` at once (the compilers
    run in parallel), with the macros ``defines`` (``"NAME"`` or
    ``"NAME=value"``) added to the options.  Returns their
    :class:`HostModule`, in order.

    Raises
    ------
    CompileError
        With the compiler's messages, which name the original ``.cu`` files
        and lines (the sources carry ``#line`` directives).
    """
    d = cache_dir()
    planned = []
    running = []
    for source, names in jobs:
        names = tuple(names)
        cxx, key, tu = _plan(source, names, defines)
        so = os.path.join(d, key + ".so")
        planned.append((so, names))
        if so in _loaded or os.path.isfile(so):
            continue
        # private names while building, renamed when done (concurrent runs)
        stem = os.path.join(d, f"{key}.{os.getpid()}.tmp")
        with open(stem + ".cpp", "w", encoding="utf-8") as f:
            f.write(tu)
        cmd = [cxx, *_flags(cxx, defines), "-o", stem + ".so", stem + ".cpp"]
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
        running.append((proc, cmd, stem, so))
    errors = []
    for proc, cmd, stem, so in running:
        log, _ = proc.communicate()
        if proc.returncode != 0:
            errors.append(f"$ {' '.join(cmd)}\n{log}")
            continue
        with open(stem + ".log", "w", encoding="utf-8") as f:
            f.write(log)
        os.replace(stem + ".cpp", so[:-3] + ".cpp")     # kept: the text the messages refer to
        os.replace(stem + ".log", so[:-3] + ".log")
        os.replace(stem + ".so", so)
    if errors:
        raise CompileError("host compilation failed:\n" + "\n".join(errors))
    out = []
    for so, names in planned:
        if so not in _loaded:
            _loaded[so] = HostModule(so)
        mod = _loaded[so]
        assert mod.names == names, (mod.names, names)
        out.append(mod)
    return out


def build(source: str, name_expressions, defines=()) -> "HostModule":
    """Build (or load from the cache) one CUDA source; see :func:`build_many`."""
    return build_many([(source, name_expressions)], defines)[0]


# ------------------------------------------------------------ arguments
def _fits(code: str, dtype: np.dtype) -> bool:
    """Whether a value of NumPy ``dtype`` has the C type of type code ``code``
    (see ``type_code`` in cuda_shim.h)."""
    kind, size = code[0], code[1:]
    if kind == "v":
        return True
    if int(size) != dtype.itemsize:
        return False
    if kind == "r":
        return True
    if kind == "u" and dtype.kind == "b":   # bool arrays as unsigned char
        return True
    return dtype.kind == kind


def _describe(code: str) -> str:
    names = {"f": "floating", "i": "signed integer", "u": "unsigned integer", "b": "bool",
             "r": "opaque", "v": "void"}
    if code.startswith("p"):
        const = code.startswith("pc")
        return "pointer to " + ("const " if const else "") + _describe(code[2 if const else 1:])
    return names[code[0]] + (f" of {code[1:]} bytes" if code[1:] else "")


def _dims(v, what):
    t = (int(v),) if np.isscalar(v) else tuple(int(a) for a in v)
    if not 1 <= len(t) <= 3:
        raise ValueError(f"{what} must have 1 to 3 dimensions, got {v!r}")
    return t + (1,) * (3 - len(t))


class HostModule:
    """A built library: its kernels and their launch.

    Attributes
    ----------
    path : str
        The shared library.
    names : tuple of str
        The name expressions, in table order.
    signatures : dict
        name expression -> tuple of parameter type codes.
    warnings : str
        What the compiler printed while building it (empty when nothing).
    context_switch : str
        How the shim switches between the fibers of a block: ``"asm"`` or
        ``"ucontext"`` (see cuda_shim.h).
    """

    def __init__(self, path: str):
        self.path = path
        lib = self._lib = ctypes.CDLL(path)
        lib.nd_shim_kernel_name.restype = ctypes.c_char_p
        lib.nd_shim_kernel_signature.restype = ctypes.c_char_p
        lib.nd_shim_error.restype = ctypes.c_char_p
        lib.nd_shim_context_switch.restype = ctypes.c_char_p
        lib.nd_shim_launch.argtypes = [ctypes.c_char_p, ctypes.POINTER(ctypes.c_uint),
                                       ctypes.POINTER(ctypes.c_uint),
                                       ctypes.POINTER(ctypes.c_void_p)]
        lib.nd_shim_apply.argtypes = [ctypes.c_int, ctypes.c_void_p, ctypes.c_void_p,
                                      ctypes.c_void_p, ctypes.c_long]
        n = lib.nd_shim_kernel_count()
        self.names = tuple(lib.nd_shim_kernel_name(i).decode() for i in range(n))
        self.signatures = {self.names[i]: tuple(
            c for c in lib.nd_shim_kernel_signature(i).decode().split(",") if c)
            for i in range(n)}
        self.context_switch = lib.nd_shim_context_switch().decode()
        log = path[:-3] + ".log"
        self.warnings = ""
        if os.path.isfile(log):
            with open(log, encoding="utf-8") as f:
                self.warnings = f.read()

    def _pack(self, name, args):
        """(keep-alive list, void*[]) for the arguments of kernel ``name``."""
        sig = self.signatures[name]
        if len(args) != len(sig):
            raise TypeError(f"{name} takes {len(sig)} arguments, got {len(args)}")
        keep = []
        ptrs = (ctypes.c_void_p * max(1, len(args)))()
        for i, (a, code) in enumerate(zip(args, sig)):
            where = f"argument {i} of {name} ({_describe(code)})"
            if code.startswith("p"):
                if not isinstance(a, np.ndarray):
                    raise TypeError(f"{where}: expected an array, got {type(a).__name__}")
                pointee = code[2:] if code.startswith("pc") else code[1:]
                if not _fits(pointee, a.dtype):
                    raise TypeError(f"{where}: got an array of {a.dtype}")
                if not code.startswith("pc") and not a.flags.writeable:
                    raise TypeError(f"{where}: got a read-only array")
                cell = ctypes.c_void_p(a.ctypes.data)
                keep.append(cell)
                ptrs[i] = ctypes.addressof(cell)
            else:
                if not isinstance(a, np.generic):
                    raise TypeError(f"{where}: expected a NumPy scalar of the exact C type, "
                                    f"got {type(a).__name__} {a!r}")
                if not _fits(code, a.dtype):
                    raise TypeError(f"{where}: got {a.dtype} {a!r}")
                cell = np.array(a)
                keep.append(cell)
                ptrs[i] = cell.ctypes.data
        return keep, ptrs

    def launch(self, name: str, grid, block, args, reverse: bool = False):
        """Run kernel ``name`` (a name expression of the module) on ``grid`` x
        ``block`` with ``args``; returns when it has finished.

        ``reverse`` runs the blocks, and the threads of each phase, in the
        reverse order (a race between threads or blocks then shows as a
        different result).

        Raises
        ------
        KeyError: no such kernel.  TypeError: arguments that do not match the
        kernel's parameters.  ValueError: a grid or block beyond CUDA's
        limits.  LaunchError: the shim's report (e.g. divergent barriers).
        """
        if name not in self.signatures:
            raise KeyError(f"no kernel {name!r} in {os.path.basename(self.path)} "
                           f"(name expressions: {', '.join(self.names)})")
        g, b = _dims(grid, "grid"), _dims(block, "block")
        if any(not 1 <= v <= m for v, m in zip(g, MAX_GRID)):
            raise ValueError(f"invalid launch configuration: grid {g} (limits {MAX_GRID})")
        if any(not 1 <= v <= m for v, m in zip(b, MAX_BLOCK)) \
                or b[0] * b[1] * b[2] > MAX_THREADS_PER_BLOCK:
            raise ValueError(f"invalid launch configuration: block {b} (limits {MAX_BLOCK}, "
                             f"{MAX_THREADS_PER_BLOCK} threads)")
        keep, ptrs = self._pack(name, args)
        with _lock:
            self._lib.nd_shim_set_reverse(int(bool(reverse)))
            rc = self._lib.nd_shim_launch(name.encode(), (ctypes.c_uint * 3)(*g),
                                          (ctypes.c_uint * 3)(*b), ptrs)
            msg = self._lib.nd_shim_error().decode() if rc else ""
        del keep
        if rc:
            raise LaunchError(f"{name}: {msg}")

    def shim_apply(self, op: int, a, b=None):
        """The shim's conversion or product number ``op`` (see nd_shim_apply
        in cuda_shim.h) applied to the contiguous arrays a (and b)."""
        dtypes = {0: (np.uint16, np.float32), 1: (np.float32, np.uint16),
                  2: (np.float64, np.uint16), 3: (np.float32, np.float64),
                  4: (np.float64, np.float32), 5: (np.float32, np.float32),
                  6: (np.float64, np.float64)}
        tin, tout = dtypes[op]
        a = np.ascontiguousarray(a, dtype=tin)
        b = a if b is None else np.ascontiguousarray(b, dtype=tin)
        out = np.empty(a.shape, tout)
        rc = self._lib.nd_shim_apply(op, a.ctypes.data, b.ctypes.data, out.ctypes.data, a.size)
        assert rc == 0
        return out
