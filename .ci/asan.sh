#!/usr/bin/env bash
# CI AddressSanitizer job: the C extension built with -fsanitize=address in a
# fresh venv, then the fast part of the test suite (small shapes) with the
# ASan runtime preloaded into the interpreter.  Any out-of-bounds access,
# use after free or double free in the kernels, the bindings or the output
# cache ends the test process with ASan's report, and the job fails.
#
# Linux with GCC or Clang (their libasan).  Builds the working tree as it is
# (the files git tracks or would track, modified or not).  Leak detection is
# off: CPython keeps its objects alive until exit by design.  The output
# cache is off (NORMDROP_CACHE_LIMIT=0) and Python's small-object allocator
# too (PYTHONMALLOC=malloc), so that every buffer is a malloc of its exact
# size that ASan can fence; outputs of 1 MiB or more still get the cache's
# page-rounded blocks, which is one reason the shapes stay small.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
CC=${CC:-gcc}
export CC PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME
WORK=$(mktemp -d)
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
fail() { echo "asan.sh: $*" >&2; exit 1; }

LIBASAN=$("$CC" -print-file-name=libasan.so)
[ -f "$LIBASAN" ] || fail "$CC has no libasan.so (got '$LIBASAN')"
echo "ASan runtime: $LIBASAN"

# The test files: the contract, every op's matrix and errors, on small shapes.
TESTS=(test_contract.py test_batchnorm.py test_dropout.py test_errors.py
       test_layernorm_groupnorm.py test_nonfinite.py test_tiny_eps.py test_golden.py
       test_threads_determinism.py test_float32_elementwise.py test_fuzz.py)

echo "--- source tree -> $WORK/src"
"$PY" - "$ROOT" "$WORK/src" <<'PY'
import os, shutil, subprocess, sys
root, dest = sys.argv[1:]
out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                     cwd=root, check=True, capture_output=True).stdout
for f in filter(None, out.decode().split("\0")):
    src = os.path.join(root, f)
    if os.path.isfile(src):          # (a tracked file deleted in the tree is skipped)
        os.makedirs(os.path.dirname(os.path.join(dest, f)), exist_ok=True)
        shutil.copy2(src, os.path.join(dest, f))
PY

echo "--- venv and build (-fsanitize=address)"
"$PY" -m venv "$WORK/venv"
VPY="$WORK/venv/bin/python"
"$VPY" -m pip install -q -U pip setuptools wheel Cython numpy
# Reports go to files (log_path, one per process: pytest would swallow a
# report written to the stderr of a test process that ASan ends).
ASAN_ENV=(LD_PRELOAD="$LIBASAN" PYTHONMALLOC=malloc NORMDROP_CACHE_LIMIT=0
          ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=99:detect_stack_use_after_return=1:check_initialization_order=1:log_path=$WORK/asan-report")
# The flags go into CC, so that every compile and link of the build has them,
# the OpenMP probe's test program included (CFLAGS/LDFLAGS miss its link).
# OpenMP stays on: libgomp runs under ASan, and the kernels' parallel
# regions are part of what is checked.
env CC="$CC -fsanitize=address -fno-omit-frame-pointer -g" ASAN_OPTIONS=detect_leaks=0 \
    "$VPY" -m pip install -v --no-build-isolation "$WORK/src[test]" > "$WORK/build.log" 2>&1 \
    || { tail -50 "$WORK/build.log"; fail "the build failed"; }
grep -m1 -o 'normdrop: building with OpenMP o[nf]*' "$WORK/build.log" \
    || fail "the build log does not say whether OpenMP is on"
(cd "$WORK" && env "${ASAN_ENV[@]}" "$VPY" - <<'PY'
import glob, os, subprocess
import normdrop._cpu as cpu
so = glob.glob(os.path.join(os.path.dirname(cpu.__file__), "_kernels*.so"))
assert so and "site-packages" in so[0], so
syms = subprocess.run(["nm", "-D", "--undefined-only", so[0]], check=True,
                      capture_output=True, text=True).stdout
assert "__asan_report" in syms, f"{so[0]} is not instrumented by AddressSanitizer"
print("instrumented:", so[0], "openmp:", cpu.have_openmp())
PY
) || fail "the extension is not an ASan build"

echo "--- tests under ASan: ${TESTS[*]}"
cp -r "$WORK/src/tests" "$WORK/tests"
ARGS=()
for t in "${TESTS[@]}"; do ARGS+=("tests/$t"); done
set +e
(cd "$WORK" && env "${ASAN_ENV[@]}" "$VPY" -m pytest -q -p no:cacheprovider -x "${ARGS[@]}") \
    > "$WORK/asan.log" 2>&1
rc=$?
set -e
tail -5 "$WORK/asan.log"
shopt -s nullglob
reports=("$WORK"/asan-report.*)
if [ ${#reports[@]} -gt 0 ]; then
    for r in "${reports[@]}"; do   # the error, its first frames, the buffer it hit
        echo "--- $r"
        grep -m1 -B1 -A10 'ERROR: AddressSanitizer' "$r" || head -20 "$r"
        sed -n '/is located/,/^$/p' "$r"
        grep -m1 'SUMMARY' "$r" || true
    done
    fail "AddressSanitizer reported an error (${#reports[@]} report(s))"
fi
[ "$rc" -eq 0 ] || fail "the tests failed under ASan (exit $rc)"
grep -Eq '[0-9]+ passed' "$WORK/asan.log" || fail "no test ran"
echo "asan.sh: no AddressSanitizer error"
