"""Threads: kernels release the GIL, optimizers on different threads step at the same time, one
optimizer stepped from two threads is serialized by its lock, and threadpoolctl controls the
OpenMP runtime that fastopt's kernels use.

No assertion depends on timing. Overlap is shown by an observer thread that, while it holds
the GIL, sees both parameters half-updated: element 0 already written and the last element not
yet (a serial kernel writes in ascending order). A kernel holding the GIL could never be seen
half-way by another Python thread.
"""
import threading

import numpy as np
import pytest

import fastopt as fo
from reference import ReferenceOptimizer


@pytest.fixture
def one_kernel_thread():
    """Each kernel on its calling thread, so it writes its array front to back."""
    fo.set_num_threads(1)
    yield
    fo.set_num_threads(0)


def test_two_optimizers_step_at_the_same_time_on_two_threads(one_kernel_thread):
    n = 1 << 23
    pa, pb = np.ones(n, np.float32), np.ones(n, np.float32)
    g = np.ones(n, np.float32)
    opts = [fo.SGD([pa], lr=1.0), fo.SGD([pb], lr=1.0)]     # each step: p = 1 - 1 * 1 = 0
    seen = False
    for attempt in range(30):
        pa[:] = 1
        pb[:] = 1
        start = threading.Barrier(3)
        done = [threading.Event(), threading.Event()]

        def stepper(k):
            start.wait()
            opts[k].step([g])
            done[k].set()

        threads = [threading.Thread(target=stepper, args=(k,)) for k in range(2)]
        for t in threads:
            t.start()
        start.wait()
        while not (done[0].is_set() and done[1].is_set()):
            # in this order: both started (element 0 written) before both are seen unfinished
            a0, b0, a1, b1 = pa[0], pb[0], pa[-1], pb[-1]
            if a0 == 0 and b0 == 0 and a1 == 1 and b1 == 1:
                seen = True
        for t in threads:
            t.join()
        assert (pa == 0).all() and (pb == 0).all(), "a concurrent step computed a wrong result"
        if seen:
            break
    assert seen, "never saw both kernels in progress while this thread held the GIL"


@pytest.mark.parametrize("name,cls", [("adam", fo.Adam), ("rmsprop", fo.RMSprop), ("sgd", fo.SGD)])
def test_one_optimizer_stepped_from_two_threads_is_serialized(name, cls):
    """2 x N steps from two threads equal 2N steps in a row (the gradient is the same each
    step, so any order of whole steps gives the same result; interleaved halves would not)."""
    steps, n = 40, 200_000
    rng = np.random.default_rng(0)
    p0 = rng.standard_normal(n).astype(np.float32)
    g = rng.standard_normal(n).astype(np.float32)
    hyper = {"lr": 0.01, "momentum": 0.9} if name != "adam" else {"lr": 0.01}
    p_threads, p_serial = p0.copy(), p0.copy()
    opt = cls([p_threads], **hyper)
    serial = cls([p_serial], **hyper)
    start = threading.Barrier(2)
    errors = []

    def worker():
        start.wait()
        try:
            for _ in range(steps):
                assert opt.step([g]) is True
        except Exception as e:  # pragma: no cover - reported below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    for _ in range(2 * steps):
        serial.step([g])
    assert p_threads.tobytes() == p_serial.tobytes()
    sd, sd_serial = opt.state_dict(), serial.state_dict()
    assert sd["state"][0]["step"] == 2 * steps
    for key, value in sd_serial["state"][0].items():
        if isinstance(value, np.ndarray):
            assert sd["state"][0][key].tobytes() == value.tobytes(), key
    ref = ReferenceOptimizer(name, [dict(serial.param_groups[0], params=[p0])])
    for _ in range(2 * steps):
        ref.step([g])
    np.testing.assert_allclose(p_threads, ref.params[0], rtol=0, atol=1e-4)


def test_state_dict_sees_whole_steps_only():
    """state_dict() taken while another thread steps holds a step count and buffers from one
    and the same step (the lock covers both): Adagrad's sum after k steps of g = 1 is k."""
    n = 300_000
    p = np.zeros(n, np.float32)
    g = np.ones(n, np.float32)
    opt = fo.Adagrad([p], lr=1.0)
    stop = threading.Event()

    def stepper():
        while not stop.is_set():
            opt.step([g])

    t = threading.Thread(target=stepper)
    t.start()
    seen = set()
    try:
        while len(seen) < 20:
            sd = opt.state_dict()
            if sd["state"]:
                k = sd["state"][0]["step"]
                total = sd["state"][0]["sum"]
                assert total[0] == k and total[-1] == k and np.all(total == k), k
                seen.add(k)
    finally:
        stop.set()
        t.join()


# ------------------------------------------------------------------------- threadpoolctl
threadpoolctl = pytest.importorskip("threadpoolctl")
needs_openmp = pytest.mark.skipif(not fo.has_openmp(), reason="built without OpenMP")


@needs_openmp
def test_threadpoolctl_lists_the_openmp_runtime():
    info = threadpoolctl.threadpool_info()
    assert any(entry["user_api"] == "openmp" for entry in info), info


@needs_openmp
def test_threadpool_limits_bounds_fastopt_threads():
    fo.set_num_threads(0)                  # follow the OpenMP runtime
    before = fo.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fo.get_num_threads() == 1
        p = np.linspace(-1, 1, 100_000).astype(np.float32)
        fo.Adam([p], lr=0.1).step([p.copy()])
        assert np.all(np.abs(p) <= 1)
    assert fo.get_num_threads() == before
    with threadpoolctl.threadpool_limits(limits=1):
        fo.set_num_threads(2)              # an explicit setting wins over the runtime's
        try:
            assert fo.get_num_threads() == 2
        finally:
            fo.set_num_threads(0)
        assert fo.get_num_threads() == 1
