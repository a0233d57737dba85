"""Every optimizer and option vs the NumPy float64 oracle (tests/reference.py).

Each option case runs a fixed set of configurations that together cover the space: float32
and float64, 1 and 2 kernel threads, one large tensor (above the parallel threshold, so two
threads split it) and many tensors (sizes 0, 1, 2, 7, an odd size and a medium or large one)
in one or two param groups; 1 to 3 dimensions. Within a configuration the shapes, the number
of steps and the values are drawn from a generator seeded by (case, configuration, round):
parameters and gradients span many orders of magnitude (gradients from 1e-13 to 1e2, so eps
matters in some tensors and not in others), with random signs and some exact zeros.

The seed base is fixed under the CI hypothesis profile (tests/conftest.py: derandomized), so CI
runs the same examples every time; other profiles draw a fresh base and run more rounds
(max_examples / 40), and FASTOPT_TEST_SEED=<n> replays one. After the steps every element of
the params and of every state buffer must agree with the oracle within the allowance of
tests/oracle_check.py (a relative tolerance per element, no floor at 1).
"""
import os

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt as fo
from fastopt import _validate
from fastopt._specs import SPECS
from cases import CASES, EXTRA_CASES
from oracle_check import TOL, OracleRun
from reference import NAMES

CLASSES = fo.optim.first_order.CLASSES      # optimizer name -> class, one per table entry
ALL_CASES = [(n, h) for n in NAMES for h in CASES[n] + EXTRA_CASES.get(n, [])]
# csrc/kernels.c: a step runs on several threads when elements x cost >= fo_parallel_threshold
# (32768; cost >= 1), so a tensor of BIG elements is split between two threads
BIG = fo._kernels.get_parallel_threshold() + 1001
CONFIGS = [(np.dtype(dtype), threads, layout) for layout in ("one", "many")
           for threads in (1, 2) for dtype in (np.float32, np.float64)]


def _seed_base():
    if "FASTOPT_TEST_SEED" in os.environ:
        return int(os.environ["FASTOPT_TEST_SEED"])
    if settings().derandomize:
        return 20
    return int.from_bytes(os.urandom(4), "little")


SEED_BASE = _seed_base()
ROUNDS = max(1, settings().max_examples // 40)


# ------------------------------------------------------------------------------ the draws
def shape_of(n, rng):
    """A shape of n elements with 1, 2 or 3 dimensions."""
    dims = int(rng.integers(1, 4))
    if n == 0:
        return [(0,), (3, 0), (2, 0, 4)][dims - 1]
    shape = []
    for _ in range(dims - 1):
        divisors = [d for d in (1, 2, 3, 5, 7, 11, 13) if n % d == 0]
        d = int(rng.choice(divisors))
        shape.append(d)
        n //= d
    shape.append(n)
    rng.shuffle(shape)
    return tuple(shape)


def shapes_for(layout, rng):
    if layout == "one":      # odd, above the threshold (at most 3 * BIG)
        return [shape_of(int(rng.integers(BIG, 3 * BIG)) | 1, rng)]
    sizes = [0, 1, 2, 7, int(rng.integers(3, 1000)) | 1,
             int(rng.choice([int(rng.integers(1000, 5000)), BIG]))]
    rng.shuffle(sizes)
    return [shape_of(n, rng) for n in sizes]


def spread_values(rng, shape, low, high):
    """Random signs, a magnitude 10**U(low, high) per array times 10**U(-3, 0) per element,
    and about 3% exact zeros."""
    scale = 10.0 ** rng.uniform(low, high)
    v = scale * 10.0 ** rng.uniform(-3, 0, shape) * rng.choice([-1.0, 1.0], shape)
    return np.where(rng.random(shape) < 0.03, 0.0, v)


def check_against_reference(name, hyper, dtype, shapes, split, steps, threads, rng, what=""):
    """Run `name` with `hyper` on params of `shapes` (the first `split` in group 0, the rest in
    group 1 with half the lr) for `steps` steps with `threads` kernel threads; check every
    element against the oracle. Returns the worst error as a fraction of its allowance."""
    params = [spread_values(rng, s, -4, 2).astype(dtype) for s in shapes]
    groups = [{"params": params[:split]}]
    if split < len(params):
        groups.append({"params": params[split:], "lr": hyper["lr"] * 0.5})
    opt = CLASSES[name](groups, **hyper)
    oracle = OracleRun(name, [dict(hyper, **g) for g in groups], dtype)
    old = fo.get_num_threads()
    fo.set_num_threads(threads)
    try:
        for _ in range(steps):
            grads = [spread_values(rng, s, -10, 2).astype(dtype) for s in shapes]
            opt.step(grads)
            oracle.step(grads)
    finally:
        fo.set_num_threads(old)
    assert all(p.dtype == dtype for p in params)
    states = [{k: v for k, v in opt.state.get(i, {}).items() if isinstance(v, np.ndarray)}
              for i in range(len(params))]
    return oracle.check(params, states, what)


def run_config(case_index, config_index, rnd):
    name, hyper = ALL_CASES[case_index]
    dtype, threads, layout = CONFIGS[config_index]
    seed = (SEED_BASE, case_index, config_index, rnd)
    rng = np.random.default_rng(seed)
    shapes = shapes_for(layout, rng)
    split = int(rng.integers(1, len(shapes) + 1))
    steps = int(rng.integers(1, 7))
    what = (f"{name} {hyper} {dtype.name} threads={threads} shapes={shapes} split={split} "
            f"steps={steps} (FASTOPT_TEST_SEED={SEED_BASE}, rng seed {seed}):")
    return check_against_reference(name, hyper, dtype, shapes, split, steps, threads, rng,
                                   what)


# ------------------------------------------------------------------------------ the tests
@pytest.mark.parametrize("case", range(len(ALL_CASES)),
                         ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_CASES)])
@pytest.mark.parametrize("config", range(len(CONFIGS)),
                         ids=[f"{d.name}-{t}thr-{lay}" for d, t, lay in CONFIGS])
def test_matches_reference(case, config):
    for rnd in range(ROUNDS):
        run_config(case, config, rnd)


def test_draws_cover_the_space():
    """The configurations of one case meet every size, dimension count, dtype and thread
    count named in the module docstring, and gradients from the eps regime to large ones."""
    seen = {"sizes": set(), "dims": set(), "big": set()}
    for config, (dtype, threads, layout) in enumerate(CONFIGS):
        rng = np.random.default_rng((SEED_BASE, 0, config, 0))
        for s in shapes_for(layout, rng):
            n = int(np.prod(s))
            seen["sizes"].add(n)
            seen["dims"].add(len(s))
            if n >= BIG:
                seen["big"].add((dtype.name, threads))
    assert {0, 1, 2, 7} <= seen["sizes"]
    assert any(n % 2 and n > 7 for n in seen["sizes"])
    assert seen["dims"] == {1, 2, 3}
    assert seen["big"] == {(d, t) for d in ("float32", "float64") for t in (1, 2)}
    rng = np.random.default_rng(1)
    mags = np.abs(np.concatenate([spread_values(rng, (50,), -10, 2) for _ in range(200)]))
    assert (mags == 0).any()
    mags = mags[mags > 0]
    assert mags.min() < 1e-11 and mags.max() > 10


def test_tolerance_is_tight():
    """The tolerance is not loose: over a sample of cases the worst error is a sizable
    fraction of what is allowed (a tolerance 100x too large would show up here)."""
    worst = {np.dtype(np.float32): 0.0, np.dtype(np.float64): 0.0}
    for case in range(0, len(ALL_CASES), 3):
        for config in (0, 1, 6, 7):
            worst[CONFIGS[config][0]] = max(worst[CONFIGS[config][0]], run_config(case, config, 0))
    assert worst[np.dtype(np.float32)] > 0.05, worst
    assert worst[np.dtype(np.float64)] > 0.01, worst


# the elements of a pair hyperparameter drawn by the rule of each (fastopt._validate.PAIRS);
# no betas between 0 and 1e-3, which float32 may round to 0 where the float64 oracle does not
# (Lion's sign of beta1 * m with a zero gradient)
ELEMENT_DRAWS = {_validate.unit_open: st.one_of(st.just(0.0), st.floats(1e-3, 0.999)),
                 _validate.open_unit: st.floats(0.05, 0.95),
                 _validate.greater_than_one: st.floats(1.05, 3.0),
                 _validate.nonneg: st.sampled_from([0.0, 1e-6, 1e-3, 0.05, 1.0, 50.0])}


@pytest.mark.parametrize("name", NAMES)
@given(data=st.data())
def test_random_hyperparameters(name, data):
    """Hyperparameters drawn from their valid ranges, not only the fixed grid."""
    lr = data.draw(st.floats(1e-4, 0.5))
    unit = st.floats(0.0, 0.999)
    rules = SPECS[name].rules
    hyper = {"lr": lr, "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1])),
             "maximize": data.draw(st.booleans())}
    hyper = {key: value for key, value in hyper.items() if key in rules}   # Rprop: no decay
    if name.startswith("schedule_free"):
        hyper.update(r=data.draw(st.sampled_from([0.0, 0.5, 2.0])),
                     weight_lr_power=data.draw(st.sampled_from([0.0, 1.0, 2.0])))
        if "warmup_steps" in rules:
            hyper["warmup_steps"] = data.draw(st.sampled_from([0, 1, 3]))
        if "silent_sgd_phase" in rules:
            hyper["silent_sgd_phase"] = data.draw(st.booleans())
        if "betas" in rules:
            hyper.update(betas=(data.draw(st.floats(0.05, 0.999)), data.draw(unit)),
                         eps=data.draw(st.sampled_from([1e-8, 1e-4])))
        else:
            hyper["momentum"] = data.draw(st.floats(0.05, 0.99))
    elif name == "sgd":
        m = data.draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        nesterov = m > 0 and data.draw(st.booleans())
        sutskever = m > 0 and data.draw(st.booleans())
        hyper.update(momentum=m, nesterov=nesterov, sutskever=sutskever,
                     dampening=0.0 if nesterov or sutskever
                     else data.draw(st.sampled_from([0.0, 0.3])))
    elif name == "adagrad":
        hyper.update(lr_decay=data.draw(st.sampled_from([0.0, 0.05])),
                     eps=data.draw(st.sampled_from([1e-10, 1e-3])),
                     initial_accumulator_value=data.draw(st.sampled_from([0.0, 0.5])),
                     eps_in_sqrt=data.draw(st.booleans()))
    elif name == "rmsprop":
        centered = data.draw(st.booleans())
        # centered with alpha -> 0 makes v - m^2 cancel to rounding noise (ill-conditioned in
        # any precision), so it draws alpha from [0.5, 1)
        hyper.update(alpha=data.draw(st.floats(0.5, 0.999) if centered else unit),
                     eps=data.draw(st.sampled_from([1e-8, 1e-3])),
                     momentum=data.draw(st.sampled_from([0.0, 0.9])), centered=centered,
                     eps_in_sqrt=data.draw(st.booleans()))
    elif name in ("adam", "adamw", "adamax"):
        hyper.update(betas=(data.draw(unit), data.draw(unit)),
                     eps=data.draw(st.sampled_from([1e-8, 1e-4])))
        if name != "adamax":
            hyper["amsgrad"] = data.draw(st.booleans())
        if name == "adam":
            hyper["decoupled_weight_decay"] = data.draw(st.booleans())
    elif name == "adadelta":
        hyper.update(rho=data.draw(st.floats(0.0, 1.0)),
                     eps=data.draw(st.sampled_from([1e-6, 1e-3])))
    for key, rule in rules.items():     # the pairs not drawn above: each element by its rule
        if rule in _validate.PAIRS and key not in hyper:
            hyper[key] = tuple(data.draw(ELEMENT_DRAWS[r]) for r in _validate.PAIRS[rule])
    dtype = np.dtype(data.draw(st.sampled_from([np.float32, np.float64])))
    seed = data.draw(st.integers(0, 2**32 - 1))
    rng = np.random.default_rng(seed)
    shapes = shapes_for(data.draw(st.sampled_from(["one", "many"])), rng)
    check_against_reference(name, hyper, dtype, shapes, data.draw(st.integers(1, len(shapes))),
                            data.draw(st.integers(1, 5)), data.draw(st.sampled_from([1, 2])),
                            rng, f"{name} {hyper} {dtype.name} shapes={shapes}:")


def test_one_and_two_threads_give_identical_bits():
    rng = np.random.default_rng(0)
    n = 3 * BIG
    results = []
    for threads in (1, 2):
        p = rng.standard_normal(n).astype(np.float32) * 0 + np.linspace(-1, 1, n, dtype=np.float32)
        opt = fo.Adam([p], lr=0.01, amsgrad=True)
        fo.set_num_threads(threads)
        try:
            for k in range(3):
                opt.step([np.cos(np.arange(n, dtype=np.float32) * (k + 1))])
        finally:
            fo.set_num_threads(0)
        results.append(p)
    assert np.array_equal(results[0], results[1])


def test_rmsprop_equals_adam_with_beta1_zero():
    """Adam(beta1=0, beta2=a, eps=0) = RMSprop(alpha=a, eps=0) with lr_t = lr sqrt(1 - a^t)."""
    rng = np.random.default_rng(3)
    a, lr = 0.9, 0.01
    p1 = rng.standard_normal(50)
    p2 = p1.copy()
    adam = fo.Adam([p1], lr=lr, betas=(0.0, a), eps=0.0)
    rms = fo.RMSprop([p2], lr=lambda t: lr * np.sqrt(1 - a ** (t + 1)), alpha=a, eps=0.0)
    for _ in range(20):
        g = rng.standard_normal(50) + 0.1
        adam.step([g])
        rms.step([g])
    np.testing.assert_allclose(p1, p2, rtol=1e-13, atol=1e-14)


def _fma(a, b, c):
    """a*b + c rounded once (exact rational arithmetic; Python's int/int division rounds
    correctly), elementwise over float64 arrays."""
    from fractions import Fraction
    return np.array([float(Fraction(x) * Fraction(y) + Fraction(z))
                     for x, y, z in np.broadcast(a, b, c)])


def test_sgd_without_momentum_is_gradient_descent():
    """p <- p - lr g, rounded once as torch's param.add_(grad, alpha=-lr) (a fused
    multiply-add), and no state."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal(100)
    expected = p.copy()
    opt = fo.SGD([p], lr=0.1, momentum=0.0)
    for _ in range(10):
        g = rng.standard_normal(100)
        opt.step([g])
        expected = _fma(-0.1, g, expected)
    np.testing.assert_array_equal(p, expected)
    assert opt.state == {}


def test_sutskever_momentum_equals_torch_form_at_constant_lr():
    rng = np.random.default_rng(5)
    p1 = rng.standard_normal(64)
    p2 = p1.copy()
    a = fo.SGD([p1], lr=0.05, momentum=0.9)
    b = fo.SGD([p2], lr=0.05, momentum=0.9, sutskever=True)
    for _ in range(30):
        g = rng.standard_normal(64)
        a.step([g])
        b.step([g])
    np.testing.assert_allclose(p1, p2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_updates_in_place_and_keeps_dtype(name):
    for dtype in (np.float32, np.float64):
        p = np.ones((4, 3), dtype)
        before = p.__array_interface__["data"][0]
        opt = CLASSES[name]([p], **CASES[name][0])
        opt.step([np.full((4, 3), 0.5, dtype)])
        assert p.__array_interface__["data"][0] == before and p.dtype == dtype
        assert not np.array_equal(p, np.ones((4, 3), dtype))
        for key, buf in opt.state.get(0, {}).items():
            if key in opt.spec.scalars:     # a per-parameter scalar: 0-d float64 (NAdam's)
                assert buf.shape == () and buf.dtype == np.float64
                continue
            assert buf.dtype == dtype and buf.shape == p.shape
            assert not np.shares_memory(buf, p)


def test_mixed_dtypes_in_one_group():
    p32 = np.ones(10, np.float32)
    p64 = np.ones(7, np.float64)
    opt = fo.Adam([p32, p64], lr=0.1)
    opt.step([np.ones(10, np.float32), np.ones(7, np.float64)])
    np.testing.assert_allclose(p32, 0.9, rtol=1e-6)
    np.testing.assert_allclose(p64, 0.9, rtol=1e-7)
