#!/usr/bin/env bash
# Static and dynamic cost of the dropout loops of one source tree, per group of
# 64 values:
#   1. llvm-mca: the hot path of each range function's group loop (as GCC
#      compiles src_c/nd_dropout.c with the flags of setup.py), extracted from
#      the -S assembly by tools/asm_hot_loop.py, in cycles per iteration
#      (= per 64 values; "RThr" is llvm-mca's resource bound) for the AVX2
#      loops on znver2, znver3, icelake-server and sapphirerapids, and the
#      AVX-512 loops on icelake-server and sapphirerapids;
#   2. callgrind: instructions per 64 values of each loop of each variant this
#      processor runs (valgrind has no AVX-512);
#   3. with TIME=1, tools/dropout_micro.c's single-thread timings (data in L2).
#
#     tools/dropout_perf.sh [REV]      REV: a git revision; default the work tree
#
# Environment: CC (gcc), MCA (llvm-mca-14 or llvm-mca), NGROUPS (callgrind's
# groups per loop, 4096), TIME (0).
set -euo pipefail
source "$(dirname "$0")/perf_source.sh" "${1:-}"   # ROOT, SRC, CC, CFLAGS, TMP
MCA=${MCA:-$(command -v llvm-mca-14 || command -v llvm-mca || true)}
NGROUPS=${NGROUPS:-4096}
echo "machine: $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | sed 's/^ //'), $(nproc) cpus, $($CC --version | head -1)"
INC="-I$SRC/src_c -I$SRC/normdrop/include"

$CC $CFLAGS $INC -S "$SRC/src_c/nd_dropout.c" -o "$TMP/nd_dropout.s"
$CC $CFLAGS $INC "$ROOT/tools/dropout_micro.c" "$SRC/src_c/nd_common.c" -o "$TMP/micro"

if [ -n "$MCA" ]; then
    echo
    echo "llvm-mca: cycles per 64 values (one iteration of the group loop's hot path), 500 iterations"
    printf '  %-28s %-15s %6s %8s %7s\n' loop mcpu instrs cycles RThr
    mca() {   # function, cpus...
        local f=$1; shift
        python3 "$ROOT/tools/asm_hot_loop.py" "$TMP/nd_dropout.s" "$f" > "$TMP/$f.s" 2>/dev/null || {
            printf '  %-28s (no loop found)\n' "$f"; return; }
        local n; n=$(grep -c . "$TMP/$f.s")
        for cpu in "$@"; do
            "$MCA" -mcpu="$cpu" -iterations=500 "$TMP/$f.s" 2>/dev/null |
                awk -v f="$f" -v c="$cpu" -v n="$n" '/Total Cycles/{t=$3/500} /Block RThroughput/{r=$3}
                    END{printf "  %-28s %-15s %6d %8.1f %7.1f\n", f, c, n, t, r}'
        done
    }
    for f in nd_fwd_range_nt_f32_avx2 nd_fwd_range_nt_f64_avx2 nd_fwd_range_f32_avx2 nd_fwd_range_f64_avx2; do
        mca "$f" znver2 znver3 icelake-server sapphirerapids
    done
    for f in nd_fwd_range_nt_f32_avx512 nd_fwd_range_nt_f64_avx512; do
        mca "$f" icelake-server sapphirerapids
    done
fi

if command -v valgrind > /dev/null; then
    echo
    echo "callgrind: instructions per 64 values ($NGROUPS groups of each loop, p = 0.5)"
    printf '  %-11s %-8s %10s\n' loop variant Ir/64
    for v in generic avx2; do
        for l in fwd_nt_f32 fwd_nt_f64 fwd_f32 bits bwd_f32; do
            case $l in
                fwd_nt_f32) f=nd_fwd_range_nt_f32 ;; fwd_nt_f64) f=nd_fwd_range_nt_f64 ;;
                fwd_f32) f=nd_fwd_range_f32 ;; bits) f=nd_bits_range ;; bwd_f32) f=nd_bwd_range_f32 ;;
            esac
            valgrind --tool=callgrind --callgrind-out-file="$TMP/cg.out" --toggle-collect="${f}_$v" \
                "$TMP/micro" once "$l" "$v" "$NGROUPS" > /dev/null 2>&1 || continue
            awk -v l="$l" -v v="$v" -v g="$NGROUPS" '/^(summary|totals):/{printf "  %-11s %-8s %10.1f\n", l, v, $2/g; exit}' "$TMP/cg.out"
        done
    done
fi

if [ "${TIME:-0}" = 1 ]; then
    echo
    "$TMP/micro" time 256 21
fi
