"""fastopt.torch with low-bit state (``state_dtype="int8"|"bfloat16"``) on CUDA tensors,
without a GPU: the stand-in CuPy (tests/fake_cupy.py, whose low-bit kernel emulates each
quantization block with the CPU binding) and torch CUDA tensor (tests/fake_torch_cuda.py).

Checked: the state tensors are made on the parameters' device in the same layout as on the
CPU (bfloat16 tensors; uint8 codes with ``_absmax`` and ``_qmap``), the step launches
fastopt._cuda_qstate's kernel on CuPy views of them, on torch's current stream, and gives
the CPU tensors' parameters and codes bit for bit; state_dict moves between CPU and CUDA
optimizers; stochastic rounding (CPU only) is refused with nothing changed.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")

import fake_torch_cuda as fc  # noqa: E402
from fastopt import torch as ft  # noqa: E402

SHAPES = [(5000,), (40, 130), (300,)]      # int8: two tensors >= min_8bit_size, one below
CASES = [("Adam", dict(lr=1e-2)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
         ("RMSprop", dict(lr=1e-2, momentum=0.9)), ("Lion", dict(lr=1e-3)),
         ("SGD", dict(lr=1e-2, momentum=0.9))]


@pytest.fixture
def fake(monkeypatch):
    yield from fc.installed(monkeypatch)


def host(t):
    return t.detach().as_subclass(torch.Tensor)


def run(name, hyper, fmt, on_cuda, steps=3):
    rng = np.random.default_rng(1)
    params = [torch.nn.Parameter(torch.tensor(rng.standard_normal(s).astype(np.float32)))
              for s in SHAPES]
    if on_cuda:
        params = [fc.cuda(p) for p in params]
    opt = getattr(ft, name)(params, **hyper, state_dtype=fmt)
    grng = np.random.default_rng(2)
    for _ in range(steps):
        for p in params:
            g = torch.tensor(grng.standard_normal(p.shape).astype(np.float32))
            p.grad = fc.cuda(g) if on_cuda else g
        opt.step()
    return params, opt


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("name,hyper", CASES, ids=[c[0] for c in CASES])
def test_cuda_tensors_match_cpu_tensors(fake, name, hyper, fmt):
    cpu, a = run(name, hyper, fmt, False)
    gpu, b = run(name, hyper, fmt, True)
    assert any(launch[1] == "qstate" for launch in fake.log["launches"])
    assert set(fake.log["streams"]) == {fc.STREAM}
    for p, q in zip(cpu, gpu):
        assert isinstance(q, fc.CudaTensor)
        torch.testing.assert_close(host(q), p.detach(), rtol=0, atol=0)
        sa, sb = a.state[p], b.state[q]
        assert sorted(sa) == sorted(sb)
        for key, t in sa.items():
            u = sb[key]
            if isinstance(t, torch.Tensor) and t.dim() > 0:
                assert isinstance(u, fc.CudaTensor) and u.dtype == t.dtype, key
                torch.testing.assert_close(host(u), t, rtol=0, atol=0, msg=key)
    low = torch.uint8 if fmt == "int8" else torch.bfloat16
    assert any(getattr(t, "dtype", None) == low for t in b.state[gpu[0]].values())


def test_state_dict_moves_between_cpu_and_cuda(fake):
    ref, r = run("Adam", dict(lr=1e-2), "int8", False, steps=5)
    gpu, b = run("Adam", dict(lr=1e-2), "int8", True, steps=3)
    sd = b.state_dict()
    assert sd["state"][0]["exp_avg"].dtype == torch.uint8
    cpu = [torch.nn.Parameter(host(q).clone()) for q in gpu]
    a = ft.Adam(cpu, lr=1e-2, state_dtype="int8")
    a.load_state_dict({**sd, "state": {k: {n: host(v) if isinstance(v, torch.Tensor) else v
                                           for n, v in e.items()}
                                       for k, e in sd["state"].items()}})
    back = [fc.cuda(torch.nn.Parameter(p.detach().clone())) for p in cpu]
    e = ft.Adam(back, lr=1e-2, state_dtype="int8")
    e.load_state_dict({**sd, "state": {k: {n: fc.cuda(host(v)) if isinstance(v, torch.Tensor)
                                           and v.dim() > 0 else v for n, v in st.items()}
                                       for k, st in sd["state"].items()}})
    grng = np.random.default_rng(2)
    for _ in range(3):
        [grng.standard_normal(p.shape) for p in cpu]      # the first three steps' gradients
    for _ in range(2):
        for p, q in zip(cpu, back):
            g = torch.tensor(grng.standard_normal(p.shape).astype(np.float32))
            p.grad, q.grad = g, fc.cuda(g)
        a.step()
        e.step()
    for p, q, s in zip(ref, cpu, back):
        torch.testing.assert_close(q.detach(), p.detach(), rtol=0, atol=0)
        torch.testing.assert_close(host(s), p.detach(), rtol=0, atol=0)


def test_stochastic_rounding_is_refused_on_cuda(fake):
    p = fc.cuda(torch.nn.Parameter(torch.ones(5000)))
    opt = ft.Adam([p], lr=1e-2, state_dtype="bfloat16", rounding="stochastic")
    p.grad = fc.cuda(torch.ones(5000))
    with pytest.raises(ValueError, match="stochastic"):
        opt.step()
    torch.testing.assert_close(host(p), torch.ones(5000), rtol=0, atol=0)


def test_runs_when_another_gpu_is_current(fake):
    """CuPy refuses a stream of another device than the current one: the step makes the
    parameters' device current first."""
    cpu, a = run("Adam", dict(lr=1e-2), "int8", False)
    fake._current_device[0] = 1
    gpu, b = run("Adam", dict(lr=1e-2), "int8", True)
    assert fake._current_device[0] == 1
    for p, q in zip(cpu, gpu):
        torch.testing.assert_close(host(q), p.detach(), rtol=0, atol=0)
