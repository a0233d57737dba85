"""Param groups, state and state_dict for optimizers outside the first-order registry.

Design note
-----------
Newton and SVRG take more than one gradient list per step, so they do not fit the registry's
``step(grads)`` runner, but they keep the conventions of :class:`fastopt.optim.Optimizer`:
params as a list of arrays or of group dicts (hyperparameters per group, mutable through
``param_groups``), parameters checked by a kernel plan (float32/float64, C-contiguous,
writable, none passed twice), ``lr`` a number or a schedule ``step -> lr``, state keyed by the
parameter's global index, torch's ``state_dict`` layout, and every check before any write.
A subclass declares ``DEFAULTS`` (hyperparameters), ``RULES`` (name -> rule(name, value),
returning the plain value to store, as the rules of fastopt._validate),
``BUFFERS`` (names of per-parameter state arrays) and ``SCALARS`` (names of per-parameter
state floats besides ``step``).

A step first checks that `param_groups` still holds the planned groups
(`fastopt.optim._groups`), then takes one validated snapshot of every group's values
(`_snapshots`, with the scheduled learning rates) and runs with those only, so a value written
into a group meanwhile (another thread) is seen next step, never by half of this one.
"""
import copy
import threading

import numpy as np

from .. import _kernels, _validate
from ._groups import check_groups, store_plain
from ._state_dict import saved_groups
from .base import Optimizer, _address_range

__all__ = ["GroupedOptimizer"]


class GroupedOptimizer:
    """Base of Newton and SVRG (see the module docstring)."""

    DEFAULTS = {}
    RULES = {}
    BUFFERS = ()
    SCALARS = ()

    def __init__(self, params, **hyperparameters):
        self.defaults = {**self.DEFAULTS, **hyperparameters}
        self.param_groups = []
        self.state = {}
        self._planned = []     # per group, the tuple of its arrays (see _groups.check_groups)
        self._plans = []
        self._steps = []
        self._lock = threading.Lock()
        for group in Optimizer._normalize(params):
            self.add_param_group(group)

    # ------------------------------------------------------------------------- groups
    def _validate(self, group):
        """Check a group's hyperparameters; returns them as plain Python values."""
        values = {}
        for key, rule in self.RULES.items():
            if key not in group:
                raise ValueError(f"param group is missing the hyperparameter {key!r}")
            values[key] = rule(key, group[key])
        return values

    def add_param_group(self, param_group):
        """Add a group (a dict with 'params' and optional hyperparameter overrides)."""
        if not isinstance(param_group, dict) or "params" not in param_group:
            raise TypeError("a param group must be a dict with a 'params' key")
        check_groups(self.param_groups, self._planned)
        group = dict(param_group)
        params = group["params"]
        if hasattr(params, "__array_interface__") or hasattr(params, "__cuda_array_interface__"):
            params = [params]
        params = list(params)
        if not params:
            raise ValueError(f"param group {len(self.param_groups)} has no parameters")
        for p in params:
            if not isinstance(p, np.ndarray):
                raise TypeError(f"{type(self).__name__} takes numpy.ndarray parameters, got "
                                f"{type(p).__module__}.{type(p).__name__}")
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.update(self._validate(group))       # stored as plain Python values
        offset = self.n_params
        plan = _kernels.Plan(params, "params", offset)
        spans = [(*_address_range(p), i) for i, p in enumerate(self._all_params()) if p.nbytes]
        spans += [(*_address_range(p), offset + j) for j, p in enumerate(params) if p.nbytes]
        spans.sort()
        for (s0, e0, i0), (s1, e1, i1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise ValueError(f"params[{max(i0, i1)}] shares memory with params[{min(i0, i1)}]; "
                                 "pass each parameter once")
        group["params"] = params
        self.param_groups.append(group)
        self._planned.append(tuple(params))
        self._plans.append(plan)
        self._steps.append(0)

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    @property
    def n_params(self):
        """Number of parameter arrays over all groups."""
        return sum(len(g["params"]) for g in self.param_groups)

    def _offsets(self):
        out, k = [], 0
        for g in self.param_groups:
            out.append(k)
            k += len(g["params"])
        return out

    def _snapshots(self):
        """The prepare phase's view of the groups: after checking that `param_groups` holds the
        planned groups, one validated copy of each group's values (plain Python values) with its
        learning rate for this step, ``[(snapshot, lr), ...]``. Called before anything is
        written; the step then reads only these copies."""
        check_groups(self.param_groups, self._planned)
        out = []
        for gi, group in enumerate(self.param_groups):
            snap = dict(group)
            seen = tuple(snap.values())
            try:
                snap.update(self._validate(snap))
            except (TypeError, ValueError) as e:
                raise type(e)(f"param_groups[{gi}]: {e}") from None
            store_plain(group, snap, seen)
            lr = snap["lr"]
            if callable(lr):
                lr = _validate.scheduled_lr(lr(self._steps[gi]), self._steps[gi])
            out.append((snap, lr))
        return out

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
        for off, plan in zip(self._offsets(), self._plans):
            plan.check_grads(arrays[off:off + len(plan)], name)
        if len(self._plans) > 1:      # each plan checked its own group; now across groups
            _kernels.check_grads_disjoint(self._plans, arrays, name)
        return arrays

    # --------------------------------------------------------------------------- state dict
    def state_dict(self):
        """Copy of the state: {'state': {i: {'step': float, ...}}, 'param_groups': [...]}."""
        with self._lock:
            check_groups(self.param_groups, self._planned)
            state, groups = {}, []
            for gi, (group, off) in enumerate(zip(self.param_groups, self._offsets())):
                n = len(group["params"])
                for i in range(off, off + n):
                    entry = self.state.get(i, {})
                    if self._steps[gi] > 0 or entry:
                        out = {"step": float(self._steps[gi])}
                        for name in self.SCALARS:
                            if name in entry:
                                out[name] = float(entry[name])
                        for name in self.BUFFERS:
                            if name in entry:
                                out[name] = entry[name].copy()
                        state[i] = out
                hyper = {k: (copy.deepcopy(v) if not callable(v) else v)
                         for k, v in group.items() if k != "params"}
                hyper["params"] = list(range(off, off + n))
                groups.append(hyper)
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict from `state_dict()`; checks everything first, then copies."""
        with self._lock:
            check_groups(self.param_groups, self._planned)
            plan = self._plan_load(state_dict)
            for gi, (hyper, steps, entries) in enumerate(plan):
                group, off = self.param_groups[gi], self._offsets()[gi]
                for key in list(group):
                    if key != "params" and key not in hyper:
                        del group[key]
                group.update(hyper)
                self._steps[gi] = steps
                for j, (p, entry) in enumerate(zip(group["params"], entries)):
                    mine = self.state.setdefault(off + j, {})
                    for name in self.SCALARS:
                        if name in entry:
                            mine[name] = float(entry[name])
                        else:
                            mine.pop(name, None)
                    for name in self.BUFFERS:
                        if name in entry:
                            buf = mine.get(name)
                            if buf is None:
                                buf = np.empty_like(p)
                            np.copyto(buf, np.asarray(entry[name]), casting="unsafe")
                            mine[name] = buf
                        else:
                            mine.pop(name, None)
                    if not mine:
                        del self.state[off + j]
            self._after_load()

    def _after_load(self):
        """Hook for subclasses (state derived from the loaded buffers)."""

    def _plan_load(self, sd):
        plan = []
        for gi, ids, hyper, entries in saved_groups(sd, self.param_groups):
            group = self.param_groups[gi]
            hyper = {**self.defaults, **hyper}
            try:
                hyper.update(self._validate(hyper))
            except (TypeError, ValueError) as e:
                raise type(e)(f"param_groups[{gi}]: {e}") from None
            entries = [e or {} for e in entries]
            steps = {_validate.whole(f"state[{i}]['step']", e.get("step", 0))
                     for i, e in zip(ids, entries)}
            if len(steps) != 1:
                raise ValueError(f"param_groups[{gi}]: parameters have different step counts "
                                 f"{sorted(steps)}; fastopt keeps one per group")
            step = steps.pop()
            for i, e, p in zip(ids, entries, group["params"]):
                for name, value in e.items():
                    if name == "step":
                        continue
                    if name in self.SCALARS:
                        _validate.real(f"state[{i}][{name!r}]", value)
                        continue
                    if name not in self.BUFFERS:
                        raise ValueError(f"state[{i}] has unknown entry {name!r}; "
                                         f"{type(self).__name__} keeps "
                                         f"{list(self.BUFFERS) + list(self.SCALARS)}")
                    shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
                    if shape is None or tuple(shape) != p.shape:
                        raise ValueError(f"state[{i}][{name!r}] has shape {shape}, expected "
                                         f"{p.shape}")
                    if dtype is None or np.dtype(dtype).kind != "f":
                        raise TypeError(f"state[{i}][{name!r}] must be a floating array, got "
                                        f"dtype {dtype}")
            self._check_entries(gi, entries)
            plan.append((hyper, int(step), entries))
        return plan

    def _check_entries(self, gi, entries):
        """Hook for subclasses: cross-entry consistency of one group's loaded state."""

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
