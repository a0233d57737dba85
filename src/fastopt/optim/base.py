"""The stateful optimizer base: param groups, state, state_dict, validation, one lock.

Design note
-----------
An optimizer owns its param groups (mutable dicts, as in torch.optim) and its state buffers.
Each group has a record with a kernel plan (fastopt._kernels.Plan, or fastopt.cuda.Plan for
CuPy arrays) that holds the C segment layout of its parameters and state, built once; a step
only checks the gradients and calls one fused kernel per group. The classes therefore do no
elementwise math in Python. A step has two phases, so that an error changes nothing and a
group is never stepped with values other than those checked:

* prepare (`_prepare`, `_gate`, `_allocate`): check that `param_groups` still holds the planned
  groups (`fastopt.optim._groups`); take a snapshot of every group's hyperparameters and
  validate it (re-validating only groups whose values were replaced since the last step),
  evaluate scheduled learning rates, check the gradient list and every gradient array
  (including against the parameters and state of the other groups; each plan also checks
  that its arrays were not resized or reallocated in place); with
  ``nonfinite="skip"|"raise"``, check that every gradient element is finite (a read-only
  pass; "skip" returns False here); then allocate the state buffers the groups' options now
  need (first step, or an option turned on through `param_groups`);
* apply (`_apply`): run one kernel per group with the snapshot's values, then advance the
  group's step counter. A thread writing into `param_groups` meanwhile affects the next step.

A group's state buffers of one kind (``exp_avg``, ...) are views of one 64-byte-aligned
buffer per dtype (`fastopt.flat.state_like`): one allocation, huge-page friendly, and the
state of parameters that continue each other in memory (views from `fastopt.flatten`)
continues too, so the kernels step such a run of parameters as one segment.

State is keyed by the parameter's position in the optimizer (0, 1, ... over all groups), which
is also the layout of `state_dict()` (torch's layout, with NumPy arrays for tensors).
"""
import copy
import threading
from operator import is_ as _is

import numpy as np

from .. import _validate
from ..flat import state_like
from ..functional import backend_for
from ._groups import check_groups, store_plain
from ._state_dict import saved_groups

__all__ = ["Optimizer"]

_NONFINITE = ("ignore", "skip", "raise")


def _module_of(a):
    """numpy for NumPy arrays, cupy for CuPy arrays (for the rare non-kernel paths)."""
    if isinstance(a, np.ndarray):
        return np
    import importlib
    return importlib.import_module(type(a).__module__.split(".")[0])


def _address_range(a):
    """(start, end) of an array's memory, NumPy or CuPy."""
    if isinstance(a, np.ndarray):
        start = a.__array_interface__["data"][0]
    else:
        start = a.data.ptr
    return start, start + a.nbytes


def _to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _copy_into(dst, src):
    """dst[...] = src across host/device, casting to dst's dtype."""
    if isinstance(dst, np.ndarray):
        np.copyto(dst, _to_host(src), casting="unsafe")
    else:
        dst.set(np.ascontiguousarray(_to_host(src), dtype=dst.dtype))


class _GroupRecord:
    """Per-group bookkeeping that is not a hyperparameter: plan, steps taken, buffers present,
    and the last validated snapshot of the group's values."""
    __slots__ = ("plan", "mod", "step", "present", "offset", "checked", "hyper", "uses",
                 "arrays")

    def __init__(self, plan, mod, offset, n_state):
        self.plan = plan
        self.mod = mod
        self.offset = offset
        self.step = 0
        self.present = (False,) * n_state
        self.checked = ()      # the group's values (in order) when `hyper` was validated
        self.hyper = None      # a private, validated copy of the group (see _validated)
        self.uses = ()         # the state buffers `hyper`'s options need (spec.uses)
        self.arrays = ()       # the group's arrays as planned (see _groups.check_groups)


class Optimizer:
    """Base class of the first-order optimizers (driven by a registry entry, `spec`).

    Parameters are float32 or float64 arrays, C-contiguous and writable, each passed once.
    `step(grads)` takes the gradients in the order of the parameters (over all groups).
    """

    spec = None  # a fastopt._specs.Spec; set by each subclass

    def __init__(self, params, **hyperparameters):
        if self.spec is None:
            raise TypeError(f"{type(self).__name__} is a base class without update rule; use "
                            "an optimizer such as fastopt.SGD or fastopt.Adam")
        unknown = set(hyperparameters) - set(self.spec.defaults)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) "
                            f"{sorted(unknown)}")
        self.defaults = {**self.spec.defaults, **hyperparameters}
        self.param_groups = []
        self.state = {}
        self._records = []
        self._planned = []     # per group, the tuple of its arrays (see _groups.check_groups)
        self._lock = threading.Lock()
        self._fresh_none = (False,) * len(self.spec.state)
        self._gate_every_step = False   # `_gate` also with nonfinite="ignore" (fastopt.mixed)
        groups = self._normalize(params)
        for group in groups:
            self.add_param_group(group)

    # ------------------------------------------------------------------------- construction
    @staticmethod
    def _normalize(params):
        if isinstance(params, dict) or hasattr(params, "__array_interface__") or hasattr(params, "__cuda_array_interface__"):
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
        for key, value in self.defaults.items():
            group.setdefault(key, value)
        group.update(self.spec.validate(group))      # stored as plain Python values
        offset = sum(len(g["params"]) for g in self.param_groups)
        mod, plan = self._plan_for(params, offset)
        if self._records and mod is not self._records[0].mod:
            raise TypeError(f"param group {len(self.param_groups)} holds "
                            f"{type(params[0]).__module__} arrays but the optimizer's other "
                            "groups do not; one optimizer steps arrays of one kind (all NumPy or "
                            "all CuPy on one device)")
        self._check_disjoint(params, offset)
        group["params"] = params
        rec = _GroupRecord(plan, mod, offset, len(self.spec.state))
        rec.hyper = dict(group)
        rec.checked = tuple(group.values())
        rec.uses = self.spec.uses(rec.hyper)
        rec.arrays = tuple(params)
        self.param_groups.append(group)
        self._records.append(rec)
        self._planned.append(rec.arrays)

    def _plan_for(self, params, offset):
        """The kernel module and plan of a new param group (a hook: see fastopt.mixed)."""
        mod = backend_for(params)
        return mod, mod.Plan(params, "params", offset)

    def _state_like(self, params, fill=None):
        """New state buffers for a group's `params`, filled with `fill` or uninitialized
        (`fastopt.flat.state_like`; a hook: fastopt.mixed keeps float32 state for 16-bit
        parameters)."""
        return state_like(params, fill)

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

    # --------------------------------------------------------------------------------- step
    def _scheduled_lr(self, lr, rec):
        """The value of the schedule `lr` at the group's step, checked (a plain float)."""
        return _validate.scheduled_lr(lr(rec.step), rec.step)

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
        try:
            snap.update(self.spec.validate(snap))   # plain Python values (betas a tuple)
        except (TypeError, ValueError) as e:
            raise type(e)(f"param_groups[{gi}]: {e}") from None
        rec.hyper, rec.uses = snap, self.spec.uses(snap)
        rec.checked = store_plain(group, snap, seen)
        return snap

    def _ensure_state(self, rec, hyper, uses):
        """Create the buffers a group needs now (`uses`, of its snapshot `hyper`); returns
        which ones are new."""
        fresh = []
        params = rec.plan.params
        for slot, (name, needed, present) in enumerate(zip(self.spec.state, uses, rec.present)):
            if needed and not present:
                fill = self.spec.init.get(name, lambda g: 0.0)(hyper)
                arrays = self._state_like(params, fill)
                rec.plan.set_state(slot, arrays)
                for i, a in enumerate(arrays):
                    self.state.setdefault(rec.offset + i, {})[name] = a
            fresh.append(needed and not present)
        rec.present = tuple(bool(p or u) for p, u in zip(rec.present, uses))
        return tuple(fresh)

    def _finite(self, rec, grads, nonfinite):
        """Check one group's gradients, then whether all are finite ("raise": ValueError)."""
        finite = getattr(rec.mod, "all_finite", None)
        if finite is not None:
            ok = finite(rec.plan, grads)
        else:                               # e.g. CuPy: one reduction per array, one sync
            rec.plan.check_grads(grads)
            xp = _module_of(grads[0])
            ok = bool(xp.all(xp.stack([xp.isfinite(g).all() for g in grads])))
        if not ok and nonfinite == "raise":
            bad = next(i for i, g in enumerate(grads) if not _module_of(g).isfinite(g).all())
            raise ValueError(f"grads[{rec.offset + bad}] contains NaN or Inf; nothing was "
                             "updated (nonfinite='raise')")
        return ok

    def _prepare(self, grads):
        """Phase 1 of a step: check everything a step reads, write nothing.

        Returns a list of ``[record, snapshot, lr, grads of the group, fresh]`` per group.
        (`step` inlines this for a single group, whose gradient arrays the kernel call itself
        checks before it writes anything.)
        """
        check_groups(self.param_groups, self._planned)
        records = self._records
        total = sum(len(r.plan) for r in records)
        if len(grads) != total:
            raise ValueError(f"grads has {len(grads)} arrays but the optimizer has {total} "
                             "parameters")
        work = []
        for gi, rec in enumerate(records):
            hyper = self._validated(gi)
            lr = hyper["lr"]
            if callable(lr):
                lr = self._scheduled_lr(lr, rec)
            sl = list(grads[rec.offset:rec.offset + len(rec.plan)])
            rec.plan.check_grads(sl)
            work.append([rec, hyper, lr, sl, self._fresh_none])
        disjoint = getattr(records[0].mod, "check_grads_disjoint", None)
        if disjoint is not None:
            disjoint([rec.plan for rec in records], grads)
        return work

    def _gate(self, work, nonfinite):
        """Whether to go on with the step: with ``nonfinite="skip"|"raise"``, a read-only pass
        over the gradients ("raise": ValueError; "skip": False). A hook: see fastopt.mixed."""
        if nonfinite == "ignore":
            return True
        for rec, _, _, grads, _ in work:
            if not self._finite(rec, grads, nonfinite):
                return False
        return True

    def _allocate(self, work):
        """The state buffers each group's options need now (last part of the prepare phase)."""
        for item in work:
            rec, hyper, grads = item[0], item[1], item[3]
            uses = rec.uses                     # of rec.hyper, the snapshot `hyper`
            if uses != rec.present and any(u and not p for u, p in zip(uses, rec.present)):
                if len(work) == 1:      # a new buffer is written only for valid gradients
                    if len(grads) != len(rec.plan):
                        raise ValueError(f"grads has {len(grads)} arrays but the optimizer has "
                                         f"{len(rec.plan)} parameters")
                    rec.plan.check_grads(grads)
                item[4] = self._ensure_state(rec, hyper, uses)

    def _apply(self, work):
        """Phase 2 of a step: one kernel per group with its snapshot's values, then its step
        counter."""
        run = self.spec.run
        for rec, hyper, lr, grads, fresh in work:
            run(rec.mod, rec.plan, grads, hyper, rec.step + 1, lr, fresh)
            rec.step += 1

    def step(self, grads, nonfinite="ignore"):
        """Apply one update with `grads` (a list of arrays in the order of the parameters).

        `nonfinite` says what to do when a gradient element is NaN or +-Inf:

        * ``"ignore"`` (default, as torch.optim): update anyway; NaN/Inf reach the parameters
          and state as the equations carry them.
        * ``"skip"``: update nothing (parameters, state and step counts stay as they were)
          and return False -- the dynamic loss-scaling pattern.
        * ``"raise"``: raise ValueError, with nothing changed.

        "skip" and "raise" read the gradients once more, before anything is written (a
        parallel all-finite reduction, csrc/finite.c). Returns True when the update was
        applied. Raises TypeError/ValueError, with parameters and state unchanged, on a bad
        gradient or hyperparameter (of any group), on a parameter resized or reallocated in
        place, or on `param_groups` edited other than through its groups' hyperparameters
        (a group's 'params' replaced, a group removed or inserted).
        """
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
        if not isinstance(grads, (list, tuple)):
            if hasattr(grads, "__array_interface__") or hasattr(grads, "__cuda_array_interface__"):
                grads = [grads]
            else:
                raise TypeError(f"grads must be a list of arrays, got {type(grads).__name__}")
        with self._lock:
            records = self._records
            if len(records) != 1:
                work = self._prepare(grads)
                if not self._gate(work, nonfinite):
                    return False
                self._allocate(work)
                self._apply(work)
                return True
            # One group, the common case: the same phases with the calls inlined.
            rec = records[0]
            try:
                (group,) = self.param_groups
                arrays, params = rec.arrays, group["params"]
                n = len(arrays)
                planned = len(params) == n and (params[0] is arrays[0] if n == 1
                                                else all(map(_is, params, arrays)))
            except (TypeError, ValueError, KeyError):
                planned = False
            if not planned:
                check_groups(self.param_groups, self._planned)   # raises (names the group)
                group = self.param_groups[0]
            seen = rec.checked
            if len(seen) == len(group) and all(map(_is, group.values(), seen)):
                hyper = rec.hyper
            else:
                hyper = self._validated(0)
            lr = hyper["lr"]
            if callable(lr):
                lr = self._scheduled_lr(lr, rec)
            fresh = self._fresh_none
            if nonfinite != "ignore" or self._gate_every_step:
                work = [[rec, hyper, lr, grads, fresh]]
                if not self._gate(work, nonfinite):
                    return False
            uses = rec.uses
            if uses != rec.present and any(u and not p for u, p in zip(uses, rec.present)):
                work = [[rec, hyper, lr, grads, fresh]]
                self._allocate(work)
                fresh = work[0][4]
            self.spec.run(rec.mod, rec.plan, grads, hyper, rec.step + 1, lr, fresh)
            rec.step += 1
            return True

    # --------------------------------------------------------------------------- state dict
    def state_dict(self):
        """Copy of the state in torch's layout: {'state': {i: {...}}, 'param_groups': [...]}.

        Buffers are copies (NumPy or CuPy, like the parameters); 'step' is a float per
        parameter, as torch stores it. Only parameters that have taken a step have state.
        """
        with self._lock:
            check_groups(self.param_groups, self._planned)
            state, groups = {}, []
            for group, rec in zip(self.param_groups, self._records):
                n = len(group["params"])
                for i in range(rec.offset, rec.offset + n):
                    if rec.step > 0 or self.state.get(i):
                        entry = {"step": float(rec.step)}
                        for name in self.spec.state:
                            if name in self.state.get(i, {}):
                                entry[name] = self.state[i][name].copy()
                        state[i] = entry
                hyper = {k: (copy.deepcopy(v) if not callable(v) else v)
                         for k, v in group.items() if k != "params"}
                hyper["params"] = list(range(rec.offset, rec.offset + n))
                groups.append(hyper)
            return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict):
        """Load a state_dict (ours or torch's layout, arrays or tensors converted by the caller).

        Checks structure, hyperparameters, shapes and dtypes first; on error nothing changes.
        Buffers are copied into this optimizer's own arrays (cast to the parameter dtype).
        """
        with self._lock:
            check_groups(self.param_groups, self._planned)
            plan = self._plan_load(state_dict)
            for gi, (hyper, steps, buffers) in enumerate(plan):
                group, rec = self.param_groups[gi], self._records[gi]
                for key in list(group):
                    if key != "params" and key not in hyper:
                        del group[key]
                group.update(hyper)
                uses = tuple(all(name in b for b in buffers) and len(buffers) > 0
                             for name in self.spec.state)
                for slot, name in enumerate(self.spec.state):
                    if uses[slot]:
                        arrays, spare = [], None
                        for i, p in enumerate(group["params"]):
                            mine = self.state.get(rec.offset + i, {}).get(name)
                            if mine is None:
                                if spare is None:
                                    spare = self._state_like(group["params"])
                                mine = spare[i]
                            _copy_into(mine, buffers[i][name])
                            arrays.append(mine)
                            self.state.setdefault(rec.offset + i, {})[name] = mine
                        rec.plan.set_state(slot, arrays)
                    else:
                        rec.plan.set_state(slot, None)
                        for i in range(len(group["params"])):
                            self.state.get(rec.offset + i, {}).pop(name, None)
                rec.present = uses
                rec.step = steps

    def _plan_load(self, sd):
        """Validate a state_dict against this optimizer; returns per group (hyper, step, bufs)."""
        plan = []
        for gi, ids, hyper, entries in saved_groups(sd, self.param_groups):
            group = self.param_groups[gi]
            hyper = {**self.defaults, **hyper}
            try:
                hyper.update(self.spec.validate(hyper))
            except (TypeError, ValueError) as e:
                raise type(e)(f"param_groups[{gi}]: {e}") from None
            have = [e is not None and len(e) > 0 for e in entries]
            if any(have) and not all(have):
                raise ValueError(f"param_groups[{gi}]: some parameters have state and others do "
                                 "not; fastopt steps all parameters of a group together")
            steps, buffers = 0, []
            if all(have):
                step_values = {_validate.whole(f"state[{i}]['step']", _to_host(e.get("step", 0)))
                               for i, e in zip(ids, entries)}
                if len(step_values) != 1:
                    raise ValueError(f"param_groups[{gi}]: parameters have different step counts "
                                     f"{sorted(step_values)}; fastopt keeps one per group")
                steps = step_values.pop()
                for j, (i, e, p) in enumerate(zip(ids, entries, group["params"])):
                    bufs = {}
                    for name, value in e.items():
                        if name == "step":
                            continue
                        if name not in self.spec.state:
                            raise ValueError(f"state[{i}] has unknown buffer {name!r}; "
                                             f"{type(self).__name__} keeps {list(self.spec.state)}")
                        if value is None:      # torch's SGD before its first momentum step
                            continue
                        shape = getattr(value, "shape", None)
                        dtype = getattr(value, "dtype", None)
                        if shape is None or tuple(shape) != p.shape:
                            raise ValueError(f"state[{i}][{name!r}] has shape {shape}, expected "
                                             f"{p.shape} like params[{self._records[gi].offset + j}]")
                        if dtype is None or np.dtype(dtype).kind != "f":
                            raise TypeError(f"state[{i}][{name!r}] must be a floating array, got "
                                            f"dtype {dtype}")
                        bufs[name] = value
                    buffers.append(bufs)
                needed = self.spec.uses(hyper)
                for slot, name in enumerate(self.spec.state):
                    if needed[slot] and not all(name in b for b in buffers) and steps > 0 \
                            and not self.spec.optional_state:
                        raise ValueError(f"param_groups[{gi}]: state buffer {name!r} is missing "
                                         "for these options")
            plan.append((hyper, steps, buffers))
        return plan

    def __repr__(self):
        lines = [f"{type(self).__name__} ("]
        for i, group in enumerate(self.param_groups):
            lines.append(f"Parameter Group {i}")
            for key in sorted(k for k in group if k != "params"):
                lines.append(f"    {key}: {group[key]}")
        lines.append(")")
        return "\n".join(lines)

