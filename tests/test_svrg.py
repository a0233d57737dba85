"""fastopt.optim.SVRG: the update against a NumPy reference, snapshots, validation, state."""
import numpy as np
import pytest

from fastopt import checkpoint
from fastopt.datasets import load_breast_cancer
from fastopt.optim import SVRG
from fastopt.problems import LogisticRegression
from fastopt.train import train


def _reference_inner_step(w, g, g_snap, mu, lr, weight_decay):
    """w - lr (g - g_snap + mu + weight_decay w), float64."""
    w = np.asarray(w, float)
    return w - lr * (np.asarray(g, float) - g_snap + mu + weight_decay * w)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-15), (np.float32, 1e-6)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
def test_inner_steps_match_reference(dtype, tol, weight_decay):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(6).astype(dtype)
    opt = SVRG([w], lr=0.3, weight_decay=weight_decay)
    mu = rng.standard_normal(6).astype(dtype)
    opt.snapshot([mu])
    snap = w.astype(float).copy()
    np.testing.assert_array_equal(opt.snapshot_params[0], w)
    expect = w.astype(float)
    for _ in range(3):
        g, gs = rng.standard_normal(6).astype(dtype), rng.standard_normal(6).astype(dtype)
        expect = _reference_inner_step(expect, g, gs.astype(float), mu.astype(float), 0.3,
                                       weight_decay)
        opt.step([g], [gs])
        np.testing.assert_allclose(w, expect, rtol=tol, atol=tol)
    np.testing.assert_array_equal(opt.snapshot_params[0], snap.astype(dtype))  # unchanged


def test_snapshot_schedule():
    w = np.zeros(2)
    opt = SVRG([w], lr=0.1, snapshot_every=2)
    assert opt.needs_snapshot and not opt.has_snapshot
    opt.snapshot([np.ones(2)])
    assert not opt.needs_snapshot
    opt.step([np.ones(2)], [np.ones(2)])
    assert not opt.needs_snapshot
    opt.step([np.ones(2)], [np.ones(2)])
    assert opt.needs_snapshot
    opt.snapshot([np.ones(2)])
    assert not opt.needs_snapshot and opt.state[0]["since_snapshot"] == 0
    assert not SVRG([np.zeros(1)], snapshot_every=None).has_snapshot


def test_groups_with_different_learning_rates():
    a, b = np.ones(2), np.ones(3)
    opt = SVRG([{"params": [a], "lr": 0.5}, {"params": [b]}], lr=0.1)
    opt.snapshot([np.ones(2), np.ones(3)])
    opt.step([np.zeros(2), np.zeros(3)], [np.zeros(2), np.zeros(3)])
    np.testing.assert_allclose(a, 0.5)
    np.testing.assert_allclose(b, 0.9)


def test_step_before_snapshot_is_an_error():
    w = np.ones(2)
    opt = SVRG([w])
    with pytest.raises(RuntimeError, match="snapshot"):
        opt.step([np.ones(2)], [np.ones(2)])
    with pytest.raises(RuntimeError, match="snapshot"):
        opt.snapshot_params
    np.testing.assert_array_equal(w, 1.0)


@pytest.mark.parametrize("args,exc,match", [
    (([np.ones(3)], [np.ones(2)]), ValueError, r"grads\[0\] must have shape \(2,\)"),
    (([np.ones(2)], [np.ones(2, np.float32)]), TypeError, r"snapshot_grads\[0\] must have dtype"),
    (([np.ones(2)], []), ValueError, "snapshot_grads has 0 arrays"),
    ((np.ones(2), "g"), TypeError, "snapshot_grads must be a list"),
])
def test_bad_steps_change_nothing(args, exc, match):
    w = np.ones(2)
    opt = SVRG([w], lr=0.1)
    opt.snapshot([np.full(2, 3.0)])
    sd = opt.state_dict()
    with pytest.raises(exc, match=match):
        opt.step(*args)
    np.testing.assert_array_equal(w, 1.0)
    after = opt.state_dict()
    assert after["state"][0]["step"] == sd["state"][0]["step"]
    np.testing.assert_array_equal(after["state"][0]["full_grad"], 3.0)


def test_bad_snapshot_changes_nothing():
    w = np.ones(2)
    opt = SVRG([w])
    with pytest.raises(ValueError, match=r"full_grads\[0\] must have shape"):
        opt.snapshot([np.ones(5)])
    assert not opt.has_snapshot and opt.state == {}


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-0.1), ValueError, "learning rate"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(snapshot_every=0), ValueError, "snapshot_every"),
    (dict(snapshot_every=1.5), TypeError, "snapshot_every"),  # a float where a count is meant
])
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        SVRG([np.ones(2)], **kwargs)


def test_state_dict_round_trip_and_checkpoint(tmp_path):
    w = np.arange(3.0)
    opt = SVRG([w], lr=0.2, snapshot_every=5)
    opt.snapshot([np.ones(3)])
    opt.step([np.ones(3)], [np.zeros(3)])
    sd = opt.state_dict()
    assert set(sd["state"][0]) == {"step", "snapshot", "full_grad", "since_snapshot"}
    other = SVRG([w.copy()], lr=0.2, snapshot_every=5)
    other.load_state_dict(sd)
    np.testing.assert_array_equal(other.snapshot_params[0], np.arange(3.0))
    assert other.state[0]["since_snapshot"] == 1
    checkpoint.save(opt, tmp_path / "svrg.npz")
    third = SVRG([w.copy()])
    checkpoint.load(third, tmp_path / "svrg.npz")
    assert third.param_groups[0]["snapshot_every"] == 5
    np.testing.assert_array_equal(third.state[0]["full_grad"], 1.0)
    # the loaded snapshot is used by the next step
    w3 = third.param_groups[0]["params"][0]
    before = w3.copy()
    third.step([np.zeros(3)], [np.zeros(3)])
    np.testing.assert_allclose(w3, before - 0.2 * 1.0)


def test_variance_reduction_on_real_data():
    """Near the snapshot the SVRG direction has far less variance than the SGD gradient."""
    X, y = load_breast_cancer(intercept=True)
    prob = LogisticRegression(X, y, l2=1e-2)
    w = prob.init()
    train(prob, SVRG([w], lr=0.1), epochs=3, batch_size=1)     # close to the optimum
    mu = prob.grad(w)
    snap = w + 1e-3 * np.random.default_rng(0).standard_normal(w.shape)
    sgd = np.array([prob.grad(snap, [i]) for i in range(prob.n_samples)])
    vr = np.array([prob.grad(snap, [i]) - prob.grad(w, [i]) + mu for i in range(prob.n_samples)])
    assert vr.var(axis=0).sum() < 1e-3 * sgd.var(axis=0).sum()
    np.testing.assert_allclose(vr.mean(axis=0), sgd.mean(axis=0), atol=1e-12)  # unbiased
