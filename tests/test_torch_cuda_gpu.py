"""fastopt.torch on real CUDA tensors against torch's own CUDA optimizers (needs a GPU).

Every fastopt.torch class, on CUDA parameters, trains the same float32/float64 model as
torch.optim's class of the same name in its fastest CUDA form (``fused=True`` where torch has
it, else ``foreach=True``), from the same weights on the same data: parameters and state agree
after 20 steps (float32 to 1e-5 relative, float64 to 1e-11), stay on the device in their
layout, and the step runs on torch's current stream (a side stream works without a
synchronization). Skipped, with the reason, where torch sees no CUDA device or CuPy is missing.
The same dispatch without a GPU: tests/test_torch_cuda.py. Timing: bench/bench_torch_adapter.py
--device cuda.
"""
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")

from cases import CASES  # noqa: E402
from fastopt import _table, cuda  # noqa: E402
from fastopt import torch as ft  # noqa: E402
from fastopt._specs import SPECS  # noqa: E402

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not (torch.cuda.is_available() and cuda.has_gpu()),
                       reason="needs a CUDA GPU seen by torch and by CuPy "
                       "(pip install 'fastopt[gpu]' and a CUDA build of torch); none here"),
]
ADAPTED = [name for name, opt in _table.OPTIMIZERS.items() if "torch" in opt.adapters]
PARAMS = [(name, i) for name in ADAPTED for i in range(len(CASES[name]))]
TOL = {torch.float32: 1e-5, torch.float64: 1e-11}


def torch_optimizer(name, params, hyper):
    """torch.optim's class in its fastest CUDA form: fused, else foreach."""
    cls = getattr(torch.optim, SPECS[name].class_name)
    try:
        return cls(params, **hyper, fused=True), "fused"
    except (RuntimeError, TypeError, ValueError):
        return cls(params, **hyper, foreach=True), "foreach"


def model(dtype, seed=0):
    torch.manual_seed(seed)
    m = torch.nn.Sequential(torch.nn.Conv2d(3, 8, 3), torch.nn.Tanh(), torch.nn.Flatten(),
                            torch.nn.Linear(8 * 6 * 6, 5)).to("cuda", dtype)
    return m.to(memory_format=torch.channels_last)


def train(m, opt, dtype, steps=20):
    g = torch.Generator(device="cuda").manual_seed(1)
    for _ in range(steps):
        x = torch.randn(4, 3, 8, 8, device="cuda", dtype=dtype, generator=g)
        opt.zero_grad()
        m(x.to(memory_format=torch.channels_last)).square().mean().backward()
        opt.step()


def rel(a, b):
    return float((a - b).abs().max()) / max(1.0, float(b.abs().max()))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,i", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
def test_matches_torch_cuda_optimizer(name, i, dtype):
    hyper = CASES[name][i]
    ours, theirs = model(dtype), model(dtype)
    opt = getattr(ft, SPECS[name].class_name)(ours.parameters(), **hyper)
    ref, _ = torch_optimizer(name, theirs.parameters(), hyper)
    train(ours, opt, dtype)
    train(theirs, ref, dtype)
    torch.cuda.synchronize()
    for p, q in zip(ours.parameters(), theirs.parameters()):
        assert p.is_cuda and p.stride() == q.stride()
        assert rel(p, q) < TOL[dtype]
        for key, value in ref.state[q].items():
            if key == "step" or not isinstance(value, torch.Tensor) or value.dim() == 0:
                continue
            mine = opt.state[p][key]
            assert mine.device == p.device and mine.stride() == p.stride(), key
            assert rel(mine, value) < 10 * TOL[dtype], key


def test_runs_on_torchs_current_stream():
    m = model(torch.float32)
    twin = model(torch.float32)
    opt = ft.Adam(m.parameters(), lr=1e-2)
    ref = ft.Adam(twin.parameters(), lr=1e-2)
    train(twin, ref, torch.float32, steps=3)
    side = torch.cuda.Stream()
    side.wait_stream(torch.cuda.current_stream())
    with torch.cuda.stream(side):
        train(m, opt, torch.float32, steps=3)
    torch.cuda.current_stream().wait_stream(side)
    torch.cuda.synchronize()
    for p, q in zip(m.parameters(), twin.parameters()):
        assert torch.equal(p, q)


def test_cpu_and_cuda_in_one_group_is_refused():
    with pytest.raises(ValueError, match="holds parameters on"):
        ft.Adam([torch.nn.Parameter(torch.zeros(2)),
                 torch.nn.Parameter(torch.zeros(2, device="cuda"))])


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_low_bit_state_on_cuda_matches_cpu_tensors(state_dtype):
    """fastopt.torch.Adam with low-bit state: CUDA tensors (fastopt._cuda_qstate) give the CPU
    tensors' parameters and codes bit for bit (the same rule and codecs)."""
    g = torch.Generator().manual_seed(0)
    cpu = [torch.nn.Parameter(torch.randn(s, generator=g)) for s in [(5000,), (64, 300), (17,)]]
    gpu = [torch.nn.Parameter(p.detach().cuda()) for p in cpu]
    a = ft.Adam(cpu, lr=1e-2, state_dtype=state_dtype)
    b = ft.Adam(gpu, lr=1e-2, state_dtype=state_dtype)
    for _ in range(5):
        for p, q in zip(cpu, gpu):
            p.grad = torch.randn(p.shape, generator=g)
            q.grad = p.grad.cuda()
        a.step()
        b.step()
    for p, q in zip(cpu, gpu):
        assert q.is_cuda
        torch.testing.assert_close(q.detach().cpu(), p.detach(), rtol=0, atol=0)
        for key, t in a.state[p].items():
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                torch.testing.assert_close(b.state[q][key].cpu(), t, rtol=0, atol=0)
