"""Newton's solve, shared by `fastopt.optim.Newton` and `fastopt.functional.newton_`: the
Hessian checks, the Cholesky solve with an identity shift for indefinite Hessians, and the
functional step.

The solve runs in `fastopt._linalg`, which links scipy's Cython LAPACK; it is imported on the
first solve, so that ``import fastopt`` does not load scipy.
"""
import warnings

import numpy as np

from . import _kernels
from ._validate import learning_rate, nonneg


def _linalg_module():
    """fastopt._linalg, imported on first use (it loads scipy.linalg)."""
    from . import _linalg
    return _linalg


class HessianShiftWarning(RuntimeWarning):
    """A Hessian was not (numerically) positive definite; a multiple of I was added."""


# ------------------------------------------------------------------------- validation + solve
def _check_hessians(params, hessians, name, offset=0):
    """Each Hessian as a (p, p) array: float, finite, symmetric. Returns the list."""
    if isinstance(hessians, np.ndarray):
        hessians = [hessians]
    if not isinstance(hessians, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (one per parameter), got "
                        f"{type(hessians).__name__}")
    if len(hessians) != len(params):
        raise ValueError(f"{name} has {len(hessians)} arrays but there are {len(params)} "
                         "parameters")
    out = []
    for i, (p, H) in enumerate(zip(params, hessians)):
        what = f"{name}[{i + offset}]"
        n = p.size
        if not isinstance(H, np.ndarray):
            raise TypeError(f"{what} must be a numpy.ndarray, got {type(H).__name__}")
        _kernels.refuse_subclass(H, what)
        if H.dtype.kind != "f" or H.dtype.itemsize not in (4, 8):
            raise TypeError(f"{what} must be a float32 or float64 array, got dtype {H.dtype}")
        if H.shape != (n, n) and H.shape != p.shape + p.shape:
            raise ValueError(f"{what} must have shape ({n}, {n}) for a parameter of shape "
                             f"{p.shape}, got {H.shape}")
        H = H.reshape(n, n)
        if not np.all(np.isfinite(H)):
            raise ValueError(f"{what} contains NaN or inf")
        scale = float(np.abs(H).max(initial=0.0))
        tol = (1e-3 if H.dtype == np.float32 else 1e-6) * scale
        if n and float(np.abs(H - H.T).max()) > tol:
            raise ValueError(f"{what} is not symmetric (max |H - H^T| = "
                             f"{float(np.abs(H - H.T).max()):.3g}); pass a Hessian")
        out.append(H)
    return out


def _check_finite(grads, name, offset=0):
    for i, g in enumerate(grads):
        if not np.all(np.isfinite(g)):
            raise ValueError(f"{name}[{i + offset}] contains NaN or inf")


def _solve(params, grads, hessians, dampings, offset=0, name="params", stacklevel=3):
    """x_i = (H_i + (damping_i + shift_i) I)^{-1} g_i in each parameter's dtype, with the
    shifts and the summed decrement g^T x; warns once per shifted Hessian."""
    xs, shifts, dec = [], [], 0.0
    for i, (p, g, H, damping) in enumerate(zip(params, grads, hessians, dampings)):
        x, shift = _linalg_module().cholesky_solve(H.astype(p.dtype, copy=False), g.reshape(-1),
                                                   damping)
        if shift > 0:
            warnings.warn(f"the Hessian of {name}[{i + offset}] is not positive definite "
                          f"(with damping {damping:g}); added {shift:.3g} * I",
                          HessianShiftWarning, stacklevel=stacklevel)
        xs.append(x.reshape(p.shape))
        shifts.append(float(shift))
        dec += float(np.dot(g.reshape(-1).astype(np.float64), x.astype(np.float64)))
    return xs, shifts, dec


def newton_step(param, grad, hessian, lr, damping):
    """The functional form (fastopt.functional.newton_)."""
    single = not isinstance(param, (list, tuple))
    params = [param] if single else list(param)
    grads = [grad] if not isinstance(grad, (list, tuple)) else list(grad)
    plan = _kernels.Plan(params, "param")
    plan.check_grads(grads, "grad")
    hessians = _check_hessians(params, hessian, "hessian")
    lr = learning_rate("lr", lr, schedule=False)
    damping = nonneg("damping", damping)
    _check_finite(grads, "grad")
    xs, shifts, _ = _solve(params, grads, hessians, [damping] * len(params), name="param",
                           stacklevel=4)
    for p, x in zip(params, xs):
        p -= (lr * x).astype(p.dtype, copy=False)
    return shifts[0] if single else shifts
