r"""Optimization problems with exact derivatives: logistic regression, quadratics, 2-D functions.

Every problem has the same interface, which `fastopt.train` and the second-order optimizers use:

* ``loss(w, idx=None)`` (a Python float), ``grad(w, idx=None)`` (an array shaped like `w`),
  ``hessian(w, idx=None)`` (``(p, p)`` for ``p = w.size``, parameters in C order) and
  ``hvp(w, v, idx=None)`` (Hessian-vector product, shaped like `v`);
* ``n_samples`` (1 for a deterministic function), ``shape`` and ``dtype`` of the parameter,
  ``init()`` (a starting point), and ``L`` (a smoothness constant: ``||hessian|| <= L``
  everywhere, so gradient descent with step ``1/L`` decreases the loss) where one exists.

For finite sums ``f(w) = (1/n) sum_i f_i(w)``, `idx` (an integer array or a slice of sample
indices) selects a minibatch and every method then evaluates ``(1/|B|) sum_{i in B} f_i(w)``
(the penalty is added in full). Deterministic problems accept only ``idx=None``. Results are
returned in `w`'s floating dtype.
"""
import math

import numpy as np

from . import _linalg

__all__ = ["Problem", "LogisticRegression", "Quadratic", "IllConditionedQuadratic",
           "Rosenbrock", "Beale", "Saddle"]


def _float_array(a, name):
    if isinstance(a, np.ndarray):
        if a.dtype.kind != "f" or a.dtype.itemsize not in (4, 8):
            raise TypeError(f"{name} must be a float32 or float64 array, got dtype {a.dtype} "
                            f"(use {name}.astype(np.float64))")
        if not a.dtype.isnative:           # the BLAS products take native byte order only
            a = a.astype(a.dtype.newbyteorder("="))
        return a
    try:
        a = np.asarray(a, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a float32 or float64 array, got "
                        f"{type(a).__name__}") from None
    return a


def _out_dtype(w, default):
    """w's float32/float64 dtype (in native byte order), else `default`."""
    dt = getattr(w, "dtype", None)
    if isinstance(dt, np.dtype) and dt.kind == "f" and dt.itemsize in (4, 8):
        return dt.newbyteorder("=")
    return default


class Problem:
    """Base class: documents the interface; subclasses define loss, grad and hessian."""

    n_samples = 1
    shape = ()
    dtype = np.dtype(np.float64)
    L = None

    @property
    def n_params(self):
        return int(np.prod(self.shape))

    def init(self):
        """The default starting point: zeros (a fresh array)."""
        return np.zeros(self.shape, self.dtype)

    def loss(self, w, idx=None):
        raise NotImplementedError

    def grad(self, w, idx=None):
        raise NotImplementedError

    def hessian(self, w, idx=None):
        raise NotImplementedError

    def hvp(self, w, v, idx=None):
        """Hessian-vector product (from the dense Hessian unless a subclass does better)."""
        v = self._check_w(v, "v")
        H = self.hessian(w, idx)
        return (H @ v.reshape(-1)).reshape(v.shape).astype(_out_dtype(v, self.dtype), copy=False)

    def _check_w(self, w, name="w"):
        w = _float_array(w, name)
        if w.shape != self.shape and w.shape != (self.n_params,):
            raise ValueError(f"{name} must have shape {self.shape} (or ({self.n_params},)), "
                             f"got {w.shape}")
        return w

    def _no_idx(self, idx):
        if idx is not None:
            raise ValueError(f"{type(self).__name__} is a deterministic function; idx must be "
                             f"None, got {type(idx).__name__}")


# =========================================================================== logistic regression
class LogisticRegression(Problem):
    r"""L2-regularized logistic regression, binary (sigmoid) or multinomial (softmax).

    The objective is the mean log-loss plus a ridge penalty,

    .. math::
        f(w) = \frac{1}{n}\sum_{i=1}^n \ell_i(w) + \frac{\lambda}{2}\|w\|^2,

    binary (labels :math:`y_i \in \{0, 1\}`, ``w`` of shape ``(d,)``,
    :math:`z_i = x_i^\top w`, :math:`p_i = \sigma(z_i)`):

    .. math::
        \ell_i = \log(1 + e^{z_i}) - y_i z_i, \quad
        \nabla f = \tfrac1n X^\top (p - y) + \lambda w, \quad
        \nabla^2 f = \tfrac1n X^\top \mathrm{diag}(p_i (1 - p_i)) X + \lambda I;

    multinomial (labels in :math:`0..K-1`, ``W`` of shape ``(K, d)``, :math:`z_i = W x_i`,
    :math:`p_i = \mathrm{softmax}(z_i)`, :math:`Y` the one-hot labels):

    .. math::
        \ell_i = \log\textstyle\sum_k e^{z_{ik}} - z_{i y_i}, \quad
        \nabla f = \tfrac1n (P - Y)^\top X + \lambda W, \quad
        \nabla^2 f = \tfrac1n \textstyle\sum_i (\mathrm{diag}(p_i) - p_i p_i^\top)
        \otimes x_i x_i^\top + \lambda I

    (Hessian rows and columns ordered like ``W.ravel()``, class-major). There is no separate
    intercept: append a column of ones to ``X`` for one (it is then penalized like the other
    weights). Losses use log-sum-exp and never overflow; probabilities, Hessian weights and
    the gradient's residuals :math:`p - y` are computed from :math:`e^{-|z|}` (the true
    class's :math:`p_y - 1` as minus the sum of the other probabilities) so that large
    margins keep full relative precision.

    The smoothness constant is :math:`L = \lambda_{\max}(X^\top X)/(4n) + \lambda` (binary)
    or :math:`\lambda_{\max}(X^\top X)/(2n) + \lambda` (multinomial: the eigenvalues of
    :math:`\mathrm{diag}(p) - p p^\top` are at most 1/2); ``L_max`` is the same bound for the
    worst single sample (the step-size scale of SGD and SVRG), and :math:`\mu = \lambda` is
    the strong-convexity constant.

    Parameters
    ----------
    X : (n, d) float32 or float64 array, finite. Computations run in its dtype (the loss is
        accumulated in float64); results come back in the dtype of the ``w`` passed.
    y : (n,) integer labels (an integer, bool or integral float array).
    l2 : the penalty :math:`\lambda \ge 0`.
    multinomial : force the softmax model (also for two classes); default: softmax when the
        labels have more than two classes (or ``n_classes > 2``).
    n_classes : the number of classes K (default ``max(y) + 1``, at least 2).

    >>> import math, numpy as np
    >>> X = np.array([[1.0, 2.0], [1.0, -1.0], [1.0, 0.5]]); y = np.array([1, 0, 1])
    >>> prob = LogisticRegression(X, y, l2=0.1)
    >>> round(prob.loss(np.zeros(2)), 12) == round(math.log(2), 12)
    True
    """

    def __init__(self, X, y, l2=0.0, *, multinomial=None, n_classes=None):
        X = _float_array(X, "X")
        if X.ndim != 2:
            raise ValueError(f"X must be 2-D (n_samples, n_features), got shape {X.shape}")
        n, d = X.shape
        if n == 0:
            raise ValueError("X has no samples")
        if not np.all(np.isfinite(X)):
            bad = np.argwhere(~np.isfinite(X))[0]
            raise ValueError(f"X contains NaN or inf (first at X[{bad[0]}, {bad[1]}])")
        y = np.asarray(y)
        if y.shape != (n,):
            raise ValueError(f"y must have shape ({n},) to match X {X.shape}, got {y.shape}")
        if y.dtype.kind == "b":
            y = y.astype(np.int64)
        elif y.dtype.kind == "f":
            if not np.all(np.isfinite(y)) or np.any(y != np.round(y)):
                raise ValueError("y must hold integer class labels; got non-integer values")
            y = y.astype(np.int64)
        elif y.dtype.kind not in "iu":
            raise TypeError(f"y must hold integer class labels, got dtype {y.dtype}")
        y = y.astype(np.int64, copy=False)
        if isinstance(l2, bool) or not isinstance(l2, (int, float, np.floating, np.integer)) \
                or not math.isfinite(l2) or l2 < 0:
            raise ValueError(f"l2 must be a finite number >= 0, got {l2!r}")
        if n_classes is None:
            n_classes = max(2, int(y.max()) + 1)
        elif isinstance(n_classes, bool) or not isinstance(n_classes, (int, np.integer)) \
                or n_classes < 2:
            raise ValueError(f"n_classes must be an integer >= 2, got {n_classes!r}")
        n_classes = int(n_classes)
        if multinomial is not None and not isinstance(multinomial, (bool, np.bool_)):
            raise TypeError(f"multinomial must be None, True or False, got {multinomial!r}")
        if y.min() < 0 or y.max() >= n_classes:
            bad = int(y[(y < 0) | (y >= n_classes)][0])
            raise ValueError(f"labels must be in 0..{n_classes - 1}; got {bad}")
        if multinomial is None:
            multinomial = n_classes > 2
        elif n_classes > 2 and not multinomial:
            raise ValueError(f"{n_classes} classes need multinomial=True (binary logistic "
                             "regression takes labels 0 and 1)")
        self.X = np.ascontiguousarray(X)
        self.y = y
        self.l2 = float(l2)
        self.multinomial = bool(multinomial)
        self.n_classes = n_classes
        self.n_samples, self.n_features = n, d
        self.dtype = self.X.dtype
        self.shape = (n_classes, d) if self.multinomial else (d,)
        self._gram_max = None
        self._onehot_cols = None

    # ------------------------------------------------------------------------ constants
    @property
    def mu(self):
        """Strong-convexity constant (the l2 penalty)."""
        return self.l2

    def _curvature(self):
        return 0.5 if self.multinomial else 0.25

    @property
    def L(self):
        """Smoothness constant of the mean loss + penalty (see the class docstring)."""
        if self._gram_max is None:
            G = _linalg.weighted_gram(self.X, np.ones(self.n_samples, self.dtype),
                                      1.0 / self.n_samples)
            # no features (d = 0): the data term is constant, its curvature 0
            self._gram_max = (float(np.linalg.eigvalsh(G.astype(np.float64))[-1])
                              if self.n_features else 0.0)
        return self._curvature() * self._gram_max + self.l2

    @property
    def L_max(self):
        """Largest smoothness constant of a single sample's loss + penalty."""
        sq = np.einsum("ij,ij->i", self.X, self.X, dtype=np.float64)
        return self._curvature() * float(sq.max()) + self.l2

    # ------------------------------------------------------------------------ helpers
    def _rows(self, idx):
        if idx is None:
            return self.X, self.y
        if isinstance(idx, slice):
            Xb, yb = self.X[idx], self.y[idx]
        else:
            idx = np.asarray(idx)
            if idx.ndim != 1 or idx.dtype.kind not in "iu":
                raise ValueError(f"idx must be a 1-D integer array of sample indices or a "
                                 f"slice, got {idx.dtype} array of shape {idx.shape}")
            if idx.size and (idx.min() < 0 or idx.max() >= self.n_samples):
                raise ValueError(f"idx must be in 0..{self.n_samples - 1}, got values in "
                                 f"[{idx.min()}, {idx.max()}]")
            Xb, yb = self.X[idx], self.y[idx]
        if Xb.shape[0] == 0:
            raise ValueError("idx selects no samples")
        return Xb, yb

    def _weights(self, w, name="w"):
        w = self._check_w(w, name)
        return w, np.ascontiguousarray(w.reshape(self.shape), dtype=self.dtype)

    def _scores(self, Xb, W):
        """Margins (binary, (m,)) or logits (multinomial, (m, K)), in float64.

        Products with X go through fastopt._linalg (the BLAS that forms the Hessian), so a
        Newton iteration uses one BLAS thread pool."""
        return _linalg.scores(Xb, W).astype(np.float64, copy=False)

    @staticmethod
    def _sigmoid_parts(z):
        """p = sigmoid(z) and s = p (1 - p), both from e^{-|z|} (no overflow, full precision)."""
        e = np.exp(-np.abs(z))
        inv = 1.0 / (1.0 + e)
        p = np.where(z >= 0, inv, e * inv)
        return p, e * inv * inv

    @staticmethod
    def _sigmoid_residual(z, y):
        """sigma(z) - y for labels in {0, 1}, from e^{-|z|}: 1 - sigma(z) is sigma(-z), so the
        residual of a well-classified sample keeps full relative precision (p - 1 would not)."""
        e = np.exp(-np.abs(z))
        inv = 1.0 / (1.0 + e)
        return np.where(z >= 0, np.where(y == 1, -e * inv, inv), np.where(y == 1, -inv, e * inv))

    @staticmethod
    def _softmax(Z):
        """Row-wise log-sum-exp and probabilities."""
        m = Z.max(axis=1, keepdims=True)
        E = np.exp(Z - m)
        s = E.sum(axis=1, keepdims=True)
        return (m + np.log(s))[:, 0], E / s

    def _forward(self, w, idx):
        """(w checked, W shaped as the model's weights, the selected rows Xb and labels yb,
        their scores z): what the loss, the gradient and the Hessian start from."""
        w, W = self._weights(w)
        Xb, yb = self._rows(idx)
        return w, W, Xb, yb, self._scores(Xb, W)

    def _penalty(self, W):
        return 0.5 * self.l2 * float(np.dot(W.ravel().astype(np.float64),
                                            W.ravel().astype(np.float64)))

    # ------------------------------------------------------------------------ interface
    def loss(self, w, idx=None):
        """Mean log-loss over the selected samples + (l2/2) ||w||^2 (a Python float)."""
        _, W, _, yb, z = self._forward(w, idx)
        if self.multinomial:
            lse, _ = self._softmax(z)
            data = np.mean(lse - z[np.arange(z.shape[0]), yb])
        else:
            data = np.mean(np.logaddexp(0.0, z) - yb * z)
        return float(data) + self._penalty(W)

    def loss_grad(self, w, idx=None):
        """(loss, grad) sharing one pass over the data."""
        w, W, Xb, yb, z = self._forward(w, idx)
        m = Xb.shape[0]
        if self.multinomial:
            lse, P = self._softmax(z)
            loss = float(np.mean(lse - z[np.arange(m), yb]))
            # P - Y: the true class's entry p_y - 1 = -(sum of the others), summed without it
            rows = np.arange(m)
            P[rows, yb] = 0.0
            P[rows, yb] = -P.sum(axis=1)
            G = _linalg.transpose_times(Xb, P, 1.0 / m)
        else:
            loss = float(np.mean(np.logaddexp(0.0, z) - yb * z))
            G = _linalg.transpose_times(Xb, self._sigmoid_residual(z, yb), 1.0 / m)
        G = G.astype(_out_dtype(w, self.dtype), copy=False)
        if self.l2:
            G = G + self.l2 * W.astype(G.dtype, copy=False)
        return loss + self._penalty(W), G.reshape(w.shape)

    def grad(self, w, idx=None):
        """Gradient of :meth:`loss`, shaped and typed like `w`."""
        return self.loss_grad(w, idx)[1]

    def hessian(self, w, idx=None):
        """The (p, p) Hessian, p = w.size (class-major for the multinomial model).

        Formed by fastopt._linalg with BLAS syrk on chunks of scaled rows: no n-by-d
        temporary (a minibatch given by an index array is gathered once).
        """
        w, W, Xb, _, z = self._forward(w, idx)
        m = Xb.shape[0]
        if self.multinomial:
            _, P = self._softmax(z)
            H = _linalg.softmax_gram(Xb, P.astype(self.dtype), 1.0 / m)
        else:
            _, s = self._sigmoid_parts(z)
            H = _linalg.weighted_gram(Xb, s.astype(self.dtype), 1.0 / m)
        if self.l2:
            H[np.diag_indices_from(H)] += self.dtype.type(self.l2)
        return H.astype(_out_dtype(w, self.dtype), copy=False)

    def hvp(self, w, v, idx=None):
        """Hessian-vector product without forming the Hessian (two passes over the data)."""
        w, W = self._weights(w)
        v, V = self._weights(v, "v")
        Xb, _ = self._rows(idx)
        z = self._scores(Xb, W)
        u = self._scores(Xb, V)
        m = Xb.shape[0]
        if self.multinomial:
            _, P = self._softmax(z)
            R = P * u
            R -= P * R.sum(axis=1, keepdims=True)
            out = _linalg.transpose_times(Xb, R, 1.0 / m)
        else:
            _, s = self._sigmoid_parts(z)
            out = _linalg.transpose_times(Xb, s * u, 1.0 / m)
        out = out.astype(_out_dtype(v, self.dtype), copy=False)
        if self.l2:
            out = out + self.l2 * V.astype(out.dtype, copy=False)
        return out.reshape(v.shape)

    def predict_proba(self, w, X=None):
        """Class probabilities for the rows of `X` (default: the training data)."""
        _, W = self._weights(w)
        X = self.X if X is None else _float_array(X, "X")
        if X.ndim != 2 or X.shape[1] != self.n_features:
            raise ValueError(f"X must have shape (m, {self.n_features}), got {X.shape}")
        z = self._scores(X, W)
        if self.multinomial:
            return self._softmax(z)[1]
        p, _ = self._sigmoid_parts(z)
        return np.stack([1 - p, p], axis=1)

    def __repr__(self):
        kind = f"multinomial, K={self.n_classes}" if self.multinomial else "binary"
        return (f"LogisticRegression(n={self.n_samples}, d={self.n_features}, {kind}, "
                f"l2={self.l2:g}, dtype={self.dtype})")


# ================================================================================= quadratics
class Quadratic(Problem):
    r"""A quadratic :math:`f(w) = \tfrac12 w^\top A w - b^\top w + c`.

    :math:`\nabla f = A w - b`, :math:`\nabla^2 f = A`; ``L`` is the largest eigenvalue of
    ``A`` and ``mu`` the smallest. When ``A`` is positive definite (``mu`` above the rounding
    error of the eigenvalues, ``8 d eps L``), ``minimizer`` is :math:`A^{-1} b` and ``f_star``
    the minimum; otherwise both are None.

    `A` must be symmetric and finite (d-by-d), `b` a length-d vector (default zeros).
    """

    def __init__(self, A, b=None, c=0.0):
        A = np.array(_float_array(A, "A"), dtype=np.float64)
        if A.ndim != 2 or A.shape[0] != A.shape[1]:
            raise ValueError(f"A must be a square matrix, got shape {A.shape}")
        if not np.all(np.isfinite(A)):
            raise ValueError("A contains NaN or inf")
        scale = max(1.0, float(np.abs(A).max(initial=0.0)))
        if not np.allclose(A, A.T, rtol=0, atol=1e-12 * scale):
            raise ValueError("A must be symmetric")
        d = A.shape[0]
        b = np.zeros(d) if b is None else np.array(_float_array(b, "b"), dtype=np.float64)
        if b.shape != (d,):
            raise ValueError(f"b must have shape ({d},) to match A {A.shape}, got {b.shape}")
        if not np.all(np.isfinite(b)) or not math.isfinite(c):
            raise ValueError("b and c must be finite")
        self.A, self.b, self.c = 0.5 * (A + A.T), b, float(c)
        self.shape = (d,)
        eig = np.linalg.eigvalsh(self.A) if d else np.zeros(1)
        self.mu, self.L = float(eig[0]), float(eig[-1])
        self.minimizer = self.f_star = None
        # computed eigenvalues are off by about d eps L: a smaller mu may be a singular A
        if self.mu > 8 * d * np.finfo(np.float64).eps * self.L:
            self.minimizer = np.linalg.solve(self.A, self.b)
            self.f_star = self.loss(self.minimizer)

    def loss(self, w, idx=None):
        self._no_idx(idx)
        w = self._check_w(w).reshape(-1).astype(np.float64)
        return float(0.5 * w @ self.A @ w - self.b @ w + self.c)

    def grad(self, w, idx=None):
        self._no_idx(idx)
        w = self._check_w(w)
        g = self.A @ w.reshape(-1).astype(np.float64) - self.b
        return g.astype(_out_dtype(w, self.dtype)).reshape(w.shape)

    def hessian(self, w, idx=None):
        self._no_idx(idx)
        w = self._check_w(w)
        return self.A.astype(_out_dtype(w, self.dtype))

    def __repr__(self):
        return f"Quadratic(d={self.shape[0]}, L={self.L:g}, mu={self.mu:g})"


class IllConditionedQuadratic(Quadratic):
    r"""The 2-D quadratic :math:`f(w) = \tfrac12 w^\top R\,\mathrm{diag}(1, \kappa)\,R^\top w`.

    ``R`` rotates by `angle` (radians), so the valley is not axis-aligned; the minimum is 0 at
    the origin and the condition number is `kappa`. Default start (-4, 2) for trajectories.
    """

    def __init__(self, kappa=25.0, angle=math.pi / 6):
        if not (isinstance(kappa, (int, float)) and math.isfinite(kappa) and kappa >= 1):
            raise ValueError(f"kappa must be a finite number >= 1, got {kappa!r}")
        c, s = math.cos(angle), math.sin(angle)
        R = np.array([[c, -s], [s, c]])
        super().__init__(R @ np.diag([1.0, float(kappa)]) @ R.T)
        self.kappa = float(kappa)
        self.start = np.array([-4.0, 2.0])
        self.bounds = ((-5.0, 5.0), (-5.0, 5.0))

    def init(self):
        return self.start.copy()

    def __repr__(self):
        return f"IllConditionedQuadratic(kappa={self.kappa:g})"


# ============================================================================ 2-D test functions
class _Function2D(Problem):
    """A function of w = (x, y). `loss` and `grad` also take stacked grids of shape (2, ...)."""

    shape = (2,)
    minimizer = None
    f_star = None
    start = None
    bounds = None

    def init(self):
        return np.array(self.start, dtype=np.float64)

    def _xy(self, w, grid=True):
        w = _float_array(w, "w")
        if w.shape[:1] != (2,) or (not grid and w.shape != (2,)):
            expected = "(2,) or (2, ...)" if grid else "(2,)"
            raise ValueError(f"w must have shape {expected}, got {w.shape}")
        return w, w[0].astype(np.float64), w[1].astype(np.float64)

    def loss(self, w, idx=None):
        self._no_idx(idx)
        w, x, y = self._xy(w)
        f = self._f(x, y)
        return float(f) if np.ndim(f) == 0 else f

    def grad(self, w, idx=None):
        self._no_idx(idx)
        w, x, y = self._xy(w)
        return np.stack(np.broadcast_arrays(*self._g(x, y))).astype(_out_dtype(w, np.float64))

    def hessian(self, w, idx=None):
        self._no_idx(idx)
        w, x, y = self._xy(w, grid=False)
        return np.array(self._h(x, y), dtype=_out_dtype(w, np.float64))

    def __repr__(self):
        return f"{type(self).__name__}()"


class Rosenbrock(_Function2D):
    r""":math:`f(x, y) = (a - x)^2 + b (y - x^2)^2`; minimum 0 at :math:`(a, a^2)`.

    A curved, narrow valley: gradient methods zig-zag, Newton follows it. Defaults a=1, b=100,
    start (-1.5, 2).
    """

    def __init__(self, a=1.0, b=100.0):
        self.a, self.b = float(a), float(b)
        self.minimizer = np.array([self.a, self.a ** 2])
        self.f_star = 0.0
        self.start = (-1.5, 2.0)
        self.bounds = ((-2.0, 2.0), (-1.0, 3.0))

    def _f(self, x, y):
        return (self.a - x) ** 2 + self.b * (y - x * x) ** 2

    def _g(self, x, y):
        r = y - x * x
        return -2 * (self.a - x) - 4 * self.b * x * r, 2 * self.b * r

    def _h(self, x, y):
        return [[2 - 4 * self.b * (y - x * x) + 8 * self.b * x * x, -4 * self.b * x],
                [-4 * self.b * x, 2 * self.b]]

    def __repr__(self):
        return f"Rosenbrock(a={self.a:g}, b={self.b:g})"


class Beale(_Function2D):
    r""":math:`f(x, y) = \sum_{k=1}^{3} (c_k - x + x y^k)^2`, :math:`c = (1.5, 2.25, 2.625)`.

    Minimum 0 at (3, 0.5); flat plateaus and steep ridges. Start (1, 1.5).
    """

    C = (1.5, 2.25, 2.625)

    def __init__(self):
        self.minimizer = np.array([3.0, 0.5])
        self.f_star = 0.0
        self.start = (1.0, 1.5)
        self.bounds = ((-4.5, 4.5), (-4.5, 4.5))

    def _f(self, x, y):
        return sum((c - x + x * y ** k) ** 2 for k, c in enumerate(self.C, start=1))

    def _g(self, x, y):
        gx = gy = 0.0
        for k, c in enumerate(self.C, start=1):
            r = c - x + x * y ** k
            gx = gx + 2 * r * (y ** k - 1)
            gy = gy + 2 * r * k * x * y ** (k - 1)
        return gx, gy

    def _h(self, x, y):
        hxx = hxy = hyy = 0.0
        for k, c in enumerate(self.C, start=1):
            r = c - x + x * y ** k
            rx, ry = y ** k - 1, k * x * y ** (k - 1)
            ryy = k * (k - 1) * x * y ** (k - 2) if k >= 2 else 0.0
            rxy = k * y ** (k - 1)
            hxx += 2 * rx * rx
            hxy += 2 * (rx * ry + r * rxy)
            hyy += 2 * (ry * ry + r * ryy)
        return [[hxx, hxy], [hxy, hyy]]


class Saddle(_Function2D):
    r""":math:`f(x, y) = \tfrac12 (x^2 - y^2)`: a saddle point at the origin, unbounded below.

    The Hessian diag(1, -1) is indefinite everywhere: plain Newton jumps to the saddle, while a
    descent method (or Newton with the identity shift of `fastopt.Newton`) moves away from it
    along y. Start (1, 1e-3).
    """

    def __init__(self):
        self.start = (1.0, 1e-3)
        self.bounds = ((-1.5, 1.5), (-1.5, 1.5))

    def _f(self, x, y):
        return 0.5 * (x * x - y * y)

    def _g(self, x, y):
        return x, -y

    def _h(self, x, y):
        return [[1.0, 0.0], [0.0, -1.0]]
