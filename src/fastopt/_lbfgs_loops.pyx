# cython: language_level=3, boundscheck=False, wraparound=False
"""Binding of L-BFGS's two-loop recursion (csrc/lbfgs.c): check the buffers, release the GIL,
call C. Used by fastopt._lbfgs.History; internal."""
import numpy as np
cimport numpy as cnp

from fastopt import _kernels
from libc.stdint cimport int64_t

cnp.import_array()

cdef extern from "fastopt/lbfgs.h" nogil:
    int fo_lbfgs_two_loop_f32(const float *, int64_t, const int64_t *, int64_t, const double *,
                              const float *, float *, double, double *, int64_t, int)
    int fo_lbfgs_two_loop_f64(const double *, int64_t, const int64_t *, int64_t,
                              const double *, const double *, double *, double, double *,
                              int64_t, int)


def two_loop(cnp.ndarray hist, cnp.ndarray order, cnp.ndarray ro, cnp.ndarray g,
             cnp.ndarray d, double h_diag, cnp.ndarray al, int threads=1):
    """d = -H g over the pairs hist[order[0]], ..., hist[order[-1]] (oldest first); al[i]: the
    first loop's coefficients. hist: (size, 2, n), g and d: (n,), all C-contiguous of one
    float dtype; order: int64 slots; ro: float64 (size,); al: float64, >= len(order). Runs on
    up to `threads` threads above the parallel threshold, with the same result on any number;
    returns the number that ran it."""
    cdef int64_t k = order.shape[0], size = hist.shape[0], n = g.shape[0], i
    if hist.ndim != 3 or hist.shape[1] != 2 or hist.shape[2] != n or d.shape[0] != n \
            or g.ndim != 1 or d.ndim != 1 or hist.dtype != g.dtype or d.dtype != g.dtype \
            or order.dtype != np.int64 or ro.dtype != np.float64 or al.dtype != np.float64 \
            or ro.shape[0] < size or al.shape[0] < k or k < 1:
        raise ValueError("two_loop: inconsistent buffers")
    for a in (hist, order, ro, g, d, al):
        if not a.flags.c_contiguous:
            raise ValueError("two_loop: buffers must be C-contiguous")
    if not d.flags.writeable or not al.flags.writeable:
        raise ValueError("two_loop: d and al must be writable")
    cdef const int64_t *po = <const int64_t *>cnp.PyArray_DATA(order)
    for i in range(k):
        if po[i] < 0 or po[i] >= size:
            raise ValueError("two_loop: slot out of range")
    cdef void *ph = cnp.PyArray_DATA(hist)
    cdef void *pg = cnp.PyArray_DATA(g)
    cdef void *pd = cnp.PyArray_DATA(d)
    cdef const double *pr = <const double *>cnp.PyArray_DATA(ro)
    cdef double *pa = <double *>cnp.PyArray_DATA(al)
    cdef int64_t threshold = _kernels.get_parallel_threshold()
    cdef int nt = threads if threads > 0 else 1
    cdef int ran = 0
    if g.dtype == np.float64:
        with nogil:
            ran = fo_lbfgs_two_loop_f64(<const double *>ph, n, po, k, pr, <const double *>pg,
                                        <double *>pd, h_diag, pa, threshold, nt)
    elif g.dtype == np.float32:
        with nogil:
            ran = fo_lbfgs_two_loop_f32(<const float *>ph, n, po, k, pr, <const float *>pg,
                                        <float *>pd, h_diag, pa, threshold, nt)
    else:
        raise TypeError(f"two_loop: float32 or float64 buffers, got {g.dtype}")
    return ran


cdef extern from "fastopt/lbfgs.h" nogil:
    int fo_lbfgs_pair_f32(const float *, float *, const float *, double, float *, float *,
                          int64_t, double *, int64_t, int)
    int fo_lbfgs_pair_f64(const double *, double *, const double *, double, double *,
                          double *, int64_t, double *, int64_t, int)
    int fo_lbfgs_slope_f32(const float *, const float *, int64_t, double *, int64_t, int)
    int fo_lbfgs_slope_f64(const double *, const double *, int64_t, double *, int64_t, int)
    int fo_lbfgs_move_f32(float *, const float *, double, float *, int64_t, int64_t, int)
    int fo_lbfgs_move_f64(double *, const double *, double, double *, int64_t, int64_t, int)
    double fo_lbfgs_amax_f32(const float *, int64_t, int64_t, int)
    double fo_lbfgs_amax_f64(const double *, int64_t, int64_t, int)


cdef int _kind(cnp.ndarray a, cnp.ndarray like, str name, bint writable) except -1:
    """0 for float32, 1 for float64, after checking `a` against `like` (the first vector)."""
    if a.ndim != 1 or a.shape[0] != like.shape[0] or a.dtype != like.dtype:
        raise ValueError(f"{name}: a vector like the others ({like.shape[0]} x {like.dtype}), "
                         f"got shape {(<object>a).shape} x {a.dtype}")
    if not a.flags.c_contiguous or (writable and not a.flags.writeable):
        raise ValueError(f"{name}: must be C-contiguous" + (" and writable" if writable else ""))
    if a.dtype == np.float64:
        return 1
    if a.dtype == np.float32:
        return 0
    raise TypeError(f"{name}: float32 or float64, got {a.dtype}")


def pair(cnp.ndarray g, cnp.ndarray pg, cnp.ndarray d, double t, cnp.ndarray s,
         cnp.ndarray y, int threads=1):
    """One pass: y = g - pg, s = t d, then pg = g; returns (y . s, y . y) (summed in the
    vectors' dtype, the same bits on any number of threads)."""
    cdef int f64 = _kind(g, g, "g", False)
    _kind(pg, g, "pg", True); _kind(d, g, "d", False)
    _kind(s, g, "s", True); _kind(y, g, "y", True)
    cdef double sums[2]
    cdef int64_t n = g.shape[0], threshold = _kernels.get_parallel_threshold()
    cdef int nt = threads if threads > 0 else 1
    cdef void *pgv = cnp.PyArray_DATA(g)
    cdef void *ppg = cnp.PyArray_DATA(pg)
    cdef void *pd = cnp.PyArray_DATA(d)
    cdef void *ps = cnp.PyArray_DATA(s)
    cdef void *py = cnp.PyArray_DATA(y)
    with nogil:
        if f64:
            fo_lbfgs_pair_f64(<const double *>pgv, <double *>ppg, <const double *>pd, t,
                              <double *>ps, <double *>py, n, sums, threshold, nt)
        else:
            fo_lbfgs_pair_f32(<const float *>pgv, <float *>ppg, <const float *>pd, t,
                              <float *>ps, <float *>py, n, sums, threshold, nt)
    return sums[0], sums[1]


def slope(cnp.ndarray g, cnp.ndarray d, int threads=1):
    """(g . d, max |d|), one pass (max |d| is NaN when d has a NaN)."""
    cdef int f64 = _kind(g, g, "g", False)
    _kind(d, g, "d", False)
    cdef double out[2]
    cdef int64_t n = g.shape[0], threshold = _kernels.get_parallel_threshold()
    cdef int nt = threads if threads > 0 else 1
    cdef void *pgv = cnp.PyArray_DATA(g)
    cdef void *pd = cnp.PyArray_DATA(d)
    with nogil:
        if f64:
            fo_lbfgs_slope_f64(<const double *>pgv, <const double *>pd, n, out, threshold, nt)
        else:
            fo_lbfgs_slope_f32(<const float *>pgv, <const float *>pd, n, out, threshold, nt)
    return out[0], out[1]


def move(cnp.ndarray p, cnp.ndarray d, double t, saved=None, int threads=1):
    """saved = p (when given), then p += t d (one fma per element)."""
    cdef int f64 = _kind(p, p, "p", True)
    _kind(d, p, "d", False)
    cdef void *psv = NULL
    if saved is not None:
        _kind(saved, p, "saved", True)
        psv = cnp.PyArray_DATA(saved)
    cdef int64_t n = p.shape[0], threshold = _kernels.get_parallel_threshold()
    cdef int nt = threads if threads > 0 else 1
    cdef void *pp = cnp.PyArray_DATA(p)
    cdef void *pd = cnp.PyArray_DATA(d)
    with nogil:
        if f64:
            fo_lbfgs_move_f64(<double *>pp, <const double *>pd, t, <double *>psv, n,
                              threshold, nt)
        else:
            fo_lbfgs_move_f32(<float *>pp, <const float *>pd, t, <float *>psv, n, threshold, nt)


def amax(cnp.ndarray x, int threads=1):
    """max |x_i| (NaN when x has a NaN, 0.0 when empty), one pass."""
    cdef int f64 = _kind(x, x, "x", False)
    cdef int64_t n = x.shape[0], threshold = _kernels.get_parallel_threshold()
    cdef int nt = threads if threads > 0 else 1
    cdef void *px = cnp.PyArray_DATA(x)
    cdef double m
    with nogil:
        if f64:
            m = fo_lbfgs_amax_f64(<const double *>px, n, threshold, nt)
        else:
            m = fo_lbfgs_amax_f32(<const float *>px, n, threshold, nt)
    return m
