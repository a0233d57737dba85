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


# SGD option combinations that no loop instance of csrc/kernels.c is specialized for (fastopt's
# Python layer never sends them), each with the specialized combination it must equal: the
# extra bit has no effect there (FIRST, NESTEROV and SUTSKEVER need MOMENTUM; the Sutskever
# form has no first-step rule).
M, S, N, FIRST = _kernels.MOMENTUM, _kernels.SUTSKEVER, _kernels.NESTEROV, _kernels.FIRST
GENERIC_SGD = [(FIRST, 0), (N, 0), (S, 0), (S | N | FIRST, 0), (M | S | FIRST, M | S),
               (M | S | N | FIRST, M | S | N)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("generic,special", GENERIC_SGD,
                         ids=[f"{g}-as-{s}" for g, s in GENERIC_SGD])
def test_generic_loop_matches_specialized_one(generic, special, dtype, parallel_small):
    """An option combination without its own loop instance runs the generic loop: with
    momentum, weight decay and maximize in play it gives bit for bit the specialized loop's
    result, over several steps, on 1 and 2 threads; the specialized result follows the
    float64 reference."""
    lr, mu, wd = 0.05, 0.9, 0.01
    results = {}
    for threads in (1, 2):
        _kernels.set_num_threads(threads)
        for flags in (generic, special):
            params = _unaligned(SIZES, dtype, 0)
            bufs = _unaligned(SIZES, dtype, 1)
            plan = _kernels.Plan(params)
            plan.set_state(0, bufs)
            for t in range(3):
                _kernels.sgd(plan, _unaligned(SIZES, dtype, 100 + t, offset=3), lr, mu, 0.0, wd,
                             flags | _kernels.MAXIMIZE)
            results[threads, flags] = [a.copy() for a in params + bufs]
    for threads in (1, 2):
        for a, b in zip(results[threads, generic], results[threads, special]):
            np.testing.assert_array_equal(a, b)
    hyper = dict(lr=lr, momentum=mu if special & M else 0.0, weight_decay=wd, maximize=True,
                 sutskever=bool(special & S), nesterov=bool(special & N))
    ref = ReferenceOptimizer("sgd", [dict(hyper, params=_unaligned(SIZES, np.float64, 0))])
    if special & M:       # the run starts from the given buffers, not torch's first step
        ref.states[0] = [{"momentum_buffer": b} for b in _unaligned(SIZES, np.float64, 1)]
    for t in range(3):
        ref.step(_unaligned(SIZES, np.float64, 100 + t, offset=3))
    tol = 1e-5 if dtype == np.float32 else 1e-12
    for a, b in zip(results[2, special], ref.params):
        np.testing.assert_allclose(a, b, rtol=tol, atol=tol)
    if special & M:
        for a, s in zip(results[2, special][len(SIZES):], ref.states[0]):
            np.testing.assert_allclose(a, s["momentum_buffer"], rtol=tol, atol=tol)


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
