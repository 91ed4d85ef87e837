"""Build of normdrop's C kernels (src_c/) through Cython, with OpenMP when the
compiler can build an OpenMP program.

Environment:
  NORMDROP_NO_OPENMP=1   build the serial kernels even where OpenMP works.
  NORMDROP_ISA=avx2      pin the x86-64 kernels to one instruction-set variant
                         (default, avx2 or x86-64-v4) instead of choosing at run
                         time: to benchmark or test a variant the processor
                         would not pick (an AVX2 run on an AVX-512 machine); the
                         import refuses a variant the processor cannot run.  A
                         changed value needs a fresh build (pip install rebuilds;
                         build_ext --inplace needs --force).
"""
import os
import shutil
import subprocess
import sys
import tempfile

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext

KERNEL_SOURCES = ["src_c/nd_norm.c", "src_c/nd_dropout.c", "src_c/nd_common.c"]
INCLUDE_DIRS = ["src_c", "normdrop/include", np.get_include()]


def _truthy(name):
    return os.environ.get(name, "").strip().lower() in ("1", "true", "yes", "on")


_ISA_LEVELS = {"default": 0, "generic": 0, "avx2": 1, "x86-64-v4": 2, "avx512": 2}


def _isa_macros():
    """[("ND_FORCE_ISA_LEVEL", level)] for NORMDROP_ISA, [] when it is unset."""
    name = os.environ.get("NORMDROP_ISA", "").strip().lower()
    if not name or name == "native":
        return []
    if name not in _ISA_LEVELS:
        raise SystemExit(f"NORMDROP_ISA={name!r}: expected one of {', '.join(_ISA_LEVELS)}")
    print(f"normdrop: kernels pinned to the {name} variant (NORMDROP_ISA)")
    return [("ND_FORCE_ISA_LEVEL", str(_ISA_LEVELS[name]))]


def _openmp_flags(compiler):
    """(compile_args, link_args) for OpenMP, or None when it cannot be used."""
    if _truthy("NORMDROP_NO_OPENMP"):
        return None
    if compiler.compiler_type == "msvc":
        return ["/openmp"], []
    if sys.platform == "darwin":
        candidates = [(["-Xpreprocessor", "-fopenmp"], ["-lomp"])]
    else:
        candidates = [(["-fopenmp"], ["-fopenmp"])]
    test = "#include <omp.h>\nint main(void){int n=0;\n#pragma omp parallel reduction(+:n)\nn+=1;\nreturn omp_get_max_threads()>0&&n>0?0:1;}\n"
    tmp = tempfile.mkdtemp()
    try:
        src = os.path.join(tmp, "omp_test.c")
        with open(src, "w") as f:
            f.write(test)
        for cflags, lflags in candidates:
            try:
                objs = compiler.compile([src], output_dir=tmp, extra_postargs=cflags)
                compiler.link_executable(objs, "omp_test", output_dir=tmp, extra_postargs=lflags)
                subprocess.run([os.path.join(tmp, "omp_test")], check=True, capture_output=True)
                return cflags, lflags
            except Exception:  # noqa: BLE001 - any failure means no OpenMP
                continue
        return None
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class BuildExt(build_ext):
    """build_ext that probes OpenMP and sets optimisation flags per compiler."""

    def build_extensions(self):
        omp = _openmp_flags(self.compiler)
        if self.compiler.compiler_type == "msvc":
            base, link = ["/O2", "/fp:precise"], []
        else:
            # -pthread: the fork handlers (pthread_atfork) of the serial build too
            base = ["-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno", "-pthread"]
            link = ["-pthread"]
        for ext in self.extensions:
            ext.extra_compile_args = base + (omp[0] if omp else [])
            ext.extra_link_args = link + (omp[1] if omp else [])
        print(f"normdrop: building with OpenMP {'on' if omp else 'off'}")
        super().build_extensions()


extensions = [
    Extension(
        "normdrop._cpu._kernels",
        sources=["normdrop/_cpu/_kernels.pyx"] + KERNEL_SOURCES,
        include_dirs=INCLUDE_DIRS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION"), *_isa_macros()],
    ),
    Extension(
        "normdrop._cpu._pool",
        sources=["normdrop/_cpu/_pool.pyx", "src_c/nd_pool.c"],
        include_dirs=INCLUDE_DIRS,
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    ),
    Extension(
        "normdrop._cpu._dlpack",
        sources=["normdrop/_cpu/_dlpack.pyx"],
        include_dirs=[np.get_include()],
        define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
    ),
]

setup(
    ext_modules=cythonize(extensions, language_level=3),
    cmdclass={"build_ext": BuildExt},
)
