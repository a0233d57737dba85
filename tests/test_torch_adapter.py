"""fastopt.torch: torch.optim optimizers running fastopt's kernels on CPU tensors.

Trajectories are compared with torch.optim (its default single-tensor CPU implementation) on a
small MLP trained for 150 steps, for every optimizer and every option case of tests/cases.py;
error measure per tensor: max|fastopt - torch| / max|torch|, bound 2e-5 (float32) and 1e-10
(float64). Cases with maximize=True ascend the negated loss, so that every run descends.
"""
import copy
import importlib
import io

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
import fastopt.torch as ft  # noqa: E402
from cases import CASES  # noqa: E402
from fastopt._specs import SPECS  # noqa: E402
from fastopt._table import OPTIMIZERS  # noqa: E402

TOL = {torch.float32: 2e-5, torch.float64: 1e-10}
N_STEPS = 150


def _reference(name):
    """The torch optimizer `name` reproduces (torch.optim's, or a package's such as
    lion_pytorch.Lion), or None where that package is not installed."""
    module, _, cls = SPECS[name].reference.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        return None


# the optimizers the table gives a torch adapter (Optimizer.adapters)
ADAPTED = [name for name, opt in OPTIMIZERS.items() if "torch" in opt.adapters]
TORCH = {name: _reference(name) for name in ADAPTED}
OURS = {name: getattr(ft, SPECS[name].class_name) for name in ADAPTED}
PARAMS = [(name, i) for name in ADAPTED for i in range(len(CASES[name]))]


def torch_class(name):
    """TORCH[name], or skip naming the package to install."""
    if TORCH[name] is None:
        package = SPECS[name].reference.partition(".")[0]
        pytest.skip(f"{package} is not installed (pip install {package.replace('_', '-')})")
    return TORCH[name]


def make_model(dtype=torch.float32, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(8, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 4)).to(dtype)


def data(dtype=torch.float32, n=N_STEPS):
    g = torch.Generator().manual_seed(1)
    return (torch.randn(n, 32, 8, generator=g, dtype=dtype),
            torch.randn(n, 32, 4, generator=g, dtype=dtype))


def loss_fn(model, x, y, hyper):
    loss = ((model(x) - y) ** 2).mean()
    return -loss if hyper.get("maximize", False) else loss


def train(model, opt, hyper, X, Y, start=0, stop=N_STEPS):
    if callable(getattr(opt, "train", None)):     # train/eval optimizers (Schedule-Free)
        opt.train()
    for t in range(start, stop):
        opt.zero_grad()
        loss_fn(model, X[t], Y[t], hyper).backward()
        opt.step()


def rel_err(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1e-30))


def worst(model_a, model_b):
    return max(rel_err(p, q) for p, q in zip(model_a.parameters(), model_b.parameters()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
@pytest.mark.parametrize("name,i", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
def test_trajectory_matches_torch_optim(name, i, dtype):
    hyper = CASES[name][i]
    X, Y = data(dtype)
    ref, ours = make_model(dtype), make_model(dtype)
    opt_ref = torch_class(name)(ref.parameters(), **hyper)
    opt = OURS[name](ours.parameters(), **hyper)
    train(ref, opt_ref, hyper, X, Y)
    train(ours, opt, hyper, X, Y)
    assert worst(ours, ref) < TOL[dtype]
    for p, q in zip(ref.parameters(), ours.parameters()):     # state agrees too
        for key, value in opt_ref.state[p].items():
            mine = opt.state[q][key]
            if key == "step":
                assert float(mine) == float(value)
            else:
                assert rel_err(mine, value) < 10 * TOL[dtype]


def test_groups_scheduler_and_params_without_grad_match_torch():
    """Two groups, a StepLR and a LambdaLR schedule, a layer frozen now and then (grad None)."""
    X, Y = data()
    hyper = dict(lr=0.02, weight_decay=0.01)

    def run(cls):
        model = make_model()
        body, head = list(model[0].parameters()), list(model[2].parameters())
        opt = cls([{"params": body}, {"params": head, "lr": 0.01}], **hyper)
        sched = torch.optim.lr_scheduler.StepLR(opt, step_size=40, gamma=0.5)
        for t in range(N_STEPS):
            opt.zero_grad(set_to_none=True)
            for p in head:
                p.requires_grad_(t % 3 != 0)        # head frozen every third step
            ((model(X[t]) - Y[t]) ** 2).mean().backward()
            opt.step()
            sched.step()
        return model, opt

    ref, opt_ref = run(torch.optim.Adam)
    ours, opt = run(ft.Adam)
    assert worst(ours, ref) < 2e-5
    assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt_ref.param_groups]
    steps = [float(opt.state[p]["step"]) for p in ours.parameters()]
    assert steps == [float(opt_ref.state[p]["step"]) for p in ref.parameters()]
    assert steps == [150, 150, 100, 100]


def test_lambda_lr_and_add_param_group_match_torch():
    X, Y = data()

    def run(cls):
        model = make_model()
        opt = cls(model[0].parameters(), lr=0.05, momentum=0.9)
        sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 1.0 / (1 + 0.05 * t))
        for t in range(N_STEPS):
            if t == 30:
                opt.add_param_group({"params": list(model[2].parameters()), "nesterov": True})
                sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda t: 0.99 ** t)
            opt.zero_grad()
            ((model(X[t]) - Y[t]) ** 2).mean().backward()
            opt.step()
            sched.step()
        return model

    assert worst(run(ft.SGD), run(torch.optim.SGD)) < 2e-5


def save_load(sd):
    buf = io.BytesIO()
    torch.save(sd, buf)
    buf.seek(0)
    return torch.load(buf)


@pytest.mark.parametrize("name,i", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
@pytest.mark.parametrize("direction", ["torch->fastopt", "fastopt->torch"])
def test_state_dicts_load_into_each_other(name, i, direction):
    """Train 60 steps with one, continue 90 with the other from its state_dict: the result
    matches 150 uninterrupted steps of torch.optim."""
    hyper = CASES[name][i]
    X, Y = data()
    ref = make_model()
    opt_ref = torch_class(name)(ref.parameters(), **hyper)
    train(ref, opt_ref, hyper, X, Y)

    first, second = (torch_class(name), OURS[name]) if direction == "torch->fastopt" \
        else (OURS[name], torch_class(name))
    model = make_model()
    opt1 = first(model.parameters(), **hyper)
    train(model, opt1, hyper, X, Y, 0, 60)
    sd = save_load(opt1.state_dict())
    opt2 = second(model.parameters(), **hyper)
    opt2.load_state_dict(sd)
    for p in model.parameters():
        st = opt2.state[p]
        if "step" in st:
            assert st["step"].dtype == torch.float32 and st["step"].dim() == 0
            assert float(st["step"]) == 60
    train(model, opt2, hyper, X, Y, 60, N_STEPS)
    assert worst(model, ref) < 2e-5


def test_state_dict_layout_is_torchs():
    model = make_model()
    X, Y = data(n=3)
    opt = ft.Adam(model.parameters(), amsgrad=True)
    train(model, opt, {}, X, Y, 0, 3)
    ref_model = make_model()
    opt_ref = torch.optim.Adam(ref_model.parameters(), amsgrad=True)
    train(ref_model, opt_ref, {}, X, Y, 0, 3)
    sd, sd_ref = opt.state_dict(), opt_ref.state_dict()
    assert sd["state"].keys() == sd_ref["state"].keys()
    for k in sd["state"]:
        assert sd["state"][k].keys() == sd_ref["state"][k].keys()
        for key, value in sd["state"][k].items():
            ref_value = sd_ref["state"][k][key]
            assert isinstance(value, torch.Tensor)
            assert value.dtype == ref_value.dtype and value.shape == ref_value.shape
    assert [g["params"] for g in sd["param_groups"]] == [g["params"] for g in sd_ref["param_groups"]]


def test_adagrad_state_exists_before_the_first_step_as_in_torch():
    model = make_model()
    opt = ft.Adagrad(model.parameters(), initial_accumulator_value=0.5)
    ref = torch.optim.Adagrad(make_model().parameters(), initial_accumulator_value=0.5)
    fresh = torch.optim.Adagrad(make_model().parameters(), initial_accumulator_value=0.5)
    fresh.load_state_dict(save_load(opt.state_dict()))      # loads before any step
    for p, q in zip(model.parameters(), ref.param_groups[0]["params"]):
        assert torch.equal(opt.state[p]["sum"], ref.state[q]["sum"])
        assert float(opt.state[p]["step"]) == 0


def test_updates_in_place_without_copies():
    model = make_model()
    X, Y = data(n=2)
    opt = ft.Adam(model.parameters(), lr=0.1)
    ptrs = [p.data_ptr() for p in model.parameters()]
    before = [p.detach().clone() for p in model.parameters()]
    train(model, opt, {}, X, Y, 0, 2)
    for p, ptr, b in zip(model.parameters(), ptrs, before):
        assert p.data_ptr() == ptr and not torch.equal(p.detach(), b)
    # the plan holds views of the tensors' memory: state tensors are the ones updated
    for p in model.parameters():
        plan_arrays = [a for e in opt._fo_records[id(opt.param_groups[0])].entries.values()
                       for a in e.plan.params]
        assert any(np.shares_memory(a, p.detach().numpy()) for a in plan_arrays)
        assert opt.state[p]["exp_avg"].abs().sum() > 0


def test_replacing_param_data_and_state_is_picked_up():
    X, Y = data(n=20)

    def run(cls):
        model = make_model()
        opt = cls(model.parameters(), lr=0.05)
        train(model, opt, {}, X, Y, 0, 10)
        w = model[0].weight
        w.data = w.data.clone() * 0.5                 # new storage
        opt.state[w]["exp_avg"] = opt.state[w]["exp_avg"].clone() * 2   # new state tensor
        train(model, opt, {}, X, Y, 10, 20)
        return model

    assert worst(run(ft.Adam), run(torch.optim.Adam)) < 2e-5


def test_closure_hooks_deepcopy():
    model = make_model()
    X, Y = data(n=1)
    opt = ft.RMSprop(model.parameters(), lr=0.01, momentum=0.5)
    calls = []
    opt.register_step_pre_hook(lambda o, a, k: calls.append("pre"))
    opt.register_step_post_hook(lambda o, a, k: calls.append("post"))

    def closure():
        opt.zero_grad()
        loss = ((model(X[0]) - Y[0]) ** 2).mean()
        loss.backward()
        return loss

    loss = opt.step(closure)
    assert isinstance(loss, torch.Tensor) and calls == ["pre", "post"]
    clone = copy.deepcopy(opt)
    assert float(clone.state_dict()["state"][0]["step"]) == 1
    assert clone.state_dict()["state"][0]["square_avg"].data_ptr() != \
        opt.state_dict()["state"][0]["square_avg"].data_ptr()


def test_tensor_lr_is_accepted():
    X, Y = data(n=30)
    hyper = dict(lr=torch.tensor(0.01))
    a, b = make_model(), make_model()
    train(a, ft.Adam(a.parameters(), **hyper), {}, X, Y, 0, 30)
    train(b, torch.optim.Adam(b.parameters(), **hyper), {}, X, Y, 0, 30)
    assert worst(a, b) < 2e-5


# --------------------------------------------------------------------------- bad input
def snapshot(model, opt):
    return ([p.detach().clone() for p in model.parameters()],
            {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in model.parameters()})


def assert_unchanged(model, opt, snap):
    params, state = snap
    for p, before in zip(model.parameters(), params):
        assert torch.equal(p.detach(), before)
    for p in model.parameters():
        assert opt.state[p].keys() == state[id(p)].keys()
        for k, v in state[id(p)].items():
            assert torch.equal(opt.state[p][k], v)


@pytest.mark.parametrize("make_param,error,match", [
    (lambda: torch.zeros(3, dtype=torch.int32), TypeError, "int32"),
    (lambda: torch.zeros(1).expand(3).requires_grad_(), ValueError, "share memory"),
    (lambda: torch.zeros(3, device="meta", requires_grad=True), TypeError, "CPU"),
    (lambda: torch.zeros(3, dtype=torch.complex64, requires_grad=True), TypeError, "complex64"),
], ids=["int32", "overlapping", "meta-device", "complex"])
def test_bad_params_are_rejected_at_construction(make_param, error, match):
    with pytest.raises(error, match=match):
        ft.Adam([torch.zeros(2, requires_grad=True), make_param()])


@pytest.mark.parametrize("bad_grad,error,match", [
    (lambda p: torch.zeros(p.shape).to_sparse(), TypeError, "sparse"),
], ids=["sparse"])
@pytest.mark.parametrize("first_step", [True, False], ids=["first-step", "later-step"])
def test_bad_grads_raise_and_change_nothing(bad_grad, error, match, first_step):
    model = make_model()
    X, Y = data(n=2)
    opt = ft.Adam([{"params": list(model[0].parameters())},
                   {"params": list(model[2].parameters()), "lr": 0.1}], lr=0.05)
    if not first_step:
        train(model, opt, {}, X, Y, 0, 1)
    snap = snapshot(model, opt)
    opt.zero_grad()
    ((model(X[1]) - Y[1]) ** 2).mean().backward()
    w = model[2].weight                                     # a parameter of the second group
    w.grad = bad_grad(w)
    with pytest.raises(error, match=match) as info:
        opt.step()
    assert "param_groups[1]['params'][0].grad" in str(info.value)
    assert_unchanged(model, opt, snap)


@pytest.mark.parametrize("kwargs,error,match", [
    (dict(lr=-1.0), ValueError, "learning rate"),
    (dict(betas=(0.9, 1.5)), ValueError, "betas"),
    (dict(fused=1), TypeError, "fused"),
    (dict(capturable=True), RuntimeError, "capturable"),
    (dict(differentiable=True), RuntimeError, "differentiable"),
    (dict(foreach=True, fused=True), RuntimeError, "cannot be `True` together"),
    (dict(lr=lambda t: 0.1), TypeError, "lr_scheduler"),
])
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        ft.Adam(make_model().parameters(), **kwargs)


def test_hyperparameter_broken_between_steps_raises_and_changes_nothing():
    model = make_model()
    X, Y = data(n=2)
    opt = ft.Adam([{"params": list(model[0].parameters())},
                   {"params": list(model[2].parameters())}], lr=0.05)
    train(model, opt, {}, X, Y, 0, 1)
    snap = snapshot(model, opt)
    opt.param_groups[1]["lr"] = float("nan")
    opt.zero_grad()
    ((model(X[1]) - Y[1]) ** 2).mean().backward()
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        opt.step()
    assert_unchanged(model, opt, snap)


def test_bad_state_dict_raises_and_changes_nothing():
    model = make_model()
    X, Y = data(n=2)
    opt = ft.Adam(model.parameters(), lr=0.05)
    train(model, opt, {}, X, Y, 0, 2)
    sd = save_load(opt.state_dict())
    snap = snapshot(model, opt)
    bad = copy.deepcopy(sd)
    bad["state"][0]["exp_avg"] = torch.zeros(5)
    with pytest.raises(ValueError, match="shape"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["eps"] = -1.0
    with pytest.raises(ValueError, match="eps"):
        opt.load_state_dict(bad)
    bad = copy.deepcopy(sd)
    bad["state"][1]["step"] = torch.tensor(float("nan"))
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(bad)
    assert_unchanged(model, opt, snap)


def test_step_counts_are_views_of_one_buffer_but_state_dicts_do_not_alias():
    model = make_model()
    X, Y = data(n=4)
    opt = ft.Adam(model.parameters())
    train(model, opt, {}, X, Y, 0, 2)
    sd = opt.state_dict()
    saved = copy.deepcopy(sd)
    other = ft.Adam(make_model().parameters())
    other.load_state_dict(sd)
    other_model = [p for g in other.param_groups for p in g["params"]]
    for p in other_model:
        p.grad = torch.zeros_like(p)
    other.step()                                  # must not advance `opt`'s counters
    assert [float(opt.state[p]["step"]) for p in model.parameters()] == [2.0] * 4
    assert [float(other.state[p]["step"]) for p in other_model] == [3.0] * 4
    assert float(saved["state"][0]["step"]) == 2.0


def test_docstring_examples():
    import doctest
    result = doctest.testmod(ft, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
