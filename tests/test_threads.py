"""Threads: kernels release the GIL, optimizers on different threads step at the same time, one
optimizer stepped from two threads is serialized by its lock, and threadpoolctl controls the
OpenMP runtime that fastopt's kernels use.

No assertion depends on timing. Overlap is shown by an observer thread that, while it holds
the GIL, sees a kernel half-way: with SGD(lr=1) on a gradient of ones every step lowers each
element by exactly 1, and a one-thread kernel writes in ascending order, so reading element 0
and then the last element and finding the last one exactly 1 higher proves that a step was
running between the two reads. A kernel holding the GIL could never be seen half-way by
another Python thread. The steppers keep stepping until the observer has seen what it waits
for, so the outcome does not depend on how the OS and the GIL schedule the threads (the one
bound, MAX_STEPS steps per stepper, is hundreds of times what is needed).
"""
import os
import sys
import threading

import numpy as np
import pytest

import fastopt as fo
from reference import ReferenceOptimizer

MAX_STEPS = 2000


@pytest.fixture
def one_kernel_thread():
    """Each kernel on its calling thread, so it writes its array front to back."""
    fo.set_num_threads(1)
    yield
    fo.set_num_threads(0)


@pytest.fixture
def quick_gil_handoff():
    """A short GIL switch interval, so a stepper leaving a kernel gets the GIL back from the
    busy observer within ~0.1 ms instead of 5 ms (keeps steppers busy; results do not depend
    on it)."""
    old = sys.getswitchinterval()
    sys.setswitchinterval(1e-4)
    yield
    sys.setswitchinterval(old)


def _countdown_optimizer(n):
    """An SGD(lr=1) optimizer on ones(n) and its gradient of ones: step k leaves 1 - k."""
    p = np.ones(n, np.float32)
    return p, fo.SGD([p], lr=1.0), np.ones(n, np.float32)


def test_two_optimizers_step_at_the_same_time_on_two_threads(one_kernel_thread, quick_gil_handoff):
    n = 1 << 22
    (pa, opt_a, g), (pb, opt_b, _) = _countdown_optimizer(n), _countdown_optimizer(n)
    params, opts = [pa, pb], [opt_a, opt_b]
    steps = [0, 0]
    stop = threading.Event()
    start = threading.Barrier(3)

    def stepper(k):
        start.wait()
        while not stop.is_set() and steps[k] < MAX_STEPS:
            opts[k].step([g])
            steps[k] += 1

    threads = [threading.Thread(target=stepper, args=(k,)) for k in range(2)]
    for t in threads:
        t.start()
    start.wait()
    seen = False
    try:
        while not seen and any(t.is_alive() for t in threads):
            # in this order: at the read of a1, the step that wrote a0 is still running in A
            # (a1 = a0 + 1) and the one that wrote b0 is still running in B (b1 = b0 + 1)
            a0, b0, a1, b1 = pa[0], pb[0], pa[-1], pb[-1]
            seen = a1 == a0 + 1 and b1 == b0 + 1
    finally:
        stop.set()
        for t in threads:
            t.join()
    for p, k in zip(params, steps):
        assert (p == 1 - k).all(), "a concurrent step computed a wrong result"
    assert seen, (f"never saw both kernels in progress while this thread held the GIL "
                  f"({steps} steps)")


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


def _split_seen(n_steps, until_seen):
    """Step an SGD(lr=1) countdown on this thread (the one whose OpenMP settings apply) while
    an observer thread watches the two elements on either side of the middle; returns whether
    it ever saw the upper one a step ahead of the lower one. A one-thread kernel writes in
    ascending order, so it never shows that; a team of two starts its second thread at the
    middle, so it does."""
    n = 1 << 22
    p, opt, g = _countdown_optimizer(n)
    lo, hi = n // 2 - 4096, n // 2 + 4096
    done, seen = threading.Event(), threading.Event()

    def observer():
        while not done.is_set():
            upper = p[hi]            # in this order: the lower one is read after the upper one
            if p[lo] > upper:
                seen.set()

    t = threading.Thread(target=observer)
    t.start()
    steps = 0
    try:
        while steps < n_steps and not (until_seen and seen.is_set()):
            opt.step([g])
            steps += 1
    finally:
        done.set()
        t.join()
    assert (p == 1 - steps).all()
    return seen.is_set()


@needs_openmp
def test_threadpool_limits_bounds_fastopt_threads():
    fo.set_num_threads(0)                  # follow the OpenMP runtime
    before = fo.get_num_threads()
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert fo.get_num_threads() == 1
    assert fo.get_num_threads() == before
    with threadpoolctl.threadpool_limits(limits=1):
        fo.set_num_threads(2)              # an explicit setting wins over the runtime's
        try:
            assert fo.get_num_threads() == 2
        finally:
            fo.set_num_threads(0)
        assert fo.get_num_threads() == 1


CPUS = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


@needs_openmp
@pytest.mark.skipif(CPUS < 2, reason="needs two CPUs to run a team of two kernel threads at once")
def test_kernels_use_the_thread_count_threadpoolctl_and_set_num_threads_give(quick_gil_handoff):
    """Under threadpool_limits(1) a kernel really runs on one thread (never seen writing
    the upper half ahead of the lower one); an explicit fo.set_num_threads(2) under the same
    limit really runs two (seen doing so: the control that shows the observation works)."""
    fo.set_num_threads(0)
    with threadpoolctl.threadpool_limits(limits=1, user_api="openmp"):
        assert not _split_seen(200, until_seen=False), "a kernel ran with more than one thread"
        fo.set_num_threads(2)
        try:
            assert _split_seen(MAX_STEPS, until_seen=True), \
                "fo.set_num_threads(2) under a limit of 1: never saw a second kernel thread"
        finally:
            fo.set_num_threads(0)
