"""Schedule-Free AdamW, SGD and RAdam under fo.MixedPrecision: 16-bit parameters with float32
masters (and without), the train/eval moves on the masters, and the mode in checkpoints.

The steps themselves are in tests/test_mixed.py with every other rule (master trajectory bit
for bit equal to a float32 run; masters, state and 16-bit parameters against the float64
oracle). Here: train()/eval() move the float32 master exactly as the plain float32 optimizer
moves a float32 parameter (bit for bit, so the whole train/eval/train trajectory is a float32
run's), the 16-bit copy is the master rounded to nearest even after every move, eval() puts
the master at the oracle's average x = (y - (1 - beta) z) / beta, and the mode travels with
state_dict and fo.save/fo.load.
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt.mixed import MixedPrecision
from reference import schedule_free_x

try:
    import ml_dtypes
    LOWP = [np.dtype(np.float16), np.dtype(ml_dtypes.bfloat16)]
except ImportError:       # float16 is tested all the same
    LOWP = [np.dtype(np.float16)]
LOWP_IDS = ["float16", "bfloat16"][:len(LOWP)]
CLASSES = fo.optim.first_order.CLASSES
NAMES = ("schedule_free_adamw", "schedule_free_sgd", "schedule_free_radam")
HYPER = {"schedule_free_adamw": dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=5),
         "schedule_free_sgd": dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=5),
         "schedule_free_radam": dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.01)}
SHAPES = [(7, 3), (1,), (40000,), (5,)]       # 40,000: above the parallel threshold


def bits(a):
    return a.view(np.uint16 if a.dtype.itemsize == 2 else np.uint32)


def problem(dtype, n_steps, seed=0, scale=1.0):
    """16-bit params (the last one float32: its own master) and 16-bit gradients of
    `scale * loss` for each step."""
    rng = np.random.default_rng(seed)
    dtypes = [dtype] * (len(SHAPES) - 1) + [np.dtype(np.float32)]
    params = [rng.standard_normal(s).astype(d) for s, d in zip(SHAPES, dtypes)]
    grads = [[(scale * 10.0 ** rng.uniform(-2, 0) * rng.standard_normal(s)).astype(dtype)
              for s in SHAPES] for _ in range(n_steps)]
    return params, grads


def groups(params, hyper):
    return [{"params": params[:2]}, {"params": params[2:], "lr": hyper["lr"] * 2}]


def beta(hyper):
    return hyper["betas"][0] if "betas" in hyper else hyper["momentum"]


def schedule(opt, steps, modes):
    """Steps with a mode change where `modes` says (step index -> "train" | "eval" list)."""
    for t, step in enumerate(steps):
        for mode in modes.get(t, ()):
            getattr(opt, mode)()
        assert opt.step(step) is not False


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_train_eval_moves_equal_a_float32_run_bit_for_bit(name, dtype):
    scale = 3.0
    hyper = HYPER[name]
    params, grads = problem(dtype, 12, scale=scale)
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(CLASSES[name], groups(lowp, hyper), loss_scale=scale, **hyper)
    w = [p.astype(np.float32) for p in params]
    ref = CLASSES[name](groups(w, hyper), **hyper)
    # an eval/train round trip in the middle, and evaluations at two points
    modes = {6: ("eval", "train")}
    schedule(opt, grads, modes)
    schedule(ref, [[g.astype(np.float32) / np.float32(scale) for g in s] for s in grads], modes)
    for mode in ("eval", "train", "eval"):
        getattr(opt, mode)()
        getattr(ref, mode)()
        assert [g["train_mode"] for g in opt.param_groups] == [mode == "train"] * 2
        for m, w32, p in zip(opt.master_params, w, lowp):
            np.testing.assert_array_equal(bits(m), bits(w32))
            np.testing.assert_array_equal(bits(p), bits(m.astype(p.dtype)))
    assert opt.master_params[3] is lowp[3]
    for i in range(len(lowp)):
        for key, value in ref.state[i].items():
            assert opt.state[i][key].dtype == np.float32
            np.testing.assert_array_equal(bits(opt.state[i][key]), bits(value))


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_eval_puts_the_master_at_the_oracles_average(name, dtype):
    """x = (y - (1 - beta) z) / beta in float64 from the float32 y and z, to float32
    rounding; train() brings y back (to the rounding of two float32 lerps)."""
    hyper = HYPER[name]
    params, grads = problem(dtype, 8, seed=1)
    lowp = [p.copy() for p in params]
    opt = MixedPrecision(CLASSES[name], groups(lowp, hyper), **hyper)
    schedule(opt, grads, {})
    y = [m.astype(np.float64) for m in opt.master_params]
    z = [opt.state[i]["z"].astype(np.float64) for i in range(len(lowp))]
    opt.eval()
    b = beta(hyper)
    for m, yi, zi in zip(opt.master_params, y, z):
        scale = (np.abs(yi) + np.abs(zi)) / b
        x = schedule_free_x(yi, zi, b)
        assert np.all(np.abs(m - x) <= 4 * 2.0 ** -24 * scale + 1e-30)
    opt.train()
    for m, yi, zi in zip(opt.master_params, y, z):
        scale = (np.abs(yi) + np.abs(zi)) / b
        assert np.all(np.abs(m - yi) <= 8 * 2.0 ** -24 * scale + 1e-30)


@pytest.mark.parametrize("dtype", LOWP, ids=LOWP_IDS)
@pytest.mark.parametrize("name", NAMES)
def test_without_master_the_move_is_rounded_from_16_bits(name, dtype):
    """Without masters the move runs on the widened 16-bit value and is rounded to nearest:
    within half a 16-bit spacing (plus float32 rounding) of the float64 average."""
    hyper = HYPER[name]
    params, grads = problem(dtype, 6, seed=2)
    lowp = [p.copy() for p in params[:3]]
    opt = MixedPrecision(CLASSES[name], groups(lowp, hyper), master_weights=False, **hyper)
    schedule(opt, [s[:3] for s in grads], {})
    y = [p.astype(np.float64) for p in lowp]
    z = [opt.state[i]["z"].astype(np.float64) for i in range(len(lowp))]
    opt.eval()
    mantissa = 10 if dtype == np.float16 else 7
    b = beta(hyper)
    for p, yi, zi in zip(lowp, y, z):
        assert p.dtype == dtype
        x = schedule_free_x(yi, zi, b)
        half = 0.5 * 2.0 ** -mantissa * np.abs(x) + 8 * 2.0 ** -24 * (np.abs(yi) + np.abs(zi)) / b
        assert np.all(np.abs(p.astype(np.float64) - x) <= half + 2.0 ** -24)


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("via", ["state_dict", "file"])
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_checkpoint_keeps_the_mode_and_continues_exactly(name, via, mode, tmp_path):
    dtype = LOWP[-1]
    hyper = HYPER[name]
    params, grads = problem(dtype, 10, seed=3)
    straight = [p.copy() for p in params]
    opt = MixedPrecision(CLASSES[name], groups(straight, hyper), **hyper)
    schedule(opt, grads, {4: (mode, "train")})
    opt.eval()

    first = [p.copy() for p in params]
    opt1 = MixedPrecision(CLASSES[name], groups(first, hyper), **hyper)
    schedule(opt1, grads[:4], {})
    getattr(opt1, mode)()
    resumed = [np.zeros_like(p) for p in params]      # the checkpoint sets the 16-bit params
    opt2 = MixedPrecision(CLASSES[name], groups(resumed, hyper), **hyper)
    if via == "file":
        fo.save(opt1, tmp_path / "sf.npz")
        fo.load(opt2, tmp_path / "sf.npz")
    else:
        opt2.load_state_dict(opt1.state_dict())
    resumed[3][...] = first[3]                          # a float32 param is not in the state
    assert [g["train_mode"] for g in opt2.param_groups] == [mode == "train"] * 2
    for key in ("k", "weight_sum", "lr_max", "scheduled_lr"):
        assert [g[key] for g in opt2.param_groups] == [g[key] for g in opt1.param_groups]
    for a, b in zip(resumed[:3], first[:3]):
        np.testing.assert_array_equal(bits(a), bits(b))
    schedule(opt2, grads[4:], {0: ("train",)})
    opt2.eval()
    for a, b in zip(resumed, straight):
        np.testing.assert_array_equal(bits(a), bits(b))
    for a, b in zip(opt2.master_params, opt.master_params):
        np.testing.assert_array_equal(bits(a), bits(b))


def test_a_step_in_eval_mode_raises_and_changes_nothing():
    w = np.linspace(-1, 1, 9).astype(np.float16)
    opt = MixedPrecision(fo.ScheduleFreeAdamW, [w], lr=0.1)
    opt.step([np.ones(9, np.float16)])
    opt.eval()
    before, master = w.copy(), opt.master_params[0].copy()
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step([np.ones(9, np.float16)])
    np.testing.assert_array_equal(bits(w), bits(before))
    np.testing.assert_array_equal(bits(opt.master_params[0]), bits(master))
    assert opt.param_groups[0]["k"] == 1


def test_z_starts_at_the_master_not_its_16_bit_rounding():
    """A master loaded before the first step (a float32 checkpoint into a 16-bit model): z
    starts at the master, as the float32 run would."""
    w32 = np.array([1.0 + 2.0 ** -13, -0.3], np.float32)       # not float16 numbers
    opt32 = fo.ScheduleFreeSGD([w32.copy()], lr=0.1)
    w16 = w32.astype(np.float16)
    opt = MixedPrecision(fo.ScheduleFreeSGD, [w16], lr=0.1)
    sd = opt.state_dict()
    sd["state"][0] = {"master": w32.copy()}
    opt.load_state_dict(sd)
    g = np.array([0.5, -0.25], np.float32)
    opt.step([g])
    opt32.step([g])
    np.testing.assert_array_equal(bits(opt.state[0]["z"]), bits(opt32.state[0]["z"]))
    np.testing.assert_array_equal(bits(opt.master_params[0]), bits(opt32.param_groups[0]["params"][0]))
