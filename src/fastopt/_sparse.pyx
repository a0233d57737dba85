# cython: language_level=3
"""Cython binding of SparseAdam's row-sparse step (csrc/sparse_adam.c).

Design note
-----------
This module checks buffers, releases the GIL and calls C; the coalescing sort and the update
live in csrc/sparse_adam.c. Checks (all before anything is written): the parameter and its two
moment buffers are ndarrays of one dtype (float32 or float64), of one shape with at least one
axis, C-contiguous, aligned, writable, in native byte order, sharing no memory; the indices are
a 1-D C-contiguous int64 array; the values are a C-contiguous array of the parameter's dtype
and shape ``(len(indices), *param.shape[1:])`` sharing no memory with what is written. The C
step checks every index against the row count before it writes anything. The scratch of the
sort (3 * nnz + 1 int64) is allocated per call: proportional to the touched rows, never to the
parameter. Converting user input (index dtypes, non-contiguous values) is fastopt.sparse's job.
"""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.stdint cimport int64_t

from ._kernels cimport int_setting
from ._kernels import get_num_threads

cnp.import_array()


cdef extern from "fastopt/sparse_adam.h" nogil:
    enum: FO_SPARSE_OK
    enum: FO_SPARSE_BAD_INDEX
    ctypedef struct fo_sparse_adam_hp:
        double one_minus_beta1
        double one_minus_beta2
        double eps
        double neg_step_size
        int maximize
    int64_t fo_sparse_coalesce_order(const int64_t *idx, int64_t nnz, int64_t *scratch,
                                     int64_t *order)
    int fo_sparse_adam_step_f32(float *param, float *exp_avg, float *exp_avg_sq, int64_t n_rows,
                                int64_t row_len, const int64_t *indices, const float *values,
                                int64_t nnz, int64_t *scratch, const fo_sparse_adam_hp *hp,
                                int n_threads, int64_t *bad)
    int fo_sparse_adam_step_f64(double *param, double *exp_avg, double *exp_avg_sq,
                                int64_t n_rows, int64_t row_len, const int64_t *indices,
                                const double *values, int64_t nnz, int64_t *scratch,
                                const fo_sparse_adam_hp *hp, int n_threads, int64_t *bad)
    int64_t fo_sparse_parallel_threshold


# Touched elements below which a step runs on the calling thread.
_threshold = int_setting(&fo_sparse_parallel_threshold, "threshold")
get_parallel_threshold = _threshold.get
set_parallel_threshold = _threshold.set

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


cdef int _check_dense(object a, str what, bint written) except -1:
    if type(a) is not np.ndarray:
        raise TypeError(f"{what} must be a numpy.ndarray, got {type(a).__module__}."
                        f"{type(a).__qualname__}")
    cdef cnp.ndarray arr = a
    if not cnp.PyArray_IS_C_CONTIGUOUS(arr):
        raise ValueError(f"{what} must be C-contiguous")
    if not cnp.PyArray_ISALIGNED(arr):
        raise ValueError(f"{what} must be aligned")
    if written and not cnp.PyArray_ISWRITEABLE(arr):
        raise ValueError(f"{what} must be writable")
    return 0


def coalesce_order(indices):
    """(order, n_unique): the permutation torch's coalesce sorts the int64 `indices` with
    (order[k] is the position of the k-th entry in ascending order) and the distinct count."""
    _check_dense(indices, "indices", False)
    if indices.dtype != np.int64 or indices.ndim != 1:
        raise TypeError("indices must be a 1-D int64 array")
    cdef cnp.ndarray idx = indices
    cdef int64_t nnz = idx.shape[0]
    cdef cnp.ndarray order = np.empty(nnz, np.int64)
    cdef cnp.ndarray scratch = np.empty(3 * nnz + 1, np.int64)
    cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(idx)
    cdef int64_t *ps = <int64_t *>cnp.PyArray_DATA(scratch)
    cdef int64_t *po = <int64_t *>cnp.PyArray_DATA(order)
    cdef int64_t n
    with nogil:
        n = fo_sparse_coalesce_order(pi, nnz, ps, po)
    if n < 0:
        raise RuntimeError("fo_sparse_coalesce_order rejected its arguments")
    return order, int(n)


def check_step(param, exp_avg, exp_avg_sq, indices, values,
               names=("param", "exp_avg", "exp_avg_sq", "indices", "values")):
    """Check the arrays of one SparseAdam step (see the module docstring), every index in
    range included; TypeError/ValueError naming the array (`names`), nothing written."""
    pn, mn, vn, iname, valname = names
    _check_dense(param, pn, True)
    _check_dense(exp_avg, mn, True)
    _check_dense(exp_avg_sq, vn, True)
    _check_dense(indices, iname, False)
    _check_dense(values, valname, False)
    dtype = param.dtype
    if dtype not in _FLOATS or not dtype.isnative:
        raise TypeError(f"{pn} must be float32 or float64 (native byte order), got {dtype}")
    if param.ndim < 1:
        raise ValueError(f"{pn} must have at least one axis (rows are indexed along the "
                         "first), got a 0-d array")
    for a, what in ((exp_avg, mn), (exp_avg_sq, vn)):
        if a.dtype != dtype:
            raise TypeError(f"{what} has dtype {a.dtype}, expected {dtype} like {pn}")
        if a.shape != param.shape:
            raise ValueError(f"{what} has shape {a.shape}, expected {param.shape} like {pn}")
    if indices.dtype != np.int64 or indices.ndim != 1:
        raise TypeError(f"{iname} must be a 1-D int64 array, got {indices.ndim}-D {indices.dtype}")
    if values.dtype != dtype:
        raise TypeError(f"{valname} has dtype {values.dtype}, expected {dtype} like {pn}")
    expected = (indices.shape[0],) + param.shape[1:]
    if values.shape != expected:
        raise ValueError(f"{valname} has shape {values.shape}, expected {expected} (one row of "
                         f"{pn}'s shape {param.shape[1:]} per index)")
    written = ((param, pn), (exp_avg, mn), (exp_avg_sq, vn))
    for i, (a, an) in enumerate(written):
        for b, bn in written[i + 1:] + ((values, valname), (indices, iname)):
            if a.size and b.size and np.may_share_memory(a, b):
                raise ValueError(f"{an} shares memory with {bn}")
    if indices.shape[0]:
        lo, hi = int(indices.min()), int(indices.max())
        if lo < 0 or hi >= param.shape[0]:
            bad = int(np.flatnonzero((indices < 0) | (indices >= param.shape[0]))[0])
            raise ValueError(f"{iname}[{bad}] = {int(indices[bad])} is out of range for {pn} "
                             f"with {param.shape[0]} rows; nothing was updated")


def sparse_adam_step(param, exp_avg, exp_avg_sq, indices, values, double one_minus_beta1,
                     double one_minus_beta2, double eps, double neg_step_size, bint maximize,
                     names=("param", "exp_avg", "exp_avg_sq", "indices", "values"),
                     bint checked=False):
    """One SparseAdam step on one parameter, in place (see csrc/fastopt/sparse_adam.h).

    The arrays are checked first (`check_step`, unless `checked` says the caller just did);
    TypeError/ValueError naming them (`names`), with nothing written."""
    pn, mn, vn, iname, valname = names
    if not checked:
        check_step(param, exp_avg, exp_avg_sq, indices, values, names)
    dtype = param.dtype
    cdef int64_t nnz = indices.shape[0]
    cdef int64_t n_rows = param.shape[0]
    cdef int64_t row_len = 1
    for d in param.shape[1:]:
        row_len *= d
    cdef fo_sparse_adam_hp hp
    hp.one_minus_beta1 = one_minus_beta1
    hp.one_minus_beta2 = one_minus_beta2
    hp.eps = eps
    hp.neg_step_size = neg_step_size
    hp.maximize = maximize
    cdef int n_threads = get_num_threads()
    cdef int64_t bad = -1
    cdef int rc
    cdef int64_t *scratch = <int64_t *>PyMem_Malloc((3 * nnz + 1) * sizeof(int64_t))
    if scratch == NULL:
        raise MemoryError()
    cdef const int64_t *pi = <const int64_t *>cnp.PyArray_DATA(<cnp.ndarray>indices)
    cdef void *pp = cnp.PyArray_DATA(<cnp.ndarray>param)
    cdef void *pm = cnp.PyArray_DATA(<cnp.ndarray>exp_avg)
    cdef void *pv = cnp.PyArray_DATA(<cnp.ndarray>exp_avg_sq)
    cdef const void *pg = cnp.PyArray_DATA(<cnp.ndarray>values)
    cdef bint single = dtype == np.float32
    try:
        with nogil:
            if single:
                rc = fo_sparse_adam_step_f32(<float *>pp, <float *>pm, <float *>pv, n_rows,
                                             row_len, pi, <const float *>pg, nnz, scratch, &hp,
                                             n_threads, &bad)
            else:
                rc = fo_sparse_adam_step_f64(<double *>pp, <double *>pm, <double *>pv, n_rows,
                                             row_len, pi, <const double *>pg, nnz, scratch,
                                             &hp, n_threads, &bad)
    finally:
        PyMem_Free(scratch)
    if rc == FO_SPARSE_BAD_INDEX:
        raise ValueError(f"{iname}[{bad}] = {indices[bad]} is out of range for {pn} with "
                         f"{n_rows} rows; nothing was updated")
    if rc != FO_SPARSE_OK:
        raise RuntimeError("fo_sparse_adam_step rejected its arguments")
