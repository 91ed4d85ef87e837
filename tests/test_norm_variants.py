"""Every instruction-set variant of the per-channel normalization loops
(portable C, AVX2 with FMA, AVX-512) writes the same bytes:
tests/c/norm_variants.c is built once per variant with a C compiler and the
digests compared.  Needs the source tree and a C compiler; skipped where
either is missing (the installed-wheel run)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src_c")
HARNESS = os.path.join(ROOT, "tests", "c", "norm_variants.c")
CC = os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc"
CC = CC.split()[0]

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SRC), reason="needs the source tree (src_c/)"),
    pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})"),
]


def _digest(tmp_path, level):
    exe = tmp_path / f"norm{level}"
    # the build's flags (setup.py), without OpenMP: the partition, not the
    # thread count, fixes the results
    cmd = [CC, "-O3", "-std=c11", "-ffp-contract=off", "-fno-math-errno",
           f"-DND_FORCE_ISA_LEVEL={level}", f"-I{SRC}",
           f"-I{os.path.join(ROOT, 'normdrop', 'include')}", HARNESS,
           os.path.join(SRC, "nd_norm.c"), os.path.join(SRC, "nd_common.c"), "-lm", "-o", str(exe)]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=600)
    if run.returncode == 77:
        return None
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_every_variant_writes_the_same_bytes(tmp_path):
    digests = {lvl: _digest(tmp_path, lvl) for lvl in (0, 1, 2)}
    ran = {lvl: d for lvl, d in digests.items() if d is not None}
    assert 0 in ran                      # the portable variant runs everywhere
    assert len(set(ran.values())) == 1, digests
