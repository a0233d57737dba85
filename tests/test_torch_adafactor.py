"""fastopt.torch.Adafactor: torch.optim.Adafactor with fastopt's kernel (its own tests beside
the optim_db harness of tests/test_torch_optim_db.py)."""
import pickle

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
import fastopt.torch as ft  # noqa: E402


def run(cls, params, grads, **kw):
    opt = cls(params, **kw)
    for step in grads:
        for p, g in zip(params, step):
            p.grad = g.clone()
        opt.step()
    return opt


def problem(dtype=torch.float64, seed=0, shapes=((6, 5), (5,), (2, 3, 4), ())):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in shapes]
    grads = [[torch.randn(s, generator=g, dtype=dtype) for s in shapes] for _ in range(4)]
    return params, grads


@pytest.mark.parametrize("kw", [{}, {"lr": 0.3, "weight_decay": 0.1, "maximize": True},
                                {"eps": (1e-3, 1e-2), "d": 1.5, "foreach": True}])
def test_matches_torch_and_keeps_its_state(kw):
    params, grads = problem()
    mine = [p.clone() for p in params]
    ref = run(torch.optim.Adafactor, params, grads, **kw)
    opt = run(ft.Adafactor, mine, grads, **kw)
    assert isinstance(opt, torch.optim.Adafactor)
    for p, q in zip(mine, params):
        torch.testing.assert_close(p, q, rtol=1e-12, atol=1e-12)
        assert opt.state[p].keys() == ref.state[q].keys()
        for k, v in ref.state[q].items():
            torch.testing.assert_close(opt.state[p][k], v, rtol=1e-12, atol=1e-12)


def test_non_contiguous_parameter_goes_through_a_copy():
    base = torch.randn(5, 6, dtype=torch.float64)
    p_ref, p = base.t().clone(), base.clone().t()           # the same values, p transposed
    assert not p.is_contiguous()
    g = torch.randn(6, 5, dtype=torch.float64)
    run(torch.optim.Adafactor, [p_ref], [[g]])
    run(ft.Adafactor, [p], [[g]])
    torch.testing.assert_close(p, p_ref, rtol=1e-12, atol=1e-12)


def test_unsupported_dtype_raises_before_any_write():
    w, h = torch.ones(2, 3), torch.ones(3, dtype=torch.float16)
    opt = ft.Adafactor([w, h])
    w.grad, h.grad = torch.ones(2, 3), torch.ones(3, dtype=torch.float16)
    with pytest.raises(TypeError, match="float16"):
        opt.step()
    assert torch.all(w == 1) and float(opt.state[w]["step"]) == 0.0


def test_tensor_lr_pickle_and_state_dict_cross_load():
    params, grads = problem(torch.float32)
    mine = [p.clone() for p in params]
    ref = run(torch.optim.Adafactor, params, grads[:2], lr=torch.tensor(0.05))
    opt = ft.Adafactor(mine, lr=torch.tensor(0.05))
    opt.load_state_dict(ref.state_dict())
    for p, q in zip(mine, params):
        p.copy_(q)
    opt = pickle.loads(pickle.dumps(opt))
    mine = opt.param_groups[0]["params"]
    for step in grads[2:]:
        for p, q, g in zip(mine, params, step):
            p.grad, q.grad = g.clone(), g.clone()
        opt.step()
        ref.step()
    for p, q in zip(mine, params):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6)


def test_an_expanded_gradient_is_read_as_torch_reads_it():
    # a gradient with zero strides (expand) is only read: accepted, as torch.optim.Adafactor
    out = []
    for cls in (torch.optim.Adafactor, ft.Adafactor):
        p = torch.ones(6, 4, dtype=torch.float64)
        opt = cls([p], lr=0.01)
        for _ in range(3):
            p.grad = torch.randn(1, 4, generator=torch.Generator().manual_seed(7),
                                 dtype=torch.float64).expand(6, 4)
            opt.step()
        out.append(p.clone())
    assert torch.allclose(out[0], out[1], rtol=1e-12, atol=0)


def test_a_bad_hyperparameter_in_a_later_group_changes_nothing():
    g = torch.Generator().manual_seed(1)
    a = torch.randn(4, 3, generator=g, dtype=torch.float64)
    b = torch.randn(4, 3, generator=g, dtype=torch.float64)
    opt = ft.Adafactor([{"params": [a]}, {"params": [b]}])
    a.grad, b.grad = torch.randn(4, 3, generator=g, dtype=torch.float64), \
        torch.randn(4, 3, generator=g, dtype=torch.float64)
    opt.step()
    before = ([a.clone(), b.clone()],
              {id(p): {k: v.clone() for k, v in opt.state[p].items()} for p in (a, b)})
    for key, value in (("lr", "oops"), ("beta2_decay", 0.5), ("eps", (None, -1.0)),
                       ("d", 0.5), ("weight_decay", float("nan"))):
        saved = opt.param_groups[1][key]
        opt.param_groups[1][key] = value
        with pytest.raises((TypeError, ValueError), match=r"param_groups\[1\]"):
            opt.step()
        opt.param_groups[1][key] = saved
        assert torch.equal(a, before[0][0]) and torch.equal(b, before[0][1])
        for p in (a, b):
            for k, v in before[1][id(p)].items():
                assert torch.equal(opt.state[p][k], v), (key, k)


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("lr", [0.01, 2.0])     # 2.0: 1/sqrt(t) is the smaller, rho a float
def test_a_tensor_lr_gives_torchs_numbers_on_float64_parameters(lr, lr_dtype):
    # torch computes rho = min(lr, 1/sqrt(t)), alpha = max(eps2, rms) * rho, -alpha / denom
    # and 1 - lr * weight_decay as 0-d tensor arithmetic in the lr's dtype; fastopt.torch too
    params, grads = problem()
    kw = dict(lr=torch.tensor(lr, dtype=lr_dtype), weight_decay=0.1)
    ours = [p.clone() for p in params]
    run(torch.optim.Adafactor, params, grads, **kw)
    run(ft.Adafactor, ours, grads, **kw)
    for p, q in zip(ours, params):
        torch.testing.assert_close(p, q, rtol=1e-14, atol=1e-15)
