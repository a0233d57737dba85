"""Stochastic variance-reduced gradient (SVRG) for finite sums."""
import numpy as np

from .. import _kernels
from .. import _runners
from .._validate import integer, learning_rate, nonneg
from ._groups import check_groups
from ._grouped import GroupedOptimizer

__all__ = ["SVRG"]


def _snapshot_every(name, value):
    """None (the caller decides) or an integer >= 1."""
    return None if value is None else integer(f"{name} (None or a count)", value, low=1)


class SVRG(GroupedOptimizer):
    r"""SVRG (Johnson & Zhang, 2013): SGD on variance-reduced gradients of a finite sum.

    For :math:`f(\theta) = \frac1n \sum_i f_i(\theta)`, a *snapshot* stores a copy
    :math:`\tilde\theta` of the parameters and the full gradient
    :math:`\tilde\mu = \nabla f(\tilde\theta)`. Each inner step, with minibatch
    :math:`B_t`, learning rate :math:`\gamma` (``lr``) and weight decay :math:`\lambda`
    (``weight_decay``), does

    .. math::
        v_t &= \nabla f_{B_t}(\theta_{t-1}) - \nabla f_{B_t}(\tilde\theta) + \tilde\mu
              + \lambda \theta_{t-1} \\
        \theta_t &= \theta_{t-1} - \gamma v_t

    (:math:`v_t` is an unbiased estimate of :math:`\nabla f(\theta_{t-1})` whose variance
    vanishes as :math:`\theta` and :math:`\tilde\theta` approach the minimizer, so a constant
    step converges linearly on strongly convex problems). The snapshot is refreshed every
    ``snapshot_every`` inner steps with the current iterate (the paper's option I); with
    ``snapshot_every=None`` the caller decides (``fastopt.train`` uses one pass over the data,
    m = n / batch size; the paper suggests m = 2n for convex problems).

    Use: ``opt.snapshot(full_grads)`` (the full gradient at the current parameters), then
    ``opt.step(grads, snapshot_grads)`` with the minibatch gradient at the parameters and at
    ``opt.snapshot_params`` on the same minibatch; ``opt.needs_snapshot`` says when to take a
    new snapshot. The update itself runs in the fused SGD kernel.

    Defaults: ``lr=1e-2, weight_decay=0, snapshot_every=None``. State per parameter:
    ``snapshot`` (:math:`\tilde\theta`), ``full_grad`` (:math:`\tilde\mu`), ``step`` and
    ``since_snapshot`` (inner steps since the snapshot). Reference: R. Johnson and T. Zhang,
    "Accelerating stochastic gradient descent using predictive variance reduction", NeurIPS
    2013.

    >>> import numpy as np
    >>> from fastopt.optim import SVRG
    >>> w = np.array([1.0, -2.0])
    >>> opt = SVRG([w], lr=0.5)
    >>> opt.snapshot([2 * w])                          # full gradient of ||w||^2
    >>> opt.step([2 * w], [2 * opt.snapshot_params[0]])  # same point: v = full gradient
    >>> w
    array([0., 0.])
    """

    DEFAULTS = dict(lr=1e-2, weight_decay=0.0, snapshot_every=None)
    RULES = dict(lr=learning_rate, weight_decay=nonneg, snapshot_every=_snapshot_every)
    BUFFERS = ("snapshot", "full_grad")
    SCALARS = ("since_snapshot",)

    def __init__(self, params, lr=1e-2, weight_decay=0.0, *, snapshot_every=None):
        super().__init__(params, lr=lr, weight_decay=weight_decay, snapshot_every=snapshot_every)
        self._work = [np.empty_like(p) for p in self._all_params()]

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "_work"):
            self._work += [np.empty_like(p) for p in self.param_groups[-1]["params"]]

    # ------------------------------------------------------------------------- snapshots
    @property
    def has_snapshot(self):
        """Whether every parameter has a snapshot."""
        return all("snapshot" in self.state.get(i, {}) for i in range(self.n_params))

    @property
    def snapshot_params(self):
        """The snapshot copies of the parameters (the optimizer's buffers: do not modify)."""
        if not self.has_snapshot:
            raise RuntimeError("SVRG has no snapshot yet; call snapshot(full_grads) first")
        return [self.state[i]["snapshot"] for i in range(self.n_params)]

    @property
    def needs_snapshot(self):
        """True before the first snapshot and after `snapshot_every` inner steps (any group)."""
        if not self.has_snapshot:
            return True
        for group, rec in zip(self.param_groups, self._records):
            m = group["snapshot_every"]
            if m is not None and self.state[rec.offset].get("since_snapshot", 0) >= m:
                return True
        return False

    def snapshot(self, full_grads):
        """Take a snapshot: copy the parameters and store their full gradient `full_grads`."""
        with self._lock:
            check_groups(self.param_groups, self._planned)
            full_grads = self._check_like_params(full_grads, "full_grads")
            for i, (p, g) in enumerate(zip(self._all_params(), full_grads)):
                entry = self.state.setdefault(i, {})
                for name, src in (("snapshot", p), ("full_grad", g)):
                    if name not in entry:
                        entry[name] = np.empty_like(p)
                    np.copyto(entry[name], src)
                entry["since_snapshot"] = 0

    # ------------------------------------------------------------------------------ step
    def step(self, grads, snapshot_grads):
        """One inner step: `grads` at the parameters, `snapshot_grads` at `snapshot_params`,
        both on the same minibatch (lists in parameter order)."""
        with self._lock:
            self._apply(*self._prepare(grads, snapshot_grads))

    def _prepare(self, grads, snapshot_grads):
        """Phase 1: check everything the step reads, write nothing; returns the groups'
        learning rates and snapshots and the checked gradient lists."""
        snapshots = self._snapshots()
        if not self.has_snapshot:
            raise RuntimeError("SVRG needs a snapshot before its first step; call "
                               "snapshot(full_grads)")
        grads = self._check_like_params(grads, "grads")
        snapshot_grads = self._check_like_params(snapshot_grads, "snapshot_grads")
        return snapshots, grads, snapshot_grads

    def _apply(self, snapshots, grads, snapshot_grads):
        """Phase 2: per group, the variance-reduced gradient into the work buffers, then the
        fused SGD kernel; count the step."""
        for (snap, lr), rec in zip(snapshots, self._records):
            off, n = rec.offset, len(rec.plan)
            work = self._work[off:off + n]
            for j in range(n):
                np.subtract(grads[off + j], snapshot_grads[off + j], out=work[j])
                work[j] += self.state[off + j]["full_grad"]
            _runners.sgd(_kernels, rec.plan, work, False, lr, 0.0, 0.0,
                         snap["weight_decay"], False, False, False, "grads")
            rec.step += 1
            for j in range(n):
                self.state[off + j]["since_snapshot"] += 1

    def _check_entries(self, gi, entries):
        have = [all(name in e for name in self.BUFFERS) for e in entries]
        if any(have) and not all(have):
            raise ValueError(f"param_groups[{gi}]: some parameters have a snapshot and others "
                             "do not")

