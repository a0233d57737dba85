"""L-BFGS's per-iteration cost, closure excluded, against history_size NumPy dot products.

    PYTHONPATH=src python -m pytest bench/bench_lbfgs.py --benchmark-columns=min,median,rounds
    PYTHONPATH=src python bench/bench_lbfgs.py [N [M [DTYPE]]]     # one table row, with ratio

The issue's bar: an iteration of fastopt.LBFGS (the two-loop recursion over a full history of
M pairs, the history update and the step, without the closure's own time) costs at most 2x
M numpy.dot calls over N parameters. See fastopt._bench_lbfgs for the setup (the same rows as
`fastopt bench --sections lbfgs`).
"""
import sys

import numpy as np
import pytest

from fastopt._bench_lbfgs import _lbfgs_sample, run_lbfgs

CASES = [(100_000, 100, "float64"), (100_000, 100, "float32")]


@pytest.mark.parametrize("n,m,dtype", CASES)
def test_lbfgs_iteration(benchmark, n, m, dtype):
    benchmark.group = f"lbfgs N={n} m={m} {dtype}"
    opt, closure, _ = _lbfgs_sample(n, m, np.dtype(dtype), iters=1)
    benchmark(opt.step, closure)     # one iteration (max_iter=1) with the closure's cost


@pytest.mark.parametrize("n,m,dtype", CASES)
def test_history_size_dots(benchmark, n, m, dtype):
    benchmark.group = f"lbfgs N={n} m={m} {dtype}"
    rng = np.random.default_rng(0)
    a = rng.standard_normal((m, n)).astype(dtype)
    b = rng.standard_normal((m, n)).astype(dtype)

    def dots():
        for i in range(m):
            np.dot(a[i], b[i])
    benchmark(dots)


if __name__ == "__main__":
    args = sys.argv[1:]
    n = int(float(args[0])) if args else 100_000
    m = int(args[1]) if len(args) > 1 else 100
    dtype = args[2] if len(args) > 2 else "float64"
    row = run_lbfgs(n, m, dtype, samples=9)
    print(f"N={n} m={m} {dtype}: lbfgs {row['lbfgs_ms']:.3f} ms/iteration (closure excluded), "
          f"{m} dots {row['dot_ms']:.3f} ms (hot {row['dot_hot_ms']:.3f} ms): "
          f"ratio {row['ratio']:.2f}x (vs hot {row['ratio_hot']:.2f}x)")
