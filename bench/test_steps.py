"""One tensor, warm cache: every optimizer x contender x size x threads.

Group: "<optimizer> <dtype> N=<n> threads=<t>". torch runs its fused step where it has one,
otherwise foreach.
"""
import pytest

import impls
from contenders import THREADS, CONTENDERS, make

SIZES = (10_000, 1_000_000, 10_000_000)


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("n", SIZES)
@pytest.mark.parametrize("contender", CONTENDERS)
@pytest.mark.parametrize("name", impls.OPTIMIZERS)
def test_step(benchmark, inputs, name, contender, n, threads):
    params, grads = inputs([(n,)])
    step = make(contender, name, params, grads)
    benchmark.group = f"{name} float32 N={n} threads={threads}"
    benchmark.extra_info.update(optimizer=name, n=n, threads=threads, contender=contender,
                                bytes_per_step=impls.TRAFFIC[name] * 4 * n)
    step()
    benchmark(step)


@pytest.mark.parametrize("threads", THREADS[-1:], indirect=True)
@pytest.mark.parametrize("contender", ["fastopt", "torch"])
@pytest.mark.parametrize("name", ["adam", "sgd"])
def test_step_float64(benchmark, inputs, name, contender, threads):
    n = 10_000_000
    params, grads = inputs([(n,)], "float64")
    step = make(contender, name, params, grads)
    benchmark.group = f"{name} float64 N={n} threads={threads}"
    step()
    benchmark(step)
