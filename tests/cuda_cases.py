"""Optimizer cases shared by the GPU tests and the host-logic tests of fastopt.cuda.

Each case names a binding function, its flags and the per-step scalars of step t (1-based),
computed from the hyperparameters by the optimizer table's expressions (fastopt._steps), as the
optimizer classes do (bias corrections, lr decay).
Both backends get exactly the same arguments, so a parity test compares the kernels alone.
"""
import math

import numpy as np

from fastopt import _specs, _steps, _table


def _case(name, hyper):
    """(binding name, args(t) -> (scalars, flags)) of optimizer `name` with options `hyper`."""
    opt = _table.OPTIMIZERS[name]
    spec = _specs.SPECS[name]
    group = {**spec.defaults, **spec.group_state, **hyper}
    needs_state = any(spec.uses(group))

    def args(t):
        g = dict(group)
        for _ in range(1, t):     # the group-level state of step t (Schedule-Free's k, ...)
            g.update({key: value for key, value in _steps.advance(opt, g, g["lr"]).items()
                      if key in spec.group_state})
        scalars, flags = _steps.hp_values(name, g, t, g["lr"], first=t == 1 and needs_state)
        return scalars, flags
    args.group = group
    return opt.kernel, args


# id -> (binding name, args(t) -> (scalars, flags)): every option set of the table's entries
# (``cases`` then ``extra_cases``), as "<optimizer>-<index>"
CASES = {f"{name}-{i}": _case(name, hyper)
         for name, opt in _table.OPTIMIZERS.items()
         for i, hyper in enumerate(opt.cases + opt.extra_cases)}

# One case per optimizer, for the heavier layouts: its last torch-comparable option set.
DEFAULT_CASES = [f"{name}-{len(opt.cases) - 1}" for name, opt in _table.OPTIMIZERS.items()]


def state_init(case, shape, dtype, slot, param=None):
    """Initial state of a slot, as the table gives it (a number, a hyperparameter's value, or
    a copy of the parameter `param`)."""
    kernel, args = CASES[case]
    state = _table.KERNELS[kernel].state
    init = state[slot].init if slot < len(state) else 0
    if init == _table.PARAM:
        return np.array(param, dtype=dtype, copy=True)
    value = args.group[init] if isinstance(init, str) else init
    return np.full(shape, value, dtype=dtype)


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
    states = [[state_init(case, a.shape, a.dtype, k, a) for a in p] for k in range(3)]
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
    states = [[asarray(state_init(case, a.shape, a.dtype, k, a)) for a in params]
              for k in range(3)]
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
