"""Newton on L2-regularized logistic regression: fastopt vs scikit-learn's newton-cholesky.

    python bench/bench_newton.py                     # n=100000, d=400, side by side
    python bench/bench_newton.py --n 20000 --d 200 --repeat 5
    python bench/bench_newton.py --threads 1         # both with single-threaded BLAS
    PYTHONPATH=src python -m pytest bench/bench_newton.py --benchmark-columns=min,median,rounds

Both fit the same objective, mean log-loss + (l2/2) ||w||^2 with l2 = 1/n and no intercept
(scikit-learn: C = 1/(n l2), fit_intercept=False), from w = 0, to a max-norm gradient of at
most `tol` (1e-10): scikit-learn with its own stopping rule at tol=1e-10, fastopt with a plain
loop of ``problem.hessian`` (BLAS syrk on chunks of scaled rows) and ``fastopt.Newton`` (LAPACK
Cholesky) with an Armijo line search. The script prints the fit times (min and median over
`--repeat` interleaved runs, and the median process CPU time, which a busy machine disturbs
less), Newton iterations, the final objective and gradient of each, and
the relative distance between the two minimizers. Data: standard normal features, labels drawn
from a logistic model with weights of norm 3 (seeded).
"""
import argparse
import os
import statistics
import sys
import time
import warnings
from pathlib import Path

import numpy as np

_SRC = Path(__file__).resolve().parents[1] / "src"
if any(p.suffix in (".so", ".pyd") for p in (_SRC / "fastopt").glob("_linalg.*")):
    sys.path.insert(0, str(_SRC))        # an in-place build of this checkout

from fastopt.optim import Newton  # noqa: E402
from fastopt.problems import LogisticRegression  # noqa: E402


def make_data(n, d, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    w_true = rng.standard_normal(d)
    w_true *= 3.0 / np.linalg.norm(w_true)
    y = (rng.random(n) < 1.0 / (1.0 + np.exp(-X @ w_true))).astype(np.int64)
    return X, y


def fit_fastopt(X, y, l2, tol=1e-10, max_iter=100):
    """Newton with Armijo backtracking until max |grad| <= tol; returns (w, iterations)."""
    prob = LogisticRegression(X, y, l2=l2)
    w = prob.init()
    opt = Newton([w], line_search="armijo")
    for it in range(max_iter):
        f, g = prob.loss_grad(w)
        if np.abs(g).max() <= tol:
            return w, it
        opt.step([g], [prob.hessian(w)], closure=lambda: prob.loss(w), loss=f)
    return w, max_iter


def fit_sklearn(X, y, l2, tol=1e-10, max_iter=100):
    from sklearn.linear_model import LogisticRegression as SkLogisticRegression
    clf = SkLogisticRegression(solver="newton-cholesky", C=1.0 / (len(y) * l2),
                               fit_intercept=False, tol=tol, max_iter=max_iter)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        clf.fit(X, y)
    return clf.coef_.ravel().copy(), int(clf.n_iter_[0])


def blas_info():
    try:
        from threadpoolctl import threadpool_info
    except ImportError:
        return "threadpoolctl not installed"
    return "; ".join(f"{i.get('internal_api')} {i.get('version')} {i.get('architecture', '')} "
                     f"threads={i.get('num_threads')} ({Path(i['filepath']).name})"
                     for i in threadpool_info() if i.get("user_api") == "blas")


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=100_000)
    ap.add_argument("--d", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--tol", type=float, default=1e-10)
    ap.add_argument("--threads", type=int, default=None,
                    help="limit every BLAS library to this many threads (threadpoolctl)")
    args = ap.parse_args(argv)
    if args.threads is not None:
        from threadpoolctl import threadpool_limits
        with threadpool_limits(limits=args.threads, user_api="blas"):
            return run(args)
    return run(args)


def run(args):
    X, y = make_data(args.n, args.d)
    l2 = 1.0 / args.n
    prob = LogisticRegression(X, y, l2=l2)
    fits = {"fastopt Newton": fit_fastopt, "sklearn newton-cholesky": fit_sklearn}
    times = {k: [] for k in fits}
    cpu = {k: [] for k in fits}
    results = {}
    fit_fastopt(X[:2000], y[:2000], l2)          # warm up both (imports, BLAS threads)
    fit_sklearn(X[:2000], y[:2000], l2)
    for _ in range(args.repeat):                 # interleaved: both see the same machine load
        for name, fit in fits.items():
            t0, c0 = time.perf_counter(), time.process_time()
            results[name] = fit(X, y, l2, tol=args.tol)
            times[name].append(time.perf_counter() - t0)
            cpu[name].append(time.process_time() - c0)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else float("nan")
    print(f"logistic regression, n={args.n}, d={args.d}, l2=1/n, float64, tol={args.tol:g}, "
          f"{os.cpu_count()} CPUs, load average {load:.1f}")
    print(f"BLAS: {blas_info()}")
    print(f"{'solver':26s} {'min s':>8s} {'median s':>9s} {'cpu s':>8s} {'iters':>6s} "
          f"{'objective':>22s} {'max|grad|':>10s}")
    for name in fits:
        w, iters = results[name]
        f, g = prob.loss_grad(w)
        print(f"{name:26s} {min(times[name]):8.3f} {statistics.median(times[name]):9.3f} "
              f"{statistics.median(cpu[name]):8.3f} {iters:6d} {f:22.16f} "
              f"{np.abs(g).max():10.2e}")
    w_fo, w_sk = results["fastopt Newton"][0], results["sklearn newton-cholesky"][0]
    fo_t, sk_t = times["fastopt Newton"], times["sklearn newton-cholesky"]
    fo_c, sk_c = cpu["fastopt Newton"], cpu["sklearn newton-cholesky"]
    ratio = statistics.median(sk_t) / statistics.median(fo_t)
    print(f"relative distance of the minimizers: "
          f"{np.linalg.norm(w_fo - w_sk) / np.linalg.norm(w_sk):.2e}")
    print(f"speed-up of fastopt over scikit-learn: {ratio:.2f}x (medians), "
          f"{min(sk_t) / min(fo_t):.2f}x (minima), "
          f"{statistics.median(sk_c) / statistics.median(fo_c):.2f}x (process CPU time)")
    return ratio


# ----------------------------------------------------------------------- pytest-benchmark form
def _bench_data():
    X, y = make_data(20_000, 200, seed=1)
    return X, y, 1.0 / len(y)


def test_bench_fastopt_newton(benchmark):
    X, y, l2 = _bench_data()
    w, _ = benchmark.pedantic(lambda: fit_fastopt(X, y, l2), rounds=3, warmup_rounds=1)
    assert np.abs(LogisticRegression(X, y, l2=l2).grad(w)).max() <= 1e-10


def test_bench_sklearn_newton_cholesky(benchmark):
    import pytest
    pytest.importorskip("sklearn")
    X, y, l2 = _bench_data()
    benchmark.pedantic(lambda: fit_sklearn(X, y, l2), rounds=3, warmup_rounds=1)


if __name__ == "__main__":
    main()
