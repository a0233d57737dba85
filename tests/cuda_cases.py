"""Optimizer cases shared by the GPU tests and the host-logic tests of fastopt.cuda.

Each case names a binding function, its flags and the per-step scalars of step t (1-based),
computed from the hyperparameters as the optimizer classes do (bias corrections, lr decay).
Both backends get exactly the same arguments, so a parity test compares the kernels alone.
"""
import math

import numpy as np

from fastopt._table import FLAG_BITS

MAXIMIZE, NESTEROV, FIRST, SUTSKEVER, AMSGRAD, CENTERED, EPS_IN_SQRT, MOMENTUM, DECOUPLED = (
    FLAG_BITS[f] for f in ("MAXIMIZE", "NESTEROV", "FIRST", "SUTSKEVER", "AMSGRAD", "CENTERED",
                           "EPS_IN_SQRT", "MOMENTUM", "DECOUPLED"))


def _sgd(lr=0.01, momentum=0.0, dampening=0.0, wd=0.0, flags=0):
    def args(t):
        f = flags | (FIRST if (flags & MOMENTUM and not flags & SUTSKEVER and t == 1) else 0)
        return (lr, momentum, dampening, wd), f
    return "sgd", args


def _adagrad(lr=0.05, lr_decay=0.01, eps=1e-10, wd=0.0, flags=0):
    def args(t):
        return (lr / (1 + (t - 1) * lr_decay), eps, wd), flags
    return "adagrad", args


def _rmsprop(lr=0.01, alpha=0.99, eps=1e-8, wd=0.0, momentum=0.0, flags=0):
    def args(t):
        return (lr, alpha, eps, wd, momentum), flags
    return "rmsprop", args


def _adam(lr=1e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, flags=0):
    def args(t):
        decay = 1.0 - lr * wd if flags & DECOUPLED else 1.0
        return (lr / (1 - b1 ** t), b1, b2, math.sqrt(1 - b2 ** t), eps, wd, decay), flags
    return "adam", args


def _adadelta(lr=1.0, rho=0.9, eps=1e-6, wd=0.0, flags=0):
    def args(t):
        return (lr, rho, eps, wd), flags
    return "adadelta", args


def _adamax(lr=2e-3, b1=0.9, b2=0.999, eps=1e-8, wd=0.0, flags=0):
    def args(t):
        return (lr / (1 - b1 ** t), b1, b2, eps, wd), flags
    return "adamax", args


# id -> (binding name, args(t) -> (scalars, flags))
CASES = {
    "sgd": _sgd(),
    "sgd-wd-maximize": _sgd(wd=0.01, flags=MAXIMIZE),
    "sgd-momentum-dampening": _sgd(momentum=0.9, dampening=0.1, wd=0.01, flags=MOMENTUM),
    "sgd-nesterov": _sgd(momentum=0.9, flags=MOMENTUM | NESTEROV),
    "sgd-sutskever": _sgd(momentum=0.9, flags=MOMENTUM | SUTSKEVER),
    "sgd-sutskever-nesterov-maximize": _sgd(momentum=0.8,
                                            flags=MOMENTUM | SUTSKEVER | NESTEROV | MAXIMIZE),
    "adagrad": _adagrad(),
    "adagrad-eps-in-sqrt": _adagrad(eps=1e-6, flags=EPS_IN_SQRT),
    "adagrad-wd-maximize": _adagrad(wd=0.01, flags=MAXIMIZE),
    "rmsprop": _rmsprop(),
    "rmsprop-centered": _rmsprop(flags=CENTERED),
    "rmsprop-momentum": _rmsprop(momentum=0.9, flags=MOMENTUM),
    "rmsprop-centered-momentum-wd": _rmsprop(momentum=0.5, wd=0.01, flags=CENTERED | MOMENTUM),
    "rmsprop-eps-in-sqrt-maximize": _rmsprop(alpha=0.3, flags=EPS_IN_SQRT | MAXIMIZE),
    "adam": _adam(),
    "adam-amsgrad": _adam(flags=AMSGRAD),
    "adam-wd": _adam(wd=0.01),
    "adamw": _adam(lr=1e-2, wd=0.1, flags=DECOUPLED),
    "adamw-amsgrad-maximize": _adam(b1=0.3, wd=0.05, flags=DECOUPLED | AMSGRAD | MAXIMIZE),
    "adadelta": _adadelta(),
    "adadelta-wd-maximize": _adadelta(rho=0.4, wd=0.01, flags=MAXIMIZE),
    "adamax": _adamax(),
    "adamax-wd-maximize": _adamax(b1=0.2, wd=0.01, flags=MAXIMIZE),
}

# One case per optimizer, for the heavier layouts.
DEFAULT_CASES = ["sgd-momentum-dampening", "adagrad", "rmsprop-centered-momentum-wd", "adam",
                 "adadelta", "adamax"]


def state_init(case, shape, dtype, slot):
    """Initial state of a slot: zeros, except Adagrad's accumulator (initial_accumulator_value)."""
    if CASES[case][0] == "adagrad" and slot == 0:
        return np.full(shape, 0.1, dtype=dtype)
    return np.zeros(shape, dtype=dtype)


def make_problem(shapes, dtypes, steps, seed):
    """Initial params and a gradient sequence (host arrays), reproducible from the seed."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
    grads = [[rng.standard_normal(s).astype(d) for s, d in zip(shapes, dtypes)]
             for _ in range(steps)]
    return params, grads


def run_cpu(case, params, grads, dtypes):
    """Run the CPU kernels; return (params, states) as lists of host arrays."""
    from fastopt import _kernels as K
    opt, args = CASES[case]
    p = [a.copy() for a in params]
    plan = K.Plan(p)
    states = [[state_init(case, a.shape, a.dtype, k) for a in p] for k in range(3)]
    for k in range(3):
        plan.set_state(k, states[k])
    for t, g in enumerate(grads, start=1):
        scalars, flags = args(t)
        getattr(K, opt)(plan, g, *scalars, flags)
    return p, states


def run_backend(module, asarray, tohost, case, params, grads):
    """Run ``module`` (fastopt.cuda, real or on a fake CuPy); return host copies like run_cpu."""
    opt, args = CASES[case]
    p = [asarray(a) for a in params]
    plan = module.Plan(p)
    states = [[asarray(state_init(case, a.shape, a.dtype, k)) for a in params] for k in range(3)]
    for k in range(3):
        plan.set_state(k, states[k])
    dev_grads = [[asarray(a) for a in g] for g in grads]
    for t, g in enumerate(dev_grads, start=1):
        scalars, flags = args(t)
        getattr(module, opt)(plan, g, *scalars, flags)
    return [tohost(a) for a in p], [[tohost(a) for a in s] for s in states]


def rel_err(a, b):
    """max |a - b| / max |b| (0 for empty arrays); NaN where they disagree on NaN-ness."""
    a = np.asarray(a, np.float64)
    b = np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    if not np.array_equal(np.isnan(a), np.isnan(b)):
        return math.inf
    m = ~np.isnan(b)
    scale = np.max(np.abs(b[m])) if m.any() else 0.0
    diff = np.max(np.abs(a[m] - b[m])) if m.any() else 0.0
    return diff / scale if scale > 0 else diff
