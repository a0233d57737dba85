"""fastopt.torch.Muon against torch.optim.Muon, its errors, and muon_param_groups."""
import copy
import pickle

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
import fastopt as fo  # noqa: E402
import fastopt.torch as ft  # noqa: E402


def _pair(shapes, dtype=torch.float32, seed=0, **kw):
    g = torch.Generator().manual_seed(seed)
    ours = [torch.nn.Parameter(torch.randn(*s, generator=g, dtype=dtype)) for s in shapes]
    theirs = [torch.nn.Parameter(p.detach().clone()) for p in ours]
    return ours, theirs, ft.Muon(ours, **kw), torch.optim.Muon(theirs, **kw)


def _steps(ours, theirs, a, b, n=4, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(n):
        for p, q in zip(ours, theirs):
            grad = torch.randn(p.shape, generator=g, dtype=p.dtype)
            p.grad, q.grad = grad.clone(), grad.clone()
        a.step()
        b.step()


@pytest.mark.parametrize("kw", [{}, dict(lr=0.02, nesterov=False),
                                dict(lr=0.02, adjust_lr_fn="match_rms_adamw", momentum=0.5)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_bit_identical_to_torch_on_small_matrices(kw, dtype):
    ours, theirs, a, b = _pair(((7, 3), (3, 7), (6, 6)), dtype, **kw)
    _steps(ours, theirs, a, b)
    for p, q in zip(ours, theirs):
        assert torch.equal(p, q)
        assert torch.equal(a.state[p]["momentum_buffer"], b.state[q]["momentum_buffer"])
    assert a.state_dict()["state"][0].keys() == {"momentum_buffer"}


def test_ns_float64_matches_numpy_class():
    ours = [torch.nn.Parameter(torch.randn(9, 4, dtype=torch.float64))]
    a = ft.Muon(ours, lr=0.05, ns_dtype="float64")
    ref = [p.detach().numpy().copy() for p in ours]
    opt = fo.Muon(ref, lr=0.05, ns_dtype="float64")
    g = torch.Generator().manual_seed(3)
    for _ in range(3):
        grad = torch.randn(9, 4, generator=g, dtype=torch.float64)
        ours[0].grad = grad
        a.step()
        opt.step([grad.numpy()])
    np.testing.assert_array_equal(ours[0].detach().numpy(), ref[0])


def test_scheduler_pickle_and_state_dict_cross_load():
    ours, theirs, a, b = _pair(((5, 8),), lr=0.05)
    sa = torch.optim.lr_scheduler.StepLR(a, step_size=2, gamma=0.5)
    sb = torch.optim.lr_scheduler.StepLR(b, step_size=2, gamma=0.5)
    for _ in range(3):
        _steps(ours, theirs, a, b, n=1)
        sa.step()
        sb.step()
    assert torch.equal(ours[0], theirs[0])
    again = pickle.loads(pickle.dumps(a))
    assert again.param_groups[0]["lr"] == a.param_groups[0]["lr"]
    b.load_state_dict(copy.deepcopy(a.state_dict()))
    a.load_state_dict(copy.deepcopy(b.state_dict()))
    _steps(ours, theirs, a, b, n=2)
    assert torch.equal(ours[0], theirs[0])


def test_errors_name_the_problem_and_change_nothing():
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        ft.Muon([torch.nn.Parameter(torch.zeros(3))])
    with pytest.raises(ValueError, match="Adjust learning rate function x is not supported"):
        ft.Muon([torch.nn.Parameter(torch.zeros(2, 2))], adjust_lr_fn="x")
    with pytest.raises(ValueError, match="Learning rate should be >= 0"):
        ft.Muon([torch.nn.Parameter(torch.zeros(2, 2))], lr=-1.0)
    with pytest.raises(ValueError, match="ns_dtype"):
        ft.Muon([torch.nn.Parameter(torch.zeros(2, 2))], ns_dtype="int8")
    good = torch.nn.Parameter(torch.randn(4, 3))
    half = torch.nn.Parameter(torch.randn(4, 3).bfloat16())
    opt = ft.Muon([{"params": [good]}, {"params": [half]}])
    good.grad, half.grad = torch.randn(4, 3), torch.randn(4, 3).bfloat16()
    before = good.detach().clone()
    with pytest.raises(TypeError, match=r"param_groups\[1\].*float32/float64"):
        opt.step()
    assert torch.equal(good, before) and not opt.state
    c = torch.randn(2, 3, dtype=torch.complex64, requires_grad=True)
    c.grad = torch.randn_like(c)
    with pytest.raises(RuntimeError, match="complex"):
        ft.Muon([c]).step()
    t = torch.nn.Parameter(torch.randn(3, 4).t())
    t.grad = torch.randn(4, 3)
    with pytest.raises(ValueError, match="contiguous"):
        ft.Muon([t]).step()


def test_muon_param_groups_split_a_transformer_like_model():
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.embed = torch.nn.Embedding(20, 8)
            self.fc1 = torch.nn.Linear(8, 16)
            self.norm = torch.nn.LayerNorm(16)
            self.fc2 = torch.nn.Linear(16, 8)
            self.lm_head = torch.nn.Linear(8, 20, bias=False)

    model = Block()
    hidden, rest = ft.muon_param_groups(model, muon={"lr": 0.02}, adamw={"lr": 3e-4})
    assert [p is q for p, q in zip(hidden["params"], (model.fc1.weight, model.fc2.weight))] \
        == [True, True] and len(hidden["params"]) == 2
    assert hidden["lr"] == 0.02 and rest["lr"] == 3e-4
    assert {id(p) for p in rest["params"]} == {
        id(p) for p in (model.embed.weight, model.fc1.bias, model.norm.weight, model.norm.bias,
                        model.fc2.bias, model.lm_head.weight)}
    ft.Muon([hidden])
    torch.optim.AdamW([rest])


def test_a_parameter_listed_twice_shares_one_buffer_as_in_torch():
    # torch warns about the duplicate and steps it twice with one momentum_buffer
    import warnings
    out = []
    for mod in (torch.optim, ft):
        g = torch.Generator().manual_seed(0)
        p = torch.nn.Parameter(torch.randn(4, 3, generator=g, dtype=torch.float64))
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            opt = mod.Muon([p, p], lr=0.02)
        for _ in range(3):
            p.grad = torch.randn(4, 3, generator=g, dtype=torch.float64)
            opt.step()
        out.append(p.detach().clone())
    # (bfloat16 iterations: at most a bfloat16 ulp of each of the six updates apart, see
    # tests/test_torch_optim_db.muon_bound; the same bits on most CPUs)
    assert torch.allclose(out[0], out[1], rtol=0, atol=6 * 0.02 * 2 ** -8)
