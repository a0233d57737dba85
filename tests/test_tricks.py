"""Mixup, label smoothing and softmax cross-entropy: exact formulas, statistics, finite
differences, torch golden values (and live torch), validation."""
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from scipy import stats

from fastopt.tricks import mixup, smooth_labels, softmax_cross_entropy

GOLDEN = Path(__file__).parent / "golden" / "cross_entropy.npz"


def onehot(labels, n):
    out = np.zeros((len(labels), n))
    out[np.arange(len(labels)), labels] = 1.0
    return out


# ------------------------------------------------------------------------------------ mixup

@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape", [(5,), (8, 3), (6, 3, 4, 5), (1, 2, 2)])
def test_mixup_is_exact_convex_combination(dtype, shape):
    rng = np.random.default_rng(0)
    x = rng.standard_normal(shape).astype(dtype)
    y = rng.integers(0, 4, shape[0])
    x_before, y_before = x.copy(), y.copy()
    xm, ym, lam, perm = mixup(x, y, 0.4, np.random.default_rng(1), n_classes=4)
    assert isinstance(lam, float) and 0.0 <= lam <= 1.0
    assert sorted(perm.tolist()) == list(range(shape[0]))
    a, b = dtype(lam), dtype(1.0 - lam)
    for i, j in enumerate(perm):
        np.testing.assert_array_equal(xm[i], a * x[i] + b * x[j])  # bitwise
    assert xm.dtype == dtype and xm.shape == x.shape and ym.dtype == dtype
    np.testing.assert_allclose(ym, lam * onehot(y, 4) + (1 - lam) * onehot(y[perm], 4), atol=1e-7)
    np.testing.assert_allclose(ym.sum(axis=1), 1.0, atol=np.finfo(dtype).eps * 2)
    np.testing.assert_array_equal(x, x_before)
    np.testing.assert_array_equal(y, y_before)


def test_mixup_draws_lambda_then_permutation():
    x = np.arange(12.0).reshape(6, 2)
    _, _, lam, perm = mixup(x, np.zeros(6, int), 0.7, np.random.default_rng(42), n_classes=2)
    expected = np.random.default_rng(42)
    assert lam == expected.beta(0.7, 0.7)
    np.testing.assert_array_equal(perm, expected.permutation(6))


def test_mixup_onehot_and_soft_labels():
    rng = np.random.default_rng(3)
    x = rng.random((7, 3))
    labels = rng.integers(0, 5, 7)
    _, y_int, lam, perm = mixup(x, labels, 1.0, np.random.default_rng(4), n_classes=5)
    _, y_hot, lam2, perm2 = mixup(x, onehot(labels, 5), 1.0, np.random.default_rng(4))
    assert lam == lam2 and (perm == perm2).all()
    np.testing.assert_allclose(y_hot, y_int, atol=1e-15)
    soft = rng.random((7, 5))
    soft /= soft.sum(1, keepdims=True)
    _, y_soft, lam, perm = mixup(x, soft, 1.0, np.random.default_rng(5))
    for i, j in enumerate(perm):
        np.testing.assert_array_equal(y_soft[i], lam * soft[i] + (1.0 - lam) * soft[j])
    np.testing.assert_allclose(y_soft.sum(1), 1.0, atol=1e-15)


def test_mixup_non_contiguous_input():
    x = np.random.default_rng(6).random((4, 6, 5)).transpose(2, 0, 1)  # (5, 4, 6), strided
    xm, _, lam, perm = mixup(x, np.zeros(5, int), 2.0, np.random.default_rng(7), n_classes=1)
    np.testing.assert_array_equal(xm, lam * x + (1.0 - lam) * x[perm])
    assert xm.flags.c_contiguous


def test_mixup_allocates_only_outputs():
    x = np.random.default_rng(8).random((64, 3, 32, 32)).astype(np.float32)  # 786 kB
    y = np.random.default_rng(9).integers(0, 10, 64)
    rng = np.random.default_rng(10)
    mixup(x, y, 0.2, rng, n_classes=10)  # warm up imports
    tracemalloc.start()
    try:
        xm, ym, _, _ = mixup(x, y, 0.2, rng, n_classes=10)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    outputs = xm.nbytes + ym.nbytes
    scratch = 65536 * 4  # one chunk of float32
    assert peak <= outputs + scratch + 16384, (peak, outputs)


@pytest.mark.parametrize("alpha", [0.2, 1.0, 4.0])
def test_mixup_lambda_distribution_is_beta(alpha):
    rng = np.random.default_rng(11)
    x = np.zeros((2, 1))
    y = np.zeros(2, int)
    lams = np.array([mixup(x, y, alpha, rng, n_classes=1)[2] for _ in range(3000)])
    # Beta(a, a): mean 1/2, variance 1 / (4 (2a + 1)); the sample mean is within 5 standard errors
    sd = np.sqrt(1.0 / (4.0 * (2.0 * alpha + 1.0)))
    assert abs(lams.mean() - 0.5) < 5 * sd / np.sqrt(lams.size)
    assert abs(lams.var() - sd**2) < 0.15 * sd**2
    assert stats.kstest(lams, stats.beta(alpha, alpha).cdf).pvalue > 1e-3


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(alpha=-0.5), ValueError, "alpha must be a finite number > 0"),
    (dict(alpha=0.0), ValueError, "alpha"),
    (dict(alpha=float("nan")), ValueError, "alpha"),
    (dict(alpha="1"), TypeError, "alpha must be a positive real number"),
    (dict(rng=np.random.RandomState(0)), TypeError, "rng must be a numpy.random.Generator"),
    (dict(rng=0), TypeError, "rng"),
    (dict(x=np.zeros((4, 2), np.int32)), TypeError, "x must be float32 or float64"),
    (dict(x=np.zeros((0, 2))), ValueError, "at least one example"),
    (dict(x=[[0.0]]), TypeError, "x must be a numpy.ndarray"),
    (dict(n_classes=None), ValueError, "n_classes is required"),
    (dict(y=np.array([0, 1, 2, 3])), ValueError, "class indices in [0, 3)"),
    (dict(y=np.array([0, 1, -1, 2])), ValueError, "class indices"),
    (dict(y=np.array([0, 1, 2])), ValueError, "y must have 4 rows"),
    (dict(y=np.zeros((4, 2)), n_classes=3), ValueError, "n_classes=3 does not match"),
    (dict(y=np.zeros((3, 2)), n_classes=None), ValueError, "shape (4, C)"),
    (dict(y=np.zeros(4, bool)), TypeError, "y must hold integer labels"),
    (dict(n_classes=0), ValueError, "n_classes must be >= 1"),
])
def test_mixup_bad_arguments(kwargs, error, words):
    rng = np.random.default_rng(12)
    args = dict(x=np.ones((4, 2)), y=np.array([0, 1, 2, 0]), alpha=0.2, rng=rng, n_classes=3) | kwargs
    state = rng.bit_generator.state
    with pytest.raises(error) as info:
        mixup(args["x"], args["y"], args["alpha"], args["rng"], n_classes=args["n_classes"])
    assert words in str(info.value)
    assert rng.bit_generator.state == state  # nothing drawn


# --------------------------------------------------------------------------- label smoothing

@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5, 0.9])
def test_smooth_labels_lecture(eps):
    y = np.array([0, 3, 2, 3])
    q = smooth_labels(y, 4, eps)
    for i, label in enumerate(y):
        for c in range(4):
            assert q[i, c] == pytest.approx(1 - eps if c == label else eps / 3, abs=1e-15)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-15)


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.5])
def test_smooth_labels_torch(eps):
    y = np.array([1, 0, 4])
    q = smooth_labels(y, 5, eps, variant="torch", dtype=np.float32)
    assert q.dtype == np.float32
    np.testing.assert_allclose(q, (1 - eps) * onehot(y, 5) + eps / 5, atol=1e-7)
    np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-6)


def test_smooth_labels_soft_rows_keep_sum_one():
    rows = np.random.default_rng(13).random((6, 4))
    rows /= rows.sum(1, keepdims=True)
    before = rows.copy()
    for variant in ("lecture", "torch"):
        q = smooth_labels(rows, 4, 0.2, variant=variant)
        np.testing.assert_allclose(q.sum(1), 1.0, atol=1e-15)
    np.testing.assert_allclose(smooth_labels(onehot([2, 0], 4), 4, 0.3), smooth_labels(np.array([2, 0]), 4, 0.3))
    np.testing.assert_array_equal(rows, before)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(eps=1.0), ValueError, "eps must be in [0, 1)"),
    (dict(eps=-0.1), ValueError, "eps must be in [0, 1)"),
    (dict(eps=1.5), ValueError, "eps"),
    (dict(eps=None), TypeError, "eps must be a real number"),
    (dict(variant="pytorch"), ValueError, "variant must be 'lecture' or 'torch'"),
    (dict(n_classes=1), ValueError, "n_classes must be >= 2"),
    (dict(n_classes=2.0), TypeError, "n_classes must be an integer"),
    (dict(y=np.array([0, 3])), ValueError, "class indices in [0, 3)"),
    (dict(y=np.zeros((2, 2))), ValueError, "shape (N, 3)"),
    (dict(y=[0, 1]), TypeError, "y must be a numpy.ndarray"),
    (dict(dtype=np.int64), TypeError, "dtype must be float32 or float64"),
])
def test_smooth_labels_bad_arguments(kwargs, error, words):
    args = dict(y=np.array([0, 2]), n_classes=3, eps=0.1) | kwargs
    with pytest.raises(error) as info:
        smooth_labels(**args)
    assert words in str(info.value)


# ---------------------------------------------------------------------------- cross-entropy

def reference_ce(z, q):
    """-(1/N) sum q log softmax(z), written from the definition (moderate logits only)."""
    log_p = z - np.log(np.sum(np.exp(z), axis=1, keepdims=True))
    return -np.sum(q * log_p) / z.shape[0]


def finite_difference(f, z, h=1e-6):
    grad = np.zeros_like(z)
    for idx in np.ndindex(z.shape):
        zp, zm = z.copy(), z.copy()
        zp[idx] += h
        zm[idx] -= h
        grad[idx] = (f(zp) - f(zm)) / (2 * h)
    return grad


@pytest.mark.parametrize("eps", [0.0, 0.1, 0.35])
@pytest.mark.parametrize("kind", ["hard", "soft", "lecture"])
def test_cross_entropy_loss_and_finite_differences(eps, kind):
    rng = np.random.default_rng(14)
    z = rng.standard_normal((6, 5)) * 2
    labels = rng.integers(0, 5, 6)
    if kind == "hard":
        targets, q = labels, (1 - eps) * onehot(labels, 5) + eps / 5
        smoothing = eps
    elif kind == "soft":
        targets = rng.random((6, 5))  # rows need not sum to 1
        q, smoothing = (1 - eps) * targets + eps / 5, eps
    else:  # the lecture's smoothing, given as soft targets
        targets = smooth_labels(labels, 5, eps)
        q, smoothing = targets, 0.0
    loss, grad = softmax_cross_entropy(z, targets, label_smoothing=smoothing)
    assert loss == pytest.approx(reference_ce(z, q), rel=1e-13)
    fd = finite_difference(lambda w: softmax_cross_entropy(w, targets, smoothing)[0], z)
    np.testing.assert_allclose(grad, fd, rtol=1e-6, atol=1e-9)
    assert grad.shape == z.shape and grad.dtype == z.dtype


def test_cross_entropy_numerically_stable():
    z = np.array([[1000.0, 0.0, -1000.0], [-5e4, -5e4 + 3.0, -5e4 - 1.0], [0.0, 0.0, 0.0]])
    y = np.array([2, 1, 0])
    loss, grad = softmax_cross_entropy(z, y, 0.1)
    assert np.isfinite(loss) and np.isfinite(grad).all()
    shifted_loss, shifted_grad = softmax_cross_entropy(z - z.max(1, keepdims=True) + 7.0, y, 0.1)
    assert loss == pytest.approx(shifted_loss, rel=1e-14)
    np.testing.assert_allclose(grad, shifted_grad, atol=1e-16)
    np.testing.assert_allclose(grad.sum(1), 0.0, atol=1e-15)  # rows of p - q
    # row 0: log p = [0, -1000, -2000] exactly; rows 1, 2 by the definition after a shift
    row0 = 0.9 * 2000 + 0.1 / 3 * (0 + 1000 + 2000)
    rest = reference_ce(z[1:] - z[1:].max(1, keepdims=True), onehot(y[1:], 3) * 0.9 + 0.1 / 3)
    assert loss == pytest.approx((row0 + 2 * rest) / 3, rel=1e-12)


def test_cross_entropy_float32():
    rng = np.random.default_rng(15)
    z = rng.standard_normal((8, 4))
    y = rng.integers(0, 4, 8)
    loss64, grad64 = softmax_cross_entropy(z, y, 0.1)
    loss32, grad32 = softmax_cross_entropy(z.astype(np.float32), y, 0.1)
    assert grad32.dtype == np.float32
    assert loss32 == pytest.approx(loss64, rel=1e-6)
    np.testing.assert_allclose(grad32, grad64, atol=1e-7)


def _golden():
    with np.load(GOLDEN) as f:
        data = {k: f[k] for k in f.files}
    return data, sorted({k.split("/")[0] for k in data if "/" in k})


def test_cross_entropy_matches_torch_golden():
    data, names = _golden()
    assert len(names) == 18
    for name in names:
        loss, grad = softmax_cross_entropy(data[f"{name}/logits"], data[f"{name}/targets"],
                                           float(data[f"{name}/eps"]))
        assert loss == pytest.approx(float(data[f"{name}/loss"]), rel=1e-12, abs=1e-14), name
        np.testing.assert_allclose(grad, data[f"{name}/grad"], rtol=1e-10, atol=1e-15, err_msg=name)


@pytest.mark.torch
@pytest.mark.parametrize("eps", [0.0, 0.2])
def test_cross_entropy_matches_torch_live(eps):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(16)
    z = rng.standard_normal((10, 7)) * 3
    for targets in (rng.integers(0, 7, 10), rng.dirichlet(np.ones(7), 10)):
        zt = torch.tensor(z, requires_grad=True)
        tt = torch.tensor(targets)
        expected = torch.nn.functional.cross_entropy(zt, tt, label_smoothing=eps)
        expected.backward()
        loss, grad = softmax_cross_entropy(z, targets, eps)
        assert loss == pytest.approx(expected.item(), rel=1e-12)
        np.testing.assert_allclose(grad, zt.grad.numpy(), rtol=1e-10, atol=1e-15)


@pytest.mark.parametrize("kwargs, error, words", [
    (dict(label_smoothing=1.0), ValueError, "label_smoothing must be in [0, 1)"),
    (dict(label_smoothing=-0.01), ValueError, "label_smoothing"),
    (dict(logits=np.zeros((3, 4), np.int64)), TypeError, "logits must be float32 or float64"),
    (dict(logits=np.zeros(4)), ValueError, "logits must have shape (N, C)"),
    (dict(logits=[[0.0]]), TypeError, "logits must be a numpy.ndarray"),
    (dict(targets=np.array([0, 1, 4])), ValueError, "class indices in [0, 4)"),
    (dict(targets=np.array([0, 1])), ValueError, "targets must have 3 rows"),
    (dict(targets=np.zeros((3, 3))), ValueError, "logits' shape"),
    (dict(targets=np.zeros(3, bool)), TypeError, "targets must hold integer labels"),
])
def test_cross_entropy_bad_arguments(kwargs, error, words):
    args = dict(logits=np.zeros((3, 4)), targets=np.array([0, 1, 3]), label_smoothing=0.1) | kwargs
    with pytest.raises(error) as info:
        softmax_cross_entropy(**args)
    assert words in str(info.value)
