r"""Mixed precision: 16-bit parameters updated through float32, with loss scaling.

``fo.MixedPrecision(fo.Adam, params, lr=1e-3)`` is an Adam (any optimizer class of fastopt)
whose parameters are float16 or bfloat16 arrays (``ml_dtypes.bfloat16``, as in JAX), or float32
arrays mixed in. Let :math:`\tilde\theta` be a 16-bit parameter, :math:`\theta` its float32
master copy, :math:`\hat g` the gradient (float32, float16 or bfloat16) and :math:`S` the loss
scale. One step is, per element and in one fused pass (csrc/mixed.c):

.. math::
    g &= \mathrm{fl}_{32}(\hat g) / S \\
    (\theta, s) &\leftarrow \mathrm{rule}(\theta, g, s) \\
    \tilde\theta &= \mathrm{rne}_{16}(\theta)

where :math:`\mathrm{rule}` is the optimizer's float32 update with float32 state :math:`s`
(exactly the one ``fo.Adam`` applies to a float32 parameter: the master trajectory equals, bit
for bit, a float32 run on the gradients :math:`\mathrm{fl}_{32}(\hat g)/S`) and
:math:`\mathrm{rne}_{16}` rounds to the nearest 16-bit value, ties to even (as NumPy's and
ml_dtypes' casts do). Small updates that a 16-bit parameter cannot represent accumulate in
:math:`\theta` instead of being lost.

With ``master_weights=False`` there is no master: :math:`\theta = \mathrm{fl}_{32}(\tilde\theta)`
is formed in registers and written back with :math:`\mathrm{rne}_{16}`, or, for bfloat16 with
``rounding="stochastic"``, with stochastic rounding

.. math::
    \mathrm{sr}(\theta) = \lceil\theta\rceil \ \text{with probability}\
    \frac{\theta - \lfloor\theta\rfloor}{\lceil\theta\rceil - \lfloor\theta\rfloor},
    \ \text{else}\ \lfloor\theta\rfloor

(the neighbouring bfloat16 values), so that :math:`\mathbb{E}[\tilde\theta] = \theta`. The noise
comes from a counter-based hash of (seed, step, parameter index, element index): results do
not depend on the number of threads and are reproducible from ``seed``.

Loss scaling: with ``loss_scale`` set, the gradients are those of :math:`S \cdot \mathrm{loss}`
(multiply the loss by ``opt.loss_scale`` before differentiating), and :math:`1/S` is applied as
the gradients are read. A read-only pre-pass checks that every :math:`g` is finite; if one is
not, the step is skipped (parameters, masters, state and step counts unchanged) and ``step``
returns False. ``loss_scale="dynamic"`` (or a :class:`DynamicLossScale`) then multiplies
:math:`S` by ``backoff_factor``, and by ``growth_factor`` after ``growth_interval`` finite steps
in a row.

Schedule-Free optimizers (``fo.ScheduleFreeAdamW``, ``ScheduleFreeSGD``, ``ScheduleFreeRAdam``)
keep their ``z`` in float32 (it starts as a copy of the master), and ``train()``/``eval()`` move
the master, :math:`\theta \leftarrow \mathrm{lerp}(\theta, z, w)` exactly as the float32
optimizer moves a float32 parameter, then write :math:`\tilde\theta = \mathrm{rne}_{16}(\theta)`;
so a run with its mode changes is, bit for bit, the float32 run, and the 16-bit parameters
sit at the average :math:`x` (rounded) for evaluation. Without master weights the move runs
on :math:`\mathrm{fl}_{32}(\tilde\theta)` and is rounded to nearest. The mode is part of the
param groups, so ``state_dict``/``fo.save`` keep it.

>>> import numpy as np, fastopt as fo
>>> from fastopt.mixed import MixedPrecision      # also fo.MixedPrecision
>>> w = np.array([1.0, -2.0], np.float16)
>>> opt = MixedPrecision(fo.SGD, [w], lr=0.1)
>>> opt.step([np.array([1e-3, 1e-3], np.float16)])
True
>>> w                       # 1 - 1e-4 is not a float16 number: w rounds back to 1.0 ...
array([ 1., -2.], dtype=float16)
>>> opt.master_params[0].round(4)    # ... while the float32 master keeps the update
array([ 0.9999, -2.0001], dtype=float32)
"""
import math
import threading

import numpy as np

from . import _mixed, _table, _validate
from .optim._state_format import STATE_KEYWORDS
from .optim.base import Optimizer, _lerp_, _to_host

__all__ = ["MixedPrecision", "DynamicLossScale"]


class DynamicLossScale:
    r"""A loss scale that backs off on overflow and grows after a run of finite steps.

    After a step whose gradients are not all finite: :math:`S \leftarrow S \cdot
    \text{backoff\_factor}` (the step is skipped); after ``growth_interval`` finite steps in a
    row: :math:`S \leftarrow S \cdot \text{growth\_factor}`. Defaults follow
    ``torch.amp.GradScaler``: ``init_scale=2**16, growth_factor=2, backoff_factor=0.5,
    growth_interval=2000``.
    """

    def __init__(self, init_scale=2.0 ** 16, growth_factor=2.0, backoff_factor=0.5,
                 growth_interval=2000):
        self.scale = _validate.positive("init_scale", init_scale)
        self.growth_factor = _validate.real("growth_factor", growth_factor, low=1.0)
        self.backoff_factor = _validate.open_unit("backoff_factor", backoff_factor)
        self.growth_interval = _validate.integer("growth_interval", growth_interval, low=1)
        self.growth_tracker = 0

    def update(self, finite):
        """Advance after a step: `finite` tells whether its gradients were all finite."""
        if finite:
            self.growth_tracker += 1
            if self.growth_tracker == self.growth_interval:
                grown = self.scale * self.growth_factor
                if math.isfinite(grown):
                    self.scale = grown
                self.growth_tracker = 0
        else:
            self.scale = max(self.scale * self.backoff_factor, np.finfo(np.float32).tiny)
            self.growth_tracker = 0

    def state_dict(self):
        return {"scale": self.scale, "growth_tracker": self.growth_tracker}

    def load_state_dict(self, sd):
        _expect_keys(sd, ("scale", "growth_tracker"))
        scale = _validate.positive("scale", sd["scale"])
        tracker = _validate.whole("growth_tracker", sd["growth_tracker"])
        self.scale, self.growth_tracker = scale, tracker

    def __repr__(self):
        return (f"DynamicLossScale(scale={self.scale}, growth_factor={self.growth_factor}, "
                f"backoff_factor={self.backoff_factor}, growth_interval={self.growth_interval})")


def _first_nonfinite(grads, scale):
    """'grads[i]' for the first gradient with a NaN/Inf in fl32(g) / S (as csrc/mixed.c reads)."""
    with np.errstate(all="ignore"):
        for i, g in enumerate(grads):
            if not np.isfinite(np.asarray(g, np.float32) / np.float32(scale)).all():
                return f"grads[{i}]"
    return "a gradient"


def _expect_keys(sd, keys):
    if not isinstance(sd, dict) or any(k not in sd for k in keys):
        got = f"the keys {sorted(map(str, sd))}" if isinstance(sd, dict) else type(sd).__name__
        raise ValueError(f"a loss-scale state must be a dict with the keys {list(keys)}, got "
                         f"{got}")


class _StaticLossScale:
    def __init__(self, scale):
        self.scale = _validate.positive("loss_scale", scale)

    def update(self, finite):
        pass

    def state_dict(self):
        return {"scale": self.scale}

    def load_state_dict(self, sd):
        _expect_keys(sd, ("scale",))
        self.scale = _validate.positive("scale", sd["scale"])


def _make_scaler(loss_scale):
    if loss_scale is None:
        return None
    if isinstance(loss_scale, DynamicLossScale):
        return loss_scale
    if isinstance(loss_scale, str):
        if loss_scale != "dynamic":
            raise ValueError(f"loss_scale must be None, a number > 0, 'dynamic' or a "
                             f"DynamicLossScale, got {loss_scale!r}")
        return DynamicLossScale()
    return _StaticLossScale(loss_scale)


_SUBCLASSES = {}


def _subclass(opt_cls):
    if not (isinstance(opt_cls, type) and issubclass(opt_cls, Optimizer)
            and getattr(opt_cls, "spec", None) is not None):
        raise TypeError("MixedPrecision's first argument must be a fastopt optimizer class "
                        f"(fo.SGD, fo.Adam, ...), got {opt_cls!r}")
    if issubclass(opt_cls, MixedPrecision):
        raise TypeError(f"{opt_cls.__name__} is already a mixed-precision optimizer")
    if "mixed" not in _table.KERNELS[opt_cls.spec.kernel_name].backends:
        raise TypeError(f"{opt_cls.__name__} has no mixed-precision kernel (its table entry "
                        "does not declare the 'mixed' backend); use float32 parameters")
    sub = _SUBCLASSES.get(opt_cls)
    if sub is None:
        sub = type(f"MixedPrecision{opt_cls.__name__}", (MixedPrecision, opt_cls),
                   {"__module__": __name__, "_base_class": opt_cls,
                    "__doc__": f"{opt_cls.__name__} over 16-bit parameters; see "
                               "fastopt.MixedPrecision."})
        _SUBCLASSES[opt_cls] = sub
    return sub


class MixedPrecision(Optimizer):
    """``MixedPrecision(optimizer_class, params, *, master_weights=True, rounding="nearest",
    seed=0, loss_scale=None, skip_nonfinite=None, **hyperparameters)``

    An instance of ``optimizer_class`` (fo.SGD, fo.Adam, ...; the hyperparameters, param
    groups, schedules and ``state_dict`` are that class's) over float16/bfloat16/float32
    parameters, updated as described in the module :mod:`fastopt.mixed`.

    - ``master_weights``: keep a float32 master copy of each 16-bit parameter (default).
    - ``rounding``: ``"nearest"`` (even) or, without master weights and for bfloat16,
      ``"stochastic"``; ``seed`` keys its noise.
    - ``loss_scale``: None, a number :math:`S > 0`, ``"dynamic"`` or a
      :class:`DynamicLossScale`; gradients are divided by the current ``opt.loss_scale``.
    - ``skip_nonfinite``: skip steps whose gradients are not all finite (default: on when a
      loss scale is set).

    ``step(grads)`` returns True when the update was applied, False when it was skipped.
    State buffers are float32; ``state_dict()`` adds each master copy as ``'master'`` in the
    parameter's state and the loss scale as ``'mixed_precision'``.
    """

    _base_class = None

    def __new__(cls, *args, **kwargs):
        if cls is MixedPrecision:
            if not args:
                raise TypeError("MixedPrecision(optimizer_class, params, **options) needs the "
                                "optimizer class, e.g. fo.MixedPrecision(fo.Adam, params)")
            cls, args = _subclass(args[0]), args[1:]
        self = object.__new__(cls)
        self._mp_init(*args, **kwargs)
        return self

    def __init__(self, *args, **kwargs):
        """Construction happens in __new__ (which picks the optimizer class)."""

    def _mp_init(self, params, *, master_weights=True, rounding="nearest", seed=0,
                 loss_scale=None, skip_nonfinite=None, **hyperparameters):
        fmt = hyperparameters.pop("state_dtype", "float32")
        if fmt != "float32" or "min_8bit_size" in hyperparameters:
            raise ValueError(
                f"MixedPrecision keeps its optimizer state in float32 (state_dtype="
                f"{fmt!r}{', min_8bit_size' if 'min_8bit_size' in hyperparameters else ''} "
                "given): bfloat16/int8 state is for float32 parameters, through the optimizer "
                "class itself (e.g. fastopt.Adam(params, state_dtype='int8'))")
        master_weights = _validate.boolean("master_weights", master_weights)
        seed = _validate.seed("seed", seed)
        skip_nonfinite = _validate.optional_boolean("skip_nonfinite", skip_nonfinite)
        if rounding not in _mixed.ROUNDINGS:
            raise ValueError(f"rounding must be one of {_mixed.ROUNDINGS}, got {rounding!r}")
        if rounding == "stochastic" and master_weights:
            raise ValueError("rounding='stochastic' needs master_weights=False (with a master "
                             "copy the 16-bit parameter is the master rounded to nearest even)")
        self._mp_master = master_weights
        self._mp_rounding = rounding
        self._mp_seed = seed
        self._mp_scaler = _make_scaler(loss_scale)
        self._mp_skip = (self._mp_scaler is not None) if skip_nonfinite is None \
            else skip_nonfinite
        self.skipped_steps = 0
        self._base_class.__init__(self, params, **hyperparameters)
        self._lock = threading.RLock()
        self._gate_every_step = True    # the loss scale reaches the plans in `_gate`

    # ------------------------------------------------------------------- base class hooks
    def _format_options(self):
        """float32 state; ``rounding`` and ``seed`` are this class's own (the parameters'
        rounding), which a param group may repeat (a group shared with fastopt.torch)."""
        return {**STATE_KEYWORDS, "rounding": self._mp_rounding, "seed": self._mp_seed}

    def _plan_for(self, params, offset):
        plan = _mixed.Plan(params, "params", offset, master_weights=self._mp_master,
                           rounding=self._mp_rounding, seed=self._mp_seed)
        return _mixed, plan

    def _state_like(self, params, fill=None):
        return [np.full(p.shape, 0.0 if fill is None else fill, dtype=np.float32) for p in params]

    def _update_values(self, rec):
        """The float32 values the rule updates: the master copies (a float32 parameter is its
        own), or the 16-bit parameters themselves without master weights. Schedule-Free's z
        starts as a copy of these."""
        return [p if m is None else m for p, m in zip(rec.plan.params, rec.plan.masters)]

    def _move(self, rec, i, p, end, weight):
        """A mode change (Schedule-Free's train()/eval()) moves the float32 values the rule
        updates, ``lerp(master, z, weight)`` exactly as a float32 optimizer moves its
        parameter, and writes the 16-bit parameter from them rounded to nearest even; without
        a master the move runs on the widened 16-bit value."""
        m = rec.plan.masters[i]
        if m is p:                                  # float32: its own master
            _lerp_(p, end, weight)
            return
        values = p.astype(np.float32) if m is None else m
        _lerp_(values, end, weight)
        p[...] = values.astype(p.dtype)

    def _plans(self):
        """(offset, plan) of each param group, in order (as planned; see _groups.check_groups)."""
        return [(rec.offset, rec.plan) for rec in self._records]

    def _gate(self, work, nonfinite):
        """The loss scale's part of the prepare phase: every plan divides by the current scale;
        with skip_nonfinite (or nonfinite="skip"|"raise"), a read-only pass over fl32(g) / S
        decides whether the step goes on (a skip counts it and backs the scale off)."""
        scale = self.loss_scale
        for rec, *_ in work:
            rec.plan.grad_scale = scale
        if self._mp_skip or nonfinite != "ignore":
            finite = True
            for rec, _, _, grads, _ in work:
                finite &= rec.plan.all_finite(list(grads))
            if not finite:
                if nonfinite == "raise":
                    every = [g for *_, grads, _ in work for g in grads]
                    raise ValueError(f"{_first_nonfinite(every, scale)} contains NaN or Inf "
                                     f"after division by the loss scale {scale}; nothing was "
                                     "updated (nonfinite='raise')")
                self.skipped_steps += 1
                if self._mp_scaler is not None:
                    self._mp_scaler.update(False)
                return False
        return True

    # ------------------------------------------------------------------------- public API
    @property
    def loss_scale(self):
        """The current loss scale S (1.0 without loss scaling): differentiate S * loss."""
        return self._mp_scaler.scale if self._mp_scaler is not None else 1.0

    @property
    def master_params(self):
        """The float32 arrays the update runs on, in param order (None without a master)."""
        return [m for _, plan in self._plans() for m in plan.masters]

    def step(self, grads, nonfinite="ignore"):
        """Apply one update; returns False (and changes nothing) when it was skipped.

        `grads` are float32, float16 or bfloat16 arrays in the order of the parameters, the
        gradients of ``loss_scale * loss``. `nonfinite` says what to do when a gradient the
        rule would see, :math:`\\mathrm{fl}_{32}(\\hat g) / S`, is NaN or +-Inf:

        * ``"ignore"`` (default): as ``skip_nonfinite`` says (on when a loss scale is set);
        * ``"skip"``: skip the step even when ``skip_nonfinite`` is off (the loss scale
          backs off and ``skipped_steps`` counts it, as for a skip by ``skip_nonfinite``);
        * ``"raise"``: raise ValueError with nothing changed (parameters, masters, state,
          the loss scale and ``skipped_steps`` included).
        """
        with self._lock:
            applied = super().step(grads, nonfinite)
            if applied and self._mp_scaler is not None:
                self._mp_scaler.update(True)
            return applied

    # --------------------------------------------------------------------------- state dict
    def state_dict(self):
        """The optimizer's state_dict plus master copies and the loss-scale state."""
        with self._lock:
            sd = super().state_dict()
            for offset, plan in self._plans():
                for j, (p, m) in enumerate(zip(plan.params, plan.masters)):
                    if m is not None and m is not p and offset + j in sd["state"]:
                        sd["state"][offset + j]["master"] = m.copy()
            sd["mixed_precision"] = {
                "loss_scale": None if self._mp_scaler is None else self._mp_scaler.state_dict(),
                "counters": [plan.counter for _, plan in self._plans()],
                "skipped_steps": self.skipped_steps,
            }
            return sd

    def load_state_dict(self, state_dict):
        """Load a state_dict (of this class, or of the plain optimizer class).

        Master copies found in it are loaded and the 16-bit parameters set to their rounding;
        16-bit parameters without one get a master equal to their current value. Everything is
        checked first; on error nothing changes.
        """
        with self._lock:
            if not isinstance(state_dict, dict) or "state" not in state_dict \
                    or not isinstance(state_dict["state"], dict):
                raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
            plans = self._plans()
            index = {}
            for offset, plan in plans:
                for j in range(len(plan)):
                    index[offset + j] = (plan, j)
            masters, state = {}, {}
            for key, entry in state_dict["state"].items():
                if isinstance(entry, dict) and "master" in entry:
                    entry = dict(entry)
                    m = entry.pop("master")
                    i = int(key)
                    if i not in index:
                        raise ValueError(f"state[{key}] has a master copy but there is no "
                                         f"parameter {key}")
                    plan, j = index[i]
                    m = _to_host(m)
                    if m.shape != plan.params[j].shape or m.dtype.kind != "f":
                        raise ValueError(f"state[{key}]['master'] must be a floating array of "
                                         f"shape {plan.params[j].shape}, got {m.dtype} "
                                         f"{m.shape}")
                    masters[i] = m
                state[key] = entry
            extra = state_dict.get("mixed_precision")
            scaler_sd = counters = skipped = None
            if extra is not None:
                scaler_sd = extra.get("loss_scale")
                counters = extra.get("counters")
                if counters is not None and len(counters) != len(plans):
                    raise ValueError("state_dict['mixed_precision']['counters'] has "
                                     f"{len(counters)} entries for {len(plans)} param groups")
                if counters is not None:
                    counters = [_validate.whole(f"state_dict['mixed_precision']['counters'][{i}]",
                                                c, high=2 ** 64 - 1)
                                for i, c in enumerate(counters)]
                if "skipped_steps" in extra:
                    skipped = _validate.whole("state_dict['mixed_precision']['skipped_steps']",
                                              extra["skipped_steps"])
                if scaler_sd is not None and self._mp_scaler is not None:
                    probe = DynamicLossScale() if isinstance(self._mp_scaler, DynamicLossScale) \
                        else _StaticLossScale(1.0)
                    probe.load_state_dict(scaler_sd)     # validates before anything changes
            super().load_state_dict({**state_dict, "state": state})
            for offset, plan in plans:
                for j, (p, m) in enumerate(zip(plan.params, plan.masters)):
                    if m is None or m is p:
                        continue
                    if offset + j in masters:
                        np.copyto(m, masters[offset + j], casting="unsafe")
                        p[...] = m.astype(p.dtype)
                    else:
                        m[...] = p.astype(np.float32)
            if counters is not None:
                for (_, plan), c in zip(plans, counters):
                    plan.counter = c
            if scaler_sd is not None and self._mp_scaler is not None:
                self._mp_scaler.load_state_dict(scaler_sd)
            if skipped is not None:
                self.skipped_steps = skipped
