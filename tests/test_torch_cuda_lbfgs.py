"""fastopt.torch.LBFGS on CUDA tensors, without a GPU: the stand-in CuPy (tests/fake_cupy.py)
and torch CUDA tensor (tests/fake_torch_cuda.py).

Checked: CUDA parameters run the CuPy path (fastopt._lbfgs_cupy) over views of the tensors'
own memory, on torch's current stream; the iterates equal fastopt.torch.LBFGS on CPU tensors
to rounding (the device recursion's axpy is a multiply and an add where the CPU's loop uses
an fma); the state's tensors are on the device and view fastopt's buffers; state_dict moves
between CPU and CUDA optimizers; mixed devices are refused.
"""
import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")

import fake_cupy as fk  # noqa: E402
import fake_torch_cuda as fc  # noqa: E402
import lbfgs_cases as cases  # noqa: E402
from fastopt import torch as ft  # noqa: E402


@pytest.fixture
def fake(monkeypatch):
    yield from fc.installed(monkeypatch)


def host(t):
    return t.detach().as_subclass(torch.Tensor).numpy()


def setup(on_cuda, config):
    X, y = cases.data()
    prob = cases.problem(X, y)
    params = [torch.nn.Parameter(torch.from_numpy(p)) for p in cases.start(prob)]
    if on_cuda:
        params = [fc.cuda(p) for p in params]
    opt = ft.LBFGS(params, **config)

    def closure():
        loss, grads = cases.loss_and_grads(prob, [host(p) for p in params])
        for p, g in zip(params, grads):
            g = torch.from_numpy(g.copy())
            p.grad = fc.cuda(g) if on_cuda else g
        return torch.tensor(loss)
    return params, opt, closure


@pytest.mark.parametrize("config", ["default", "short_history_wolfe"])
def test_cuda_tensors_match_cpu_tensors(fake, config):
    config = cases.CONFIGS[config]
    cpu, a, ca = setup(False, config)
    gpu, b, cb = setup(True, config)
    for _ in range(cases.STEPS):
        la, lb = float(a.step(ca)), float(b.step(cb))
        assert abs(la - lb) <= 1e-9
    for p, q in zip(cpu, gpu):
        assert isinstance(q, fc.CudaTensor)
        np.testing.assert_allclose(host(q), host(p), rtol=0, atol=1e-9)
    st = b.state[gpu[0]]
    assert st["n_iter"] == a.state[cpu[0]]["n_iter"]
    for key in ("d", "prev_flat_grad"):
        assert isinstance(st[key], fc.CudaTensor)
    assert all(isinstance(v, fc.CudaTensor) for v in st["old_dirs"] + st["old_stps"])
    # the state's tensors view fastopt's device buffers (zero-copy)
    assert st["d"].data_ptr() == b._fo._ws.d.data.ptr
    assert any("dot" == op for op in fk.log["ops"])
    assert set(fk.log["op_streams"]) == {fc.STREAM}          # torch's current stream


def test_state_dict_moves_between_cpu_and_cuda(fake):
    config = dict(history_size=4, max_iter=5)
    ref, r, cr = setup(False, config)
    for _ in range(4):
        r.step(cr)
    gpu, b, cb = setup(True, config)
    for _ in range(2):
        b.step(cb)
    cpu, a, ca = setup(False, config)
    with torch.no_grad():
        for p, q in zip(cpu, gpu):
            p.copy_(torch.from_numpy(host(q)))
    a.load_state_dict(b.state_dict())
    back, e, ce = setup(True, config)
    with torch.no_grad():
        for p, q in zip(back, cpu):
            p.copy_(q)
    sd = a.state_dict()        # torch moves the tensors to the parameters' device on load;
    for entry in sd["state"].values():       # the stand-in cannot, so they move here first
        for key, v in entry.items():
            if isinstance(v, torch.Tensor) and v.dim() > 0:
                entry[key] = fc.cuda(v)
            elif isinstance(v, list):
                entry[key] = [fc.cuda(x) if isinstance(x, torch.Tensor) else x for x in v]
    e.load_state_dict(sd)
    for _ in range(2):
        a.step(ca)
        e.step(ce)
    for p, q, s in zip(ref, cpu, back):
        np.testing.assert_allclose(host(q), host(p), rtol=0, atol=1e-12)
        np.testing.assert_allclose(host(s), host(p), rtol=0, atol=1e-12)


def test_mixed_devices_are_refused(fake):
    p = torch.nn.Parameter(torch.zeros(3, dtype=torch.float64))
    q = fc.cuda(torch.nn.Parameter(torch.zeros(3, dtype=torch.float64)))
    with pytest.raises(ValueError, match="one device"):
        ft.LBFGS([p, q])
    opt = ft.LBFGS([q])

    def closure():
        q.grad = torch.ones(3, dtype=torch.float64)       # a CPU gradient for a CUDA parameter
        return torch.tensor(1.0)
    with pytest.raises(TypeError, match="grad"):
        opt.step(closure)
    np.testing.assert_array_equal(host(q), np.zeros(3))


def test_runs_when_another_gpu_is_current(fake):
    """CuPy refuses a stream of another device than the current one: the step (and a load)
    make the parameters' device current first."""
    config = cases.CONFIGS["default"]
    cpu, a, ca = setup(False, config)
    fake._current_device[0] = 1
    gpu, b, cb = setup(True, config)
    a.step(ca)
    b.step(cb)
    b.load_state_dict(b.state_dict())
    assert fake._current_device[0] == 1
    for p, q in zip(cpu, gpu):
        np.testing.assert_allclose(host(q), host(p), rtol=0, atol=1e-9)
