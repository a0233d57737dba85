# cython: language_level=3
"""Cython bindings of the low-bit state loops (csrc/qstate.c).

Design note
-----------
A kernel backend with the interface of ``fastopt._kernels`` (a ``Plan`` per param group,
``set_state``, the option flags and one function per optimizer taking the per-step scalars of
``fastopt._runners``), so the runners drive it unchanged. Parameters and gradients are float32.
Each state slot of each parameter is attached as

- a float32 array shaped like the parameter (float32 state),
- a uint16 array shaped like the parameter (bfloat16 bits), or
- a ``fastopt.state_format.Blockwise8`` (int8 blockwise: ``codes`` uint8 shaped like the
  parameter, ``absmax`` float32 of one value per block of 256, ``qmap`` the 256-value map),

and the kind of what is attached is the slot's format (a small tensor may keep float32 state
under int8, as bitsandbytes' ``min_8bit_size``). As in ``_kernels``, every check (types,
shapes, layout, writability, no two written arrays sharing memory, identity at each step)
runs before any element is written; the module holds no math but the codec entry points
``encode``/``decode`` (the C codecs, for state creation, loading and tests).
"""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Calloc, PyMem_Free
from libc.stdint cimport int32_t, int64_t, uint32_t, uint64_t

from ._kernels cimport (PlanBase, _check_layout, _check_writable, _describe, _refuse_subclass,
                        _same_shape)
from . import _kernels
from ._kernels import check_grads_disjoint
from .state_format import Blockwise8, QBLOCK

cnp.import_array()

cdef extern from "fastopt/qstate.h" nogil:
    enum: FO_SF_F32
    enum: FO_SF_BF16
    enum: FO_SF_Q8
    enum: FO_QBLOCK

    ctypedef struct fo_qstate_segment:
        float *param
        const float *grad
        void *state[3]
        float *absmax[3]
        const float *qmap[3]
        int32_t format[3]
        int64_t n
        uint64_t stream
        int64_t noise_base

    ctypedef struct fo_qstate_opts:
        int rounding
        uint64_t seed
        uint64_t counter
        uint32_t used

    int fo_qstate_decode(int32_t, const void *, const float *, const float *, float *, int64_t)
    int fo_qstate_encode(int32_t, const float *, void *, float *, const float *, int64_t)
    int fo_qstate_vector_codecs(int use)
    int fo_qstate_bf16_instruction()

assert FO_QBLOCK == QBLOCK

__all__ = ["Plan", "check_grads_disjoint", "ROUNDINGS", "FORMATS", "encode", "decode",
           "format_of", "vector_codecs", "codec_level", "codec_levels", "use_codecs",
           "bf16_instruction"]  # and the step functions (_qstate_steps.pxi)

ROUNDINGS = ("nearest", "stochastic")
#: slot format of a state buffer -> FO_SF_*
FORMATS = {"float32": FO_SF_F32, "bfloat16": FO_SF_BF16, "int8": FO_SF_Q8}


def format_of(buf):
    """The state format ("float32", "bfloat16" or "int8") of a state buffer, or None."""
    if isinstance(buf, Blockwise8):
        return "int8"
    if isinstance(buf, np.ndarray):
        if buf.dtype == np.float32:
            return "float32"
        if buf.dtype == np.uint16:
            return "bfloat16"
    return None


cdef int _check_array(object obj, str what, int typenum, str dtype, tuple shape) except -1:
    if not isinstance(obj, np.ndarray):
        raise TypeError(f"{what} must be a {dtype} numpy.ndarray, got {_describe(obj)}")
    _refuse_subclass(obj, what)
    cdef cnp.ndarray a = <cnp.ndarray>obj
    if cnp.PyArray_TYPE(a) != typenum or obj.shape != shape:
        raise ValueError(f"{what} must be a {dtype} array of shape {shape}, got {_describe(obj)}")
    _check_layout(a, what)
    return 0


cdef class Plan(PlanBase):
    """The segment layout of one low-bit-state parameter group (see the module docstring).

    ``Plan(params, name="params", offset=0, *, rounding="nearest", seed=0)``: float32
    parameters; ``rounding`` of bfloat16 state ("nearest" even or "stochastic", keyed by
    ``seed``, ``counter`` (the optimizers set it to the group's steps so far) and each
    element's parameter and index, see `set_noise_index`).
    """
    cdef fo_qstate_segment *seg
    cdef readonly str rounding
    cdef int _rounding
    cdef public uint64_t seed
    cdef public uint64_t counter

    def __cinit__(self, *args, **kwargs):
        self.seg = NULL

    def __init__(self, params, str name="params", Py_ssize_t offset=0, *, rounding="nearest",
                 seed=0):
        self._init_base(params, name, offset, "every parameter and state buffer must be a "
                        "separate buffer", "a parameter or optimizer state")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
            raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
        self.rounding = rounding
        self._rounding = 1 if rounding == "stochastic" else 0
        self.seed = <uint64_t>(int(seed) & 0xFFFFFFFFFFFFFFFF)
        self.counter = 0
        cdef Py_ssize_t i
        cdef cnp.ndarray p
        for i in range(self.n):
            what = f"{name}[{i + offset}]"
            obj = self.params[i]
            if not isinstance(obj, np.ndarray):
                raise TypeError(f"{what} must be a float32 numpy.ndarray, got {_describe(obj)}")
            _refuse_subclass(obj, what)
            if obj.dtype != np.float32:
                raise TypeError(f"{what} must have dtype float32 for a low-bit state_dtype, "
                                f"got {obj.dtype}")
            p = <cnp.ndarray>obj
            _check_layout(p, what)
            _check_writable(p, what)
        self.seg = <fo_qstate_segment *>PyMem_Calloc(self.n + 1, sizeof(fo_qstate_segment))
        if self.seg == NULL:
            raise MemoryError()
        for i in range(self.n):
            p = <cnp.ndarray>self.params[i]
            self.seg[i].param = <float *>cnp.PyArray_DATA(p)
            self.seg[i].n = cnp.PyArray_SIZE(p)
            self.seg[i].stream = <uint64_t>(offset + i)
        self._set_intervals(self.states)
        self._record_identity()

    def __dealloc__(self):
        PyMem_Free(self.seg)

    def set_noise_index(self, Py_ssize_t i, uint64_t stream, int64_t base):
        """Key the stochastic rounding noise of params[i] as elements ``base``, ``base + 1``,
        ... of parameter number ``stream`` (default: its own index in the optimizer, from 0):
        a part of a tensor (ShardedOptimizer's) then draws the whole tensor's noise."""
        if not 0 <= i < self.n:
            raise IndexError(f"no parameter {i} in a plan of {self.n}")
        if base < 0:
            raise ValueError(f"noise index base must be >= 0, got {base}")
        self.seg[i].stream = stream
        self.seg[i].noise_base = base

    cdef list _owned(self, list states, str state_word):
        """Params, then each attached state buffer; an int8 buffer as its codes and absmax."""
        cdef Py_ssize_t i, k
        owned = [(self.params[i], f"{self.name}[{i + self.offset}]") for i in range(self.n)]
        for k in range(3):
            if states[k] is None:
                continue
            for i in range(self.n):
                label = f"{state_word} {k} of {self.name}[{i + self.offset}]"
                buf = states[k][i]
                if isinstance(buf, Blockwise8):
                    owned += [(buf.codes, label + " (codes)"), (buf.absmax, label + " (absmax)")]
                else:
                    owned.append((buf, label))
        return owned

    cdef int _check_state(self, Py_ssize_t i, object obj, str what) except -1:
        """float32 or uint16 (bfloat16 bits) shaped like params[i], or a Blockwise8 of it."""
        cdef cnp.ndarray p = <cnp.ndarray>self.params[i]
        shape = (<object>p).shape
        if isinstance(obj, Blockwise8):
            _check_array(obj.codes, what + ".codes", cnp.NPY_UINT8, "uint8", shape)
            _check_writable(<cnp.ndarray>obj.codes, what + ".codes")
            nb = -(-p.size // QBLOCK)
            _check_array(obj.absmax, what + ".absmax", cnp.NPY_FLOAT, "float32", (nb,))
            _check_writable(<cnp.ndarray>obj.absmax, what + ".absmax")
            _check_array(obj.qmap, what + ".qmap", cnp.NPY_FLOAT, "float32", (256,))
            return 0
        if not isinstance(obj, np.ndarray):
            raise TypeError(f"{what} must be a float32 or uint16 (bfloat16) numpy.ndarray or a "
                            f"Blockwise8, got {_describe(obj)}")
        _refuse_subclass(obj, what)
        if obj.dtype != np.float32 and obj.dtype != np.uint16:
            raise ValueError(f"{what} must be float32 or uint16 (bfloat16 bits), got "
                             f"{_describe(obj)}")
        if obj.shape != shape:
            raise ValueError(f"{what} must have shape {shape}, got {_describe(obj)}")
        _check_layout(<cnp.ndarray>obj, what)
        _check_writable(<cnp.ndarray>obj, what)
        return 0

    cdef int _attach_state(self, int k, list arrays) except -1:
        cdef Py_ssize_t i
        for i in range(self.n):
            self.seg[i].state[k] = NULL
            self.seg[i].absmax[k] = NULL
            self.seg[i].qmap[k] = NULL
            self.seg[i].format[k] = FO_SF_F32
            if arrays is None:
                continue
            buf = arrays[i]
            if isinstance(buf, Blockwise8):
                self.seg[i].state[k] = cnp.PyArray_DATA(<cnp.ndarray>buf.codes)
                self.seg[i].absmax[k] = <float *>cnp.PyArray_DATA(<cnp.ndarray>buf.absmax)
                self.seg[i].qmap[k] = <const float *>cnp.PyArray_DATA(<cnp.ndarray>buf.qmap)
                self.seg[i].format[k] = FO_SF_Q8
            else:
                self.seg[i].state[k] = cnp.PyArray_DATA(<cnp.ndarray>buf)
                self.seg[i].format[k] = FO_SF_BF16 if buf.dtype == np.uint16 else FO_SF_F32
        return 0

    cdef int _check_grad(self, Py_ssize_t i, object obj, cnp.ndarray p, str name) except -1:
        what = f"{name}[{i + self.offset}]"
        if not isinstance(obj, np.ndarray):
            raise TypeError(f"{what} must be a float32 numpy.ndarray like "
                            f"{self.name}[{i + self.offset}], got {_describe(obj)}")
        _refuse_subclass(obj, what)
        cdef cnp.ndarray g = <cnp.ndarray>obj
        if cnp.PyArray_TYPE(g) != cnp.NPY_FLOAT:
            raise TypeError(f"{what} must have dtype float32 like {self.name}[{i + self.offset}], "
                            f"got {obj.dtype}")
        if not _same_shape(g, p):
            raise ValueError(f"{what} must have shape {(<object>p).shape} like "
                             f"{self.name}[{i + self.offset}], got {obj.shape}")
        _check_layout(g, what)
        return 0

    cdef int _store_grads(self, grads) except -1:
        cdef Py_ssize_t i
        for i in range(self.n):
            self.seg[i].grad = <const float *>cnp.PyArray_DATA(<cnp.ndarray>grads[i])
        return 0

    cdef void _forget_grads(self) noexcept:
        cdef Py_ssize_t i
        for i in range(self.n):
            self.seg[i].grad = NULL

    cdef fo_qstate_opts _opts(self, uint32_t used):
        cdef fo_qstate_opts o
        o.rounding = self._rounding
        o.seed = self.seed
        o.counter = self.counter
        o.used = used
        return o


_CODEC_LEVELS = ("scalar", "avx2", "avx512f", "avx512vbmi")


def vector_codecs():
    """Whether the int8 and bfloat16 codecs run as vector code here (AVX2 or AVX-512; else
    scalar, with the same codes)."""
    return bool(fo_qstate_vector_codecs(-1))


def codec_level():
    """The codecs running now: "scalar", "avx2" (8-lane gathers), "avx512f" (16-lane gathers)
    or "avx512vbmi" (AVX-512 with byte-table decoding)."""
    return _CODEC_LEVELS[fo_qstate_vector_codecs(-1)]


def codec_levels():
    """The levels `use_codecs` runs on this machine, lowest first: "scalar", then "avx2" and
    "avx512f" where the CPU (and the build) has them, then "best" wherever a vector level runs
    (above "avx512f" it may add byte-table decoding and the bfloat16 instruction). Leaves the
    best level running."""
    out = ["scalar"]
    for level in ("avx2", "avx512f"):
        use_codecs(level)
        if codec_level() == level:
            out.append(level)
    use_codecs("best")
    return out + (["best"] if codec_level() != "scalar" else [])


def bf16_instruction():
    """Whether bfloat16 state is rounded to nearest by the AVX-512 BF16 conversion instruction
    now (at the "best" level, on a CPU that has it; the same bits as every other level)."""
    return bool(fo_qstate_bf16_instruction())


def use_codecs(level):
    """Run the codecs at `level`: "scalar", "avx2" or "avx512f" (at most that level: the
    machine's best below it) or "best" (this machine's best); every level writes the same
    codes (tests, benchmarks)."""
    cdef int use = {"scalar": 0, "best": 1, "avx512f": 2, "avx2": 3}.get(level, -1)
    if use < 0:
        raise ValueError(f"level must be 'scalar', 'avx2', 'avx512f' or 'best', got {level!r}")
    fo_qstate_vector_codecs(use)


cdef int _fail(int bad) except -1:
    if bad:
        raise RuntimeError("fastopt low-bit state kernel rejected its arguments (internal error)")
    return 0


cdef inline int64_t _threshold():
    return _kernels.get_parallel_threshold()


def decode(str fmt, src, absmax=None, qmap=None):
    """float32 values of a state buffer held in `fmt` ("bfloat16": uint16 bits; "int8": codes
    with their absmax and qmap), as a new array shaped like `src`."""
    cdef cnp.ndarray s = np.ascontiguousarray(src)
    cdef cnp.ndarray out = np.empty((<object>s).shape, np.float32)
    cdef cnp.ndarray a, q
    cdef int r
    if fmt == "bfloat16":
        s = np.ascontiguousarray(s, dtype=np.uint16)
        r = fo_qstate_decode(FO_SF_BF16, cnp.PyArray_DATA(s), NULL, NULL,
                             <float *>cnp.PyArray_DATA(out), cnp.PyArray_SIZE(s))
    elif fmt == "int8":
        s = np.ascontiguousarray(s, dtype=np.uint8)
        a = np.ascontiguousarray(absmax, dtype=np.float32)
        q = np.ascontiguousarray(qmap, dtype=np.float32)
        if a.size != -(-s.size // QBLOCK) or q.size != 256:
            raise ValueError(f"absmax must hold {-(-s.size // QBLOCK)} values and qmap 256")
        r = fo_qstate_decode(FO_SF_Q8, cnp.PyArray_DATA(s), <float *>cnp.PyArray_DATA(a),
                             <const float *>cnp.PyArray_DATA(q), <float *>cnp.PyArray_DATA(out),
                             cnp.PyArray_SIZE(s))
    else:
        raise ValueError(f"format must be 'bfloat16' or 'int8', got {fmt!r}")
    _fail(r != 0)
    return out


def encode(str fmt, values, qmap=None):
    """`values` (cast to float32) encoded in `fmt`: "bfloat16" -> uint16 bits (nearest even);
    "int8" -> (codes uint8, absmax float32) with the map `qmap`."""
    cdef cnp.ndarray v = np.ascontiguousarray(values, dtype=np.float32)
    cdef cnp.ndarray out, a, q
    cdef int r
    if fmt == "bfloat16":
        out = np.empty((<object>v).shape, np.uint16)
        r = fo_qstate_encode(FO_SF_BF16, <const float *>cnp.PyArray_DATA(v), cnp.PyArray_DATA(out),
                             NULL, NULL, cnp.PyArray_SIZE(v))
        _fail(r != 0)
        return out
    if fmt != "int8":
        raise ValueError(f"format must be 'bfloat16' or 'int8', got {fmt!r}")
    q = np.ascontiguousarray(qmap, dtype=np.float32)
    if q.size != 256:
        raise ValueError("qmap must hold 256 values")
    out = np.empty((<object>v).shape, np.uint8)
    a = np.zeros(-(-v.size // QBLOCK), np.float32)
    r = fo_qstate_encode(FO_SF_Q8, <const float *>cnp.PyArray_DATA(v), cnp.PyArray_DATA(out),
                         <float *>cnp.PyArray_DATA(a), <const float *>cnp.PyArray_DATA(q),
                         cnp.PyArray_SIZE(v))
    _fail(r != 0)
    return out, a


# The option flags and one step function per kernel with low-bit state (adam, ...), generated
# from the optimizer table (src/fastopt/_table.py) by tools/generate.py.
include "_qstate_steps.pxi"
