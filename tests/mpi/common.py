"""Shared by the MPI worker scripts: a softmax-regression problem, batch slicing, reporting.

Every rank draws the same global batches from one seed and takes its own contiguous 1/N of
the rows; the single-process reference uses the whole batch. The loss is the mean over the
rows, so the mean of the ranks' gradients equals the whole-batch gradient.
"""
import json
import os

import numpy as np

N_FEATURES, N_CLASSES, GLOBAL_BATCH = 10, 5, 36      # 55 float64 parameters: uneven for N = 2, 3


def batch(step, rows=GLOBAL_BATCH):
    """The global batch of a step: inputs (rows, d) float64 and integer labels."""
    rng = np.random.default_rng(1000 + step)
    x = rng.standard_normal((rows, N_FEATURES))
    y = rng.integers(0, N_CLASSES, rows)
    return x, y


def local_rows(x, rank, size):
    """This rank's contiguous share of the rows (the global batch divides evenly)."""
    n = x.shape[0] // size
    return x[rank * n:(rank + 1) * n]


def init_params():
    """W (d, k), b (k,) float64 and v (d,) float32 (a separate least-squares model)."""
    rng = np.random.default_rng(7)
    return [0.1 * rng.standard_normal((N_FEATURES, N_CLASSES)), np.zeros(N_CLASSES),
            (0.1 * rng.standard_normal(N_FEATURES)).astype(np.float32)]


def grads(params, x, y):
    """Gradients of the mean softmax cross-entropy (W, b) and of 0.5 mean (x v - 1)^2 (v)."""
    w, b, v = params
    z = x @ w + b
    z -= z.max(axis=1, keepdims=True)
    p = np.exp(z)
    p /= p.sum(axis=1, keepdims=True)
    p[np.arange(len(y)), y] -= 1.0
    p /= len(y)
    xf = x.astype(np.float32)
    r = (xf @ v - np.float32(1.0)) / np.float32(len(y))
    return [x.T @ p, p.sum(axis=0), xf.T @ r]


def rel_error(a, b):
    """max |a - b| / max |b| (0 when both are zero)."""
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    scale = np.max(np.abs(b)) if b.size else 0.0
    diff = np.max(np.abs(a - b)) if a.size else 0.0
    return float(diff / scale) if scale else float(diff)


def report(rank, **values):
    """This rank's results as JSON: in $FASTOPT_MPI_RESULTS/rank<r>.json, else on stdout.

    (Ranks share one stdout, where long lines of different ranks can interleave.)
    """
    text = json.dumps({"rank": rank, **values})
    directory = os.environ.get("FASTOPT_MPI_RESULTS")
    if not directory:
        print(text, flush=True)
        return
    with open(os.path.join(directory, f"rank{rank}.json"), "w") as f:
        f.write(text)
