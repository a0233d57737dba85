"""Huge arrays: element indices past 2**31 (64-bit indexing in the loops, the thread split and
the all-finite check). Marked slow (about 9 GB of memory); run by scripts/run_slow_tests.sh.
"""
import os
import resource
import time

import numpy as np
import pytest

import fastopt as fo

N = 2**31 + 17


def _available_bytes():
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):  # pragma: no cover
        return 0


@pytest.mark.slow
@pytest.mark.skipif(_available_bytes() < 10 * 2**30, reason="needs about 10 GiB of free memory")
@pytest.mark.parametrize("threads", [2, 1])
def test_sgd_steps_a_float32_array_of_2_pow_31_plus_17_elements(threads):
    fo.set_num_threads(threads)
    try:
        t0 = time.perf_counter()
        p = np.ones(N, np.float32)                 # 8.6 GB, written: resident
        g = np.zeros(N, np.float32)                # calloc'ed: untouched pages stay unbacked
        # marked elements before the last 16; the last 16 (indices 2**31 + 1 ...) get 1..16
        marks = {0: 1.0, 15: 1.0, 2**30 + 3: 4.0, 2**31 - 1: 2.0, 2**31: 3.0}
        for i, v in marks.items():
            g[i] = v
        g[N - 16:] = np.arange(1, 17, dtype=np.float32)
        t1 = time.perf_counter()
        assert fo.SGD([p], lr=0.25).step([g]) is True
        t2 = time.perf_counter()
        for i, v in marks.items():
            assert p[i] == np.float32(1 - 0.25 * v), i
        np.testing.assert_array_equal(p[N - 16:], 1 - 0.25 * np.arange(1, 17, dtype=np.float32))
        for i in (1, 16, 2**30, 2**31 - 2):
            assert p[i] == 1.0, i                   # zero gradient: unchanged
        # the all-finite pass reads all N elements and finds the last one
        g[N - 1] = np.nan
        before = p[N - 20:].copy()
        t3 = time.perf_counter()
        assert fo.SGD([p], lr=0.25).step([g], nonfinite="skip") is False
        t4 = time.perf_counter()
        np.testing.assert_array_equal(p[N - 20:], before)
        rss = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
        print(f"\n[huge] threads={threads} n={N}: fill {t1 - t0:.1f} s, SGD step {t2 - t1:.2f} s, "
              f"skip check {t4 - t3:.2f} s, peak RSS {rss / 2**30:.2f} GiB")
    finally:
        fo.set_num_threads(0)
