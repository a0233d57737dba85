"""fastopt.cuda on a real GPU: parity with the CPU kernels, validation, streams, no host sync,
Newton's solve, moving state between devices. Skipped (with the reason) without CuPy or a GPU;
bench/gpu_check.py runs this file on a GPU machine.
"""
import time
import zlib

import numpy as np
import pytest

from cuda_cases import CASES, DEFAULT_CASES, make_problem, rel_err, run_backend, run_cpu

from fastopt import cuda

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda.has_gpu(), reason="needs CuPy and a CUDA GPU "
                       "(pip install 'fastopt[gpu]'); none found on this machine"),
]
K = pytest.importorskip("fastopt._kernels")

TOL = {np.dtype(np.float32): 1e-5, np.dtype(np.float64): 1e-12}
STEPS = 100


@pytest.fixture(scope="module")
def cp():
    import cupy
    return cupy


def on_gpu(cp):
    return lambda a: cp.asarray(a)


def to_host(a):
    return a.get()


def assert_parity(got, want, dtype, what):
    got_p, got_s = got
    want_p, want_s = want
    tol = TOL[np.dtype(dtype)]
    for i, (a, b) in enumerate(zip(got_p, want_p)):
        assert a.dtype == b.dtype
        assert rel_err(a, b) < tol, f"{what}: param {i} rel. error {rel_err(a, b):.3g}"
    for k in range(3):
        for i, (a, b) in enumerate(zip(got_s[k], want_s[k])):
            assert rel_err(a, b) < tol, f"{what}: state {k} of param {i} rel. error {rel_err(a, b):.3g}"


def layouts():
    c = cuda.CHUNK
    return {
        "size0": [(0,)],
        "size1": [(1,)],
        "odd": [(1001,)],
        "large": [(3 * c + 5,)],
        "many": [(3, 5), (0,), (1,), (2 * c + 1,), (257,), (4, 4, 4)],
    }


@pytest.mark.parametrize("layout", sorted(layouts()))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_with_cpu_kernels(cp, case, dtype, layout):
    shapes = layouts()[layout]
    dtypes = [dtype] * len(shapes)
    params, grads = make_problem(shapes, dtypes, STEPS, seed=zlib.crc32(f"{case}/{layout}".encode()))
    want = run_cpu(case, params, grads, dtypes)
    got = run_backend(cuda, on_gpu(cp), to_host, case, params, grads)
    assert_parity(got, want, dtype, f"{case}/{np.dtype(dtype)}/{layout}")


@pytest.mark.parametrize("unroll", sorted({1, 2, 8} - {cuda.UNROLL}))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_parity_other_unroll_factors(cp, monkeypatch, case, dtype, unroll):
    monkeypatch.setattr(cuda, "UNROLL", unroll)
    shapes = layouts()["many"] + [(cuda.CHUNK - 1,)]
    dtypes = [dtype] * len(shapes)
    params, grads = make_problem(shapes, dtypes, STEPS, seed=unroll)
    want = run_cpu(case, params, grads, dtypes)
    got = run_backend(cuda, on_gpu(cp), to_host, case, params, grads)
    assert_parity(got, want, dtype, f"{case}/{np.dtype(dtype)}/unroll {unroll}")


@pytest.mark.parametrize("case", DEFAULT_CASES)
def test_parity_one_million_elements(cp, case):
    shapes, dtypes = [(1_000_003,)], [np.float32]
    params, grads = make_problem(shapes, dtypes, 20, seed=7)
    want = run_cpu(case, params, grads, dtypes)
    got = run_backend(cuda, on_gpu(cp), to_host, case, params, grads)
    assert_parity(got, want, np.float32, case)


@pytest.mark.parametrize("case", ["adam-1", "rmsprop-3", "sgd-3"])
def test_parity_mixed_dtypes_in_one_plan(cp, case):
    c = cuda.CHUNK
    shapes = [(c + 7,), (3,), (2 * c,), (0,), (5, 5)]
    dtypes = [np.float64, np.float32, np.float32, np.float64, np.float32]
    params, grads = make_problem(shapes, dtypes, STEPS, seed=3)
    want_p, want_s = run_cpu(case, params, grads, dtypes)
    got_p, got_s = run_backend(cuda, on_gpu(cp), to_host, case, params, grads)
    for i, d in enumerate(dtypes):
        tol = TOL[np.dtype(d)]
        assert rel_err(got_p[i], want_p[i]) < tol
        for k in range(3):
            assert rel_err(got_s[k][i], want_s[k][i]) < tol


def _adam_plan(cp, arrays):
    plan = cuda.Plan(arrays)
    for k in range(3):
        plan.set_state(k, [cp.zeros_like(a) for a in arrays])
    return plan


def _adam(plan, grads, t=1):
    cuda.adam(plan, grads, 1e-3 / (1 - 0.9 ** t), 0.9, 0.999, (1 - 0.999 ** t) ** 0.5, 1e-8,
              0.0, 1.0, 0)


def test_validation_on_device_arrays(cp):
    p = [cp.ones(5, cp.float32), cp.ones((2, 3), cp.float64)]
    plan = _adam_plan(cp, p)
    before = [a.get() for a in p]
    with pytest.raises(TypeError, match=r"grads\[1\] must be a cupy.ndarray of float64 like "
                                        r"params\[1\], got numpy.ndarray"):
        _adam(plan, [cp.ones(5, cp.float32), np.ones((2, 3))])
    with pytest.raises(TypeError, match=r"grads\[0\] must have dtype float32"):
        _adam(plan, [cp.ones(5, cp.float64), cp.ones((2, 3))])
    with pytest.raises(ValueError, match="C-contiguous"):
        _adam(plan, [cp.ones(10, cp.float32)[::2], cp.ones((2, 3))])
    with pytest.raises(ValueError, match="shares memory"):
        _adam(plan, [cp.ones(5, cp.float32), p[1]])
    with pytest.raises(TypeError, match=r"params\[1\] must be a cupy.ndarray .* numpy.ndarray"):
        cuda.Plan([cp.ones(3), np.ones(3)])
    with pytest.raises(TypeError, match="float16"):
        cuda.Plan([cp.ones(3, cp.float16)])
    for a, b in zip(p, before):
        np.testing.assert_array_equal(a.get(), b)


def test_two_devices_rejected(cp):
    if cp.cuda.runtime.getDeviceCount() < 2:
        pytest.skip("needs two GPUs; the device checks also run on the stand-in in "
                    "tests/test_cuda_host.py")
    with cp.cuda.Device(0):
        a = cp.ones(4)
    with cp.cuda.Device(1):
        b = cp.ones(4)
        g1 = cp.ones(4)
    with pytest.raises(ValueError, match=r"params\[1\] is on GPU 1 but params\[0\] is on GPU 0"):
        cuda.Plan([a, b])
    with cp.cuda.Device(0):
        plan = _adam_plan(cp, [a])
    with pytest.raises(ValueError, match=r"grads\[0\] is on GPU 1"):
        _adam(plan, [g1])


SPIN = r"""
extern "C" __global__ void fo_test_spin(long long cycles)
{
    long long t0 = clock64();
    while (clock64() - t0 < cycles) { }
}
"""


def test_step_does_not_wait_for_the_device(cp):
    """Steps queued behind a ~2 s kernel return while it still runs: no host sync in a step."""
    n = 3 * cuda.CHUNK + 1
    params, grads = make_problem([(n,), (7,)], [np.float32, np.float64], 8, seed=11)
    want = run_cpu("adam-0", params, grads, [np.float32, np.float64])
    p = [cp.asarray(a) for a in params]
    plan = cuda.Plan(p)
    states = [[cp.zeros_like(a) for a in p] for _ in range(3)]
    for k in range(3):
        plan.set_state(k, states[k])
    dev_grads = [[cp.asarray(a) for a in g] for g in grads]
    args = CASES["adam-0"][1]
    for t in (1, 2):                         # compile and warm up
        getattr(cuda, "adam")(plan, dev_grads[t - 1], *args(t)[0], args(t)[1])
    spin = cp.RawKernel(SPIN, "fo_test_spin")
    cp.cuda.get_current_stream().synchronize()
    spin((1,), (1,), (np.int64(4_000_000_000),))
    busy = cp.cuda.Event(disable_timing=True)
    busy.record()
    t0 = time.perf_counter()
    for t in range(3, 9):                    # a new gradient buffer each step
        cuda.adam(plan, dev_grads[t - 1], *args(t)[0], args(t)[1])
    host_s = time.perf_counter() - t0
    still_busy = not busy.done
    cp.cuda.get_current_stream().synchronize()
    assert still_busy, f"the steps waited for the device ({host_s:.3f} s on the host)"
    assert_parity(([a.get() for a in p], [[a.get() for a in s] for s in states]), want,
                  np.float32, "adam behind a busy stream")


def test_streams_are_ordered(cp):
    case = "adam-1"
    shapes, dtypes = [(2 * cuda.CHUNK + 3,), (9,)], [np.float32, np.float32]
    params, grads = make_problem(shapes, dtypes, 12, seed=5)
    want = run_cpu(case, params, grads, dtypes)
    opt, args = CASES[case]
    p = [cp.asarray(a) for a in params]
    states = [[cp.zeros_like(a) for a in p] for _ in range(3)]
    plan = cuda.Plan(p)
    for k in range(3):
        plan.set_state(k, states[k])
    streams = [cp.cuda.Stream(non_blocking=True), cp.cuda.Stream(non_blocking=True)]
    for t, g in enumerate(grads, start=1):
        with streams[t % 2]:
            dg = [cp.asarray(a) for a in g]
            getattr(cuda, opt)(plan, dg, *args(t)[0], args(t)[1])
    for s in streams:
        s.synchronize()
    assert_parity(([a.get() for a in p], [[a.get() for a in s] for s in states]), want,
                  np.float32, "alternating streams")


def test_grad_buffers_recycled_after_the_step(cp):
    """Dropping the gradients right after a step is safe (CuPy's pool is stream-ordered)."""
    case = "adam-0"
    shapes, dtypes = [(cuda.CHUNK + 1,)], [np.float32]
    params, grads = make_problem(shapes, dtypes, 20, seed=9)
    want = run_cpu(case, params, grads, dtypes)
    opt, args = CASES[case]
    p = [cp.asarray(params[0])]
    states = [[cp.zeros_like(p[0])] for _ in range(3)]
    plan = cuda.Plan(p)
    for k in range(3):
        plan.set_state(k, states[k])
    for t, g in enumerate(grads, start=1):
        dg = [cp.asarray(g[0])]
        getattr(cuda, opt)(plan, dg, *args(t)[0], args(t)[1])
        del dg
        cp.full(shapes[0], np.nan, np.float32)     # likely reuses the freed block
    assert_parity(([p[0].get()], [[s[0].get()] for s in states]), want, np.float32, "recycled")


def test_state_moves_between_devices_and_resumes(cp):
    """50 steps on the GPU, state to NumPy, 50 more on the CPU == 100 steps on the CPU."""
    case = "adamw-1"
    shapes, dtypes = [(1000,), (3, 7)], [np.float32, np.float32]
    params, grads = make_problem(shapes, dtypes, 100, seed=2)
    want = run_cpu(case, params, grads, dtypes)
    gpu_p, gpu_s = run_backend(cuda, on_gpu(cp), to_host, case, params, grads[:50])
    moved = cuda.to_numpy({"params": [cp.asarray(a) for a in gpu_p],
                           "state": [[cp.asarray(a) for a in s] for s in gpu_s]})
    opt, args = CASES[case]
    p = moved["params"]
    plan = K.Plan(p)
    for k in range(3):
        plan.set_state(k, moved["state"][k])
    for t, g in enumerate(grads[50:], start=51):
        getattr(K, opt)(plan, g, *args(t)[0], args(t)[1])
    assert_parity((p, moved["state"]), want, np.float32, "GPU then CPU")
    back = cuda.to_device(moved)
    assert cuda.is_cupy_array(back["params"][0])
    np.testing.assert_array_equal(back["state"][0][1].get(), moved["state"][0][1])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_newton_solve_positive_definite(cp, dtype):
    rng = np.random.default_rng(0)
    n = 40
    a = rng.standard_normal((n, n))
    h = a @ a.T + n * np.eye(n)
    g = rng.standard_normal(n)
    d, shift = cuda.newton_solve(cp.asarray(h, dtype), cp.asarray(g, dtype), damping=0.5)
    assert shift == 0.0 and d.dtype == dtype
    want = np.linalg.solve(h + 0.5 * np.eye(n), g)
    assert rel_err(d.get(), want) < (1e-4 if dtype == np.float32 else 1e-10)


def test_newton_solve_indefinite_adds_identity(cp):
    rng = np.random.default_rng(1)
    q, _ = np.linalg.qr(rng.standard_normal((30, 30)))
    h = q @ np.diag(np.linspace(-2.0, 5.0, 30)) @ q.T     # indefinite
    g = rng.standard_normal(30)
    d, shift = cuda.newton_solve(cp.asarray(h), cp.asarray(g))
    assert shift > 2.0                                     # min eigenvalue -2 must be lifted
    a = h + shift * np.eye(30)
    assert np.linalg.eigvalsh(a).min() > 0
    assert rel_err(a @ d.get(), g) < 1e-10
    singular = np.zeros((4, 4))
    d0, s0 = cuda.newton_solve(cp.asarray(singular), cp.ones(4))
    assert s0 > 0 and np.all(np.isfinite(d0.get()))


def test_newton_solve_bad_input(cp):
    with pytest.raises(TypeError, match="hessian must be a cupy.ndarray"):
        cuda.newton_solve(np.eye(3), cp.ones(3))
    with pytest.raises(ValueError, match="square"):
        cuda.newton_solve(cp.ones((3, 2)), cp.ones(3))
    with pytest.raises(ValueError, match=r"grad must have shape \(3,\)"):
        cuda.newton_solve(cp.eye(3), cp.ones(4))
    with pytest.raises(ValueError, match="finite"):
        cuda.newton_solve(cp.eye(3) * np.nan, cp.ones(3))
    with pytest.raises(ValueError, match="damping"):
        cuda.newton_solve(cp.eye(3), cp.ones(3), damping=-1.0)
