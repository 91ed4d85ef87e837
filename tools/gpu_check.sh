#!/usr/bin/env bash
# The whole GPU check of the CUDA backend, as one script for a machine with a
# GPU, CuPy, PyTorch (CUDA), numpy, Cython, setuptools, pytest and hypothesis
# but no network.  Run it from the repository root:
#
#     OUT=<folder for the logs> bash tools/gpu_check.sh
#
# Before, in the checkout the machine receives, put the two pure-Python
# wheels it lacks in .whl/ (and carry that folder along):
#
#     python3 -m pip download --no-deps --only-binary=:all: -d .whl \
#         array-api-compat==1.16.0 array-api-strict==2.6.1
#
# Steps, most important first.  Each is bounded by `timeout` and by what is
# left of BUDGET seconds (default 540) for the whole script; a step that
# fails does not stop the later ones, a step with no time left is skipped;
# the exit status is that of the first failure:
#   env.log           nvidia-smi, versions, cupy.show_config()
#   build.log         pip install -e . (the C extension, for this Python)
#   info.log          python -m normdrop info
#   sanity.log        every CUDA op once on small shapes, checked
#   pytest_cuda.log   tests/test_cuda.py, verbose
#   pytest.log        the rest of the test matrix (cupy entry included)
#   bench.log/.json   tools/gpu_bench.py: normdrop vs torch vs D2D copy
#   memcheck.log      sanity under compute-sanitizer memcheck   (if found)
#   racecheck.log     sanity under compute-sanitizer racecheck  (if found)
#   summary.log       one line per step: status and seconds
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:?set OUT to a folder for the logs}
mkdir -p "$OUT"
PY=${PYTHON:-python3}
export PYTHONUNBUFFERED=1 PYTHONDONTWRITEBYTECODE=1
SITE=${SITE:-/tmp/normdrop-site}
BUDGET=${BUDGET:-540}
FIRST_FAIL=0
T0=$(date +%s)

step() {   # step NAME SECONDS LOG CMD...  (stdout+stderr to $OUT/LOG and the console)
    local name=$1 limit=$2 log=$3 t rc left
    shift 3
    t=$(date +%s)
    left=$(( BUDGET - (t - T0) - 15 ))
    if [ "$left" -lt 20 ]; then
        echo "$name: skipped, no time left" | tee -a "$OUT/summary.log"
        return 0
    fi
    [ "$limit" -gt "$left" ] && limit=$left
    echo "=== $name" | tee -a "$OUT/$log"
    timeout --kill-after=10 "$limit" "$@" >>"$OUT/$log" 2>&1
    rc=$?
    tail -n 25 "$OUT/$log"
    printf '%-12s rc=%-3s %4ss  (at %ss)\n' "$name" "$rc" "$(( $(date +%s) - t ))" \
        "$(( $(date +%s) - T0 ))" | tee -a "$OUT/summary.log"
    if [ "$rc" -ne 0 ] && [ "$FIRST_FAIL" -eq 0 ]; then FIRST_FAIL=$rc; fi
    return 0
}

{
    date -u
    nvidia-smi 2>&1 || true
    "$PY" -c "import sys, numpy, cupy, torch; print(sys.version); print('numpy', numpy.__version__, 'cupy', cupy.__version__, 'torch', torch.__version__, torch.version.cuda)"
    "$PY" -c "import cupy; cupy.show_config()"
} >"$OUT/env.log" 2>&1

if ls .whl/*.whl >/dev/null 2>&1; then
    "$PY" -m pip install -q --no-index --no-deps --target "$SITE" .whl/*.whl >"$OUT/wheels.log" 2>&1
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    echo "no .whl/*.whl: array-api-compat and array-api-strict must already be installed" \
        | tee "$OUT/wheels.log"
fi

step build 240 build.log "$PY" -m pip install -q --no-build-isolation --no-deps -e .
step info 60 info.log "$PY" -m normdrop info
step sanity 120 sanity.log "$PY" tools/gpu_bench.py --sanity
step pytest_cuda 180 pytest_cuda.log "$PY" -m pytest -v -rs -p no:cacheprovider tests/test_cuda.py
step pytest 240 pytest.log "$PY" -m pytest -q -rs -p no:cacheprovider --durations=10 tests \
    --ignore=tests/test_cuda.py
step bench 180 bench.log "$PY" tools/gpu_bench.py --json "$OUT/bench.json"
CS=$(command -v compute-sanitizer || ls /usr/local/cuda*/bin/compute-sanitizer 2>/dev/null | head -n 1)
if [ -n "$CS" ]; then
    step memcheck 120 memcheck.log "$CS" --tool memcheck --error-exitcode 3 \
        "$PY" tools/gpu_bench.py --sanity
    step racecheck 120 racecheck.log "$CS" --tool racecheck --error-exitcode 3 \
        "$PY" tools/gpu_bench.py --sanity
else
    echo "compute-sanitizer not found: memcheck/racecheck skipped" | tee -a "$OUT/summary.log"
fi

echo "total $(( $(date +%s) - T0 ))s; first failure rc=$FIRST_FAIL" | tee -a "$OUT/summary.log"
exit "$FIRST_FAIL"
