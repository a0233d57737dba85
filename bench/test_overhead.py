"""Call overhead: a whole `opt.step([g])`, Python included, at N=1 and N=1e4 (one thread).

Group: "overhead N=<n>".
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt._specs import SPECS

import impls


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize("n", [1, 10_000])
@pytest.mark.parametrize("name", impls.OPTIMIZERS)
def test_step_call(benchmark, name, n, threads):
    w = np.ones(n, np.float32)
    g = [np.full(n, 0.01, np.float32)]
    opt = getattr(fo, SPECS[name].class_name)([w], **impls.OVERRIDES.get(name, {}))
    opt.step(g)
    benchmark.group = f"overhead N={n}"
    benchmark(opt.step, g)


@pytest.mark.parametrize("threads", [1], indirect=True)
@pytest.mark.parametrize("variant", ["fused", "foreach"])
def test_torch_adam_call(benchmark, variant, threads):
    torch = pytest.importorskip("torch")
    p = torch.nn.Parameter(torch.ones(10_000))
    p.grad = torch.full((10_000,), 0.01)
    opt = torch.optim.Adam([p], **{variant: True})
    opt.step()
    benchmark.group = "overhead N=10000"
    benchmark(opt.step)
