"""Cold cache: the caches are evicted before every timed step (Adam, float32, all threads).

Group: "adam float32 N=<n> cold threads=<t>".
"""
import pytest

from fastopt.bench import Evictor

from contenders import THREADS, make


@pytest.fixture(scope="module")
def evict():
    return Evictor()


@pytest.mark.parametrize("threads", THREADS[-1:], indirect=True)
@pytest.mark.parametrize("n", [1_000_000, 10_000_000])
@pytest.mark.parametrize("contender", ["fastopt", "numpy_best", "torch"])
def test_cold(benchmark, inputs, evict, contender, n, threads):
    params, grads = inputs([(n,)])
    step = make(contender, "adam", params, grads)
    benchmark.group = f"adam float32 N={n} cold threads={threads}"
    step()
    benchmark.pedantic(step, setup=evict, rounds=9, iterations=1)
