"""Building and running the C test harnesses of tests/c/ against src_c/
with a C compiler (the ISA-variant byte-equality tests).  Needs the source
tree and a C compiler: test modules take ``pytestmark = c_harness.NEEDS``,
which skips them where either is missing (the installed-wheel run)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src_c")
CC = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]

NEEDS = [
    pytest.mark.skipif(not os.path.isdir(SRC), reason="needs the source tree (src_c/)"),
    pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})"),
]

# The build's floating-point flags (setup.py), without OpenMP: the partition,
# not the thread count, fixes the results.
FP_FLAGS = ["-std=c11", "-ffp-contract=off"]


def run(tmp_path, name, harness, sources, flags, libs=(), timeout=600):
    """Build tests/c/<harness> with src_c/<sources> and flags into
    tmp_path/name (the build must succeed), run it, and return the
    CompletedProcess (text output)."""
    exe = tmp_path / name
    cmd = [CC, *flags, f"-I{SRC}", f"-I{os.path.join(ROOT, 'normdrop', 'include')}",
           os.path.join(ROOT, "tests", "c", harness), *(os.path.join(SRC, s) for s in sources),
           "-o", str(exe), *libs]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    assert build.returncode == 0, build.stderr
    return subprocess.run([str(exe)], capture_output=True, text=True, timeout=timeout)


def digest(tmp_path, name, harness, sources, flags, libs=()):
    """The digest a harness prints, or None when it exits 77 (this processor
    cannot run the variant it was built for)."""
    res = run(tmp_path, name, harness, sources, flags, libs)
    if res.returncode == 77:
        return None
    assert res.returncode == 0, res.stderr
    return res.stdout.strip()
