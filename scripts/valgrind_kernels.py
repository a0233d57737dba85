"""A short run of every kernel, for valgrind memcheck (scripts/valgrind.sh).

Every optimizer and option case of tests/cases.py, float32 and float64, sizes around the SIMD
and thread boundaries, mixed-type groups, serial and parallel (threshold lowered so the split
runs on small arrays); the all-finite check; the bandwidth kernel; the overlap checks.
"""
import sys

import numpy as np

sys.path.insert(0, "tests")
import fastopt as fo  # noqa: E402
from fastopt import _kernels  # noqa: E402
from fastopt._specs import SPECS  # noqa: E402
from cases import CASES, EXTRA_CASES  # noqa: E402

SIZES = (0, 1, 3, 16, 17, 33, 1000)


def main():
    rng = np.random.default_rng(0)
    calls = 0
    for threads, threshold in ((1, 32768), (2, 16)):
        fo.set_num_threads(threads)
        _kernels.set_parallel_threshold(threshold)
        for name, spec in SPECS.items():
            cls = getattr(fo, spec.class_name)
            for hyper in CASES[name] + EXTRA_CASES.get(name, []):
                params = [rng.standard_normal(n).astype(dt) for n in SIZES
                          for dt in (np.float32, np.float64)]
                opt = cls([{"params": params[:7]}, {"params": params[7:]}], **hyper)
                for step in range(3):
                    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
                    opt.step(grads, nonfinite=("ignore", "skip", "raise")[step])
                    calls += 1
                grads[5][-1] = np.nan
                assert opt.step(grads, nonfinite="skip") is False
                assert all(np.isfinite(p).all() for p in params)
        for dt in (np.float32, np.float64):
            b, c = np.zeros(1001, dt), np.ones(1001, dt)
            _kernels.stream_axpy(b, c, 0.5)
            assert (b == 0.5).all()
    fo.set_num_threads(0)
    print(f"valgrind_kernels: {calls} optimizer steps over {len(SPECS)} optimizers, ok")


if __name__ == "__main__":
    main()
