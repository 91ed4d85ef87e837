"""Import of the compiled CPU kernels, with a one-line reason and the command
that fixes it when they cannot be imported.

The usual cause is a source tree that shadows an installed normdrop: Python
puts the current folder (or a script's folder) first on ``sys.path``, so in a
clone's root ``import normdrop`` finds the clone's ``normdrop/``, whose C
extension is only there after a build in place (``pip install -e .``).
Python's own message for that case blames a "circular import"; the
:class:`ExtensionImportError` raised here says what is missing and how to
build it.  Nothing here runs unless the import fails.
"""
from __future__ import annotations

import importlib
import importlib.machinery
import os
import shlex
import sys

MODULE = "normdrop._cpu._kernels"


class ExtensionImportError(ImportError):
    """normdrop's C extension cannot be imported; the message (one line) says
    why and which command fixes it.  The original error is ``__context__``."""


def load_kernels():
    """The C extension module ``normdrop._cpu._kernels``.

    Raises
    ------
    ExtensionImportError
        When it cannot be imported, with the reason and the fix in one line.
    """
    try:
        return importlib.import_module(MODULE)
    except ImportError as exc:
        raise ExtensionImportError(explain(exc), name=MODULE) from None


def _package_dir() -> str:
    return os.path.dirname(os.path.abspath(__file__))


def _quote(path: str) -> str:
    return shlex.quote(path)


def source_root(package_dir: str | None = None) -> str | None:
    """The source tree's root folder when ``package_dir`` (normdrop's folder)
    lies in a source tree (the Cython source next to the extension, a
    setup.py above), else None (an installed wheel)."""
    pkg = package_dir or _package_dir()
    root = os.path.dirname(pkg)
    if (os.path.isfile(os.path.join(pkg, "_cpu", "_kernels.pyx"))
            and os.path.isfile(os.path.join(root, "setup.py"))):
        return root
    return None


def built_files(package_dir: str | None = None) -> tuple[list, list]:
    """(files for this Python, files for another one): the compiled
    ``_kernels`` extensions in normdrop/_cpu, by name."""
    cpu_dir = os.path.join(package_dir or _package_dir(), "_cpu")
    try:
        names = sorted(os.listdir(cpu_dir))
    except OSError:
        return [], []
    suffixes = importlib.machinery.EXTENSION_SUFFIXES
    binary = (".so", ".pyd", ".dylib")
    mine = [n for n in names if any(n == "_kernels" + s for s in suffixes)]
    other = [n for n in names if n.startswith("_kernels.") and n.endswith(binary)
             and n not in mine]
    return mine, other


def shadowed_install(package_dir: str | None = None) -> str | None:
    """The folder of another normdrop on ``sys.path`` (after the one imported)
    that has a C extension for this Python, or None."""
    here = os.path.realpath(package_dir or _package_dir())
    for entry in sys.path:
        folder = os.path.join(entry or os.getcwd(), "normdrop")
        try:
            if os.path.realpath(folder) == here:
                continue
            if os.path.isfile(os.path.join(folder, "__init__.py")) and built_files(folder)[0]:
                return os.path.dirname(folder)
        except (OSError, ValueError):
            continue
    return None


def fix_command(package_dir: str | None = None) -> str:
    """The command that builds (source tree) or reinstalls (wheel) the
    extension, for the Python running now."""
    python = _quote(sys.executable or "python")
    root = source_root(package_dir)
    if root is not None:
        return f"{python} -m pip install -e {_quote(root)}"
    return f"{python} -m pip install --force-reinstall normdrop"


def explain(exc: BaseException, package_dir: str | None = None) -> str:
    """One line: why the C extension did not import (``exc`` is the error of
    the import) and the command that fixes it."""
    pkg = package_dir or _package_dir()
    cpu_dir = os.path.join(pkg, "_cpu")
    root = source_root(pkg)
    fix = fix_command(pkg)
    mine, other = built_files(pkg)
    not_found = isinstance(exc, ModuleNotFoundError) and exc.name == MODULE and not mine
    if not_found and other:
        tag = sys.implementation.cache_tag or sys.version.split()[0]
        return (f"normdrop's C extension in {cpu_dir} was built for another Python "
                f"({', '.join(other)}; this is {tag}): rebuild it with: {fix}")
    if not_found and root is not None:
        shadow = shadowed_install(pkg)
        where = (f" (it comes before the normdrop installed in {shadow} on sys.path)"
                 if shadow else "")
        return (f"normdrop is imported from the source tree {root}{where}, where its C "
                f"extension is not built: build it in place with: {fix}")
    if not_found:
        return (f"normdrop's C extension is missing from {cpu_dir} (an incomplete "
                f"installation): reinstall it with: {fix}")
    reason = " ".join(f"{type(exc).__name__}: {exc}".split())
    what = os.path.join(cpu_dir, mine[0]) if mine else MODULE
    return (f"normdrop's C extension {what} could not be imported ({reason}): "
            f"rebuild it with: {fix}")
