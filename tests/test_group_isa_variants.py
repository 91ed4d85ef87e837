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


def test_every_pinned_variant_writes_the_same_bytes(tmp_path):
    """Builds pinned to one variant (ND_FORCE_ISA_LEVEL, as NORMDROP_ISA does):
    the default, avx2 and x86-64-v4 clones of the portable loops, which a
    dispatched build runs only on a processor of that level; each one this
    processor can run gives the dispatched build's bytes."""
    want = _digest(tmp_path, "dispatched", [])
    pinned = {lvl: c_harness.digest(tmp_path, f"pinned{lvl}", "group_variants.c",
                                    ["nd_norm.c", "nd_common.c"],
                                    ["-O2", *c_harness.FP_FLAGS, "-fno-math-errno",
                                     f"-DND_FORCE_ISA_LEVEL={lvl}"], ["-lm"])
              for lvl in (0, 1, 2)}
    assert pinned[0] is not None                  # the default variant runs everywhere
    assert {d for d in pinned.values() if d is not None} == {want}, (want, pinned)
