"""fastopt.torch on bfloat16 and float16 parameters: float32 master copies in the state, 16-bit
updates without them, GradScaler's protocol for fused optimizers, state_dict round trips, and
the errors. The reference is fastopt.MixedPrecision on NumPy views of the same tensors (the
same kernels), so parameters must agree bit for bit."""
import copy
import io

import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt as fo  # noqa: E402
import fastopt.torch as ft  # noqa: E402

LOW = [torch.bfloat16, torch.float16]
IDS = ["bfloat16", "float16"]


def as_numpy(t):
    """A NumPy copy of a tensor (bfloat16 as ml_dtypes.bfloat16)."""
    t = t.detach()
    if t.dtype == torch.bfloat16:
        return t.view(torch.int16).numpy().view(ml_dtypes.bfloat16).copy()
    return t.numpy().copy()


def bits(t):
    return t.detach().view(torch.int16 if t.element_size() == 2 else torch.int32).clone()


def mlp(dtype, seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(6, 16), torch.nn.Tanh(),
                               torch.nn.Linear(16, 1)).to(dtype)


def data(dtype, n=64, seed=1):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 6, generator=g)
    y = torch.sin(x @ torch.randn(6, 1, generator=g))
    return x.to(dtype), y.to(dtype)


def loss_of(model, x, y):
    return ((model(x).float() - y.float()) ** 2).mean()


def backward(model, x, y, scale=1.0):
    for p in model.parameters():
        p.grad = None
    (loss_of(model, x, y) * scale).backward()


def train(model, opt, steps, dtype):
    x, y = data(dtype)
    for _ in range(steps):
        backward(model, x, y)
        opt.step()
    with torch.no_grad():
        return float(loss_of(model, x, y))


# --------------------------------------------------------------------- master weights
def test_bf16_mlp_trains_at_least_as_well_as_torch_adamw():
    steps, kw = 150, dict(lr=1e-3, weight_decay=0.01)
    ours = mlp(torch.bfloat16)
    theirs = mlp(torch.bfloat16)
    ours_loss = train(ours, ft.AdamW(ours.parameters(), master_weights=True, **kw), steps,
                      torch.bfloat16)
    theirs_loss = train(theirs, torch.optim.AdamW(theirs.parameters(), **kw), steps,
                        torch.bfloat16)
    x, y = data(torch.bfloat16)
    with torch.no_grad():
        start = float(loss_of(mlp(torch.bfloat16), x, y))
    assert ours_loss < start
    assert ours_loss <= theirs_loss


def mirror(cls, params, **kw):
    """(MixedPrecision of fastopt class `cls` over NumPy copies of `params` (a list or param
    groups), the copies in order)."""
    if isinstance(params[0], dict):
        groups = [{**g, "params": [as_numpy(p) for p in g["params"]]} for g in params]
        return fo.MixedPrecision(cls, groups, **kw), [a for g in groups for a in g["params"]]
    arrays = [as_numpy(p) for p in params]
    return fo.MixedPrecision(cls, arrays, **kw), arrays


def lockstep(model, opt, ref, steps, dtype, check_masters=True):
    """Step `opt` (fastopt.torch) and `ref` ((MixedPrecision, its arrays) of `mirror`) with
    the same gradients; every parameter must agree bit for bit."""
    ref, arrays = ref
    x, y = data(dtype)
    params = list(model.parameters())
    for _ in range(steps):
        backward(model, x, y)
        grads = [as_numpy(p.grad) for p in params]
        opt.step()
        assert ref.step(grads)
        for p, q in zip(params, arrays):
            np.testing.assert_array_equal(as_numpy(p).view(np.uint8), q.view(np.uint8))
    if check_masters:
        for p, m in zip(params, ref.master_params):
            if p.dtype in LOW:
                assert opt.state[p]["master"].dtype == torch.float32
                np.testing.assert_array_equal(opt.state[p]["master"].numpy(), m)
            else:
                assert "master" not in opt.state[p]


@pytest.mark.parametrize("dtype", LOW, ids=IDS)
def test_master_weights_match_mixed_precision_bit_for_bit(dtype):
    model = mlp(dtype)
    kw = dict(lr=3e-3, betas=(0.9, 0.99), weight_decay=0.05)
    opt = ft.AdamW(model.parameters(), **kw)
    ref = mirror(fo.AdamW, list(model.parameters()), **kw)
    lockstep(model, opt, ref, 6, dtype)
    for p in model.parameters():
        st = opt.state[p]
        assert {k: v.dtype for k, v in st.items() if k != "step"} == {
            "exp_avg": torch.float32, "exp_avg_sq": torch.float32, "master": torch.float32}


# the table's adapters (Muon, SparseAdam, Adafactor, LBFGS have their own, without a 16-bit path)
@pytest.mark.parametrize("cls", [n for n in ft.__all__ if n not in ("Optimizer", "AdamW", *ft._ALIASES)
                                 and isinstance(getattr(ft, n), type)
                                 and issubclass(getattr(ft, n), ft.Optimizer)])
def test_every_optimizer_matches_mixed_precision(cls):
    model = mlp(torch.bfloat16)
    kw = {"SGD": dict(lr=0.05, momentum=0.9)}.get(cls, {})      # the class defaults
    opt = getattr(ft, cls)(model.parameters(), **kw)
    ref = mirror(getattr(fo, cls), list(model.parameters()), **kw)
    modes = callable(getattr(opt, "train", None))      # Schedule-Free: train(), then eval()
    if modes:
        opt.train()
    lockstep(model, opt, ref, 4, torch.bfloat16)
    if modes:
        # the move is torch's lerp_ here (as in schedulefree; it may fuse a multiply-add) and
        # NumPy's there: the masters agree to the rounding of a float32 lerp, and the 16-bit
        # parameters to a 16-bit rounding of theirs
        opt.eval()
        ref[0].eval()
        params = list(model.parameters())
        for i, (p, q, m) in enumerate(zip(params, ref[1], ref[0].master_params)):
            mine = opt.state[p]["master"].numpy()
            z = ref[0].state[i]["z"]
            assert np.all(np.abs(mine - m) <= 2.0 ** -22 * (np.abs(m) + np.abs(z)))
            np.testing.assert_allclose(as_numpy(p).astype(np.float32), q.astype(np.float32),
                                       rtol=2.0 ** -7, atol=0)


def test_16_and_32_bit_parameters_share_a_group():
    model = mlp(torch.bfloat16)
    model[2].float()                          # the last layer in float32
    model[0].bias.data = model[0].bias.data.half()
    x, y = data(torch.float32)
    kw = dict(lr=1e-2)
    opt = ft.Adam(model.parameters(), **kw)
    ref, arrays = mirror(fo.Adam, list(model.parameters()), **kw)
    params = list(model.parameters())
    for _ in range(5):
        for p in params:
            p.grad = None
        h = torch.tanh(x.bfloat16() @ model[0].weight.t() + model[0].bias.bfloat16())
        ((model[2](h.float()) - y) ** 2).mean().backward()
        grads = [as_numpy(p.grad) for p in params]
        opt.step()
        ref.step(grads)
        for p, q in zip(params, arrays):
            np.testing.assert_array_equal(as_numpy(p).view(np.uint8), q.view(np.uint8))
    assert [p.dtype for p in params] == [torch.bfloat16, torch.float16, torch.float32,
                                         torch.float32]
    assert "master" in opt.state[params[0]] and "master" not in opt.state[params[2]]
    assert opt.state[params[2]]["exp_avg"].dtype == torch.float32


def test_transposed_bf16_parameter_keeps_its_layout_and_values():
    torch.manual_seed(3)
    base = torch.randn(5, 7).bfloat16()
    a = torch.nn.Parameter(base.clone())
    b = torch.nn.Parameter(base.t().contiguous().t())     # same values, column-major
    oa, ob = ft.Adam([a], lr=1e-2), ft.Adam([b], lr=1e-2)
    for i in range(4):
        g = torch.randn(5, 7).bfloat16()
        a.grad, b.grad = g.clone(), g.t().contiguous().t()
        oa.step()
        ob.step()
        assert torch.equal(bits(a), bits(b))
    assert b.stride() == (1, 5)
    assert torch.equal(ob.state[b]["master"], oa.state[a]["master"])


# ------------------------------------------------------------------ without master weights
@pytest.mark.parametrize("dtype", LOW, ids=IDS)
def test_no_master_rounds_to_nearest_even_like_mixed_precision(dtype):
    model = mlp(dtype)
    opt = ft.Adam(model.parameters(), lr=1e-2, master_weights=False)
    ref = mirror(fo.Adam, list(model.parameters()), lr=1e-2,
                            master_weights=False)
    lockstep(model, opt, ref, 5, dtype, check_masters=False)
    assert all("master" not in opt.state[p] for p in model.parameters())


def test_stochastic_rounding_matches_mixed_precision_and_its_seed():
    model = mlp(torch.bfloat16)
    params = list(model.parameters())
    groups = [{"params": params[:2]}, {"params": params[2:]}]
    kw = dict(lr=1e-3, master_weights=False, rounding="stochastic", seed=1234)
    opt = ft.AdamW(groups, **kw)
    ref = mirror(fo.AdamW, groups, **kw)
    lockstep(model, opt, ref, 5, torch.bfloat16, check_masters=False)
    other = mlp(torch.bfloat16)
    train(other, ft.AdamW(other.parameters(), **{**kw, "seed": 99}), 5, torch.bfloat16)
    assert any(not torch.equal(bits(p), bits(q))
               for p, q in zip(model.parameters(), other.parameters()))


def test_stochastic_rounding_without_step_counts_changes_noise_every_step():
    p = torch.nn.Parameter(torch.ones(4096, dtype=torch.bfloat16))
    opt = ft.SGD([p], lr=1.0, master_weights=False, rounding="stochastic")
    ref, arrays = mirror(fo.SGD, [p], lr=1.0, master_weights=False, rounding="stochastic")
    g = torch.full((4096,), 1e-3, dtype=torch.bfloat16)
    for _ in range(3):
        p.grad = g.clone()
        opt.step()
        ref.step([as_numpy(g)])
        np.testing.assert_array_equal(as_numpy(p).view(np.uint16), arrays[0].view(np.uint16))
    assert 0.99 < float(p.detach().float().mean()) < 0.9995     # E[p] = 1 - 3e-3


@pytest.mark.parametrize("name", ["SGD", "ScheduleFreeSGD"])
def test_stochastic_rounding_without_step_counts_continues_after_a_state_dict(name):
    """The noise counter of an optimizer that counts no steps (the group's stochastic kernel
    calls) travels in the state_dict as param_groups[i]['noise_calls']: a run loaded from one
    draws the noise of the uninterrupted run (it drew the first step's noise again)."""
    kw = dict(lr=0.5, master_weights=False, rounding="stochastic", seed=7)
    gen = torch.Generator().manual_seed(2)
    start = torch.randn(4096, generator=gen).to(torch.bfloat16)
    grads = [(torch.randn(4096, generator=gen) * 1e-3).to(torch.bfloat16) for _ in range(6)]
    p = torch.nn.Parameter(start.clone())
    a = getattr(ft, name)([p], **kw)
    if hasattr(a, "train"):              # Schedule-Free starts in eval mode
        a.train()
    for g in grads[:3]:
        p.grad = g.clone()
        a.step()
    sd = copy.deepcopy(a.state_dict())
    assert sd["param_groups"][0]["noise_calls"] == 3
    q = torch.nn.Parameter(p.detach().clone())
    b = getattr(ft, name)([q], **kw)
    b.load_state_dict(sd)
    if hasattr(b, "train"):
        b.train()
    for g in grads[3:]:
        p.grad, q.grad = g.clone(), g.clone()
        a.step()
        b.step()
        assert torch.equal(bits(q), bits(p))
    bad = copy.deepcopy(sd)
    bad["param_groups"][0]["noise_calls"] = -1
    with pytest.raises(ValueError, match="noise_calls"):
        b.load_state_dict(bad)
    assert b.param_groups[0]["noise_calls"] == 6
    before = bits(q).clone()
    b.param_groups[0]["noise_calls"] = 2.5          # set by hand: refused at the step
    b._fo_records.clear()
    q.grad = grads[0].clone()
    with pytest.raises(ValueError, match="noise_calls"):
        b.step()
    assert torch.equal(bits(q), before)


def test_noise_calls_only_where_the_noise_needs_it():
    """Nearest rounding, and optimizers that count steps, leave the param groups alone."""
    g = torch.full((64,), 1e-3, dtype=torch.bfloat16)
    for cls, kw in ((ft.SGD, dict(rounding="nearest")), (ft.Adam, dict(rounding="stochastic"))):
        p = torch.nn.Parameter(torch.ones(64, dtype=torch.bfloat16))
        opt = cls([p], lr=0.1, master_weights=False, **kw)
        p.grad = g.clone()
        opt.step()
        assert "noise_calls" not in opt.param_groups[0]
        assert "noise_calls" not in opt.state_dict()["param_groups"][0]


# --------------------------------------------------------------------- GradScaler
def test_grad_scaler_unscales_in_the_kernel_and_skips_on_inf():
    model = mlp(torch.bfloat16)
    params = list(model.parameters())
    scale = 2.0 ** 12
    opt = ft.AdamW(params, lr=1e-2)
    ref, arrays = mirror(fo.AdamW, list(params), lr=1e-2,
                            loss_scale=scale)
    scaler = torch.amp.GradScaler("cpu", init_scale=scale)
    x, y = data(torch.bfloat16)
    for _ in range(3):
        for p in params:
            p.grad = None
        scaler.scale(loss_of(model, x, y)).backward()
        grads = [as_numpy(p.grad) for p in params]
        expected = [(p.grad.float() / scale).bfloat16() for p in params]
        scaler.step(opt)
        scaler.update()
        assert ref.step(grads)
        for p, q, e in zip(params, arrays, expected):
            np.testing.assert_array_equal(as_numpy(p).view(np.uint16), q.view(np.uint16))
            assert torch.equal(p.grad, e)          # left unscaled, as torch's fused kernels
        assert not hasattr(opt, "grad_scale") and not hasattr(opt, "found_inf")
    before = [bits(p) for p in params]
    state = {k: v.clone() for k, v in opt.state[params[0]].items()}
    for p in params:
        p.grad = None
    scaler.scale(loss_of(model, x, y)).backward()
    params[1].grad[0] = float("inf")
    scaler.step(opt)
    scaler.update()
    assert scaler.get_scale() == scale / 2
    assert all(torch.equal(bits(p), b) for p, b in zip(params, before))
    assert all(torch.equal(opt.state[params[0]][k], v) for k, v in state.items())


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64], ids=["float32", "float64"])
def test_grad_scale_argument_on_float_parameters(dtype):
    torch.manual_seed(0)
    w0 = torch.randn(3, 4, dtype=dtype)
    g = torch.randn(3, 4, dtype=dtype) * 256
    a, b = torch.nn.Parameter(w0.clone()), torch.nn.Parameter(w0.clone())
    oa, ob = ft.Adam([a], lr=0.1), ft.Adam([b], lr=0.1)
    a.grad = g.clone()
    b.grad = g / 256
    oa.step(grad_scale=torch.tensor(256.0), found_inf=torch.tensor(0.0))
    ob.step()
    assert torch.equal(a, b) and torch.equal(a.grad, b.grad)
    oa.step(grad_scale=torch.tensor(256.0), found_inf=torch.tensor(1.0))
    assert torch.equal(a, b) and oa.state[a]["step"] == 1


@pytest.mark.parametrize("bad,error", [(0.0, ValueError), (float("inf"), ValueError),
                                       (torch.ones(2), ValueError), ("2", TypeError)])
def test_bad_grad_scale_raises_and_changes_nothing(bad, error):
    p = torch.nn.Parameter(torch.ones(3, dtype=torch.bfloat16))
    opt = ft.Adam([p], lr=0.1)
    p.grad = torch.ones(3, dtype=torch.bfloat16)
    with pytest.raises(error, match="grad_scale"):
        opt.step(grad_scale=bad)
    assert torch.equal(p, torch.ones(3, dtype=torch.bfloat16)) and not opt.state[p]
    assert torch.equal(p.grad, torch.ones(3, dtype=torch.bfloat16))


# --------------------------------------------------------------------- state_dict
@pytest.mark.parametrize("master_weights", [True, False], ids=["master", "no-master"])
def test_state_dict_round_trip_keeps_masters(master_weights):
    model = mlp(torch.bfloat16)
    opt = ft.AdamW(model.parameters(), lr=1e-2, master_weights=master_weights)
    train(model, opt, 3, torch.bfloat16)
    buf = io.BytesIO()
    torch.save({"model": model.state_dict(), "opt": opt.state_dict()}, buf)
    buf.seek(0)
    saved = torch.load(buf)
    clone = mlp(torch.bfloat16, seed=5)
    clone.load_state_dict(saved["model"])
    opt2 = ft.AdamW(clone.parameters(), lr=1e-2, master_weights=master_weights)
    opt2.load_state_dict(saved["opt"])
    for p, q in zip(model.parameters(), clone.parameters()):
        assert opt2.state[q].keys() == opt.state[p].keys()
        assert ("master" in opt2.state[q]) == master_weights
        for k, v in opt.state[p].items():
            assert opt2.state[q][k].dtype == v.dtype
            assert torch.equal(opt2.state[q][k], v), k
    train(model, opt, 3, torch.bfloat16)
    train(clone, opt2, 3, torch.bfloat16)
    for p, q in zip(model.parameters(), clone.parameters()):
        assert torch.equal(bits(p), bits(q))
        if master_weights:
            assert torch.equal(opt.state[p]["master"], opt2.state[q]["master"])


def test_loading_sets_parameters_from_masters_and_reads_torch_checkpoints():
    model = mlp(torch.bfloat16)
    opt = ft.Adam(model.parameters(), lr=1e-2)
    train(model, opt, 2, torch.bfloat16)
    sd = opt.state_dict()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    opt.load_state_dict(sd)
    for p in model.parameters():
        assert torch.equal(p, opt.state[p]["master"].bfloat16())
    # a checkpoint of torch.optim.Adam (bfloat16 state, no master) loads as float32 state
    theirs = mlp(torch.bfloat16)
    t_opt = torch.optim.Adam(theirs.parameters(), lr=1e-2)
    train(theirs, t_opt, 2, torch.bfloat16)
    ours = ft.Adam(theirs.parameters(), lr=1e-2)
    ours.load_state_dict(t_opt.state_dict())
    p = next(theirs.parameters())
    assert ours.state[p]["exp_avg"].dtype == torch.float32
    assert torch.equal(ours.state[p]["exp_avg"], t_opt.state[p]["exp_avg"].float())
    value = p.detach().clone()
    train(theirs, ours, 1, torch.bfloat16)
    assert "master" in ours.state[p] and not torch.equal(p, value)


def test_state_dict_with_bad_master_raises_and_changes_nothing():
    params = [torch.nn.Parameter(torch.randn(4, 3).bfloat16()),
              torch.nn.Parameter(torch.randn(4, 3)), torch.nn.Parameter(torch.randn(1, 16))]
    opt = ft.Adam(params, lr=1e-2)
    for _ in range(2):
        for p in params:
            p.grad = torch.randn_like(p)
        opt.step()
    before = [bits(p) for p in params]
    master = opt.state[params[0]]["master"].clone()
    sd = opt.state_dict()
    bad = {**sd, "state": {**sd["state"], 0: {**sd["state"][0], "master": torch.zeros(2)}}}
    with pytest.raises(ValueError, match=r"\['master'\] has shape"):
        opt.load_state_dict(bad)
    bad = {**sd, "state": {**sd["state"], 2: {**sd["state"][2], "master": torch.zeros(1, 16)}}}
    with pytest.raises(ValueError, match=r"master copy but .*\[2\] is torch.float32"):
        opt.load_state_dict(bad)
    assert all(torch.equal(bits(p), b) for p, b in zip(params, before))
    assert torch.equal(opt.state[params[0]]["master"], master)


# ------------------------------------------------------------------------- errors
@pytest.mark.parametrize("kwargs,error,match", [
    (dict(rounding="stochastic"), ValueError, "needs master_weights=False"),
    (dict(rounding="up"), ValueError, "rounding must be one of"),
    (dict(master_weights=1), TypeError, "master_weights"),
    (dict(seed=-1), ValueError, "seed"),
    (dict(seed=1.5), TypeError, "seed"),
    (dict(seed=2 ** 64), ValueError, "seed"),
], ids=["stochastic-with-master", "rounding", "master_weights", "seed-negative", "seed-float",
        "seed-beyond-64-bits"])
def test_bad_options_raise(kwargs, error, match):
    with pytest.raises(error, match=match):
        ft.Adam(mlp(torch.bfloat16).parameters(), **kwargs)


def test_float16_with_stochastic_rounding_names_the_tensor():
    params = [torch.nn.Parameter(torch.ones(2, dtype=torch.bfloat16)),
              torch.nn.Parameter(torch.ones(2, dtype=torch.float16))]
    with pytest.raises(ValueError, match=r"param_groups\[0\]\['params'\]\[1\] is float16"):
        ft.Adam(params, master_weights=False, rounding="stochastic")
    opt = ft.Adam(params[:1], master_weights=False, rounding="stochastic")
    with pytest.raises(ValueError, match=r"param_groups\[1\]\['params'\]\[0\] is float16"):
        opt.add_param_group({"params": params[1:]})
    assert len(opt.param_groups) == 1


def test_state_of_wrong_dtype_names_the_tensor_and_changes_nothing():
    model = mlp(torch.bfloat16)
    opt = ft.Adam(model.parameters(), lr=1e-2)
    train(model, opt, 1, torch.bfloat16)
    params = list(model.parameters())
    before = [bits(p) for p in params]
    opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].bfloat16()
    saved = {k: v.clone() for k, v in opt.state[params[0]].items()}
    x, y = data(torch.bfloat16)
    backward(model, x, y)
    with pytest.raises(TypeError, match=r"state\[param_groups\[0\]\['params'\]\[1\]\]"
                                        r"\['exp_avg'\] has dtype torch.bfloat16, expected "
                                        r"torch.float32"):
        opt.step()
    assert all(torch.equal(bits(p), b) for p, b in zip(params, before))
    assert all(torch.equal(opt.state[params[0]][k], v) for k, v in saved.items())
    opt.state[params[1]]["exp_avg"] = opt.state[params[1]]["exp_avg"].float()
    opt.state[params[2]]["master"] = opt.state[params[2]]["master"].double()
    with pytest.raises(TypeError, match=r"\['params'\]\[2\]\]\['master'\] has dtype "
                                        r"torch.float64"):
        opt.step()
    assert all(torch.equal(bits(p), b) for p, b in zip(params, before))


@pytest.mark.parametrize("master_weights", [True, False], ids=["master", "no-master"])
def test_later_steps_reuse_the_plan(master_weights, monkeypatch):
    model = mlp(torch.bfloat16)
    opt = ft.Adam(model.parameters(), lr=1e-2, master_weights=master_weights)
    train(model, opt, 2, torch.bfloat16)
    (rec,) = opt._fo_records.values()
    (entry,) = rec.entries.values()
    assert entry.adopt == []

    def fail(*args):
        raise AssertionError("re-planned")
    monkeypatch.setattr(opt, "_fo_partition", fail)
    train(model, opt, 2, torch.bfloat16)
    assert list(rec.entries.values()) == [entry]
