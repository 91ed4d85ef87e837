"""An unbuilt or broken C extension is reported with its real reason and the
command that fixes it, in one line -- never as Python's "circular import".

The main case: a clone's root, where ``normdrop/`` (never built in place)
comes first on sys.path and shadows the installed normdrop."""
from __future__ import annotations

import importlib.machinery
import os
import shutil
import subprocess
import sys

import pytest

import normdrop
from normdrop import _build_check

CALL_AN_OP = ("import numpy as np, normdrop\n"
              "normdrop.batchnorm_forward(np.ones((4, 3)), np.ones(3), np.zeros(3), "
              "{'mode': 'train'})\n")
SUFFIX = importlib.machinery.EXTENSION_SUFFIXES[0]
PYTHON = os.path.abspath(sys.executable)     # as the child process names itself


def _source_tree(tmp_path, built=None):
    """tmp_path/clone: a copy of the normdrop package without its compiled
    extension, with the source-tree markers (the Cython source, a setup.py)
    that an installed wheel lacks.  ``built``: names of files to put where the
    extension goes (their content is not a library)."""
    root = tmp_path / "clone"
    pkg = root / "normdrop"
    shutil.copytree(os.path.dirname(normdrop.__file__), pkg,
                    ignore=shutil.ignore_patterns("*.so", "*.pyd", "*.dylib", "__pycache__",
                                                  "_kernels.c"))
    (pkg / "_cpu" / "_kernels.pyx").touch()
    (root / "setup.py").write_text("# placeholder: marks a source tree\n")
    for name in built or ():
        (pkg / "_cpu" / name).write_bytes(b"not a shared library\n")
    return root


def _run(cwd, *args, env=None):
    full = dict(os.environ, **(env or {}))
    full.pop("NORMDROP_BACKEND", None)
    return subprocess.run([sys.executable, *args], cwd=cwd, env=full, capture_output=True,
                          text=True, timeout=120)


def _last_line(res):
    lines = res.stderr.strip().splitlines()
    assert lines, res.stdout
    return lines[-1]


def test_an_unbuilt_source_tree_says_what_to_run(tmp_path):
    root = _source_tree(tmp_path)
    res = _run(root, "-c", CALL_AN_OP)
    assert res.returncode != 0
    assert "circular" not in res.stderr, res.stderr
    last = _last_line(res)
    assert last.startswith("normdrop._build_check.ExtensionImportError: normdrop is imported "
                           f"from the source tree {root}"), last
    assert "C extension is not built" in last
    assert last.endswith(f"build it in place with: {PYTHON} -m pip install -e {root}"), last
    # the traceback carries the message once, without Python's own import error before it
    assert "During handling" not in res.stderr and "cannot import name" not in res.stderr


def test_info_in_an_unbuilt_source_tree(tmp_path):
    root = _source_tree(tmp_path)
    info = _run(root, "-m", "normdrop", "info")
    assert info.returncode == 0, info.stderr
    assert "circular" not in info.stdout
    openmp = [line for line in info.stdout.splitlines() if line.startswith("  OpenMP")]
    assert openmp and "C extension is not built" in openmp[0], info.stdout
    assert f"pip install -e {root}" in openmp[0]


def test_the_shadowed_installation_is_named(tmp_path):
    root = _source_tree(tmp_path)
    site = tmp_path / "site"                  # another normdrop, built, later on sys.path
    (site / "normdrop" / "_cpu").mkdir(parents=True)
    (site / "normdrop" / "__init__.py").touch()
    (site / "normdrop" / "_cpu" / ("_kernels" + SUFFIX)).touch()
    res = _run(root, "-c", CALL_AN_OP, env={"PYTHONPATH": str(site)})
    last = _last_line(res)
    assert f"(it comes before the normdrop installed in {site} on sys.path)" in last, last
    assert "pip install -e" in last


def test_an_extension_built_for_another_python(tmp_path):
    other = "_kernels.cpython-39-x86_64-linux-gnu.so"
    if other.endswith(SUFFIX):
        other = "_kernels.cpython-38-x86_64-linux-gnu.so"
    root = _source_tree(tmp_path, built=[other])
    last = _last_line(_run(root, "-c", CALL_AN_OP))
    assert "was built for another Python" in last and other in last, last
    assert last.endswith(f"rebuild it with: {PYTHON} -m pip install -e {root}"), last


def test_an_extension_that_fails_to_load_gives_the_loader_reason(tmp_path):
    root = _source_tree(tmp_path, built=["_kernels" + SUFFIX])
    res = _run(root, "-c", CALL_AN_OP)
    last = _last_line(res)
    assert "circular" not in res.stderr
    assert f"C extension {root / 'normdrop' / '_cpu' / ('_kernels' + SUFFIX)} could not be " \
           "imported (ImportError: " in last, last
    assert last.endswith(f"rebuild it with: {PYTHON} -m pip install -e {root}"), last


def test_an_installed_package_without_its_extension_says_reinstall(tmp_path):
    pkg = tmp_path / "site" / "normdrop"      # a wheel's layout: no .pyx, no setup.py
    (pkg / "_cpu").mkdir(parents=True)
    exc = ModuleNotFoundError(f"No module named {_build_check.MODULE!r}", name=_build_check.MODULE)
    msg = _build_check.explain(exc, package_dir=str(pkg))
    assert msg.startswith(f"normdrop's C extension is missing from {pkg / '_cpu'}"), msg
    assert msg.endswith("-m pip install --force-reinstall normdrop")
    assert "\n" not in msg


def test_other_import_errors_keep_their_reason(tmp_path):
    root = _source_tree(tmp_path, built=["_kernels" + SUFFIX])
    exc = ImportError("libgomp.so.1: cannot open shared object file:\n  No such file")
    msg = _build_check.explain(exc, package_dir=str(root / "normdrop"))
    assert "(ImportError: libgomp.so.1: cannot open shared object file: No such file)" in msg
    assert "\n" not in msg


def test_the_built_extension_loads():
    k = _build_check.load_kernels()
    assert k.__name__ == _build_check.MODULE
    if _build_check.source_root() is None:
        pytest.skip("installed package: no source tree to inspect")
    assert _build_check.built_files()[0], "the source tree has no extension for this Python"
