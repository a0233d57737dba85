# C declarations of csrc/fastopt/kernels.h, shared by the Cython modules of fastopt, and the
# plan base class and argument-checking helpers of _kernels.pyx that _mixed.pyx uses too.
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
cdef class IntSetting:
    cdef int64_t *value
    cdef str what

cdef IntSetting int_setting(int64_t *value, str what)


cdef class ArrayIdentity:
    cdef Py_ssize_t *rec
    cdef Py_ssize_t size
    cdef readonly list arrays
    cdef Py_ssize_t first_changed(self) except -2


cdef class PlanBase:
    """What every CPU plan shares (_kernels.Plan, _mixed.Plan): the parameters and state
    buffers, their identity and memory spans, and the checks of set_state and of a step's
    gradients. A leaf class fills in the virtual methods (see _kernels.pyx)."""
    cdef Py_ssize_t n
    cdef intptr_t *lo              # sorted memory spans of every array the plan writes
    cdef intptr_t *hi
    cdef Py_ssize_t n_intervals
    cdef readonly list params
    cdef readonly list states      # states[k] is None or a list of n arrays
    cdef readonly str name
    cdef readonly Py_ssize_t offset  # index of params[0] in the caller's numbering (messages)
    cdef ArrayIdentity identity    # params, extras, then each attached state buffer
    cdef str span_rule             # the advice of the "share memory" error
    cdef str written               # what a gradient must not share memory with (messages)

    cdef int _init_base(self, params, str name, Py_ssize_t offset, str span_rule,
                        str written) except -1
    cdef list _owned(self, list states, str state_word)
    cdef int _set_intervals(self, list states) except -1
    cdef int _record_identity(self) except -1
    cdef int _check_identity(self) except -1
    cdef bint _overlaps(self, intptr_t a, intptr_t b) noexcept
    cdef int _load(self, grads, str name, bint store) except -1
    cdef int _require(self, int mask) except -1
    # the leaves' parts
    cdef list _extras(self)
    cdef int _check_state(self, Py_ssize_t i, object a, str what) except -1
    cdef int _attach_state(self, int k, list arrays) except -1
    cdef int _check_grad(self, Py_ssize_t i, object obj, cnp.ndarray p, str name) except -1
    cdef int _store_grads(self, grads) except -1


cdef str _describe(object a)
cdef int _refuse_subclass(object a, str what) except -1
cdef str _stale_message(str what)
cdef bint _same_shape(cnp.ndarray a, cnp.ndarray b)
cdef int _check_grad_list(grads, Py_ssize_t n, str name, describe=*) except -1
cdef int _check_writable(cnp.ndarray a, str what) except -1
cdef int _check_layout(cnp.ndarray a, str what, str byteorder_hint=*) except -1
