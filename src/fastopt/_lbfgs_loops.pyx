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
