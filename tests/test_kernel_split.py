"""The parallel split of the C loops: every element updated exactly once, on any thread count.

The kernels split a group's concatenated segments at cache-line-aligned element boundaries
and specialize each optimizer's loop per option combination. These tests force the parallel
path on small inputs (threshold lowered) over many segments that start at unaligned addresses,
and check that 2 threads give bit-for-bit the serial result, and both the float64 reference.
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _kernels
from fastopt._specs import SPECS
from cases import CASES, EXTRA_CASES
from reference import ReferenceOptimizer

SIZES = [1, 15, 16, 17, 63, 100, 129, 1000, 3, 257]


@pytest.fixture
def parallel_small():
    """Threshold 16 elements, so every test group takes the parallel path with 2 threads."""
    saved_threshold, saved_threads = _kernels.get_parallel_threshold(), _kernels.get_num_threads()
    _kernels.set_parallel_threshold(16)
    yield
    _kernels.set_parallel_threshold(saved_threshold)
    _kernels.set_num_threads(saved_threads)


def _unaligned(sizes, dtype, seed, offset=1):
    """Arrays carved from one buffer with a gap of `offset` elements before each one."""
    rng = np.random.default_rng(seed)
    buffer = np.empty(sum(sizes) + offset * (len(sizes) + 1), dtype)
    out, start = [], offset
    for n in sizes:
        a = buffer[start:start + n]
        a[...] = rng.standard_normal(n)
        out.append(a)
        start += n + offset
    return out


def _all_cases():
    for name in sorted(SPECS):
        for i, hyper in enumerate(CASES.get(name, []) + EXTRA_CASES.get(name, [])):
            yield pytest.param(name, hyper, id=f"{name}-{i}")


@pytest.mark.parametrize("name, hyper", list(_all_cases()))
def test_two_threads_equal_serial_and_reference(name, hyper, parallel_small):
    cls = getattr(fo, SPECS[name].class_name)
    results = {}
    for dtype in (np.float32, np.float64):
        for threads in (1, 2):
            _kernels.set_num_threads(threads)
            params = _unaligned(SIZES, dtype, 0)
            opt = cls(params, **hyper)
            for t in range(3):
                opt.step(_unaligned(SIZES, dtype, 100 + t, offset=3))
            results[dtype, threads] = [p.copy() for p in params]
        for a, b in zip(results[dtype, 1], results[dtype, 2]):
            np.testing.assert_array_equal(a, b)
    full = {**SPECS[name].defaults, **hyper}
    ref = ReferenceOptimizer(name, [dict(full, params=_unaligned(SIZES, np.float64, 0))])
    for t in range(3):
        ref.step(_unaligned(SIZES, np.float64, 100 + t, offset=3))
    for a, b in zip(results[np.float64, 2], ref.params):
        np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-14)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("offset", [0, 1, 5])
def test_stream_kernel_touches_each_element_once(dtype, offset, parallel_small):
    for threads in (1, 2):
        _kernels.set_num_threads(threads)
        for n in (1, 16, 17, 31, 33, 64, 1000, 4099):
            base = np.zeros(n + offset, dtype)
            b = base[offset:]
            b[...] = 1.0
            c = np.ones(n, dtype)
            _kernels.stream_axpy(b, c, 0.5)
            np.testing.assert_array_equal(b, np.full(n, 1.5, dtype))
            assert np.all(base[:offset] == 0)


def test_generic_loop_matches_specialized_one():
    """An option combination without its own loop instance runs the generic loop."""
    rng = np.random.default_rng(7)
    g = [rng.standard_normal(100)]
    a, b = [rng.standard_normal(100)], None
    b = [a[0].copy()]
    plan_a, plan_b = _kernels.Plan(a), _kernels.Plan(b)
    # FIRST without MOMENTUM is never sent by fastopt's Python layer: plain SGD either way.
    _kernels.sgd(plan_a, g, 0.1, 0.0, 0.0, 0.0, 0)
    _kernels.sgd(plan_b, g, 0.1, 0.0, 0.0, 0.0, _kernels.FIRST)
    np.testing.assert_array_equal(a[0], b[0])


def test_vector_isa_is_reported():
    assert _kernels.vector_isa().split()[0] in ("avx512f", "avx2", "baseline")
    assert isinstance(_kernels.has_isa_clones(), bool)


# sizes whose sum (1,000,000) is above the default parallel threshold, so the split cuts
# these unaligned segments at the default settings
BIG_SIZES = [300_001, 17, 65_536, 1, 200_003, 99_999, 334_443]


@pytest.mark.parametrize("name", sorted(SPECS))
def test_large_unaligned_groups_equal_serial_bit_for_bit(name):
    cls = getattr(fo, SPECS[name].class_name)
    hyper = (CASES.get(name) or [{}])[-1]
    saved = _kernels.get_num_threads()
    try:
        for dtype in (np.float32, np.float64):
            results = {}
            for threads in (1, 2):
                _kernels.set_num_threads(threads)
                params = _unaligned(BIG_SIZES, dtype, 0)
                opt = cls(params, **hyper)
                for t in range(2):
                    opt.step(_unaligned(BIG_SIZES, dtype, 100 + t, offset=3))
                results[threads] = params
            for a, b in zip(results[1], results[2]):
                np.testing.assert_array_equal(a, b)
    finally:
        _kernels.set_num_threads(saved)


@pytest.mark.parametrize("threads", [2, 3, 7])
def test_stream_kernel_large_sizes_touch_each_element_once(threads):
    saved = _kernels.get_num_threads()
    try:
        _kernels.set_num_threads(threads)
        for n in (1_000_003, 262_145):
            base = np.zeros(n + 1, np.float32)
            b = base[1:]
            b[...] = 1.0
            _kernels.stream_axpy(b, np.ones(n, np.float32), 0.5)
            np.testing.assert_array_equal(b, np.full(n, 1.5, np.float32))
            assert base[0] == 0
    finally:
        _kernels.set_num_threads(saved)
