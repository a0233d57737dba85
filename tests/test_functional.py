"""The functional steps: same numbers as the classes, in place, clear errors naming arguments."""
import numpy as np
import pytest

import fastopt as fo
from fastopt import functional as F


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


def test_lists_of_arrays_and_each_function():
    ps = [np.ones(3), np.ones((2, 2))]
    gs = [np.ones(3), np.ones((2, 2))]
    z = lambda: [np.zeros(3), np.zeros((2, 2))]
    F.sgd_(ps, gs, lr=0.1)
    F.sgd_(ps, gs, z(), lr=0.1, momentum=0.9, step=1)
    F.adagrad_(ps, gs, z(), step=1, lr=0.1)
    F.rmsprop_(ps, gs, z(), step=1, lr=0.01)
    F.rmsprop_(ps, gs, z(), z(), z(), step=1, lr=0.01, momentum=0.9, centered=True)
    F.adam_(ps, gs, z(), z(), step=1, lr=0.01)
    F.adamw_(ps, gs, z(), z(), step=1, lr=0.01)
    F.adadelta_(ps, gs, z(), z())
    F.adamax_(ps, gs, z(), z(), step=1)
    assert all(np.all(p < 1) for p in ps)


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
