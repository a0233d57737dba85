"""The training loop: drive an optimizer over a problem and record what it cost.

``train(problem, optimizer, epochs=..., batch_size=...)`` runs epochs of minibatches over a
problem from :mod:`fastopt.problems` (anything with ``n_samples``, ``loss(w, idx)`` and
``grad(w, idx)``; Newton also needs ``hessian(w, idx)``). Each epoch visits the samples once, in
a fresh random order (``shuffle=True``), in batches of ``batch_size`` (the last one may be
smaller): ``batch_size=None`` (the whole set) is gradient descent, 1 is SGD. Per optimizer:

* first-order optimizers (``fastopt.SGD``, ``Adam``, ...): ``step([grad on the batch])``;
* :class:`fastopt.optim.SVRG`: a snapshot (full gradient, n sample-gradients) whenever
  ``opt.needs_snapshot``, or every epoch when its ``snapshot_every`` is None, and
  ``step([grad(w, B)], [grad(snapshot, B)])`` (2|B| sample-gradients) per batch;
* :class:`fastopt.optim.Newton`: gradient and Hessian on the batch (stochastic Newton), or the
  Hessian on a separate random subsample of ``hessian_batch_size`` samples (subsampled Newton;
  every sample when ``hessian_batch_size >= n``);
  the line search, when on, evaluates the loss on the same batch;
* optimizers with train/eval modes (``fastopt.ScheduleFreeAdamW``, ...): put in train mode
  first; every record (and the callback, and the returned ``w``) sees the averaged point x,
  between ``eval()`` and ``train()``, as the Schedule-Free method is evaluated.
* :class:`fastopt.optim.LBFGS`: ``step(closure)`` with a closure returning the loss and
  gradient on the batch (each call counts |B| sample-gradients).

The :class:`History` holds NumPy arrays recorded at the start, every ``record_every`` steps and
at the end: full objective, full gradient norm, gradient evaluations counted in samples (a
full gradient costs n, a batch gradient its size), Hessian and loss evaluations likewise, and
the wall time spent in the optimization itself (the records are not timed). The loop stops
after ``epochs``, or when the full gradient norm is <= ``gtol``, or ``f - f_star <= ftol``,
or ``max_evals`` sample-gradients were spent, or the loss is no longer finite, or
``callback`` returns True. A tqdm progress bar is shown when ``progress=True``, or by default
when tqdm is installed, stderr is a terminal and not under pytest.
"""
import math
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

from .optim.lbfgs import LBFGS
from .optim.newton import Newton
from .optim.svrg import SVRG

__all__ = ["train", "History"]


@dataclass
class History:
    """What `train` recorded (one entry per record point; arrays of equal length).

    step: optimizer steps taken; epoch: passes over the data (steps x batch / n);
    loss: the full objective f(w); grad_norm: ||grad f(w)|| (full batch); grad_evals,
    hess_evals, loss_evals: per-sample evaluations spent so far; time: seconds spent in the
    optimization so far. stop_reason: 'epochs', 'gtol', 'ftol', 'max_evals', 'diverged' or
    'callback'; converged: whether a tolerance was met; w: the final parameters (a copy).
    """
    step: np.ndarray
    epoch: np.ndarray
    loss: np.ndarray
    grad_norm: np.ndarray
    grad_evals: np.ndarray
    hess_evals: np.ndarray
    loss_evals: np.ndarray
    time: np.ndarray
    stop_reason: str = "epochs"
    converged: bool = False
    w: np.ndarray = None
    info: dict = field(default_factory=dict)

    def suboptimality(self, f_star):
        """f(w) - f* at every record."""
        return self.loss - float(f_star)

    def __len__(self):
        return len(self.step)


def _progress_bar(progress, total):
    """A tqdm bar, or None. progress=None: only when interactive and tqdm is installed."""
    auto = progress is None
    if auto:
        progress = sys.stderr.isatty() and "PYTEST_CURRENT_TEST" not in os.environ
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        if auto:
            return None
        raise ImportError('progress=True needs tqdm: pip install "fastopt[plot]" '
                          "(or pip install tqdm)") from None
    return tqdm(total=total, unit="step", leave=False)


def _check_problem(problem):
    missing = [a for a in ("n_samples", "shape", "loss", "grad") if not hasattr(problem, a)]
    if missing:
        raise TypeError(f"problem must have n_samples, shape, loss(w, idx) and grad(w, idx) (see "
                        f"fastopt.problems); a {type(problem).__name__} has no "
                        f"{', '.join(missing)}")


def _the_parameter(optimizer, problem):
    groups = getattr(optimizer, "param_groups", None)
    if not groups:
        raise TypeError(f"optimizer must be a fastopt optimizer, got {type(optimizer).__name__}")
    params = [p for g in groups for p in g["params"]]
    if len(params) != 1:
        raise ValueError(f"train drives an optimizer over one parameter array, this one has "
                         f"{len(params)}")
    w = params[0]
    n_params = int(np.prod(problem.shape))
    if w.shape != tuple(problem.shape) and w.shape != (n_params,):
        raise ValueError(f"the optimizer's parameter has shape {w.shape}; the problem expects "
                         f"{tuple(problem.shape)} (or ({n_params},))")
    return w


def _positive_int(name, value, allow_none=True):
    if value is None and allow_none:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
        raise ValueError(f"{name} must be a positive integer{' or None' if allow_none else ''}, "
                         f"got {value!r}")
    return int(value)


def _nonneg(name, value):
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, (int, float, np.floating)) \
            or not math.isfinite(value) or value < 0:
        raise ValueError(f"{name} must be a finite number >= 0 or None, got {value!r}")
    return float(value)


def _flag(name, value, allow_none=False):
    if value is None and allow_none:
        return None
    if not isinstance(value, (bool, np.bool_)):
        raise TypeError(f"{name} must be True or False{' or None' if allow_none else ''}, "
                        f"got {value!r}")
    return bool(value)


def train(problem, optimizer, *, epochs=10, batch_size=None, shuffle=True, seed=0,
          schedule=None, gtol=None, ftol=None, f_star=None, max_evals=None,
          record_every=None, hessian_batch_size=None, progress=None, callback=None):
    """Run `optimizer` on `problem`; returns a :class:`History` (see the module docstring).

    The optimizer must hold exactly one parameter array, shaped like ``problem.shape`` (or
    flat); it is updated in place. ``schedule`` (a callable step -> lr), if given, replaces
    the lr of every param group. ``record_every`` defaults to about ten records per epoch
    (every step for full-batch methods). ``callback(record)`` gets a dict of the latest record
    (and ``w``) and may return True to stop.
    """
    _check_problem(problem)
    n = int(problem.n_samples)
    epochs = _positive_int("epochs", epochs, allow_none=False)
    batch = _positive_int("batch_size", batch_size)
    batch = n if batch is None else min(batch, n)
    hbatch = _positive_int("hessian_batch_size", hessian_batch_size)
    max_evals = _positive_int("max_evals", max_evals)
    gtol, ftol = _nonneg("gtol", gtol), _nonneg("ftol", ftol)
    if ftol is not None and f_star is None:
        raise ValueError("ftol needs f_star (the optimal value)")
    if f_star is not None:
        if isinstance(f_star, bool) or not isinstance(f_star, (int, float, np.integer, np.floating)) \
                or not math.isfinite(f_star):
            raise ValueError(f"f_star must be a finite number or None, got {f_star!r}")
        f_star = float(f_star)
    shuffle = _flag("shuffle", shuffle)
    progress = _flag("progress", progress, allow_none=True)
    if callback is not None and not callable(callback):
        raise TypeError("callback must be callable")
    if schedule is not None and not callable(schedule):
        raise TypeError("schedule must be a callable step -> lr")
    steps_per_epoch = -(-n // batch)
    record_every = _positive_int("record_every", record_every) or max(1, steps_per_epoch // 10)
    w = _the_parameter(optimizer, problem)
    is_newton, is_svrg = isinstance(optimizer, Newton), isinstance(optimizer, SVRG)
    is_lbfgs = isinstance(optimizer, LBFGS)
    if hbatch is not None and not is_newton:
        raise ValueError("hessian_batch_size applies to fastopt.Newton only")
    if is_newton and not hasattr(problem, "hessian"):
        raise TypeError(f"fastopt.Newton needs problem.hessian(w, idx); a "
                        f"{type(problem).__name__} has none")
    rng = np.random.default_rng(seed)
    # every argument is checked: from here on the optimizer may change
    if schedule is not None:
        for group in optimizer.param_groups:
            group["lr"] = schedule
    full = batch >= n

    rec = {k: [] for k in ("step", "epoch", "loss", "grad_norm", "grad_evals", "hess_evals",
                           "loss_evals", "time")}
    counts = dict(step=0, grad_evals=0, hess_evals=0, loss_evals=0)
    clock = [0.0]
    since_snapshot = [0]

    def record():
        if modes:               # Schedule-Free: measure (and hand the callback) the average x
            optimizer.eval()
        try:
            return measure()
        finally:
            if modes:
                optimizer.train()

    def measure():
        if hasattr(problem, "loss_grad"):
            f, g = problem.loss_grad(w)
        else:
            f, g = problem.loss(w), problem.grad(w)
        gn = float(np.linalg.norm(np.asarray(g, dtype=np.float64)))
        for key, value in (("step", counts["step"]), ("grad_evals", counts["grad_evals"]),
                           ("hess_evals", counts["hess_evals"]),
                           ("loss_evals", counts["loss_evals"])):
            rec[key].append(value)
        rec["epoch"].append(counts["step"] * batch / n if not full else counts["step"])
        rec["loss"].append(float(f))
        rec["grad_norm"].append(gn)
        rec["time"].append(clock[0])
        if not (math.isfinite(f) and math.isfinite(gn)):
            return "diverged"
        if gtol is not None and gn <= gtol:
            return "gtol"
        if ftol is not None and f - f_star <= ftol:
            return "ftol"
        if callback is not None and callback({**{k: v[-1] for k, v in rec.items()}, "w": w}):
            return "callback"
        return None

    def one_step(idx):
        m = n if idx is None else len(idx)
        if is_svrg:
            snapshot_every = optimizer.param_groups[0]["snapshot_every"]
            if optimizer.needs_snapshot or (snapshot_every is None
                                            and since_snapshot[0] >= steps_per_epoch):
                optimizer.snapshot([problem.grad(w)])
                counts["grad_evals"] += n
                since_snapshot[0] = 0
            g = problem.grad(w, idx)
            gs = problem.grad(optimizer.snapshot_params[0], idx)
            optimizer.step([g], [gs])
            counts["grad_evals"] += 2 * m
            since_snapshot[0] += 1
        elif is_newton:
            if hasattr(problem, "loss_grad"):
                f0, g = problem.loss_grad(w, idx)
            else:
                f0, g = problem.loss(w, idx), problem.grad(w, idx)
            hidx = idx
            if hbatch is not None:      # a subsample of hbatch samples (all of them if >= n)
                hidx = np.sort(rng.choice(n, size=hbatch, replace=False)) if hbatch < n else None
            H = problem.hessian(w, hidx)
            counts["grad_evals"] += m
            counts["hess_evals"] += n if hidx is None else len(hidx)

            def closure():
                counts["loss_evals"] += m
                return problem.loss(w, idx)
            optimizer.step([g], [H], closure=closure, loss=f0)
        elif is_lbfgs:
            def closure():
                counts["grad_evals"] += m
                if hasattr(problem, "loss_grad"):
                    f, g = problem.loss_grad(w, idx)
                else:
                    f, g = problem.loss(w, idx), problem.grad(w, idx)
                return float(f), [g]
            optimizer.step(closure)
        else:
            optimizer.step([problem.grad(w, idx)])
            counts["grad_evals"] += m
        counts["step"] += 1

    modes = callable(getattr(optimizer, "eval", None)) and callable(
        getattr(optimizer, "train", None))
    if modes:
        optimizer.train()
    reason = record()
    bar = _progress_bar(progress, epochs * steps_per_epoch) if reason is None else None
    try:
        epoch = 0
        while reason is None and epoch < epochs:
            order = rng.permutation(n) if (shuffle and not full) else None
            for start in range(0, n, batch):
                if full:
                    idx = None
                elif order is not None:
                    idx = np.sort(order[start:start + batch])
                else:
                    idx = np.arange(start, min(start + batch, n))
                t0 = time.perf_counter()
                one_step(idx)
                clock[0] += time.perf_counter() - t0
                if bar is not None:
                    bar.update(1)
                if max_evals is not None and counts["grad_evals"] >= max_evals:
                    reason = record() or "max_evals"
                    break
                if counts["step"] % record_every == 0:
                    reason = record()
                    if bar is not None:
                        bar.set_postfix(loss=f"{rec['loss'][-1]:.6g}", refresh=False)
                    if reason is not None:
                        break
            epoch += 1
        if reason is None:
            reason = "epochs"
            if rec["step"][-1] != counts["step"]:
                reason = record() or "epochs"
    finally:
        if bar is not None:
            bar.close()
    if modes:                   # the result is the average x; the optimizer stays in train mode
        optimizer.eval()
        final = np.array(w, copy=True)
        optimizer.train()
    else:
        final = np.array(w, copy=True)
    ints = ("step", "grad_evals", "hess_evals", "loss_evals")
    arrays = {k: np.asarray(v, dtype=np.int64 if k in ints else np.float64)
              for k, v in rec.items()}
    return History(**arrays, stop_reason=reason, converged=reason in ("gtol", "ftol"),
                   w=final,
                   info=dict(batch_size=batch, n_samples=n, steps_per_epoch=steps_per_epoch))
