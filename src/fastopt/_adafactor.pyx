# cython: language_level=3, wraparound=True
"""Cython bindings of torch.optim.Adafactor's step (csrc/adafactor.c, fastopt/adafactor.h).

Design note
-----------
One call steps one tensor: `check` verifies the arrays (types, dtypes, shapes, layout,
writability, no two written arrays and no gradient sharing memory), `step` checks and then
calls the C step with the GIL released. A caller with several tensors (the class, the
functional form) runs `check` on all of them before the first `step`, so an error leaves
everything untouched. The math is in C; here are only the shapes of torch's state
(`state_shapes`) and the scratch the column sums need (`scratch_length`).
"""
import numpy as np
cimport numpy as cnp
from libc.stdint cimport int64_t

from ._kernels cimport _check_layout, _check_writable, _describe, _refuse_subclass
from ._kernels import get_num_threads, get_parallel_threshold

cnp.import_array()

cdef extern from "fastopt/adafactor.h" nogil:
    ctypedef struct fo_adafactor_hp:
        double one_minus_beta2
        double rho
        double eps1
        double eps2
        double d
        double decay
        int maximize
        int f32_scalars

    ctypedef struct fo_adafactor_out:
        double alpha
        double denom

    int fo_adafactor_factored_f32(float *, const float *, float *, float *, int64_t, int64_t,
                                  int64_t, double *, int64_t, const fo_adafactor_hp *, int64_t,
                                  int, fo_adafactor_out *)
    int fo_adafactor_factored_f64(double *, const double *, double *, double *, int64_t,
                                  int64_t, int64_t, double *, int64_t, const fo_adafactor_hp *,
                                  int64_t, int, fo_adafactor_out *)
    int fo_adafactor_vector_f32(float *, const float *, float *, int64_t,
                                const fo_adafactor_hp *, int64_t, int, fo_adafactor_out *)
    int fo_adafactor_vector_f64(double *, const double *, double *, int64_t,
                                const fo_adafactor_hp *, int64_t, int, fo_adafactor_out *)


def state_shapes(shape):
    """torch's state shapes for a parameter of `shape`: ``{"row_var": shape with dim -1 = 1,
    "col_var": shape with dim -2 = 1}`` for >= 2 dims, else ``{"variance": shape}``."""
    shape = tuple(shape)
    if len(shape) < 2:
        return {"variance": shape}
    return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1, shape[-1])}


def scratch_length(shapes, int n_threads):
    """Doubles of scratch a step of tensors of these shapes needs to use `n_threads` threads
    for its column sums (at least 1)."""
    cols = max([s[-1] for s in map(tuple, shapes) if len(s) >= 2] or [0])
    return max(1, max(1, n_threads) * cols)


cdef int _check_array(object a, str what, object dtype, tuple shape, bint written) except -1:
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{what} must be a numpy.ndarray, got {_describe(a)}")
    _refuse_subclass(a, what)
    if dtype is None:
        if a.dtype != np.float32 and a.dtype != np.float64:
            raise TypeError(f"{what} must have dtype float32 or float64, got {a.dtype}")
    elif a.dtype != dtype:
        raise TypeError(f"{what} must have dtype {dtype} (as the parameter), got {a.dtype}")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{what} must have shape {shape}, got {a.shape}")
    _check_layout(<cnp.ndarray>a, what)
    if written:
        _check_writable(<cnp.ndarray>a, what)
    return 0


def check(param, grad, row_var, col_var, variance, scratch, str name="param",
          str grad_name="grad", str state_name=""):
    """Check one tensor's arrays for `step` (TypeError/ValueError naming the argument);
    writes nothing. `row_var`, `col_var` for a parameter of >= 2 dims, else `variance` (the
    others None); `scratch` a float64 array of at least the parameter's last dim (>= 2 dims).
    `state_name`: how messages name the state (default: by its key)."""
    _check_array(param, name, None, None, True)
    dtype, shape = param.dtype, param.shape
    _check_array(grad, grad_name, dtype, shape, False)
    shapes = state_shapes(shape)
    written = [(param, name)]
    for key, arr in (("row_var", row_var), ("col_var", col_var), ("variance", variance)):
        what = f"{state_name}[{key!r}]" if state_name else key
        if key in shapes:
            if arr is None:
                raise TypeError(f"{what} is required for a parameter of shape {shape}")
            _check_array(arr, what, dtype, shapes[key], True)
            written.append((arr, what))
        elif arr is not None:
            raise ValueError(f"{what} must be None for a parameter of shape {shape} (torch "
                             f"keeps {sorted(shapes)})")
    if len(shape) >= 2 and param.size:
        _check_array(scratch, "scratch", np.float64, None, True)
        if scratch.size < shape[-1]:
            raise ValueError(f"scratch has {scratch.size} elements, a parameter of shape "
                             f"{shape} needs at least {shape[-1]}")
        written.append((scratch, "scratch"))
    for i, (a, what_a) in enumerate(written):
        if a.size and grad.size and np.may_share_memory(a, grad):
            raise ValueError(f"{grad_name} shares memory with {what_a}, which the step writes")
        for b, what_b in written[i + 1:]:
            if a.size and b.size and np.may_share_memory(a, b):
                raise ValueError(f"{what_a} and {what_b} share memory")
    return None


def step(param, grad, row_var, col_var, variance, scratch, double one_minus_beta2, double rho,
         double eps1, double eps2, double d, double decay, bint maximize, str name="param",
         str grad_name="grad", str state_name="", bint f32_scalars=False):
    """One Adafactor step of one tensor in place (see `check` for the arrays and
    fastopt/adafactor.h for the scalars). Returns (alpha, denom): the step size before
    clipping and the clipping divisor (0.0, 0.0 for an empty tensor)."""
    check(param, grad, row_var, col_var, variance, scratch, name, grad_name, state_name)
    cdef fo_adafactor_hp hp
    cdef fo_adafactor_out out
    hp.one_minus_beta2, hp.rho, hp.eps1, hp.eps2 = one_minus_beta2, rho, eps1, eps2
    hp.d, hp.decay, hp.maximize = d, decay, maximize
    hp.f32_scalars = f32_scalars
    cdef int nt = get_num_threads()
    cdef int64_t threshold = get_parallel_threshold()
    cdef cnp.ndarray p = param, g = grad, a, b, s
    cdef int64_t batch = 1, rows = 0, cols = 0, n = p.size, slen = 0
    cdef int rc
    cdef bint f32 = p.dtype == np.float32
    if p.ndim >= 2:
        rows, cols = p.shape[p.ndim - 2], p.shape[p.ndim - 1]
        batch = n // (rows * cols) if rows * cols else 0
        a, b = row_var, col_var
        s = scratch if n else np.empty(1)
        slen = s.size
        with nogil:
            if f32:
                rc = fo_adafactor_factored_f32(<float *>p.data, <const float *>g.data,
                                               <float *>a.data, <float *>b.data, batch, rows,
                                               cols, <double *>s.data, slen, &hp, threshold,
                                               nt, &out)
            else:
                rc = fo_adafactor_factored_f64(<double *>p.data, <const double *>g.data,
                                               <double *>a.data, <double *>b.data, batch, rows,
                                               cols, <double *>s.data, slen, &hp, threshold,
                                               nt, &out)
    else:
        a = variance
        with nogil:
            if f32:
                rc = fo_adafactor_vector_f32(<float *>p.data, <const float *>g.data,
                                             <float *>a.data, n, &hp, threshold, nt, &out)
            else:
                rc = fo_adafactor_vector_f64(<double *>p.data, <const double *>g.data,
                                             <double *>a.data, n, &hp, threshold, nt, &out)
    if rc != 0:
        raise RuntimeError("fo_adafactor step rejected its arguments (a fastopt bug)")
    return out.alpha, out.denom
