"""Build one contender's step for the benchmark suites (a thin layer over bench/impls.py)."""
import pytest

from fastopt import _kernels

import impls

CONTENDERS = ("fastopt", "numpy_best", "numpy_textbook", "torch")
#: thread counts of the suites: 1 and all (OMP_NUM_THREADS or the machine's CPUs)
THREADS = sorted({1, max(1, _kernels.get_num_threads())})


def make(contender, name, params, grads):
    """The zero-argument step of `contender`; skips the benchmark if it is unavailable."""
    if contender == "fastopt":
        return impls.make_fastopt(name, params, grads)
    if contender == "fastopt_flat":
        return impls.make_fastopt_flat(name, params, grads)
    if contender == "numpy_best":
        step = impls.make_numpy(name, params, grads, "best")
        if step is None:
            pytest.skip(f"no hand-tuned NumPy step for {name}")
        return step
    if contender == "numpy_textbook":
        return impls.make_numpy(name, params, grads, "textbook")
    if contender.startswith("torch"):
        variants = impls.torch_variants(name)
        if not variants:
            pytest.skip("torch is not installed")
        variant = contender.partition("_")[2] or variants[0]   # "torch": fused or foreach
        if variant not in variants:
            pytest.skip(f"torch has no {variant} {name}")
        return impls.make_torch(name, params, grads, variant)
    raise ValueError(f"unknown contender {contender!r}")
