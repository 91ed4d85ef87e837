"""The group kernels (layernorm, spatial groupnorm) write the same bytes with
their float32 AVX2 loops, with the portable loops only, and without
multiversioning: tests/c/group_variants.c is built three ways with a C
compiler and the digests compared.  Needs the source tree and a C compiler;
skipped where either is missing (the installed-wheel run)."""
from __future__ import annotations

import os
import shutil
import subprocess
import sysconfig

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SRC = os.path.join(ROOT, "src_c")
HARNESS = os.path.join(ROOT, "tests", "c", "group_variants.c")
CC = (os.environ.get("CC") or sysconfig.get_config_var("CC") or "cc").split()[0]

pytestmark = [
    pytest.mark.skipif(not os.path.isdir(SRC), reason="needs the source tree (src_c/)"),
    pytest.mark.skipif(shutil.which(CC) is None, reason=f"no C compiler ({CC})"),
]


def _digest(tmp_path, name, defines):
    exe = tmp_path / name
    cmd = [CC, "-O2", "-std=c11", "-ffp-contract=off", "-fno-math-errno", *defines,
           f"-I{SRC}", f"-I{os.path.join(ROOT, 'normdrop', 'include')}", HARNESS,
           os.path.join(SRC, "nd_norm.c"), os.path.join(SRC, "nd_common.c"), "-o", str(exe),
           "-lm"]
    build = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert build.returncode == 0, build.stderr
    run = subprocess.run([str(exe)], capture_output=True, text=True, timeout=300)
    assert run.returncode == 0, run.stderr
    return run.stdout.strip()


def test_avx2_portable_and_unversioned_loops_write_the_same_bytes(tmp_path):
    digests = {name: _digest(tmp_path, name, defines) for name, defines in
               (("dispatched", []), ("portable", ["-DND_GR_PORTABLE"]),
                ("unversioned", ["-DND_NO_CLONES"]))}
    assert len(set(digests.values())) == 1, digests
