# Sourced by tools/bn_perf.sh and tools/dropout_perf.sh: the source tree they
# study -- the git revision given as the first argument, or the work tree --
# and the compiler with the flags of setup.py.  Sets ROOT, SRC, CC, CFLAGS and
# TMP (a scratch folder removed on exit) and prints the "source:" line.
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD
REV=${1:-}
CC=${CC:-gcc}
CFLAGS="-O3 -std=c11 -ffp-contract=off -fno-math-errno -fopenmp"   # as setup.py
TMP=$(mktemp -d)
trap 'rm -rf "$TMP"' EXIT

if [ -n "$REV" ]; then
    git archive "$REV" src_c normdrop/include | tar -x -C "$TMP"
    SRC=$TMP
    echo "source: $(git rev-parse --short "$REV") ($(git log -1 --format=%s "$REV" | cut -c1-60))"
else
    SRC=$ROOT
    echo "source: work tree ($(git rev-parse --short HEAD)$(git diff --quiet -- src_c || echo ', modified'))"
fi
