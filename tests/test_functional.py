"""The functional steps: same numbers as the classes, in place, clear errors naming arguments."""
import numpy as np
import pytest

import fastopt as fo
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


# each function: its state buffers (positional, in the registry's order) and hyperparameters
# with every option that changes the arithmetic turned on somewhere
FUNCTION_CASES = {
    "sgd": (["momentum_buffer"], dict(lr=0.1, momentum=0.9, dampening=0.1, weight_decay=0.01)),
    "sgd_nesterov": (["momentum_buffer"], dict(lr=0.1, momentum=0.9, nesterov=True, maximize=True)),
    "sgd_sutskever": (["momentum_buffer"], dict(lr=0.1, momentum=0.9, sutskever=True)),
    "adagrad": (["sum"], dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, eps=1e-3)),
    "rmsprop": (["square_avg", "momentum_buffer", "grad_avg"],
                dict(lr=0.01, alpha=0.9, momentum=0.9, centered=True, weight_decay=0.01)),
    "adam": (["exp_avg", "exp_avg_sq"], dict(lr=0.01, beta1=0.8, beta2=0.99, weight_decay=0.01)),
    "adamw": (["exp_avg", "exp_avg_sq"], dict(lr=0.01, weight_decay=0.1)),
    "adadelta": (["square_avg", "acc_delta"], dict(lr=1.0, rho=0.8, weight_decay=0.01)),
    "adamax": (["exp_avg", "exp_inf"], dict(lr=0.01, beta1=0.8, beta2=0.9, maximize=True)),
}


@pytest.mark.parametrize("form", ["list", "single"])
@pytest.mark.parametrize("case", sorted(FUNCTION_CASES))
def test_lists_of_arrays_and_each_function(case, form):
    """Each functional step on a list of arrays of different shapes (and on one array) gives
    the float64 oracle's params and state after three steps."""
    name = case.split("_")[0]
    buffers, kw = FUNCTION_CASES[case]
    rng = np.random.default_rng(len(case))
    shapes = [(3,), (2, 2), (4, 1, 3)] if form == "list" else [(5, 2)]
    ps = [rng.standard_normal(s) for s in shapes]
    states = {b: [np.zeros(s) for s in shapes] for b in buffers}
    hyper = {k: v for k, v in kw.items() if k not in ("beta1", "beta2")}
    if "beta1" in kw:
        hyper["betas"] = (kw["beta1"], kw["beta2"])
    ref = ReferenceOptimizer(name, [dict(hyper, params=[p.copy() for p in ps])])
    fn = getattr(F, f"{name}_")
    for t in range(1, 4):
        gs = [rng.standard_normal(s) for s in shapes]
        args = [ps, gs] + [states[b] for b in buffers]
        if form == "single":
            args = [a[0] for a in args]
        fn(*args, step=t, **kw)
        ref.step(gs)
    for p, r in zip(ps, ref.params):
        np.testing.assert_allclose(p, r, rtol=1e-13, atol=1e-15)
    for b in buffers:
        for mine, theirs in zip(states[b], ref.states[0]):
            np.testing.assert_allclose(mine, theirs[b], rtol=1e-13, atol=1e-15, err_msg=b)


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
