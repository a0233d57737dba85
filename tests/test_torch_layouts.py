"""fastopt.torch on parameters, gradients and state in any memory layout.

Dense parameters in another order (channels_last, transposed, permuted) are updated in place
through their storage; parameters with gaps, and gradients or state in another order than their
parameter, go through a contiguous temporary. Results match torch.optim in float64 to 1e-10 and
every tensor keeps its layout.
"""
import copy

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
import fastopt.torch as ft  # noqa: E402
from fastopt import _torch_layout  # noqa: E402

TOL = 1e-10
CASES = [("SGD", dict(lr=0.05, momentum=0.9, weight_decay=1e-3)),
         ("Adam", dict(lr=1e-2, weight_decay=1e-3, amsgrad=True)),
         ("RMSprop", dict(lr=1e-3, momentum=0.5, centered=True))]


class Block(torch.nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn1 = torch.nn.BatchNorm2d(c)
        self.conv2 = torch.nn.Conv2d(c, c, 3, padding=1, bias=False)
        self.bn2 = torch.nn.BatchNorm2d(c)

    def forward(self, x):
        y = torch.relu(self.bn1(self.conv1(x)))
        return torch.relu(x + self.bn2(self.conv2(y)))


def resnet(seed=0):
    torch.manual_seed(seed)
    return torch.nn.Sequential(
        torch.nn.Conv2d(3, 8, 3, padding=1, bias=False), torch.nn.BatchNorm2d(8), torch.nn.ReLU(),
        Block(8), torch.nn.Conv2d(8, 6, 1), Block(6),
        torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten(), torch.nn.Linear(6, 4),
    ).double().to(memory_format=torch.channels_last)


def train(model, opt, steps, seed=1):
    g = torch.Generator().manual_seed(seed)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, generator=g, dtype=torch.float64)
        x = x.to(memory_format=torch.channels_last)
        y = torch.randint(0, 4, (4,), generator=g)
        opt.zero_grad()
        torch.nn.functional.cross_entropy(model(x), y).backward()
        opt.step()


def max_diff(a, b):
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


def same_layout(a, b):
    """Equal strides, but for dimensions of size 1 (where a stride means nothing)."""
    return a.shape == b.shape and all(x == y for x, y, n in zip(a.stride(), b.stride(), a.shape)
                                      if n != 1)


def channels_last(model):
    return [p.is_contiguous(memory_format=torch.channels_last)
            for p in model.parameters() if p.dim() == 4]


@pytest.mark.parametrize("name,hyper", CASES, ids=[c[0] for c in CASES])
def test_channels_last_resnet_matches_torch_in_place(name, hyper):
    ref, ours = resnet(), resnet()
    assert not all(p.is_contiguous() for p in ours.parameters())     # the case under test
    opt_ref = getattr(torch.optim, name)(ref.parameters(), **hyper)
    opt = getattr(ft, name)(ours.parameters(), **hyper)
    ptrs = [p.data_ptr() for p in ours.parameters()]
    train(ref, opt_ref, 8)
    train(ours, opt, 8)
    assert max_diff(ours, ref) < TOL
    assert all(channels_last(ours)) and len(channels_last(ours)) == 6
    assert [p.data_ptr() for p in ours.parameters()] == ptrs
    for p, q in zip(ours.parameters(), ref.parameters()):
        for key, value in opt_ref.state[q].items():
            mine = opt.state[p][key]
            assert same_layout(mine, value), key
            assert float((mine - value).abs().max()) < TOL, key
    # dense channels_last tensors are planned through their storage, nothing is staged
    entries = [e for rec in opt._fo_records.values() for e in rec.entries.values()]
    assert entries and all(not lay.staged and "grad" not in lay.temps
                           for e in entries for lay in e.layouts)
    # a checkpoint goes back and forth with torch.optim and training continues alike
    opt2 = getattr(ft, name)(ours.parameters(), **hyper)
    opt2.load_state_dict(copy.deepcopy(opt_ref.state_dict()))
    opt_ref2 = getattr(torch.optim, name)(ref.parameters(), **hyper)
    opt_ref2.load_state_dict(copy.deepcopy(opt_ref.state_dict()))
    for model in (ours, ref):
        with torch.no_grad():
            for p, q in zip(ours.parameters(), ref.parameters()):
                p.copy_(q)
    train(ref, opt_ref2, 4, seed=5)
    train(ours, opt2, 4, seed=5)
    assert max_diff(ours, ref) < TOL


def strided_params(seed=0):
    """A transposed, a permuted, a sliced (gaps) and a contiguous parameter."""
    g = torch.Generator().manual_seed(seed)
    base = [torch.randn(5, 3, dtype=torch.float64, generator=g).t(),
            torch.randn(2, 3, 4, dtype=torch.float64, generator=g).permute(2, 0, 1),
            torch.randn(6, 4, dtype=torch.float64, generator=g)[::2, 1:3],
            torch.randn(7, dtype=torch.float64, generator=g)]
    return [torch.nn.Parameter(b) for b in base]


def loss(params, t):
    return sum(((p * (i + 1 + 0.1 * t)) ** 2).sum() + p.sum() for i, p in enumerate(params))


@pytest.mark.parametrize("name,hyper", CASES, ids=[c[0] for c in CASES])
def test_transposed_permuted_and_sliced_params_match_torch(name, hyper):
    ref, ours = strided_params(), strided_params()
    strides = [p.stride() for p in ours]
    opt_ref = getattr(torch.optim, name)(ref, **hyper)
    opt = getattr(ft, name)(ours, **hyper)
    for t in range(10):
        for params, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad()
            loss(params, t).backward()
            if t % 3 == 2:                          # a gradient in another layout
                params[0].grad = params[0].grad.contiguous()
            o.step()
        assert max(float((p - q).detach().abs().max()) for p, q in zip(ours, ref)) < TOL
    assert [p.stride() for p in ours] == strides
    layouts = [lay for rec in opt._fo_records.values() for e in rec.entries.values()
               for lay in e.layouts]
    assert any("param" in lay.staged for lay in layouts)          # the sliced one
    assert any("grad" in lay.temps for lay in layouts)            # the re-laid gradient


@pytest.mark.parametrize("name,hyper", CASES, ids=[c[0] for c in CASES])
def test_state_in_another_layout_than_its_param_is_staged_and_kept(name, hyper):
    ref, ours = strided_params(), strided_params()
    opt_ref = getattr(torch.optim, name)(ref, **hyper)
    opt = getattr(ft, name)(ours, **hyper)
    for params, o in ((ref, opt_ref), (ours, opt)):
        o.zero_grad()
        loss(params, 0).backward()
        o.step()
    sd = copy.deepcopy(opt.state_dict())
    for st in sd["state"].values():                # contiguous state for strided params
        for key, value in st.items():
            if key != "step" and isinstance(value, torch.Tensor):
                st[key] = value.contiguous()
    opt.load_state_dict(sd)
    held = {key: value for key, value in opt.state[ours[0]].items() if key != "step"}
    for t in range(1, 6):
        for params, o in ((ref, opt_ref), (ours, opt)):
            o.zero_grad()
            loss(params, t).backward()
            o.step()
    assert max(float((p - q).detach().abs().max()) for p, q in zip(ours, ref)) < TOL
    for key, value in held.items():               # the same tensors, updated, layout kept
        assert opt.state[ours[0]][key] is value and value.is_contiguous()
        assert float((value - opt_ref.state[ref[0]][key]).abs().max()) < TOL


def test_temporaries_are_made_once_not_per_step():
    params = strided_params()
    opt = ft.Adam(params, lr=0.01)
    for t in range(4):
        opt.zero_grad()
        loss(params, t).backward()
        params[0].grad = params[0].grad.contiguous()
        opt.step()
        temps = [(k, v.data_ptr()) for rec in opt._fo_records.values()
                 for e in rec.entries.values() for lay in e.layouts for k, v in lay.temps.items()]
        if t == 1:
            first = temps
    assert temps == first and len(temps) == 2          # the sliced param, the re-laid grad


def test_dense_strides():
    x = torch.zeros(2, 3, 4, 5)
    assert _torch_layout.dense_strides(x) == x.stride()
    assert _torch_layout.dense_strides(x.permute(3, 1, 0, 2)) is not None
    assert _torch_layout.dense_strides(x.to(memory_format=torch.channels_last)) is not None
    assert _torch_layout.dense_strides(x[:, :2]) is None
    assert _torch_layout.dense_strides(x[..., ::2]) is None
    assert _torch_layout.dense_strides(torch.zeros(1, 3).expand(4, 3)) is None
    assert _torch_layout.overlaps(torch.zeros(1, 3).expand(4, 3))
    assert not _torch_layout.overlaps(x[:, :2])


def test_param_whose_strides_change_under_the_same_memory_is_replanned():
    w = torch.nn.Parameter(torch.arange(16.0, dtype=torch.float64).reshape(4, 4))
    ref = torch.nn.Parameter(w.detach().clone())
    opt, opt_ref = ft.SGD([w], lr=0.1), torch.optim.SGD([ref], lr=0.1)
    g = torch.arange(16.0, dtype=torch.float64).reshape(4, 4) ** 2
    for t in range(3):
        if t == 1:                                  # same memory, transposed view
            w.data, ref.data = w.data.t(), ref.data.t()
        w.grad, ref.grad = g.clone(), g.clone()
        opt.step()
        opt_ref.step()
    assert torch.equal(w.detach(), ref.detach())
