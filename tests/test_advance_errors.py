"""The per-step group computation of the table (``advance``: ASGD's eta and mu, NAdam's
mu_product, Schedule-Free's weights) runs before the kernel and is checked there: hyperparameters
that make it overflow, divide by zero or leave the real numbers (ASGD's
``eta = lr / (1 + lambd lr t)^alpha`` with ``1 + lambd lr t < 0`` and a fractional alpha) raise a
ValueError with parameters and state exactly as they were (before: the parameter moved, then a
TypeError; on the first step the state buffers were left behind)."""
import copy

import numpy as np
import pytest

import fastopt as fo
from fastopt import functional as F

# (hyperparameters, the step at which eta cannot be computed)
BAD = [(dict(lr=1.0, lambd=-2.0, alpha=0.5), 1),          # 1 - 2t < 0: a complex eta
       (dict(lr=1.0, lambd=-0.4, alpha=0.5), 3),          # 1 - 0.4t < 0 from t = 3
       (dict(lr=1.0, lambd=-1.0, alpha=0.5), 1),          # 0 ** 0.5 divides by zero
       (dict(lr=1.0, lambd=1.0, alpha=1e5), 1)]           # 2 ** 1e5 overflows


def snapshot(w, opt):
    return w.copy(), copy.deepcopy(opt.state_dict())


def same(a, b):
    (wa, sa), (wb, sb) = a, b
    assert wa.tobytes() == wb.tobytes()
    assert sa["state"].keys() == sb["state"].keys()
    for i, entry in sa["state"].items():
        assert entry.keys() == sb["state"][i].keys()
        for k, v in entry.items():
            assert np.array_equal(np.asarray(v), np.asarray(sb["state"][i][k])), k


@pytest.mark.parametrize("hyper,bad_step", BAD)
def test_asgd_refuses_the_step_that_cannot_compute_eta_and_changes_nothing(hyper, bad_step):
    w = np.array([1.0, -2.0, 0.5])
    opt = fo.ASGD([w], **hyper)
    for _ in range(bad_step - 1):
        opt.step([np.ones(3)])
    before = snapshot(w, opt)
    for _ in range(2):      # and again: the error does not leave a half-done step behind
        with pytest.raises(ValueError, match=r"ASGD: at step %d.*nothing was changed" % bad_step):
            opt.step([np.ones(3)])
        same(snapshot(w, opt), before)


def test_asgd_refuses_in_a_later_group_before_the_earlier_group_is_stepped():
    a, b = np.array([1.0, -2.0]), np.array([3.0])
    opt = fo.ASGD([{"params": [b]}, {"params": [a], "lambd": -2.0, "alpha": 0.5}], lr=1.0)
    before = (a.copy(), b.copy())
    with pytest.raises(ValueError, match="eta"):
        opt.step([np.ones(1), np.ones(2)])
    assert np.array_equal(a, before[0]) and np.array_equal(b, before[1])
    assert opt.state_dict()["state"] == {}


@pytest.mark.parametrize("hyper,bad_step", BAD)
def test_the_functional_asgd_raises_instead_of_returning_a_complex_eta(hyper, bad_step):
    w, ax = np.array([1.0, -2.0]), np.zeros(2)
    scalars = {}
    for step in range(1, bad_step):
        scalars = F.asgd_(w, np.ones(2), ax, step=step, **hyper, **scalars)
    before = (w.copy(), ax.copy())
    with pytest.raises(ValueError, match="ASGD"):
        F.asgd_(w, np.ones(2), ax, step=bad_step, **hyper, **scalars)
    assert np.array_equal(w, before[0]) and np.array_equal(ax, before[1])


def test_the_torch_adapter_refuses_before_any_group_is_stepped():
    torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
    import fastopt.torch as ft
    for hyper, _ in BAD[:1] + BAD[2:]:
        a = torch.tensor([1.0, -2.0], dtype=torch.float64, requires_grad=True)
        b = torch.tensor([3.0], dtype=torch.float64, requires_grad=True)
        opt = ft.ASGD([{"params": [b], "lambd": 0.0}, {"params": [a], **hyper}], lr=1.0)
        a.grad, b.grad = torch.ones_like(a), torch.ones_like(b)
        with pytest.raises(ValueError, match=r"param_groups\[1\]: ASGD: at step 1"):
            opt.step()
        assert a.tolist() == [1.0, -2.0] and b.tolist() == [3.0]
        assert len(opt.state) == 0
