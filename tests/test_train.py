"""fastopt.train: the loop against hand-written loops, accounting, stopping, progress."""
import sys

import numpy as np
import pytest

import fastopt as fo
from fastopt.optim import SVRG, Newton
from fastopt.problems import LogisticRegression, Quadratic, Rosenbrock
from fastopt.train import History, train


def _problem(n=30, d=4, K=2, l2=0.1, seed=0):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, K, n)
    return LogisticRegression(X, y, l2=l2)


def test_full_batch_is_gradient_descent():
    prob = _problem()
    w = prob.init()
    hist = train(prob, fo.SGD([w], lr=0.5), epochs=7)
    v = prob.init()
    losses = [prob.loss(v)]
    for _ in range(7):
        v = v - 0.5 * prob.grad(v)
        losses.append(prob.loss(v))
    np.testing.assert_allclose(w, v, rtol=1e-14, atol=1e-15)
    np.testing.assert_allclose(hist.loss, losses, rtol=1e-14)
    assert hist.step.tolist() == list(range(8))
    assert hist.grad_evals.tolist() == [30 * k for k in range(8)]
    assert hist.stop_reason == "epochs" and not hist.converged
    np.testing.assert_array_equal(hist.w, w)
    assert np.all(np.diff(hist.time) >= 0)


def test_batch_one_without_shuffling_is_sgd_in_order():
    prob = _problem(n=12)
    w = prob.init()
    hist = train(prob, fo.SGD([w], lr=0.1), epochs=2, batch_size=1, shuffle=False,
                 record_every=5)
    v = prob.init()
    for _ in range(2):
        for i in range(12):
            v = v - 0.1 * prob.grad(v, [i])
    np.testing.assert_allclose(w, v, rtol=1e-14, atol=1e-15)
    assert hist.step.tolist() == [0, 5, 10, 15, 20, 24]
    assert hist.grad_evals[-1] == 24
    np.testing.assert_allclose(hist.epoch, hist.step / 12)


def test_shuffled_minibatches_visit_every_sample_once_per_epoch():
    prob = _problem(n=10)
    seen = []

    class Spy:
        n_samples, shape, n_params = prob.n_samples, prob.shape, prob.n_params

        def loss(self, w, idx=None):
            return prob.loss(w, idx)

        def grad(self, w, idx=None):
            if idx is not None:
                seen.append(np.asarray(idx))
            return prob.grad(w, idx)

    train(Spy(), fo.SGD([prob.init()], lr=0.1), epochs=2, batch_size=4, seed=3)
    assert [len(s) for s in seen] == [4, 4, 2, 4, 4, 2]
    for epoch in (seen[:3], seen[3:]):
        assert sorted(np.concatenate(epoch).tolist()) == list(range(10))
    assert not np.array_equal(np.concatenate(seen[:3]), np.arange(10))


def test_seed_makes_runs_reproducible():
    prob = _problem()
    runs = []
    for _ in range(2):
        w = prob.init()
        runs.append(train(prob, fo.Adam([w], lr=0.05), epochs=3, batch_size=4, seed=11).loss)
    np.testing.assert_array_equal(runs[0], runs[1])


def test_svrg_accounting():
    prob = _problem(n=20)
    w = prob.init()
    hist = train(prob, SVRG([w], lr=0.1), epochs=2, batch_size=5, record_every=1)
    # per epoch: one snapshot (n) + 4 inner steps of 2 x 5 sample-gradients
    assert hist.grad_evals[-1] == 2 * (20 + 4 * 10)
    assert hist.grad_evals[1] == 20 + 10


def test_svrg_respects_its_own_snapshot_every():
    prob = _problem(n=20)
    w = prob.init()
    hist = train(prob, SVRG([w], lr=0.1, snapshot_every=2), epochs=1, batch_size=5)
    assert hist.grad_evals[-1] == 2 * 20 + 4 * 10


def test_newton_accounting_and_line_search_evaluations():
    prob = _problem(n=25)
    w = prob.init()
    hist = train(prob, Newton([w], line_search="armijo"), epochs=3)
    assert hist.grad_evals.tolist() == [0, 25, 50, 75]
    assert hist.hess_evals.tolist() == [0, 25, 50, 75]
    assert np.all(np.diff(hist.loss_evals) >= 25)


@pytest.mark.parametrize("stop,kwargs", [
    ("gtol", dict(gtol=1e-8)),
    ("ftol", dict(ftol=1e-10, f_star=None)),
    ("max_evals", dict(max_evals=45)),
    ("callback", dict(callback=lambda rec: rec["step"] >= 3)),
])
def test_stopping_rules(stop, kwargs):
    prob = _problem()
    if "f_star" in kwargs:
        w = prob.init()
        train(prob, Newton([w]), epochs=30, gtol=1e-14)
        kwargs["f_star"] = prob.loss(w)
    w = prob.init()
    opt = Newton([w]) if stop in ("gtol", "ftol") else fo.SGD([w], lr=0.1)
    hist = train(prob, opt, epochs=50, **kwargs)
    assert hist.stop_reason == stop
    assert hist.converged == (stop in ("gtol", "ftol"))
    if stop == "max_evals":
        assert hist.grad_evals[-1] == 60 and hist.step[-1] == 2
    if stop == "callback":
        assert hist.step[-1] == 3


def test_divergence_stops_the_loop():
    q = Quadratic(np.diag([1.0, 100.0]))
    w = np.ones(2)
    with np.errstate(over="ignore", invalid="ignore"):
        hist = train(q, fo.SGD([w], lr=1.0), epochs=1000)
    assert hist.stop_reason == "diverged" and hist.step[-1] < 1000


def test_schedule_replaces_the_learning_rate():
    prob = _problem()
    w = prob.init()
    opt = fo.SGD([w], lr=123.0)
    train(prob, opt, epochs=3, schedule=lambda t: 0.1 / (1 + t))
    v = prob.init()
    for t in range(3):
        v = v - 0.1 / (1 + t) * prob.grad(v)
    np.testing.assert_allclose(w, v, rtol=1e-14)
    assert callable(opt.param_groups[0]["lr"])


def test_deterministic_functions_and_flat_parameters():
    fn = Rosenbrock()
    w = fn.init()
    hist = train(fn, fo.Adam([w], lr=0.05), epochs=200, batch_size=None)
    assert hist.loss[-1] < hist.loss[0]
    prob = _problem(K=3)
    w = np.zeros(prob.n_params)
    hist = train(prob, fo.SGD([w], lr=0.5), epochs=3)
    assert hist.loss[-1] < hist.loss[0]


def test_history_helpers():
    prob = _problem()
    w = prob.init()
    hist = train(prob, fo.SGD([w], lr=0.5), epochs=2)
    assert isinstance(hist, History) and len(hist) == 3
    np.testing.assert_allclose(hist.suboptimality(0.1), hist.loss - 0.1)
    assert hist.info["steps_per_epoch"] == 1


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(epochs=0), ValueError, "epochs must be a positive integer"),
    (dict(batch_size=0), ValueError, "batch_size"),
    (dict(ftol=1e-3), ValueError, "ftol needs f_star"),
    (dict(gtol=-1.0), ValueError, "gtol"),
    (dict(schedule=0.1), TypeError, "schedule must be a callable"),
    (dict(callback=3), TypeError, "callback must be callable"),
    (dict(hessian_batch_size=4), ValueError, "Newton only"),
])
def test_bad_arguments(kwargs, exc, match):
    prob = _problem()
    w = prob.init()
    with pytest.raises(exc, match=match):
        train(prob, fo.SGD([w], lr=0.1), **kwargs)
    np.testing.assert_array_equal(w, 0.0)


def test_bad_optimizers():
    prob = _problem()
    with pytest.raises(ValueError, match="one parameter array"):
        train(prob, fo.SGD([np.zeros(4), np.zeros(1)], lr=0.1))
    with pytest.raises(ValueError, match=r"expects \(4,\)"):
        train(prob, fo.SGD([np.zeros(5)], lr=0.1))
    with pytest.raises(TypeError, match="fastopt optimizer"):
        train(prob, object())


def test_progress_bar(capsys, monkeypatch):
    pytest.importorskip("tqdm")
    prob = _problem()
    train(prob, fo.SGD([prob.init()], lr=0.1), epochs=3)       # not a TTY: no bar
    assert capsys.readouterr().err == ""
    train(prob, fo.SGD([prob.init()], lr=0.1), epochs=3, progress=True)
    assert "step" in capsys.readouterr().err
    monkeypatch.setitem(sys.modules, "tqdm", None)
    monkeypatch.setitem(sys.modules, "tqdm.auto", None)
    with pytest.raises(ImportError, match=r"fastopt\[plot\]"):
        train(prob, fo.SGD([prob.init()], lr=0.1), epochs=1, progress=True)
    train(prob, fo.SGD([prob.init()], lr=0.1), epochs=1)        # default: silently off


# ============================================================ regressions found by fuzzing
def test_bad_problems_are_refused_up_front():
    w = np.zeros(4)
    for bad in (object(), None):
        with pytest.raises(TypeError, match="problem must have"):
            train(bad, fo.SGD([w], lr=0.1))
    prob = _problem()

    class NoHessian:
        n_samples, shape = prob.n_samples, prob.shape
        loss, grad = prob.loss, prob.grad
    with pytest.raises(TypeError, match="hessian"):
        train(NoHessian(), Newton([w]))
    np.testing.assert_array_equal(w, 0.0)


def test_a_refused_call_leaves_the_learning_rate_alone():
    prob = _problem()
    opt = fo.SGD([prob.init()], lr=0.1)
    with pytest.raises(ValueError, match="Newton only"):
        train(prob, opt, schedule=lambda t: 1.0, hessian_batch_size=3)
    assert opt.param_groups[0]["lr"] == 0.1
    with pytest.raises(ValueError):
        train(prob, opt, schedule=lambda t: 1.0, seed=-1)
    assert opt.param_groups[0]["lr"] == 0.1


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(shuffle="no"), TypeError, "shuffle must be True or False"),
    (dict(progress="x"), TypeError, "progress must be True or False or None"),
    (dict(ftol=1e-3, f_star=float("inf")), ValueError, "f_star must be a finite number"),
    (dict(f_star="x"), ValueError, "f_star must be a finite number"),
])
def test_flags_and_f_star_are_checked(kwargs, exc, match):
    prob = _problem()
    with pytest.raises(exc, match=match):
        train(prob, fo.SGD([prob.init()], lr=0.1), **kwargs)


def test_hessian_batch_size_at_least_n_uses_every_sample():
    prob = _problem(n=12)
    seen = []

    class Spy:
        n_samples, shape, n_params = prob.n_samples, prob.shape, prob.n_params
        loss, grad = prob.loss, prob.grad

        def hessian(self, w, idx=None):
            seen.append(idx)
            return prob.hessian(w, idx)
    w = prob.init()
    hist = train(Spy(), Newton([w]), epochs=1, batch_size=4, hessian_batch_size=12)
    assert seen == [None] * 3 and hist.hess_evals[-1] == 3 * 12
    seen.clear()
    train(Spy(), Newton([prob.init()]), epochs=1, batch_size=4, hessian_batch_size=5)
    assert [len(i) for i in seen] == [5] * 3


def test_train_eval_optimizers_are_measured_at_their_average():
    """Schedule-Free: gradients at y (train mode), every record at x = (y - (1 - b) z) / b
    (between eval() and train()), the returned w is x, and the optimizer ends in train mode."""
    prob = _problem()
    w = prob.init()
    opt = fo.ScheduleFreeAdamW([w], lr=0.1, betas=(0.8, 0.999))
    seen = []
    hist = train(prob, opt, epochs=5, callback=lambda r: seen.append(r["w"].copy()))
    assert opt.param_groups[0]["train_mode"] is True
    x = (w - 0.2 * opt.state[0]["z"]) / 0.8
    np.testing.assert_allclose(hist.w, x, rtol=1e-12, atol=1e-14)
    np.testing.assert_allclose(seen[-1], x, rtol=1e-12, atol=1e-14)
    assert hist.loss[-1] == pytest.approx(prob.loss(hist.w), rel=1e-12)
    assert not np.allclose(hist.w, w)              # y and x differ after 5 steps
    # the same steps without records: the same y, to the rounding of the eval/train moves
    v = prob.init()
    plain = fo.ScheduleFreeAdamW([v], lr=0.1, betas=(0.8, 0.999))
    for _ in range(5):
        plain.step([prob.grad(v)])
    np.testing.assert_allclose(w, v, rtol=1e-12, atol=1e-14)
