"""The first-order optimizer base: state buffers in kernel plans, the step in two phases.

Design note
-----------
An optimizer owns its param groups (mutable dicts, as in torch.optim) and its state buffers;
what every optimizer class shares (param groups and their checks, hyperparameter validation,
schedules, the state_dict layout) is `fastopt.optim._core.OptimizerCore`, and the registry
entry `spec` (`fastopt._specs`, from the optimizer table) says what this optimizer is: its
defaults, rules, state buffers and which options need them, and its kernel runner. Each group has a record with a kernel plan (fastopt._kernels.Plan, or fastopt.cuda.Plan for
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
is also the layout of `state_dict()` (torch's layout, with NumPy arrays for tensors). A saved
group has no state at all or a step count and buffers for every parameter (`_plan_state`).
"""
from operator import is_ as _is

import numpy as np

from .. import _table
from ..flat import state_like
from ..state_format import Blockwise8
from ._core import OptimizerCore
from ._state_format import STATE_KEYWORDS, saved_values, store_values
from ._groups import check_groups

__all__ = ["Optimizer"]

_NONFINITE = ("ignore", "skip", "raise")


def _module_of(a):
    """numpy for NumPy arrays, cupy for CuPy arrays (for the rare non-kernel paths)."""
    if isinstance(a, np.ndarray):
        return np
    import importlib
    return importlib.import_module(type(a).__module__.split(".")[0])


def _to_host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _copy_into(dst, src):
    """dst[...] = src across host/device, casting to dst's dtype."""
    if type(dst) is type(src) and not isinstance(dst, np.ndarray):   # on the device
        dst[...] = src
    elif isinstance(dst, np.ndarray):
        np.copyto(dst, _to_host(src), casting="unsafe")
    else:
        dst.set(np.ascontiguousarray(_to_host(src), dtype=dst.dtype))


def _lerp_(p, end, w):
    """p = lerp(p, end, w) in place, as torch's lerp_ (p + w (end - p) for |w| < 1/2, else
    end - (end - p)(1 - w)); NumPy or CuPy."""
    t = end - p
    if abs(w) < 0.5:
        t *= w
        p += t
    else:
        t *= 1.0 - w
        p[...] = end - t


class Optimizer(OptimizerCore):
    """Base class of the first-order optimizers (driven by a registry entry, `spec`).

    Parameters are float32 or float64 arrays, C-contiguous and writable, each passed once.
    `step(grads)` takes the gradients in the order of the parameters (over all groups).
    """

    spec = None  # a fastopt._specs.Spec; set by each subclass
    _state_format = None  # a low-bit state format (fastopt.optim._state_format), or None
    _NONE_IS_NO_BUFFER = True   # torch's SGD saves momentum_buffer=None before momentum runs

    def __init__(self, params, **hyperparameters):
        if self.spec is None:
            raise TypeError(f"{type(self).__name__} is a base class without update rule; use "
                            "an optimizer such as fastopt.SGD or fastopt.Adam")
        self._fresh_none = (False,) * len(self.spec.state)
        self._gate_every_step = False   # `_gate` also with nonfinite="ignore" (fastopt.mixed)
        super().__init__(params, **hyperparameters)

    # The registry entry is the table of what this optimizer is (see fastopt.optim._core).
    DEFAULTS = property(lambda self: {**self.spec.defaults, **self.spec.group_state})
    RULES = property(lambda self: {**self.spec.rules, **self.spec.group_rules})
    BUFFERS = property(lambda self: self.spec.state)
    # per-parameter scalars (the table's param_scalars): one value per group, in `rec.scalars`
    SCALARS = property(lambda self: tuple(self.spec.scalars))

    def _validate(self, group):
        values = self.spec.validate(group)
        if self._state_format is not None:
            self._state_format.check(values)
        self._check_format_keys(group)
        return values

    def _format_options(self):
        """The optimizer's state-format options {state_dtype, rounding, seed, min_8bit_size}
        (their defaults for float32 state)."""
        fmt = self._state_format
        if fmt is None:
            return dict(STATE_KEYWORDS)
        return {"state_dtype": fmt.dtype, "rounding": fmt.rounding, "seed": fmt.seed,
                "min_8bit_size": fmt.min_8bit_size}

    def _check_format_keys(self, group):
        """The state format is the optimizer's (``state_dtype``, ``rounding``, ``seed``,
        ``min_8bit_size`` of the constructor): a param group that names one with another
        value is refused (ValueError), not silently stepped in the optimizer's format
        (fastopt.torch, whose groups are torch's, takes them per group)."""
        options = self._format_options()
        for key, mine in options.items():
            if key in group:
                if group[key] != mine:
                    raise ValueError(
                        f"{key}={group[key]!r} in a param group: the state format is an option "
                        f"of the whole optimizer in fastopt's NumPy classes (this one's: "
                        f"{key}={mine!r}); pass it to the constructor (fastopt.torch takes it "
                        "per group)")

    def _uses(self, hyper):
        return self.spec.uses(hyper)

    def _plan_for(self, params, offset):
        """The kernel module and plan of a new group: the low-bit state loops when the
        optimizer keeps low-bit state (``state_dtype``)."""
        if self._state_format is not None:
            return self._state_format.plan(params, offset)
        return super()._plan_for(params, offset)

    def _new_state(self, slot, params, fill=None):
        """New buffers of state slot `slot` for `params` (`_state_like`, or in the state
        format's types)."""
        if self._state_format is not None:
            return self._state_format.new(slot, params, fill)
        return self._state_like(params, fill)

    @staticmethod
    def _store_buffer(mine, value):
        """Write a saved buffer (of any state format) into one of this optimizer's."""
        if store_values(mine, value) is NotImplemented:
            _copy_into(mine, saved_values(value))

    def _state_like(self, params, fill=None):
        """New state buffers for a group's `params`, filled with `fill` or uninitialized
        (`fastopt.flat.state_like`; a hook: fastopt.mixed keeps float32 state for 16-bit
        parameters)."""
        return state_like(params, fill)

    def _update_values(self, rec):
        """The arrays the rule updates for a group's parameters, in order: the parameters
        themselves (a hook: fastopt.mixed's float32 master copies). A state buffer that starts
        as a copy of its parameter (Schedule-Free's z) copies these."""
        return rec.plan.params

    def _move(self, rec, i, p, end, weight):
        """A mode change's move of parameter `p` (the group's i-th): p = lerp(p, end, weight)
        (a hook: fastopt.mixed moves the master copy and rounds the 16-bit parameter)."""
        _lerp_(p, end, weight)

    # --------------------------------------------------------------------------------- step
    def _ensure_state(self, rec, hyper, uses, lr):
        """Create the buffers a group needs now (`uses`, of its snapshot `hyper`; `lr`: this
        step's learning rate); returns which ones are new."""
        fresh = []
        params = rec.plan.params
        for slot, (name, needed, present) in enumerate(zip(self.spec.state, uses, rec.present)):
            if needed and not present:
                if name in self.spec.copies:       # starts as a copy of the parameter
                    arrays = self._new_state(slot, params)
                    for a, p in zip(arrays, self._update_values(rec)):
                        _copy_into(a, p)
                else:
                    fill = self.spec.init.get(name, lambda g, lr: 0.0)(hyper, lr)
                    arrays = self._new_state(slot, params, fill)
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
            hyper, lr = self._group_values(gi)
            self._check_mode(gi, hyper)
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
        """The state buffers each group's options need now (last part of the prepare phase),
        after every group's per-step computation is checked (an error in a later group must
        not leave an earlier one stepped or with new buffers)."""
        if self.spec.check_advance is not None:
            for item in work:
                self._check_advance(item[0], item[1], item[2])
        for item in work:
            rec, hyper, lr, grads = item[0], item[1], item[2], item[3]
            uses = rec.uses                     # of rec.hyper, the snapshot `hyper`
            if uses != rec.present and any(u and not p for u, p in zip(uses, rec.present)):
                if len(work) == 1:      # a new buffer is written only for valid gradients
                    if len(grads) != len(rec.plan):
                        raise ValueError(f"grads has {len(grads)} arrays but the optimizer has "
                                         f"{len(rec.plan)} parameters")
                    rec.plan.check_grads(grads)
                item[4] = self._ensure_state(rec, hyper, uses, lr)

    def _check_advance(self, rec, hyper, lr):
        """The ValueError the step's group computation (the table's ``advance``: ASGD's eta,
        NAdam's mu_product, Schedule-Free's weights) would raise with these hyperparameters,
        raised before anything is allocated (the kernel's runner raises it too, before the
        kernel)."""
        check = self.spec.check_advance
        if check is None:
            return
        if self.spec.scalars:
            check(hyper, rec.step + 1, lr, self._fresh_none, "grads", rec.scalars)
        else:
            check(hyper, rec.step + 1, lr, self._fresh_none)

    def _apply(self, work):
        """Phase 2 of a step: one kernel per group with its snapshot's values, then its step
        counter."""
        run = self.spec.run
        for gi, (rec, hyper, lr, grads, fresh) in enumerate(work):
            self._key_rounding(rec)
            if self.spec.scalars:
                changed = run(rec.mod, rec.plan, grads, hyper, rec.step + 1, lr, fresh, "grads",
                              rec.scalars)
            else:
                changed = run(rec.mod, rec.plan, grads, hyper, rec.step + 1, lr, fresh)
            rec.step += 1
            if changed is not None:
                self._store_group_state(gi, changed)

    def _key_rounding(self, rec):
        """Low-bit state: the stochastic rounding noise of this step is keyed by the group's
        count of steps before it (saved in the state_dict, so a loaded run draws the noise
        of an uninterrupted one), as fastopt.torch keys it for the optimizers that count
        steps."""
        if self._state_format is not None:
            rec.plan.counter = rec.step

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
            if self.spec.modes is not None:
                self._check_mode(0, hyper)
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
            self._key_rounding(rec)
            if self.spec.scalars:
                changed = self.spec.run(rec.mod, rec.plan, grads, hyper, rec.step + 1, lr,
                                        fresh, "grads", rec.scalars)
            else:
                changed = self.spec.run(rec.mod, rec.plan, grads, hyper, rec.step + 1, lr, fresh)
            rec.step += 1
            if changed is not None:
                self._store_group_state(0, changed)
            return True

    # ------------------------------------------------------------- group state and modes
    def _store_group_state(self, gi, values):
        """Write the group-level scalars the step (or a mode change) computed ({name: value},
        plain and valid by construction) into param group gi and into its validated snapshot,
        so the next step does not re-validate the group for them. The per-parameter scalars
        among `values` (the table's param_scalars) go to the group's record instead."""
        group, rec = self.param_groups[gi], self._records[gi]
        if self.spec.scalars:
            self._set_scalars(gi, {name: values.pop(name) for name in self.spec.scalars})
            if not values:
                return
        keys = list(rec.hyper)
        checked = list(rec.checked)
        for key, value in values.items():
            group[key] = value
            rec.hyper[key] = value
            checked[keys.index(key)] = value
        rec.checked = tuple(checked)

    def _check_mode(self, gi, hyper):
        """A step needs every group in train mode (optimizers with modes only)."""
        modes = self.spec.modes
        if modes is not None and not hyper[modes.key]:
            raise RuntimeError(f"param_groups[{gi}]: Optimizer was not in train mode when step "
                               "is called. Please insert .train() and .eval() calls on the "
                               "optimizer. See documentation for details. Nothing was updated.")

    def _set_mode(self, mode):
        """Move the parameters of every group not in `mode` ("train": to y, "eval": to x) by
        ``p = lerp(p, state, w)`` (the table's Modes) and record the mode in the group.
        Every group's hyperparameters are checked first: on error nothing moves."""
        modes = self.spec.modes
        target = mode == "train"
        with self._lock:
            check_groups(self.param_groups, self._planned)
            moves = []
            for gi in range(len(self._records)):
                hyper = self._validated(gi)
                if bool(hyper[modes.key]) != target:
                    moves.append((gi, self.spec.mode_weight(hyper, mode)))
            for gi, weight in moves:
                rec = self._records[gi]
                for i, p in enumerate(self.param_groups[gi]["params"]):
                    end = self.state.get(rec.offset + i, {}).get(modes.state)
                    if end is not None:
                        self._move(rec, i, p, end, weight)
                self._store_group_state(gi, {modes.key: target})

    # --------------------------------------------------------------------------- state dict
    def _plan_state(self, gi, ids, hyper, entries):
        """A group's saved state: none at all, or a step count and buffers for every parameter
        (the buffers the group's options need, unless the optimizer's are optional)."""
        have = [e is not None and len(e) > 0 for e in entries]
        if any(have) and not all(have):
            raise ValueError(f"param_groups[{gi}]: some parameters have state and others do "
                             "not; fastopt steps all parameters of a group together")
        if not all(have):
            return 0, []
        steps = self._saved_step(gi, ids, [_to_host(e.get("step", 0)) for e in entries])
        offset = self._records[gi].offset
        buffers = [self._saved_entry(i, e, p, f" like params[{offset + j}]")
                   for j, (i, e, p) in enumerate(zip(ids, entries,
                                                     self.param_groups[gi]["params"]))]
        self._check_scalars(gi, ids, buffers, steps)
        needed = self.spec.uses(hyper)
        for slot, name in enumerate(self.spec.state):
            if needed[slot] and not all(name in b for b in buffers) and steps > 0 \
                    and not self.spec.optional_state:
                raise ValueError(f"param_groups[{gi}]: state buffer {name!r} is missing "
                                 "for these options")
        return steps, buffers

    def _saved_entry(self, i, entry, p, like=""):
        """As `OptimizerCore._saved_entry`, and a buffer of a slot that may be low-bit
        (``State.quant``) may also be saved in a low-bit format whatever this optimizer's
        ``state_dtype``: a uint16 array of bfloat16 bits of the parameter's shape, or a
        `Blockwise8` (checked: codes of the shape, absmax of one float32 per block, a sorted
        finite map in [-1, 1]). `_store_buffer` converts between formats."""
        low = {}
        if isinstance(entry, dict):
            quant = {s.name for s in _table.KERNELS[self.spec.kernel].state if s.quant}
            for name, value in entry.items():
                if name not in quant:
                    continue
                what = f"state[{i}][{name!r}]"
                if isinstance(value, Blockwise8):
                    low[name] = Blockwise8.checked(_to_host(value.codes), _to_host(value.absmax),
                                                   _to_host(value.qmap), tuple(p.shape), what)
                elif isinstance(value, np.ndarray) and value.dtype == np.uint16:
                    if value.shape != tuple(p.shape):
                        raise ValueError(f"{what} has shape {value.shape}, expected "
                                         f"{tuple(p.shape)}{like}")
                    low[name] = value
        if not low:
            return super()._saved_entry(i, entry, p, like)
        out = super()._saved_entry(i, {k: v for k, v in entry.items() if k not in low}, p, like)
        out.update(low)
        return out

    def _check_scalars(self, gi, ids, entries, steps):
        """The per-parameter scalars of a group's saved state: present for every parameter
        once it has stepped, and equal over the group (fastopt keeps one value per group, as
        it keeps one step count)."""
        for name in self.spec.scalars:
            have = [name in e for e in entries]
            if steps > 0 and not all(have):
                raise ValueError(f"param_groups[{gi}]: state entry {name!r} is missing")
            values = {e[name] for e in entries if name in e}
            if len(values) > 1:
                raise ValueError(f"param_groups[{gi}]: parameters have different {name!r} "
                                 f"values {sorted(values)}; fastopt keeps one per group")
            if any(have) and not all(have):
                raise ValueError(f"param_groups[{gi}]: state entry {name!r} is missing for "
                                 f"some parameters of {ids}")

    def _set_scalars(self, gi, values):
        """Set group gi's per-parameter scalars ({name: float}; None: remove them). Each is one
        0-d float64 array, shared by the state entries of the group's parameters (as torch's
        0-d tensors), so a step writes it once."""
        rec = self._records[gi]
        if values is None:
            for i in range(len(rec.arrays)):
                for name in self.spec.scalars:
                    self.state.get(rec.offset + i, {}).pop(name, None)
            rec.scalars = None
        elif rec.scalars is None:
            rec.scalars = {name: np.array(float(v)) for name, v in values.items()}
            for i in range(len(rec.arrays)):
                self.state.setdefault(rec.offset + i, {}).update(rec.scalars)
        else:
            for name, value in values.items():
                rec.scalars[name][()] = value

    def _load_state(self, rec, group, buffers):
        """Copy the buffers into this optimizer's own arrays (cast to the parameter dtype)
        and hand them to the group's plan."""
        uses = tuple(all(name in b for b in buffers) and len(buffers) > 0
                     for name in self.spec.state)
        for slot, name in enumerate(self.spec.state):
            if uses[slot]:
                arrays, spare = [], None
                for i, p in enumerate(group["params"]):
                    mine = self.state.get(rec.offset + i, {}).get(name)
                    if mine is None:
                        if spare is None:
                            spare = self._new_state(slot, group["params"])
                        mine = spare[i]
                    self._store_buffer(mine, buffers[i][name])
                    arrays.append(mine)
                    self.state.setdefault(rec.offset + i, {})[name] = mine
                rec.plan.set_state(slot, arrays)
            else:
                rec.plan.set_state(slot, None)
                for i in range(len(group["params"])):
                    self.state.get(rec.offset + i, {}).pop(name, None)
        rec.present = uses
        if self.spec.scalars:
            gi = self._records.index(rec)
            self._set_scalars(gi, None)
            if buffers and self.spec.scalars.keys() <= buffers[0].keys():
                self._set_scalars(gi, {name: buffers[0][name] for name in self.spec.scalars})
