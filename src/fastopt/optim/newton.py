"""Newton's method with a Cholesky solve, an identity shift for indefinite Hessians, and an
optional Armijo backtracking line search."""
import math
import warnings
from dataclasses import dataclass, field

import numpy as np

from .._newton import HessianShiftWarning, _check_finite, _check_hessians, _solve
from .._validate import integer, learning_rate, nonneg, open_unit, real
from ._grouped import GroupedOptimizer

__all__ = ["Newton", "NewtonStep", "HessianShiftWarning", "LineSearchWarning"]


class LineSearchWarning(RuntimeWarning):
    """The backtracking line search found no step satisfying the Armijo condition."""


@dataclass
class NewtonStep:
    """What one Newton step did.

    shift: the largest identity shift added to a Hessian (0.0: every Hessian + damping
    factored); shifts: one per parameter; step_size: the line-search multiplier t of the
    direction ``-lr (H + (damping + shift) I)^{-1} g`` (1.0 without a line search, 0.0 when the
    search failed and the parameters were left unchanged); backtracks: trial points rejected;
    decrement: the squared Newton decrement ``g^T (H + (damping + shift) I)^{-1} g`` summed
    over parameters (for a convex loss, half of it estimates f - f*); loss: the closure's value
    at the accepted point (line search only, else None).
    """
    shift: float = 0.0
    shifts: list = field(default_factory=list)
    step_size: float = 1.0
    backtracks: int = 0
    decrement: float = 0.0
    loss: float = None


# ------------------------------------------------------------------------------- rules
def _line_search(name, value):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be None or 'armijo', got {type(value).__name__}")
    if value not in (None, "armijo"):
        raise ValueError(f"{name} must be None or 'armijo', got {value!r}")
    return value


class Newton(GroupedOptimizer):
    r"""Newton's method: a step along :math:`-(H + \delta I)^{-1} g` with a Cholesky solve.

    With learning rate :math:`\gamma` (``lr``), damping :math:`\delta` (``damping``),
    gradient :math:`g_t` and Hessian :math:`H_t` of each parameter (a parameter with p entries
    has a p-by-p Hessian, entries in C order; parameters are solved independently, i.e. a
    block-diagonal Hessian), each step does

    .. math::
        (H_t + (\delta + \tau_t) I)\, d_t = g_t, \qquad
        \theta_t = \theta_{t-1} - s_t\, \gamma\, d_t .

    :math:`\tau_t = 0` when :math:`H_t + \delta I` is positive definite; otherwise the
    smallest of a growing sequence of shifts that makes it factor is used (Nocedal & Wright,
    Algorithm 3.3; details in :func:`fastopt._linalg.cholesky_solve`), a
    :class:`HessianShiftWarning` is issued, and the shift is reported in the returned
    :class:`NewtonStep`. :math:`s_t = 1`, unless ``line_search="armijo"``: then
    :math:`s_t = \beta^k` for the first k with
    :math:`f(\theta_{t-1} - \beta^k \gamma d_t) \le f(\theta_{t-1}) - c_1 \beta^k \gamma\,
    g_t^\top d_t` (``backtrack`` :math:`\beta`, ``c1``), at most ``max_backtracks`` halvings;
    if none is accepted the parameters stay unchanged (:class:`LineSearchWarning`).

    ``step(grads, hessians, closure=None, loss=None)``: the gradients and Hessians at the
    current parameters (stochastic Newton: both on a minibatch); ``closure()`` returns the loss
    at the current parameters (required by the line search; ``loss``, if given, is its value
    before the step and saves one call). Returns a :class:`NewtonStep`.

    Defaults: ``lr=1.0, damping=0.0, line_search=None, c1=1e-4, backtrack=0.5,
    max_backtracks=30``. State: ``step`` and ``shift`` (the last identity shift) per parameter.
    The Hessian is solved in the parameter's dtype (float32 uses LAPACK's ``s*`` routines).

    >>> import numpy as np
    >>> from fastopt.optim import Newton
    >>> w = np.array([1.0, -2.0])
    >>> A = np.array([[2.0, 0.5], [0.5, 1.0]])          # f(w) = w^T A w / 2
    >>> info = Newton([w]).step([A @ w], [A])
    >>> bool(np.abs(w).max() < 1e-15), info.shift
    (True, 0.0)
    """

    DEFAULTS = dict(lr=1.0, damping=0.0, line_search=None, c1=1e-4, backtrack=0.5,
                    max_backtracks=30)
    RULES = dict(lr=learning_rate, damping=nonneg, line_search=_line_search, c1=open_unit,
                 backtrack=open_unit, max_backtracks=integer)
    SCALARS = ("shift",)

    def __init__(self, params, lr=1.0, damping=0.0, *, line_search=None, c1=1e-4,
                 backtrack=0.5, max_backtracks=30):
        super().__init__(params, lr=lr, damping=damping, line_search=line_search, c1=c1,
                         backtrack=backtrack, max_backtracks=max_backtracks)

    @staticmethod
    def _search_settings(snapshots):
        """(c1, backtrack, max_backtracks) of the line search, or None, from the groups'
        validated snapshots."""
        groups = [g for g in snapshots if g["line_search"] == "armijo"]
        if not groups:
            return None
        keys = ("c1", "backtrack", "max_backtracks")
        first = tuple(groups[0][k] for k in keys)
        if len(groups) != len(snapshots) or \
                any(tuple(g[k] for k in keys) != first for g in groups):
            raise ValueError("line_search, c1, backtrack and max_backtracks must be the same in "
                             "every param group (one line search moves all parameters)")
        return first

    def step(self, grads, hessians, closure=None, loss=None):
        """One Newton step; see the class docstring. Returns a :class:`NewtonStep`."""
        with self._lock:
            return self._apply(*self._prepare(grads, hessians, closure, loss))

    def _prepare(self, grads, hessians, closure, loss):
        """Phase 1: check everything the step reads, write nothing. Returns the arguments of
        `_apply`: the parameters, the checked gradients and Hessians, each parameter's
        learning rate and damping, the line-search settings (or None), closure and loss."""
        snapshots = self._snapshots()
        grads = self._check_like_params(grads, "grads")
        params = self._all_params()
        hessians = _check_hessians(params, hessians, "hessians")
        _check_finite(grads, "grads")
        search = self._search_settings([snap for snap, _ in snapshots])
        if search is not None and closure is None:
            raise ValueError("line_search='armijo' needs a closure() that returns the loss")
        if loss is not None:
            loss = real("loss", loss)
        lrs, dampings = [], []
        for (snap, lr), arrays in zip(snapshots, self._planned):
            lrs += [lr] * len(arrays)
            dampings += [float(snap["damping"])] * len(arrays)
        return params, grads, hessians, lrs, dampings, search, closure, loss

    def _apply(self, params, grads, hessians, lrs, dampings, search, closure, loss):
        """Phase 2: solve, move the parameters (along the line search), count the step."""
        xs, shifts, dec = _solve(params, grads, hessians, dampings, stacklevel=4)
        dirs = [(lr * x).astype(p.dtype, copy=False) for lr, x, p in zip(lrs, xs, params)]
        info = NewtonStep(shift=max(shifts, default=0.0), shifts=shifts, decrement=dec)
        if search is None:
            for p, d in zip(params, dirs):
                p -= d
        else:
            self._armijo(params, grads, dirs, closure, loss, search, info)
        for i, s in enumerate(shifts):
            self.state.setdefault(i, {})["shift"] = s
        for rec in self._records:
            rec.step += 1
        return info

    @staticmethod
    def _armijo(params, grads, dirs, closure, f0, search, info):
        c1, beta, max_backtracks = search
        if f0 is None:
            f0 = float(closure())
        slope = -sum(float(np.dot(g.reshape(-1).astype(np.float64), d.reshape(-1)))
                     for g, d in zip(grads, dirs))
        start = [p.copy() for p in params]
        t = 1.0
        try:
            for k in range(max_backtracks + 1):
                for p, p0, d in zip(params, start, dirs):
                    np.subtract(p0, (t * d).astype(p.dtype, copy=False), out=p)
                f = float(closure())
                if math.isfinite(f) and f <= f0 + c1 * t * slope:
                    info.step_size, info.backtracks, info.loss = t, k, f
                    return
                t *= beta
        except BaseException:
            for p, p0 in zip(params, start):
                np.copyto(p, p0)
            raise
        for p, p0 in zip(params, start):
            np.copyto(p, p0)
        info.step_size, info.backtracks, info.loss = 0.0, max_backtracks + 1, f0
        warnings.warn(f"the Armijo line search accepted no step in {max_backtracks + 1} trials; "
                      "parameters unchanged", LineSearchWarning, stacklevel=4)
