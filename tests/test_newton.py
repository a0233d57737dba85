"""fastopt.Newton and fastopt.functional.newton_: the step against a NumPy float64 reference,
the identity shift, the Armijo line search, stochastic Newton, validation, state, and the
minimizer against scikit-learn's newton-cholesky solver."""
import warnings

import numpy as np
import pytest

from fastopt import checkpoint
from fastopt import functional as F
from fastopt.convergence import solve
from fastopt.datasets import load_breast_cancer, load_digits
from fastopt.optim import HessianShiftWarning, LineSearchWarning, Newton, NewtonStep
from fastopt.problems import LogisticRegression, Rosenbrock, Saddle
from fastopt.train import train


@pytest.fixture(scope="module", autouse=True)
def _one_blas_thread():
    """Single-threaded BLAS: reproducible rounding, and no thread oversubscription on a
    busy 2-core machine (these tests check numbers, not speed)."""
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield


def _spd(d, seed=0, cond=10.0):
    rng = np.random.default_rng(seed)
    Q, _ = np.linalg.qr(rng.standard_normal((d, d)))
    return Q @ np.diag(np.linspace(1.0, cond, d)) @ Q.T


def _reference_step(w, g, H, lr, damping):
    """w - lr (H + damping I)^{-1} g in float64, by numpy.linalg.solve."""
    H = np.asarray(H, float).reshape(w.size, w.size)
    x = np.linalg.solve(H + damping * np.eye(w.size), np.asarray(g, float).ravel())
    return np.asarray(w, float) - lr * x.reshape(w.shape)


# ================================================================================== the step
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 1e-5)])
@pytest.mark.parametrize("lr,damping", [(1.0, 0.0), (0.5, 0.3)])
def test_step_matches_reference(dtype, tol, lr, damping):
    rng = np.random.default_rng(1)
    w = rng.standard_normal(7).astype(dtype)
    g = rng.standard_normal(7).astype(dtype)
    H = _spd(7).astype(dtype)
    expect = _reference_step(w, g, H, lr, damping)
    info = Newton([w], lr=lr, damping=damping).step([g], [H])
    assert isinstance(info, NewtonStep) and info.shift == 0.0 and info.step_size == 1.0
    assert w.dtype == dtype
    np.testing.assert_allclose(w, expect, rtol=tol, atol=tol)
    x = np.linalg.solve(H.astype(float) + damping * np.eye(7), g.astype(float))
    assert info.decrement == pytest.approx(float(g.astype(float) @ x), rel=10 * tol)


def test_one_step_minimizes_a_quadratic():
    A, b = _spd(5, cond=1e4), np.arange(5.0)
    w = np.zeros(5)
    opt = Newton([w])
    opt.step([A @ w - b], [A])
    np.testing.assert_allclose(w, np.linalg.solve(A, b), rtol=1e-9)


def test_groups_and_matrix_shaped_params_are_solved_blockwise():
    rng = np.random.default_rng(2)
    a, b = rng.standard_normal((2, 3)), rng.standard_normal(4)
    ga, gb = rng.standard_normal((2, 3)), rng.standard_normal(4)
    Ha, Hb = _spd(6, 1), _spd(4, 2)
    ea = _reference_step(a, ga, Ha, 0.5, 0.0)
    eb = _reference_step(b, gb, Hb, 1.0, 0.1)
    opt = Newton([{"params": [a], "lr": 0.5}, {"params": [b], "damping": 0.1}])
    opt.step([ga, gb], [Ha.reshape(2, 3, 2, 3), Hb])       # (p, p) or shape + shape
    np.testing.assert_allclose(a, ea, rtol=1e-12)
    np.testing.assert_allclose(b, eb, rtol=1e-12)


def test_functional_matches_class_and_returns_the_shift():
    rng = np.random.default_rng(3)
    w1, g, H = rng.standard_normal(4), rng.standard_normal(4), _spd(4)
    w2 = w1.copy()
    assert F.newton_(w1, g, H, lr=0.7, damping=0.2) == 0.0
    Newton([w2], lr=0.7, damping=0.2).step([g], [H])
    np.testing.assert_array_equal(w1, w2)
    a, b = np.ones(2), np.ones(3)
    with pytest.warns(HessianShiftWarning):
        shifts = F.newton_([a, b], [np.ones(2), np.ones(3)], [np.eye(2), -np.eye(3)])
    assert shifts[0] == 0.0 and shifts[1] > 1.0


def test_lr_schedule_and_step_counter():
    w = np.ones(2)
    seen = []
    opt = Newton([w], lr=lambda t: seen.append(t) or 0.5 ** t)
    for _ in range(3):
        opt.step([np.ones(2)], [np.eye(2)])
    assert seen == [0, 1, 2]
    np.testing.assert_allclose(w, 1 - (1 + 0.5 + 0.25))


# ============================================================================ identity shift
def test_indefinite_hessian_is_shifted_and_reported():
    w = np.array([1.0, 1e-3])
    g, H = Saddle().grad(w), Saddle().hessian(w)
    with pytest.warns(HessianShiftWarning, match=r"params\[0\] is not positive definite"):
        info = Newton([w]).step([g], [H])
    assert info.shift > 1.0 and info.shifts == [info.shift]
    expect = _reference_step(np.array([1.0, 1e-3]), g, H, 1.0, info.shift)
    np.testing.assert_allclose(w, expect, rtol=1e-12)
    assert Saddle().loss(w) < Saddle().loss(np.array([1.0, 1e-3]))   # moved downhill


@pytest.mark.parametrize("H", [np.zeros((3, 3)), np.ones((3, 3)), np.diag([1.0, 0.0, 2.0])])
def test_singular_hessian_gets_a_shift_not_an_error(H):
    w = np.zeros(3)
    with pytest.warns(HessianShiftWarning):
        info = Newton([w]).step([np.ones(3)], [H])
    assert info.shift > 0 and np.all(np.isfinite(w))


def test_damping_can_make_the_shift_unnecessary():
    w = np.zeros(2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        info = Newton([w], damping=2.0).step([np.ones(2)], [np.diag([1.0, -1.0])])
    assert info.shift == 0.0
    np.testing.assert_allclose(w, [-1 / 3, -1.0])


def test_unregularized_multinomial_is_singular_but_newton_converges():
    # softmax without a penalty: W -> W + 1 c^T leaves the loss unchanged (singular Hessian)
    X, y = load_digits()
    prob = LogisticRegression(X[:200, :10], y[:200])
    w = prob.init()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HessianShiftWarning)
        hist = train(prob, Newton([w], line_search="armijo"), epochs=40, gtol=1e-7)
    assert hist.loss[-1] < hist.loss[0] and np.all(np.isfinite(w))
    assert np.all(np.diff(hist.loss) <= 1e-15)


# ============================================================================== line search
def _pseudo_huber():
    """f(x) = sqrt(1 + x^2): Newton's full step from |x| > 1 overshoots to -x^3."""
    f = lambda w: float(np.sqrt(1 + w[0] ** 2))
    g = lambda w: np.array([w[0] / np.sqrt(1 + w[0] ** 2)])
    h = lambda w: np.array([[(1 + w[0] ** 2) ** -1.5]])
    return f, g, h


def test_armijo_backtracks_and_satisfies_the_condition():
    f, g, h = _pseudo_huber()
    w = np.array([2.0])
    f0, g0 = f(w), g(w)
    d = np.linalg.solve(h(w), g0)
    info = Newton([w], line_search="armijo").step([g0], [h(w)], closure=lambda: f(w))
    assert info.backtracks > 0 and 0 < info.step_size < 1
    assert info.loss == f(w)
    assert f(w) <= f0 - 1e-4 * info.step_size * float(g0 @ d)
    np.testing.assert_allclose(w, 2.0 - info.step_size * d)
    # without the search, the full step increases the loss
    w2 = np.array([2.0])
    Newton([w2]).step([g0], [h(np.array([2.0]))])
    assert f(w2) > f0


def test_armijo_makes_rosenbrock_monotone():
    fn = Rosenbrock()
    w = fn.init()
    opt = Newton([w], line_search="armijo")
    losses = [fn.loss(w)]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", HessianShiftWarning)
        for _ in range(60):
            opt.step([fn.grad(w)], [fn.hessian(w)], closure=lambda: fn.loss(w))
            losses.append(fn.loss(w))
    assert np.all(np.diff(losses) <= 0)
    np.testing.assert_allclose(w, fn.minimizer, atol=1e-8)


def test_failed_line_search_leaves_params_unchanged():
    w = np.array([1.0, 2.0])
    calls = []
    opt = Newton([w], line_search="armijo", max_backtracks=3)
    with pytest.warns(LineSearchWarning):
        info = opt.step([np.ones(2)], [np.eye(2)],
                        closure=lambda: calls.append(1) or float("inf"), loss=0.0)
    assert info.step_size == 0.0 and len(calls) == 4
    np.testing.assert_array_equal(w, [1.0, 2.0])


def test_closure_error_restores_params():
    w = np.array([1.0, 2.0])

    def closure():
        raise RuntimeError("boom")
    with pytest.raises(RuntimeError, match="boom"):
        Newton([w], line_search="armijo").step([np.ones(2)], [np.eye(2)], closure=closure,
                                               loss=1.0)
    np.testing.assert_array_equal(w, [1.0, 2.0])


# ================================================================================ validation
def _checks_leave_everything_unchanged(call, exc, match):
    w = np.array([1.0, 2.0])
    opt = Newton([w], line_search=None)
    sd = opt.state_dict()
    with pytest.raises(exc, match=match):
        call(opt)
    np.testing.assert_array_equal(w, [1.0, 2.0])
    assert opt.state_dict() == sd


@pytest.mark.parametrize("call,exc,match", [
    (lambda o: o.step([np.ones(2)], [np.array([[1.0, np.nan], [np.nan, 1.0]])]),
     ValueError, r"hessians\[0\] contains NaN"),
    (lambda o: o.step([np.array([np.nan, 1.0])], [np.eye(2)]), ValueError,
     r"grads\[0\] contains NaN"),
    (lambda o: o.step([np.ones(2)], [np.eye(3)]), ValueError,
     r"hessians\[0\] must have shape \(2, 2\)"),
    (lambda o: o.step([np.ones(2)], [np.array([[1.0, 1.0], [0.0, 1.0]])]), ValueError,
     "not symmetric"),
    (lambda o: o.step([np.ones(2)], []), ValueError, "hessians has 0 arrays"),
    (lambda o: o.step([np.ones(3)], [np.eye(2)]), ValueError, r"grads\[0\] must have shape"),
    (lambda o: o.step([np.ones(2, np.float32)], [np.eye(2)]), TypeError, "dtype float64"),
    (lambda o: o.step([np.ones(2)], [np.eye(2, dtype=int)]), TypeError, "float32 or float64"),
    (lambda o: o.step([np.ones(2)], ["H"]), TypeError, "numpy.ndarray"),
    (lambda o: o.step(np.ones(2), np.eye(2), loss=float("nan")), ValueError, "Invalid loss"),
])
def test_bad_step_arguments(call, exc, match):
    _checks_leave_everything_unchanged(call, exc, match)


def test_line_search_needs_a_closure():
    w = np.ones(2)
    with pytest.raises(ValueError, match="closure"):
        Newton([w], line_search="armijo").step([np.ones(2)], [np.eye(2)])
    np.testing.assert_array_equal(w, 1.0)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(lr=-1.0), ValueError, "learning rate"),
    (dict(lr="fast"), TypeError, "lr must be a number"),
    (dict(damping=-0.1), ValueError, "damping"),
    (dict(line_search="wolfe"), ValueError, "line_search must be None or 'armijo'"),
    (dict(c1=1.0), ValueError, "c1"),
    (dict(backtrack=0.0), ValueError, "backtrack"),
    (dict(max_backtracks=-1), ValueError, "max_backtracks"),
])
def test_bad_hyperparameters(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        Newton([np.ones(2)], **kwargs)


def test_bad_params():
    with pytest.raises(TypeError, match="float32 or float64"):
        Newton([np.ones(2, dtype=int)])
    ro = np.ones(2)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="writable"):
        Newton([ro])
    w = np.ones(4)
    with pytest.raises(ValueError, match="share memory"):
        Newton([w[:2], w[1:3]])
    with pytest.raises(ValueError, match="empty"):
        Newton([])
    with pytest.raises(TypeError, match="wrap it in a list"):
        Newton(np.ones(2))
    with pytest.raises(TypeError, match="numpy.ndarray parameters"):
        Newton([[1.0, 2.0]])


def test_line_search_settings_must_agree_across_groups():
    opt = Newton([{"params": [np.ones(1)], "line_search": "armijo"}, {"params": [np.ones(1)]}])
    with pytest.raises(ValueError, match="same in every param group"):
        opt.step([np.ones(1), np.ones(1)], [np.eye(1), np.eye(1)], closure=lambda: 0.0)


# ===================================================================================== state
def test_state_dict_round_trip_and_checkpoint(tmp_path):
    w = np.ones(2)
    opt = Newton([w], lr=0.5, damping=0.1)
    with pytest.warns(HessianShiftWarning):
        opt.step([np.ones(2)], [-np.eye(2)])
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 1.0 and sd["state"][0]["shift"] > 0
    assert sd["param_groups"][0]["lr"] == 0.5 and sd["param_groups"][0]["params"] == [0]
    other = Newton([np.ones(2)])
    other.load_state_dict(sd)
    assert other.state_dict() == sd
    checkpoint.save(opt, tmp_path / "n.npz")
    third = Newton([np.ones(2)])
    checkpoint.load(third, tmp_path / "n.npz")
    assert third.state_dict()["state"] == sd["state"]
    assert third.param_groups[0]["damping"] == 0.1


def test_bad_state_dict_changes_nothing():
    opt = Newton([np.ones(2)])
    before = opt.state_dict()
    bad = {"state": {0: {"step": 1.0, "momentum_buffer": np.ones(2)}},
           "param_groups": [{"params": [0], "lr": 1.0}]}
    with pytest.raises(ValueError, match="unknown entry 'momentum_buffer'"):
        opt.load_state_dict(bad)
    with pytest.raises(ValueError, match="damping"):
        opt.load_state_dict({"state": {}, "param_groups": [{"params": [0], "damping": -1.0}]})
    with pytest.raises(ValueError, match="param groups"):
        opt.load_state_dict({"state": {}, "param_groups": []})
    assert opt.state_dict() == before


# ============================================================================ real problems
def _breast_cancer(l2=1e-2):
    X, y = load_breast_cancer(intercept=True)
    return LogisticRegression(X, y, l2=l2)


def test_newton_converges_on_breast_cancer_in_few_steps():
    prob = _breast_cancer()
    w = prob.init()
    hist = train(prob, Newton([w]), epochs=20, gtol=1e-12)
    assert hist.converged and hist.step[-1] <= 12


def test_subsampled_and_stochastic_newton():
    prob = _breast_cancer()
    w_star, f_star, _ = solve(prob)
    # full gradient, Hessian on a quarter of the samples (half steps): linear convergence
    w = prob.init()
    hist = train(prob, Newton([w], lr=0.5), epochs=40, hessian_batch_size=142, gtol=1e-10,
                 seed=1)
    assert hist.converged
    assert hist.hess_evals[-1] == 142 * hist.step[-1]
    # gradient and Hessian on minibatches of 128, decaying steps: most of the way there
    w = prob.init()
    hist = train(prob, Newton([w]), epochs=10, batch_size=128, seed=0,
                 schedule=lambda t: 1.0 / (1 + t / 5))
    assert hist.loss[-1] - f_star < 1e-2 * (hist.loss[0] - f_star)


def _sklearn_fit(X, y, l2):
    sklearn = pytest.importorskip("sklearn.linear_model")
    clf = sklearn.LogisticRegression(solver="newton-cholesky", C=1.0 / (len(y) * l2),
                                     fit_intercept=False, tol=1e-12, max_iter=200)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")   # FutureWarnings about multi_class defaults
        clf.fit(X, y)
    return clf.coef_


def test_minimizer_matches_sklearn_binary():
    X, y = load_breast_cancer(intercept=True)
    l2 = 1e-3
    w, _, gnorm = solve(LogisticRegression(X, y, l2=l2))
    coef = _sklearn_fit(X, y, l2)[0]
    assert np.linalg.norm(w - coef) / np.linalg.norm(coef) < 1e-6


def test_minimizer_matches_sklearn_multinomial():
    X, y = load_digits(intercept=True)
    l2 = 1e-2
    W, _, _ = solve(LogisticRegression(X, y, l2=l2))
    coef = _sklearn_fit(X, y, l2)
    assert coef.shape == W.shape == (10, 65)
    assert np.linalg.norm(W - coef) / np.linalg.norm(coef) < 1e-6
