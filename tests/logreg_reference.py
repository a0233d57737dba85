"""Independent float64 reference for logistic regression, written from the equations.

Plain NumPy with explicit per-class loops and dense diag() products; no code shared with
fastopt.problems (which uses log-sum-exp tricks, BLAS syrk and chunking). Suitable for small
problems with moderate margins only.
"""
import numpy as np


def binary(X, y, w, l2):
    """(loss, grad, hessian) of mean log(1 + exp(z)) - y z + l2/2 ||w||^2, z = X w."""
    X, y, w = np.asarray(X, float), np.asarray(y, float), np.asarray(w, float)
    n = len(y)
    z = X @ w
    p = 1.0 / (1.0 + np.exp(-z))
    loss = np.sum(np.log(1.0 + np.exp(z)) - y * z) / n + 0.5 * l2 * (w @ w)
    grad = X.T @ (p - y) / n + l2 * w
    hess = X.T @ np.diag(p * (1 - p)) @ X / n + l2 * np.eye(len(w))
    return loss, grad, hess


def multinomial(X, y, W, l2):
    """(loss, grad (K, d), hessian (K d, K d) class-major) of the mean softmax loss + penalty."""
    X, W = np.asarray(X, float), np.asarray(W, float)
    n, d = X.shape
    K = W.shape[0]
    Z = X @ W.T
    E = np.exp(Z)
    P = E / E.sum(axis=1, keepdims=True)
    loss = np.mean(np.log(E.sum(axis=1)) - Z[np.arange(n), y]) + 0.5 * l2 * np.sum(W * W)
    Y = np.zeros((n, K))
    Y[np.arange(n), y] = 1
    grad = (P - Y).T @ X / n + l2 * W
    hess = np.zeros((K * d, K * d))
    for k in range(K):
        for m in range(K):
            c = P[:, k] * ((1.0 if k == m else 0.0) - P[:, m])
            hess[k * d:(k + 1) * d, m * d:(m + 1) * d] = X.T @ np.diag(c) @ X / n
    hess += l2 * np.eye(K * d)
    return loss, grad, hess


def fd_grad(f, w, h=1e-6):
    """Central finite-difference gradient of a scalar function of an array."""
    w = np.array(w, dtype=float)
    g = np.zeros_like(w)
    for i in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[i] = h
        g[i] = (f(w + e) - f(w - e)) / (2 * h)
    return g


def fd_jacobian(F, w, h=1e-6):
    """Central finite-difference Jacobian (rows: outputs flattened, columns: inputs)."""
    w = np.array(w, dtype=float)
    cols = []
    for i in np.ndindex(w.shape):
        e = np.zeros_like(w)
        e[i] = h
        cols.append((np.asarray(F(w + e), float) - np.asarray(F(w - e), float)).ravel() / (2 * h))
    return np.array(cols).T
