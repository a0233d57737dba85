"""The lecture's convergence claims, checked on real data, and fastopt.convergence.compare.

Claims (issue 4): gradient descent with lr = 1/L on convex logistic regression satisfies
f(x_T) - f* <= ||x_0 - x*||^2 / (2 lr T) at every T; SGD with diminishing steps has
suboptimality decreasing at least like 1/sqrt(T) (fitted log-log slope, averaged over seeds,
at most -0.4); Newton converges quadratically near the optimum (the gradient norm squares
each step); SVRG with a fixed step converges linearly where SGD with the same step stalls.
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt import convergence
from fastopt.convergence import METHODS, Comparison, Method, Trace, compare, solve
from fastopt.datasets import load_breast_cancer, load_digits
from fastopt.optim import SVRG, Newton
from fastopt.problems import LogisticRegression
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


@pytest.fixture(scope="module")
def breast_cancer():
    X, y = load_breast_cancer(intercept=True)
    prob = LogisticRegression(X, y, l2=1e-2)
    w_star, f_star, _ = solve(prob)
    return prob, w_star, f_star


@pytest.fixture(scope="module")
def digits():
    X, y = load_digits(intercept=True)
    prob = LogisticRegression(X, y, l2=1e-2)
    w_star, f_star, _ = solve(prob)
    return prob, w_star, f_star


# ================================================================================ the claims
@pytest.mark.parametrize("data,l2,T", [("breast_cancer", 1e-3, 400), ("digits", 1e-3, 100)])
def test_gradient_descent_bound_at_every_T(data, l2, T):
    X, y = (load_breast_cancer if data == "breast_cancer" else load_digits)(intercept=True)
    prob = LogisticRegression(X, y, l2=l2)
    w_star, f_star, gnorm = solve(prob)
    assert gnorm < 1e-12
    w0 = prob.init()
    w = w0.copy()
    lr = 1.0 / prob.L
    hist = train(prob, fo.SGD([w], lr=lr), epochs=T)
    steps = hist.step[1:]
    assert steps.tolist() == list(range(1, T + 1))
    bound = np.sum((w0 - w_star) ** 2) / (2 * lr * steps)
    gap = hist.loss[1:] - f_star
    assert np.all(gap <= bound), f"violated at T = {steps[np.argmax(gap > bound)]}"
    assert np.all(np.diff(hist.loss) <= 0)            # and descent at every step


def test_sgd_with_diminishing_steps_slope(breast_cancer):
    """Suboptimality of SGD (batch 1, lr_t = lr0 / (1 + t/n), the `sgd` default) against the
    number of steps T: the fitted log-log slope over T in [n, 10 n], averaged over seeds."""
    prob, _, f_star = breast_cancer
    n = prob.n_samples
    slopes = []
    for seed in range(3):
        w = prob.init()
        opt = fo.SGD([w], **METHODS["sgd"].hyper(prob))
        hist = train(prob, opt, epochs=10, batch_size=1, seed=seed, record_every=n // 4)
        keep = hist.step >= n
        slope = np.polyfit(np.log(hist.step[keep]), np.log(hist.loss[keep] - f_star), 1)[0]
        slopes.append(slope)
    assert np.mean(slopes) <= -0.4, slopes


def _quadratic_check(grad_norms, floor=1e-14, local=1e-2, c=1e3):
    """Near the optimum (g_k <= local) and above rounding (g_{k+1} >= floor): the gradient
    norm squares each step, g_{k+1} <= c g_k^2; returns the local ratios g_{k+1} / g_k^2."""
    g = np.asarray(grad_norms)
    ks = [k for k in range(len(g) - 1) if g[k] <= local and g[k + 1] >= floor]
    assert len(ks) >= 3, g
    ratios = np.array([g[k + 1] / g[k] ** 2 for k in ks])
    assert np.all(ratios <= c), ratios
    # the local phase spans several orders of magnitude: a linearly convergent method
    # (g_{k+1} ~ rho g_k) would need ratios ~ rho / g_k, far above c at the last steps
    assert g[ks[-1]] <= 1e-6
    # empirical order of convergence at the last two local steps
    k = ks[-1]
    order = np.log(g[k + 1] / g[k]) / np.log(g[k] / g[k - 1])
    assert order >= 1.8, (order, g)
    return ratios


@pytest.mark.parametrize("data", ["breast_cancer", "digits"])
def test_newton_converges_quadratically(data, request):
    prob, _, _ = request.getfixturevalue(data)
    w = prob.init()
    hist = train(prob, Newton([w], lr=1.0), epochs=15, gtol=0.0)
    _quadratic_check(hist.grad_norm)


def test_newton_quadratic_bound_with_the_problem_constants(breast_cancer):
    """Boyd & Vandenberghe 9.5.3: with m = l2 (strong convexity) and M the Lipschitz constant
    of the Hessian, every full Newton step has (M / 2m^2) ||g+|| <= ((M / 2m^2) ||g||)^2.
    For binary logistic regression M <= max|sigma''| max_i ||x_i|| lambda_max(X^T X / n)."""
    prob, _, _ = breast_cancer
    X = prob.X
    sigma2 = 1 / (6 * np.sqrt(3))                        # max |sigma''(z)|
    M = sigma2 * np.sqrt((X ** 2).sum(1).max()) * np.linalg.eigvalsh(X.T @ X / len(X)).max()
    C = M / (2 * prob.l2 ** 2)
    w = prob.init()
    hist = train(prob, Newton([w], lr=1.0), epochs=15, gtol=1e-15)
    above_rounding = hist.grad_norm[1:] >= 1e-14
    g = C * hist.grad_norm
    assert above_rounding.sum() >= 6
    assert np.all((g[1:] <= g[:-1] ** 2)[above_rounding])
    assert g[:-1][above_rounding].min() < 1             # it reached the quadratic phase


def test_svrg_linear_where_sgd_with_the_same_step_stalls(breast_cancer):
    prob, _, f_star = breast_cancer
    n, lr = prob.n_samples, 0.1
    w = prob.init()
    svrg = train(prob, SVRG([w], lr=lr), epochs=20, batch_size=1, record_every=n)
    v = prob.init()
    sgd = train(prob, fo.SGD([v], lr=lr), epochs=20, batch_size=1, record_every=n)
    s_svrg, s_sgd = svrg.loss - f_star, sgd.loss - f_star
    # SVRG: geometric decrease, per epoch, down to high accuracy
    assert s_svrg[-1] < 1e-8
    slope = np.polyfit(svrg.epoch[2:], np.log10(s_svrg[2:]), 1)[0]
    assert slope < -0.2, slope                        # a factor 10 every < 5 epochs
    # SGD with the same constant step: no progress in the second half, far from f*
    assert s_sgd[11:].min() > 1e-4
    assert s_sgd[11:].min() > 0.1 * s_sgd[1:11].min()


# ============================================================================ compare() API
def test_compare_returns_plain_arrays_for_every_method(breast_cancer):
    prob, w_star, f_star = breast_cancer
    res = compare(prob, epochs=2, f_star=f_star)
    assert isinstance(res, Comparison)
    assert res.names() == ["gd", "sgd", "minibatch_sgd", "momentum", "nesterov", "adagrad",
                           "rmsprop", "adam", "adadelta", "adamax", "lion", "schedule_free_adamw",
                           "svrg", "newton", "lbfgs"]
    n = prob.n_samples
    for name in res.names():
        tr = res[name]
        assert isinstance(tr, Trace) and tr.name == name
        for arr in (tr.grad_evals, tr.epochs, tr.hess_evals, tr.time, tr.loss, tr.subopt):
            assert isinstance(arr, np.ndarray) and arr.shape == tr.grad_evals.shape
        assert tr.grad_evals[0] == 0 and np.all(np.diff(tr.grad_evals) > 0)
        assert np.all(np.diff(tr.time) >= 0)
        np.testing.assert_allclose(tr.subopt, tr.loss - f_star)
        np.testing.assert_allclose(tr.epochs, tr.grad_evals / n)
        assert tr.subopt.min() > -1e-12
        assert tr.subopt[-1] < tr.subopt[0]
        if name == "lbfgs":         # a step: up to max_eval = 10 full gradients
            assert tr.grad_evals[-1] <= 2 * n + 10 * n
        elif name != "newton":
            assert tr.grad_evals[-1] <= 2 * n + 2 * tr.batch_size
        assert all(isinstance(v, (int, float, str, bool, type(None)))
                   for v in tr.hyperparameters.values())
    assert res["newton"].subopt[-1] <= 1e-15
    np.testing.assert_array_equal(res["newton"].hess_evals, res["newton"].grad_evals)
    assert not res["adam"].hess_evals.any()
    assert res["gd"].batch_size == n and res["sgd"].batch_size == 1


def test_compare_default_problem_and_f_star():
    res = compare(methods=["newton", "gd"], epochs=1)
    _, f_star, _ = solve(convergence.default_problem())
    assert res.f_star == f_star and res.w_star.shape == (31,)
    assert res.names() == ["newton", "gd"] and res.n_samples == 569


def test_compare_custom_method_and_errors(breast_cancer):
    prob, _, f_star = breast_cancer
    mine = Method("mine", "my Adam", "Adam", 64, lambda p: dict(lr=0.05, amsgrad=True))
    res = compare(prob, [mine, "adam"], epochs=1, f_star=f_star)
    assert res["mine"].hyperparameters == {"lr": 0.05, "amsgrad": True}
    assert res["mine"].batch_size == 64
    with pytest.raises(ValueError, match="unknown method"):
        compare(prob, ["bfgs"], f_star=f_star)
    with pytest.raises(TypeError, match="Method objects"):
        compare(prob, [3], f_star=f_star)
    with pytest.raises(ValueError, match="epochs"):
        compare(prob, ["gd"], epochs=0, f_star=f_star)


def test_solve_reaches_machine_precision(digits):
    prob, W, f_star = digits
    assert np.linalg.norm(prob.grad(W)) < 1e-14
    assert f_star == prob.loss(W)


# ============================================================ regressions found by fuzzing
@pytest.mark.parametrize("kwargs,match", [
    (dict(records_per_epoch=0), "records_per_epoch"),
    (dict(records_per_epoch=float("nan")), "records_per_epoch"),
    (dict(epochs=float("inf")), "epochs"),
    (dict(newton_iters=0), "newton_iters"),
    (dict(f_star=float("nan")), "f_star"),
])
def test_compare_checks_its_arguments_first(kwargs, match):
    prob = LogisticRegression(np.eye(3), [0, 1, 0], l2=0.1)
    with pytest.raises(ValueError, match=match):
        compare(prob, ["gd"], **kwargs)


@pytest.mark.parametrize("method,exc,match", [
    (Method("m", "m", "Bogus"), ValueError, "optimizer must be one of"),
    (Method("m", "m", "Optimizer"), ValueError, "optimizer must be one of"),
    (Method("m", "m", "Adam", batch_size=0), ValueError, "batch_size"),
    (Method("m", "m", "Adam", hyper=3), TypeError, "hyper"),
])
def test_compare_checks_methods(method, exc, match):
    prob = LogisticRegression(np.eye(3), [0, 1, 0], l2=0.1)
    with pytest.raises(exc, match=match):
        compare(prob, [method], f_star=0.0)


def test_compare_takes_at_least_one_step_and_needs_a_positive_L():
    from fastopt.problems import Quadratic, Rosenbrock
    q = Quadratic(np.diag([1.0, 2.0]), np.ones(2))
    res = compare(q, ["gd"], epochs=0.5)            # epochs * n = 0.5 sample-gradients
    assert res["gd"].grad_evals.tolist() == [0, 1] and res["gd"].stop_reason == "max_evals"
    with pytest.raises(ValueError, match="smoothness constant"):
        compare(Rosenbrock(), ["gd"], f_star=0.0)
    with pytest.raises(ValueError, match="smoothness constant"):
        compare(Quadratic(np.zeros((2, 2))), ["svrg"], f_star=0.0)
    with pytest.raises(TypeError, match="problem"):
        compare(object(), ["gd"], f_star=0.0)


def test_solve_checks_its_arguments():
    prob = LogisticRegression(np.eye(3), [0, 1, 0], l2=0.1)
    with pytest.raises(ValueError, match="max_iter"):
        solve(prob, max_iter=-1)
    with pytest.raises(TypeError, match="w0 must be a real array"):
        solve(prob, np.zeros(3, complex))
    with pytest.raises(TypeError, match="problem"):
        solve(object())
    w, f, g = solve(prob, max_iter=0)
    assert np.array_equal(w, prob.init()) and f == prob.loss(w)
