"""fastopt.problems, fastopt._linalg and fastopt.datasets against independent references."""
import math

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import logreg_reference as ref
from fastopt import _linalg
from fastopt.datasets import BREAST_CANCER_FEATURES, load_breast_cancer, load_digits, standardize
from fastopt.problems import (Beale, IllConditionedQuadratic, LogisticRegression, Quadratic,
                              Rosenbrock, Saddle)


def _data(n=40, d=5, K=2, seed=0, dtype=np.float64):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d)).astype(dtype)
    y = rng.integers(0, K, n)
    y[:K] = np.arange(K)            # every class present
    return X, y


# ============================================================================= _linalg
@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
@pytest.mark.parametrize("n,d", [(1, 1), (7, 3), (300, 17)])
def test_weighted_gram_matches_dense_product(dtype, tol, n, d):
    rng = np.random.default_rng(n + d)
    X = rng.standard_normal((n, d)).astype(dtype)
    w = rng.random(n)
    old = _linalg.get_chunk_bytes()
    try:
        for chunk in (1, old):             # 64-row chunks (several per matrix) and the default
            _linalg.set_chunk_bytes(chunk)
            H = _linalg.weighted_gram(X, w, alpha=0.5)
            expect = 0.5 * X.astype(float).T @ np.diag(w) @ X.astype(float)
            assert H.dtype == dtype and H.shape == (d, d)
            np.testing.assert_allclose(H, expect, rtol=tol, atol=tol * np.abs(expect).max())
            assert np.array_equal(H, H.T)
    finally:
        _linalg.set_chunk_bytes(old)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-12), (np.float32, 2e-5)])
def test_softmax_gram_matches_blocks(dtype, tol):
    rng = np.random.default_rng(3)
    n, d, K = 150, 4, 3
    X = rng.standard_normal((n, d)).astype(dtype)
    Z = rng.standard_normal((n, K)) * 2
    P = np.exp(Z) / np.exp(Z).sum(1, keepdims=True)
    old = _linalg.get_chunk_bytes()
    try:
        _linalg.set_chunk_bytes(1)
        H = _linalg.softmax_gram(X, P.astype(dtype), alpha=1 / n)
    finally:
        _linalg.set_chunk_bytes(old)
    Xf = X.astype(float)
    expect = np.block([[Xf.T @ np.diag(P[:, k] * ((k == m) - P[:, m])) @ Xf / n
                        for m in range(K)] for k in range(K)])
    np.testing.assert_allclose(H, expect, rtol=tol, atol=tol * np.abs(expect).max())
    assert np.array_equal(H, H.T)


@pytest.mark.parametrize("dtype,tol", [(np.float64, 1e-13), (np.float32, 1e-5)])
def test_products_match_numpy(dtype, tol):
    rng = np.random.default_rng(4)
    X = rng.standard_normal((23, 6)).astype(dtype)
    Xf = X.astype(float)
    w, W = rng.standard_normal(6), rng.standard_normal((3, 6))
    r, R = rng.standard_normal(23), rng.standard_normal((23, 3))
    cases = [(_linalg.scores(X, w, 2.0), 2 * Xf @ w), (_linalg.scores(X, W), Xf @ W.T),
             (_linalg.transpose_times(X, r, 0.5), 0.5 * Xf.T @ r),
             (_linalg.transpose_times(X, R), R.T @ Xf)]
    for got, expect in cases:
        assert got.dtype == dtype and got.shape == expect.shape
        np.testing.assert_allclose(got, expect, rtol=tol, atol=tol * np.abs(expect).max())
    assert _linalg.scores(np.ones((0, 3)), np.ones(3)).shape == (0,)
    np.testing.assert_array_equal(_linalg.transpose_times(np.ones((0, 3)), np.ones((0, 2))),
                                  np.zeros((2, 3)))
    with pytest.raises(ValueError, match=r"shape \(6,\) or \(K, 6\)"):
        _linalg.scores(X, np.ones(5))
    with pytest.raises(ValueError, match=r"shape \(23,\) or \(23, K\)"):
        _linalg.transpose_times(X, np.ones((22, 2)))


def test_gram_out_argument_and_empty_rows():
    X = np.ones((0, 3))
    assert np.array_equal(_linalg.weighted_gram(X, np.ones(0)), np.zeros((3, 3)))
    X = np.arange(6.0).reshape(3, 2)
    out = np.full((2, 2), 7.0)
    res = _linalg.weighted_gram(X, np.ones(3), out=out)
    assert res is out
    np.testing.assert_allclose(out, X.T @ X)
    with pytest.raises(ValueError, match="out must be"):
        _linalg.weighted_gram(X, np.ones(3), out=np.zeros((3, 3)))


def test_gram_rejects_bad_input():
    X = np.ones((4, 2))
    with pytest.raises(ValueError, match="weights must be finite and >= 0"):
        _linalg.weighted_gram(X, np.array([1.0, -1.0, 1.0, 1.0]))
    with pytest.raises(ValueError, match=r"weights must have shape \(4,\)"):
        _linalg.weighted_gram(X, np.ones(3))
    with pytest.raises(TypeError, match="float32 or float64"):
        _linalg.weighted_gram(np.ones((4, 2), int), np.ones(4))
    with pytest.raises(ValueError, match="2-D"):
        _linalg.weighted_gram(np.ones(4), np.ones(4))
    with pytest.raises(ValueError, match="probabilities"):
        _linalg.softmax_gram(X, np.full((4, 2), 1.5))
    with pytest.raises(ValueError, match="rows"):
        _linalg.softmax_gram(X, np.full((3, 2), 0.5))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_cholesky_solve_positive_definite(dtype):
    rng = np.random.default_rng(1)
    A = rng.standard_normal((6, 6))
    H = (A @ A.T + 6 * np.eye(6)).astype(dtype)
    b = rng.standard_normal((6, 2))
    H0, b0 = H.copy(), b.copy()
    x, shift = _linalg.cholesky_solve(H, b, damping=0.5)
    assert shift == 0.0 and x.dtype == dtype and x.shape == (6, 2)
    expect = np.linalg.solve(H.astype(float) + 0.5 * np.eye(6), b)
    np.testing.assert_allclose(x, expect, rtol=1e-4 if dtype == np.float32 else 1e-12)
    assert np.array_equal(H, H0) and np.array_equal(b, b0)


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("H", [np.diag([1.0, -1.0, 2.0]),            # indefinite
                               np.array([[1.0, 2.0], [2.0, 1.0]]),   # indefinite, diag > 0
                               np.ones((3, 3)),                      # singular PSD
                               np.zeros((2, 2)),                     # zero
                               -np.eye(2)])                          # negative definite
def test_cholesky_solve_shifts_until_it_factors(H, dtype):
    H = H.astype(dtype)
    b = np.ones(H.shape[0])
    x, shift = _linalg.cholesky_solve(H, b)
    assert shift > 0 and np.all(np.isfinite(x))
    shifted = H.astype(float) + shift * np.eye(len(b))
    assert np.linalg.eigvalsh(shifted).min() > 0
    np.testing.assert_allclose(shifted @ x, b, rtol=1e-3 if dtype == np.float32 else 1e-9)


def test_cholesky_solve_shift_keeps_a_margin():
    # eigenvalues -1 and 3: the shifted matrix must not be nearly singular
    H = np.array([[1.0, 2.0], [2.0, 1.0]])
    x, shift = _linalg.cholesky_solve(H, np.array([1.0, -1.0]))
    lam = np.linalg.eigvalsh(H + shift * np.eye(2))
    assert lam.min() >= shift / 2 - 1 - 1e-12 and lam.min() > 0.1


def test_cholesky_solve_rejects_bad_input():
    with pytest.raises(ValueError, match="NaN or inf"):
        _linalg.cholesky_solve(np.array([[1.0, np.nan], [np.nan, 1.0]]), np.ones(2))
    with pytest.raises(ValueError, match="right-hand side contains NaN"):
        _linalg.cholesky_solve(np.eye(2), np.array([1.0, np.inf]))
    with pytest.raises(ValueError, match="square"):
        _linalg.cholesky_solve(np.ones((2, 3)), np.ones(2))
    with pytest.raises(ValueError, match="right-hand side must have shape"):
        _linalg.cholesky_solve(np.eye(2), np.ones(3))
    with pytest.raises(ValueError, match="damping"):
        _linalg.cholesky_solve(np.eye(2), np.ones(2), damping=-1.0)
    x, shift = _linalg.cholesky_solve(np.zeros((0, 0)), np.zeros(0))
    assert x.shape == (0,) and shift == 0.0


# ====================================================================== logistic regression
@pytest.mark.parametrize("l2", [0.0, 0.3])
def test_binary_matches_reference(l2):
    X, y = _data()
    prob = LogisticRegression(X, y, l2=l2)
    w = np.random.default_rng(5).standard_normal(5)
    loss, grad, hess = ref.binary(X, y, w, l2)
    assert prob.shape == (5,) and not prob.multinomial
    assert prob.loss(w) == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(prob.grad(w), grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(prob.hessian(w), hess, rtol=1e-12, atol=1e-15)
    v = np.random.default_rng(6).standard_normal(5)
    np.testing.assert_allclose(prob.hvp(w, v), hess @ v, rtol=1e-12, atol=1e-15)
    f, g = prob.loss_grad(w)
    assert f == prob.loss(w) and np.array_equal(g, prob.grad(w))


@pytest.mark.parametrize("l2", [0.0, 0.1])
def test_multinomial_matches_reference(l2):
    X, y = _data(n=60, d=4, K=3)
    prob = LogisticRegression(X, y, l2=l2)
    W = np.random.default_rng(2).standard_normal((3, 4))
    loss, grad, hess = ref.multinomial(X, y, W, l2)
    assert prob.shape == (3, 4) and prob.multinomial and prob.n_classes == 3
    assert prob.loss(W) == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(prob.grad(W), grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(prob.hessian(W), hess, rtol=1e-12, atol=1e-15)
    V = np.random.default_rng(7).standard_normal((3, 4))
    np.testing.assert_allclose(prob.hvp(W, V), (hess @ V.ravel()).reshape(3, 4), rtol=1e-11,
                               atol=1e-14)
    # flat parameters give the same numbers, shaped flat
    assert prob.grad(W.ravel()).shape == (12,)
    np.testing.assert_allclose(prob.grad(W.ravel()), grad.ravel(), rtol=1e-12, atol=1e-15)


def test_two_class_softmax_on_request():
    X, y = _data()
    prob = LogisticRegression(X, y, l2=0.1, multinomial=True)
    W = np.random.default_rng(1).standard_normal((2, 5))
    loss, grad, hess = ref.multinomial(X, y, W, 0.1)
    assert prob.loss(W) == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(prob.hessian(W), hess, rtol=1e-12, atol=1e-15)


@pytest.mark.parametrize("K", [2, 4])
def test_derivatives_match_finite_differences(K):
    X, y = _data(n=30, d=3, K=K, seed=K)
    prob = LogisticRegression(X, y, l2=0.05)
    w = np.random.default_rng(K).standard_normal(prob.shape)
    np.testing.assert_allclose(prob.grad(w), ref.fd_grad(prob.loss, w), rtol=1e-6, atol=1e-8)
    H_fd = ref.fd_jacobian(prob.grad, w)
    np.testing.assert_allclose(prob.hessian(w), H_fd, rtol=1e-6, atol=1e-8)


@given(n=st.integers(1, 12), d=st.integers(1, 4), K=st.integers(2, 4),
       seed=st.integers(0, 2**32 - 1), scale=st.sampled_from([0.1, 1.0, 10.0]),
       l2=st.sampled_from([0.0, 1e-3, 1.0]))
@settings(max_examples=25)
def test_property_against_reference(n, d, K, seed, scale, l2):
    rng = np.random.default_rng(seed)
    X = rng.standard_normal((n, d))
    y = rng.integers(0, K, n)
    prob = LogisticRegression(X, y, l2=l2, n_classes=K)
    w = rng.standard_normal(prob.shape) * scale / math.sqrt(d)
    if K == 2:
        loss, grad, hess = ref.binary(X, y, w, l2)
    else:
        loss, grad, hess = ref.multinomial(X, y, w, l2)
    assert prob.loss(w) == pytest.approx(loss, rel=1e-10, abs=1e-12)
    np.testing.assert_allclose(prob.grad(w), grad, rtol=1e-9, atol=1e-12)
    np.testing.assert_allclose(prob.hessian(w), hess, rtol=1e-9, atol=1e-12)


def test_minibatch_idx_evaluates_the_selected_rows():
    X, y = _data(n=50, d=3, K=3)
    prob = LogisticRegression(X, y, l2=0.2)
    W = np.random.default_rng(0).standard_normal((3, 3))
    idx = np.array([3, 7, 7, 20, 49])
    loss, grad, hess = ref.multinomial(X[idx], y[idx], W, 0.2)
    assert prob.loss(W, idx) == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(prob.grad(W, idx), grad, rtol=1e-12, atol=1e-15)
    np.testing.assert_allclose(prob.hessian(W, idx), hess, rtol=1e-12, atol=1e-15)
    sl = slice(10, 30)
    loss, grad, _ = ref.multinomial(X[sl], y[sl], W, 0.2)
    assert prob.loss(W, sl) == pytest.approx(loss, rel=1e-13)
    np.testing.assert_allclose(prob.grad(W, sl), grad, rtol=1e-12, atol=1e-15)
    # the mean over all single-sample gradients is the full gradient (finite sum)
    per_sample = np.mean([prob.grad(W, [i]) for i in range(50)], axis=0)
    np.testing.assert_allclose(per_sample, prob.grad(W), rtol=1e-12, atol=1e-14)


def test_float32_data_close_to_float64():
    X, y = _data(n=80, d=6, K=3, dtype=np.float32)
    p32 = LogisticRegression(X, y, l2=0.1)
    p64 = LogisticRegression(X.astype(np.float64), y, l2=0.1)
    W = np.random.default_rng(0).standard_normal((3, 6)).astype(np.float32)
    assert p32.dtype == np.float32
    assert p32.grad(W).dtype == np.float32 and p32.hessian(W).dtype == np.float32
    assert p32.grad(W.astype(np.float64)).dtype == np.float64
    assert p32.loss(W) == pytest.approx(p64.loss(W.astype(np.float64)), rel=1e-6)
    np.testing.assert_allclose(p32.grad(W), p64.grad(W.astype(np.float64)), rtol=1e-4,
                               atol=1e-6)
    np.testing.assert_allclose(p32.hessian(W), p64.hessian(W.astype(np.float64)), rtol=1e-4,
                               atol=1e-6)


@pytest.mark.parametrize("K", [2, 3])
def test_large_margins_stay_finite_and_accurate(K):
    X, y = _data(n=20, d=3, K=K)
    prob = LogisticRegression(X * 1e4, y)
    w = np.random.default_rng(0).standard_normal(prob.shape)
    loss, g, H = prob.loss(w), prob.grad(w), prob.hessian(w)
    assert np.isfinite(loss) and np.all(np.isfinite(g)) and np.all(np.isfinite(H))
    # exact asymptotics: log(1 + e^z) - y z = max(z, 0) - y z + log1p(e^{-|z|})
    Z = (X * 1e4) @ (w.T if K > 2 else w)
    if K == 2:
        expect = np.mean(np.maximum(Z, 0) - y * Z + np.log1p(np.exp(-np.abs(Z))))
    else:
        m = Z.max(axis=1)
        expect = np.mean(m + np.log(np.exp(Z - m[:, None]).sum(1)) - Z[np.arange(20), y])
    assert loss == pytest.approx(expect, rel=1e-12)
    scale = np.abs(H).max()
    if scale > 0:    # positive semidefinite (eigvalsh on the rescaled matrix: entries ~1e-230)
        assert np.linalg.eigvalsh(H / scale).min() > -1e-8


def test_sigmoid_weights_keep_relative_precision():
    # p (1 - p) for z = 40 is about 4.2e-18: computing 1 - p would give 0
    X = np.array([[40.0], [-40.0]])
    prob = LogisticRegression(X, np.array([1, 0]))
    H = prob.hessian(np.ones(1))
    assert H[0, 0] == pytest.approx(1600 * math.exp(-40) / (1 + math.exp(-40)) ** 2, rel=1e-12)


@pytest.mark.parametrize("K", [2, 3])
def test_smoothness_constants_bound_the_hessian(K):
    X, y = _data(n=40, d=4, K=K)
    prob = LogisticRegression(X, y, l2=0.1)
    rng = np.random.default_rng(0)
    for w in [np.zeros(prob.shape)] + [rng.standard_normal(prob.shape) for _ in range(5)]:
        assert np.linalg.eigvalsh(prob.hessian(w)).max() <= prob.L * (1 + 1e-12)
        for i in range(0, 40, 7):
            assert np.linalg.eigvalsh(prob.hessian(w, [i])).max() <= prob.L_max * (1 + 1e-12)
    if K == 2:   # attained at w = 0, where every p_i = 1/2
        assert np.linalg.eigvalsh(prob.hessian(np.zeros(4))).max() == pytest.approx(prob.L)
    assert prob.mu == 0.1


def test_predict_proba_rows_sum_to_one():
    X, y = _data(n=10, d=3, K=3)
    prob = LogisticRegression(X, y)
    P = prob.predict_proba(np.ones((3, 3)))
    np.testing.assert_allclose(P.sum(1), 1)
    X, y = _data(n=10, d=3, K=2)
    P = LogisticRegression(X, y).predict_proba(np.ones(3))
    assert P.shape == (10, 2)
    np.testing.assert_allclose(P.sum(1), 1)


@pytest.mark.parametrize("kwargs,exc,match", [
    (dict(X=np.array([[1.0, np.nan], [0.0, 1.0]]), y=[0, 1]), ValueError,
     r"NaN or inf \(first at X\[0, 1\]\)"),
    (dict(X=np.array([[1.0, np.inf], [0.0, 1.0]]), y=[0, 1]), ValueError, "NaN or inf"),
    (dict(X=np.ones((2, 2)), y=[0, -1]), ValueError, "labels must be in 0..1"),
    (dict(X=np.ones((2, 2)), y=[0, 3], n_classes=3), ValueError, "labels must be in 0..2; got 3"),
    (dict(X=np.ones((2, 2)), y=[0.0, 0.5]), ValueError, "integer class labels"),
    (dict(X=np.ones((2, 2)), y=["a", "b"]), TypeError, "integer class labels"),
    (dict(X=np.ones((2, 2)), y=[0, 1, 1]), ValueError, r"y must have shape \(2,\)"),
    (dict(X=np.ones(3), y=[0, 1, 1]), ValueError, "2-D"),
    (dict(X=np.ones((2, 2), dtype=int), y=[0, 1]), TypeError, "float32 or float64"),
    (dict(X=np.ones((0, 2)), y=[]), ValueError, "no samples"),
    (dict(X=np.ones((2, 2)), y=[0, 1], l2=-1.0), ValueError, "l2 must be"),
    (dict(X=np.ones((2, 2)), y=[0, 1], l2=float("nan")), ValueError, "l2 must be"),
    (dict(X=np.ones((3, 2)), y=[0, 1, 2], multinomial=False), ValueError, "multinomial=True"),
    (dict(X=np.ones((2, 2)), y=[0, 1], n_classes=1), ValueError, "n_classes"),
])
def test_logistic_regression_rejects_bad_input(kwargs, exc, match):
    with pytest.raises(exc, match=match):
        LogisticRegression(**kwargs)


def test_bad_parameters_and_indices():
    X, y = _data(n=10, d=3, K=3)
    prob = LogisticRegression(X, y)
    with pytest.raises(ValueError, match=r"w must have shape \(3, 3\)"):
        prob.loss(np.zeros(4))
    with pytest.raises(ValueError, match=r"v must have shape"):
        prob.hvp(np.zeros((3, 3)), np.zeros(2))
    with pytest.raises(TypeError, match="float32 or float64"):
        prob.grad(np.zeros((3, 3), dtype=int))
    with pytest.raises(ValueError, match=r"idx must be in 0..9"):
        prob.grad(np.zeros((3, 3)), [0, 10])
    with pytest.raises(ValueError, match="idx must be a 1-D integer array"):
        prob.grad(np.zeros((3, 3)), np.array([0.5]))
    with pytest.raises(ValueError, match="selects no samples"):
        prob.loss(np.zeros((3, 3)), np.array([], dtype=int))


def test_bool_and_integral_float_labels():
    X, _ = _data(n=4, d=2)
    a = LogisticRegression(X, np.array([True, False, True, False]))
    b = LogisticRegression(X, np.array([1.0, 0.0, 1.0, 0.0]))
    assert np.array_equal(a.y, [1, 0, 1, 0]) and np.array_equal(b.y, a.y)


# =============================================================================== quadratics
def test_quadratic():
    A = np.array([[3.0, 1.0], [1.0, 2.0]])
    b = np.array([1.0, -1.0])
    q = Quadratic(A, b, c=0.5)
    w = np.array([0.3, -0.7])
    assert q.loss(w) == pytest.approx(0.5 * w @ A @ w - b @ w + 0.5)
    np.testing.assert_allclose(q.grad(w), ref.fd_grad(q.loss, w), rtol=1e-8)
    np.testing.assert_array_equal(q.hessian(w), A)
    np.testing.assert_allclose(q.minimizer, np.linalg.solve(A, b))
    assert q.L == pytest.approx(np.linalg.eigvalsh(A).max())
    assert q.mu == pytest.approx(np.linalg.eigvalsh(A).min())
    assert q.f_star == pytest.approx(q.loss(q.minimizer))
    np.testing.assert_allclose(q.hvp(w, np.array([1.0, 0.0])), A[:, 0])
    with pytest.raises(ValueError, match="symmetric"):
        Quadratic(np.array([[1.0, 2.0], [0.0, 1.0]]))
    with pytest.raises(ValueError, match="square"):
        Quadratic(np.ones((2, 3)))
    with pytest.raises(ValueError, match="deterministic"):
        q.loss(w, idx=[0])
    assert Quadratic(np.diag([1.0, -1.0])).minimizer is None


def test_ill_conditioned_quadratic():
    q = IllConditionedQuadratic(kappa=50.0, angle=0.3)
    assert q.L / q.mu == pytest.approx(50.0)
    np.testing.assert_allclose(q.minimizer, 0, atol=1e-15)
    assert q.loss(q.init()) > 0
    with pytest.raises(ValueError, match="kappa"):
        IllConditionedQuadratic(kappa=0.5)


@pytest.mark.parametrize("fn", [Rosenbrock(), Rosenbrock(a=2.0, b=10.0), Beale(), Saddle(),
                                IllConditionedQuadratic()])
def test_2d_functions_exact_derivatives(fn):
    rng = np.random.default_rng(0)
    points = [np.array(fn.init(), float)] + [rng.uniform(-1.5, 1.5, 2) for _ in range(4)]
    for w in points:
        np.testing.assert_allclose(fn.grad(w), ref.fd_grad(fn.loss, w), rtol=1e-6, atol=1e-6)
        np.testing.assert_allclose(fn.hessian(w), ref.fd_jacobian(fn.grad, w), rtol=1e-6,
                                   atol=1e-5)
        H = fn.hessian(w)
        assert H.shape == (2, 2) and np.array_equal(H, H.T)
    if fn.minimizer is not None:
        assert fn.loss(fn.minimizer) == pytest.approx(fn.f_star, abs=1e-14)
        np.testing.assert_allclose(fn.grad(fn.minimizer), 0, atol=1e-12)


@pytest.mark.parametrize("fn", [Rosenbrock(), Beale(), Saddle()])
def test_2d_functions_evaluate_on_grids(fn):
    xs, ys = np.meshgrid(np.linspace(-1, 1, 5), np.linspace(-1, 1, 4))
    grid = np.stack([xs, ys])
    F, G = fn.loss(grid), fn.grad(grid)
    assert F.shape == (4, 5) and G.shape == (2, 4, 5)
    assert F[2, 3] == pytest.approx(fn.loss(grid[:, 2, 3]))
    np.testing.assert_allclose(G[:, 1, 4], fn.grad(grid[:, 1, 4]))
    with pytest.raises(ValueError, match=r"shape \(2,\)"):
        fn.hessian(grid)


# ================================================================================ datasets
def test_breast_cancer():
    X, y = load_breast_cancer()
    assert X.shape == (569, 30) and X.dtype == np.float64 and X.flags.c_contiguous
    assert y.dtype == np.int64 and np.bincount(y).tolist() == [212, 357]
    np.testing.assert_allclose(X.mean(0), 0, atol=1e-12)
    np.testing.assert_allclose(X.std(0), 1, rtol=1e-12)
    raw, _ = load_breast_cancer(standardize=False)
    assert raw[0, 0] == 17.99 and len(BREAST_CANCER_FEATURES) == 30
    Xi, _ = load_breast_cancer(intercept=True)
    assert Xi.shape == (569, 31) and np.all(Xi[:, -1] == 1)
    np.testing.assert_array_equal(Xi[:, :30], X)


def test_digits():
    X, y = load_digits()
    assert X.shape == (1797, 64) and X.dtype == np.float64
    assert sorted(set(y.tolist())) == list(range(10))
    raw, _ = load_digits(standardize=False)
    assert raw.min() == 0 and raw.max() == 16
    constant = raw.std(0) == 0
    assert constant.any() and np.all(X[:, constant] == 0)
    np.testing.assert_allclose(X[:, ~constant].std(0), 1, rtol=1e-12)


def test_standardize_does_not_divide_by_zero():
    Z = standardize(np.array([[1.0, 5.0], [3.0, 5.0]]))
    np.testing.assert_array_equal(Z, [[-1.0, 0.0], [1.0, 0.0]])


@pytest.mark.parametrize("work", ["gram", "cholesky"])
def test_linear_algebra_releases_the_gil(work):
    """Another Python thread runs while a large syrk / potrf is in progress.

    With a long switch interval, a thread holding the GIL is not preempted: the counting loop
    (which gives the GIL away at every sleep(0)) could then only run after the worker ends.
    """
    import sys
    import threading
    import time
    rng = np.random.default_rng(0)
    if work == "gram":
        X = rng.standard_normal((20000, 150))
        call = lambda: _linalg.weighted_gram(X, np.ones(len(X)))  # noqa: E731
    else:
        A = rng.standard_normal((500, 500))
        H = A @ A.T + np.eye(500)
        call = lambda: [_linalg.cholesky_solve(H, np.ones(500)) for _ in range(3)]  # noqa: E731
    started = threading.Event()
    seen = threading.Event()
    deadline = time.monotonic() + 2.0      # well under the 5 s switch interval set below

    def worker():
        # Repeat the call until the counting thread has been seen running, or the deadline: on a
        # loaded machine the counting thread may need several calls' time to be scheduled at all.
        started.set()
        while not seen.is_set() and time.monotonic() < deadline:
            call()
    old = sys.getswitchinterval()
    sys.setswitchinterval(5.0)
    try:
        t = threading.Thread(target=worker)
        t.start()
        started.wait()
        count = 0
        while t.is_alive():
            count += 1
            if count > 20:
                seen.set()
            time.sleep(0)
        t.join()
    finally:
        sys.setswitchinterval(old)
    assert count > 20


# ============================================================ regressions found by fuzzing
def test_no_features_has_zero_curvature():
    prob = LogisticRegression(np.ones((3, 0)), [0, 1, 0], l2=0.5)
    assert prob.L == 0.5 and prob.L_max == 0.5
    assert prob.loss(np.zeros(0)) == pytest.approx(math.log(2))
    assert prob.grad(np.zeros(0)).shape == (0,) and prob.hessian(np.zeros(0)).shape == (0, 0)


def test_byte_swapped_arrays_are_read_in_native_order():
    X, y = _data(n=12, d=3)
    native = LogisticRegression(X, y, l2=0.1)
    swapped = LogisticRegression(X.astype(X.dtype.newbyteorder()), y, l2=0.1)
    assert swapped.dtype == np.float64 and swapped.dtype.isnative
    w = np.linspace(-1, 1, 3)
    np.testing.assert_array_equal(swapped.grad(w), native.grad(w))
    assert swapped.L == pytest.approx(native.L, rel=1e-14)
    np.testing.assert_array_equal(native.predict_proba(w, X.astype(X.dtype.newbyteorder())),
                                  native.predict_proba(w))
    # results come back in w's float type, native order
    w32 = w.astype(np.dtype(np.float32).newbyteorder())
    assert native.grad(w32).dtype == np.float32 and Rosenbrock().grad(w32[:2]).dtype == np.float32


def test_multinomial_flag_and_prediction_rows_are_checked():
    X, y = _data(n=6, d=2)
    with pytest.raises(TypeError, match="multinomial must be None, True or False"):
        LogisticRegression(X, y, multinomial="no")
    prob = LogisticRegression(X, y)
    with pytest.raises(ValueError, match=r"X must have shape \(m, 2\)"):
        prob.predict_proba(np.zeros(2), np.ones((4, 3)))


@pytest.mark.parametrize("K", [2, 3])
def test_gradient_keeps_relative_precision_at_large_margins(K):
    """sigma(z) - 1 (and p_y - 1) computed as 1 - p would be 0 or rounding noise at z = 40."""
    X = np.array([[2.0], [-1.0]])
    if K == 2:
        prob = LogisticRegression(X, np.array([1, 0]))
        w = np.array([20.0])                        # margins +40 (label 1) and -20 (label 0)
        expect = (2.0 * -math.exp(-40) / (1 + math.exp(-40))
                  + -1.0 * math.exp(-20) / (1 + math.exp(-20))) / 2
        assert prob.grad(w)[0] == pytest.approx(expect, rel=1e-12, abs=0)
        X = np.array([[2.0]])
        prob = LogisticRegression(X, np.array([1]), n_classes=2)
        assert prob.grad(w)[0] == pytest.approx(-2.0 * math.exp(-40) / (1 + math.exp(-40)),
                                                rel=1e-12, abs=0)
    else:
        prob = LogisticRegression(np.array([[1.0]]), np.array([2]), n_classes=3)
        W = np.array([[0.0], [0.0], [40.0]])        # the true class wins by 40
        e = math.exp(-40)
        # dL/dW_2 = p_2 - 1 = -(p_0 + p_1) = -2 e / (1 + 2 e)
        assert prob.grad(W)[2, 0] == pytest.approx(-2 * e / (1 + 2 * e), rel=1e-12, abs=0)


def test_singular_quadratic_has_no_minimizer():
    # M M^T is singular; its computed smallest eigenvalue is +9e-18 and LU finds no pivot
    M = np.array([[0.0, 0.5], [1.5, 1.0], [0.5, 0.0]])
    q = Quadratic(M @ M.T, np.ones(3))
    assert q.minimizer is None and q.f_star is None and abs(q.mu) < 1e-15


def test_standardize_constant_columns_are_exactly_zero():
    Z = standardize(np.array([[0.1, 1.0], [0.1, 2.0], [0.1, 4.0]]))   # mean of 0.1s is not 0.1
    assert np.all(Z[:, 0] == 0)
    np.testing.assert_allclose(Z[:, 1].std(), 1)
    with pytest.raises(ValueError, match="2-D"):
        standardize(np.ones(4))
    with pytest.raises(TypeError, match="real"):
        standardize(np.ones((2, 2), complex))


def test_loader_flags_must_be_booleans():
    with pytest.raises(TypeError, match="standardize must be True or False"):
        load_breast_cancer(standardize="no")
    with pytest.raises(TypeError, match="intercept must be True or False"):
        load_digits(intercept=1)
    X, _ = load_breast_cancer(standardize=np.False_)
    assert X[0, 0] == 17.99
