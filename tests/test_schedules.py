"""Schedules: closed forms, torch's lr_scheduler (golden file + live), composition, pickling,
validation."""
import importlib.util
import math
import json
import pickle
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastopt import schedules as S
from fastopt.schedules import *  # noqa: F401,F403  (repr must evaluate in this namespace)

GOLDEN = Path(__file__).parent / "golden"
N = 1000
RTOL = 1e-12

# The fastopt schedule matching each torch case of tests/golden/make_schedule_golden.py.
CASES = {
    "constant": S.constant(0.1),
    "inverse_time": S.inverse_time(0.1),
    "inverse_time_general": S.inverse_time(0.1, decay=0.01, power=0.75),
    "step_decay": S.step_decay(0.1, step_size=100, gamma=0.5),
    "multistep": S.multistep(0.1, milestones=[300, 600, 900], gamma=0.1),
    "exponential": S.exponential(0.1, gamma=0.995),
    "cosine_decay": S.cosine_decay(0.1, total_steps=1000),
    "cosine_decay_floor": S.cosine_decay(0.1, total_steps=1000, floor=1e-3),
    "linear_warmup": S.linear_warmup(0.1, warmup_steps=200, start=0.001),
    "warmup_cosine": S.warmup_cosine(0.1, warmup_steps=100, total_steps=1000, floor=1e-4, start=0.001),
    "cosine_restarts": S.cosine_restarts(0.1, period=128),
    "cosine_restarts_mult": S.cosine_restarts(0.1, period=50, mult=2, floor=1e-4),
    "one_cycle": S.one_cycle(0.1, total_steps=1000),
    "one_cycle_linear_three_phase": S.one_cycle(0.1, 1000, pct_start=0.25, anneal_strategy="linear",
                                                div_factor=10.0, final_div_factor=100.0,
                                                three_phase=True),
    "join": S.join([S.step_decay(0.1, 50, 0.5), S.exponential(0.1, 0.99)], [400]),
    "per_epoch_multistep": S.per_epoch(S.multistep(0.1, [3, 6, 9]), steps_per_epoch=100),
}


def values(schedule, n=N):
    return np.array([schedule(t) for t in range(n)])


def rel_err(a, b):
    a, b = np.asarray(a, float), np.asarray(b, float)
    scale = np.maximum(np.abs(b), np.finfo(float).tiny)
    return np.max(np.where(a == b, 0.0, np.abs(a - b) / scale))


# ------------------------------------------------------------------- closed forms, written here

def closed_form(name, t):
    """Each case's formula written out independently, in float64, from the equations."""
    cos = math.cos
    pi = math.pi
    if name == "constant":
        return 0.1
    if name == "inverse_time":
        return 0.1 / (t + 1)  # lr_0 / k with k = t + 1
    if name == "inverse_time_general":
        return 0.1 * (1 + 0.01 * t) ** -0.75
    if name == "step_decay":
        return 0.1 * 0.5 ** (t // 100)
    if name == "multistep":
        return 0.1 * 0.1 ** ((t >= 300) + (t >= 600) + (t >= 900))
    if name == "exponential":
        return 0.1 * 0.995 ** t
    if name == "cosine_decay":
        return 0.5 * (1 + cos(pi * t / 1000)) * 0.1
    if name == "cosine_decay_floor":
        return 1e-3 + 0.5 * (0.1 - 1e-3) * (1 + cos(pi * t / 1000))
    if name == "linear_warmup":
        return 0.001 + (0.1 - 0.001) * min(t, 200) / 200
    if name == "warmup_cosine":
        if t < 100:
            return 0.001 + (0.1 - 0.001) * t / 100
        return 1e-4 + 0.5 * (0.1 - 1e-4) * (1 + cos(pi * (t - 100) / 900))
    if name == "cosine_restarts":
        return 0.05 * (1 + cos(pi * (t % 128) / 128))
    if name == "cosine_restarts_mult":
        start, length = 0, 50  # cycles [0,50), [50,150), [150,350), [350,750), [750,1550)
        while t >= start + length:
            start, length = start + length, 2 * length
        return 1e-4 + 0.5 * (0.1 - 1e-4) * (1 + cos(pi * (t - start) / length))
    if name == "one_cycle":
        lo, hi, end = 0.1 / 25, 0.1, 0.1 / 25 / 1e4
        if t <= 299:
            return hi + (lo - hi) / 2 * (1 + cos(pi * t / 299))
        return end + (hi - end) / 2 * (1 + cos(pi * (t - 299) / (999 - 299)))
    if name == "one_cycle_linear_three_phase":
        lo, hi, end = 0.01, 0.1, 0.0001
        if t <= 249:
            return lo + (hi - lo) * t / 249
        if t <= 498:
            return hi + (lo - hi) * (t - 249) / (498 - 249)
        return lo + (end - lo) * (t - 498) / (999 - 498)
    if name == "join":
        return 0.1 * 0.5 ** (t // 50) if t < 400 else 0.1 * 0.99 ** (t - 400)
    if name == "per_epoch_multistep":
        epoch = t // 100
        return 0.1 * 0.1 ** ((epoch >= 3) + (epoch >= 6) + (epoch >= 9))
    raise KeyError(name)


@pytest.mark.parametrize("name", sorted(CASES))
def test_closed_form_every_step(name):
    expected = [closed_form(name, t) for t in range(N)]
    assert rel_err(values(CASES[name]), expected) < RTOL


def _golden():
    with np.load(GOLDEN / "schedules.npz") as f:
        return {k: f[k] for k in f.files}


def test_golden_file_covers_every_case():
    golden = _golden()
    assert set(golden) - {"torch_version"} == set(CASES)
    for name in CASES:
        assert golden[name].shape == (N,)


@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_golden(name):
    assert rel_err(values(CASES[name]), _golden()[name]) < RTOL


def _golden_script():
    spec = importlib.util.spec_from_file_location("make_schedule_golden",
                                                  GOLDEN / "make_schedule_golden.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.torch
@pytest.mark.parametrize("name", sorted(CASES))
def test_matches_torch_live(name):
    pytest.importorskip("torch")
    live = _golden_script().torch_values(name)
    assert rel_err(values(CASES[name]), live) < RTOL


# ------------------------------------------------------------------------------ properties

def test_warmup_then_cosine_shape():
    s = S.warmup_cosine(1.0, warmup_steps=10, total_steps=110)
    assert s(0) == 0.0 and s(5) == 0.5 and s(10) == 1.0
    assert s(60) == pytest.approx(0.5, rel=1e-15)
    assert s(110) == 0.0 and s(10_000) == 0.0
    lrs = values(s, 111)
    assert np.all(np.diff(lrs[:11]) > 0) and np.all(np.diff(lrs[10:]) < 0)


def test_join_counts_from_boundary():
    inner = S.linear_warmup(1.0, 4)
    s = S.join([S.constant(0.5), inner, S.constant(2.0)], [3, 10])
    assert [s(t) for t in range(12)] == [0.5] * 3 + [inner(k) for k in range(7)] + [2.0] * 2


def test_nested_join_and_per_epoch():
    s = S.join([S.per_epoch(S.step_decay(1.0, 1, 0.5), 10), S.join([S.constant(3.0), S.constant(4.0)], [5])], [30])
    assert [s(t) for t in (0, 9, 10, 29, 30, 34, 35)] == [1.0, 1.0, 0.5, 0.25, 3.0, 3.0, 4.0]


def test_cosine_decay_holds_floor_after_total_steps():
    s = S.cosine_decay(0.2, 50, floor=0.01)
    assert s(50) == pytest.approx(0.01, abs=1e-18) and s(51) == 0.01 and s(10**9) == 0.01


def test_one_cycle_holds_final_value():
    s = S.one_cycle(1.0, 100)
    assert s(99) == pytest.approx(1.0 / 25 / 1e4, rel=1e-12)
    assert s(100) == s(99) and s(10**6) == s(99)
    assert s(0) == pytest.approx(1.0 / 25, rel=1e-15) and s(29) == pytest.approx(1.0, rel=1e-15)


def test_cosine_restarts_large_step_is_exact():
    s = S.cosine_restarts(1.0, period=3, mult=3)  # cycles start at 0, 3, 12, 39, 120, ...
    start = 3 * (3 ** 30 - 1) // 2
    assert s(start) == 1.0 and s(start - 1) < 1e-3


@given(st.sampled_from(sorted(CASES)), st.integers(0, 10**7))
def test_step_types_agree(name, t):
    s = CASES[name]
    v = s(t)
    assert isinstance(v, float) and math.isfinite(v) and v >= 0
    assert s(np.int64(t)) == v and s(np.int32(min(t, 2**31 - 1))) == s(min(t, 2**31 - 1))
    assert s(float(t)) == v


@pytest.mark.parametrize("name", sorted(CASES))
def test_pickle_repr_equality(name):
    s = CASES[name]
    clone = pickle.loads(pickle.dumps(s))
    assert clone == s and hash(clone) == hash(s) and type(clone) is type(s)
    assert values(clone, 50).tolist() == values(s, 50).tolist()
    rebuilt = eval(repr(s))
    assert rebuilt == s, repr(s)
    assert repr(s).startswith(type(s).__name__ + "(")


def test_repr_readable():
    assert repr(S.cosine_decay(0.1, 1000)) == "cosine_decay(lr=0.1, total_steps=1000, floor=0.0)"
    assert repr(S.warmup_cosine(0.1, 10, 100)) == (
        "warmup_cosine(peak=0.1, warmup_steps=10, total_steps=100, floor=0.0, start=0.0)")
    assert repr(S.warmup_cosine(0.1, 10, 100).as_join()) == (
        "join(schedules=[linear_warmup(peak=0.1, warmup_steps=10, start=0.0), "
        "cosine_decay(lr=0.1, total_steps=90, floor=0.0)], boundaries=[10])")


@pytest.mark.parametrize("name", sorted(CASES))
def test_stored_as_data_and_rebuilt_equal(name):
    s = CASES[name]
    data = S.to_data(s)
    text = json.dumps(data)                       # plain JSON: no code, no pickle
    rebuilt = S.from_data(json.loads(text))
    assert rebuilt == s and type(rebuilt) is type(s)
    assert values(rebuilt, 50).tolist() == values(s, 50).tolist()


def test_nested_joins_stored_as_data():
    inner = S.join([S.constant(0.1), S.warmup_cosine(0.1, 5, 20)], [3])
    s = S.per_epoch(S.join([inner, S.multistep(0.05, [2, 4])], [10]), steps_per_epoch=2)
    assert S.from_data(json.loads(json.dumps(S.to_data(s)))) == s
    assert eval(repr(s), vars(S)) == s


@pytest.mark.parametrize("data, words", [
    ({"schedule": "system", "args": {}}, "unknown schedule"),
    ({"schedule": "Schedule", "args": {}}, "unknown schedule"),
    ({"schedule": ["constant"], "args": {"lr": 0.1}}, "unknown schedule"),
    ({"schedule": "constant", "args": {"lr": 0.1, "extra": 1}}, "arguments"),
    ({"schedule": "constant", "args": {"lr": {"__pickle__": "gASV"}}}, "argument of type dict"),
    ({"schedule": "constant", "args": {"lr": -1.0}}, "Invalid lr: -1.0"),
    ({"schedule": "constant", "args": {"lr": "0.1"}}, "lr must be a finite number >= 0"),
    ({"schedule": "constant", "args": {}}, "missing"),
    ({"schedule": "join", "args": {"schedules": [{"schedule": "eval", "args": {}}],
                                   "boundaries": []}}, "unknown schedule"),
    ({"__pickle__": "gASV"}, "not a stored schedule"),
])
def test_bad_stored_schedules_are_refused(data, words):
    with pytest.raises(ValueError, match=words):
        S.from_data(data)


def test_to_data_refuses_other_callables():
    with pytest.raises(TypeError, match="fastopt.schedules"):
        S.to_data(lambda t: 0.1)


def test_inequality_and_immutability():
    assert S.constant(0.1) != S.constant(0.2)
    assert S.constant(0.1) != S.exponential(0.1, 1.0)
    assert S.multistep(0.1, [1, 2]) == S.multistep(0.1, (1, 2))
    s = S.constant(0.1)
    with pytest.raises(AttributeError):
        s.lr = 0.2
    assert s(0) == 0.1


# ------------------------------------------------------------------------------ validation

@pytest.mark.parametrize("build, error, words", [
    (lambda: S.constant(-0.1), ValueError, "Invalid lr: -0.1 (must be a finite number >= 0)"),
    (lambda: S.constant("0.1"), TypeError, "lr must be a finite number >= 0, got str"),
    (lambda: S.constant(float("nan")), ValueError, "Invalid lr: nan"),
    (lambda: S.constant(True), TypeError, "lr"),
    (lambda: S.inverse_time(0.1, decay=-1), ValueError, "decay"),
    (lambda: S.inverse_time(0.1, power=-0.5), ValueError, "power"),
    (lambda: S.step_decay(0.1, 0), ValueError, "Invalid step_size: 0 (must be an integer >= 1)"),
    (lambda: S.step_decay(0.1, 2.5), TypeError, "step_size must be an integer"),
    (lambda: S.multistep(0.1, [30, 30]), ValueError, "strictly increasing"),
    (lambda: S.multistep(0.1, [0, 30]), ValueError, "milestones[0]"),
    (lambda: S.multistep(0.1, 30), TypeError, "milestones must be a sequence"),
    (lambda: S.exponential(0.1, -0.9), ValueError, "gamma"),
    (lambda: S.cosine_decay(0.1, 0), ValueError, "total_steps"),
    (lambda: S.cosine_decay(0.1, 10, floor=-1.0), ValueError, "floor"),
    (lambda: S.linear_warmup(0.1, 0), ValueError, "warmup_steps"),
    (lambda: S.warmup_cosine(0.1, 10, 10), ValueError, "total_steps must be > warmup_steps"),
    (lambda: S.cosine_restarts(0.1, 10, mult=0), ValueError, "mult"),
    (lambda: S.cosine_restarts(0.1, 10, mult=1.5), TypeError, "mult"),
    (lambda: S.one_cycle(0.1, 100, pct_start=1.5), ValueError, "pct_start"),
    (lambda: S.one_cycle(0.1, 100, anneal_strategy="cosine"), ValueError, "anneal_strategy"),
    (lambda: S.one_cycle(0.1, 100, div_factor=0), ValueError, "div_factor"),
    (lambda: S.one_cycle(0.1, 100, pct_start=0.005), ValueError, "empty phase"),
    (lambda: S.join([S.constant(1.0)], [5]), ValueError, "boundaries must have"),
    (lambda: S.join([S.constant(1.0), lambda t: 1.0], [5]), TypeError, "schedules[1]"),
    (lambda: S.join([S.constant(1.0)] * 3, [5, 5]), ValueError, "strictly increasing"),
    (lambda: S.join([], []), ValueError, "at least one"),
    (lambda: S.per_epoch(S.constant(1.0), 0), ValueError, "steps_per_epoch"),
    (lambda: S.per_epoch(0.1, 10), TypeError, "schedule must be a fastopt schedule"),
    (lambda: S.constant(10 ** 400), ValueError, "too large for a float"),
    (lambda: S.one_cycle(0.1, 100, three_phase=1), TypeError, "three_phase must be a bool"),
])
def test_bad_arguments(build, error, words):
    with pytest.raises(error, match=None) as info:
        build()
    assert words in str(info.value)


@pytest.mark.parametrize("step, error", [(-1, ValueError), (1.5, TypeError), ("3", TypeError),
                                         (None, TypeError), (True, TypeError)])
def test_bad_step(step, error):
    with pytest.raises(error, match="step"):
        S.constant(0.1)(step)
