"""The optimizer classes and functional steps on CuPy arrays, end to end (needs a GPU).

Same numbers as on the CPU, state moving between devices through state_dict and checkpoint
files, and clear errors for mixed host/device arrays. Skipped with the reason without a GPU.
"""
import numpy as np
import pytest

import fastopt as fo
from cases import CASES
from fastopt import cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda.has_gpu(), reason="needs CuPy and a CUDA GPU "
                       "(pip install 'fastopt[gpu]'); none found on this machine"),
]
CLASSES = fo.optim.first_order.CLASSES      # optimizer name -> class, one per table entry
ALL = [(n, h) for n in CLASSES for h in CASES[n]]


def problem(dtype, seed=0):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal((33, 7)).astype(dtype), rng.standard_normal(70001).astype(dtype)]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(20)]
    return params, grads


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hyper", ALL, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL)])
def test_class_on_gpu_matches_cpu(name, hyper, dtype):
    import cupy as cp
    params, grads = problem(dtype)
    gpu = [cp.asarray(p) for p in params]
    cpu_opt = CLASSES[name]([{"params": params[:1]}, {"params": params[1:], "lr": hyper["lr"] / 2}], **hyper)
    gpu_opt = CLASSES[name]([{"params": gpu[:1]}, {"params": gpu[1:], "lr": hyper["lr"] / 2}], **hyper)
    for g in grads:
        cpu_opt.step(g)
        gpu_opt.step([cp.asarray(x) for x in g])
    for a, b in zip(gpu, params):
        assert isinstance(a, cp.ndarray) and a.dtype == b.dtype
        err = float(np.max(np.abs(a.get() - b))) / max(1.0, float(np.max(np.abs(b))))
        assert err < (1e-5 if dtype == np.float32 else 1e-12)
    for i in cpu_opt.state:
        for k, v in cpu_opt.state[i].items():
            assert isinstance(gpu_opt.state[i][k], cp.ndarray)
            np.testing.assert_allclose(gpu_opt.state[i][k].get(), v, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize("direction", ["gpu->cpu", "cpu->gpu"])
def test_state_moves_between_devices(tmp_path, direction):
    import cupy as cp
    params, grads = problem(np.float32, seed=1)
    ref = [p.copy() for p in params]
    ref_opt = fo.Adam(ref, lr=0.01, amsgrad=True)
    for g in grads:
        ref_opt.step(g)
    first_gpu = direction == "gpu->cpu"
    a = [cp.asarray(p) for p in params] if first_gpu else [p.copy() for p in params]
    opt_a = fo.Adam(a, lr=0.01, amsgrad=True)
    for g in grads[:10]:
        opt_a.step([cp.asarray(x) for x in g] if first_gpu else g)
    fo.save(opt_a, tmp_path / "ck.npz")
    host_a = [x.get() for x in a] if first_gpu else a
    b = [p.copy() for p in host_a] if first_gpu else [cp.asarray(p) for p in host_a]
    opt_b = fo.Adam(b, lr=0.5)
    fo.load(opt_b, tmp_path / "ck.npz")
    for g in grads[10:]:
        opt_b.step(g if first_gpu else [cp.asarray(x) for x in g])
    final = b if first_gpu else [x.get() for x in b]
    for x, y in zip(final, ref):
        np.testing.assert_allclose(x, y, rtol=1e-5, atol=1e-6)
    # state_dict of a GPU optimizer loads into a CPU one directly, too
    gpu_opt = opt_a if first_gpu else opt_b
    cpu_params = [np.zeros(p.shape, np.float32) for p in params]
    fo.Adam(cpu_params).load_state_dict(gpu_opt.state_dict())


def test_mixing_host_and_device_arrays_is_a_clear_error():
    import cupy as cp
    with pytest.raises(TypeError, match="cupy"):
        fo.Adam([cp.zeros(3, cp.float32), np.zeros(3, np.float32)])
    with pytest.raises(TypeError, match="one kind"):
        fo.Adam([{"params": [cp.zeros(3)]}, {"params": [np.zeros(3)]}])
    w = cp.zeros(3, cp.float32)
    opt = fo.Adam([w])
    with pytest.raises(TypeError, match=r"grads\[0\]"):
        opt.step([np.ones(3, np.float32)])
    assert float(cp.abs(w).max()) == 0.0


def test_functional_on_gpu():
    import cupy as cp
    p = cp.ones(1000, cp.float32)
    m, v = cp.zeros_like(p), cp.zeros_like(p)
    fo.functional.adam_(p, cp.ones_like(p), m, v, step=1, lr=0.1)
    np.testing.assert_allclose(p.get(), 0.9, rtol=1e-6)


# ------------------------------------------------------------- Muon on the GPU (cuBLAS)
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("ns_dtype", ["float64", "float32", None])
def test_muon_on_gpu_matches_cpu(dtype, ns_dtype):
    """fastopt._muon_cupy (cupy.matmul on cuBLAS) against the CPU step: the same equations
    in the same order, to rounding (no fma in the lerps and the update, cuBLAS's summation
    order; bfloat16: at most one bfloat16 ulp of O per step, times lr)."""
    import cupy as cp
    rng = np.random.default_rng(4)
    shapes = [(64, 160), (300, 48), (33, 33)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gpu = [cp.asarray(p) for p in params]
    hyper = dict(lr=0.02, weight_decay=0.01, ns_dtype=ns_dtype)
    cpu_opt, gpu_opt = fo.Muon(params, **hyper), fo.Muon(gpu, **hyper)
    steps = 8
    for _ in range(steps):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        cpu_opt.step(gs)
        gpu_opt.step([cp.asarray(g) for g in gs])
    for a, b in zip(gpu, params):
        assert isinstance(a, cp.ndarray) and a.dtype == b.dtype
        diff = float(np.max(np.abs(a.get() - b)))
        if ns_dtype is None:
            assert diff < steps * hyper["lr"] * 2.0 ** -7 * 2
        else:
            tol = 1e-11 if (ns_dtype, dtype) == ("float64", np.float64) else 1e-5
            assert diff / float(np.max(np.abs(b))) < tol


# ------------------------------------------------------------------ Adafactor on the GPU
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adafactor_on_gpu_matches_cpu(dtype):
    """fastopt._adafactor_cupy against csrc/adafactor.c: the same equations and order, to
    rounding (no fma in the lerps and the update; CuPy's reduction order)."""
    import cupy as cp
    rng = np.random.default_rng(7)
    shapes = [(128, 300), (4, 33, 17), (1000,), ()]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    gpu = [cp.asarray(p) for p in params]
    hyper = dict(lr=0.02, weight_decay=0.01)
    cpu_opt, gpu_opt = fo.Adafactor(params, **hyper), fo.Adafactor(gpu, **hyper)
    for _ in range(8):
        gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
        cpu_opt.step(gs)
        gpu_opt.step([cp.asarray(g) for g in gs])
    tol = 1e-13 if dtype == np.float64 else 1e-5
    for a, b in zip(gpu, params):
        assert isinstance(a, cp.ndarray) and a.dtype == b.dtype
        assert float(np.max(np.abs(a.get() - b))) <= tol * max(1.0, float(np.max(np.abs(b))))
    for i, entry in cpu_opt.state.items():
        for k, v in entry.items():
            if isinstance(v, np.ndarray):
                np.testing.assert_allclose(gpu_opt.state[i][k].get(), v, rtol=10 * tol)


# ----------------------------------------------------------------- SparseAdam on the GPU
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sparse_adam_on_gpu_matches_cpu(dtype):
    """fastopt._sparse_adam_cupy against csrc/sparse_adam.c: the CPU's element operations
    (no fma on either side: the kernels here are CuPy's elementwise operations, which nvcc
    may contract; then to rounding), and repeats summed in gradient order (the CPU: in torch's
    CPU sort order; the same when no index repeats three times)."""
    import cupy as cp
    rng = np.random.default_rng(8)
    tab = rng.standard_normal((1000, 16)).astype(dtype)
    dtab = cp.asarray(tab)
    cpu_opt, gpu_opt = fo.SparseAdam([tab], lr=0.01), fo.SparseAdam([dtab], lr=0.01)
    for _ in range(10):
        ids = rng.permutation(1000)[:300]
        ids = np.concatenate([ids, ids[:100]])             # repeats, at most twice
        vals = rng.standard_normal((400, 16)).astype(dtype)
        cpu_opt.step([fo.RowSparseGrad(ids, vals)])
        gpu_opt.step([fo.RowSparseGrad(cp.asarray(ids), cp.asarray(vals))])
    tol = 1e-12 if dtype == np.float64 else 1e-5
    np.testing.assert_allclose(dtab.get(), tab, rtol=tol, atol=tol)
    np.testing.assert_allclose(gpu_opt.state[0]["exp_avg_sq"].get(),
                               cpu_opt.state[0]["exp_avg_sq"], rtol=tol)
