"""Cost of ``step(grads, nonfinite="skip")``: the read-only all-finite pass before the update.

    python bench/bench_nonfinite.py [threads]  # table: Adam/SGD step, ignore vs skip, per size
    pytest bench/bench_nonfinite.py            # the same cases under pytest-benchmark

Timings are medians of interleaved repetitions (ignore, skip, check alone, in turn), so the
ratios compare runs taken under the same machine load.
"""
import sys
import time

import numpy as np

import fastopt as fo
from fastopt import _kernels

SIZES = (10_000, 100_000, 1_000_000, 10_000_000)


def setup(name, n, dtype=np.float32):
    p = np.random.default_rng(0).standard_normal(n).astype(dtype)
    g = np.random.default_rng(1).standard_normal(n).astype(dtype)
    opt = {"adam": fo.Adam, "sgd": fo.SGD}[name]([p], lr=1e-6)
    opt.step([g])                                   # allocate the state
    return opt, g


def measure(name, n, reps):
    opt, g = setup(name, n)
    plan = opt._records[0].plan
    cases = {"ignore": lambda: opt.step([g]),
             "skip": lambda: opt.step([g], nonfinite="skip"),
             "check": lambda: _kernels.all_finite(plan, [g])}
    times = {k: [] for k in cases}
    for _ in range(reps):
        for k, fn in cases.items():
            t0 = time.perf_counter()
            fn()
            times[k].append(time.perf_counter() - t0)
    return {k: float(np.median(v)) for k, v in times.items()}


def main(argv):
    if len(argv) > 1:
        fo.set_num_threads(int(argv[1]))
    print(f"threads={fo.get_num_threads()}  float32, one tensor; median of interleaved reps")
    print(f"{'opt':5} {'n':>10} {'ignore us':>10} {'skip us':>10} {'check us':>10} {'skip/ignore':>12}")
    for name in ("adam", "sgd"):
        for n in SIZES:
            reps = max(20, int(2e8 // (n * 28)))
            t = measure(name, n, min(reps, 2000))
            print(f"{name:5} {n:>10} {t['ignore'] * 1e6:>10.1f} {t['skip'] * 1e6:>10.1f} "
                  f"{t['check'] * 1e6:>10.1f} {t['skip'] / t['ignore']:>12.3f}")


# ------------------------------------------------------------------------- pytest-benchmark
try:
    import pytest

    @pytest.mark.parametrize("mode", ["ignore", "skip"])
    @pytest.mark.parametrize("n", SIZES[:3])
    def test_adam_step(benchmark, n, mode):
        opt, g = setup("adam", n)
        benchmark(opt.step, [g], nonfinite=mode)

    @pytest.mark.parametrize("n", SIZES[:3])
    def test_all_finite_alone(benchmark, n):
        opt, g = setup("adam", n)
        benchmark(_kernels.all_finite, opt._records[0].plan, [g])
except ImportError:  # pragma: no cover
    pass


if __name__ == "__main__":
    sys.exit(main(sys.argv))
