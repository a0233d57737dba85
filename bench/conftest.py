"""pytest-benchmark suites of fastopt (not part of the test run; see bench/README.md).

    PYTHONPATH=src python -m pytest bench --benchmark-autosave          # save a run
    PYTHONPATH=src python -m pytest bench --benchmark-compare           # compare with the last

Each benchmark sets ``benchmark.group`` to the case (optimizer, dtype, size, threads), so the
contenders of one case are listed together and `--benchmark-compare` tracks each of them
across commits. Contenders come from bench/impls.py, as in `fastopt bench`.
"""
import gc

import numpy as np
import pytest

from fastopt import _kernels


@pytest.fixture(scope="session")
def inputs():
    """(shapes, dtype) -> (params, grads), one cached entry at a time."""
    cache = {}

    def get(shapes, dtype="float32"):
        key = (tuple(shapes), dtype)
        if key not in cache:
            cache.clear()
            gc.collect()
            rng = np.random.default_rng(0)
            cache[key] = ([rng.standard_normal(s, dtype=np.float32).astype(dtype) for s in shapes],
                          [(rng.standard_normal(s, dtype=np.float32) * 0.01).astype(dtype)
                           for s in shapes])
        return cache[key]
    return get


@pytest.fixture
def threads(request):
    """Set fastopt's and torch's thread count for one benchmark (parametrized indirectly)."""
    n = request.param
    saved = _kernels.get_num_threads()
    _kernels.set_num_threads(n)
    try:
        import torch
    except ImportError:
        torch = None
    if torch is not None:
        saved_torch = torch.get_num_threads()
        torch.set_num_threads(n)
    yield n
    _kernels.set_num_threads(saved)
    if torch is not None:
        torch.set_num_threads(saved_torch)
