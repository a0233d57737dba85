"""fastopt.torch.Adafactor: torch.optim.Adafactor with fastopt's kernel (its own tests beside
the optim_db harness of tests/test_torch_optim_db.py)."""
import pickle

import numpy as np
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
