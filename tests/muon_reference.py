"""The independent oracle for Muon: torch.optim.Muon's step in plain NumPy, from its code.

Written from torch's ``_single_tensor_muon`` and ``_zeropower_via_newtonschulz`` (torch 2.13),
never derived from fastopt._muon. ``ns_dtype="float64"``: every operation in float64.
``ns_dtype="float32"``: the iteration in float32 (NumPy's matmul). ``ns_dtype=None``: torch's
bfloat16 iteration, each bfloat16 tensor as float32 values rounded by ml_dtypes' bfloat16
(ties to even), products and sums in float32 (NumPy's BLAS), as torch's CPU bfloat16 matmul.
"""
import math

import numpy as np

DEFAULTS = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
                adjust_lr_fn=None, ns_dtype=None)


def _bf16(x):
    import ml_dtypes
    return np.asarray(x, np.float32).astype(ml_dtypes.bfloat16).astype(np.float32)


def lerp(start, end, w):
    """torch.lerp (start + w (end - start) for w < 0.5, else end - (end - start)(1 - w))."""
    return start + w * (end - start) if w < 0.5 else end - (end - start) * (1 - w)


def newton_schulz(U, coefficients, steps, eps, ns_dtype):
    a, b, c = coefficients
    if ns_dtype is None:
        X, r = _bf16(U.astype(np.float32)), _bf16
    else:
        dt = np.float64 if ns_dtype == "float64" else np.float32
        X, r = U.astype(dt), (lambda v: v)
    transposed = U.shape[0] > U.shape[1]
    if transposed:
        X = X.T
    nrm = r(np.float32(np.sqrt(np.sum(X.astype(np.float64) ** 2)))) if ns_dtype != "float64" \
        else np.sqrt(np.sum(X ** 2))
    e = r(np.float32(eps)) if ns_dtype != "float64" else eps
    X = r(X / max(nrm, e))
    for _ in range(steps):
        A = r(X @ X.T)
        B = r(b * A + c * (A @ A))
        X = r(a * X + B @ X)
    return X.T if transposed else X


def adjusted_lr(lr, fn, shape):
    A, B = shape
    if fn in (None, "original"):
        return lr * math.sqrt(max(1, A / B))
    return lr * 0.2 * math.sqrt(max(A, B))


def muon_step(p, g, state, h, lr=None):
    """One step of one 2-D parameter: returns the new parameter, updates `state`
    (``momentum_buffer``) in place; float64 throughout except the iteration's dtype."""
    h = {**DEFAULTS, **h}
    lr = h["lr"] if lr is None else lr
    mu = h["momentum"]
    buf = lerp(state.get("momentum_buffer", np.zeros_like(p)), g, 1 - mu)
    state["momentum_buffer"] = buf
    u = lerp(g, buf, mu) if h["nesterov"] else buf
    O = newton_schulz(u, h["ns_coefficients"], h["ns_steps"], h["eps"], h["ns_dtype"])
    p = p * (1 - lr * h["weight_decay"])
    return p - adjusted_lr(lr, h["adjust_lr_fn"], p.shape) * O.astype(np.float64)
