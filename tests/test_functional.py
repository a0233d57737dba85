"""The functional steps: same numbers as the classes, in place, clear errors naming arguments."""
import inspect

import numpy as np
import pytest

import fastopt as fo
from fastopt import _specs, _table
from fastopt import functional as F
from reference import ReferenceOptimizer


def test_adam_functional_equals_class():
    rng = np.random.default_rng(0)
    p1 = rng.standard_normal(100).astype(np.float32)
    p2 = p1.copy()
    m, v, vmax = (np.zeros_like(p1) for _ in range(3))
    opt = fo.Adam([p2], lr=0.01, amsgrad=True, weight_decay=0.1)
    for t in range(1, 11):
        g = rng.standard_normal(100).astype(np.float32)
        F.adam_(p1, g, m, v, step=t, lr=0.01, beta1=0.9, beta2=0.999, eps=1e-8,
                weight_decay=0.1, amsgrad=True, max_exp_avg_sq=vmax)
        opt.step([g])
    assert np.array_equal(p1, p2)
    assert np.array_equal(m, opt.state[0]["exp_avg"])


# each function on every option set of the table (cases and extra_cases): the ids
# "<optimizer>-<index>"
FUNCTION_CASES = {f"{name}-{i}": hyper for name, opt in _table.OPTIMIZERS.items()
                  for i, hyper in enumerate(opt.cases + opt.extra_cases)}


def _functional_call(name, hyper):
    """(keyword arguments of the functional form, {state argument: (state name, initial
    value)} of the buffers these options use) for the class options `hyper`."""
    opt, spec = _table.OPTIMIZERS[name], _specs.SPECS[name]
    kernel = _table.KERNELS[opt.kernel]
    group = {**spec.defaults, **hyper}
    takes = inspect.signature(getattr(F, f"{name}_")).parameters
    kw = {k: v for k, v in hyper.items() if k in takes}
    for key, expr in opt.inputs.items():            # betas -> beta1, beta2
        kw[key] = eval(expr, {}, dict(group))
    buffers = {}
    for used, state in zip(spec.uses(group), kernel.state):
        if used:
            init = state.init if state.init == _table.PARAM else \
                group[state.init] if isinstance(state.init, str) else state.init
            buffers[state.arg or state.name] = (state.name, init)
    return kw, buffers


@pytest.mark.parametrize("form", ["list", "single"])
@pytest.mark.parametrize("case", sorted(FUNCTION_CASES))
def test_lists_of_arrays_and_each_function(case, form):
    """Each functional step on a list of arrays of different shapes (and on one array) gives
    the float64 oracle's params and state after three steps."""
    name = case.rsplit("-", 1)[0]
    hyper = FUNCTION_CASES[case]
    kw, buffers = _functional_call(name, hyper)
    rng = np.random.default_rng(len(case))
    shapes = [(3,), (2, 2), (4, 1, 3)] if form == "list" else [(5, 2)]
    ps = [rng.standard_normal(s) for s in shapes]
    states = {arg: [p.copy() if init == _table.PARAM else np.full(p.shape, float(init))
                    for p in ps] for arg, (_, init) in buffers.items()}
    ref = ReferenceOptimizer(name, [dict(hyper, params=[p.copy() for p in ps])])
    fn = getattr(F, f"{name}_")
    for t in range(1, 4):
        gs = [rng.standard_normal(s) for s in shapes]
        args = {arg: states[arg] if form == "list" else states[arg][0] for arg in buffers}
        if form == "list":
            out = fn(ps, gs, step=t, **args, **kw)
        else:
            out = fn(ps[0], gs[0], step=t, **args, **kw)
        if out is not None:      # the new group-level scalars (Schedule-Free): the next input
            kw.update(out)
        ref.step(gs)
    for p, r in zip(ps, ref.params):
        np.testing.assert_allclose(p, r, rtol=1e-13, atol=1e-15)
    for arg, (state_name, _) in buffers.items():
        for mine, theirs in zip(states[arg], ref.states[0]):
            np.testing.assert_allclose(mine, theirs[state_name], rtol=1e-13, atol=1e-15,
                                       err_msg=state_name)


@pytest.mark.parametrize("call,exc,msg", [
    (lambda p, g: F.adam_(p, g, np.zeros(3), np.zeros(4), step=1, lr=0.1), ValueError,
     r"exp_avg_sq\[0\] must be a float64 array of shape \(3,\)"),
    (lambda p, g: F.adam_(p, g, np.zeros(3), np.zeros(3), step=0, lr=0.1), ValueError, "Invalid step"),
    (lambda p, g: F.adam_(p, g, np.zeros(3), np.zeros(3), step=1, lr=-1), ValueError, "lr must be"),
    (lambda p, g: F.adam_(p, g, np.zeros(3), np.zeros(3), step=1, lr=0.1, amsgrad=True),
     ValueError, "max_exp_avg_sq is required"),
    (lambda p, g: F.sgd_(p, g, lr=0.1, momentum=0.9), ValueError, "momentum_buffer is required"),
    (lambda p, g: F.sgd_(p, np.zeros(3, np.float32), lr=0.1), TypeError, r"grad\[0\] must have dtype float64"),
    (lambda p, g: F.adagrad_(p, g, [np.zeros(3), np.zeros(3)], step=1, lr=0.1), ValueError,
     "state_sum: expected 1 arrays"),
    (lambda p, g: F.adam_(p, g, p, np.zeros(3), step=1, lr=0.1), ValueError, "share memory"),
])
def test_errors_name_the_argument_and_change_nothing(call, exc, msg):
    p = np.ones(3)
    g = np.full(3, 0.5)
    with pytest.raises(exc, match=msg):
        call(p, g)
    assert np.array_equal(p, np.ones(3))
