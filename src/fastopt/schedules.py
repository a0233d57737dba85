"""Learning-rate schedules: pure functions of the step count, ``step -> lr``.

A schedule is a small immutable object: ``schedule(t)`` returns the learning rate (a Python
float) for the step whose index is ``t``, where ``t`` counts the steps a parameter group has
already taken (``t = 0`` for the first step). Any fastopt optimizer accepts one as ``lr``::

    sched = fo.schedules.warmup_cosine(peak=0.1, warmup_steps=500, total_steps=10_000)
    opt = fo.SGD(params, lr=sched, momentum=0.9)

Schedules hold nothing but their constructor arguments, so they compare equal when built from
equal arguments, pickle, print as the call that builds them (``repr(s)`` evaluates back to an
equal schedule after ``from fastopt.schedules import *``), and travel in checkpoints as plain
data (:func:`to_data` / :func:`from_data`: the call's name and arguments, rebuilt from the
allow-list :data:`SCHEDULES`, never unpickled).

Steps or epochs
---------------
Every schedule is written in one unit, "ticks". An optimizer advances it once per step, so the
lengths you pass (``total_steps``, ``warmup_steps``, milestones...) are counted in optimizer
steps. To write a schedule in epochs (e.g. ``multistep(0.1, [30, 60, 90])``: x0.1 at epochs
30, 60 and 90) wrap it with :func:`per_epoch`, which feeds it ``t // steps_per_epoch``::

    sched = per_epoch(multistep(0.1, milestones=[30, 60, 90]), steps_per_epoch=len(loader))

or multiply the lengths by ``steps_per_epoch`` yourself for a schedule that also changes
inside an epoch (``cosine_decay(0.1, total_steps=90 * steps_per_epoch)``). Calling a schedule
with an epoch number (``s(epoch)``) is the same function used per epoch, as torch's
``scheduler.step()`` once per epoch.

Composition
-----------
:func:`join` chains schedules at step boundaries; each later schedule sees the step counted
from its own boundary, so ``join([linear_warmup(0.1, 500), cosine_decay(0.1, 9500)], [500])``
is :func:`warmup_cosine`. Joined schedules nest freely.

Agreement with torch.optim.lr_scheduler (tests/test_schedules.py checks every step of 1000):
``step_decay`` = StepLR, ``multistep`` = MultiStepLR, ``exponential`` = ExponentialLR,
``cosine_decay`` = CosineAnnealingLR (for t <= T_max), ``linear_warmup`` = LinearLR,
``warmup_cosine`` = SequentialLR(LinearLR, CosineAnnealingLR), ``cosine_restarts`` =
CosineAnnealingWarmRestarts, ``one_cycle`` = OneCycleLR (learning rate only), ``join`` =
SequentialLR, with torch's optimizer ``lr`` as our ``lr``.
"""
import math
import numbers

from . import _validate

__all__ = [
    "Schedule", "constant", "inverse_time", "step_decay", "multistep", "exponential",
    "cosine_decay", "linear_warmup", "warmup_cosine", "cosine_restarts", "one_cycle", "join",
    "per_epoch", "SCHEDULES", "to_data", "from_data",
]


# ---------------------------------------------------------------------------------- validation

def _real(name, value, *, low=None, high=None, low_open=False, high_open=False):
    """A finite real number within the given bounds, as float (fastopt._validate.real)."""
    return _validate.real(name, value, low=low, high=high, low_open=low_open,
                          high_open=high_open)


def _int(name, value, *, low=0):
    """An integer >= low (Python or NumPy integer), as int (fastopt._validate.integer)."""
    return _validate.integer(name, value, low=low)


def _step(t):
    """The step argument of a schedule call: an integer >= 0 (an integral float is accepted)."""
    if isinstance(t, numbers.Integral) and not isinstance(t, bool):
        t = int(t)
    elif isinstance(t, numbers.Real) and not isinstance(t, bool) and float(t).is_integer():
        t = int(t)
    else:
        raise TypeError(f"step must be an integer, got {type(t).__name__} {t!r}")
    if t < 0:
        raise ValueError(f"step must be >= 0, got {t}")
    return t


def _schedule(name, value):
    if not isinstance(value, Schedule):
        raise TypeError(f"{name} must be a fastopt schedule, got {type(value).__name__} {value!r}")
    return value


# --------------------------------------------------------------------------------------- base

class Schedule:
    """Base of all schedules: immutable, picklable, equal by type and arguments.

    Subclasses list their constructor arguments in ``_fields`` (in call order), store them
    as attributes of the same names in ``__init__`` (through ``_set``) and implement
    ``_value(t)`` for a validated integer step ``t >= 0``.
    """

    _fields = ()
    _name = "schedule"

    def __call__(self, step):
        t = _step(step)
        try:
            value = float(self._value(t))
        except OverflowError:           # e.g. gamma > 1 raised to a large step
            value = math.inf
        if not math.isfinite(value):
            raise ValueError(f"{self!r} has no finite value at step {t} (it overflows)")
        return value

    def _value(self, t):  # pragma: no cover - abstract
        raise NotImplementedError

    def _set(self, **kwargs):
        for key, value in kwargs.items():
            object.__setattr__(self, key, value)

    def __setattr__(self, key, value):
        raise AttributeError(f"{self._name} is immutable; build a new schedule instead")

    def _args(self):
        return tuple(getattr(self, f) for f in self._fields)

    def __reduce__(self):
        return (type(self), self._args())

    def __eq__(self, other):
        return type(self) is type(other) and self._args() == other._args()

    def __hash__(self):
        return hash((type(self).__name__, self._args()))

    def __repr__(self):
        inner = ", ".join(f"{f}={getattr(self, f)!r}" for f in self._fields)
        return f"{self._name}({inner})"


# ---------------------------------------------------------------------------------- schedules

class constant(Schedule):
    r"""The same learning rate at every step: :math:`\eta_t = \eta`."""

    _fields = ("lr",)
    _name = "constant"

    def __init__(self, lr):
        self._set(lr=_real("lr", lr, low=0.0))

    def _value(self, t):
        return self.lr


class inverse_time(Schedule):
    r"""Diminishing step size :math:`\eta_t = \eta_0 / (1 + d\,t)^p`.

    ``lr`` is :math:`\eta_0`, ``decay`` is :math:`d >= 0`, ``power`` is :math:`p >= 0`.

    With the defaults (``decay=1, power=1``) this is the classical :math:`\eta_k = \eta_0 / k`
    of stochastic approximation, with the iterations numbered from :math:`k = 1`: fastopt
    counts steps from ``t = 0``, so ``k = t + 1`` and the first step uses :math:`\eta_0`
    itself (there is no division by zero at the first step). ``power=0.5`` gives the
    :math:`\eta_0/\sqrt{k}` rate of non-smooth convex problems.
    """

    _fields = ("lr", "decay", "power")
    _name = "inverse_time"

    def __init__(self, lr, decay=1.0, power=1.0):
        self._set(lr=_real("lr", lr, low=0.0), decay=_real("decay", decay, low=0.0),
                  power=_real("power", power, low=0.0))

    def _value(self, t):
        return self.lr / (1.0 + self.decay * t) ** self.power


class step_decay(Schedule):
    r"""Multiply by ``gamma`` every ``step_size`` ticks: :math:`\eta_t = \eta\,\gamma^{\lfloor t/s \rfloor}`.

    Equals torch's ``StepLR(step_size, gamma)``.
    """

    _fields = ("lr", "step_size", "gamma")
    _name = "step_decay"

    def __init__(self, lr, step_size, gamma=0.1):
        self._set(lr=_real("lr", lr, low=0.0), step_size=_int("step_size", step_size, low=1),
                  gamma=_real("gamma", gamma, low=0.0))

    def _value(self, t):
        return self.lr * self.gamma ** (t // self.step_size)


class multistep(Schedule):
    r"""Multiply by ``gamma`` at each milestone: :math:`\eta_t = \eta\,\gamma^{\#\{m_i \le t\}}`.

    ``milestones`` is a strictly increasing sequence of ticks, e.g. ``[30, 60, 90]`` with
    ``gamma=0.1`` for x0.1 at epochs 30, 60 and 90 (wrap in :func:`per_epoch` when the optimizer
    advances the schedule per step). Equals torch's ``MultiStepLR(milestones, gamma)``.
    """

    _fields = ("lr", "milestones", "gamma")
    _name = "multistep"

    def __init__(self, lr, milestones, gamma=0.1):
        lr = _real("lr", lr, low=0.0)
        try:
            items = tuple(milestones)
        except TypeError:
            raise TypeError(f"milestones must be a sequence of integers, got "
                            f"{type(milestones).__name__} {milestones!r}") from None
        items = tuple(_int("milestones[%d]" % i, m, low=1) for i, m in enumerate(items))
        if any(b <= a for a, b in zip(items, items[1:])):
            raise ValueError(f"milestones must be strictly increasing, got {list(items)}")
        self._set(lr=lr, milestones=items, gamma=_real("gamma", gamma, low=0.0))

    def _value(self, t):
        passed = sum(1 for m in self.milestones if m <= t)
        return self.lr * self.gamma ** passed


class exponential(Schedule):
    r"""Exponential decay :math:`\eta_t = \eta\,\gamma^t`. Equals torch's ``ExponentialLR(gamma)``."""

    _fields = ("lr", "gamma")
    _name = "exponential"

    def __init__(self, lr, gamma):
        self._set(lr=_real("lr", lr, low=0.0), gamma=_real("gamma", gamma, low=0.0))

    def _value(self, t):
        return self.lr * self.gamma ** t


def _half_cosine(t, period):
    """1/2 (1 + cos(pi t / T)): 1 at t = 0, 0 at t = T."""
    return 0.5 * (1.0 + math.cos(math.pi * t / period))


class cosine_decay(Schedule):
    r"""Cosine annealing from ``lr`` to ``floor`` over ``total_steps`` ticks, then ``floor``.

    .. math::
        \eta_t = \eta_{min} + (\eta - \eta_{min})\,\tfrac12\left(1 + \cos\frac{\pi t}{T}\right),
        \quad 0 \le t \le T; \qquad \eta_t = \eta_{min}, \quad t > T,

    with :math:`T` = ``total_steps`` and :math:`\eta_{min}` = ``floor`` (default 0). Equals
    torch's ``CosineAnnealingLR(T_max=T, eta_min=floor)`` for :math:`t \le T`; past ``T`` torch
    rises again along the cosine while this schedule stays at the floor (as optax does).
    """

    _fields = ("lr", "total_steps", "floor")
    _name = "cosine_decay"

    def __init__(self, lr, total_steps, floor=0.0):
        lr = _real("lr", lr, low=0.0)
        self._set(lr=lr, total_steps=_int("total_steps", total_steps, low=1),
                  floor=_real("floor", floor, low=0.0))

    def _value(self, t):
        if t >= self.total_steps:
            return self.floor
        return self.floor + (self.lr - self.floor) * _half_cosine(t, self.total_steps)


class linear_warmup(Schedule):
    r"""Linear ramp from ``start`` to ``peak`` over ``warmup_steps`` ticks, then ``peak``.

    .. math::
        \eta_t = \eta_0 + (\eta_{peak} - \eta_0)\,\frac{\min(t, k)}{k}

    with :math:`k` = ``warmup_steps`` and :math:`\eta_0` = ``start`` (default 0, so the very
    first step has learning rate 0 and step ``k`` the first with the peak). Equals torch's
    ``LinearLR(start_factor=start/peak, end_factor=1, total_iters=k)`` on an optimizer whose
    ``lr`` is ``peak`` (torch needs ``start > 0``).
    """

    _fields = ("peak", "warmup_steps", "start")
    _name = "linear_warmup"

    def __init__(self, peak, warmup_steps, start=0.0):
        self._set(peak=_real("peak", peak, low=0.0),
                  warmup_steps=_int("warmup_steps", warmup_steps, low=1),
                  start=_real("start", start, low=0.0))

    def _value(self, t):
        if t >= self.warmup_steps:
            return self.peak
        return self.start + (self.peak - self.start) * (t / self.warmup_steps)


class cosine_restarts(Schedule):
    r"""Cosine annealing with warm restarts (SGDR, Loshchilov & Hutter 2017).

    Cycle :math:`i` lasts :math:`T_i = T_0\,m^i` ticks (``period`` = :math:`T_0`, ``mult`` =
    :math:`m`, an integer >= 1); with :math:`t_{cur}` the ticks since the last restart,

    .. math::
        \eta_t = \eta_{min} + (\eta - \eta_{min})\,\tfrac12\left(1 + \cos\frac{\pi t_{cur}}{T_i}\right).

    Equals torch's ``CosineAnnealingWarmRestarts(T_0=period, T_mult=mult, eta_min=floor)``.
    """

    _fields = ("lr", "period", "mult", "floor")
    _name = "cosine_restarts"

    def __init__(self, lr, period, mult=1, floor=0.0):
        self._set(lr=_real("lr", lr, low=0.0), period=_int("period", period, low=1),
                  mult=_int("mult", mult, low=1), floor=_real("floor", floor, low=0.0))

    def _value(self, t):
        length = self.period
        if self.mult == 1:
            t %= length
        else:
            while t >= length:  # exact integer walk over the cycles: O(log t) iterations
                t -= length
                length *= self.mult
        return self.floor + (self.lr - self.floor) * _half_cosine(t, length)


class one_cycle(Schedule):
    r"""The one-cycle policy (Smith & Topin 2018), with torch's ``OneCycleLR`` formulas.

    With :math:`T` = ``total_steps``, :math:`\eta_{max}` = ``max_lr``, the initial rate
    :math:`\eta_0 = \eta_{max}/`\ ``div_factor`` and the final :math:`\eta_{min} = \eta_0/`\
    ``final_div_factor``, the phases end at ticks :math:`e_1 = p\,T - 1` (:math:`p` =
    ``pct_start``) and :math:`T - 1`: :math:`\eta_0 \to \eta_{max}` over :math:`[0, e_1]`, then
    :math:`\eta_{max} \to \eta_{min}` over :math:`[e_1, T-1]`. With ``three_phase=True``:
    :math:`\eta_0 \to \eta_{max}` until :math:`e_1`, :math:`\eta_{max} \to \eta_0` until
    :math:`2pT - 2`, :math:`\eta_0 \to \eta_{min}` until :math:`T - 1`. Inside a phase from
    :math:`a` (at tick :math:`s`) to :math:`b` (at tick :math:`e`), with :math:`r = (t-s)/(e-s)`,

    .. math::
        \text{cos: } \eta_t = b + \frac{a-b}{2}(1 + \cos \pi r), \qquad
        \text{linear: } \eta_t = a + (b-a)\,r.

    Defaults are torch's (``pct_start=0.3, anneal_strategy="cos", div_factor=25,
    final_div_factor=1e4, three_phase=False``). Torch raises past ``total_steps``; this schedule
    holds :math:`\eta_{min}` from tick :math:`T-1` on. Momentum cycling is not part of it.
    """

    _fields = ("max_lr", "total_steps", "pct_start", "anneal_strategy", "div_factor",
               "final_div_factor", "three_phase")
    _name = "one_cycle"

    def __init__(self, max_lr, total_steps, pct_start=0.3, anneal_strategy="cos",
                 div_factor=25.0, final_div_factor=1e4, three_phase=False):
        max_lr = _real("max_lr", max_lr, low=0.0)
        total_steps = _int("total_steps", total_steps, low=2)
        pct_start = _real("pct_start", pct_start, low=0.0, high=1.0)
        if anneal_strategy not in ("cos", "linear"):
            raise ValueError(f"anneal_strategy must be 'cos' or 'linear', got {anneal_strategy!r}")
        div_factor = _real("div_factor", div_factor, low=0.0, low_open=True)
        final_div_factor = _real("final_div_factor", final_div_factor, low=0.0, low_open=True)
        three_phase = _validate.boolean("three_phase", three_phase)
        ends = self._phase_ends(total_steps, pct_start, three_phase)
        if any(b <= a for a, b in zip((0.0,) + ends, ends)):
            raise ValueError(f"pct_start={pct_start} with total_steps={total_steps} gives an "
                             f"empty phase (phase ends {list(ends)}); use a larger pct_start or "
                             f"total_steps")
        self._set(max_lr=max_lr, total_steps=total_steps, pct_start=pct_start,
                  anneal_strategy=anneal_strategy, div_factor=div_factor,
                  final_div_factor=final_div_factor, three_phase=three_phase)

    @staticmethod
    def _phase_ends(total_steps, pct_start, three_phase):
        first = float(pct_start * total_steps) - 1
        if three_phase:
            return (first, float(2 * pct_start * total_steps) - 2, float(total_steps - 1))
        return (first, float(total_steps - 1))

    def _value(self, t):
        initial = self.max_lr / self.div_factor
        final = initial / self.final_div_factor
        if self.three_phase:
            levels = ((initial, self.max_lr), (self.max_lr, initial), (initial, final))
        else:
            levels = ((initial, self.max_lr), (self.max_lr, final))
        ends = self._phase_ends(self.total_steps, self.pct_start, self.three_phase)
        t = min(t, self.total_steps - 1)
        start = 0.0
        for i, (end, (a, b)) in enumerate(zip(ends, levels)):
            if t <= end or i == len(ends) - 1:
                r = (t - start) / (end - start)
                if self.anneal_strategy == "cos":
                    return b + (a - b) / 2.0 * (math.cos(math.pi * r) + 1)
                return (b - a) * r + a
            start = end
        raise AssertionError("unreachable")  # pragma: no cover


class join(Schedule):
    r"""Chain schedules at step boundaries (optax's ``join_schedules``).

    ``schedules[0]`` runs for :math:`t < b_0`; ``schedules[i]`` for :math:`b_{i-1} \le t < b_i`
    and sees the step :math:`t - b_{i-1}`, i.e. counted from its own boundary.
    ``boundaries`` is strictly increasing, one shorter than ``schedules``. Equals torch's
    ``SequentialLR(schedulers, milestones=boundaries)``.
    """

    _fields = ("schedules", "boundaries")
    _name = "join"

    def __init__(self, schedules, boundaries):
        try:
            schedules = tuple(schedules)
            boundaries = tuple(boundaries)
        except TypeError:
            raise TypeError("join takes a sequence of schedules and a sequence of boundaries") from None
        if not schedules:
            raise ValueError("schedules must hold at least one schedule")
        schedules = tuple(_schedule(f"schedules[{i}]", s) for i, s in enumerate(schedules))
        boundaries = tuple(_int(f"boundaries[{i}]", b, low=1) for i, b in enumerate(boundaries))
        if len(boundaries) != len(schedules) - 1:
            raise ValueError(f"boundaries must have len(schedules) - 1 = {len(schedules) - 1} "
                             f"entries, got {len(boundaries)}")
        if any(b <= a for a, b in zip(boundaries, boundaries[1:])):
            raise ValueError(f"boundaries must be strictly increasing, got {list(boundaries)}")
        self._set(schedules=schedules, boundaries=boundaries)

    def _value(self, t):
        offset, current = 0, self.schedules[0]
        for boundary, schedule in zip(self.boundaries, self.schedules[1:]):
            if t < boundary:
                break
            offset, current = boundary, schedule
        return current(t - offset)

    def __repr__(self):
        return f"join(schedules={list(self.schedules)!r}, boundaries={list(self.boundaries)!r})"


class per_epoch(Schedule):
    r"""Run an epoch-based schedule on an optimizer that counts steps: :math:`\eta_t = s(\lfloor t / E \rfloor)`.

    ``schedule`` is written in epochs; ``steps_per_epoch`` (:math:`E`) is the number of
    optimizer steps in one epoch. The learning rate changes only at epoch boundaries, as with
    torch schedulers stepped once per epoch.
    """

    _fields = ("schedule", "steps_per_epoch")
    _name = "per_epoch"

    def __init__(self, schedule, steps_per_epoch):
        self._set(schedule=_schedule("schedule", schedule),
                  steps_per_epoch=_int("steps_per_epoch", steps_per_epoch, low=1))

    def _value(self, t):
        return self.schedule(t // self.steps_per_epoch)


class warmup_cosine(Schedule):
    r"""Linear warmup to ``peak`` over ``warmup_steps``, then cosine decay to ``floor``.

    ``total_steps`` counts the warmup too, so the cosine lasts ``total_steps - warmup_steps``:

    .. math::
        \eta_t = \begin{cases} \eta_0 + (\eta_{peak} - \eta_0)\,t/k & t < k \\
        \eta_{min} + (\eta_{peak} - \eta_{min})\,\tfrac12\left(1 + \cos\frac{\pi (t-k)}{T-k}\right)
        & k \le t \le T \\ \eta_{min} & t > T \end{cases}

    The same values as ``join([linear_warmup(peak, k, start), cosine_decay(peak, T - k, floor)],
    [k])`` (see :meth:`as_join`), but it prints, compares and is stored as the call that built
    it; equals torch's ``SequentialLR([LinearLR(start/peak, 1, k), CosineAnnealingLR(T - k,
    floor)], milestones=[k])``.
    """

    _fields = ("peak", "warmup_steps", "total_steps", "floor", "start")
    _name = "warmup_cosine"

    def __init__(self, peak, warmup_steps, total_steps, floor=0.0, start=0.0):
        warmup_steps = _int("warmup_steps", warmup_steps, low=1)
        total_steps = _int("total_steps", total_steps, low=1)
        if total_steps <= warmup_steps:
            raise ValueError(f"total_steps must be > warmup_steps={warmup_steps}, got {total_steps}")
        joined = join([linear_warmup(peak, warmup_steps, start),
                       cosine_decay(peak, total_steps - warmup_steps, floor)], [warmup_steps])
        warm, cos = joined.schedules
        self._set(peak=warm.peak, warmup_steps=warmup_steps, total_steps=total_steps,
                  floor=cos.floor, start=warm.start, _joined=joined)

    def as_join(self):
        """The equivalent :class:`join` of a :class:`linear_warmup` and a :class:`cosine_decay`."""
        return self._joined

    def _value(self, t):
        return self._joined._value(t)


# ------------------------------------------------------------------------ stored as plain data

#: The schedule classes a checkpoint may name, by their call name: an explicit allow-list.
SCHEDULES = {cls._name: cls for cls in (
    constant, inverse_time, step_decay, multistep, exponential, cosine_decay, linear_warmup,
    cosine_restarts, one_cycle, join, per_epoch, warmup_cosine)}


def to_data(schedule):
    """A schedule as plain JSON-able data: ``{"schedule": name, "args": {field: value}}``.

    Nested schedules (``join``, ``per_epoch``) become nested dicts, tuples become lists.
    :func:`from_data` rebuilds an equal schedule. Raises TypeError for anything that is not a
    schedule of this module.
    """
    if type(schedule) not in SCHEDULES.values():
        raise TypeError(f"expected a fastopt.schedules schedule, got {type(schedule).__name__}")

    def encode(value):
        if isinstance(value, Schedule):
            return to_data(value)
        if isinstance(value, tuple):
            return [encode(v) for v in value]
        return value

    return {"schedule": schedule._name,
            "args": {f: encode(getattr(schedule, f)) for f in schedule._fields}}


def is_data(value):
    """Whether `value` has the shape of :func:`to_data`'s output (a dict with exactly the keys
    ``schedule`` and ``args``); says nothing about whether it is valid."""
    return isinstance(value, dict) and set(value) == {"schedule", "args"}


def from_data(data):
    """Rebuild a schedule from :func:`to_data`'s output; ValueError for anything else.

    Only the classes in :data:`SCHEDULES` can be named; their arguments are checked by their
    constructors as in a direct call. No other code is looked up or run.
    """
    if not is_data(data):
        raise ValueError(f"not a stored schedule: {data!r:.200}")
    name, args = data["schedule"], data["args"]
    cls = SCHEDULES.get(name) if isinstance(name, str) else None
    if cls is None:
        raise ValueError(f"unknown schedule {name!r:.100}; stored schedules are one of "
                         f"{sorted(SCHEDULES)}")
    if not isinstance(args, dict) or not set(args) <= set(cls._fields):
        raise ValueError(f"stored {name} schedule has arguments {args!r:.200}; expected a dict "
                         f"with keys from {list(cls._fields)}")

    def decode(value):
        if is_data(value):
            return from_data(value)
        if isinstance(value, list):
            return tuple(decode(v) for v in value)
        if value is None or isinstance(value, (bool, int, float, str)):
            return value
        raise ValueError(f"stored {name} schedule has an argument of type "
                         f"{type(value).__name__}")

    try:
        return cls(**{k: decode(v) for k, v in args.items()})
    except TypeError as e:
        raise ValueError(f"stored {name} schedule: {e}") from None
