"""The base of the optimizers outside the first-order registry (Newton, SVRG, Muon, Adafactor,
SparseAdam, LBFGS): what their state is.

Design note
-----------
Newton and SVRG take more than one list of arrays per step, so they do not fit the registry's
``step(grads)`` runner; everything else is the core every optimizer shares
(`fastopt.optim._core.OptimizerCore`: param groups, hyperparameters declared as ``DEFAULTS``
and ``RULES``, schedules, torch's state_dict layout, every check before any write). What is
theirs: NumPy parameters, checked by a `fastopt._kernels.Plan` each (Muon, Adafactor and
SparseAdam also take CuPy arrays, checked by a `fastopt.cuda.Plan`), and state held in
`state` as plain per-parameter entries (``BUFFERS``: arrays, ``SCALARS``: floats), not in
kernel plans; `_check_like_params` checks the extra per-parameter lists a step takes.

A step first calls `_snapshots` (the groups still the planned ones, one validated copy of each
group's values with its learning rate) and runs with those only, so a value written into a
group meanwhile (another thread) is seen next step, never by half of this one.
"""
import numpy as np

from .. import _kernels
from ._core import OptimizerCore

__all__ = ["GroupedOptimizer"]


def _to_device(host, like):
    """A new CuPy array holding `host` (NumPy) on the device of CuPy array `like`."""
    from ..cuda import require_cupy
    cp = require_cupy()
    with cp.cuda.Device(like.device.id):
        return cp.asarray(np.ascontiguousarray(host))


def _all_finite(plan, grads, device):
    """Whether every element of `grads` is finite (NumPy: fastopt._kernels' parallel
    read-only pass over a plan's gradients, or NumPy's check without a plan; CuPy: one
    reduction per array)."""
    if not device:
        if plan is None:
            return all(bool(np.isfinite(g).all()) for g in grads)
        return _kernels.all_finite(plan, grads)
    from ..cuda import require_cupy
    cp = require_cupy()
    return all(bool(cp.all(cp.isfinite(g))) for g in grads)


class GroupedOptimizer(OptimizerCore):
    """Base of Newton and SVRG (see the module docstring)."""

    def _plan_for(self, params, offset):
        for p in params:
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{type(self).__name__} takes numpy.ndarray parameters, got "
                                f"{type(p).__module__}.{type(p).__name__}")
        return _kernels, _kernels.Plan(params, "params", offset)

    @property
    def n_params(self):
        """Number of parameter arrays over all groups."""
        return sum(len(g["params"]) for g in self.param_groups)

    def _as_list(self, arrays, name):
        if isinstance(arrays, np.ndarray):
            arrays = [arrays]
        if not isinstance(arrays, (list, tuple)):
            raise TypeError(f"{name} must be a list of arrays (one per parameter), got "
                            f"{type(arrays).__name__}")
        if len(arrays) != self.n_params:
            raise ValueError(f"{name} has {len(arrays)} arrays but the optimizer has "
                             f"{self.n_params} parameters")
        return list(arrays)

    def _check_like_params(self, arrays, name):
        """Check a list of per-parameter arrays (dtype, shape, layout) without keeping them."""
        arrays = self._as_list(arrays, name)
        for rec in self._records:
            rec.plan.check_grads(arrays[rec.offset:rec.offset + len(rec.plan)], name)
        if len(self._records) > 1 and self._records[0].mod is _kernels:
            # each plan checked its own group; now across groups (NumPy: CuPy plans check
            # their own group only, as the first-order optimizers' do)
            _kernels.check_grads_disjoint([rec.plan for rec in self._records], arrays, name)
        return arrays

    def _finite_gate(self, grads, nonfinite):
        """With ``nonfinite="skip"|"raise"``, whether to go on with a step whose (checked)
        `grads` may hold NaN/Inf: False to skip, ValueError to raise, True when all are
        finite (a read-only pass: NumPy fastopt._kernels', CuPy one reduction per array)."""
        if nonfinite == "ignore":
            return True
        device = self._records[0].mod is not _kernels
        for rec in self._records:
            sl = grads[rec.offset:rec.offset + len(rec.plan)]
            if not _all_finite(rec.plan, sl, device):
                if nonfinite == "skip":
                    return False
                bad = next(rec.offset + j for j, g in enumerate(sl)
                           if not _all_finite(None, [g], device))
                raise ValueError(f"grads[{bad}] contains NaN or Inf; nothing was updated "
                                 "(nonfinite='raise')")
        return True

    # --------------------------------------------------------------------------- state dict
    def _plan_state(self, gi, ids, hyper, entries):
        """A group's saved state: one step count (a parameter without an entry counts 0),
        ``SCALARS`` and ``BUFFERS`` per parameter."""
        entries = [e or {} for e in entries]
        step = self._saved_step(gi, ids, [e.get("step", 0) for e in entries])
        entries = [self._saved_entry(i, e, p)
                   for i, e, p in zip(ids, entries, self.param_groups[gi]["params"])]
        self._check_entries(gi, entries)
        return step, entries

    def _check_entries(self, gi, entries):
        """Hook for subclasses: cross-entry consistency of one group's loaded state."""

    def _load_state(self, rec, group, entries):
        for j, (p, entry) in enumerate(zip(group["params"], entries)):
            mine = self.state.setdefault(rec.offset + j, {})
            for name in self.SCALARS:
                if name in entry:
                    mine[name] = float(entry[name])
                else:
                    mine.pop(name, None)
            for name in self.BUFFERS:
                if name in entry and not isinstance(p, np.ndarray):      # CuPy
                    from ..cuda import to_numpy
                    host = np.asarray(to_numpy(entry[name]), dtype=p.dtype).reshape(p.shape)
                    mine[name] = _to_device(host, p)
                elif name in entry:
                    buf = mine.get(name)
                    if buf is None:
                        buf = np.empty_like(p)
                    np.copyto(buf, np.asarray(entry[name]), casting="unsafe")
                    mine[name] = buf
                else:
                    mine.pop(name, None)
            if not mine:
                del self.state[rec.offset + j]
