"""Fuzz drivers of fastopt.MixedPrecision and DynamicLossScale (see tests/fuzz_optim.py).

Each step is checked from the optimizer's actual values before it: the reference rule
(tests/reference.py, float64) applied to the float32 master (or the widened 16-bit parameter
without masters) and state, with the gradients ``fl32(g) / S``; the master must match within
the float32 tolerance and the 16-bit parameter must be the master rounded to nearest even, bit
for bit (without masters: within one 16-bit rounding of the reference). Skipped steps (a
non-finite gradient with skipping on) change nothing and move the dynamic loss scale as
torch's GradScaler rule says.
"""
import math

import numpy as np
from hypothesis import strategies as st

import fastopt as fo
from fastopt._specs import SPECS
from fuzz_optim import CLASSES, NAMES, draw_case, mark_ill_conditioned
from fuzzing import ERRORS, Masks, assert_close, entry_point, same_state_dict, spread_values
from reference import GROUP_KEYS, GROUP_STEPS, reference_step

try:
    import ml_dtypes
    BF16 = np.dtype(ml_dtypes.bfloat16)
except ImportError:  # pragma: no cover - ml_dtypes is in the test extra
    BF16 = None

F16, F32 = np.dtype(np.float16), np.dtype(np.float32)
LOW = [d for d in (F16, BF16, F32) if d is not None]
ULP = {F16: 2.0 ** -10, BF16: 2.0 ** -7, F32: 2.0 ** -23}


def _values(ex, shape, specials):
    n = int(np.prod(shape))
    v = (ex.rng.integers(-80, 81, n) / 8.0 if ex.grid else spread_values(ex.rng, n)).reshape(shape)
    if specials and v.size and ex.chance(15, "non-finite gradient"):
        v.flat[ex.draw(st.integers(0, v.size - 1), "at")] = ex.draw(
            st.sampled_from([np.nan, np.inf, -np.inf]), "value")
    return v


def _param(ex, k):
    """(array, valid): a float16/bfloat16/float32 parameter, or a rejected form."""
    shape = ex.draw(st.sampled_from([(0,), (1,), (7,), (3, 5), (), (40,)]), "shape")
    dtype = ex.draw(st.sampled_from(LOW), "dtype")
    a = np.asarray(_values(ex, shape, False), dtype)
    if ex.chance(5, f"bad param {k}"):
        form = ex.draw(st.sampled_from(["float64", "int", "strided", "readonly", "list", "swapped"]), "form")
        if form == "float64":
            return a.astype(np.float64), False
        if form == "int":
            return a.astype(np.int32), False
        if form == "strided":
            b = np.repeat(a.reshape(-1), 2)[::2]
            return b, bool(b.flags.c_contiguous)      # a 0- or 1-element view is contiguous
        if form == "readonly":
            a.flags.writeable = False
            return a, False
        if form == "list":
            return a.tolist(), False
        if form == "swapped" and dtype != BF16:
            return a.astype(dtype.newbyteorder()), False
    return a, True


def _grad(ex, p):
    """(array, valid): a float32/float16/bfloat16 gradient like p, or a rejected form."""
    dtype = ex.draw(st.sampled_from(LOW), "grad dtype")
    shape = p.shape if isinstance(p, np.ndarray) else (1,)
    g = np.asarray(_values(ex, shape, True), dtype)
    if ex.chance(4, "bad grad"):
        form = ex.draw(st.sampled_from(["float64", "shape", "param", "list"]), "grad form")
        if form == "float64":
            return g.astype(np.float64), False
        if form == "shape":
            return np.zeros(g.size + 1, dtype), False
        if form == "param" and isinstance(p, np.ndarray) and p.size:
            return p, False
        if form == "list":
            return g.tolist(), False
    return g, True


@entry_point(*(n for n in NAMES if "mixed" in fo._table.KERNELS[CLASSES[n].spec.kernel_name].backends),
             entry="MixedPrecision")
def fuzz_mixed_precision(ex, name):
    """MixedPrecision(<class>, 16-bit/float32 params, options): construction and 1-4 steps."""
    hyper, hyper_ok = draw_case(ex, name, invalid_pct=5)
    pairs = [_param(ex, k) for k in range(ex.draw(st.integers(1, 3), "params"))]
    params = [p for p, _ in pairs]
    master = ex.pick("master_weights", [True, False], ["yes", 1])
    rounding = ex.pick("rounding", ["nearest", "nearest", "stochastic"], ["up"])
    seed = ex.pick("seed", [0, 7], [-1, 1.5])
    scale = ex.pick("loss_scale", [None, 1.0, 1024.0, "dynamic", "object"], [0.0, -1.0, "static", math.nan])
    if scale == "object":
        scale = fo.DynamicLossScale(init_scale=8.0, growth_interval=2)
    skip = ex.draw(st.sampled_from([None, True, False]), "skip_nonfinite")
    valid = (hyper_ok and all(ok for _, ok in pairs) and isinstance(master, bool)
             and rounding in ("nearest", "stochastic") and not (rounding == "stochastic" and master)
             and not (rounding == "stochastic" and any(p.dtype == F16 for p in params))
             and isinstance(seed, int) and seed >= 0
             and (scale is None or scale == "dynamic" or isinstance(scale, fo.DynamicLossScale)
                  or (isinstance(scale, float) and math.isfinite(scale) and scale > 0)))
    before = [np.array(p, copy=True) if isinstance(p, np.ndarray) else p for p in params]
    try:
        opt = fo.MixedPrecision(CLASSES[name], params, master_weights=master, rounding=rounding,
                                seed=seed, loss_scale=scale, skip_nonfinite=skip, **hyper)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        assert all(not isinstance(a, np.ndarray) or a.tobytes() == b.tobytes() for a, b in zip(params, before))
        return
    assert valid, "accepted invalid arguments"
    skipping = skip if skip is not None else scale is not None
    dynamic = scale == "dynamic" or isinstance(scale, fo.DynamicLossScale)
    good_run, applied_steps = 0, 0
    spec = SPECS[name]
    full = {**spec.defaults, **hyper}
    for t in range(ex.draw(st.integers(1, 4), "steps")):
        gpairs = [_grad(ex, p) for p in params]
        grads = [g for g, _ in gpairs]
        ok = all(ok for _, ok in gpairs)
        s = opt.loss_scale
        scaled = [np.asarray(g, np.float32) / np.float32(s) for g in grads] if ok else []
        finite = ok and all(np.isfinite(g).all() for g in scaled)
        sd, raw = opt.state_dict(), [p.tobytes() for p in params]
        masters_before = [None if m is None else m.copy() for m in opt.master_params]
        try:
            applied = opt.step(grads)
        except ERRORS as err:
            assert not ok, f"step {t}: rejected valid gradients: {err!r}"
            assert same_state_dict(sd, opt.state_dict()) and [p.tobytes() for p in params] == raw
            continue
        assert ok, f"step {t}: accepted invalid gradients"
        if skipping and not finite:
            assert applied is False
            assert [p.tobytes() for p in params] == raw
            new_sd = opt.state_dict()
            assert all(sd["state"][i][k].tobytes() == new_sd["state"][i][k].tobytes()
                       for i in sd["state"] for k in sd["state"][i] if isinstance(sd["state"][i][k], np.ndarray))
            if dynamic:
                assert opt.loss_scale == s * 0.5, "no backoff after an overflow"
                good_run = 0
            continue
        assert applied is True
        applied_steps += 1
        if dynamic:
            good_run += 1
            interval = 2000 if scale == "dynamic" else 2
            expected_scale = s * 2.0 if good_run == interval else s
            good_run = 0 if good_run == interval else good_run
            assert opt.loss_scale == expected_scale, (opt.loss_scale, expected_scale)
        step_hyper, step_lr = full, None
        if name in GROUP_STEPS:         # the group scalars before the step (Schedule-Free)
            group_ref = {**full, **{k: sd["param_groups"][0][k] for k in GROUP_KEYS}}
            step_lr, c = GROUP_STEPS[name](group_ref, full["lr"])
            step_hyper = {**group_ref, "ckp1": c}
        for i, (p, g, m0) in enumerate(zip(params, scaled, masters_before)):
            start = m0 if m0 is not None else np.frombuffer(raw[i], p.dtype).reshape(p.shape)
            # the buffers, and the per-parameter scalars (NAdam's mu_product) as 0-d arrays
            state = {k: np.array(v, np.float64) for k, v in sd["state"].get(i, {}).items()
                     if (isinstance(v, np.ndarray) and k in spec.state) or k in spec.scalars}
            state_before = {k: v.copy() for k, v in state.items()}
            ref = reference_step(name, np.asarray(start, np.float64), g.astype(np.float64), state,
                                 step_hyper, applied_steps, step_lr)
            masks = Masks(np.asarray(start, np.float64).reshape(-1))
            masks.add(g.reshape(-1))
            for v in state.values():
                masks.add(v.reshape(-1))
            mark_ill_conditioned(masks, name, g, start, state_before, full)
            m = opt.master_params[i]
            if m is not None:
                assert_close(m, ref, masks, f"{name} master {i} step {t}", scale_from=start)
                assert p.tobytes() == np.asarray(m, np.float32).astype(p.dtype).tobytes(), \
                    "the 16-bit parameter is not its master rounded to nearest"
            else:
                got = np.asarray(p, np.float64).reshape(-1)
                want = np.asarray(ref, np.float64).reshape(-1)
                plain = ~(masks.nonfinite | masks.huge)
                ulp = ULP[p.dtype] * 2 if rounding == "stochastic" else ULP[p.dtype]
                # an ulp (two when stochastic) of the 16-bit result, at least of
                # the smallest normal number, plus the float32 tolerance at the scale of the
                # values involved (no floor at 1)
                tiny = float(np.finfo(np.float32).tiny) if p.dtype == BF16 else 2.0 ** -14
                scale_ = max(float(np.abs(want[plain]).max(initial=0)),
                             float(np.abs(np.asarray(start, np.float64).reshape(-1)[plain]).max(initial=0)))
                bound = ulp * np.maximum(np.abs(want), tiny) + 3e-5 * scale_
                assert (np.abs(got - want)[plain] <= bound[plain]).all(), f"{name} param {i} step {t}"
                assert (np.isfinite(got) == np.isfinite(want))[masks.nonfinite].all()
            for k, v in opt.state.get(i, {}).items():
                if k in spec.scalars:         # 0-d float64, computed once per step
                    assert np.isclose(v, state[k], rtol=1e-12, atol=0), (name, k, t)
                elif k in state:
                    assert v.dtype == F32
                    assert_close(v, state[k], masks, f"{name} state {k} step {t}",
                                 scale_from=state_before.get(k))


@entry_point("DynamicLossScale")
def fuzz_loss_scale(ex, _):
    """DynamicLossScale: validation, then backoff on overflow and growth after a finite run."""
    init = ex.pick("init_scale", [1.0, 8.0, 2.0 ** 16], [0.0, -1.0, math.inf, "1"])
    growth = ex.pick("growth_factor", [1.0, 2.0, 1.5], [0.5, 0.0, math.nan])
    backoff = ex.pick("backoff_factor", [0.5, 0.25], [0.0, -0.5, 1.0])
    interval = ex.pick("growth_interval", [1, 2, 3], [0, -1, 1.5, True])
    valid = (all(isinstance(v, float) and math.isfinite(v) and v > 0 for v in (init, growth, backoff))
             and growth >= 1 and backoff < 1 and isinstance(interval, int) and not isinstance(interval, bool)
             and interval >= 1)
    try:
        ls = fo.DynamicLossScale(init_scale=init, growth_factor=growth, backoff_factor=backoff,
                                 growth_interval=interval)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    scale, run = init, 0
    for _ in range(ex.draw(st.integers(1, 8), "updates")):
        finite = ex.draw(st.booleans(), "finite")
        ls.update(finite)
        if finite:
            run += 1
            if run == interval:
                scale, run = scale * growth, 0
        else:
            scale, run = scale * backoff, 0
        assert ls.scale == scale, (ls.scale, scale)
    clone = fo.DynamicLossScale()
    clone.load_state_dict(ls.state_dict())
    assert clone.scale == ls.scale
