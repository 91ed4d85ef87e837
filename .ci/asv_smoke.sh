#!/usr/bin/env bash
# Smoke test of the asv suite against an installed normdrop:
#   1. `asv check`: every benchmark imports and its parameters are valid;
#   2. one quick pass (each benchmark called once, nothing saved) over the
#      small shapes of every op on the C kernels and the reference backend,
#      the C kernels' chain at its smallest shape, and the CuPy skip path of
#      each benchmark once (asv starts a process per parameter combination:
#      about a second each; the large shapes run the same code, for minutes,
#      on the timing runs).
# Timings are printed for the log and never compared: this fails on errors only.
#
# usage: .ci/asv_smoke.sh PYTHON
#   PYTHON: the interpreter of a virtual environment where normdrop is installed
#   (asv is installed into it).
set -euo pipefail
PY=${1:?usage: .ci/asv_smoke.sh PYTHON}
cd "$(dirname "$0")/../asv_bench"

"$PY" -m pip install -q --disable-pip-version-check "asv>=0.6"

# asv keeps its machine description in ~/.asv-machine.json: give it a
# throwaway home, written without questions.
ASV_HOME=$(mktemp -d)
trap 'rm -rf "$ASV_HOME"' EXIT
asv() { HOME="$ASV_HOME" "$PY" -m asv "$@"; }
asv machine --yes --machine smoke >/dev/null

asv check --python=same

asv run --python=same --machine smoke --quick --dry-run --show-stderr \
    --bench "\('(cpu|reference)', '[a-z0-9]+', '[a-z_]+:(64x256|16x37|12x37|4x5x6x7|4x6x5x7|3x4x5x7):" \
    --bench "chain\..*\('cpu', '[a-z0-9]+', '4096x1024'" \
    --bench "\('cupy', 'float32', '(batchnorm:64x256|dropout:3x4x5x7):nchw'"
