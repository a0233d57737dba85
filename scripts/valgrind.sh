#!/usr/bin/env bash
# valgrind memcheck over a short run of every kernel (scripts/valgrind_kernels.py), on the
# regular optimized build, made in a temporary copy of the tree.
#
#   scripts/valgrind.sh
#
# PYTHONMALLOC=malloc lets memcheck see every Python allocation; leak checking is off (the
# interpreter keeps memory until exit by design); scripts/valgrind-python.supp silences the
# interpreter's and libraries' own known reports, never ones in fastopt's code. A canary first
# reads past an array through the extension and must be reported.
# Exit status: 0 when the canary was caught and the run had zero errors.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/_copy_tree.sh"
tmp="$(copy_tree)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
echo "valgrind: building in $tmp"
# FASTOPT_DEBUG_INFO=1: the same optimized code, with line numbers in the reports
FASTOPT_DEBUG_INFO=1 python setup.py build_ext --inplace -q >build.log 2>&1 || { cat build.log; exit 1; }
export PYTHONMALLOC=malloc PYTHONPATH=src
py="$(python -c 'import sys; print(sys.executable)')"     # the interpreter, not a launcher shim
# --partial-loads-ok=no: a vector load that reaches past an array's end is an error too
vg=(valgrind --tool=memcheck --leak-check=no --partial-loads-ok=no --error-exitcode=99 --num-callers=30
    --suppressions="$tmp/scripts/valgrind-python.supp")

echo "valgrind: canary (an out-of-bounds read must be reported)"
set +e
"${vg[@]}" "$py" - >canary.log 2>&1 <<'PY'
import ctypes, glob
import numpy as np
import fastopt._kernels
lib = ctypes.CDLL(glob.glob("src/fastopt/_kernels*.so")[0])
b = np.zeros(1000, np.float32); c = np.ones(999, np.float32)
lib.fo_stream_axpy_f32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                   ctypes.c_int64, ctypes.c_int]
lib.fo_stream_axpy_f32(b.ctypes.data, c.ctypes.data, 1.0, 1000, 1)    # reads c[999], one past
PY
rc=$?
set -e
if [ $rc -ne 99 ] || ! grep -q "Invalid read" canary.log; then
    tail -30 canary.log; echo "valgrind: the canary was NOT caught (rc=$rc)"; exit 1
fi
echo "valgrind: canary caught (Invalid read)"

echo "valgrind: every kernel"
set +e
"${vg[@]}" "$py" scripts/valgrind_kernels.py >run.log 2>&1
rc=$?
set -e
grep -E "valgrind_kernels:|ERROR SUMMARY" run.log
[ $rc -eq 0 ] || { grep -B2 -A25 -E "Invalid|uninitialised|Mismatched" run.log | head -80; }
[ $rc -eq 0 ] && grep -q "ERROR SUMMARY: 0 errors" run.log
