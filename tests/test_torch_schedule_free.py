"""fastopt.torch's Schedule-Free AdamW, SGD and RAdam as drop-ins for the schedulefree package.

- trajectories on the recorded scenario of tests/golden (two groups, 150 steps, an lr change):
  train-mode points, the point after eval(), the state (z, exp_avg_sq) and the group scalars
  (k, weight_sum, lr_max, scheduled_lr) against the goldens recorded from schedulefree 1.4.1
  (always) and against the installed package (live): float64 within 1e-11, float32 2e-5;
- the package's names, keywords and defaults; its starting mode (eval: train() before the
  first step), its errors; a group without gradients still advances its scalars, as the
  package's do;
- state_dicts in both directions mid-run (in eval mode, as the package saves them) continue
  as the uninterrupted package run;
- bfloat16/float16 parameters on the mixed-precision path: the float32 master trajectory,
  train()/eval() moves included, is bit for bit that of float32 parameters.
"""
import inspect
import io
import os

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
import fastopt.torch as ft  # noqa: E402
from cases import CASES  # noqa: E402
from fastopt._specs import SPECS  # noqa: E402
from golden.torch_runner import RECORD_AT, run_torch  # noqa: E402

try:
    import schedulefree
except ImportError:
    schedulefree = None
needs_package = pytest.mark.skipif(schedulefree is None, reason="the schedulefree package is not "
                                   "installed (pip install schedulefree); the goldens still run")

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "torch_trajectories.npz")
TOL = {np.float32: 2e-5, np.float64: 1e-11}
NAMES = ("schedule_free_adamw", "schedule_free_sgd", "schedule_free_radam")
OURS = {name: getattr(ft, SPECS[name].class_name) for name in NAMES}
ALIAS = {"schedule_free_adamw": "AdamWScheduleFree", "schedule_free_sgd": "SGDScheduleFree",
         "schedule_free_radam": "RAdamScheduleFree"}
PARAMS = [(name, i, dtype) for name in NAMES for i in range(len(CASES[name]))
          for dtype in (np.float32, np.float64)]
IDS = [f"{n}-{i}-{np.dtype(d).name}" for n, i, d in PARAMS]
HYPER = {"schedule_free_adamw": dict(lr=0.01, betas=(0.9, 0.99), weight_decay=0.01, warmup_steps=5),
         "schedule_free_sgd": dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=5),
         "schedule_free_radam": dict(lr=0.01, betas=(0.9, 0.9), weight_decay=0.01)}


def package_class(name):
    return getattr(schedulefree, ALIAS[name])


def rel_err(a, b):
    a, b = (x.detach().double().numpy() if isinstance(x, torch.Tensor) else x for x in (a, b))
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(np.asarray(a, np.float64) - np.asarray(b, np.float64)))) / scale


def compare(name, dtype, ours, theirs, what):
    """Trajectories (train points and the point after eval()), state and group scalars."""
    traj, state = ours
    ref_traj, ref_state = theirs
    for t in (*RECORD_AT, "eval"):
        for j, (a, b) in enumerate(zip(traj[t], ref_traj(t))):
            assert rel_err(a, b) <= TOL[dtype], f"{what} step {t} param {j}"
    for j in range(3):
        assert set(state[j]) == set(ref_state(j)), f"{what} state of param {j}"
        for buf, value in state[j].items():
            assert rel_err(value, ref_state(j)[buf]) <= 10 * TOL[dtype], f"{what} {buf} {j}"
    for gi in range(2):
        for key, value in state[f"group{gi}"].items():
            assert np.allclose(value, ref_state(f"group{gi}")[key], rtol=1e-12, atol=0), \
                (what, gi, key)


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name,i,dtype", PARAMS, ids=IDS)
def test_matches_the_recorded_package_trajectory(golden, name, i, dtype):
    key = f"{name}/{i}/{np.dtype(dtype).name}"
    ours = run_torch(name, CASES[name][i], dtype, cls=OURS[name])

    def traj(t):
        return [golden[f"{key}/step{t}/param{j}"] for j in range(3)]

    def state(j):
        prefix = f"{key}/state{j}/"
        return {k[len(prefix):]: v for k, v in golden.items() if k.startswith(prefix)}

    compare(name, dtype, ours, (traj, state), key)


@needs_package
@pytest.mark.parametrize("name,i,dtype", PARAMS, ids=IDS)
def test_matches_the_installed_package(name, i, dtype):
    ours = run_torch(name, CASES[name][i], dtype, cls=OURS[name])
    traj, state = run_torch(name, CASES[name][i], dtype)
    compare(name, dtype, ours, (traj.__getitem__, state.__getitem__), f"{name}/{i}")


@pytest.mark.parametrize("name", NAMES)
def test_names_keywords_defaults_and_starting_mode_are_the_packages(name):
    cls = OURS[name]
    assert getattr(ft, ALIAS[name]) is cls and ALIAS[name] in ft.__all__
    ours = inspect.signature(cls.__init__).parameters
    w = torch.nn.Parameter(torch.zeros(3))
    opt = cls([w])
    group = opt.param_groups[0]
    assert group["train_mode"] is False           # eval mode, as the package starts
    assert (group["k"], group["weight_sum"], group["lr_max"], group["scheduled_lr"]) == \
        (0, 0.0, -1.0, 0.0)
    if schedulefree is not None:
        theirs = inspect.signature(package_class(name).__init__).parameters
        mine = [p for p in ours.values() if p.kind != inspect.Parameter.KEYWORD_ONLY]
        assert [p.name for p in mine] == list(theirs)
        for p in mine[2:]:
            assert p.default == theirs[p.name].default, p.name
        ref = package_class(name)([torch.nn.Parameter(torch.zeros(3))])
        assert {k: v for k, v in group.items() if k in ref.param_groups[0] and k != "params"} \
            == {k: v for k, v in ref.param_groups[0].items() if k != "params"}
    w.grad = torch.ones(3)
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step()
    assert group["k"] == 0 and not opt.state and torch.equal(w, torch.zeros(3))
    opt.train()
    opt.step()
    assert group["k"] == 1 and set(opt.state[w]) == set(SPECS[name].state)
    opt.eval()
    with pytest.raises(RuntimeError, match="not in train mode"):
        opt.step(closure=lambda: pytest.fail("the closure runs after the mode check"))


def _model(dtype=torch.float64, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 8), torch.nn.Tanh(),
                               torch.nn.Linear(8, 3)).to(dtype)


def _train(model, opt, steps, seed, frozen=()):
    g = torch.Generator().manual_seed(seed)
    for t in range(steps):
        x = torch.randn(16, 6, generator=g, dtype=next(model.parameters()).dtype)
        opt.zero_grad(set_to_none=True)
        ((model(x) - x[:, :3]) ** 2).mean().backward()
        if t in frozen:                      # the head gets no gradient on these steps
            for p in model[2].parameters():
                p.grad = None
        opt.step()


def _groups(model):
    return [{"params": list(model[0].parameters())},
            {"params": list(model[2].parameters()), "lr": 0.02}]


@needs_package
@pytest.mark.parametrize("name", NAMES)
def test_groups_without_gradients_advance_as_the_packages(name):
    runs = []
    for cls in (package_class(name), OURS[name]):
        model = _model()
        opt = cls(_groups(model), **HYPER[name])
        opt.train()
        _train(model, opt, 40, seed=1, frozen=range(0, 40, 3))
        opt.eval()
        runs.append((model, opt))
    (ref, ref_opt), (ours, opt) = runs
    for a, b in zip(ours.parameters(), ref.parameters()):
        assert rel_err(a.detach(), b.detach()) <= 1e-11
    for g, h in zip(opt.param_groups, ref_opt.param_groups):
        for key in ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode"):
            assert g[key] == pytest.approx(h[key], rel=1e-12, abs=0), key


def _save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@needs_package
@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("direction", ["package->fastopt", "fastopt->package"])
def test_state_dicts_load_into_each_other(name, direction):
    """40 steps with one, saved in eval mode (as the package advises), 60 more with the other
    after train(): the result is the uninterrupted package run's, train point and eval point."""
    ref = _model()
    ref_opt = package_class(name)(_groups(ref), **HYPER[name])
    ref_opt.train()
    _train(ref, ref_opt, 40, seed=2)
    _train(ref, ref_opt, 60, seed=3)
    y_ref = [p.detach().clone() for p in ref.parameters()]
    ref_opt.eval()

    first, second = (package_class(name), OURS[name]) if direction == "package->fastopt" \
        else (OURS[name], package_class(name))
    model = _model()
    opt1 = first(_groups(model), **HYPER[name])
    opt1.train()
    _train(model, opt1, 40, seed=2)
    opt1.eval()
    sd = _save_load(opt1.state_dict())
    opt2 = second(_groups(model), **HYPER[name])
    opt2.load_state_dict(sd)
    assert [g["train_mode"] for g in opt2.param_groups] == [False, False]
    assert [g["k"] for g in opt2.param_groups] == [40, 40]
    opt2.train()
    _train(model, opt2, 60, seed=3)
    for a, b in zip(model.parameters(), y_ref):
        assert rel_err(a.detach(), b) <= 1e-11
    opt2.eval()
    for a, b in zip(model.parameters(), ref.parameters()):
        assert rel_err(a.detach(), b.detach()) <= 1e-11


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bfloat16", "float16"])
def test_16_bit_parameters_follow_the_float32_run_bit_for_bit(name, dtype):
    """Masters (state 'master'), z and the second moment of 16-bit parameters, through steps,
    eval() and train(), equal a float32 run's parameters and state; the 16-bit parameters are
    the masters rounded to nearest even."""
    runs = []
    for pdtype in (dtype, torch.float32):
        torch.manual_seed(5)
        w = [torch.nn.Parameter(torch.randn(s).to(dtype).to(pdtype)) for s in ((9, 4), (33,))]
        opt = OURS[name]([{"params": w[:1]}, {"params": w[1:], "lr": 0.02}], **HYPER[name])
        gen = torch.Generator().manual_seed(6)
        opt.train()
        for t in range(12):
            for p in w:
                p.grad = torch.randn(p.shape, generator=gen).to(dtype).to(pdtype)
            opt.step()
            if t == 5:
                opt.eval()
                opt.train()
        opt.eval()
        runs.append((w, opt))
    (w16, opt16), (w32, opt32) = runs
    for p16, p32 in zip(w16, w32):
        st16, st32 = opt16.state[p16], opt32.state[p32]
        assert torch.equal(st16["master"], p32.detach())
        assert torch.equal(p16.detach(), p32.detach().to(dtype))
        for key in SPECS[name].state:
            assert st16[key].dtype == torch.float32
            assert torch.equal(st16[key], st32[key]), key
    opt16.train()
    opt32.train()
    for p16, p32 in zip(w16, w32):
        assert torch.equal(opt16.state[p16]["master"], p32.detach())
