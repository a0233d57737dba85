# cython: language_level=3
"""Cython bindings of the mixed-precision update loops (csrc/mixed.c).

Design note
-----------
This module is a kernel backend with the interface of ``fastopt._kernels``: a ``Plan`` per
param group, ``set_state``/``check_grads``, the option flags and one function per optimizer
(``adam(plan, grads, step_size, ...)``) taking the per-step scalars that the runners of
``fastopt._runners`` compute. The runners therefore drive it unchanged; only the plan differs.

A mixed plan takes parameters of dtype float16, bfloat16 (``ml_dtypes.bfloat16``) or float32.
With ``master_weights=True`` it keeps a float32 master copy of every 16-bit parameter (the
update runs on the master and writes the 16-bit parameter rounded to nearest even); without,
the update runs on the widened 16-bit value and writes it back rounded to nearest even or,
for bfloat16, stochastically. float32 parameters are updated in place (they are their own
master). State buffers are float32. Gradients may be float32, float16 or bfloat16, of any of
the three for any parameter, and are divided by ``plan.grad_scale`` as they are read.

As in ``_kernels``, every check runs before any element is written (the identity of every
parameter, master copy and state buffer included), so an error leaves parameters, masters
and state untouched; the module holds no math. The plan is a ``fastopt._kernels.PlanBase``,
which holds the checks both plans share; ``check_grads_disjoint`` (the one of ``_kernels``)
catches a gradient of one group that aliases an array of another group.
"""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int32_t, int64_t, intptr_t, uint64_t

from ._kernels cimport (PlanBase, _check_layout, _check_writable, _describe, _refuse_subclass,
                        _same_shape)
from . import _kernels
from ._kernels import check_grads_disjoint

cnp.import_array()

cdef extern from "fastopt/mixed.h" nogil:
    enum: FO_DT_F32
    enum: FO_DT_F16
    enum: FO_DT_BF16
    enum: FO_ROUND_NEAREST
    enum: FO_ROUND_STOCHASTIC

    ctypedef struct fo_mixed_segment:
        float *master
        void *lowp
        const void *grad
        float *state[3]
        int64_t n
        int32_t lowp_dtype
        int32_t grad_dtype
        uint64_t stream
        int64_t noise_block
        int64_t noise_stride
        int64_t noise_base

    ctypedef struct fo_mixed_opts:
        double grad_scale
        int rounding
        uint64_t seed
        uint64_t counter

    int fo_mixed_all_finite(const fo_mixed_segment *, int64_t, double, int64_t, int)

__all__ = ["Plan", "all_finite", "check_grads_disjoint", "ROUNDINGS"]  # and the step functions
                                                                      # (_mixed_steps.pxi)

ROUNDINGS = ("nearest", "stochastic")
cdef int _half_num = np.dtype(np.float16).num
cdef int _userdef_num = 256      # NPY_USERDEF: first type number of dtypes defined by packages
cdef int _bf16_num = -1          # NumPy type number of bfloat16, once one has been seen


cdef int _code(cnp.ndarray a):
    """FO_DT_* of an array's dtype, or -1 when it is none of float32/float16/bfloat16."""
    global _bf16_num
    cdef int t = cnp.PyArray_TYPE(a)
    if t == cnp.NPY_FLOAT:
        return FO_DT_F32
    if t == _half_num:
        return FO_DT_F16
    if t == _bf16_num:
        return FO_DT_BF16
    if t >= _userdef_num and a.dtype.name == "bfloat16" and a.dtype.itemsize == 2:
        _bf16_num = t
        return FO_DT_BF16
    return -1


cdef int _check_mixed(object obj, str what, str types, str dtypes) except -1:
    """An ndarray (not a masked array or matrix) of float32, float16 or bfloat16: returns its
    FO_DT_*. `types`, `dtypes`: how the messages name the accepted types."""
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray of {types}, got {_describe(obj)}")
    if type(obj) is not cnp.ndarray:
        _refuse_subclass(obj, what)
    cdef int code = _code(<cnp.ndarray>obj)
    if code < 0:
        raise TypeError(f"{what} must have dtype {dtypes}, got {obj.dtype}")
    return code


cdef class Plan(PlanBase):
    """The segment layout of one mixed-precision parameter group (see the module docstring).

    ``Plan(params, name="params", offset=0, *, master_weights=True, rounding="nearest",
    seed=0, masters=None)``. ``masters[i]`` is the float32 array the rule updates for
    ``params[i]``: a new master copy (or the caller's: ``masters``, a list with a float32
    C-contiguous writable array shaped like each 16-bit parameter, or None to make a copy of
    it; None for float32 parameters), the parameter itself when float32, or None without
    master weights.
    ``grad_scale`` divides every gradient; ``seed`` and ``counter`` (kernel calls so far) key
    the stochastic rounding noise.
    """
    cdef fo_mixed_segment *seg
    cdef readonly list masters
    cdef readonly bint master_weights
    cdef readonly str rounding
    cdef int _rounding
    cdef double _grad_scale
    cdef public uint64_t seed
    cdef public uint64_t counter

    def __cinit__(self, *args, **kwargs):
        self.seg = NULL

    def __init__(self, params, str name="params", Py_ssize_t offset=0, *, master_weights=True,
                 rounding="nearest", seed=0, masters=None):
        self._init_base(params, name, offset, "every parameter and state buffer must be a "
                        "separate buffer", "a parameter, master copy or optimizer state")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if rounding == "stochastic" and master_weights:
            raise ValueError("rounding='stochastic' is for parameters without a master copy; "
                             "pass master_weights=False (with a master copy the 16-bit "
                             "parameter is always the master rounded to nearest even)")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.master_weights = bool(master_weights)
        self.rounding = rounding
        self._rounding = FO_ROUND_STOCHASTIC if rounding == "stochastic" else FO_ROUND_NEAREST
        self._grad_scale = 1.0
        self.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        self.counter = 0
        cdef Py_ssize_t i
        cdef cnp.ndarray p
        cdef int code
        for i in range(self.n):
            what = f"{name}[{i + offset}]"
            code = _check_mixed(self.params[i], what, "float16, bfloat16 or float32",
                                "float16, bfloat16 (ml_dtypes) or float32 for mixed precision")
            p = <cnp.ndarray>self.params[i]
            _check_layout(p, what)
            _check_writable(p, what)
            if code == FO_DT_F16 and self._rounding == FO_ROUND_STOCHASTIC:
                raise ValueError(f"{what} is float16; stochastic rounding is implemented for "
                                 "bfloat16 parameters only")
        given = self._given_masters(masters, name, offset)
        self.masters = []
        for i in range(self.n):
            p = <cnp.ndarray>self.params[i]
            code = _code(p)
            if code == FO_DT_F32:
                self.masters.append(p)
            elif not self.master_weights:
                self.masters.append(None)
            elif given[i] is not None:
                self.masters.append(given[i])
            else:
                self.masters.append(np.ascontiguousarray(p, dtype=np.float32))
        self.seg = <fo_mixed_segment *>PyMem_Calloc(self.n + 1, sizeof(fo_mixed_segment))
        if self.seg == NULL:
            raise MemoryError()
        cdef cnp.ndarray m
        for i in range(self.n):
            p = <cnp.ndarray>self.params[i]
            code = _code(p)
            self.seg[i].n = cnp.PyArray_SIZE(p)
            self.seg[i].stream = <uint64_t>(offset + i)
            self.seg[i].grad_dtype = FO_DT_F32
            if self.masters[i] is not None:
                m = <cnp.ndarray>self.masters[i]
                self.seg[i].master = <float *>cnp.PyArray_DATA(m)
            if code != FO_DT_F32:
                self.seg[i].lowp = cnp.PyArray_DATA(p)
                self.seg[i].lowp_dtype = code
        self._set_intervals(self.states)
        self._record_identity()

    def __dealloc__(self):
        PyMem_Free(self.seg)

    cdef list _given_masters(self, masters, str name, Py_ssize_t offset):
        """The caller's master copies, checked: a list of None or float32 arrays (None for
        float32 parameters and without master weights)."""
        if masters is None:
            return [None] * self.n
        if not isinstance(masters, (list, tuple)) or len(masters) != self.n:
            raise TypeError(f"masters must be a list of {self.n} arrays or None, got "
                            f"{_describe(masters)}")
        cdef Py_ssize_t i
        cdef cnp.ndarray m, p
        for i in range(self.n):
            obj = masters[i]
            if obj is None:
                continue
            what = f"master copy of {name}[{i + offset}]"
            p = <cnp.ndarray>self.params[i]
            if _code(p) == FO_DT_F32 or not self.master_weights:
                raise ValueError(f"{what} must be None: "
                                 + ("a float32 parameter is its own master" if
                                    self.master_weights else "master_weights is False"))
            if not isinstance(obj, np.ndarray):
                raise TypeError(f"{what} must be a float32 numpy.ndarray, got {_describe(obj)}")
            _refuse_subclass(obj, what)
            m = <cnp.ndarray>obj
            if cnp.PyArray_TYPE(m) != cnp.NPY_FLOAT or not _same_shape(m, p):
                raise ValueError(f"{what} must be a float32 array of shape "
                                 f"{(<object>p).shape}, got {_describe(obj)}")
            _check_layout(m, what)
            _check_writable(m, what)
        return list(masters)

    cdef list _extras(self):
        """The master copies (other than float32 parameters, their own master)."""
        return [(self.masters[i], f"master copy of {self.name}[{i + self.offset}]")
                for i in range(self.n)
                if self.masters[i] is not None and self.masters[i] is not self.params[i]]

    @property
    def grad_scale(self):
        """Gradients are divided by this as they are read (the loss scale; 1: none)."""
        return self._grad_scale

    @grad_scale.setter
    def grad_scale(self, value):
        v = float(value)
        if not (v > 0 and v < float("inf")):
            raise ValueError(f"grad_scale must be a finite number > 0, got {value!r}")
        self._grad_scale = v

    cdef int _check_state(self, Py_ssize_t i, object obj, str what) except -1:
        """A state buffer: float32, shaped like params[i], C-contiguous, writable."""
        if not isinstance(obj, np.ndarray):
            raise TypeError(f"{what} must be a float32 numpy.ndarray, got {_describe(obj)}")
        _refuse_subclass(obj, what)
        cdef cnp.ndarray a = <cnp.ndarray>obj, p = <cnp.ndarray>self.params[i]
        if cnp.PyArray_TYPE(a) != cnp.NPY_FLOAT or not _same_shape(a, p):
            raise ValueError(f"{what} must be a float32 array of shape "
                             f"{(<object>p).shape} (mixed-precision state is float32), "
                             f"got {_describe(obj)}")
        _check_layout(a, what)
        _check_writable(a, what)
        return 0

    cdef int _attach_state(self, int k, list arrays) except -1:
        cdef Py_ssize_t i
        for i in range(self.n):
            self.seg[i].state[k] = (NULL if arrays is None else
                                    <float *>cnp.PyArray_DATA(<cnp.ndarray>arrays[i]))
        return 0

    cdef int _check_grad(self, Py_ssize_t i, object obj, cnp.ndarray p, str name) except -1:
        """A gradient: float32, float16 or bfloat16, shaped like params[i], C-contiguous."""
        what = f"{name}[{i + self.offset}]"
        _check_mixed(obj, what, "float32, float16 or bfloat16", "float32, float16 or bfloat16")
        cdef cnp.ndarray g = <cnp.ndarray>obj
        if not _same_shape(g, p):
            raise ValueError(f"{what} must have shape {(<object>p).shape} like "
                             f"{self.name}[{i + self.offset}], got {obj.shape}")
        _check_layout(g, what)
        return 0

    cdef int _store_grads(self, grads) except -1:
        cdef Py_ssize_t i
        cdef cnp.ndarray g
        for i in range(self.n):
            g = <cnp.ndarray>grads[i]
            self.seg[i].grad = cnp.PyArray_DATA(g)
            self.seg[i].grad_dtype = _code(g)
        return 0

    cdef void _forget_grads(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n):
            self.seg[i].grad = NULL

    cdef fo_mixed_opts _opts(self):
        cdef fo_mixed_opts o
        o.grad_scale = self._grad_scale
        o.rounding = self._rounding
        o.seed = self.seed
        o.counter = self.counter
        return o

    def set_stream(self, Py_ssize_t i, uint64_t stream):
        """Key the stochastic rounding noise of params[i] by `stream` (default: offset + i, its
        index among all parameters): fastopt.torch gives each parameter its own index also
        when the plan holds only those with gradients."""
        if not 0 <= i < self.n:
            raise IndexError(f"no parameter {i} in a plan of {self.n}")
        self.seg[i].stream = stream

    def set_noise_index(self, Py_ssize_t i, int64_t block, int64_t stride, int64_t base):
        """Key the stochastic rounding noise of params[i] as a shard of a larger tensor:
        element e draws the noise of element ``base + (e // block) * stride + e % block`` of
        the whole (block 0: of element e, the default)."""
        if not 0 <= i < self.n:
            raise IndexError(f"no parameter {i} in a plan of {self.n}")
        if block < 0 or stride < 0 or base < 0 or (block > 0 and stride < block):
            raise ValueError(f"noise index needs block >= 0, stride >= block and base >= 0, "
                             f"got {block}, {stride}, {base}")
        self.seg[i].noise_block = block
        self.seg[i].noise_stride = stride
        self.seg[i].noise_base = base

    def all_finite(self, grads, str name="grads"):
        """Whether every gradient divided by `grad_scale` is finite (reads the gradients only)."""
        self._load(grads, name, True)
        cdef int r
        cdef int64_t threshold = _kernels.get_parallel_threshold()
        cdef int nt = _kernels.get_num_threads()
        with nogil:
            r = fo_mixed_all_finite(self.seg, self.n, self._grad_scale, threshold, nt)
        self._forget_grads()
        _fail(r < 0)
        return r == 1


cdef int _fail(int bad) except -1:
    if bad:
        raise RuntimeError("fastopt mixed-precision kernel rejected its arguments (internal error)")
    return 0


cdef inline int64_t _threshold():
    return _kernels.get_parallel_threshold()


# The option flags and one step function per optimizer kernel (sgd, adam, ...), each
# `name(plan, grads, <its fo_<name>_hp fields>, flags, name="grads")`, generated from the
# optimizer table (src/fastopt/_table.py) by tools/generate.py.
include "_mixed_steps.pxi"


def all_finite(Plan plan, grads, str name="grads"):
    """Whether every gradient divided by ``plan.grad_scale`` is finite (reads gradients only)."""
    return plan.all_finite(grads, name)
