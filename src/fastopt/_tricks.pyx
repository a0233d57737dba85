# cython: language_level=3
"""Cython binding of the bilinear batch resize (csrc/resize.c).

Design note
-----------
This module checks buffers, builds the two axis tables, releases the GIL and calls C; the
interpolation itself lives in csrc/resize.c. Checks (all before anything is written): the
source is a 4-D C-contiguous ndarray of float32, float64 or uint8 in native byte order; the
destination, when given, has the output shape and the same dtype, is C-contiguous, writable
and shares no memory with the source. Argument semantics (layout names, sizes) are checked by
fastopt.tricks, the public entry point.
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t

from ._kernels cimport int_setting

cnp.import_array()


cdef extern from "fastopt/resize.h":
    int fo_resize_axis_f32(int64_t inp, int64_t out, int64_t *i0, int64_t *i1,
                           float *l0, float *l1) nogil
    int fo_resize_axis_f64(int64_t inp, int64_t out, int64_t *i0, int64_t *i1,
                           double *l0, double *l1) nogil
    enum: FO_RESIZE_F32
    enum: FO_RESIZE_F64
    enum: FO_RESIZE_U8
    int fo_resize(int type, bint nhwc, const void *src, void *dst, int64_t n, int64_t channels,
                  int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w,
                  const int64_t *y0, const int64_t *y1, const void *ly0, const void *ly1,
                  const int64_t *x0, const int64_t *x1, const void *lx0, const void *lx1,
                  int n_threads) nogil
    int64_t fo_resize_parallel_threshold
    int fo_resize_max_threads() nogil


SUPPORTED_DTYPES = (np.dtype(np.float32), np.dtype(np.float64), np.dtype(np.uint8))


# Output elements below which a resize runs on the calling thread.
_threshold = int_setting(&fo_resize_parallel_threshold, "threshold")
get_parallel_threshold = _threshold.get
set_parallel_threshold = _threshold.set


def axis_table(int64_t in_size, int64_t out_size, dtype):
    """(i0, i1, l0, l1) of one axis: source indices and weights (see csrc/fastopt/resize.h)."""
    if in_size < 1 or out_size < 1:
        raise ValueError(f"sizes must be >= 1, got in_size={in_size}, out_size={out_size}")
    wdtype = np.dtype(np.float64) if np.dtype(dtype) == np.float64 else np.dtype(np.float32)
    cdef cnp.ndarray i0 = np.empty(out_size, np.int64)
    cdef cnp.ndarray i1 = np.empty(out_size, np.int64)
    cdef cnp.ndarray l0 = np.empty(out_size, wdtype)
    cdef cnp.ndarray l1 = np.empty(out_size, wdtype)
    cdef int rc
    if wdtype == np.float64:
        rc = fo_resize_axis_f64(in_size, out_size, <int64_t *>cnp.PyArray_DATA(i0),
                                <int64_t *>cnp.PyArray_DATA(i1), <double *>cnp.PyArray_DATA(l0),
                                <double *>cnp.PyArray_DATA(l1))
    else:
        rc = fo_resize_axis_f32(in_size, out_size, <int64_t *>cnp.PyArray_DATA(i0),
                                <int64_t *>cnp.PyArray_DATA(i1), <float *>cnp.PyArray_DATA(l0),
                                <float *>cnp.PyArray_DATA(l1))
    if rc != 0:
        raise RuntimeError("fo_resize_axis rejected its arguments")
    return i0, i1, l0, l1


def resize_bilinear(cnp.ndarray src, int64_t out_h, int64_t out_w, bint nhwc, dst=None,
                    int n_threads=0):
    """Resize a 4-D batch to (out_h, out_w); returns dst (allocated when None).

    ``nhwc`` selects the layout (N, H, W, C); otherwise (N, C, H, W). ``n_threads`` 0 means
    OpenMP's default.
    """
    if cnp.PyArray_NDIM(src) != 4:
        raise ValueError(f"batch must be 4-D, got {cnp.PyArray_NDIM(src)}-D of shape "
                         f"{(<object>src).shape}")
    dtype = src.dtype
    if dtype not in SUPPORTED_DTYPES or not dtype.isnative:
        raise TypeError(f"batch dtype must be float32, float64 or uint8 (native byte order), "
                        f"got {dtype}")
    if not cnp.PyArray_IS_C_CONTIGUOUS(src):
        raise ValueError("batch must be C-contiguous")
    if out_h < 1 or out_w < 1:
        raise ValueError(f"output size must be >= 1, got ({out_h}, {out_w})")
    cdef int64_t n = src.shape[0]
    cdef int64_t c, in_h, in_w
    if nhwc:
        in_h, in_w, c = src.shape[1], src.shape[2], src.shape[3]
        shape = (n, out_h, out_w, c)
    else:
        c, in_h, in_w = src.shape[1], src.shape[2], src.shape[3]
        shape = (n, c, out_h, out_w)
    if in_h < 1 or in_w < 1 or c < 1:
        raise ValueError(f"batch has an empty image axis: shape {(<object>src).shape}")
    cdef cnp.ndarray out
    if dst is None:
        out = np.empty(shape, dtype)
    else:
        if not isinstance(dst, np.ndarray):
            raise TypeError(f"out must be a numpy.ndarray, got {type(dst).__name__}")
        out = dst
        if out.dtype != dtype:
            raise TypeError(f"out dtype must be {dtype} (the batch's), got {out.dtype}")
        if (<object>out).shape != shape:
            raise ValueError(f"out shape must be {shape}, got {(<object>out).shape}")
        if not cnp.PyArray_IS_C_CONTIGUOUS(out):
            raise ValueError("out must be C-contiguous")
        if not out.flags.writeable:
            raise ValueError("out must be writable")
        if np.shares_memory(out, src):
            raise ValueError("out must not share memory with the batch")
    if n == 0:
        return out
    if in_h == out_h and in_w == out_w:
        np.copyto(out, src)  # identity: an exact copy
        return out
    if n_threads <= 0:
        n_threads = fo_resize_max_threads()

    ys = axis_table(in_h, out_h, dtype)
    xs = axis_table(in_w, out_w, dtype)
    cdef cnp.ndarray y0 = ys[0], y1 = ys[1], ly0 = ys[2], ly1 = ys[3]
    cdef cnp.ndarray x0 = xs[0], x1 = xs[1], lx0 = xs[2], lx1 = xs[3]
    cdef const int64_t *py0 = <const int64_t *>cnp.PyArray_DATA(y0)
    cdef const int64_t *py1 = <const int64_t *>cnp.PyArray_DATA(y1)
    cdef const int64_t *px0 = <const int64_t *>cnp.PyArray_DATA(x0)
    cdef const int64_t *px1 = <const int64_t *>cnp.PyArray_DATA(x1)
    cdef void *s = cnp.PyArray_DATA(src)
    cdef void *d = cnp.PyArray_DATA(out)
    cdef void *wy0 = cnp.PyArray_DATA(ly0)
    cdef void *wy1 = cnp.PyArray_DATA(ly1)
    cdef void *wx0 = cnp.PyArray_DATA(lx0)
    cdef void *wx1 = cnp.PyArray_DATA(lx1)
    cdef int kind = (FO_RESIZE_F32 if dtype == np.float32 else
                     (FO_RESIZE_F64 if dtype == np.float64 else FO_RESIZE_U8))
    cdef int rc = 0
    with nogil:
        rc = fo_resize(kind, nhwc, s, d, n, c, in_h, in_w, out_h, out_w, py0, py1, wy0, wy1,
                       px0, px1, wx0, wx1, n_threads)
    if rc != 0:
        raise RuntimeError("fo_resize rejected its arguments")
    return out
