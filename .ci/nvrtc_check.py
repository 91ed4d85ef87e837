"""Compile every CUDA kernel source of normdrop with NVRTC, without a GPU.

For each module of ``normdrop/_cuda/_loader.py`` and each target
architecture, the exact source text and options the loader gives
``cupy.RawModule`` are compiled to a cubin (NVRTC runs ptxas, so the PTX is
checked too), with every name expression the loader asks for registered and
resolved to its lowered (mangled) name, as CuPy does.  One line is printed per
(file, architecture); on any failure the compiler log is printed and the exit
status is 1.

Needs the NVRTC runtime and its Python binding, both as wheels, e.g.::

    python3 -m venv .venv-nvrtc
    .venv-nvrtc/bin/pip install nvidia-cuda-nvrtc-cu12==12.9.86 cuda-bindings==12.9.10
    .venv-nvrtc/bin/python .ci/nvrtc_check.py

The loader is loaded by path, so neither CuPy nor the compiled normdrop
extension is needed.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
LOADER = os.path.join(ROOT, "normdrop", "_cuda", "_loader.py")
ARCHS = ("sm_80", "sm_90")


def load_loader(path=LOADER):
    spec = importlib.util.spec_from_file_location("normdrop_cuda_loader", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def _nvrtc():
    try:
        from cuda.bindings import nvrtc
    except ImportError:                         # cuda-python < 12.6 layout
        from cuda import nvrtc
    return nvrtc


def _check(nvrtc, result, what):
    err = result[0] if isinstance(result, tuple) else result
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS:
        _, msg = nvrtc.nvrtcGetErrorString(err)
        raise RuntimeError(f"{what}: {msg.decode() if isinstance(msg, bytes) else msg}")
    return result[1:] if isinstance(result, tuple) and len(result) > 1 else None


def _log(nvrtc, prog) -> str:
    err, size = nvrtc.nvrtcGetProgramLogSize(prog)
    if err != nvrtc.nvrtcResult.NVRTC_SUCCESS or size <= 1:
        return ""
    buf = b" " * size
    nvrtc.nvrtcGetProgramLog(prog, buf)
    return buf.rstrip(b"\x00").decode(errors="replace")


def compile_module(nvrtc, loader, module, arch):
    """Compile one module for one architecture.

    Returns
    -------
    (ok, cubin_size, log, lowered) : (bool, int, str, dict)
        ``lowered`` maps each name expression to its mangled name.
    """
    filename = loader.MODULES[module][0]
    src = loader.source(module).encode()
    exprs = loader.name_expressions(module)
    opts = [o.encode() for o in loader.COMPILE_OPTIONS] + [f"--gpu-architecture={arch}".encode()]
    (prog,) = _check(nvrtc, nvrtc.nvrtcCreateProgram(src, filename.encode(), 0, [], []),
                     "nvrtcCreateProgram")
    try:
        for e in exprs:
            _check(nvrtc, nvrtc.nvrtcAddNameExpression(prog, e.encode()), f"add {e}")
        res = nvrtc.nvrtcCompileProgram(prog, len(opts), opts)
        log = _log(nvrtc, prog)
        if res[0] != nvrtc.nvrtcResult.NVRTC_SUCCESS:
            return False, 0, log, {}
        lowered = {}
        for e in exprs:
            (name,) = _check(nvrtc, nvrtc.nvrtcGetLoweredName(prog, e.encode()), f"lowered {e}")
            lowered[e] = name.decode() if isinstance(name, bytes) else name
        (size,) = _check(nvrtc, nvrtc.nvrtcGetCUBINSize(prog), "nvrtcGetCUBINSize")
        cubin = b" " * size
        _check(nvrtc, nvrtc.nvrtcGetCUBIN(prog, cubin), "nvrtcGetCUBIN")
        return True, size, log, lowered
    finally:
        nvrtc.nvrtcDestroyProgram(prog)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--arch", action="append", help="target (repeatable); default sm_80, sm_90")
    parser.add_argument("--loader", default=LOADER, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    archs = tuple(args.arch or ARCHS)
    nvrtc = _nvrtc()
    loader = load_loader(args.loader)
    _, major, minor = nvrtc.nvrtcVersion()
    print(f"NVRTC {major}.{minor}; options {' '.join(loader.COMPILE_OPTIONS)}")
    failed = 0
    for module in loader.MODULES:
        filename = loader.MODULES[module][0]
        for arch in archs:
            ok, size, log, lowered = compile_module(nvrtc, loader, module, arch)
            if ok:
                print(f"ok    {filename:<16} {arch}  {len(lowered)} kernels, cubin {size} bytes")
                if log.strip():
                    print(log)
            else:
                failed += 1
                print(f"FAIL  {filename:<16} {arch}")
                print(log or "(no compiler log)")
    if failed:
        print(f"{failed} compilation(s) failed", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
