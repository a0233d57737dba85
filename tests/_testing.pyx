# cython: language_level=3
"""fastopt._testing: test-only entry points into the C code, never shipped in a wheel.

The 16-bit conversions of the mixed-precision loops (csrc/fastopt/half.h, the same `static
inline` functions csrc/mixed.c inlines, compiled with the same flags), over whole arrays, so
that tests/test_mixed.py can compare them with NumPy's float16 and ml_dtypes' bfloat16 casts
on every bit pattern.

setup.py builds this module for in-place builds of a source checkout
(``python setup.py build_ext --inplace``, scripts/sanitize.sh) and leaves it out of wheels;
``FASTOPT_TEST_API=1`` / ``=0`` forces either way.
"""
import numpy as np

from libc.stdint cimport int64_t, uint16_t, uint32_t, uint64_t

cdef extern from "fastopt/half.h" nogil:
    float fo_h2f(uint16_t h)
    uint16_t fo_f2h(float f)
    float fo_bf2f(uint16_t b)
    uint16_t fo_f2bf(float f)
    uint16_t fo_f2bf_sr(float f, uint32_t noise)
    uint64_t fo_stream_key(uint64_t seed, uint64_t counter, uint64_t stream)
    uint32_t fo_noise(uint64_t key, int64_t i)

__all__ = ["f32_to_f16_bits", "f32_to_bf16_bits", "f32_to_bf16_bits_stochastic",
           "f16_bits_to_f32", "bf16_bits_to_f32"]


cdef enum:
    F16, BF16, BF16_STOCHASTIC


cdef _narrow(x, int kind, uint64_t key=0):
    """uint16 bit patterns of float32 values, converted as the loops do."""
    a = np.ascontiguousarray(x, dtype=np.float32)
    out = np.empty(a.shape, np.uint16)
    cdef const float[::1] src = a.reshape(-1)
    cdef uint16_t[::1] dst = out.reshape(-1)
    cdef int64_t i
    with nogil:
        for i in range(src.shape[0]):
            if kind == F16:
                dst[i] = fo_f2h(src[i])
            elif kind == BF16:
                dst[i] = fo_f2bf(src[i])
            else:
                dst[i] = fo_f2bf_sr(src[i], fo_noise(key, i))
    return out


cdef _widen(bits, int kind):
    """float32 values of uint16 bit patterns (exact)."""
    a = np.ascontiguousarray(bits, dtype=np.uint16)
    out = np.empty(a.shape, np.float32)
    cdef const uint16_t[::1] src = a.reshape(-1)
    cdef float[::1] dst = out.reshape(-1)
    cdef int64_t i
    with nogil:
        for i in range(src.shape[0]):
            dst[i] = fo_h2f(src[i]) if kind == F16 else fo_bf2f(src[i])
    return out


def f32_to_f16_bits(x):
    """float16 bit patterns (uint16) of float32 values rounded to nearest even, as the loops do."""
    return _narrow(x, F16)


def f32_to_bf16_bits(x):
    """bfloat16 bit patterns (uint16) of float32 values rounded to nearest even."""
    return _narrow(x, BF16)


def f32_to_bf16_bits_stochastic(x, uint64_t seed=0, uint64_t counter=0, uint64_t stream=0):
    """bfloat16 bit patterns of float32 values rounded stochastically (element i of a stream)."""
    return _narrow(x, BF16_STOCHASTIC, fo_stream_key(seed, counter, stream))


def f16_bits_to_f32(bits):
    """float32 values of float16 bit patterns (exact)."""
    return _widen(bits, F16)


def bf16_bits_to_f32(bits):
    """float32 values of bfloat16 bit patterns (exact)."""
    return _widen(bits, BF16)
