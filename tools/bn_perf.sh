#!/usr/bin/env bash
# Static cost of the per-channel normalization loops (batchnorm and spatial
# batchnorm, float32) of one source tree, as GCC compiles src_c/nd_norm.c
# with the flags of setup.py: for each inner loop of the AVX2 variant's
# functions that handles at least 8 values per iteration, llvm-mca's cycles
# per iteration on each -mcpu, and per 64 values (the values from
# tools/bn_asm_loops.py --values).
#
#     tools/bn_perf.sh [REV]      REV: a git revision; default the work tree
#
# Before the per-channel ISA variants the AVX2 loops were target_clones
# (FUNC_f32.avx2); after, FUNC_f32_avx2: both spellings are tried.
# Environment: CC (gcc), MCA (llvm-mca-14 or llvm-mca), CPUS ("znver2 znver3").
# tools/bn_micro.c times the same kernels (build it against src_c/nd_norm.c
# and src_c/nd_common.c with the same flags).
set -euo pipefail
source "$(dirname "$0")/perf_source.sh" "${1:-}"   # ROOT, SRC, CC, CFLAGS, TMP
MCA=${MCA:-$(command -v llvm-mca-14 || command -v llvm-mca)}
CPUS=${CPUS:-"znver2 znver3"}
$CC $CFLAGS -I"$SRC/src_c" -I"$SRC/normdrop/include" -S "$SRC/src_c/nd_norm.c" -o "$TMP/n.s"

# function, streams of float data it reads per value (1: x; 2: dout and x)
FUNCS="nd_rows_stats_unit:1 nd_rows_affine:1 nd_rows_reduce_unit:2 nd_rows_dx:2
       nd_unit_stats:1 nd_plane_affine:1 nd_unit_dsum:2 nd_plane_dx:2"
printf '%-22s %5s %6s %7s %-8s %10s %10s\n' function loop instrs values mcpu cycles/it cycles/64
for fs in $FUNCS; do
    f=${fs%:*}; k=${fs#*:}
    fn=""
    for cand in "${f}_f32_avx2" "${f}_f32.avx2"; do
        if grep -q "^$cand:" "$TMP/n.s"; then fn=$cand; break; fi
    done
    [ -n "$fn" ] || { printf '%-22s (not found)\n' "$f"; continue; }
    # the affine and dx loops store what they compute: count their stores
    how=loads:$k
    case $f in *affine*) how=stores ;; esac
    python3 "$ROOT/tools/bn_asm_loops.py" "$TMP/n.s" "$fn" --values "$how" |
    while read -r idx _ _ n _ _ _ vals _; do
        awk -v v="$vals" 'BEGIN{exit !(v >= 8)}' || continue
        python3 "$ROOT/tools/bn_asm_loops.py" "$TMP/n.s" "$fn" "$idx" > "$TMP/l.s"
        for cpu in $CPUS; do
            c=$("$MCA" -mcpu="$cpu" -iterations=500 "$TMP/l.s" 2>/dev/null |
                awk '/Total Cycles/{print $3 / 500}')
            awk -v f="$f" -v i="$idx" -v n="$n" -v v="$vals" -v cpu="$cpu" -v c="$c" \
                'BEGIN{printf "%-22s %5d %6d %7.0f %-8s %10.2f %10.2f\n", f, i, n, v, cpu, c, c * 64 / v}'
        done
    done
done
