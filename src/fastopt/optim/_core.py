"""The core every stateful optimizer derives from: param groups, hyperparameters, schedules,
state_dict.

Design note
-----------
`OptimizerCore` holds what the first-order optimizers (`fastopt.optim.base.Optimizer`) and
the second-order family (`fastopt.optim._grouped`: Newton, SVRG) share, written once:

* param groups: ``params`` as a list of arrays or of group dicts (`normalize_params`,
  `group_params`), `add_param_group` with its checks (the groups still the planned ones,
  `fastopt.optim._groups.check_groups`; one kind of array; no parameter passed twice), the
  defaults filled in and the hyperparameters validated and stored as plain Python values;
* one record per group (`GroupRecord`): the kernel plan of its arrays, its step count, and
  the last validated snapshot of its values (`_validated`: a step re-validates only groups
  whose values were replaced, as `fastopt.optim._groups.store_plain` describes);
* ``lr`` a number or a schedule ``step -> lr`` (`_group_values`);
* `state_dict` (torch's layout: state keyed by the parameter's position over all groups,
  ``'step'`` as a float, then the per-parameter scalars, then copies of the buffers) and the
  skeleton of `load_state_dict`: check the layout and every group's hyperparameters and step
  counts first (`_plan_load`), then write.

What a family declares: ``DEFAULTS`` (hyperparameter -> default), ``RULES`` (hyperparameter ->
rule(name, value) returning the plain value, the rules of `fastopt._validate`), ``BUFFERS``
(per-parameter state arrays) and ``SCALARS`` (per-parameter state floats besides ``'step'``),
as attributes; and the parts that really differ: how a group is planned (`_plan_for`), which
state an option needs (`_uses`), what a saved entry may hold and how it is loaded
(`_plan_state`, `_load_state`), and the step itself.
"""
import copy
import threading
from operator import is_ as _is

import numpy as np

from .. import _validate
from .._specs import apply_rules
from ..functional import backend_for
from ._groups import check_groups, store_plain
from ._state_dict import saved_groups

__all__ = ["OptimizerCore", "GroupRecord", "normalize_params", "group_params", "saved_group"]


def _address_range(a):
    """(start, end) of an array's memory, NumPy or CuPy."""
    if isinstance(a, np.ndarray):
        start = a.__array_interface__["data"][0]
    else:
        start = a.data.ptr
    return start, start + a.nbytes


def _is_array(x):
    return hasattr(x, "__array_interface__") or hasattr(x, "__cuda_array_interface__")


def normalize_params(params):
    """`params` (a list of arrays, or of param-group dicts) as a list of group dicts."""
    if isinstance(params, dict) or _is_array(params):
        raise TypeError("params must be a list of arrays or a list of dicts with a 'params' "
                        f"key, got a single {type(params).__name__}; wrap it in a list")
    try:
        items = list(params)
    except TypeError:
        raise TypeError("params must be a list of arrays or a list of dicts with a 'params' "
                        f"key, got {type(params).__name__}") from None
    if not items:
        raise ValueError("optimizer got an empty parameter list")
    if all(isinstance(x, dict) for x in items):
        return items
    if any(isinstance(x, dict) for x in items):
        raise TypeError("params must be all arrays or all param-group dicts, not a mix")
    return [{"params": items}]


def group_params(param_group, gi):
    """The arrays of `param_group` (a dict with 'params': an array or a list of them), the
    group numbered `gi`, as a non-empty list."""
    if not isinstance(param_group, dict) or "params" not in param_group:
        raise TypeError("a param group must be a dict with a 'params' key")
    params = param_group["params"]
    params = [params] if _is_array(params) else list(params)
    if not params:
        raise ValueError(f"param group {gi} has no parameters")
    return params


def saved_group(group, offset):
    """A param group as `state_dict` saves it: its hyperparameters (copies; a schedule shared)
    and the positions of its parameters from `offset` on."""
    hyper = {k: (copy.deepcopy(v) if not callable(v) else v)
             for k, v in group.items() if k != "params"}
    hyper["params"] = list(range(offset, offset + len(group["params"])))
    return hyper


class GroupRecord:
    """Per-group bookkeeping that is not a hyperparameter: plan, steps taken, buffers present,
    and the last validated snapshot of the group's values."""
    __slots__ = ("plan", "mod", "step", "present", "offset", "checked", "hyper", "uses",
                 "arrays", "scalars")

    def __init__(self, plan, mod, offset, group, uses):
        self.plan = plan
        self.mod = mod
        self.offset = offset
        self.step = 0
        self.hyper = dict(group)             # a private, validated copy of the group
        self.checked = tuple(group.values())  # the group's values when `hyper` was validated
        self.uses = uses                     # the state buffers `hyper`'s options need
        self.present = (False,) * len(uses)  # the state buffers allocated
        self.arrays = tuple(group["params"])  # the group's arrays as planned (check_groups)
        self.scalars = None     # per-parameter scalars: {name: 0-d float64 array}, one array
        #                         per group shared by its parameters' state entries, or None


class OptimizerCore:
    """Param groups, hyperparameters, schedules and state_dict (see the module docstring)."""

    DEFAULTS = {}
    RULES = {}
    BUFFERS = ()
    SCALARS = ()
    _NONE_IS_NO_BUFFER = False  # a saved buffer None means "not allocated" (torch's SGD)

    def __init__(self, params, **hyperparameters):
        unknown = set(hyperparameters) - set(self.DEFAULTS)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) "
                            f"{sorted(unknown)}")
        self.defaults = {**self.DEFAULTS, **hyperparameters}
        self.param_groups = []
        self.state = {}
        self._records = []
        self._planned = []     # per group, the tuple of its arrays (see _groups.check_groups)
        self._lock = threading.Lock()
        for group in normalize_params(params):
            self.add_param_group(group)

    # ------------------------------------------------------------------------- construction
    def add_param_group(self, param_group):
        """Add a group (a dict with 'params' and optional hyperparameter overrides)."""
        check_groups(self.param_groups, self._planned)
        params = group_params(param_group, len(self.param_groups))
        group = dict(param_group)
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.update(self._validate(group))      # stored as plain Python values
        offset = sum(len(g["params"]) for g in self.param_groups)
        mod, plan = self._plan_for(params, offset)
        if self._records and mod is not self._records[0].mod:
            raise TypeError(f"param group {len(self.param_groups)} holds "
                            f"{type(params[0]).__module__} arrays but the optimizer's other "
                            "groups do not; one optimizer steps arrays of one kind (all NumPy or "
                            "all CuPy on one device)")
        self._check_disjoint(params, offset)
        group["params"] = params
        rec = GroupRecord(plan, mod, offset, group, self._uses(group))
        self.param_groups.append(group)
        self._records.append(rec)
        self._planned.append(rec.arrays)

    def _plan_for(self, params, offset):
        """The kernel module and plan of a new param group (a hook: see fastopt.mixed)."""
        mod = backend_for(params)
        return mod, mod.Plan(params, "params", offset)

    def _check_disjoint(self, new_params, offset):
        """No parameter of the new group shares memory with one of an existing group."""
        spans = [(*_address_range(p), i) for i, p in enumerate(self._all_params()) if p.nbytes]
        spans += [(*_address_range(p), offset + j) for j, p in enumerate(new_params) if p.nbytes]
        spans.sort()
        for (s0, e0, i0), (s1, e1, i1) in zip(spans, spans[1:]):
            if s1 < e0:
                raise ValueError(f"params[{max(i0, i1)}] shares memory with params[{min(i0, i1)}]; "
                                 "pass each parameter once")

    def _all_params(self):
        return [p for g in self.param_groups for p in g["params"]]

    # ------------------------------------------------------------------------ hyperparameters
    def _validate(self, group):
        """Check a group's hyperparameters (``RULES``); returns them as plain Python values."""
        return apply_rules(self.RULES, group)

    def _checked(self, gi, values):
        """`_validate` of param group gi's `values`, errors naming the group."""
        try:
            return self._validate(values)
        except (TypeError, ValueError) as e:
            raise type(e)(f"param_groups[{gi}]: {e}") from None

    def _uses(self, hyper):
        """Which of the state buffers a group's validated values need (a tuple of bools, one
        per buffer the group's plan holds; none here)."""
        return ()

    def _validated(self, gi):
        """A validated snapshot of group gi's values: what this step runs with.

        Param groups are mutable dicts (as in torch.optim). The snapshot is one copy of the
        group, validated as a whole; it is kept and reused while the group holds the same
        value objects, so a step re-validates only groups whose values were replaced. A value
        written into the group after the copy (by another thread, say) is seen next step, never
        half-way through this one.
        """
        group, rec = self.param_groups[gi], self._records[gi]
        seen = rec.checked
        if len(seen) == len(group) and all(map(_is, group.values(), seen)):
            return rec.hyper
        snap = dict(group)
        seen = tuple(snap.values())             # the value objects this snapshot was made of
        snap.update(self._checked(gi, snap))    # plain Python values (betas a tuple)
        rec.hyper, rec.uses = snap, self._uses(snap)
        rec.checked = store_plain(group, snap, seen)
        return snap

    def _scheduled_lr(self, lr, rec):
        """The value of the schedule `lr` at the group's step, checked (a plain float)."""
        return _validate.scheduled_lr(lr(rec.step), rec.step)

    def _group_values(self, gi):
        """(validated snapshot, learning rate of this step) of group gi."""
        hyper = self._validated(gi)
        lr = hyper["lr"]
        if callable(lr):
            lr = self._scheduled_lr(lr, self._records[gi])
        return hyper, lr

    def _snapshots(self):
        """The prepare phase's view of the groups: after checking that `param_groups` holds the
        planned groups, ``[(snapshot, lr), ...]`` (`_group_values`), one per group. Called
        before anything is written; the step then reads only these copies."""
        check_groups(self.param_groups, self._planned)
        return [self._group_values(gi) for gi in range(len(self._records))]

    # --------------------------------------------------------------------------- state dict
    def state_dict(self):
        """Copy of the state in torch's layout: {'state': {i: {...}}, 'param_groups': [...]}.

        ``state[i]`` holds the parameter's 'step' (a float, as torch stores it), its
        ``SCALARS`` and copies of its ``BUFFERS`` (NumPy or CuPy, like the parameters). Only
        parameters that have taken a step or have state appear.
        """
        with self._lock:
            check_groups(self.param_groups, self._planned)
            state, groups = {}, []
            for group, rec in zip(self.param_groups, self._records):
                for i in range(rec.offset, rec.offset + len(group["params"])):
                    entry = self.state.get(i, {})
                    if rec.step > 0 or entry:
                        out = {"step": float(rec.step)}
                        for name in self.SCALARS:
                            if name in entry:
                                out[name] = float(entry[name])
                        for name in self.BUFFERS:
                            if name in entry:
                                out[name] = entry[name].copy()
                        state[i] = out
                groups.append(saved_group(group, rec.offset))
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict (ours or torch's layout, arrays or tensors converted by the caller).

        Checks structure, hyperparameters, step counts, shapes and dtypes first; on error
        nothing changes. Buffers are copied into this optimizer's own arrays.
        """
        with self._lock:
            check_groups(self.param_groups, self._planned)
            plan = self._plan_load(state_dict)
            for gi, (hyper, step, entries) in enumerate(plan):
                group, rec = self.param_groups[gi], self._records[gi]
                for key in list(group):
                    if key != "params" and key not in hyper:
                        del group[key]
                group.update(hyper)
                self._load_state(rec, group, entries)
                rec.step = step

    def _plan_load(self, sd):
        """Validate a state_dict against this optimizer; returns per group (hyper, step,
        entries), the entries as `_plan_state` checked them."""
        plan = []
        for gi, ids, hyper, entries in saved_groups(sd, self.param_groups):
            hyper = {**self.defaults, **hyper}
            hyper.update(self._checked(gi, hyper))
            step, entries = self._plan_state(gi, ids, hyper, entries)
            plan.append((hyper, step, entries))
        return plan

    def _plan_state(self, gi, ids, hyper, entries):
        """(step, checked entries) of group gi's saved state (`entries[j]` of parameter
        ``ids[j]``, or None); a family's hook."""
        raise NotImplementedError

    def _load_state(self, rec, group, entries):
        """Write a group's checked entries into this optimizer's state; a family's hook."""
        raise NotImplementedError

    @staticmethod
    def _saved_step(gi, ids, steps):
        """The one step count of a group from the saved per-parameter 'step' values."""
        values = {_validate.whole(f"state[{i}]['step']", s) for i, s in zip(ids, steps)}
        if len(values) != 1:
            raise ValueError(f"param_groups[{gi}]: parameters have different step counts "
                             f"{sorted(values)}; fastopt keeps one per group")
        return values.pop()

    def _buffer_shape(self, name, p):
        """The shape of state buffer `name` of parameter `p`: p's (a hook: Adafactor's factors
        have their own)."""
        return p.shape

    def _saved_entry(self, i, entry, p, like=""):
        """The checked values of saved ``state[i]`` (`entry`, of parameter `p`) but 'step':
        ``SCALARS`` as floats, ``BUFFERS`` of their shape (`_buffer_shape`) and a floating
        dtype, as they are."""
        out = {}
        for name, value in entry.items():
            if name == "step":
                continue
            if name in self.SCALARS:
                out[name] = _validate.real(f"state[{i}][{name!r}]", value)
                continue
            if name not in self.BUFFERS:
                raise ValueError(f"state[{i}] has unknown {'entry' if self.SCALARS else 'buffer'}"
                                 f" {name!r}; {type(self).__name__} keeps "
                                 f"{list(self.BUFFERS) + list(self.SCALARS)}")
            if value is None and self._NONE_IS_NO_BUFFER:
                continue
            shape, dtype = getattr(value, "shape", None), getattr(value, "dtype", None)
            expected = self._buffer_shape(name, p)
            if shape is None or tuple(shape) != expected:
                raise ValueError(f"state[{i}][{name!r}] has shape {shape}, expected "
                                 f"{expected}{like}")
            try:
                floating = dtype is not None and np.dtype(dtype).kind == "f"
            except TypeError:           # not a NumPy dtype (a torch tensor's)
                floating = False
            if not floating:
                raise TypeError(f"state[{i}][{name!r}] must be a floating NumPy array, got "
                                f"{type(value).__name__} of dtype {dtype}")
            out[name] = value
        return out

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)
