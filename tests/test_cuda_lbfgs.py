"""LBFGS on CuPy arrays: on the CuPy stand-in (tests/fake_cupy.py) against the CPU class, and,
where a GPU exists, on the device itself.

The stand-in runs fastopt._lbfgs_cupy's CuPy calls with NumPy on host memory, so these tests
check the iterations, the ring buffer, the line search, state_dict moves between devices, the
errors and that nothing parameter-sized is allocated after the first step. The device
recursion's axpy is a multiply and an add (the CPU's loop rounds once, with an fma), and
cuBLAS orders a dot product its own way: agreement to rounding, not bit for bit.
"""
import numpy as np
import pytest

import fake_cupy as fk
import lbfgs_cases as cases
from fastopt import cuda
from fastopt.optim import LBFGS

dev = fk.device_copy


@pytest.fixture
def fake(monkeypatch):
    yield from fk.installed(monkeypatch)


def host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def closure_for(prob, params, device):
    """The golden problem's closure on `params`; with `device`, gradients (and the loss, as a
    one-element array) come back as device arrays."""
    def closure():
        loss, grads = cases.loss_and_grads(prob, [host(p) for p in params])
        if device:
            return dev(np.array([loss])), [dev(g) for g in grads]
        return loss, grads
    return closure


def run_pair(dtype, config, steps=cases.STEPS):
    X, y = cases.data(dtype)
    prob = cases.problem(X, y)
    cpu = cases.start(prob)
    gpu = [dev(p) for p in cases.start(prob)]
    a, b = LBFGS(cpu, **config), LBFGS(gpu, **config)
    losses = []
    for _ in range(steps):
        losses.append((a.step(closure_for(prob, cpu, False)),
                       b.step(closure_for(prob, gpu, True))))
    return a, b, cpu, gpu, losses


def rel(a, b):
    a, b = host(a), host(b)
    return float(np.max(np.abs(a - b)) / max(1e-300, float(np.max(np.abs(b)))))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("config", list(cases.CONFIGS))
def test_stand_in_matches_the_cpu(fake, dtype, config):
    """As tests/test_lbfgs.py holds fastopt to torch: float64 iterates, losses and history to
    1e-9 with the same iteration and evaluation counts; float32 to 1e-3 (its rounding over
    30 iterations can move a stopping test by an iteration)."""
    a, b, cpu, gpu, losses = run_pair(dtype, cases.CONFIGS[config])
    tol = 1e-9 if dtype == np.float64 else 1e-3
    for p, q in zip(cpu, gpu):
        assert isinstance(q, fk.ndarray) and q.dtype == dtype
        assert np.abs(host(q) - p).max() <= tol
    for la, lb in losses:
        assert abs(la - lb) <= tol
    sa, sb = a.state[0], b.state[0]
    assert isinstance(sb["d"], fk.ndarray) and isinstance(sb["prev_flat_grad"], fk.ndarray)
    assert all(isinstance(v, fk.ndarray) for v in sb["old_dirs"] + sb["old_stps"])
    if dtype == np.float32:
        return
    assert (sa["n_iter"], sa["func_evals"]) == (sb["n_iter"], sb["func_evals"])
    assert len(sa["old_dirs"]) == len(sb["old_dirs"])
    for key in ("old_dirs", "old_stps"):
        for u, v in zip(sa[key], sb[key]):
            assert np.abs(host(v) - u).max() <= tol
    np.testing.assert_allclose(sb["ro"], sa["ro"], rtol=1e-6)
    k = len(sa["old_dirs"])
    np.testing.assert_allclose(sb["al"][:k], sa["al"][:k], rtol=1e-6, atol=1e-9)


def test_nothing_parameter_sized_is_allocated_after_the_first_step(fake):
    """The workspace and history are made at the first step; later steps only compute (the
    recursion's stack of k scalars is the one array call that makes something new)."""
    X, y = cases.data()
    prob = cases.problem(X, y)
    params = [dev(p) for p in cases.start(prob)]
    opt = LBFGS(params, history_size=4, max_iter=6, line_search_fn="strong_wolfe")
    opt.step(closure_for(prob, params, True))
    buf, d = opt._hist.buf, opt._ws.d
    fk.log["ops"].clear()
    for _ in range(3):
        opt.step(closure_for(prob, params, True))
    made = {"zeros", "empty_like", "concatenate", "ascontiguousarray"} & set(fk.log["ops"])
    assert not made
    assert "dot" in fk.log["ops"] and "stack" in fk.log["ops"]
    assert opt._hist.buf is buf and opt._ws.d is d


def test_state_moves_between_devices(fake):
    """A device run's state_dict continues on the CPU, and a CPU state_dict on the device,
    with the iterates of an uninterrupted run."""
    X, y = cases.data()
    prob = cases.problem(X, y)
    config = dict(history_size=4, max_iter=5)
    ref = cases.start(prob)
    r = LBFGS(ref, **config)
    for _ in range(4):
        r.step(closure_for(prob, ref, False))
    gpu = [dev(p) for p in cases.start(prob)]
    g = LBFGS(gpu, **config)
    for _ in range(2):
        g.step(closure_for(prob, gpu, True))
    cpu = [host(p).copy() for p in gpu]
    c = LBFGS(cpu, **config)
    c.load_state_dict(cuda.to_numpy(g.state_dict()))
    back = [dev(p) for p in cpu]
    e = LBFGS(back, **config)
    e.load_state_dict(c.state_dict())
    assert isinstance(e.state[0]["d"], fk.ndarray)
    for _ in range(2):
        c.step(closure_for(prob, cpu, False))
        e.step(closure_for(prob, back, True))
    for p, q, s in zip(ref, cpu, back):
        assert rel(q, p) < 1e-12 and rel(s, p) < 1e-12


def test_checkpoint_file_moves_between_devices(fake, tmp_path):
    """fo.save of a device run, fo.load into a CPU and a device optimizer: both continue as
    the run that was saved."""
    import fastopt as fo
    X, y = cases.data()
    prob = cases.problem(X, y)
    config = dict(history_size=4, max_iter=5, line_search_fn="strong_wolfe")
    gpu = [dev(p) for p in cases.start(prob)]
    g = LBFGS(gpu, **config)
    for _ in range(2):
        g.step(closure_for(prob, gpu, True))
    fo.save(g, tmp_path / "lbfgs.npz")
    cpu = [host(p).copy() for p in gpu]
    back = [dev(p) for p in cpu]
    c, e = LBFGS(cpu, **config), LBFGS(back, **config)
    fo.load(c, tmp_path / "lbfgs.npz")
    fo.load(e, tmp_path / "lbfgs.npz")
    assert isinstance(e.state[0]["old_dirs"][0], fk.ndarray)
    for _ in range(2):
        g.step(closure_for(prob, gpu, True))
        c.step(closure_for(prob, cpu, False))
        e.step(closure_for(prob, back, True))
    for p, q, s in zip(gpu, cpu, back):
        assert rel(q, p) < 1e-12
        np.testing.assert_array_equal(host(s), host(p))     # the same operations


def test_errors_on_the_stand_in(fake):
    X, y = cases.data()
    prob = cases.problem(X, y)
    params = [dev(p) for p in cases.start(prob)]
    before = [host(p).copy() for p in params]
    opt = LBFGS(params)
    with pytest.raises(TypeError):                 # host gradients for device parameters
        opt.step(lambda: (1.0, cases.loss_and_grads(prob, before)[1]))
    with pytest.raises(TypeError, match="loss"):
        opt.step(lambda: (dev(np.ones(2)), [dev(g) for g in
                                            cases.loss_and_grads(prob, before)[1]]))
    for p, b in zip(params, before):
        np.testing.assert_array_equal(host(p), b)
    assert opt.state == {} or not opt.state.get(0)
    with pytest.raises(ValueError, match="one dtype"):
        LBFGS([dev(np.zeros(3)), dev(np.zeros(3, np.float32))])
    with pytest.raises(TypeError, match="all numpy.ndarray or all cupy.ndarray"):
        LBFGS([dev(np.zeros(3)), np.zeros(3)])


@pytest.mark.gpu
@pytest.mark.skipif(not cuda.has_gpu(), reason="needs CuPy and a CUDA GPU (pip install "
                    "'fastopt[gpu]'); none found on this machine")
@pytest.mark.parametrize("config", ["default", "short_history_wolfe"])
def test_on_a_gpu_matches_the_cpu(config):
    import cupy as cp
    X, y = cases.data()
    prob = cases.problem(X, y)
    cpu = cases.start(prob)
    gpu = [cp.asarray(p) for p in cases.start(prob)]
    a, b = LBFGS(cpu, **cases.CONFIGS[config]), LBFGS(gpu, **cases.CONFIGS[config])

    def device_closure():
        loss, grads = cases.loss_and_grads(prob, [p.get() for p in gpu])
        return loss, [cp.asarray(g) for g in grads]
    for _ in range(cases.STEPS):
        a.step(closure_for(prob, cpu, False))
        b.step(device_closure)
    for p, q in zip(cpu, gpu):
        assert isinstance(q, cp.ndarray)
        assert rel(q, p) < 1e-11
