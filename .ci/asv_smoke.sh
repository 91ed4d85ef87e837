#!/usr/bin/env bash
# Smoke test of the asv suite against an installed normdrop:
#   1. `asv check`: every benchmark imports and its parameters are valid;
#   2. one quick pass (each benchmark called once, nothing saved) over the C
#      kernels, the small shapes of the reference backend and the CuPy skip path.
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
    --bench "\('cpu'" \
    --bench "\('reference', '[a-z0-9]+', '[a-z_]+:(64x256|16x37|4x5x6x7|3x4x5x7):" \
    --bench "\('cupy'"
