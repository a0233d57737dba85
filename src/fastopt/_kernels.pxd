# C declarations of csrc/fastopt/kernels.h, shared by the Cython modules of fastopt, and the
# argument-checking helpers of _kernels.pyx that _mixed.pyx uses too.
cimport numpy as cnp
from libc.stdint cimport int64_t, intptr_t

cdef extern from "fastopt/kernels.h" nogil:
    enum: FO_MAX_STATE

    ctypedef struct fo_segment_f32:
        float *param
        const float *grad
        float *state[3]
        int64_t n

    ctypedef struct fo_segment_f64:
        double *param
        const double *grad
        double *state[3]
        int64_t n

    int64_t fo_parallel_threshold
    int fo_omp_max_threads()
    int fo_has_openmp()
    int fo_has_clones()
    const char *fo_vector_isa()
    void fo_stream_axpy_f32(float *b, const float *c, float s, int64_t n, int n_threads)
    void fo_stream_axpy_f64(double *b, const double *c, double s, int64_t n, int n_threads)

# The option flags, per-step scalar structs and step functions of every CPU kernel, generated
# from the optimizer table (src/fastopt/_table.py) by tools/generate.py.
include "_kernels_decl.pxi"

cdef extern from "fastopt/finite.h" nogil:
    int fo_all_finite_f32(const fo_segment_f32 *, int64_t, int)
    int fo_all_finite_f64(const fo_segment_f64 *, int64_t, int)


# helpers defined in _kernels.pyx
cdef class ArrayIdentity:
    cdef Py_ssize_t *rec
    cdef Py_ssize_t size
    cdef readonly list arrays
    cdef Py_ssize_t first_changed(self) except -2

cdef str _describe(object a)
cdef int _refuse_subclass(object a, str what) except -1
cdef str _stale_message(str what)
cdef int _check_disjoint_from(intptr_t *iv, Py_ssize_t total, grads, str name) except -1
cdef bint _same_shape(cnp.ndarray a, cnp.ndarray b)
cdef Py_ssize_t _set_spans(list items, str rule, intptr_t **lo, intptr_t **hi) except -1
cdef bint _spans_hit(const intptr_t *lo, const intptr_t *hi, Py_ssize_t stride, Py_ssize_t n,
                     intptr_t a, intptr_t b) noexcept nogil
