"""SparseAdam's step on CuPy arrays: coalescing and the lazy row update as CuPy operations.

Design note
-----------
The CPU kernel (csrc/sparse_adam.c) sums the rows of repeated indices in the order of
torch's CPU sort of the indices, then updates each distinct row with separately rounded
operations (no fma):

    g = maximize ? -g : g;  um = (g - m) c1;  uv = (g g - v) c2;  m += um;  v += uv;
    p = p + nss ((um + m0) / (sqrt(uv + v0) + eps))

Here, on the device: a stable ``argsort`` of the indices (CuPy's sort; repeats keep their
order in the gradient), the distinct rows and their counts, the first row of each run
gathered and the k-th repeats added in k order (one vectorized add per repeat rank), then the
same element operations on the gathered rows of p, m and v, scattered back (the rows are
distinct, so a plain indexed assignment). The element operations are the CPU's, so the
results are bit for bit the CPU's whenever no index repeats three times or more; with three
or more repeats the CPU adds them in the order of torch's (unstable) CPU sort, here in
gradient order: a difference of rounding in those rows' sums. Temporaries are of the
gradient's size (its rows), never the table's; one host sync per step (the number of
distinct rows and the largest repeat count, which shape the gathers) plus one for the index
range check.
"""
import numpy as np

from .cuda import check_device_array

__all__ = ["check_grad", "check_state", "step"]


def _cupy():
    from .cuda import require_cupy
    return require_cupy()


def check_grad(grad, param, name):
    """`grad` (a RowSparseGrad of CuPy arrays, as `fastopt.sparse.check_row_sparse` passes
    it) fit for the CuPy parameter `param`, or TypeError/ValueError naming `name` (index
    ranges are checked by `step`, before it writes)."""
    cp = _cupy()
    if param.ndim < 1:
        raise ValueError(f"{name}: a row-sparse gradient needs a parameter with at least one "
                         "axis")
    vals, idx = grad.values, grad.indices
    for label, a in ((f"{name}.values", vals), (f"{name}.indices", idx)):
        check_device_array(a, label, param, "the parameter")
    if vals.dtype != param.dtype:
        raise TypeError(f"{name}.values has dtype {vals.dtype}, expected {param.dtype} like its "
                        "parameter")
    expected = (idx.shape[0],) + tuple(param.shape[1:])
    if tuple(vals.shape) != expected:
        raise ValueError(f"{name}.values has shape {tuple(vals.shape)}, expected {expected} (one "
                         f"row of the parameter's shape {tuple(param.shape[1:])} per index)")
    if not vals.flags.c_contiguous or not idx.flags.c_contiguous:
        grad = type(grad)(cp.ascontiguousarray(idx), cp.ascontiguousarray(vals))
    return grad


def check_state(param, exp_avg, exp_avg_sq, names):
    """The moments: CuPy arrays like the parameter (dtype, shape, device, C order)."""
    cp = _cupy()
    pn, mn, vn = names[:3]
    if param.dtype not in (np.float32, np.float64) or not param.flags.c_contiguous:
        raise TypeError(f"{pn} must be a C-contiguous float32 or float64 cupy.ndarray")
    for label, a in ((mn, exp_avg), (vn, exp_avg_sq)):
        if not isinstance(a, cp.ndarray) or a.dtype != param.dtype \
                or tuple(a.shape) != tuple(param.shape) or not a.flags.c_contiguous \
                or a.device.id != param.device.id:
            raise TypeError(f"{label} must be a C-contiguous cupy.ndarray of {param.dtype} and "
                            f"shape {tuple(param.shape)} on {pn}'s device")


def step(param, exp_avg, exp_avg_sq, indices, values, one_minus_beta1, one_minus_beta2, eps,
         neg_step_size, maximize, names):
    """One SparseAdam step of one CuPy parameter in place. Raises ValueError naming the
    first index out of range, before anything is written."""
    cp = _cupy()
    nnz = int(indices.shape[0])
    n_rows = int(param.shape[0])
    row_len = int(np.prod(param.shape[1:], dtype=np.int64))
    if nnz == 0 or row_len == 0:
        return
    with cp.cuda.Device(param.device.id):
        bad = cp.logical_or(indices < 0, indices >= n_rows)
        if bool(cp.any(bad)):
            k = int(cp.argmax(bad))
            raise ValueError(f"{names[3]}[{k}] = {int(indices[k])} is out of range for "
                             f"{names[0]} with {n_rows} rows; nothing was updated")
        order = cp.argsort(indices, kind="stable")
        keys = cp.take(indices, order)
        first = cp.ones(nnz, dtype=np.bool_)
        cp.not_equal(keys[1:], keys[:-1], out=first[1:])
        starts = cp.flatnonzero(first)                       # one sync: the distinct count
        counts = cp.diff(cp.concatenate([starts, cp.asarray([nnz])]))
        rows = cp.take(keys, starts)
        vals = values.reshape(nnz, row_len)
        t = np.dtype(param.dtype).type
        g = cp.take(vals, cp.take(order, starts), axis=0)    # the first of each run
        for k in range(1, int(counts.max())):                # then the k-th repeats, in order
            more = cp.flatnonzero(counts > k)
            g[more] = g[more] + cp.take(vals, cp.take(order, starts[more] + k), axis=0)
        if maximize:
            cp.negative(g, out=g)
        p = param.reshape(n_rows, row_len)
        m = exp_avg.reshape(n_rows, row_len)
        v = exp_avg_sq.reshape(n_rows, row_len)
        m0, v0, p0 = cp.take(m, rows, axis=0), cp.take(v, rows, axis=0), cp.take(p, rows, axis=0)
        um = (g - m0) * t(one_minus_beta1)
        uv = (g * g - v0) * t(one_minus_beta2)
        denom = cp.sqrt(uv + v0) + t(eps)
        p[rows] = p0 + t(neg_step_size) * ((um + m0) / denom)
        m[rows] = m0 + um
        v[rows] = v0 + uv
