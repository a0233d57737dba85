#!/usr/bin/env bash
# Build fastopt with AddressSanitizer + UndefinedBehaviorSanitizer in a temporary copy of the
# tree (FASTOPT_SANITIZE=address, see setup.py) and run the test suite under it.
#
#   scripts/sanitize.sh [pytest args]      e.g. scripts/sanitize.sh -x -k fuzz
#
# CPython itself is not instrumented, so the ASan runtime is preloaded (LD_PRELOAD), Python's
# small-object allocator is bypassed (PYTHONMALLOC=malloc) so every buffer gets redzones, and
# leak detection is off (the interpreter keeps memory until exit by design). UBSan reports abort
# (-fno-sanitize-recover). First a canary writes one element past an array through the
# instrumented extension and must be caught, which shows the instrumentation is live.
# Exit status: 0 when the canary was caught and the suite ran clean.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
source "$here/_copy_tree.sh"
tmp="$(copy_tree)"
trap 'rm -rf "$tmp"' EXIT
cd "$tmp"
echo "sanitize: building in $tmp"
# FASTOPT_TEST_API=1: with fastopt._testing, so the conversion tests run instrumented too
FASTOPT_SANITIZE=address FASTOPT_TEST_API=1 python setup.py build_ext --inplace -q >build.log 2>&1 \
    || { cat build.log; exit 1; }

so="$(ls src/fastopt/_kernels*.so)"
syms="$(nm -D "$so")"       # (not piped into grep -q: pipefail would see nm's SIGPIPE)
grep -q "__asan_report" <<<"$syms" || { echo "sanitize: $so has no ASan instrumentation"; exit 1; }
grep -q "__ubsan_handle" <<<"$syms" || { echo "sanitize: $so has no UBSan instrumentation"; exit 1; }
libasan="$(${CC:-gcc} -print-file-name=libasan.so)"
[ -f "$libasan" ] || { echo "sanitize: libasan.so not found ($libasan)"; exit 1; }
# libstdc++ right after the runtime: C++ extensions loaded later (matplotlib's ft2font) throw
# through ASan's __cxa_throw interceptor, which needs the real one resolved at start-up
libstdcxx="$(${CC:-gcc} -print-file-name=libstdc++.so)"
export LD_PRELOAD="$libasan${libstdcxx:+ $libstdcxx}"
# reports also go to files: pytest captures stderr and loses it when a report ends the process
export ASAN_OPTIONS="detect_leaks=0:halt_on_error=1:abort_on_error=0:exitcode=86:allocator_may_return_null=1:log_path=$tmp/asan"
export UBSAN_OPTIONS="print_stacktrace=1:halt_on_error=1:exitcode=87:log_path=$tmp/ubsan"
export PYTHONMALLOC=malloc
export PYTHONPATH="src:tests"

echo "sanitize: canary (an out-of-bounds write must be reported)"
set +e
python - >canary.log 2>&1 <<'PY'
import ctypes, glob
import numpy as np
import fastopt._kernels as K
lib = ctypes.CDLL(glob.glob("src/fastopt/_kernels*.so")[0])
b = np.zeros(1000, np.float32); c = np.ones(1001, np.float32)
lib.fo_stream_axpy_f32.argtypes = [ctypes.c_void_p, ctypes.c_void_p, ctypes.c_float,
                                   ctypes.c_int64, ctypes.c_int]
lib.fo_stream_axpy_f32(b.ctypes.data, c.ctypes.data, 1.0, 1001, 1)   # one past b's end
print("canary not caught")
PY
rc=$?
set -e
if [ $rc -ne 86 ] || ! cat canary.log asan.* 2>/dev/null | grep -q "heap-buffer-overflow"; then
    cat canary.log; echo "sanitize: the canary was NOT caught (rc=$rc): instrumentation inactive"; exit 1
fi
echo "sanitize: canary caught (heap-buffer-overflow)"
rm -f asan.* ubsan.*

echo "sanitize: test suite under ASan+UBSan"
set +e
# the nvcc compile test runs the CUDA compiler, which inherits LD_PRELOAD and crashes under it
python -m pytest tests -q -p no:cacheprovider \
    --deselect tests/test_cuda_source.py::test_generated_source_compiles_with_nvcc "$@" 2>&1 | tee suite.log
rc=${PIPESTATUS[0]}
set -e
reports=$(cat suite.log asan.* ubsan.* 2>/dev/null | grep -cE "ERROR: AddressSanitizer|runtime error:" || true)
for f in asan.* ubsan.*; do [ -f "$f" ] && { echo "--- $f"; head -60 "$f"; }; done
echo "sanitize: pytest exit status $rc, sanitizer reports: $reports"
[ "$rc" -eq 0 ] && [ "$reports" -eq 0 ]
