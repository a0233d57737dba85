r"""Convergence in terms of computation: many optimizers, one problem, one budget.

:func:`compare` runs gradient descent, SGD with :math:`1/t` steps, minibatch SGD, heavy-ball
momentum, Nesterov momentum, AdaGrad, RMSProp, Adam, AdaDelta, AdaMax, Lion, Schedule-Free AdamW,
SVRG, Newton and L-BFGS on one
logistic-regression problem (by default the breast-cancer data, :func:`default_problem`) for
the same budget of gradient evaluations (counted in samples: ``epochs * n``), and returns
each method's suboptimality :math:`f(w) - f^\star` against gradient evaluations and against
wall time, as plain NumPy arrays. :math:`f^\star` comes from Newton's method run to machine
precision (:func:`solve`).

Each method is a :class:`Method`: a name, a label, a batch size, and a function of the problem
returning the optimizer's hyperparameters (and lr schedule). ``METHODS`` holds the defaults,
chosen by a small grid search (the value with the lowest mean log-suboptimality over a
30-epoch budget, on the standardized breast-cancer data with l2 = 1e-2 and 1e-3 and the
digits data with l2 = 1e-2; see notes/newton.md), so they suit standardized features and
penalties of that order:

=====================  =====  ==================================================================
name                   batch  hyperparameters
=====================  =====  ==================================================================
gd                     all    SGD, lr = 1/L
sgd                    1      SGD, lr_t = lr0 / (1 + t/n), lr0 = 1/(2 L)
minibatch_sgd          32     SGD, lr_t = lr0 / (1 + t/(4 n/32)), lr0 = 2/L
momentum               all    SGD, lr = 1/L, momentum 0.7 (heavy ball)
nesterov               all    SGD, lr = 1/L, momentum 0.7, nesterov
adagrad                32     Adagrad, lr = 0.1
rmsprop                32     RMSprop, lr = 1e-2, alpha = 0.99
adam                   32     Adam, lr = 1e-2 (betas 0.9, 0.999)
adadelta               32     Adadelta, lr = 3.0, rho = 0.9
adamax                 32     Adamax, lr = 3e-2
lion                   32     Lion, lr = 1e-2 (betas 0.9, 0.99)
schedule_free_adamw    32     ScheduleFreeAdamW, lr = 0.1, no warmup and no schedule; measured at
                              the average x (``eval()``)
svrg                   1      SVRG, lr = 1/(4 L), snapshot every epoch (n inner steps)
newton                 all    Newton, lr = 1, Armijo line search
lbfgs                  all    L-BFGS, lr = 1, strong-Wolfe line search (at most 9 trial points),
                              history 10, one iteration per step (each step evaluates at its
                              start, as torch's)
=====================  =====  ==================================================================

(L is ``problem.L``; t counts steps from 0; the 1/t schedules are
:class:`fastopt.schedules.inverse_time`; the lr of Lion and of Schedule-Free AdamW come from
the same grid on the breast-cancer data only.) Pass ``methods=[...]`` with names or your own
:class:`Method` objects to change them.
"""
import math
from dataclasses import dataclass, field
from typing import Callable

import numpy as np

from . import optim
from .schedules import inverse_time
from .train import train

__all__ = ["Method", "Trace", "Comparison", "METHODS", "compare", "solve", "default_problem"]


@dataclass(frozen=True)
class Method:
    """One optimizer configuration: `hyper(problem)` returns the optimizer's keyword arguments
    (``lr`` may be a schedule ``step -> lr``); ``batch_size`` None means full batch."""
    name: str
    label: str
    optimizer: str
    batch_size: int = None
    hyper: Callable = field(default=lambda problem: {}, repr=False)


@dataclass
class Trace:
    """One method's run. Arrays are per record point: grad_evals (sample-gradients), epochs
    (grad_evals / n), hess_evals (sample-Hessians; Newton only, else zeros), time (seconds
    spent optimizing), loss, subopt (loss - f_star; may touch 0 or go slightly negative at
    machine precision: clip before a log plot); w: the final parameters."""
    name: str
    label: str
    grad_evals: np.ndarray
    epochs: np.ndarray
    hess_evals: np.ndarray
    time: np.ndarray
    loss: np.ndarray
    subopt: np.ndarray
    batch_size: int
    hyperparameters: dict
    stop_reason: str
    w: np.ndarray = None


@dataclass
class Comparison:
    """The result of :func:`compare`: f_star, w_star, and one Trace per method (in order)."""
    problem: str
    n_samples: int
    f_star: float
    w_star: np.ndarray
    traces: dict

    def __getitem__(self, name):
        return self.traces[name]

    def names(self):
        return list(self.traces)


def _mb_steps(problem, batch):
    return max(1.0, problem.n_samples / batch)


def _over_L(problem, c, name):
    """c / problem.L, for the methods whose step size is a multiple of 1/L."""
    L = getattr(problem, "L", None)
    if isinstance(L, bool) or not isinstance(L, (int, float)) or not 0 < L < math.inf:
        raise ValueError(f"method {name!r} sets its step from the smoothness constant, which "
                         f"must be a finite number > 0; this problem has L = {L!r}")
    return c / L


METHODS = {m.name: m for m in [
    Method("gd", "gradient descent", "SGD", None, lambda p: dict(lr=_over_L(p, 1.0, "gd"))),
    Method("sgd", "SGD, 1/t steps", "SGD", 1,
           lambda p: dict(lr=inverse_time(_over_L(p, 0.5, "sgd"), decay=1.0 / p.n_samples))),
    Method("minibatch_sgd", "minibatch SGD (32)", "SGD", 32,
           lambda p: dict(lr=inverse_time(_over_L(p, 2.0, "minibatch_sgd"),
                                          decay=1.0 / (4 * _mb_steps(p, 32))))),
    Method("momentum", "momentum (heavy ball)", "SGD", None,
           lambda p: dict(lr=_over_L(p, 1.0, "momentum"), momentum=0.7)),
    Method("nesterov", "Nesterov momentum", "SGD", None,
           lambda p: dict(lr=_over_L(p, 1.0, "nesterov"), momentum=0.7, nesterov=True)),
    Method("adagrad", "AdaGrad", "Adagrad", 32, lambda p: dict(lr=0.1)),
    Method("rmsprop", "RMSProp", "RMSprop", 32, lambda p: dict(lr=1e-2, alpha=0.99)),
    Method("adam", "Adam", "Adam", 32, lambda p: dict(lr=1e-2)),
    Method("adadelta", "AdaDelta", "Adadelta", 32, lambda p: dict(lr=3.0, rho=0.9)),
    Method("adamax", "AdaMax", "Adamax", 32, lambda p: dict(lr=3e-2)),
    Method("lion", "Lion", "Lion", 32, lambda p: dict(lr=1e-2)),
    Method("schedule_free_adamw", "Schedule-Free AdamW", "ScheduleFreeAdamW", 32,
           lambda p: dict(lr=0.1)),
    Method("svrg", "SVRG", "SVRG", 1, lambda p: dict(lr=_over_L(p, 0.25, "svrg"))),
    Method("newton", "Newton", "Newton", None, lambda p: dict(lr=1.0, line_search="armijo")),
    Method("lbfgs", "L-BFGS", "LBFGS", None,
           lambda p: dict(lr=1.0, line_search_fn="strong_wolfe", history_size=10, max_iter=1,
                              max_eval=10)),
]}


def default_problem(l2=1e-2):
    """Binary logistic regression on the standardized breast-cancer data with an intercept
    column (569 samples, 31 weights), penalty `l2`."""
    from .datasets import load_breast_cancer
    from .problems import LogisticRegression
    X, y = load_breast_cancer(intercept=True)
    return LogisticRegression(X, y, l2=l2)


def _check_problem(problem, *needs):
    missing = [a for a in ("n_samples", "shape", "init", "loss", "grad") + needs
               if not hasattr(problem, a)]
    if missing:
        raise TypeError(f"problem must be a fastopt.problems-style problem; a "
                        f"{type(problem).__name__} has no {', '.join(missing)}")


def _loss_grad(problem, w):
    if hasattr(problem, "loss_grad"):
        return problem.loss_grad(w)
    return problem.loss(w), problem.grad(w)


def solve(problem, w0=None, *, max_iter=100):
    """Minimize `problem` with Newton's method (Armijo line search) to machine precision.

    Iterates until the gradient norm stops decreasing for two steps in a row (or is 0), at
    most `max_iter` steps; returns ``(w_star, f_star, grad_norm)`` of the iterate with the
    smallest gradient norm. Meant for smooth strongly convex problems such as L2-regularized
    logistic regression, where f* is then accurate to rounding.
    """
    _check_problem(problem, "hessian")
    if isinstance(max_iter, bool) or not isinstance(max_iter, (int, np.integer)) or max_iter < 0:
        raise ValueError(f"max_iter must be an integer >= 0, got {max_iter!r}")
    w = problem.init() if w0 is None else w0
    if np.asarray(w).dtype.kind not in "biuf":
        raise TypeError(f"w0 must be a real array, got dtype {np.asarray(w).dtype}")
    w = np.array(w, dtype=np.float64, copy=True, order="C")
    opt = optim.Newton([w], line_search="armijo")
    f, g = _loss_grad(problem, w)
    best = (w.copy(), float(f), float(np.linalg.norm(g)))
    stalls = 0
    for _ in range(max_iter):
        if best[2] == 0:
            break
        opt.step([g], [problem.hessian(w)], closure=lambda: problem.loss(w), loss=f)
        f, g = _loss_grad(problem, w)
        gn = float(np.linalg.norm(g))
        if gn < best[2]:
            best, stalls = (w.copy(), float(f), gn), 0
        else:
            stalls += 1
            if stalls >= 2:
                break
    return best


# the optimizer classes (optim.__all__ also holds the base class, a result and warnings)
_OPTIMIZERS = [name for name in optim.__all__ if isinstance(getattr(optim, name), type)
               and hasattr(getattr(optim, name), "step") and name != "Optimizer"]


def _check_method(m):
    if not isinstance(m, Method):
        raise TypeError(f"methods must be names from fastopt.convergence.METHODS or Method "
                        f"objects, got {m!r}")
    if m.optimizer not in _OPTIMIZERS:
        raise ValueError(f"method {m.name!r}: optimizer must be one of {_OPTIMIZERS}, got "
                         f"{m.optimizer!r}")
    b = m.batch_size
    if b is not None and (isinstance(b, bool) or not isinstance(b, (int, np.integer)) or b < 1):
        raise ValueError(f"method {m.name!r}: batch_size must be a positive integer or None, "
                         f"got {b!r}")
    if not callable(m.hyper):
        raise TypeError(f"method {m.name!r}: hyper must be a function of the problem")


def _positive_number(name, value):
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)) \
            or not (0 < value < math.inf):
        raise ValueError(f"{name} must be a finite number > 0, got {value!r}")


def _make(method, problem, w):
    cls = getattr(optim, method.optimizer)
    hyper = dict(method.hyper(problem))
    return cls([w], **hyper), hyper


def _plain(hyper):
    return {k: (repr(v) if callable(v) else v) for k, v in hyper.items()}


def compare(problem=None, methods=None, *, epochs=30, records_per_epoch=10, seed=0,
            f_star=None, newton_iters=20):
    """Run every method in `methods` (names from METHODS or Method objects; default all) on
    `problem` (default :func:`default_problem`) from ``problem.init()`` for ``epochs * n``
    sample-gradient evaluations (at least one step; Newton: at most `newton_iters` passes over
    the data, i.e. iterations of the full-batch method, stopping at machine precision).
    Returns a :class:`Comparison`; f_star is computed by :func:`solve` unless given.
    """
    problem = default_problem() if problem is None else problem
    _check_problem(problem)
    if methods is None:
        methods = list(METHODS.values())
    unknown = [m for m in methods if isinstance(m, str) and m not in METHODS]
    if unknown:
        raise ValueError(f"unknown method(s) {unknown}; choose from {list(METHODS)}")
    methods = [METHODS[m] if isinstance(m, str) else m for m in methods]
    for m in methods:
        _check_method(m)
    _positive_number("epochs", epochs)
    _positive_number("records_per_epoch", records_per_epoch)
    if isinstance(newton_iters, bool) or not isinstance(newton_iters, (int, np.integer)) \
            or newton_iters < 1:
        raise ValueError(f"newton_iters must be a positive integer, got {newton_iters!r}")
    if f_star is not None and (isinstance(f_star, bool)
                               or not isinstance(f_star, (int, float, np.integer, np.floating))
                               or not math.isfinite(f_star)):
        raise ValueError(f"f_star must be a finite number or None, got {f_star!r}")
    n = int(problem.n_samples)
    if f_star is None:
        w_star, f_star, _ = solve(problem)
    else:
        w_star = None
    traces = {}
    for method in methods:
        w = np.ascontiguousarray(problem.init(), dtype=np.float64)
        opt, hyper = _make(method, problem, w)
        batch = n if method.batch_size is None else min(method.batch_size, n)
        steps_per_epoch = -(-n // batch)
        if method.optimizer == "Newton":      # until f reaches f* (to rounding)
            run_epochs, record_every, max_evals, ftol = newton_iters, 1, None, 0.0
        elif method.optimizer == "LBFGS":     # the budget, recorded at every iteration
            run_epochs, record_every = math.ceil(epochs) + 1, 1
            max_evals, ftol = max(1, int(epochs * n)), 0.0
        else:
            run_epochs = math.ceil(epochs) + 1
            record_every = max(1, round(steps_per_epoch / records_per_epoch))
            max_evals, ftol = max(1, int(epochs * n)), None
        hist = train(problem, opt, epochs=run_epochs, batch_size=method.batch_size, seed=seed,
                     record_every=record_every, max_evals=max_evals, ftol=ftol, f_star=f_star,
                     progress=False)
        traces[method.name] = Trace(
            name=method.name, label=method.label, grad_evals=hist.grad_evals,
            epochs=hist.grad_evals / n, hess_evals=hist.hess_evals, time=hist.time,
            loss=hist.loss, subopt=hist.loss - f_star, batch_size=batch,
            hyperparameters=_plain(hyper), stop_reason=hist.stop_reason, w=hist.w)
    return Comparison(problem=repr(problem), n_samples=n, f_star=float(f_star), w_star=w_star,
                      traces=traces)
