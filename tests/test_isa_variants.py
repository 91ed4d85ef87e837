"""Every instruction-set variant of the dropout kernels (portable C, AVX2,
AVX-512) writes the same bytes: tests/c/dropout_variants.c is built once per
variant with a C compiler and the digests compared.  Needs the source tree and
a C compiler; skipped where either is missing (the installed-wheel run)."""
from __future__ import annotations

import c_harness

pytestmark = c_harness.NEEDS


def _digest(tmp_path, level):
    return c_harness.digest(tmp_path, f"variant{level}", "dropout_variants.c",
                            ["nd_dropout.c", "nd_common.c"],
                            ["-O2", *c_harness.FP_FLAGS, f"-DND_FORCE_ISA_LEVEL={level}"])


def test_group_bits_at_any_counter(tmp_path):
    """Each variant's keep bits of single groups, at group indices up to
    2**60 - 1 (counters with a nonzero high word), equal Philox4x32-10 computed
    block by block (tests/c/group_bits.c)."""
    run = c_harness.run(tmp_path, "group_bits", "group_bits.c", ["nd_common.c"],
                        ["-O2", *c_harness.FP_FLAGS])
    assert run.returncode == 0, run.stdout + run.stderr
    assert run.stdout.startswith("ok ")


def test_every_variant_writes_the_same_bytes(tmp_path):
    digests = {lvl: _digest(tmp_path, lvl) for lvl in (0, 1, 2)}
    ran = {lvl: d for lvl, d in digests.items() if d is not None}
    assert 0 in ran                      # the portable variant runs everywhere
    assert len(set(ran.values())) == 1, digests
