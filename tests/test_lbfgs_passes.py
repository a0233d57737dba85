"""The C passes around L-BFGS's recursion (fastopt._lbfgs_loops: pair, slope, move, amax)
against NumPy float64 references, the same bits on any number of threads, and bad buffers
refused."""
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, strategies as st

import fastopt as fo
from fastopt import _lbfgs_loops as loops

DTYPES = [np.float32, np.float64]


def _vectors(seed, n, dtype, count):
    rng = np.random.default_rng(seed)
    return [(rng.standard_normal(n) * 10.0 ** rng.integers(-3, 3)).astype(dtype)
            for _ in range(count)]


def _sum_tol(terms, dtype):
    """The bound on a dot product's rounding error in `dtype` (any summation order)."""
    return 2 * len(terms) * np.finfo(dtype).eps * float(np.abs(terms).sum()) + 1e-300


def _ulps(a, b):
    a, b = np.asarray(a), np.asarray(b)
    return np.abs(a - b) / np.spacing(np.maximum(np.abs(a), np.abs(b)).astype(a.dtype))


@given(n=st.integers(1, 20_000), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES), t=st.floats(-4.0, 4.0, allow_subnormal=False))
def test_pair_matches_numpy(n, seed, dtype, t):
    g, pg, d = _vectors(seed, n, dtype, 3)
    g0, pg0 = g.copy(), pg.copy()
    s, y = np.full(n, np.nan, dtype), np.full(n, np.nan, dtype)
    ys, yy = loops.pair(g, pg, d, t, s, y)
    assert np.array_equal(y, g0 - pg0)                         # elementwise: exact
    assert np.array_equal(s, d * dtype(t))
    assert np.array_equal(pg, g0) and np.array_equal(g, g0)
    y64, s64 = y.astype(np.float64), s.astype(np.float64)
    assert abs(ys - float(y64 @ s64)) <= _sum_tol(y64 * s64, dtype)
    assert abs(yy - float(y64 @ y64)) <= _sum_tol(y64 * y64, dtype)


@given(n=st.integers(1, 20_000), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES))
def test_slope_matches_numpy(n, seed, dtype):
    g, d = _vectors(seed, n, dtype, 2)
    gd, dmax = loops.slope(g, d)
    g64, d64 = g.astype(np.float64), d.astype(np.float64)
    assert abs(gd - float(g64 @ d64)) <= _sum_tol(g64 * d64, dtype)
    assert dmax == float(np.abs(d).max())
    assert loops.amax(d) == dmax


@given(n=st.integers(1, 20_000), seed=st.integers(0, 2**32 - 1),
       dtype=st.sampled_from(DTYPES), t=st.floats(-4.0, 4.0, allow_subnormal=False),
       save=st.booleans())
def test_move_is_one_fma_per_element(n, seed, dtype, t, save):
    p, d = _vectors(seed, n, dtype, 2)
    p0 = p.copy()
    saved = np.full(n, np.nan, dtype) if save else None
    loops.move(p, d, t, saved)
    if save:
        assert np.array_equal(saved, p0)
    tt = float(dtype(t))
    if dtype == np.float32:     # float64 holds the product exactly, the sum but for a rounding
        exact = (p0.astype(np.float64) + d.astype(np.float64) * tt).astype(np.float32)
        assert np.max(_ulps(p, exact), initial=0) <= 1
        assert np.mean(p == exact) > 0.999
    else:                       # the correctly rounded p0 + d t, exact rationals
        for i in np.random.default_rng(seed).integers(0, n, min(n, 200)):
            want = float(Fraction(float(p0[i])) + Fraction(float(d[i])) * Fraction(tt))
            assert p[i] == want, (i, p0[i], d[i], tt)


@pytest.mark.parametrize("dtype", DTYPES)
def test_nan_and_empty(dtype):
    d = np.arange(1000, dtype=dtype) - 500
    assert loops.amax(d) == 500 and loops.slope(d, d)[1] == 500
    d[700] = np.nan
    assert np.isnan(loops.amax(d)) and np.isnan(loops.slope(d, d)[1])
    assert loops.amax(np.zeros(0, dtype)) == 0.0


@pytest.mark.parametrize("dtype", DTYPES)
def test_threads_give_the_same_bits(dtype):
    n = 300_001
    g, pg, d = _vectors(7, n, dtype, 3)
    threshold = fo._kernels.get_parallel_threshold()
    out = []
    try:
        fo._kernels.set_parallel_threshold(1000)
        for threads in (1, 2, 3):
            pgc, s, y, p, saved = pg.copy(), np.empty_like(g), np.empty_like(g), g.copy(), \
                np.empty_like(g)
            sums = loops.pair(g, pgc, d, 0.7, s, y, threads)
            slope = loops.slope(g, d, threads)
            loops.move(p, d, 0.3, saved, threads)
            out.append((sums, slope, loops.amax(y, threads), s.tobytes(), y.tobytes(),
                        p.tobytes()))
    finally:
        fo._kernels.set_parallel_threshold(threshold)
    assert out[1] == out[0] and out[2] == out[0]


def test_bad_buffers_are_refused():
    a, b = np.zeros(10), np.zeros(10)
    with pytest.raises(ValueError, match="pg"):
        loops.pair(a, np.zeros(9), b, 1.0, np.zeros(10), np.zeros(10))
    with pytest.raises(ValueError, match="d"):
        loops.slope(a, np.zeros(10, np.float32))
    with pytest.raises(ValueError, match="p"):
        loops.move(np.zeros(20)[::2], b, 1.0)
    ro = np.zeros(10)
    ro.flags.writeable = False
    with pytest.raises(ValueError, match="saved"):
        loops.move(a, b, 1.0, ro)
    with pytest.raises(TypeError, match="float32 or float64"):
        loops.amax(np.zeros(10, np.int64))
