"""SparseAdam's CuPy path (fastopt._sparse_adam_cupy) on the CuPy stand-in (tests/fake_cupy.py).

The element operations are the CPU kernel's (csrc/sparse_adam.c: no fma, each product and
sum rounded on its own), so the results are bit for bit the CPU's, except in rows whose index
repeats three or more times within a gradient of 16 or more entries: there the CPU adds the
repeats in the order of torch's unstable CPU sort (introsort), the device in gradient order
(a stable sort), a difference of rounding in those rows' sums. (Below 16 entries the CPU's
sort is an insertion sort, stable too.) A GPU-marked comparison is in tests/test_cuda_optim.py.
"""

import numpy as np
import pytest

import fake_cupy as fk
import fastopt as fo
from fastopt.functional import sparse_adam_


@pytest.fixture
def fake(monkeypatch):
    yield from fk.installed(monkeypatch)


dev = fk.device_copy


SHAPES = [(20, 4), (15, 2, 3), (9,)]


def sparse_grads(rng, dtype, repeats):
    out = []
    for shape in SHAPES:
        n = shape[0]
        if repeats == "twice":                 # every index at most twice: any order sums alike
            ids = rng.permutation(n)[:7]
            ids = np.concatenate([ids, ids[:4]])
        else:                                  # many repeats in a long gradient
            ids = rng.integers(0, 5, 40)
        rng.shuffle(ids)
        out.append((ids, rng.standard_normal((len(ids),) + shape[1:]).astype(dtype)))
    return out


def run(dtype, repeats, steps=6, **hyper):
    rng = np.random.default_rng(0)
    tabs = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    dtabs = [dev(t) for t in tabs]
    cpu = fo.SparseAdam([{"params": tabs[:2]}, {"params": tabs[2:], "lr": 0.01}], lr=0.05,
                        **hyper)
    gpu = fo.SparseAdam([{"params": dtabs[:2]}, {"params": dtabs[2:], "lr": 0.01}], lr=0.05,
                        **hyper)
    for _ in range(steps):
        gs = sparse_grads(rng, dtype, repeats)
        cpu.step([fo.RowSparseGrad(i, v) for i, v in gs])
        gpu.step([fo.RowSparseGrad(dev(i), dev(v)) for i, v in gs])
    return cpu, gpu, tabs, dtabs


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("maximize", [False, True])
def test_bit_for_bit_the_cpu_when_no_index_repeats_three_times(fake, dtype, maximize):
    cpu, gpu, tabs, dtabs = run(dtype, "twice", maximize=maximize)
    for d, t in zip(dtabs, tabs):
        assert isinstance(d, fk.ndarray) and d.dtype == dtype
        np.testing.assert_array_equal(d.get(), t)
    for i in cpu.state:
        for k in ("exp_avg", "exp_avg_sq"):
            assert isinstance(gpu.state[i][k], fk.ndarray)
            np.testing.assert_array_equal(gpu.state[i][k].get(), cpu.state[i][k])
    assert "argsort" in fake.log["ops"] and "take" in fake.log["ops"]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_many_repeats_agree_to_rounding(fake, dtype):
    cpu, gpu, tabs, dtabs = run(dtype, "many")
    tol = 1e-5 if dtype == np.float32 else 1e-13
    for d, t in zip(dtabs, tabs):
        np.testing.assert_allclose(d.get(), t, rtol=tol, atol=tol)
    untouched = np.arange(5, 20)                      # rows no gradient named stay as they were
    start = np.random.default_rng(0).standard_normal(SHAPES[0]).astype(dtype)
    np.testing.assert_array_equal(dtabs[0].get()[untouched], start[untouched])
    np.testing.assert_array_equal(gpu.state[0]["exp_avg"].get()[untouched], 0)


def test_functional_on_the_stand_in(fake):
    rng = np.random.default_rng(1)
    p, m, v = rng.standard_normal((6, 3)), np.zeros((6, 3)), np.zeros((6, 3))
    dp, dm, dv = dev(p), dev(m), dev(v)
    for t in range(1, 4):
        ids, vals = np.array([4, 1, 4]), rng.standard_normal((3, 3))
        sparse_adam_(p, (ids, vals), m, v, step=t, lr=0.1)
        sparse_adam_(dp, (dev(ids), dev(vals)), dm, dv, step=t, lr=0.1)
    for a, b in ((dp, p), (dm, m), (dv, v)):
        np.testing.assert_array_equal(a.get(), b)


def test_bad_gradients_change_nothing(fake):
    p = dev(np.ones((5, 2)))
    opt = fo.SparseAdam([p], lr=0.1)
    with pytest.raises(ValueError, match=r"grads\[0\].indices\[1\] = 7 is out of range"):
        opt.step([fo.RowSparseGrad(dev(np.array([0, 7])), dev(np.ones((2, 2))))])
    with pytest.raises(ValueError, match="expected \\(2, 2\\)"):
        opt.step([fo.RowSparseGrad(dev(np.array([0, 1])), dev(np.ones((2, 3))))])
    with pytest.raises(TypeError, match="dtype float32, expected float64"):
        opt.step([fo.RowSparseGrad(dev(np.array([0])), dev(np.ones((1, 2), np.float32)))])
    with pytest.raises(TypeError, match="both be CuPy arrays"):
        fo.RowSparseGrad(np.array([0]), dev(np.ones((1, 2))))
    with pytest.raises(TypeError, match="cupy.ndarray"):
        opt.step([fo.RowSparseGrad(np.array([0]), np.ones((1, 2)))])
    np.testing.assert_array_equal(p.get(), 1)
    assert all(not e for e in opt.state.values()) or \
        not np.any(opt.state[0]["exp_avg"].get())
