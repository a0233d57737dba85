"""A step allocates nothing proportional to the parameter count.

tracemalloc sees NumPy's data allocations; after the first step (which creates the state), the
peak of 5 further steps on a 1e6-element parameter must stay under 64 KiB, for every optimizer
and option set and both dtypes.
"""
import tracemalloc

import numpy as np
import pytest

import fastopt as fo
from cases import CASES, EXTRA_CASES

CLASSES = fo.optim.first_order.CLASSES      # optimizer name -> class, one per table entry
ALL = [(n, h) for n in CLASSES for h in CASES[n] + EXTRA_CASES.get(n, [])]
N = 1_000_000


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,hyper", ALL, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL)])
def test_step_allocates_no_parameter_sized_memory(name, hyper, dtype):
    p = np.zeros(N, dtype)
    g = np.full(N, 0.25, dtype)
    opt = CLASSES[name]([p], **hyper)
    opt.step([g])                               # allocates the state once
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(5):
            opt.step([g])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, f"{name} {hyper}: peak {peak} bytes during steps"


def test_tracemalloc_sees_numpy_allocations():
    """The measurement above can fail: a parameter-sized temporary is visible."""
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        x = np.zeros(N, np.float32) * 2.0
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak >= x.nbytes
