"""Lists of tensors: ResNet-50's 161 parameter shapes and 1000 tensors of 1000 (float32, warm).

fastopt_flat steps the same tensors as views of one buffer (fastopt.flatten).
Group: "<optimizer> <list> threads=<t>".
"""
import pytest

import impls
from contenders import THREADS, make

LISTS = {"resnet50": impls.RESNET50_SHAPES, "1000x1000": [(1000,)] * 1000}


@pytest.mark.parametrize("threads", THREADS, indirect=True)
@pytest.mark.parametrize("contender", ["fastopt", "fastopt_flat", "numpy_best", "torch"])
@pytest.mark.parametrize("label", list(LISTS))
@pytest.mark.parametrize("name", ["adam", "sgd", "rmsprop"])
def test_list(benchmark, inputs, name, label, contender, threads):
    params, grads = inputs(LISTS[label])
    step = make(contender, name, params, grads)
    benchmark.group = f"{name} {label} threads={threads}"
    step()
    benchmark(step)
