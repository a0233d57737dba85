"""The L-BFGS golden problem and runs, shared by tests/golden/make_lbfgs_golden.py (torch) and
tests/test_lbfgs.py (fastopt): L2-regularized multinomial logistic regression
(fastopt.problems.LogisticRegression) with its weights split into two parameter arrays, the
loss and gradient from the NumPy problem in both runs, so that only the optimizers differ."""
import numpy as np

from fastopt.problems import LogisticRegression

#: name -> LBFGS keywords (both without and with strong Wolfe; short histories wrap the ring)
CONFIGS = {
    "default": {},
    "strong_wolfe": {"line_search_fn": "strong_wolfe"},
    "short_history": {"history_size": 3, "max_iter": 7, "lr": 0.5},
    "short_history_wolfe": {"history_size": 4, "line_search_fn": "strong_wolfe",
                            "max_iter": 9, "tolerance_change": 1e-12},
    "fixed_lr": {"lr": 0.3, "max_iter": 5, "history_size": 10},
}
STEPS = 6
SPLIT = 7           # params: w[:SPLIT] and w[SPLIT:] of the flattened (K, d) weights


def data(dtype=np.float64, n=120, d=6, k=3, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, k, n)
    return X.astype(dtype), y


def problem(X, y):
    return LogisticRegression(X, y, l2=1e-2, multinomial=True, n_classes=3)


def start(prob):
    w = np.linspace(-0.3, 0.3, prob.n_params).astype(prob.dtype)
    return [w[:SPLIT].copy(), w[SPLIT:].copy()]


def loss_and_grads(prob, params):
    """(loss, [grad of params[0], grad of params[1]]) at the concatenated parameters."""
    w = np.concatenate([p.reshape(-1) for p in params]).reshape(prob.shape)
    g = prob.grad(w).reshape(-1).astype(prob.dtype)
    return float(prob.loss(w)), [g[:SPLIT].copy(), g[SPLIT:].copy()]
