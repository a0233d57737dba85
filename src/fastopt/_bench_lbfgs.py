"""`fastopt bench`'s L-BFGS rows: the per-iteration cost of fastopt.LBFGS, closure excluded,
against its yardstick, a NumPy dot product over the parameters times the history size.

The optimizer runs on f(w) = sum(c_i w_i^2) / 2 (c from 1 to 4) with a fixed step (lr=1e-3,
no line search, tolerances 0), so every iteration stores a pair and the history stays full;
the closure writes the gradient into a buffer it owns, and its time, measured inside it, is
subtracted from the step's. The history is filled before the samples. The two-loop
recursion alone (``History.direction`` on the full history, the same threads) is timed too:
the rest of an iteration is the pair update, copies and checks. The yardstick is
``history_size`` calls of ``numpy.dot`` on n-vectors, each a different row of two
``(history_size, n)`` arrays (operands streamed from memory as the history is), and, for
reference, the same count of dots on two cache-resident n-vectors ("hot").

The recursion runs on ``LBFGS(threads=...)`` = fastopt's thread count (the threads column:
those it ran on; serial below the parallel threshold). With more than one,
the closure's BLAS is held to one thread (threadpoolctl; without it the recursion stays on
one thread), as the class docstring advises: NumPy's OpenBLAS threads keep spinning after a
call and a multi-threaded recursion, with a barrier per pass, would wait for them. The
yardstick's dots run with BLAS's own thread count, after the L-BFGS samples.
"""
import contextlib
import statistics
import time

import numpy as np

__all__ = ["run_lbfgs", "jobs", "describe", "run", "table"]


def _lbfgs_sample(n, m, dtype, iters, threads=1):
    from .optim.lbfgs import LBFGS
    w = np.ones(n, dtype)
    c = np.linspace(1.0, 4.0, n).astype(dtype)
    g = np.empty(n, dtype)
    spent = [0.0]

    def closure():
        t0 = time.perf_counter()
        np.multiply(w, c, out=g)
        loss = 0.5 * float(np.dot(w, g))
        spent[0] += time.perf_counter() - t0
        return loss, [g]
    opt = LBFGS([w], lr=1e-3, max_iter=iters, history_size=m, tolerance_grad=0.0,
                tolerance_change=0.0, threads=threads)
    opt.step(closure)                       # first step: buffers, then the history fills
    while len(opt.state[0]["old_dirs"]) < m:
        opt.step(closure)
    return opt, closure, spent


def run_lbfgs(n, m, dtype, samples=5, iters=10, threads=None):
    """Median per-iteration ms of fastopt.LBFGS (closure excluded) and of the yardsticks;
    `threads`: the recursion's (default: fastopt's thread count)."""
    from . import _bench_blas, _kernels
    dtype = np.dtype(dtype)
    threads = _kernels.get_num_threads() if threads is None else threads
    if threads > 1 and _bench_blas.available():
        limiter = lambda: _bench_blas.limit(1)        # noqa: E731 (made anew per sample)
    else:
        threads, limiter = 1, contextlib.nullcontext
    with limiter():
        opt, closure, spent = _lbfgs_sample(n, m, dtype, iters, threads)
    hist, ws = opt._hist, opt._ws           # the recursion alone, on the full history
    d, al = np.empty_like(ws.d), [None] * hist.size
    recursion = []
    for _ in range(samples):
        with limiter():
            t0 = time.perf_counter()
            hist.direction(ws.flat_grad, 1.0, d, al)
            recursion.append((time.perf_counter() - t0) * 1e3)
    a = np.random.default_rng(0).standard_normal((m, n)).astype(dtype)
    b = np.random.default_rng(1).standard_normal((m, n)).astype(dtype)
    ours, streamed, hot = [], [], []
    for _ in range(samples):        # first (the yardstick's BLAS threads would spin after it)
        spent[0] = 0.0
        before = opt.state[0]["n_iter"]
        with limiter():
            t0 = time.perf_counter()
            opt.step(closure)
            total = time.perf_counter() - t0
        done = opt.state[0]["n_iter"] - before
        ours.append((total - spent[0]) / done * 1e3)
    for _ in range(samples):
        t0 = time.perf_counter()
        for i in range(m):
            np.dot(a[i], b[i])
        streamed.append((time.perf_counter() - t0) * 1e3)
        t0 = time.perf_counter()
        for i in range(m):
            np.dot(a[0], b[0])
        hot.append((time.perf_counter() - t0) * 1e3)
    row = {"n": n, "history_size": m, "dtype": dtype.name, "threads": opt._hist.ran_on,
           "lbfgs_ms": statistics.median(ours), "dot_ms": statistics.median(streamed),
           "dot_hot_ms": statistics.median(hot), "recursion_ms": statistics.median(recursion)}
    row["ratio"] = row["lbfgs_ms"] / row["dot_ms"]
    row["ratio_recursion"] = row["recursion_ms"] / row["dot_ms"]
    row["ratio_hot"] = row["lbfgs_ms"] / row["dot_hot_ms"]
    return row


def jobs(cfg):
    return list(cfg.lbfgs_cases)


def describe(args):
    n, m, dtype = args
    return f"lbfgs N={n} m={m} {dtype}"


def run(args, cfg, kit):
    return run_lbfgs(*args, samples=cfg.samples)


def table(rows, kit):
    """The report's L-BFGS table."""
    return ("\nL-BFGS per iteration, closure excluded, vs history_size numpy.dot over the "
            "parameters (streamed rows; hot: one cached pair):\n" + kit.table(
                ["N", "m", "dtype", "threads", "lbfgs ms", "m dots ms", "ratio",
                 "recursion ms", "ratio", "m dots hot ms", "ratio hot"],
                [[r["n"], r["history_size"], r["dtype"], r.get("threads", 1),
                  f"{r['lbfgs_ms']:.3f}",
                  f"{r['dot_ms']:.3f}", f"{r['ratio']:.2f}x",
                  f"{r['recursion_ms']:.3f}" if "recursion_ms" in r else "-",
                  f"{r['ratio_recursion']:.2f}x" if "ratio_recursion" in r else "-",
                  f"{r['dot_hot_ms']:.3f}", f"{r['ratio_hot']:.2f}x"] for r in rows]))
