# cython: language_level=3
"""Cython bindings of the fused update kernels (csrc/kernels.c).

Design note
-----------
This module checks buffers, releases the GIL and calls C; it holds no math. A ``Plan`` is built
once per parameter group: it checks the parameters (ndarray, float32/float64, C-contiguous,
aligned, native byte order, writable, no two sharing memory), keeps references to them and to
their state buffers, and lays out the C segment arrays. Each step then only checks that no
parameter or state buffer was resized or reallocated in place since (``ArrayIdentity``: data
pointer, dtype, shape and strides, a few integer comparisons per array), checks the gradients
(count, type, dtype, shape, layout, no overlap with parameters or state) and calls one C
function per element type present in the group. Every check runs before any element is
written, so an error leaves parameters and state untouched. Masked arrays and ``numpy.matrix``
are refused (``_refuse_subclass``).

Segments that continue each other in memory (parameter, gradient and every state buffer each
starting where the previous tensor's ends, as for views made by ``fastopt.flatten``) are
merged into one before the call, so a flattened model is stepped as one long segment.
"""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int64_t, intptr_t
from libc.stdlib cimport qsort

cnp.import_array()

cdef int _n_threads = 0


MAX_THREADS = 1024


def set_num_threads(n):
    """Threads used by every kernel; 0 restores the OpenMP default (OMP_NUM_THREADS).

    `n` is an int in [0, MAX_THREADS]; anything else raises TypeError/ValueError.
    """
    global _n_threads
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)):
        raise TypeError(f"n_threads must be an int, got {type(n).__name__}")
    if not 0 <= n <= MAX_THREADS:
        raise ValueError(f"n_threads must be in [0, {MAX_THREADS}], got {n}")
    _n_threads = <int>n


def get_num_threads():
    """Threads a kernel call uses now (the OpenMP default unless set_num_threads was called)."""
    return _n_threads if _n_threads > 0 else fo_omp_max_threads()


cdef inline int _threads() noexcept nogil:
    return _n_threads if _n_threads > 0 else fo_omp_max_threads()


def has_openmp():
    """Whether the extension was built with OpenMP."""
    return bool(fo_has_openmp())


def vector_isa():
    """The instruction set the update loops run with here: 'avx512f', 'avx2' or 'baseline'."""
    return fo_vector_isa().decode()


def has_isa_clones():
    """Whether the loops were compiled for several instruction sets, chosen at load time."""
    return bool(fo_has_clones())


cdef class IntSetting:
    """An int64 setting of the C code that must stay >= 1 (a parallel threshold, a buffer
    size): ``get()`` returns it, ``set(n)`` checks and stores it. Made by `int_setting`."""

    def get(self):
        """The current value."""
        return self.value[0]

    def set(self, int64_t n):
        """Store n (ValueError unless n >= 1)."""
        if n < 1:
            raise ValueError(f"{self.what} must be >= 1, got {n}")
        self.value[0] = n


cdef IntSetting int_setting(int64_t *value, str what):
    """The IntSetting of the variable at `value`, named `what` in messages."""
    cdef IntSetting setting = IntSetting.__new__(IntSetting)
    setting.value = value
    setting.what = what
    return setting


# Work below which a step runs on the calling thread: elements times the optimizer's relative
# cost per element (1 for SGD and the stream kernel, up to 4; see kernels.c).
_threshold = int_setting(&fo_parallel_threshold, "threshold")
get_parallel_threshold = _threshold.get
set_parallel_threshold = _threshold.set


cdef str _describe(object a):
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return f"{type(a).__module__}.{type(a).__qualname__}"


cdef bint _same_shape(cnp.ndarray a, cnp.ndarray b):
    cdef int d, nd = cnp.PyArray_NDIM(a)
    if nd != cnp.PyArray_NDIM(b):
        return False
    for d in range(nd):
        if cnp.PyArray_DIM(a, d) != cnp.PyArray_DIM(b, d):
            return False
    return True


def check_spans(list items, str rule):
    """Sort the byte ranges `items` ((start, end, label) tuples) in place; ValueError
    "<label> and <label> share memory; <rule>" if two of them overlap."""
    items.sort()
    cdef Py_ssize_t i
    for i in range(1, len(items)):
        if items[i][0] < items[i - 1][1]:
            raise ValueError(f"{items[i - 1][2]} and {items[i][2]} share memory; {rule}")


cdef Py_ssize_t _set_spans(list items, str rule, intptr_t **lo, intptr_t **hi) except -1:
    """Store the byte ranges `items` as sorted arrays *lo, *hi (replacing the old ones); returns
    their number. Raises as check_spans if two ranges overlap, leaving *lo and *hi as they were."""
    check_spans(items, rule)
    cdef Py_ssize_t i, n = len(items)
    cdef intptr_t *new_lo = <intptr_t *>PyMem_Calloc(n + 1, sizeof(intptr_t))
    cdef intptr_t *new_hi = <intptr_t *>PyMem_Calloc(n + 1, sizeof(intptr_t))
    if new_lo == NULL or new_hi == NULL:
        PyMem_Free(new_lo)
        PyMem_Free(new_hi)
        raise MemoryError()
    for i in range(n):
        new_lo[i] = items[i][0]
        new_hi[i] = items[i][1]
    PyMem_Free(lo[0])
    PyMem_Free(hi[0])
    lo[0] = new_lo
    hi[0] = new_hi
    return n


cdef bint _spans_hit(const intptr_t *lo, const intptr_t *hi, Py_ssize_t stride, Py_ssize_t n,
                     intptr_t a, intptr_t b) noexcept nogil:
    """Whether [a, b) intersects one of n sorted, disjoint ranges [lo[k*stride], hi[k*stride])
    (binary search for the first range that ends after a)."""
    cdef Py_ssize_t first = 0, last = n, mid
    while first < last:
        mid = (first + last) // 2
        if hi[mid * stride] <= a:
            first = mid + 1
        else:
            last = mid
    return first < n and lo[first * stride] < b


cdef int _refuse_subclass(object a, str what) except -1:
    """TypeError for the ndarray subclasses whose meaning a fused kernel would silently drop:
    numpy.ma.MaskedArray (the kernels would update the masked elements too) and numpy.matrix
    (2-D only, `*` a matrix product). Other subclasses (numpy.memmap, ...) are plain memory."""
    if type(a) is cnp.ndarray:
        return 0
    if isinstance(a, np.ma.MaskedArray):
        raise TypeError(f"{what} is a numpy.ma.MaskedArray; fastopt's kernels ignore masks and "
                        "would update (or read) the masked elements too. Pass the plain data "
                        "(arr.data, or arr.filled(value) for a gradient) and apply the mask "
                        "yourself")
    if isinstance(a, np.matrix):
        raise TypeError(f"{what} is a numpy.matrix, which is always 2-D and whose `*` is a matrix "
                        "product; pass numpy.asarray(m) (a plain ndarray view of the same memory)")
    return 0


def refuse_subclass(a, str what):
    """Raise TypeError if `a` is a numpy.ma.MaskedArray or a numpy.matrix (see the message);
    other arrays pass."""
    _refuse_subclass(a, what)


cdef class ArrayIdentity:
    """What a plan relies on about each of `arrays`, recorded once and re-checked cheaply.

    Per array: its data pointer, dtype number, ndim, shape and strides. An array resized or
    re-pointed in place (``a.resize(n, refcheck=False)``, ``a.shape = ...``) after it was
    recorded fails `first_changed`, so nothing writes through a pointer that no longer
    belongs to it. The check is a few integer comparisons per array, in C.
    """

    def __cinit__(self, *args, **kwargs):
        self.rec = NULL
        self.size = 0

    def __init__(self, arrays):
        self.arrays = list(arrays)
        cdef Py_ssize_t total = 0, k = 0, d, i
        cdef cnp.ndarray a
        for obj in self.arrays:
            if not isinstance(obj, np.ndarray):
                raise TypeError(f"ArrayIdentity records numpy arrays, got {_describe(obj)}")
            total += 3 + 2 * cnp.PyArray_NDIM(<cnp.ndarray>obj)
        self.rec = <Py_ssize_t *>PyMem_Calloc(total + 1, sizeof(Py_ssize_t))
        if self.rec == NULL:
            raise MemoryError()
        self.size = total
        for i in range(len(self.arrays)):
            a = <cnp.ndarray>self.arrays[i]
            self.rec[k] = <Py_ssize_t>cnp.PyArray_DATA(a)
            self.rec[k + 1] = cnp.PyArray_TYPE(a)
            self.rec[k + 2] = cnp.PyArray_NDIM(a)
            k += 3
            for d in range(cnp.PyArray_NDIM(a)):
                self.rec[k] = cnp.PyArray_DIM(a, d)
                self.rec[k + 1] = cnp.PyArray_STRIDE(a, d)
                k += 2

    def __dealloc__(self):
        PyMem_Free(self.rec)

    cdef Py_ssize_t first_changed(self) except -2:
        """Index of the first array whose pointer, dtype, shape or strides changed; -1: none."""
        cdef Py_ssize_t i, d, k = 0, n = len(self.arrays)
        cdef int nd
        cdef cnp.ndarray a
        for i in range(n):
            a = <cnp.ndarray>self.arrays[i]
            nd = cnp.PyArray_NDIM(a)
            if self.rec[k] != <Py_ssize_t>cnp.PyArray_DATA(a) or self.rec[k + 1] != cnp.PyArray_TYPE(a) \
                    or self.rec[k + 2] != nd:
                return i
            k += 3
            for d in range(nd):
                if self.rec[k] != cnp.PyArray_DIM(a, d) or self.rec[k + 1] != cnp.PyArray_STRIDE(a, d):
                    return i
                k += 2
        return -1

    def changed(self):
        """Index of the first array that changed since it was recorded, or None."""
        cdef Py_ssize_t i = self.first_changed()
        return None if i < 0 else i

    def check(self, str name="arrays"):
        """Raise ValueError naming ``name[i]`` if array i changed since it was recorded."""
        cdef Py_ssize_t i = self.first_changed()
        if i >= 0:
            raise ValueError(_stale_message(f"{name}[{i}]"))


cdef str _stale_message(str what):
    return (f"{what} was resized or reallocated since it was given to the optimizer (its data "
            "pointer, dtype, shape or strides changed); stepping it would write through a stale "
            "pointer. Nothing was updated. Give the new array to a new optimizer (or to "
            "add_param_group) instead of resizing a parameter in place")


def stale_message(str what):
    """The message of the ValueError for an array of a plan that was resized or reallocated."""
    return _stale_message(what)


# The argument checks of every plan, CPU and GPU (fastopt.cuda.Plan uses the def forms).
cdef int _check_grad_list(grads, Py_ssize_t n, str name, describe=None) except -1:
    if not isinstance(grads, (list, tuple)):
        raise TypeError(f"{name} must be a list of arrays (one per parameter), got "
                        f"{(describe or _describe)(grads)}")
    if len(grads) != n:
        raise ValueError(f"{name} has {len(grads)} arrays but there are {n} parameters")
    return 0


def check_grad_list(grads, Py_ssize_t n, str name, describe=None):
    """TypeError unless `grads` is a list or tuple, ValueError unless it holds n items."""
    _check_grad_list(grads, n, name, describe)


def state_list(int k, arrays, Py_ssize_t n, str name=None):
    """The arrays to attach to state slot k as a list (None stays None); ValueError for a slot
    outside [0, FO_MAX_STATE) or a count other than n."""
    if k < 0 or k >= FO_MAX_STATE:
        raise ValueError(f"state slot must be in [0, {FO_MAX_STATE}), got {k}")
    if arrays is None:
        return None
    arrays = list(arrays)
    if len(arrays) != n:
        raise ValueError(f"{name or f'state slot {k}'}: expected {n} arrays (one per "
                         f"parameter), got {len(arrays)}")
    return arrays


cpdef require_states(list states, int mask):
    """RuntimeError if a state slot whose bit is set in `mask` has nothing attached."""
    cdef int k
    for k in range(FO_MAX_STATE):
        if (mask >> k) & 1 and states[k] is None:
            raise RuntimeError(f"state slot {k} is required by these options but not attached")


cdef int _check_writable(cnp.ndarray a, str what) except -1:
    if not cnp.PyArray_ISWRITEABLE(a):
        raise ValueError(f"{what} must be writable (it is updated in place)")
    return 0


cdef class PlanBase:
    """The part of a plan that does not depend on its kernels (declared in _kernels.pxd).

    A leaf class calls _init_base, and defines the arrays it writes besides params and state
    (_extras: (array, label) pairs), the checks of a state buffer (_check_state) and of a
    gradient (_check_grad: type, dtype, shape, layout) and where their pointers go
    (_attach_state, _store_grads). The rest is here: identity, memory spans, set_state, the
    step's gradient checks (list, count, identity, writable params, no shared memory).
    """

    def __cinit__(self, *args, **kwargs):
        self.lo = NULL
        self.hi = NULL

    def __dealloc__(self):
        PyMem_Free(self.lo)
        PyMem_Free(self.hi)

    def __len__(self):
        return self.n

    cdef int _init_base(self, params, str name, Py_ssize_t offset, str span_rule,
                        str written) except -1:
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"{name} must be a list of arrays, got {_describe(params)}")
        self.name = name
        self.offset = offset
        self.params = list(params)
        self.states = [None] * FO_MAX_STATE
        self.n = len(self.params)
        self.span_rule = span_rule
        self.written = written
        return 0

    cdef list _extras(self):
        return []

    cdef list _owned(self, list states, str state_word):
        """(array, label) of every array the plan writes: params, extras, then each attached
        state buffer ("<state_word> k of params[i]")."""
        cdef Py_ssize_t i, k
        owned = [(self.params[i], f"{self.name}[{i + self.offset}]") for i in range(self.n)]
        owned += self._extras()
        for k in range(FO_MAX_STATE):
            if states[k] is not None:
                owned += [(states[k][i], f"{state_word} {k} of {self.name}[{i + self.offset}]")
                          for i in range(self.n)]
        return owned

    cdef int _set_intervals(self, list states) except -1:
        """Sorted memory spans of the arrays written with `states` attached; overlaps among
        them are errors (the plan is then left as it was)."""
        items = []
        cdef cnp.ndarray a
        for obj, label in self._owned(states, "state"):
            a = <cnp.ndarray>obj
            if cnp.PyArray_NBYTES(a) > 0:
                items.append((<intptr_t>cnp.PyArray_DATA(a),
                              <intptr_t>cnp.PyArray_DATA(a) + cnp.PyArray_NBYTES(a), label))
        self.n_intervals = _set_spans(items, self.span_rule, &self.lo, &self.hi)
        return 0

    cdef int _record_identity(self) except -1:
        self.identity = ArrayIdentity([a for a, _ in self._owned(self.states, "state buffer")])
        return 0

    cdef int _check_identity(self) except -1:
        """ValueError, naming the array, if an array the plan writes was resized or reallocated
        in place since the plan recorded it (see ArrayIdentity)."""
        cdef Py_ssize_t j = self.identity.first_changed()
        if j >= 0:
            raise ValueError(_stale_message(self._owned(self.states, "state buffer")[j][1]))
        return 0

    def check_identity(self):
        """Raise ValueError if an array of the plan was resized or reallocated in place."""
        self._check_identity()

    cdef int _check_state(self, Py_ssize_t i, object a, str what) except -1:
        raise NotImplementedError

    cdef int _attach_state(self, int k, list arrays) except -1:
        raise NotImplementedError

    def set_state(self, int k, arrays, str name=None):
        """Attach state buffer k (a list of arrays shaped like the params), or None.

        `name` is the buffer's name in error messages (default "state buffer k of params[i]").
        """
        arrays = state_list(k, arrays, self.n, name)
        self._check_identity()
        cdef Py_ssize_t i
        if arrays is not None:
            for i in range(self.n):
                self._check_state(i, arrays[i], f"{name}[{i + self.offset}]" if name else
                                  f"state buffer {k} of {self.name}[{i + self.offset}]")
        states = list(self.states)
        states[k] = arrays
        self._set_intervals(states)
        self.states[k] = arrays
        self._record_identity()
        self._attach_state(k, arrays)

    cdef bint _overlaps(self, intptr_t a, intptr_t b) noexcept:
        """Whether [a, b) intersects the span of an array the plan writes."""
        return _spans_hit(self.lo, self.hi, 1, self.n_intervals, a, b)

    def check_grads(self, grads, str name="grads"):
        """Check gradients against the params without keeping them (raises on any problem)."""
        self._load(grads, name, False)

    cdef int _check_grad(self, Py_ssize_t i, object obj, cnp.ndarray p, str name) except -1:
        raise NotImplementedError

    cdef int _store_grads(self, grads) except -1:
        raise NotImplementedError

    cdef int _load(self, grads, str name, bint store) except -1:
        """Check a step's gradients (raises before anything is kept); with `store`, hand their
        pointers to the segments."""
        _check_grad_list(grads, self.n, name)
        self._check_identity()
        cdef Py_ssize_t i
        cdef cnp.ndarray g, p
        cdef intptr_t start
        for i in range(self.n):
            p = <cnp.ndarray>self.params[i]
            if not cnp.PyArray_ISWRITEABLE(p):
                raise ValueError(f"{self.name}[{i + self.offset}] became read-only; parameters "
                                 "are updated in place")
            obj = grads[i]
            self._check_grad(i, obj, p, name)
            g = <cnp.ndarray>obj
            start = <intptr_t>cnp.PyArray_DATA(g)
            if cnp.PyArray_NBYTES(g) > 0 and self._overlaps(start, start + cnp.PyArray_NBYTES(g)):
                raise ValueError(f"{name}[{i + self.offset}] shares memory with {self.written}; "
                                 f"pass a separate gradient buffer")
        if store:
            self._store_grads(grads)
        return 0

    cdef int _require(self, int mask) except -1:
        require_states(self.states, mask)
        return 0


cdef int _check_float_array(object a, str what) except -1:
    """Type and layout checks shared by parameters, state and gradients."""
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray of float32 or float64, got {_describe(a)}")
    _refuse_subclass(a, what)
    cdef cnp.ndarray arr = <cnp.ndarray>a
    cdef int t = cnp.PyArray_TYPE(arr)
    if t != cnp.NPY_FLOAT and t != cnp.NPY_DOUBLE:
        raise TypeError(f"{what} must have dtype float32 or float64, got {a.dtype}")
    _check_layout(arr, what, "; use arr.astype(a.dtype.newbyteorder('='))")
    return 0


cdef int _check_layout(cnp.ndarray a, str what, str byteorder_hint="") except -1:
    """Native byte order (else ValueError ending in `byteorder_hint`), C-contiguous, aligned."""
    if not cnp.PyArray_ISNOTSWAPPED(a):
        raise ValueError(f"{what} must be in native byte order, got dtype "
                         f"{a.dtype.str!r}{byteorder_hint}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(a):
        raise ValueError(f"{what} must be C-contiguous; got strides {(<object>a).strides} for "
                         f"shape {(<object>a).shape} (use numpy.ascontiguousarray)")
    if not cnp.PyArray_ISALIGNED(a):
        raise ValueError(f"{what} must be aligned to its element size")
    return 0


ctypedef fused segment_t:
    fo_segment_f32
    fo_segment_f64


cdef Py_ssize_t _merge(const segment_t *src, Py_ssize_t n, segment_t *dst) noexcept nogil:
    """Copy the non-empty segments src[:n] to dst, joining each to the previous one when every
    pointer continues it; returns the number written."""
    cdef Py_ssize_t i, m = 0
    cdef int k
    cdef bint join
    cdef segment_t *prev
    for i in range(n):
        if src[i].n == 0:
            continue
        if m > 0:
            prev = &dst[m - 1]
            join = prev.param + prev.n == src[i].param and prev.grad + prev.n == src[i].grad
            for k in range(FO_MAX_STATE):
                if prev.state[k] == NULL or src[i].state[k] == NULL:
                    join = join and prev.state[k] == src[i].state[k]
                else:
                    join = join and prev.state[k] + prev.n == src[i].state[k]
            if join:
                prev.n += src[i].n
                continue
        dst[m] = src[i]
        m += 1
    return m


cdef class Plan(PlanBase):
    """The C segment layout of one parameter group (parameters + state buffers).

    ``segments_used`` is the number of C segments the last step ran over (after merging
    tensors that continue each other in memory).
    """
    cdef fo_segment_f32 *seg32     # one segment per float32 tensor, in parameter order
    cdef fo_segment_f64 *seg64
    cdef fo_segment_f32 *run32     # the merged segments of the current step
    cdef fo_segment_f64 *run64
    cdef Py_ssize_t n32, n64, r32, r64
    cdef readonly Py_ssize_t segments_used
    cdef Py_ssize_t *slot          # slot[i] >= 0: seg32[slot[i]]; < 0: seg64[-slot[i]-1]

    def __cinit__(self, params, str name="params", Py_ssize_t offset=0):
        self.seg32 = NULL
        self.seg64 = NULL
        self.run32 = NULL
        self.run64 = NULL
        self.slot = NULL

    def __init__(self, params, str name="params", Py_ssize_t offset=0):
        self._init_base(params, name, offset, "every parameter must be a separate buffer "
                        "(pass each parameter once)", "a parameter or optimizer state")
        cdef Py_ssize_t i
        cdef cnp.ndarray p
        for i in range(self.n):
            _check_float_array(self.params[i], f"{name}[{i + offset}]")
            _check_writable(<cnp.ndarray>self.params[i], f"{name}[{i + offset}]")
        self.seg32 = <fo_segment_f32 *>PyMem_Calloc(self.n + 1, sizeof(fo_segment_f32))
        self.seg64 = <fo_segment_f64 *>PyMem_Calloc(self.n + 1, sizeof(fo_segment_f64))
        self.run32 = <fo_segment_f32 *>PyMem_Calloc(self.n + 1, sizeof(fo_segment_f32))
        self.run64 = <fo_segment_f64 *>PyMem_Calloc(self.n + 1, sizeof(fo_segment_f64))
        self.slot = <Py_ssize_t *>PyMem_Calloc(self.n + 1, sizeof(Py_ssize_t))
        if self.seg32 == NULL or self.seg64 == NULL or self.run32 == NULL or self.run64 == NULL \
                or self.slot == NULL:
            raise MemoryError()
        self.n32 = 0
        self.n64 = 0
        for i in range(self.n):
            p = <cnp.ndarray>self.params[i]
            if cnp.PyArray_TYPE(p) == cnp.NPY_FLOAT:
                self.seg32[self.n32].param = <float *>cnp.PyArray_DATA(p)
                self.seg32[self.n32].n = cnp.PyArray_SIZE(p)
                self.slot[i] = self.n32
                self.n32 += 1
            else:
                self.seg64[self.n64].param = <double *>cnp.PyArray_DATA(p)
                self.seg64[self.n64].n = cnp.PyArray_SIZE(p)
                self.slot[i] = -(self.n64 + 1)
                self.n64 += 1
        self._set_intervals(self.states)
        self._record_identity()

    def __dealloc__(self):
        PyMem_Free(self.seg32)
        PyMem_Free(self.seg64)
        PyMem_Free(self.run32)
        PyMem_Free(self.run64)
        PyMem_Free(self.slot)

    cdef int _check_state(self, Py_ssize_t i, object obj, str what) except -1:
        """A state buffer: a float array of the dtype and shape of params[i], writable."""
        _check_float_array(obj, what)
        cdef cnp.ndarray a = <cnp.ndarray>obj, p = <cnp.ndarray>self.params[i]
        if cnp.PyArray_TYPE(a) != cnp.PyArray_TYPE(p) or not _same_shape(a, p):
            raise ValueError(f"{what} must be a {_describe(p)} like "
                             f"{self.name}[{i + self.offset}], got {_describe(a)}")
        _check_writable(a, what)
        return 0

    cdef int _attach_state(self, int k, list arrays) except -1:
        cdef Py_ssize_t i, j
        cdef void *ptr
        for i in range(self.n):
            ptr = NULL if arrays is None else cnp.PyArray_DATA(<cnp.ndarray>arrays[i])
            j = self.slot[i]
            if j >= 0:
                self.seg32[j].state[k] = <float *>ptr
            else:
                self.seg64[-j - 1].state[k] = <double *>ptr
        return 0

    cdef int _check_grad(self, Py_ssize_t i, object obj, cnp.ndarray p, str name) except -1:
        """A gradient: an ndarray of the dtype and shape of params[i], C-contiguous, aligned."""
        if not isinstance(obj, np.ndarray):
            raise TypeError(f"{name}[{i + self.offset}] must be a numpy.ndarray of {(<object>p).dtype} like "
                            f"{self.name}[{i + self.offset}], got {_describe(obj)}")
        if type(obj) is not cnp.ndarray:
            _refuse_subclass(obj, f"{name}[{i + self.offset}]")
        cdef cnp.ndarray g = <cnp.ndarray>obj
        if cnp.PyArray_TYPE(g) != cnp.PyArray_TYPE(p) or not cnp.PyArray_ISNOTSWAPPED(g):
            raise TypeError(f"{name}[{i + self.offset}] must have dtype {(<object>p).dtype} like {self.name}[{i + self.offset}], "
                            f"got {obj.dtype.str if not cnp.PyArray_ISNOTSWAPPED(g) else obj.dtype}")
        if not _same_shape(g, p):
            raise ValueError(f"{name}[{i + self.offset}] must have shape {(<object>p).shape} like {self.name}[{i + self.offset}], "
                             f"got {obj.shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(g) or not cnp.PyArray_ISALIGNED(g):
            raise ValueError(f"{name}[{i + self.offset}] must be C-contiguous and aligned; got strides "
                             f"{obj.strides} (use numpy.ascontiguousarray)")
        return 0

    cdef int _store_grads(self, grads) except -1:
        cdef Py_ssize_t i, j
        cdef cnp.ndarray g
        for i in range(self.n):
            g = <cnp.ndarray>grads[i]
            j = self.slot[i]
            if j >= 0:
                self.seg32[j].grad = <const float *>cnp.PyArray_DATA(g)
            else:
                self.seg64[-j - 1].grad = <const double *>cnp.PyArray_DATA(g)
        self.r32 = _merge(self.seg32, self.n32, self.run32)
        self.r64 = _merge(self.seg64, self.n64, self.run64)
        self.segments_used = self.r32 + self.r64
        return 0

    cdef void _forget_grads(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n32):
            self.seg32[i].grad = NULL
        for i in range(self.n64):
            self.seg64[i].grad = NULL
        self.r32 = 0
        self.r64 = 0


cdef int _fail(int rc) except -1:
    if rc != 0:
        raise RuntimeError("fastopt kernel rejected its arguments (internal error)")
    return 0


# The option flags and one step function per optimizer kernel (sgd, adam, ...), each
# `name(plan, grads, <its fo_<name>_hp fields>, flags, name="grads")`, generated from the
# optimizer table (src/fastopt/_table.py) by tools/generate.py.
include "_kernels_steps.pxi"


def stream_axpy(cnp.ndarray b, cnp.ndarray c, double s):
    """b += s * c in place (the bandwidth yardstick of `fastopt bench`)."""
    _check_float_array(b, "b")
    _check_float_array(c, "c")
    if cnp.PyArray_TYPE(b) != cnp.PyArray_TYPE(c) or not _same_shape(b, c) or not cnp.PyArray_ISWRITEABLE(b):
        raise ValueError("b and c must be writable/readable arrays of one dtype and shape")
    cdef int64_t n = cnp.PyArray_SIZE(b)
    cdef int nt = _threads()
    cdef float *b32
    cdef const float *c32
    cdef double *b64
    cdef const double *c64
    cdef float s32 = <float>s
    if cnp.PyArray_TYPE(b) == cnp.NPY_FLOAT:
        b32 = <float *>cnp.PyArray_DATA(b)
        c32 = <const float *>cnp.PyArray_DATA(c)
        with nogil:
            fo_stream_axpy_f32(b32, c32, s32, n, nt)
    else:
        b64 = <double *>cnp.PyArray_DATA(b)
        c64 = <const double *>cnp.PyArray_DATA(c)
        with nogil:
            fo_stream_axpy_f64(b64, c64, s, n, nt)


def all_finite(Plan plan, grads, str name="grads"):
    """Whether every element of `grads` is finite (no NaN, no +-Inf).

    The gradients are checked like a step's (count, dtype, shape, layout, no overlap with the
    plan's parameters or state), then read once in parallel (csrc/finite.c); nothing is written.
    """
    plan._load(grads, name, True)
    cdef int r32 = 1, r64 = 1, nt = _threads()
    with nogil:
        if plan.r32:
            r32 = fo_all_finite_f32(plan.run32, plan.r32, nt)
        if plan.r64:
            r64 = fo_all_finite_f64(plan.run64, plan.r64, nt)
    plan._forget_grads()
    if r32 < 0 or r64 < 0:
        _fail(-1)
    return r32 == 1 and r64 == 1


cdef int _cmp_interval(const void *a, const void *b) noexcept nogil:
    cdef intptr_t x = (<const intptr_t *>a)[0], y = (<const intptr_t *>b)[0]
    return (x > y) - (x < y)


def check_grads_disjoint(plans, grads, str name="grads"):
    """Raise ValueError if any of `grads` shares memory with an array written by any of
    `plans` (a parameter, master copy or state buffer; the plans are the param groups of one
    optimizer, of this module or of fastopt._mixed, and `grads` is numbered over all of them).

    Each plan checks its own group's gradients; this catches a gradient of one group that is
    (a view of) an array of another group, which a step would otherwise read after that group
    was updated.
    """
    cdef PlanBase plan
    cdef Py_ssize_t total = 0, k = 0, i
    for plan in plans:
        total += plan.n_intervals
    cdef intptr_t *iv = <intptr_t *>PyMem_Calloc(2 * total + 2, sizeof(intptr_t))
    if iv == NULL:
        raise MemoryError()
    try:
        for plan in plans:
            for i in range(plan.n_intervals):
                iv[2 * k] = plan.lo[i]
                iv[2 * k + 1] = plan.hi[i]
                k += 1
        _check_disjoint_from(iv, total, grads, name)
    finally:
        PyMem_Free(iv)


cdef int _check_disjoint_from(intptr_t *iv, Py_ssize_t total, grads, str name) except -1:
    """Sort the `total` (lo, hi) pairs of `iv` in place, then raise ValueError naming the first
    of `grads` (NumPy arrays; others are skipped) whose memory intersects one of them."""
    cdef cnp.ndarray g
    cdef intptr_t a, b
    cdef Py_ssize_t i
    qsort(iv, total, 2 * sizeof(intptr_t), _cmp_interval)
    for i in range(len(grads)):
        obj = grads[i]
        if not isinstance(obj, np.ndarray):
            continue
        g = <cnp.ndarray>obj
        if cnp.PyArray_NBYTES(g) == 0:
            continue
        a = <intptr_t>cnp.PyArray_DATA(g)
        b = a + cnp.PyArray_NBYTES(g)
        if _spans_hit(iv, iv + 1, 2, total, a, b):
            raise ValueError(f"{name}[{i}] shares memory with a parameter or optimizer state; "
                             f"pass a separate gradient buffer")
    return 0
