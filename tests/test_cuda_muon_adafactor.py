"""The CuPy paths of Muon and Adafactor on the CuPy stand-in (tests/fake_cupy.py).

The stand-in runs the CuPy array operations of fastopt._muon_cupy / fastopt._adafactor_cupy
with NumPy on host memory, so these tests check everything but the device itself: the
equations and their order (against the CPU classes), workspaces reused (nothing allocated
per step in proportion to the parameters), transposes, dtypes, state layout, checkpoints,
errors. Where a GPU exists, tests/test_cuda_optim.py compares the real thing with the CPU.

Agreement with the CPU, and why not bit for bit:
- Muon: the CPU's lerps and final update are single-rounding fmas (here multiply + add),
  its sum of squares squares in double, its gemm accumulates in OpenBLAS's order and forms
  ``b A + c A A`` inside one gemm. float64 iteration: within 1e-14 relative on float64
  parameters; float32 iteration: 1e-6; the default bfloat16 iteration: a value at a bfloat16
  rounding boundary may round the other way (a difference of one bfloat16 ulp in O, times lr).
"""

import numpy as np
import pytest

import fake_cupy as fk
import fastopt as fo
from fastopt.functional import muon_


@pytest.fixture
def fake(monkeypatch):
    yield from fk.installed(monkeypatch)


dev = fk.device_copy


def host(a):
    return a.get() if isinstance(a, fk.ndarray) else a


def rel(a, b):
    a, b = host(a), host(b)
    return float(np.max(np.abs(a - b)) / max(1e-300, float(np.max(np.abs(b)))))


# ----------------------------------------------------------------------------------- Muon
SHAPES = [(5, 8), (9, 4), (6, 6), (1, 3)]          # wide, tall (transposed), square, a row
MUON_TOL = {("float64", np.float64): 1e-13, ("float64", np.float32): 2e-7,
            ("float32", np.float64): 2e-6, ("float32", np.float32): 2e-6}


def run_pair(cls, shapes, first, dtype, hyper, steps, seed):
    """`cls` on host arrays and on stand-in device copies of them, two groups (the first
    `first` shapes, then the rest at half the lr), `steps` steps of the same gradients."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    device = [dev(p) for p in params]
    groups = lambda ps: [{"params": ps[:first]}, {"params": ps[first:], "lr": hyper["lr"] / 2}]
    cpu, gpu = cls(groups(params), **hyper), cls(groups(device), **hyper)
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        cpu.step(gs)
        assert gpu.step([dev(g) for g in gs]) is True
    return cpu, gpu, params, device


def muon_run(dtype, hyper, steps=6, seed=0):
    return run_pair(fo.Muon, SHAPES, 2, dtype, hyper, steps, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ns_dtype", ["float64", "float32"])
@pytest.mark.parametrize("nesterov", [True, False])
def test_muon_on_the_stand_in_matches_the_cpu(fake, dtype, ns_dtype, nesterov):
    hyper = dict(lr=0.05, weight_decay=0.01, momentum=0.9 if nesterov else 0.3,
                 nesterov=nesterov, ns_dtype=ns_dtype, adjust_lr_fn="match_rms_adamw")
    cpu, gpu, params, device = muon_run(dtype, hyper)
    tol = MUON_TOL[(ns_dtype, dtype)]
    for p, q in zip(params, device):
        assert isinstance(q, fk.ndarray) and q.dtype == dtype
        assert rel(q, p) < tol
    for i in cpu.state:
        buf = gpu.state[i]["momentum_buffer"]
        assert isinstance(buf, fk.ndarray)
        # the momentum pass: lerp without fma, a few ulps
        assert rel(buf, cpu.state[i]["momentum_buffer"]) < 1e-5 if dtype == np.float32 \
            else rel(buf, cpu.state[i]["momentum_buffer"]) < 1e-14
    assert "matmul" in fake.log["ops"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_muon_bfloat16_iteration_on_the_stand_in(fake, dtype):
    """The default (torch's bfloat16) iteration: the rounding is the CPU's bit operation, so
    the parameters agree to within a bfloat16 ulp of O per step (times lr), and most
    elements exactly; the output O really is bfloat16-valued."""
    lr, steps = 0.05, 6
    cpu, gpu, params, device = muon_run(dtype, dict(lr=lr), steps=steps)
    for p, q in zip(params, device):
        assert np.max(np.abs(host(q) - p)) < steps * lr * 2.0 ** -7 * 1.5
    from fastopt import _muon_cupy
    from fastopt._muon import round_bf16
    x = fk.ndarray(np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, np.nan, -3.14159, 7e-39, 3e38],
                            np.float32))
    ref = round_bf16(x.get())
    _muon_cupy._round_bf16(fk, x, fk.empty(7, np.uint32), fk.empty(7, np.bool_))
    np.testing.assert_array_equal(x.get().view(np.uint32), ref.view(np.uint32))


def test_muon_workspaces_are_reused(fake):
    """A step allocates no parameter-sized buffer: the workspace made at the first step is
    the one every later step uses; it grows only for a larger parameter."""
    rng = np.random.default_rng(1)
    p = dev(rng.standard_normal((6, 10)))
    opt = fo.Muon([p], lr=0.01, ns_dtype="float64")
    opt.step([dev(rng.standard_normal((6, 10)))])
    ws = opt._device_work._ws
    (key, first), = ws.items()
    x_ptr = first.X.data.ptr
    for _ in range(3):
        opt.step([dev(rng.standard_normal((6, 10)))])
    assert ws[key] is first and first.X.data.ptr == x_ptr
    assert first.size == 60 and first.square == 36


def test_muon_functional_on_the_stand_in(fake):
    rng = np.random.default_rng(2)
    p = rng.standard_normal((4, 7))
    b = np.zeros_like(p)
    dp, db = dev(p), dev(b)
    work = __import__("fastopt._muon_cupy", fromlist=["x"]).Workspaces()
    for _ in range(3):
        g = rng.standard_normal((4, 7))
        muon_(p, g, b, lr=0.1, ns_dtype="float64")
        muon_(dp, dev(g), db, lr=0.1, ns_dtype="float64", workspace=work)
    assert rel(dp, p) < 1e-13 and rel(db, b) < 1e-14
    with pytest.raises(TypeError, match="Workspaces"):
        muon_(dp, dev(g), db, workspace=np.empty(100, np.float32))


def test_muon_state_moves_between_devices(fake):
    rng = np.random.default_rng(3)
    p = rng.standard_normal((5, 3))
    gs = [rng.standard_normal((5, 3)) for _ in range(6)]
    ref = fo.Muon([p.copy()], lr=0.02, ns_dtype="float64")
    ref_p = ref.param_groups[0]["params"][0]
    for g in gs:
        ref.step([g])
    d = dev(p)
    a = fo.Muon([d], lr=0.02, ns_dtype="float64")
    for g in gs[:3]:
        a.step([dev(g)])
    from fastopt import cuda
    c = host(d).copy()
    b = fo.Muon([c], lr=0.5, ns_dtype="float64")          # lr restored from the state_dict
    b.load_state_dict(cuda.to_numpy(a.state_dict()))
    for g in gs[3:]:
        b.step([g])
    assert rel(c, ref_p) < 1e-13
    back = dev(host(d))                                        # and CPU -> device
    e = fo.Muon([back], lr=0.5, ns_dtype="float64")
    e.load_state_dict(a.state_dict())
    assert isinstance(e.state[0]["momentum_buffer"], fk.ndarray)
    for g in gs[3:]:
        e.step([dev(g)])
    assert rel(back, ref_p) < 1e-13


def test_muon_errors_on_the_stand_in(fake):
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        fo.Muon([dev(np.zeros(3))])
    p = dev(np.ones((2, 3)))
    opt = fo.Muon([p], lr=0.1)
    before = p.get()
    with pytest.raises(ValueError, match="shape"):
        opt.step([dev(np.ones((3, 2)))])
    with pytest.raises(TypeError):
        opt.step([np.ones((2, 3))])                  # a host gradient for a device parameter
    g = np.ones((2, 3))
    g[0, 1] = np.nan
    assert opt.step([dev(g)], nonfinite="skip") is False
    with pytest.raises(ValueError, match=r"grads\[0\] contains NaN"):
        opt.step([dev(g)], nonfinite="raise")
    np.testing.assert_array_equal(p.get(), before)
    assert opt.state == {} or "momentum_buffer" not in opt.state.get(0, {})


# ------------------------------------------------------------------------------ Adafactor
AF_SHAPES = [(5, 8), (3, 4, 6), (1, 9), (7,), ()]    # matrix, batch of matrices, a row,
                                                      # vector, 0-d
AF_TOL = {np.float64: 1e-14, np.float32: 2e-6}


def adafactor_run(dtype, hyper, steps=6, seed=0):
    return run_pair(fo.Adafactor, AF_SHAPES, 3, dtype, hyper, steps, seed)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("hyper", [dict(lr=0.05), dict(lr=0.05, weight_decay=0.01, maximize=True,
                                                       d=1.5, eps=(1e-20, 1e-2))])
def test_adafactor_on_the_stand_in_matches_the_cpu(fake, dtype, hyper):
    """Same equations and order as csrc/adafactor.c: the parameters and every state buffer
    (row_var, col_var, variance) agree to rounding (the CPU's lerps and update are fmas)."""
    cpu, gpu, params, device = adafactor_run(dtype, hyper)
    for p, q in zip(params, device):
        assert isinstance(q, fk.ndarray) and q.dtype == dtype and q.shape == p.shape
        assert rel(q, p) < AF_TOL[dtype] or np.max(np.abs(host(q) - p)) == 0
    for i, entry in cpu.state.items():
        assert set(gpu.state[i]) == set(entry)
        for k, v in entry.items():
            if isinstance(v, np.ndarray):
                got = gpu.state[i][k]
                assert isinstance(got, fk.ndarray) and got.shape == v.shape
                assert rel(got, v) < 4 * AF_TOL[dtype]


def test_adafactor_workspaces_are_reused(fake):
    rng = np.random.default_rng(5)
    p = dev(rng.standard_normal((6, 10)))
    opt = fo.Adafactor([p])
    opt.step([dev(rng.standard_normal((6, 10)))])
    (key, first), = opt._device_work._ws.items()
    ptrs = [b.data.ptr for b in first]
    for _ in range(3):
        opt.step([dev(rng.standard_normal((6, 10)))])
    assert [b.data.ptr for b in opt._device_work._ws[key]] == ptrs
    assert first[0].size == 60 and first[0].dtype == np.float64


def test_adafactor_functional_on_the_stand_in(fake):
    from fastopt.functional import adafactor_
    rng = np.random.default_rng(6)
    p, r, c = rng.standard_normal((4, 5)), np.zeros((4, 1)), np.zeros((1, 5))
    dp, dr, dc = dev(p), dev(r), dev(c)
    for t in range(1, 4):
        g = rng.standard_normal((4, 5))
        adafactor_(p, g, r, c, step=t, lr=0.1)
        adafactor_(dp, dev(g), dr, dc, step=t, lr=0.1)
    assert rel(dp, p) < 1e-14 and rel(dr, r) < 1e-14 and rel(dc, c) < 1e-14
    before = [dp.get(), dr.get(), dc.get()]
    with pytest.raises(ValueError, match="row_var of shape"):
        adafactor_(dp, dev(g), dc, dr, step=4)                 # factors swapped
    for a, b in zip([dp, dr, dc], before):
        np.testing.assert_array_equal(a.get(), b)


def test_adafactor_state_moves_between_devices(fake):
    from fastopt import cuda
    cpu, gpu, params, device = adafactor_run(np.float64, dict(lr=0.05), steps=3)
    back = fo.Adafactor([{"params": [dev(p) for p in params[:3]]},
                         {"params": [dev(p) for p in params[3:]], "lr": 0.025}], lr=0.05)
    back.load_state_dict(cpu.state_dict())                      # CPU state -> device
    assert all(isinstance(v, fk.ndarray) for e in back.state.values() for v in e.values()
               if not isinstance(v, float))
    host_opt = fo.Adafactor([{"params": [p.copy() for p in params[:3]]},
                             {"params": [p.copy() for p in params[3:]], "lr": 0.025}], lr=0.05)
    host_opt.load_state_dict(cuda.to_numpy(gpu.state_dict()))  # device state -> CPU
    for i, entry in cpu.state.items():
        for k, v in entry.items():
            if isinstance(v, np.ndarray):
                assert rel(host_opt.state[i][k], v) < 1e-14
                assert rel(back.state[i][k], v) == 0


def test_adafactor_errors_on_the_stand_in(fake):
    p = dev(np.ones((2, 3)))
    opt = fo.Adafactor([p])
    with pytest.raises(ValueError, match="shape"):
        opt.step([dev(np.ones((3, 2)))])
    g = np.ones((2, 3))
    g[1, 2] = np.inf
    assert opt.step([dev(g)], nonfinite="skip") is False
    with pytest.raises(ValueError, match=r"grads\[0\] contains NaN or Inf"):
        opt.step([dev(g)], nonfinite="raise")
    np.testing.assert_array_equal(p.get(), 1)
