"""The group kernels (layernorm, spatial groupnorm) write the same bytes with
their float32 AVX2 loops, with the portable loops only, and without
multiversioning: tests/c/group_variants.c is built three ways with a C
compiler and the digests compared.  Needs the source tree and a C compiler;
skipped where either is missing (the installed-wheel run)."""
from __future__ import annotations

import c_harness

pytestmark = c_harness.NEEDS


def _digest(tmp_path, name, defines):
    res = c_harness.run(tmp_path, name, "group_variants.c", ["nd_norm.c", "nd_common.c"],
                        ["-O2", *c_harness.FP_FLAGS, "-fno-math-errno", *defines], ["-lm"])
    assert res.returncode == 0, res.stderr    # every build runs here (no variant is skipped)
    return res.stdout.strip()


def test_avx2_portable_and_unversioned_loops_write_the_same_bytes(tmp_path):
    digests = {name: _digest(tmp_path, name, defines) for name, defines in
               (("dispatched", []), ("portable", ["-DND_GR_PORTABLE"]),
                ("unversioned", ["-DND_NO_CLONES"]))}
    assert len(set(digests.values())) == 1, digests
