"""Mixed precision (fastopt.mixed, csrc/mixed.c): 16-bit parameters updated through float32.

What is checked:
- the conversions of csrc/fastopt/half.h (through the test-only fastopt._testing) against NumPy
  (float16) and ml_dtypes (bfloat16) casts, which round to nearest even: every 16-bit pattern,
  every tie and its float32 neighbours, random values, specials (and, marked slow, all 2**32
  float32 patterns);
- with master weights, the float32 master trajectory equals bit for bit that of the plain
  float32 optimizer on the gradients fl32(g)/S, for every optimizer and option case, and the
  16-bit parameter equals the master rounded to nearest even (NumPy / ml_dtypes casts);
- without master weights, the parameter equals a float32 run rounded after every step;
  stochastic rounding picks a neighbour, is unbiased, reproducible and thread-independent;
- loss scaling, non-finite steps skipped with nothing changed, the dynamic scale;
- state_dict / checkpoint round trips; bad input raises with nothing changed.
"""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt as fo
from fastopt import _mixed
from fastopt._specs import SPECS
from fastopt.mixed import DynamicLossScale, MixedPrecision
from cases import CASES, EXTRA_CASES
from oracle_check import OracleRun
from reference import GROUP_KEYS, ReferenceOptimizer

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:       # float16 is tested all the same
    BF16 = None
F16 = np.dtype(np.float16)
LOWP = [F16] + ([BF16] if BF16 is not None else [])
LOWP_IDS = ["float16", "bfloat16"][:len(LOWP)]
GRAD_DTYPES = [np.dtype(np.float32)] + LOWP
needs_bf16 = pytest.mark.skipif(BF16 is None, reason="bfloat16 arrays need ml_dtypes "
                                "(pip install ml_dtypes)")
try:
    from fastopt import _testing     # the C conversions, test-only (tests/_testing.pyx)
except ImportError:
    _testing = None
needs_testing = pytest.mark.skipif(
    _testing is None, reason="fastopt._testing is not built (wheels leave the test-only C entry "
    "points out): build in place, python setup.py build_ext --inplace, or set FASTOPT_TEST_API=1")
# optimizer name -> class, one per table entry whose kernel has the mixed backend
CLASSES = {name: cls for name, cls in fo.optim.first_order.CLASSES.items()
           if "mixed" in fo._table.KERNELS[cls.spec.kernel_name].backends}
ALL_CASES = [(name, i, h) for table in (CASES, EXTRA_CASES) for name, cases in table.items()
             if name in CLASSES for i, h in enumerate(cases)]
ALL_CASES = [(name, f"{name}-{k}", h) for k, (name, _, h) in enumerate(ALL_CASES)]
SHAPES = [(7, 3), (1,), (40000,)]          # 40,028 elements: above the parallel threshold


def bits(a):
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


# ----------------------------------------------------------------------------- conversions
def tie_values(dtype):
    """Every finite 16-bit value, the midpoints between neighbours (ties), and the float32
    values one ulp either side of each midpoint."""
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16).view(dtype)
    v = np.sort(h[np.isfinite(h.astype(np.float32))].astype(np.float64))
    v = np.unique(v)
    mid = ((v[1:] + v[:-1]) / 2).astype(np.float32)        # exact: a 16-bit tie is a float32
    up = np.nextafter(mid, np.float32(np.inf))
    down = np.nextafter(mid, np.float32(-np.inf))
    specials = np.array([0.0, -0.0, np.inf, -np.inf, 65504, 65519.996, 65520, 65536, 1e30,
                         np.finfo(np.float32).max, np.finfo(np.float32).tiny, 2.0 ** -24,
                         2.0 ** -25, 2.0 ** -25 * 1.0000001, 2.0 ** -14, 3.0 * 2.0 ** -26,
                         1e-45], np.float32)
    x = np.concatenate([v.astype(np.float32), mid, up, down, specials])
    return np.concatenate([x, -x])


@needs_testing
@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
def test_rounding_to_16_bits_matches_numpy_and_ml_dtypes(dtype):
    rng = np.random.default_rng(0)
    random = rng.integers(0, 1 << 32, size=1 << 20, dtype=np.uint64).astype(np.uint32)
    x = np.concatenate([tie_values(dtype), random.view(np.float32)])
    ours = _testing.f32_to_f16_bits(x) if dtype == F16 else _testing.f32_to_bf16_bits(x)
    with np.errstate(over="ignore", invalid="ignore"):
        expected = bits(x.astype(dtype))
    nan = np.isnan(x)
    np.testing.assert_array_equal(ours[~nan], expected[~nan])
    back = ours[nan].view(dtype).astype(np.float32)
    assert np.isnan(back).all()


@needs_testing
@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
def test_widening_is_exact_for_every_pattern(dtype):
    h = np.arange(1 << 16, dtype=np.uint32).astype(np.uint16)
    ours = _testing.f16_bits_to_f32(h) if dtype == F16 else _testing.bf16_bits_to_f32(h)
    expected = h.view(dtype).astype(np.float32)
    nan = np.isnan(expected)
    np.testing.assert_array_equal(bits(ours[~nan]), bits(expected[~nan]))
    assert np.isnan(ours[nan]).all()


@needs_testing
@pytest.mark.slow
@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
def test_rounding_of_every_float32_pattern(dtype):
    chunk = 1 << 26
    for start in range(0, 1 << 32, chunk):
        x = np.arange(start, start + chunk, dtype=np.uint64).astype(np.uint32).view(np.float32)
        ours = _testing.f32_to_f16_bits(x) if dtype == F16 else _testing.f32_to_bf16_bits(x)
        with np.errstate(over="ignore", invalid="ignore"):
            expected = bits(x.astype(dtype))
        finite_or_inf = ~np.isnan(x)
        assert np.array_equal(ours[finite_or_inf], expected[finite_or_inf]), hex(start)


# ------------------------------------------------------------- master weights: bit for bit
def problem(dtype, n_steps, seed=0, scale=1.0):
    """Initial 16-bit params and 16-bit gradients of `scale * loss` for each step."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[(scale * 10.0 ** rng.uniform(-3, 0) * rng.standard_normal(s)).astype(dtype)
              for s in SHAPES] for _ in range(n_steps)]
    return params, grads


def float32_run(name, hyper, params, grads, scale):
    """The plain float32 optimizer on fl32(g) / S."""
    w = [p.astype(np.float32) for p in params]
    opt = CLASSES[name]([{"params": w[:2]}, {"params": w[2:], "lr": hyper["lr"] * 2}], **hyper)
    for step in grads:
        opt.step([g.astype(np.float32) / np.float32(scale) for g in step])
    return w, opt


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name,case,hyper", ALL_CASES, ids=[c for _, c, _ in ALL_CASES])
def test_master_trajectory_equals_float32_run_bit_for_bit(name, case, hyper, dtype):
    scale = {F16: 3.0, BF16: 1024.0}[dtype]       # a non-power of two and a power of two
    params, grads = problem(dtype, 12, scale=scale)
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(CLASSES[name], [{"params": lowp[:2]},
                                         {"params": lowp[2:], "lr": hyper["lr"] * 2}],
                         loss_scale=scale, **hyper)
    for step in grads:
        assert opt.step(step) is True
    w, ref = float32_run(name, hyper, params, grads, scale)
    for m, w32, p in zip(opt.master_params, w, lowp):
        np.testing.assert_array_equal(bits(m), bits(w32))
        np.testing.assert_array_equal(bits(p), bits(m.astype(dtype)))
    for i in range(len(lowp)):                                 # float32 state, equal too
        assert opt.state.get(i, {}).keys() == ref.state.get(i, {}).keys()
        for key, value in ref.state.get(i, {}).items():
            if key in SPECS[name].scalars:     # a per-parameter scalar (float64, 0-d)
                assert opt.state[i][key] == value
                continue
            assert opt.state[i][key].dtype == np.float32
            np.testing.assert_array_equal(bits(opt.state[i][key]), bits(value))


@needs_bf16
@pytest.mark.parametrize("threads", [1, 2])
def test_threads_do_not_change_results(threads):
    params, grads = problem(BF16, 5)
    out = []
    for n in (1, threads):
        fo.set_num_threads(n)
        try:
            lowp = [p.copy() for p in params]
            opt = MixedPrecision(fo.Adam, lowp, lr=0.01, master_weights=False,
                                 rounding="stochastic", seed=3)
            for step in grads:
                opt.step(step)
            out.append(lowp)
        finally:
            fo.set_num_threads(0)
    for a, b in zip(*out):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_master_follows_the_float64_reference():
    """Independent check of the master against the NumPy float64 oracle."""
    params, grads = problem(F16, 20)
    lowp = [p.copy() for p in params]
    hyper = dict(lr=0.01, weight_decay=0.01)
    opt = MixedPrecision(fo.Adam, lowp, **hyper)
    ref = ReferenceOptimizer("adam", [{"params": [p.astype(np.float64) for p in params],
                                       **hyper, "betas": (0.9, 0.999), "eps": 1e-8}])
    for step in grads:
        opt.step(step)
        ref.step([g.astype(np.float64) for g in step])
    for m, r in zip(opt.master_params, ref.params):
        assert np.max(np.abs(m - r)) <= 1e-5 * np.max(np.abs(r))


# -------------------------------------------------- every rule and option vs the float64 oracle
BIG = fo._kernels.get_parallel_threshold() + 1001        # split between two threads
ORACLE_SHAPES = [(7, 3), (1,), (BIG,), (2, 3, 5)]


def oracle_problem(dtype, n_steps, scale, seed):
    """16-bit params (and one float32 param, its own master) and gradients of `scale * loss`
    in float32, float16 and bfloat16 by turns; values over many orders of magnitude (small
    enough in float16 gradients to stay finite after scaling)."""
    rng = np.random.default_rng(seed)
    dtypes = [dtype, dtype, dtype, np.dtype(np.float32)]
    params = [(10.0 ** rng.uniform(-3, 1) * 10.0 ** rng.uniform(-2, 0, s)
               * rng.choice([-1.0, 1.0], s)).astype(d) for s, d in zip(ORACLE_SHAPES, dtypes)]
    grad_dtypes = [GRAD_DTYPES[(k + 1) % len(GRAD_DTYPES)] for k in range(len(ORACLE_SHAPES))]
    grads = []
    for _ in range(n_steps):
        step = []
        for s, gd in zip(ORACLE_SHAPES, grad_dtypes):
            low = -4 if gd == F16 else -10
            g = 10.0 ** rng.uniform(low, 1) * 10.0 ** rng.uniform(-2, 0, s) * rng.choice([-1.0, 1.0], s)
            step.append((scale * g).astype(gd))
        grads.append(step)
    return params, grads


def oracle_groups(hyper, params):
    return [dict(hyper, params=params[:2]), dict(hyper, params=params[2:], lr=hyper["lr"] * 2)]


def unscaled(step, scale):
    """The gradients the rule sees, fl32(g) / S, in float64 (the kernel divides in float32;
    the oracle's allowance covers that rounding)."""
    return [g.astype(np.float32).astype(np.float64) / scale for g in step]


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name,case,hyper", ALL_CASES, ids=[c for _, c, _ in ALL_CASES])
def test_master_weights_follow_the_float64_oracle(name, case, hyper, dtype, threads):
    """Masters and float32 state of every rule and option, with a loss scale, float32/16-bit
    gradients and a float32 parameter in the mix, element by element against the oracle
    (tests/oracle_check.py); the 16-bit parameters are their masters rounded to nearest."""
    scale = {F16: 3.0, BF16: 1024.0}[dtype]
    params, grads = oracle_problem(dtype, 5, scale, seed=sum(map(ord, case)))
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(CLASSES[name], oracle_groups(hyper, lowp), loss_scale=scale, **hyper)
    oracle = OracleRun(name, oracle_groups(hyper, [p.astype(np.float64) for p in params]),
                       np.float32)
    fo.set_num_threads(threads)
    try:
        for step in grads:
            assert opt.step(step) is True
            oracle.step(unscaled(step, scale))
    finally:
        fo.set_num_threads(0)
    states = [opt.state.get(i, {}) for i in range(len(lowp))]
    scalars = SPECS[name].scalars          # per-parameter scalars: 0-d float64 (NAdam's)
    assert all(v.dtype == (np.float64 if k in scalars else np.float32)
               for s in states for k, v in s.items())
    oracle.check(opt.master_params, states, f"{name} {hyper} {dtype}")
    assert opt.master_params[3] is lowp[3]
    for m, p in zip(opt.master_params, lowp):
        np.testing.assert_array_equal(bits(p), bits(m.astype(p.dtype)))


ROUNDINGS = [(F16, "nearest")] + ([(BF16, "nearest"), (BF16, "stochastic")] if BF16 else [])


@pytest.mark.parametrize("dtype,rounding", ROUNDINGS,
                         ids=[f"{LOWP_IDS[LOWP.index(d)]}-{r}" for d, r in ROUNDINGS])
@pytest.mark.parametrize("name,case,hyper", ALL_CASES, ids=[c for _, c, _ in ALL_CASES])
def test_without_master_each_step_follows_the_float64_oracle(name, case, hyper, dtype, rounding):
    """Without masters, each step takes the 16-bit parameter and the float32 state to the
    oracle's step from that same point, rounded to 16 bits: within half a 16-bit spacing
    (nearest) or one spacing (stochastic) of the oracle, plus the oracle's allowance; the state
    within the allowance."""
    scale = {F16: 3.0, BF16: 1024.0}[dtype]
    params, grads = oracle_problem(dtype, 4, scale, seed=sum(map(ord, case)) + 1)
    params = params[:3]                          # 16-bit only: a float32 one keeps a master
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(CLASSES[name], oracle_groups(hyper, lowp), master_weights=False,
                         rounding=rounding, seed=5, loss_scale=scale, **hyper)
    assert opt.master_params == [None] * len(lowp)
    mantissa = 10 if dtype == F16 else 7
    tiny = 2.0 ** -14 if dtype == F16 else float(np.finfo(np.float32).tiny)
    spacings = 1.0 if rounding == "stochastic" else 0.5

    def rounding_slack(e):
        return spacings * 2.0 ** -mantissa * np.maximum(np.abs(e), tiny) * (1 + 1e-6)

    fo.set_num_threads(2)
    try:
        for t, step in enumerate(grads):
            before = [p.astype(np.float64) for p in lowp]
            states = [{k: v.copy() for k, v in opt.state.get(i, {}).items()}
                      for i in range(len(lowp))]
            # the group-level scalars too (Schedule-Free's k, weight_sum, lr_max) as they are
            groups = [dict(g, **{k: opt.param_groups[gi][k] for k in GROUP_KEYS
                                 if k in opt.param_groups[gi]})
                      for gi, g in enumerate(oracle_groups(hyper, before))]
            oracle = OracleRun(name, groups, np.float32, states=states, steps=[t, t])
            assert opt.step(step[:3]) is True
            oracle.step(unscaled(step[:3], scale))
            oracle.check(lowp, [opt.state.get(i, {}) for i in range(len(lowp))],
                         f"{name} {hyper} {dtype} {rounding} step {t + 1}", rounding_slack)
    finally:
        fo.set_num_threads(0)


@given(n=st.sampled_from([0, 1, 5, 33, 1000]), dtype=st.sampled_from(LOWP),
       grad_dtype=st.sampled_from(GRAD_DTYPES),
       name=st.sampled_from(sorted(CLASSES)), scale=st.sampled_from([1.0, 256.0, 0.75]),
       seed=st.integers(0, 2 ** 16))
def test_property_any_size_and_gradient_type(n, dtype, grad_dtype, name, scale, seed):
    rng = np.random.default_rng(seed)
    p0 = (rng.standard_normal(n) * 4).astype(dtype)
    lowp = p0.copy()
    hyper = dict(lr=0.03)
    opt = MixedPrecision(CLASSES[name], [lowp], loss_scale=scale, skip_nonfinite=False, **hyper)
    w = p0.astype(np.float32)
    ref = CLASSES[name]([w], **hyper)
    for _ in range(3):
        g = (rng.standard_normal(n) * scale).astype(grad_dtype)
        opt.step([g])
        ref.step([g.astype(np.float32) / np.float32(scale)])
    np.testing.assert_array_equal(bits(opt.master_params[0]), bits(w))
    np.testing.assert_array_equal(bits(lowp), bits(w.astype(dtype)))


def test_float32_params_in_the_same_group_are_their_own_master():
    rng = np.random.default_rng(1)
    w16 = rng.standard_normal(100).astype(np.float16)
    b32 = rng.standard_normal(10).astype(np.float32)
    ref16, ref32 = w16.astype(np.float32), b32.copy()
    opt = MixedPrecision(fo.AdamW, [w16, b32], lr=0.01)
    ref = fo.AdamW([ref16, ref32], lr=0.01)
    for _ in range(5):
        g = [rng.standard_normal(100).astype(np.float16), rng.standard_normal(10).astype(np.float32)]
        opt.step(g)
        ref.step([x.astype(np.float32) for x in g])
    assert opt.master_params[1] is b32
    np.testing.assert_array_equal(bits(b32), bits(ref32))
    np.testing.assert_array_equal(bits(opt.master_params[0]), bits(ref16))


def test_master_keeps_updates_the_16_bit_copy_cannot_hold():
    w = np.ones(8, np.float16)
    opt = MixedPrecision(fo.SGD, [w], lr=1e-4)
    for _ in range(10):
        opt.step([np.ones(8, np.float16)])
    assert np.all(w == np.float16(1 - 1e-3))   # ten steps of 1e-4 add up in the master
    plain = np.ones(8, np.float16)
    opt = MixedPrecision(fo.SGD, [plain], lr=1e-4, master_weights=False)
    for _ in range(10):
        opt.step([np.ones(8, np.float16)])
    assert np.all(plain == 1)                 # without it each step rounds back to 1


# ---------------------------------------------------------------- without master weights
@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name", sorted(CLASSES))
def test_without_master_equals_a_float32_run_rounded_every_step(name, dtype):
    params, grads = problem(dtype, 8)
    lowp = [p.copy() for p in params]
    hyper = CASES[name][0]
    opt = MixedPrecision(CLASSES[name], lowp, master_weights=False, **hyper)
    w = [p.astype(np.float32) for p in params]
    ref = CLASSES[name](w, **hyper)
    for step in grads:
        opt.step(step)
        ref.step([g.astype(np.float32) for g in step])
        for x in w:
            x[...] = x.astype(dtype).astype(np.float32)
    assert opt.master_params == [None] * len(lowp)
    for p, x in zip(lowp, w):
        np.testing.assert_array_equal(bits(p), bits(x.astype(dtype)))


def bf16_neighbours(x):
    """The bfloat16 values just below and above |x| (truncation and one ulp up), signed."""
    u = x.view(np.uint32)
    down = (u & 0xFFFF0000).view(np.float32)
    up = ((u & 0xFFFF0000) + 0x10000).astype(np.uint32).view(np.float32)
    return down, up


@needs_testing
def test_stochastic_rounding_picks_a_neighbour_and_is_unbiased():
    rng = np.random.default_rng(2)
    x = (rng.standard_normal(4096) * 10.0 ** rng.uniform(-3, 3, 4096)).astype(np.float32)
    down, up = bf16_neighbours(x)
    total = np.zeros(x.shape)
    n = 400
    for seed in range(n):
        r = _testing.bf16_bits_to_f32(_testing.f32_to_bf16_bits_stochastic(x, seed=seed))
        assert np.all((r == down) | (r == up))
        total += r
    mean = total / n
    # E[r] = x; the standard error of the mean is at most ulp / (2 sqrt(n))
    ulp = (up - down).astype(np.float64)
    z = (mean - x) / (ulp / (2 * np.sqrt(n)))
    assert np.abs(z).max() < 6
    assert abs(z.mean()) < 6 / np.sqrt(x.size) * 2         # no overall bias
    exact = _testing.f32_to_bf16_bits(down)                # bfloat16 values stay put
    assert np.array_equal(_testing.f32_to_bf16_bits_stochastic(down, seed=9), exact)


@needs_bf16
def test_stochastic_rounding_optimizer_is_reproducible_and_unbiased():
    w0 = np.full(20000, 1.0, BF16)
    runs = []
    for seed in (0, 0, 1):
        w = w0.copy()
        opt = MixedPrecision(fo.SGD, [w], lr=1.0, master_weights=False, rounding="stochastic",
                             seed=seed)
        for _ in range(4):
            opt.step([np.full(20000, 1e-3, np.float32)])   # 1e-3 is a quarter of an ulp at 1
        runs.append(w.astype(np.float32))
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])
    assert abs(runs[0].mean() - (1 - 4e-3)) < 2e-4             # expected value kept
    nearest = w0.copy()
    opt = MixedPrecision(fo.SGD, [nearest], lr=1.0, master_weights=False)
    for _ in range(4):
        opt.step([np.full(20000, 1e-3, np.float32)])
    assert np.all(nearest == 1)                                 # nearest rounding stalls


# ------------------------------------------------------------------------ loss scaling
def snapshot(opt, params):
    return ([p.copy() for p in params],
            [None if m is None else m.copy() for m in opt.master_params],
            {i: {k: v.copy() for k, v in s.items()} for i, s in opt.state.items()},
            opt.state_dict())


def assert_same(opt, params, snap):
    ps, ms, state, sd = snap
    for p, q in zip(params, ps):
        np.testing.assert_array_equal(bits(p), bits(q))
    for m, q in zip(opt.master_params, ms):
        if m is not None:
            np.testing.assert_array_equal(bits(m), bits(q))
    assert state.keys() == opt.state.keys()
    for i in state:
        for k in state[i]:
            np.testing.assert_array_equal(state[i][k], opt.state[i][k])
    assert [s.get("step") for s in sd["state"].values()] == \
        [s.get("step") for s in opt.state_dict()["state"].values()]


@pytest.mark.parametrize("bad", [np.inf, -np.inf, np.nan])
@pytest.mark.parametrize("grad_dtype", GRAD_DTYPES)
def test_nonfinite_gradients_skip_the_step(bad, grad_dtype):
    params, grads = problem(F16, 3)
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(fo.Adam, [{"params": lowp[:2]}, {"params": lowp[2:]}],
                         loss_scale="dynamic", lr=0.01)
    opt.step(grads[0])
    snap = snapshot(opt, lowp)
    scale = opt.loss_scale
    step = [g.astype(grad_dtype) for g in grads[1]]
    step[2][12345] = bad
    assert opt.step(step) is False
    assert_same(opt, lowp, snap)
    assert opt.loss_scale == scale / 2 and opt.skipped_steps == 1
    assert opt.step(grads[2]) is True


def test_module_level_all_finite_matches_the_plan():
    g = [np.ones(3, np.float16), np.array([1, np.inf], np.float16)]
    plan = _mixed.Plan([np.zeros(3, np.float16), np.zeros(2, np.float16)])
    assert _mixed.all_finite(plan, g) is False
    assert _mixed.all_finite(plan, [g[0], np.ones(2, np.float16)]) is True


def test_overflow_after_unscaling_counts_as_nonfinite():
    w = np.ones(4, np.float32)
    opt = MixedPrecision(fo.SGD, [w], loss_scale=0.5, lr=0.1)
    assert opt.step([np.full(4, 3e38, np.float32)]) is False   # 3e38 / 0.5 overflows
    assert np.all(w == 1)


def test_dynamic_loss_scale_grows_and_backs_off():
    s = DynamicLossScale(init_scale=8.0, growth_interval=3)
    for finite, expected in [(True, 8), (True, 8), (True, 16), (False, 8), (True, 8),
                             (True, 8), (True, 16)]:
        s.update(finite)
        assert s.scale == expected
    w = np.zeros(3, np.float16)
    opt = MixedPrecision(fo.SGD, [w], lr=1.0, loss_scale=DynamicLossScale(4.0, growth_interval=1))
    opt.step([np.full(3, 4.0, np.float16)])            # gradient 4 / 4 = 1
    assert np.all(w == -1) and opt.loss_scale == 8.0


def test_without_loss_scale_nonfinite_steps_apply_unless_asked():
    w = np.zeros(2, np.float16)
    opt = MixedPrecision(fo.SGD, [w], lr=1.0)
    assert opt.step([np.array([np.inf, 1], np.float16)]) is True
    assert np.isneginf(w[0])
    w = np.zeros(2, np.float16)
    opt = MixedPrecision(fo.SGD, [w], lr=1.0, skip_nonfinite=True)
    assert opt.step([np.array([np.inf, 1], np.float16)]) is False
    assert np.all(w == 0)


# ---------------------------------------------------------------------- state dicts
@pytest.mark.parametrize("via", ["state_dict", "file"])
def test_state_dict_round_trip_continues_exactly(tmp_path, via):
    params, grads = problem(LOWP[-1], 10)
    hyper = dict(lr=0.01, amsgrad=True)

    def build(ps):
        return MixedPrecision(fo.Adam, [{"params": ps[:2]}, {"params": ps[2:]}],
                              loss_scale=DynamicLossScale(16.0, growth_interval=2), **hyper)

    straight = [p.copy() for p in params]
    opt = build(straight)
    for step in grads:
        opt.step(step)

    first = [p.copy() for p in params]
    opt1 = build(first)
    for step in grads[:4]:
        opt1.step(step)
    resumed = [p.copy() for p in first]
    opt2 = build(resumed)
    if via == "file":
        fo.save(opt1, tmp_path / "ckpt.npz")
        fo.load(opt2, tmp_path / "ckpt.npz")
        opt2._mp_scaler.load_state_dict(opt1._mp_scaler.state_dict())   # not in the file
    else:
        opt2.load_state_dict(opt1.state_dict())
    assert opt2.loss_scale == opt1.loss_scale
    for step in grads[4:]:
        opt2.step(step)
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(bits(a), bits(b))
    for a, b in zip(opt2.master_params, opt.master_params):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_loading_master_copies_sets_the_16_bit_params():
    w = np.zeros(5, np.float16)
    opt = MixedPrecision(fo.Adam, [w], lr=0.1)
    opt.step([np.ones(5, np.float16)])
    sd = opt.state_dict()
    sd["state"][0]["master"] = np.full(5, 1.00048828125 + 2 ** -12, np.float32)  # a tie
    opt.load_state_dict(sd)
    assert np.all(opt.master_params[0] == np.float32(1.00048828125 + 2 ** -12))
    assert np.all(w == np.float16(1.0009765625))       # tie -> even mantissa


def test_plain_float32_state_dict_loads_into_mixed():
    w32 = np.linspace(-1, 1, 6).astype(np.float32)
    plain = fo.Adam([w32], lr=0.01)
    plain.step([np.ones(6, np.float32)])
    w16 = w32.astype(np.float16)
    opt = MixedPrecision(fo.Adam, [w16], lr=0.01)
    opt.load_state_dict(plain.state_dict())
    np.testing.assert_array_equal(opt.master_params[0], w16.astype(np.float32))
    np.testing.assert_array_equal(opt.state[0]["exp_avg"], plain.state[0]["exp_avg"])


# ------------------------------------------------------------------------- bad input
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rounding="up"), ValueError, "rounding"),
    (dict(rounding="stochastic"), ValueError, "master_weights=False"),
    (dict(loss_scale=-1.0), ValueError, "loss_scale"),
    (dict(loss_scale="auto"), ValueError, "dynamic"),
    (dict(seed=-3), ValueError, "seed"),
    (dict(seed=2 ** 64), ValueError, "seed"),
    (dict(master_weights="yes"), TypeError, "master_weights"),
])
def test_bad_options(kwargs, error, match):
    with pytest.raises(error, match=match):
        MixedPrecision(fo.Adam, [np.zeros(3, np.float16)], **kwargs)


def test_bad_params():
    with pytest.raises(TypeError, match="float64"):
        MixedPrecision(fo.Adam, [np.zeros(3)])
    with pytest.raises(ValueError, match="contiguous"):
        MixedPrecision(fo.Adam, [np.zeros((4, 4), np.float16)[:, 1]])
    with pytest.raises(ValueError, match="bfloat16 parameters only"):
        MixedPrecision(fo.Adam, [np.zeros(3, np.float16)], master_weights=False,
                       rounding="stochastic")
    with pytest.raises(TypeError, match="optimizer class"):
        MixedPrecision("adam", [np.zeros(3, np.float16)])
    with pytest.raises(TypeError, match="unexpected keyword"):
        MixedPrecision(fo.Adam, [np.zeros(3, np.float16)], momentum=0.9)


@pytest.mark.parametrize("bad,error,match", [
    (lambda g: g.astype(np.float64), TypeError, "float32, float16 or bfloat16"),
    (lambda g: g[:-1], ValueError, "shape"),
    (lambda g: np.repeat(g, 2)[::2], ValueError, "contiguous"),
])
def test_bad_gradients_change_nothing(bad, error, match):
    params, grads = problem(F16, 2)
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(fo.Adam, [{"params": lowp[:2]}, {"params": lowp[2:]}],
                         loss_scale=8.0, lr=0.01)
    opt.step(grads[0])
    snap = snapshot(opt, lowp)
    step = list(grads[1])
    step[2] = bad(step[2].reshape(-1)).reshape(-1)
    with pytest.raises(error, match=match):
        opt.step(step)
    assert_same(opt, lowp, snap)


def test_gradient_aliasing_a_master_is_rejected():
    w = np.zeros(4, np.float16)
    opt = MixedPrecision(fo.SGD, [w], lr=0.1)
    with pytest.raises(ValueError, match="shares memory"):
        opt.step([opt.master_params[0]])
