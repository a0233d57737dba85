"""``step(grads, nonfinite=...)`` on CuPy arrays (needs a GPU): the same decisions and numbers as
on the CPU. Skipped with the reason without a GPU; run on a GPU machine with
``python -m pytest tests/test_nonfinite_cuda.py``.
"""
import numpy as np
import pytest

import fastopt as fo
from cases import CASES
from fastopt import cuda
from fastopt._specs import SPECS

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not cuda.has_gpu(), reason="needs CuPy and a CUDA GPU "
                       "(pip install 'fastopt[gpu]'); none found on this machine"),
]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name", list(SPECS))
def test_skip_raise_ignore_on_gpu_match_cpu(name, dtype):
    import cupy as cp
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((5, 3)).astype(dtype), rng.standard_normal(40001).astype(dtype)]
    gpu = [cp.asarray(p) for p in params]
    cls = getattr(fo, SPECS[name].class_name)
    hyper = CASES[name][-1]
    groups = lambda ps: [{"params": ps[:1]}, {"params": ps[1:], "lr": hyper["lr"] / 2}]  # noqa: E731
    cpu_opt, gpu_opt = cls(groups(params), **hyper), cls(groups(gpu), **hyper)
    for t in range(6):
        g = [rng.standard_normal(p.shape).astype(dtype) for p in params]
        if t in (1, 3):
            g[t % 2].reshape(-1)[-1] = np.nan if t == 1 else -np.inf
        gg = [cp.asarray(x) for x in g]
        before = [a.get() for a in gpu]
        if t == 3:
            with pytest.raises(ValueError, match=r"grads\[1\] contains NaN or Inf"):
                gpu_opt.step(gg, nonfinite="raise")
            assert all(np.array_equal(a.get(), b) for a, b in zip(gpu, before))
        applied = gpu_opt.step(gg, nonfinite="skip")
        assert applied is (t not in (1, 3)) and cpu_opt.step(g, nonfinite="skip") is applied
        if not applied:
            assert all(np.array_equal(a.get(), b) for a, b in zip(gpu, before))
    for a, b in zip(gpu, params):
        err = float(np.max(np.abs(a.get() - b))) / max(1.0, float(np.max(np.abs(b))))
        assert err < (1e-5 if dtype == np.float32 else 1e-12)
    assert cpu_opt.state_dict()["state"][0]["step"] == gpu_opt.state_dict()["state"][0]["step"] == 4
    g = [cp.asarray(np.full(p.shape, np.nan, dtype)) for p in params]
    assert gpu_opt.step(g) is True                 # "ignore": NaN reaches the parameters
    assert bool(cp.isnan(gpu[1]).all())
