"""Schedule-Free AdamW, SGD and RAdam: the train/eval modes, the group-level scalars kept in the param
groups, and their round trip through state_dict and fo.save/fo.load (the step itself is
checked against the oracle and the recorded goldens with every other optimizer)."""
import numpy as np
import pytest

import fastopt as fo
from fastopt import functional as F
from reference import schedule_free_x

NAMES = ("schedule_free_adamw", "schedule_free_sgd", "schedule_free_radam")
CLASSES = fo.optim.first_order.CLASSES
HYPER = {"schedule_free_adamw": dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=5),
         "schedule_free_sgd": dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=5),
         # beta2 = 0.9: silent until step 4, rectified from step 5 on (rho_t > 4)
         "schedule_free_radam": dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.01)}


def _beta(opt):
    g = opt.param_groups[0]
    return g["betas"][0] if "betas" in g else g["momentum"]


def _run(name, steps, seed=0, opt=None, params=None):
    rng = np.random.default_rng(seed)
    if opt is None:
        params = [rng.standard_normal(s) for s in ((4, 3), (5,))]
        opt = CLASSES[name]([{"params": params[:1]}, {"params": params[1:], "lr": 0.02}],
                            **HYPER[name])
    for _ in range(steps):
        opt.step([rng.standard_normal(p.shape) for p in params])
    return opt, params


@pytest.mark.parametrize("name", NAMES)
def test_eval_and_train_move_between_y_and_x(name):
    opt, params = _run(name, 7)
    y = [p.copy() for p in params]
    opt.eval()
    assert [g["train_mode"] for g in opt.param_groups] == [False, False]
    for p, yp, i in zip(params, y, range(2)):
        np.testing.assert_allclose(p, schedule_free_x(yp, opt.state[i]["z"], _beta(opt)),
                                   rtol=1e-13, atol=1e-15)
    opt.eval()                                   # already there: nothing moves
    x = [p.copy() for p in params]
    opt.eval()
    assert all(np.array_equal(a, b) for a, b in zip(params, x))
    opt.train()
    for p, yp in zip(params, y):
        np.testing.assert_allclose(p, yp, rtol=1e-13, atol=1e-15)
    assert [g["train_mode"] for g in opt.param_groups] == [True, True]


@pytest.mark.parametrize("name", NAMES)
def test_a_step_in_eval_mode_raises_and_changes_nothing(name):
    opt, params = _run(name, 3)
    opt.eval()
    before = [p.copy() for p in params]
    sd = opt.state_dict()
    for groups in (opt.param_groups, opt.param_groups[:1]):
        with pytest.raises(RuntimeError, match="not in train mode"):
            opt.step([np.ones_like(p) for p in params])
    assert all(np.array_equal(a, b) for a, b in zip(params, before))
    assert opt.param_groups[0]["k"] == sd["param_groups"][0]["k"] == 3
    one = CLASSES[name]([np.zeros(3)])          # one group: the inlined step checks too
    one.eval()
    with pytest.raises(RuntimeError, match="not in train mode"):
        one.step([np.ones(3)])


@pytest.mark.parametrize("name", NAMES)
def test_group_scalars_are_the_packages(name):
    opt, _ = _run(name, 7)
    g = opt.param_groups[0]
    assert g["k"] == 7 and isinstance(g["k"], int)
    lrs = [_scheduled(name, t) for t in range(1, 8)]
    assert g["scheduled_lr"] == pytest.approx(lrs[-1], rel=1e-14)
    assert g["lr_max"] == pytest.approx(max(lrs), rel=1e-14)
    w = [max(lrs[:t]) ** 2 for t in range(1, 8)]
    assert g["weight_sum"] == pytest.approx(sum(w), rel=1e-14)


def _scheduled(name, t):
    """The lr of step t: warmed up over 5 steps (AdamW, SGD); RAdam's rectified lr, 0 while
    rho_t <= 4 (silent_sgd_phase)."""
    lr = HYPER[name]["lr"]
    if name != "schedule_free_radam":
        return min(1, t / 5) * lr
    b2 = HYPER[name]["betas"][1]
    rho_inf = 2 / (1 - b2) - 1
    rho = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    if rho <= 4:
        return 0.0
    return lr * ((rho - 4) * (rho - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho)) ** 0.5


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("mode", ["train", "eval"])
def test_state_dict_and_checkpoint_round_trip_with_the_mode(name, mode, tmp_path):
    opt, params = _run(name, 6)
    getattr(opt, mode)()
    sd = opt.state_dict()
    assert sd["param_groups"][0]["train_mode"] is (mode == "train")
    assert sd["param_groups"][0]["k"] == 6
    fo.save(opt, tmp_path / "sf.npz")
    for load in ("state_dict", "file"):
        twin_params = [np.zeros_like(p) for p in params]
        twin = CLASSES[name]([{"params": twin_params[:1]}, {"params": twin_params[1:]}])
        if load == "state_dict":
            twin.load_state_dict(sd)
        else:
            fo.load(twin, tmp_path / "sf.npz")
        for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode", "lr"):
            assert [g[key] for g in twin.param_groups] == [g[key] for g in opt.param_groups]
        for tp, p in zip(twin_params, params):
            tp[...] = p
        # both continue identically: back to train mode, then more steps, then eval
        if mode == "eval":
            opt.train()
            twin.train()
        _run(name, 4, seed=1, opt=twin, params=twin_params)
        _run(name, 4, seed=1, opt=opt, params=params)
        twin.eval()
        opt.eval()
        assert all(np.array_equal(a, b) for a, b in zip(twin_params, params))
        for i in range(2):
            assert np.array_equal(twin.state[i]["z"], opt.state[i]["z"])
        getattr(opt, mode)()                    # the next round saves the continued optimizer
        sd = opt.state_dict()
        fo.save(opt, tmp_path / "sf.npz")


@pytest.mark.parametrize("name", NAMES)
def test_bad_group_scalars_in_a_state_dict_are_refused(name):
    opt, params = _run(name, 2)
    sd = opt.state_dict()
    for key, bad in (("k", -1), ("k", 1.5), ("weight_sum", float("nan")), ("train_mode", "yes")):
        broken = opt.state_dict()
        broken["param_groups"][1][key] = bad
        with pytest.raises((TypeError, ValueError), match=key):
            opt.load_state_dict(broken)
    assert opt.state_dict()["param_groups"] == sd["param_groups"]


def test_constructor_checks():
    with pytest.raises(ValueError, match="momentum"):
        fo.ScheduleFreeSGD([np.zeros(2)], momentum=1.0)
    opt = fo.ScheduleFreeAdamW([np.zeros(2)], betas=(0.0, 0.9))   # as the package: eval()
    opt.step([np.ones(2)])                                          # cannot divide by beta1
    before = opt.state_dict()
    with pytest.raises(ZeroDivisionError):
        opt.eval()
    assert opt.param_groups[0]["train_mode"] is True
    np.testing.assert_array_equal(opt.state_dict()["state"][0]["z"], before["state"][0]["z"])
    with pytest.raises((TypeError, ValueError), match="warmup_steps"):
        fo.ScheduleFreeAdamW([np.zeros(2)], warmup_steps=-1)
    opt = fo.ScheduleFreeAdamW([np.zeros(2)], foreach=False)     # accepted, ignored
    assert opt.param_groups[0]["foreach"] is False


@pytest.mark.parametrize("name", NAMES)
def test_functional_form_carries_the_group_scalars(name):
    """The functional form steps y and returns the group's new scalars, as the class does."""
    opt, params = _run(name, 0)
    rng = np.random.default_rng(5)
    p = params[0]
    mine = p.copy()
    z = mine.copy()
    extra = {} if name == "schedule_free_sgd" else {"exp_avg_sq": np.zeros_like(p)}
    hyper = dict(HYPER[name])
    if "betas" in hyper:
        hyper["beta1"], hyper["beta2"] = hyper.pop("betas")
    scalars = dict(k=0, weight_sum=0.0, lr_max=-1.0, scheduled_lr=0.0)
    for _ in range(6):
        g = rng.standard_normal(p.shape)
        opt.step([g, np.zeros_like(params[1])])
        scalars = getattr(F, f"{name}_")(mine, g.copy(), z, *extra.values(), **hyper, **scalars)
    np.testing.assert_array_equal(mine, p)
    np.testing.assert_array_equal(z, opt.state[0]["z"])
    assert scalars == {k: opt.param_groups[0][k] for k in scalars}


@pytest.mark.parametrize("name", NAMES)
def test_loads_the_packages_state_dict(name):
    """A schedulefree checkpoint (torch's layout: group scalars in param_groups, no 'step')
    loads and continues as the package does."""
    torch = pytest.importorskip("torch", reason="needs torch")
    schedulefree = pytest.importorskip("schedulefree", reason="needs the schedulefree package")
    cls = {"schedule_free_adamw": schedulefree.AdamWScheduleFree,
           "schedule_free_sgd": schedulefree.SGDScheduleFree,
           "schedule_free_radam": schedulefree.RAdamScheduleFree}[name]
    rng = np.random.default_rng(3)
    p0 = rng.standard_normal(6)
    tp = torch.tensor(p0.copy())
    ref = cls([tp], foreach=False, **HYPER[name])
    ref.train()
    grads = [rng.standard_normal(6) for _ in range(8)]
    for g in grads[:4]:
        tp.grad = torch.tensor(g)
        ref.step()
    ref.eval()
    sd = ref.state_dict()
    sd = {"param_groups": sd["param_groups"],
          "state": {i: {k: v.numpy().copy() for k, v in s.items()} for i, s in sd["state"].items()}}
    w = tp.detach().numpy().copy()
    opt = CLASSES[name]([w], **HYPER[name])
    opt.load_state_dict(sd)
    assert opt.param_groups[0]["train_mode"] is False and opt.param_groups[0]["k"] == 4
    ref.train()
    opt.train()
    for g in grads[4:]:
        tp.grad = torch.tensor(g)
        ref.step()
        opt.step([g.copy()])
    ref.eval()
    opt.eval()
    np.testing.assert_allclose(w, tp.detach().numpy(), rtol=1e-13, atol=1e-15)

