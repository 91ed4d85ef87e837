"""Every instruction-set variant of the per-channel normalization loops
(portable C, AVX2 with FMA, AVX-512) writes the same bytes:
tests/c/norm_variants.c is built once per variant with a C compiler and the
digests compared.  Needs the source tree and a C compiler; skipped where
either is missing (the installed-wheel run)."""
from __future__ import annotations

import c_harness

pytestmark = c_harness.NEEDS


def _digest(tmp_path, level):
    return c_harness.digest(tmp_path, f"norm{level}", "norm_variants.c",
                            ["nd_norm.c", "nd_common.c"],
                            ["-O3", *c_harness.FP_FLAGS, "-fno-math-errno",
                             f"-DND_FORCE_ISA_LEVEL={level}"], ["-lm"])


def test_every_variant_writes_the_same_bytes(tmp_path):
    digests = {lvl: _digest(tmp_path, lvl) for lvl in (0, 1, 2)}
    ran = {lvl: d for lvl, d in digests.items() if d is not None}
    assert 0 in ran                      # the portable variant runs everywhere
    assert len(set(ran.values())) == 1, digests
