"""Fuzz drivers of schedules, training tricks and BatchNorm (see tests/fuzz_optim.py).

Each driver draws arguments (good ones and bad ones), calls the entry point, and checks that it
either matches a reference written here from the documented equations (or the independent
references of tests/test_resize.py) or raises TypeError/ValueError with every input, generator
and object state unchanged.
"""
import copy
import json
import math
import numbers
import pickle

import numpy as np
from hypothesis import strategies as st

import fastopt as fo
from fastopt import schedules as S
from fastopt.schedules import *  # noqa: F401,F403  (repr of a schedule evaluates here)
from fuzzing import ERRORS, FLOATS, Masks, assert_close, entry_point
from reference import ReferenceOptimizer
from test_resize import check_uint8, reference_nchw

_NAN, _INF = float("nan"), float("inf")


# =================================================================================== schedules
# argument kinds: valid draws, invalid values, and the validity rule
REAL_OK = st.one_of(st.sampled_from([0.0, 1e-3, 0.1, 1.0, 2.5, 1e3, np.float32(0.5), 3]),
                    st.floats(0, 10))
GAMMA_OK = st.one_of(st.sampled_from([0.0, 0.5, 0.99, 1.0, 1.01, 2.0]), st.floats(0, 3))
BAD_REAL = [-0.1, _NAN, _INF, True, "1", None]
INT_OK = st.one_of(st.integers(1, 60), st.sampled_from([np.int64(7)]))
BAD_INT = [0, -3, 2.5, True, "3", None]


def _real_ok(v, low=0.0, high=None, low_open=False):
    if isinstance(v, bool) or not isinstance(v, numbers.Real) or not math.isfinite(float(v)):
        return False
    v = float(v)
    return v >= low and not (low_open and v == low) and (high is None or v <= high)


def _int_ok(v, low=1):
    return not isinstance(v, bool) and isinstance(v, numbers.Integral) and int(v) >= low


def _draw(ex, ok, bad, label):
    """(value, drawn_bad): a good value, or with some chance one from `bad`."""
    if ex.chance(6, f"bad {label}"):
        return ex.draw(st.sampled_from(bad), label), True
    return ex.draw(ok, label), False


def _cos_half(t, period):
    return 0.5 * (1.0 + math.cos(math.pi * t / period))


def _ref_one_cycle(t, a):
    """torch's OneCycleLR (learning rate), as the docstring of fastopt.schedules.one_cycle."""
    max_lr, total, pct, strategy, div, fdiv, three = a
    init = max_lr / div
    final = init / fdiv
    if three:
        ends = [pct * total - 1, 2 * pct * total - 2, total - 1]
        levels = [(init, max_lr), (max_lr, init), (init, final)]
    else:
        ends = [pct * total - 1, total - 1]
        levels = [(init, max_lr), (max_lr, final)]
    t = min(t, total - 1)
    start = 0.0
    for i, (end, (lo, hi)) in enumerate(zip(ends, levels)):
        if t <= end or i == len(ends) - 1:
            r = (t - start) / (end - start)
            if strategy == "cos":
                return hi + (lo - hi) / 2 * (1 + math.cos(math.pi * r))
            return lo + (hi - lo) * r
        start = end


def _one_cycle_ok(a):
    max_lr, total, pct, strategy, div, fdiv, three = a
    if not (_real_ok(max_lr) and _int_ok(total, 2) and _real_ok(pct, 0.0, 1.0)
            and strategy in ("cos", "linear") and _real_ok(div, low_open=True)
            and _real_ok(fdiv, low_open=True) and isinstance(three, bool)):
        return False
    ends = ([pct * total - 1, 2 * pct * total - 2, total - 1] if three else [pct * total - 1, total - 1])
    return all(b > a_ for a_, b in zip([0.0] + ends, ends))


def _ref_restarts(t, lr, period, mult, floor):
    """SGDR: cycle i lasts period * mult**i ticks; cosine from lr to floor within a cycle."""
    if mult == 1:
        start, length = t - t % period, period
    else:
        start, length = 0, period
        while t >= start + length:
            start, length = start + length, length * mult
    return floor + (lr - floor) * _cos_half(t - start, length)


def _inner_schedule(ex):
    """A valid simple schedule and its reference function."""
    kind = ex.draw(st.sampled_from(["constant", "exponential", "linear_warmup", "step_decay"]), "inner")
    lr = ex.draw(st.sampled_from([0.0, 0.1, 1.0]), "inner lr")
    if kind == "constant":
        return S.constant(lr), lambda t: lr
    if kind == "exponential":
        g = ex.draw(st.sampled_from([0.5, 0.9, 1.0]), "inner gamma")
        return S.exponential(lr, g), lambda t: lr * g ** t
    if kind == "step_decay":
        k = ex.draw(st.integers(1, 5), "inner step")
        return S.step_decay(lr, k, 0.5), lambda t: lr * 0.5 ** (t // k)
    k = ex.draw(st.integers(1, 5), "inner warmup")
    return S.linear_warmup(lr, k), lambda t: lr * min(t, k) / k


def build_schedule(ex, kind):
    """(schedule or None, reference t -> lr or None, valid). Builds with drawn arguments."""
    if kind == "constant":
        lr, _ = _draw(ex, REAL_OK, BAD_REAL, "lr")
        args, valid, ref = (lr,), _real_ok(lr), lambda t: float(lr)
    elif kind == "inverse_time":
        (lr, _), (d, _), (p, _) = (_draw(ex, REAL_OK, BAD_REAL, k) for k in ("lr", "decay", "power"))
        args, valid = (lr, d, p), all(_real_ok(v) for v in (lr, d, p))
        ref = lambda t: float(lr) / (1.0 + float(d) * t) ** float(p)  # noqa: E731
    elif kind == "step_decay":
        (lr, _), (k, _), (g, _) = (_draw(ex, REAL_OK, BAD_REAL, "lr"), _draw(ex, INT_OK, BAD_INT, "step"),
                                   _draw(ex, GAMMA_OK, BAD_REAL, "gamma"))
        args, valid = (lr, k, g), _real_ok(lr) and _int_ok(k) and _real_ok(g)
        ref = lambda t: float(lr) * float(g) ** (t // int(k))  # noqa: E731
    elif kind == "multistep":
        lr, _ = _draw(ex, REAL_OK, BAD_REAL, "lr")
        g, _ = _draw(ex, GAMMA_OK, BAD_REAL, "gamma")
        ms = sorted(set(ex.draw(st.lists(st.integers(1, 100), max_size=4), "milestones")))
        if ex.chance(8, "bad milestones"):
            ms = ex.draw(st.sampled_from([[5, 5], [0, 3], 30, [2.5], ["a"], [7, 3]]), "milestones")
        args = (lr, ms, g)
        valid = (_real_ok(lr) and _real_ok(g) and isinstance(ms, list) and all(_int_ok(m) for m in ms)
                 and all(b > a for a, b in zip(ms, ms[1:])))
        ref = lambda t: float(lr) * float(g) ** sum(1 for m in ms if m <= t)  # noqa: E731
    elif kind == "exponential":
        (lr, _), (g, _) = _draw(ex, REAL_OK, BAD_REAL, "lr"), _draw(ex, GAMMA_OK, BAD_REAL, "gamma")
        args, valid = (lr, g), _real_ok(lr) and _real_ok(g)
        ref = lambda t: float(lr) * float(g) ** t  # noqa: E731
    elif kind == "cosine_decay":
        (lr, _), (n, _), (fl, _) = (_draw(ex, REAL_OK, BAD_REAL, "lr"), _draw(ex, INT_OK, BAD_INT, "total"),
                                    _draw(ex, REAL_OK, BAD_REAL, "floor"))
        args, valid = (lr, n, fl), _real_ok(lr) and _int_ok(n) and _real_ok(fl)
        ref = lambda t: float(fl) if t >= n else float(fl) + (float(lr) - float(fl)) * _cos_half(t, int(n))  # noqa: E731
    elif kind == "linear_warmup":
        (pk, _), (k, _), (s0, _) = (_draw(ex, REAL_OK, BAD_REAL, "peak"), _draw(ex, INT_OK, BAD_INT, "warmup"),
                                    _draw(ex, REAL_OK, BAD_REAL, "start"))
        args, valid = (pk, k, s0), _real_ok(pk) and _int_ok(k) and _real_ok(s0)
        ref = lambda t: float(s0) + (float(pk) - float(s0)) * min(t, int(k)) / int(k)  # noqa: E731
    elif kind == "warmup_cosine":
        (pk, _), (k, _), (n, _), (fl, _), (s0, _) = (
            _draw(ex, REAL_OK, BAD_REAL, "peak"), _draw(ex, INT_OK, BAD_INT, "warmup"),
            _draw(ex, INT_OK, BAD_INT, "total"), _draw(ex, REAL_OK, BAD_REAL, "floor"),
            _draw(ex, REAL_OK, BAD_REAL, "start"))
        args = (pk, k, n, fl, s0)
        valid = (all(_real_ok(v) for v in (pk, fl, s0)) and _int_ok(k) and _int_ok(n) and int(n) > int(k))

        def ref(t):
            pk_, fl_, s_, k_, n_ = float(pk), float(fl), float(s0), int(k), int(n)
            if t < k_:
                return s_ + (pk_ - s_) * t / k_
            if t >= n_:
                return fl_
            return fl_ + (pk_ - fl_) * _cos_half(t - k_, n_ - k_)
    elif kind == "cosine_restarts":
        (lr, _), (p, _), (fl, _) = (_draw(ex, REAL_OK, BAD_REAL, "lr"), _draw(ex, INT_OK, BAD_INT, "period"),
                                    _draw(ex, REAL_OK, BAD_REAL, "floor"))
        m, _ = _draw(ex, st.integers(1, 3), [0, 1.5, True], "mult")
        args, valid = (lr, p, m, fl), _real_ok(lr) and _int_ok(p) and _int_ok(m) and _real_ok(fl)
        ref = lambda t: _ref_restarts(t, float(lr), int(p), int(m), float(fl))  # noqa: E731
    elif kind == "one_cycle":
        mx, _ = _draw(ex, REAL_OK, BAD_REAL, "max_lr")
        n, _ = _draw(ex, st.integers(2, 200), [1, 0, 2.5, True], "total")
        pct, _ = _draw(ex, st.sampled_from([0.0, 0.1, 0.25, 0.3, 0.5, 0.9, 1.0]), [1.5, -0.1, _NAN], "pct")
        strategy, _ = _draw(ex, st.sampled_from(["cos", "linear"]), ["cosine", None], "anneal")
        div, _ = _draw(ex, st.sampled_from([25.0, 1.0, 10]), [0, -1.0, _INF], "div")
        fdiv, _ = _draw(ex, st.sampled_from([1e4, 1.0, 100]), [0.0, _NAN], "final div")
        three, _ = _draw(ex, st.booleans(), [1, "yes", None], "three phase")
        args = (mx, n, pct, strategy, div, fdiv, three)
        valid = _one_cycle_ok(args)
        ref = lambda t: _ref_one_cycle(t, (float(mx), int(n), float(pct), strategy, float(div),  # noqa: E731
                                           float(fdiv), three))
    elif kind == "join":
        inner = [_inner_schedule(ex) for _ in range(ex.draw(st.integers(1, 3), "pieces"))]
        bounds = sorted(set(ex.draw(st.lists(st.integers(1, 40), min_size=len(inner) - 1,
                                             max_size=len(inner) - 1), "boundaries")))
        scheds = [s for s, _ in inner]
        if ex.chance(10, "bad join"):
            fault = ex.draw(st.sampled_from(["length", "order", "callable", "empty"]), "fault")
            if fault == "length":
                bounds = bounds + [99]
            elif fault == "order" and len(bounds) >= 2:
                bounds = bounds[::-1]
            elif fault == "callable":
                scheds = scheds[:-1] + [lambda t: 0.1]
            elif fault == "empty":
                scheds, bounds = [], []
        args = (scheds, bounds)
        valid = (bool(scheds) and all(isinstance(s, S.Schedule) for s in scheds)
                 and len(bounds) == len(scheds) - 1 and all(b > a for a, b in zip(bounds, bounds[1:])))

        def ref(t):
            offset, current = 0, inner[0][1]
            for b, (_, f) in zip(bounds, inner[1:]):
                if t >= b:
                    offset, current = b, f
            return current(t - offset)
    elif kind == "per_epoch":
        inner, f = _inner_schedule(ex)
        e, _ = _draw(ex, INT_OK, BAD_INT, "steps per epoch")
        if ex.chance(6, "not a schedule"):
            inner = ex.draw(st.sampled_from([0.1, None]), "inner")
        args, valid = (inner, e), isinstance(inner, S.Schedule) and _int_ok(e)
        ref = lambda t: f(t // int(e))  # noqa: E731
    else:
        raise KeyError(kind)
    try:
        sched = getattr(S, kind)(*args)
    except ERRORS as err:
        assert not valid, f"{kind}{args!r} rejected: {err!r}"
        return None, None, False
    assert valid, f"{kind}{args!r} accepted"
    return sched, ref, True


STEP_VALUES = [0, 1, 7, 10**18, 10**400, 1e300, 3.0, np.int64(5), np.int32(7), np.float64(2.0),
               1.5, -1, -2.0, True, None, "3", _NAN, _INF]


def _step_ok(t):
    if isinstance(t, bool):
        return False
    if isinstance(t, numbers.Integral):
        return int(t) >= 0
    return isinstance(t, numbers.Real) and float(t).is_integer() and float(t) >= 0


def _reference_value(ref, t):
    """ref(t), or None when it has no finite value (overflow)."""
    try:
        v = ref(int(t))
    except OverflowError:
        return None
    return v if math.isfinite(v) else None


SCHEDULE_KINDS = [n for n in S.__all__[1:] if n in S.SCHEDULES]


@entry_point(*SCHEDULE_KINDS)
def fuzz_schedule(ex, kind):
    """Build a schedule from drawn arguments, evaluate it at drawn steps, round-trip it."""
    sched, ref, valid = build_schedule(ex, kind)
    if not valid:
        return
    clone = pickle.loads(pickle.dumps(sched))
    assert clone == sched and hash(clone) == hash(sched) and eval(repr(sched)) == sched
    for _ in range(ex.draw(st.integers(1, 4), "calls")):
        t = ex.draw(st.one_of(st.integers(0, 500), st.integers(0, 10**9), st.sampled_from(STEP_VALUES)), "t")
        expected = _reference_value(ref, t) if _step_ok(t) else None
        try:
            value = sched(t)
        except ERRORS as err:
            assert expected is None, f"{sched!r}({t!r}) raised {err!r}; expected {expected!r}"
            continue
        assert _step_ok(t), f"{sched!r} accepted step {t!r}"
        assert expected is not None, f"{sched!r}({t!r}) = {value!r}; expected an overflow error"
        assert isinstance(value, float) and math.isfinite(value) and value >= 0
        assert abs(value - expected) <= 1e-9 * max(1.0, abs(expected)), (sched, t, value, expected)
        assert clone(t) == value


def _mutate_data(ex, node):
    """A copy of stored-schedule data with one drawn change somewhere in it."""
    if isinstance(node, dict):
        keys = sorted(node)
        change = ex.draw(st.sampled_from(["recurse", "drop", "add", "rename"]), "change")
        out = dict(node)
        if change == "recurse" and keys:
            k = ex.draw(st.sampled_from(keys), "key")
            out[k] = _mutate_data(ex, node[k])
        elif change == "drop" and keys:
            out.pop(ex.draw(st.sampled_from(keys), "key"))
        elif change == "add":
            out[ex.draw(st.sampled_from(["__pickle__", "extra", "schedule", "lr"]), "new key")] = \
                ex.draw(st.sampled_from(["gASV", 1, None, [1]]), "new value")
        elif change == "rename" and "schedule" in out:
            out["schedule"] = ex.draw(st.sampled_from(
                ["exec", "Schedule", "os.system", None, 3] + sorted(S.SCHEDULES)), "name")
        return out
    if isinstance(node, list):
        if not node or ex.chance(3, "shorten"):
            return node[:-1] + [ex.draw(st.sampled_from([0, -1, "x", None, 1.5]), "item")]
        i = ex.draw(st.integers(0, len(node) - 1), "index")
        return node[:i] + [_mutate_data(ex, node[i])] + node[i + 1:]
    return ex.draw(st.sampled_from([-1.0, 0, 1, 2.5, 10**400, "cos", None, True, _NAN, [1, 2],
                                    {"__pickle__": "gASV"}]), "value")


@entry_point("to_data", "from_data", entry="schedule")
def fuzz_schedule_data(ex, name):
    """Schedules stored as data: rebuilt equal from JSON; altered data is rebuilt exactly as
    the constructor would, or refused with ValueError."""
    sched, _, valid = build_schedule(ex, ex.draw(st.sampled_from(SCHEDULE_KINDS), "kind"))
    if not valid:
        return
    data = json.loads(json.dumps(S.to_data(sched)))
    assert S.from_data(data) == sched
    if ex.chance(2, "alter"):
        bent = _mutate_data(ex, data)
        try:
            rebuilt = S.from_data(bent)
        except ValueError:
            return
        assert isinstance(rebuilt, S.Schedule)
        again = S.to_data(rebuilt)
        assert S.from_data(json.loads(json.dumps(again))) == rebuilt
    if ex.chance(4, "not a schedule"):
        try:
            S.to_data(ex.draw(st.sampled_from([lambda t: 0.1, 0.1, None, math.cos]), "other"))
        except TypeError:
            return
        raise AssertionError("to_data accepted something that is not a schedule")


BAD_LR = [lambda t: -0.1, lambda t: float("nan"), lambda t: "0.1", lambda t: None,
          lambda t: float("inf")]


@entry_point("SGD", "Adam")
def fuzz_scheduled_optimizer(ex, name):
    """An optimizer driven by a schedule (or by a callable returning bad values)."""
    kind = ex.draw(st.sampled_from(["exponential", "cosine_decay", "one_cycle", "join", "per_epoch"]), "kind")
    sched, ref, valid = build_schedule(ex, kind)
    if not valid:
        return
    bad = ex.chance(15, "bad lr")
    lr = ex.draw(st.sampled_from(BAD_LR), "bad lr") if bad else sched
    p = np.asarray(ex.rng.integers(-80, 81, 5) / 8)
    opt = getattr(fo, name)([p], lr=lr)
    mirror = ReferenceOptimizer(name.lower(), [dict(opt.param_groups[0], lr=lambda t: ref(t), params=[p])])
    masks = Masks(p)
    for t in range(ex.draw(st.integers(1, 4), "steps")):
        g = np.asarray(ex.rng.integers(-80, 81, 5) / 8)
        before, sd = p.copy(), opt.state_dict()
        expected_lr = _reference_value(ref, t) if not bad else None
        try:
            opt.step([g])
        except ERRORS:
            assert bad or expected_lr is None, f"step {t} refused a good schedule value"
            assert p.tobytes() == before.tobytes() and opt.state_dict()["state"].keys() == sd["state"].keys()
            return
        assert not bad and expected_lr is not None, "stepped with a bad learning rate"
        mirror.step([g])
        assert_close(p, mirror.params[0], masks, f"{name} with {sched!r}, step {t}",
                     scale_from=before)


# ====================================================================================== tricks
def _labels(ex, n, n_classes):
    """Integer labels (N,) in range (maybe a bad form), as an array of a drawn int dtype."""
    dtype = ex.draw(st.sampled_from([np.int64, np.int32, np.uint8, np.int8]), "label dtype")
    y = ex.rng.integers(0, max(1, min(n_classes, 100)), n).astype(dtype)
    if ex.chance(6, "label out of range") and n:
        y = y.astype(np.int64)
        y[ex.draw(st.integers(0, n - 1), "at")] = ex.draw(st.sampled_from([-1, n_classes, 10**6]), "bad label")
    return y


def _unchanged(*pairs):
    for a, b in pairs:
        if isinstance(a, np.ndarray):
            assert a.tobytes() == b.tobytes(), "an input array changed"


def _copy(a):
    return a.copy() if isinstance(a, np.ndarray) else a


def _onehot(labels, c):
    q = np.zeros((labels.shape[0], c))
    q[np.arange(labels.shape[0]), labels] = 1.0
    return q


def _is_int_labels(y):
    return isinstance(y, np.ndarray) and y.dtype.kind in "iu"


def _is_float_rows(y):
    return isinstance(y, np.ndarray) and y.dtype in FLOATS


@entry_point("mixup")
def fuzz_mixup(ex, _):
    """tricks.mixup: x~ = lam x + (1 - lam) x[perm], the same for labels; lam ~ Beta(a, a)."""
    n = ex.draw(st.integers(0, 6), "N")
    shape = (n,) + tuple(ex.draw(st.lists(st.integers(1, 3), max_size=2), "example shape"))
    x = ex.array(shape, ex.dtype(), "grad")                         # any layout is allowed
    n = x.shape[0] if isinstance(x, np.ndarray) and x.ndim >= 1 else n
    c = ex.draw(st.integers(1, 4), "classes")
    n_classes = ex.pick("n_classes", [None, c, c + 1], [0, 2.5])
    if ex.draw(st.booleans(), "integer labels"):
        y = _labels(ex, n, c)
    else:
        y = ex.array((n, c), ex.dtype(), "grad")
    alpha = ex.pick("alpha", [0.2, 1.0, 5.0], [0.0, -1.0, _NAN, _INF, True, "1"])
    rng = np.random.default_rng(ex.draw(st.integers(0, 99), "rng seed"))
    if ex.chance(5, "bad rng"):
        rng = ex.draw(st.sampled_from([None, 42, np.random.RandomState(0)]), "rng")
    state = rng.bit_generator.state if isinstance(rng, np.random.Generator) else None
    valid = (isinstance(x, np.ndarray) and x.dtype in FLOATS and x.ndim >= 1 and x.shape[0] >= 1
             and _real_ok(alpha, low_open=True) and isinstance(rng, np.random.Generator)
             and (n_classes is None or _int_ok(n_classes, 1)) and isinstance(y, np.ndarray))
    if valid and _is_int_labels(y):
        valid = (n_classes is not None and y.ndim == 1 and y.shape[0] == n
                 and (y.size == 0 or (int(y.min()) >= 0 and int(y.max()) < n_classes)))
    elif valid and _is_float_rows(y):
        valid = y.ndim == 2 and y.shape[0] == n and (n_classes is None or y.shape[1] == n_classes)
    else:
        valid = False
    xs, ys = _copy(x), _copy(y)
    try:
        xm, ym, lam, perm = fo.mixup(x, y, alpha, rng, n_classes=n_classes)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        _unchanged((x, xs), (y, ys))
        if state is not None:
            assert rng.bit_generator.state == state, "a refused call drew from the generator"
        return
    assert valid, "accepted invalid arguments"
    _unchanged((x, xs), (y, ys))
    twin = np.random.default_rng(0)
    twin.bit_generator.state = state
    lam_ref = float(twin.beta(float(alpha), float(alpha)))
    perm_ref = twin.permutation(n)
    assert rng.bit_generator.state == twin.bit_generator.state, "drew more than lambda and perm"
    assert lam == lam_ref and np.array_equal(perm, perm_ref)
    x64 = np.asarray(x, np.float64)
    masks = Masks(x64.reshape(-1))
    masks.add(x64[perm].reshape(-1))
    assert xm.dtype == x.dtype and xm.shape == x.shape and xm.flags.c_contiguous
    assert_close(xm, lam * x64 + (1 - lam) * x64[perm], masks, "mixed x",
                 scale_from=lam * np.abs(x64) + (1 - lam) * np.abs(x64[perm]))
    q = _onehot(y.astype(np.int64), n_classes) if _is_int_labels(y) else np.asarray(y, np.float64)
    qm = Masks(q.reshape(-1))
    qm.add(q[perm].reshape(-1))
    assert ym.dtype == x.dtype and ym.shape == q.shape
    assert_close(ym, lam * q + (1 - lam) * q[perm], qm, "mixed y",
                 scale_from=lam * np.abs(q) + (1 - lam) * np.abs(q[perm]))


@entry_point("smooth_labels")
def fuzz_smooth_labels(ex, _):
    """tricks.smooth_labels: lecture (1-e) y + e/(n-1) (1-y), torch (1-e) y + e/n."""
    n = ex.draw(st.integers(0, 5), "N")
    c = ex.draw(st.integers(1, 5), "classes")
    n_classes = ex.pick("n_classes", [c, c + 1], [1, 0, 2.5, True])
    variant = ex.pick("variant", ["lecture", "torch"], ["other"])
    eps = ex.pick("eps", [0.0, 0.1, 0.5, 0.99], [1.0, -0.1, _NAN, "0.1"])
    dtype = ex.pick("dtype", [np.float64, np.float32, None], [np.float16, np.int32, "bogus"])
    y = _labels(ex, n, c) if ex.draw(st.booleans(), "integer labels") else ex.array((n, c), ex.dtype(), "grad")
    try:
        out_dtype = np.dtype(dtype)
    except TypeError:
        out_dtype = None
    valid = (variant in ("lecture", "torch") and _int_ok(n_classes, 2 if variant == "lecture" else 1)
             and _real_ok(eps, 0.0, None) and float(eps) < 1.0 and isinstance(y, np.ndarray))
    if valid and _is_int_labels(y):
        valid = (out_dtype is not None and out_dtype in FLOATS and y.ndim == 1
                 and (y.size == 0 or (int(y.min()) >= 0 and int(y.max()) < n_classes)))
    elif valid and _is_float_rows(y):
        valid = y.ndim == 2 and y.shape[1] == n_classes
    else:
        valid = False
    ys = _copy(y)
    try:
        q = fo.smooth_labels(y, n_classes, eps, variant=variant, dtype=dtype)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        _unchanged((y, ys))
        return
    assert valid, "accepted invalid arguments"
    _unchanged((y, ys))
    hard = _onehot(y.astype(np.int64), n_classes) if _is_int_labels(y) else np.asarray(y, np.float64)
    e = float(eps)
    ref = (1 - e) * hard + (e / (n_classes - 1)) * (1 - hard) if variant == "lecture" else (1 - e) * hard + e / n_classes
    assert q.shape == hard.shape and q.dtype == (out_dtype if _is_int_labels(y) else y.dtype)
    assert_close(q, ref, Masks(hard.reshape(-1)), f"smooth_labels {variant}")


@entry_point("softmax_cross_entropy")
def fuzz_cross_entropy(ex, _):
    """tricks.softmax_cross_entropy: loss -1/N sum q log softmax(z), grad (p sum q - q)/N."""
    n = ex.draw(st.integers(0, 5), "N")
    c = ex.draw(st.integers(0, 5), "C")
    logits = ex.array((n, c), ex.dtype(), "grad")
    if isinstance(logits, np.ndarray) and logits.dtype in FLOATS and logits.size and ex.chance(20, "far logits"):
        logits = logits * logits.dtype.type(ex.draw(st.sampled_from([1e3, 1e30]), "scale"))
    eps = ex.pick("label smoothing", [0.0, 0.1, 0.9], [1.0, -0.1, "0", _NAN])
    targets = (_labels(ex, n, max(c, 1)) if ex.draw(st.booleans(), "integer labels")
               else ex.array((n, c), ex.dtype(), "grad"))
    valid = (isinstance(logits, np.ndarray) and logits.dtype in FLOATS and logits.ndim == 2
             and n >= 1 and c >= 1 and _real_ok(eps) and float(eps) < 1 and isinstance(targets, np.ndarray))
    if valid and _is_int_labels(targets):
        valid = (targets.ndim == 1 and targets.shape[0] == n
                 and int(targets.min()) >= 0 and int(targets.max()) < c)
    elif valid and _is_float_rows(targets):
        valid = targets.shape == logits.shape
    else:
        valid = False
    zs, ts = _copy(logits), _copy(targets)
    try:
        loss, grad = fo.softmax_cross_entropy(logits, targets, label_smoothing=eps)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        _unchanged((logits, zs), (targets, ts))
        return
    assert valid, "accepted invalid arguments"
    _unchanged((logits, zs), (targets, ts))
    z = np.asarray(logits, np.float64)
    q = _onehot(targets.astype(np.int64), c) if _is_int_labels(targets) else np.asarray(targets, np.float64)
    e = float(eps)
    if e:
        q = (1 - e) * q + e / c
    zmax = z.max(axis=1, keepdims=True)
    log_p = z - zmax - np.log(np.exp(z - zmax).sum(axis=1, keepdims=True))
    ref_loss = -float(np.sum(q * log_p)) / n
    ref_grad = (np.exp(log_p) * q.sum(axis=1, keepdims=True) - q) / n
    masks = Masks(z.reshape(-1))
    masks.add(q.reshape(-1))
    # one odd value affects its whole row: NaN/Inf -> compare finiteness, huge -> not at all
    # (float32 logits take the targets in float32, where float64's huge values overflow)
    for kind in ("nonfinite", "huge"):
        row = getattr(masks, kind).reshape(n, c).any(axis=1, keepdims=True)
        getattr(masks, kind)[...] |= np.broadcast_to(row, (n, c)).reshape(-1)
    assert grad.dtype == logits.dtype and grad.shape == logits.shape
    terms = (np.exp(log_p) * np.abs(q).sum(axis=1, keepdims=True) + np.abs(q)) / n
    assert_close(grad, ref_grad, masks, "cross-entropy gradient", scale_from=terms)
    if not (masks.nonfinite.any() or masks.huge.any()):
        tol = 1e-4 if logits.dtype == np.float32 else 1e-10
        assert abs(loss - ref_loss) <= tol * max(1.0, abs(ref_loss)), (loss, ref_loss)


def _resize_reference(batch, size, layout):
    """float64 reference of a batch resize in either layout (tests/test_resize.py's matrices)."""
    x = np.asarray(batch, np.float64)
    if layout == "NHWC":
        return reference_nchw(x.transpose(0, 3, 1, 2), *size).transpose(0, 2, 3, 1)
    return reference_nchw(x, *size)


def _size_ok(size):
    if _int_ok(size):
        return True
    return isinstance(size, (tuple, list)) and len(size) == 2 and all(_int_ok(v) for v in size)


def _as_pair(size):
    return (int(size), int(size)) if _int_ok(size) else (int(size[0]), int(size[1]))


def _batch(ex, layout):
    shape = (ex.draw(st.integers(0, 2), "N"),) + tuple(ex.draw(st.integers(0, 5), "axis") for _ in range(3))
    if ex.chance(5, "not 4-D"):
        shape = shape[:3]
    dtype = ex.draw(st.sampled_from([np.float32, np.float64, np.uint8]), "batch dtype")
    if dtype == np.uint8:
        b = ex.rng.integers(0, 256, shape).astype(np.uint8)
        if ex.chance(20, "strided batch") and b.ndim >= 1:
            b = np.repeat(b, 2, axis=-1)[..., ::2]
        return b
    return ex.array(shape, np.dtype(dtype), "grad")


def _batch_ok(batch):
    return (isinstance(batch, np.ndarray) and batch.dtype in FLOATS + (np.dtype(np.uint8),)
            and batch.ndim == 4 and 0 not in batch.shape[1:])


def _check_resized(out, batch, size, layout):
    ref = _resize_reference(batch, size, layout)
    assert out.dtype == batch.dtype and out.shape == ref.shape and out.flags.c_contiguous
    if out.dtype == np.uint8:
        check_uint8(out.astype(np.float64), np.clip(ref, 0, 255))
        return
    x = np.asarray(batch, np.float64)
    if not np.isfinite(x).all():
        return               # the dense reference spreads NaN/Inf over whole rows: no oracle
    m = Masks(np.zeros(out.size))
    if (np.abs(x) > 1e6).any():
        m.nonfinite[:] = True    # float32 and float64 overflow differently: finiteness only
    # bilinear weights are >= 0: resizing |x| bounds the terms of each output value
    assert_close(out, ref, m, f"resize to {size} ({layout})",
                 scale_from=_resize_reference(np.abs(x), size, layout))


@entry_point("random_resize")
def fuzz_random_resize(ex, _):
    """tricks.random_resize: bilinear, half-pixel centres, both layouts, optional out."""
    layout = ex.pick("layout", ["NCHW", "NHWC"], ["HWC"])
    batch = _batch(ex, layout)
    size = ex.pick("size", st.one_of(st.integers(1, 9), st.tuples(st.integers(1, 9), st.integers(1, 9))),
                   [0, (3, 0), 2.5, True, (3,), "4", None])
    valid = layout in ("NCHW", "NHWC") and _size_ok(size) and _batch_ok(batch)
    out, out_ok = None, True
    if valid and ex.draw(st.booleans(), "out"):
        h, w = _as_pair(size)
        n, a = batch.shape[0], batch.shape[1] if layout == "NCHW" else batch.shape[3]
        shape = (n, a, h, w) if layout == "NCHW" else (n, h, w, a)
        form = ex.draw(st.sampled_from(["good", "good", "dtype", "shape", "strided", "readonly", "alias"]), "out form")
        out = np.full(shape, 7, batch.dtype)
        if form == "dtype":
            out = out.astype(np.float16)
        elif form == "shape":
            out = np.zeros(shape[:-1] + (shape[-1] + 1,), batch.dtype)
        elif form == "strided":
            out = np.zeros(shape[:-1] + (2 * shape[-1],), batch.dtype)[..., ::2]
        elif form == "readonly":
            out.flags.writeable = False
        elif form == "alias":
            out = batch.reshape(-1)[:0] if batch.size == 0 else batch
        out_ok = form == "good" or (form == "strided" and out.flags.c_contiguous) or (
            form == "alias" and (out.shape == shape and out.dtype == batch.dtype and out.flags.c_contiguous
                                 and out.flags.writeable and not np.shares_memory(out, batch)))
    bs = _copy(batch)
    try:
        res = fo.random_resize(batch, size, layout, out=out)
    except ERRORS as err:
        assert not (valid and out_ok), f"rejected valid arguments: {err!r}"
        _unchanged((batch, bs))
        return
    assert valid and out_ok, "accepted invalid arguments"
    _unchanged((batch, bs))
    if out is not None:
        assert res is out
    _check_resized(res, batch, _as_pair(size), layout)


@entry_point("RandomBatchShapes")
def fuzz_batch_shapes(ex, _):
    """tricks.RandomBatchShapes: a size drawn from `sizes` every `every` batches, then resized."""
    sizes = ex.draw(st.lists(st.one_of(st.integers(1, 6), st.tuples(st.integers(1, 6), st.integers(1, 6))),
                             max_size=3), "sizes")
    if ex.chance(8, "bad sizes"):
        sizes = ex.draw(st.sampled_from([[0], [(2, 0)], 224, "abc", [2.5], None]), "sizes")
    layout = ex.pick("layout", ["NCHW", "NHWC"], ["CHW"])
    every = ex.pick("every", [1, 2, 3], [0, 1.5, True])
    rng = np.random.default_rng(ex.draw(st.integers(0, 99), "seed"))
    if ex.chance(5, "bad rng"):
        rng = 7
    valid = (isinstance(sizes, list) and len(sizes) > 0 and all(_size_ok(s) for s in sizes)
             and layout in ("NCHW", "NHWC") and _int_ok(every) and isinstance(rng, np.random.Generator))
    try:
        shapes = fo.RandomBatchShapes(sizes, rng, layout=layout, every=every)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    pairs = [_as_pair(s) for s in sizes]
    twin = copy.deepcopy(rng)
    current, calls = None, 0
    for _ in range(ex.draw(st.integers(1, 4), "batches")):
        batch = _batch(ex, layout)
        explicit = ex.draw(st.sampled_from([None, None, pairs[0], (99, 99)]), "explicit size")
        state, bs = rng.bit_generator.state, _copy(batch)
        ok = _batch_ok(batch) and (explicit is None or explicit in pairs)
        try:
            out = shapes(batch, size=explicit)
        except ERRORS as err:
            assert not ok, f"rejected a valid batch: {err!r}"
            assert rng.bit_generator.state == state, "a refused batch drew from the generator"
            _unchanged((batch, bs))
            continue
        assert ok, "accepted an invalid batch or size"
        if explicit is None:
            if current is None or calls % int(every) == 0:
                current = pairs[int(twin.integers(len(pairs)))]
            calls += 1
            assert shapes.current_size == current
            size = current
        else:
            size = explicit
        assert rng.bit_generator.state == twin.bit_generator.state
        _check_resized(out, batch, size, layout)


# ================================================================================== BatchNorm
@entry_point("BatchNorm")
def fuzz_batchnorm(ex, _):
    """nn.BatchNorm: forward (train/eval), running statistics, backward, against the equations."""
    ex.special = False                   # a NaN spreads over its whole channel: not compared here
    c = ex.pick("num_features", [1, 2, 3], [0, -1, 2.5, True])
    eps = ex.pick("eps", [1e-5, 1e-3, 1.0], [0.0, -1.0, _NAN, True])
    momentum = ex.pick("momentum", [0.1, 0.0, 1.0, None, 0.5], [1.5, -0.1, "x"])
    affine = ex.draw(st.sampled_from([True, False, 1, None]), "affine")
    dtype = ex.pick("dtype", [np.float32, np.float64], [np.float16, "bogus"])
    try:
        pdtype = np.dtype(dtype)
    except TypeError:
        pdtype = None
    valid = (_int_ok(c) and _real_ok(eps, low_open=True)
             and (momentum is None or _real_ok(momentum, 0.0, 1.0))
             and pdtype is not None and pdtype in FLOATS)       # (np.dtype == None is float64)
    try:
        bn = fo.BatchNorm(c, eps=eps, momentum=momentum, affine=affine, dtype=dtype)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    if bn.affine:
        bn.weight[...] = ex.rng.integers(4, 13, c) / 8
        bn.bias[...] = ex.rng.integers(-8, 9, c) / 8
    ref = {"mean": np.zeros(c), "var": np.ones(c), "k": 0}
    cache = None
    for _ in range(ex.draw(st.integers(1, 4), "calls")):
        if ex.draw(st.booleans(), "toggle mode"):
            bn.train(not bn.training)
        state = copy.deepcopy(bn.state_dict())
        if cache is not None and ex.draw(st.booleans(), "backward"):
            x, xhat, inv_std, m, train = cache
            dy = ex.array(x.shape, ex.dtype(), "grad")
            ok = isinstance(dy, np.ndarray) and dy.dtype in FLOATS and dy.shape == x.shape
            try:
                dx = bn.backward(dy)
            except ERRORS as err:
                assert not ok, f"backward rejected a valid dy: {err!r}"
                assert _same_bn(state, bn.state_dict())
                continue
            assert ok, "backward accepted an invalid dy"
            g = np.asarray(dy, np.float64).reshape(x.shape[0], c, int(np.prod(x.shape[2:], dtype=np.int64)))
            w = np.asarray(bn.weight, np.float64) if bn.affine else np.ones(c)
            sg, sgx = g.sum(axis=(0, 2)), (g * xhat).sum(axis=(0, 2))
            if train:
                ref_dx = (w * inv_std / m)[None, :, None] * (m * g - sg[None, :, None] - xhat * sgx[None, :, None])
            else:
                ref_dx = g * (w * inv_std)[None, :, None]
            assert dx.dtype == dy.dtype and dx.shape == x.shape
            ag, agx = np.abs(g).sum(axis=(0, 2)), np.abs(g * xhat).sum(axis=(0, 2))
            if train:
                terms = (np.abs(w) * inv_std / m)[None, :, None] * (
                    m * np.abs(g) + ag[None, :, None] + np.abs(xhat) * agx[None, :, None])
            else:
                terms = ref_dx
            assert_close(dx, ref_dx.reshape(x.shape), Masks(np.zeros(dx.size)), "BatchNorm dx",
                         scale_from=terms)
            if bn.affine:
                assert_close(bn.grad_bias, sg, Masks(np.zeros(c)), "grad_bias", scale_from=ag)
                assert_close(bn.grad_weight, sgx, Masks(np.zeros(c)), "grad_weight",
                             scale_from=agx)
            continue
        shape = (ex.draw(st.integers(0, 4), "N"), c) + tuple(
            ex.draw(st.lists(st.integers(0, 3), max_size=2), "spatial"))
        if ex.chance(5, "wrong channels"):
            shape = (shape[0], c + 1) + shape[2:]
        x = ex.array(shape, ex.dtype(), "grad")
        m = shape[0] * int(np.prod(shape[2:], dtype=np.int64))
        ok = (isinstance(x, np.ndarray) and x.dtype in FLOATS and x.ndim >= 2 and x.shape[1] == c
              and (not bn.training or m > 1))
        xs = _copy(x)
        try:
            y = bn.forward(x)
        except ERRORS as err:
            assert not ok, f"forward rejected a valid x: {err!r}"
            assert _same_bn(state, bn.state_dict())
            _unchanged((x, xs))
            continue
        assert ok, "forward accepted an invalid x"
        _unchanged((x, xs))
        x3 = np.asarray(x, np.float64).reshape(shape[0], c, int(np.prod(shape[2:], dtype=np.int64)))
        stat_terms = (np.abs(ref["mean"]), np.abs(ref["var"]))
        if bn.training:
            mean = x3.mean(axis=(0, 2))
            var = ((x3 - mean[None, :, None]) ** 2).mean(axis=(0, 2))
            ref["k"] += 1
            rho = bn.momentum if bn.momentum is not None else 1.0 / ref["k"]
            ref["mean"] = (1 - rho) * ref["mean"] + rho * mean
            ref["var"] = (1 - rho) * ref["var"] + rho * var * m / (m - 1)
            stat_terms = ((1 - rho) * np.abs(stat_terms[0]) + rho * np.abs(x3).mean(axis=(0, 2)),
                          (1 - rho) * stat_terms[1] + rho * (x3 ** 2).mean(axis=(0, 2)) * m / (m - 1))
        else:
            mean, var = ref["mean"], ref["var"]
        inv_std = 1.0 / np.sqrt(var + bn.eps)
        xhat = (x3 - mean[None, :, None]) * inv_std[None, :, None]
        w = np.asarray(bn.weight, np.float64) if bn.affine else np.ones(c)
        b = np.asarray(bn.bias, np.float64) if bn.affine else np.zeros(c)
        ref_y = (xhat * w[None, :, None] + b[None, :, None]).reshape(shape)
        assert y.dtype == x.dtype and y.shape == shape
        # the terms: x - mean (which may cancel) normalized, the bias; the running statistics
        # from the mean of |x| and of x^2 (a one-pass variance cancels against mean^2)
        y_terms = ((np.abs(x3) + np.abs(mean)[None, :, None]) * inv_std[None, :, None]
                   * np.abs(w)[None, :, None] + np.abs(b)[None, :, None]).reshape(shape)
        assert_close(y, ref_y, Masks(np.zeros(y.size)), "BatchNorm y", scale_from=y_terms)
        assert_close(bn.running_mean, ref["mean"], Masks(np.zeros(c)), "running_mean",
                     scale_from=stat_terms[0])
        assert_close(bn.running_var, ref["var"], Masks(np.zeros(c)), "running_var",
                     scale_from=stat_terms[1])
        # running statistics are stored in bn.dtype: continue from the stored values
        ref["mean"], ref["var"] = np.array(bn.running_mean, np.float64), np.array(bn.running_var, np.float64)
        cache = (x, xhat, inv_std, m, bn.training)


def _same_bn(a, b):
    return all((np.array_equal(a[k], b[k]) if isinstance(a[k], np.ndarray) else a[k] == b[k]) for k in a)
