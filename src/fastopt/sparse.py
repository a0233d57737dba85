"""Row-sparse gradients: :class:`RowSparseGrad`, the gradient type of :class:`fastopt.SparseAdam`.

An embedding table's gradient touches only the rows that a batch looked up. A
``RowSparseGrad(indices, values)`` holds those rows: ``indices`` (n,) integers into the first
axis of the parameter (repeats allowed; they are summed, as torch's ``coalesce`` sums them) and
``values`` (n, *param.shape[1:]), the gradient of each looked-up row. It is the NumPy
counterpart of torch's sparse COO gradient with one sparse dimension (``nn.Embedding(
sparse=True)``); a COO gradient over several leading dimensions is the same thing over the
parameter reshaped to ``(prod(shape[:k]), *shape[k:])`` with flattened indices
(`fastopt.torch.SparseAdam` does this).

>>> import numpy as np, fastopt as fo
>>> g = fo.RowSparseGrad([2, 0, 2], np.ones((3, 4), np.float32))
>>> g.nnz, g.row_shape
(3, (4,))
>>> g.to_dense((5, 4))[:, 0]
array([1., 0., 2., 0., 0.], dtype=float32)
"""
import numbers

import numpy as np

__all__ = ["RowSparseGrad", "check_row_sparse"]


class RowSparseGrad:
    """A row-sparse gradient: ``indices`` (n,) rows of the parameter's first axis, ``values``
    (n, *row_shape) their gradients. Duplicated indices are summed by the optimizer.

    The constructor converts ``indices`` to a 1-D int64 array and keeps ``values`` as an array
    (no copy when they are already so); shapes and ranges are checked against a parameter by
    the optimizer, which refuses a bad gradient before it writes anything.
    """
    __slots__ = ("indices", "values")

    def __init__(self, indices, values):
        if _on_device(indices) or _on_device(values):
            self.indices, self.values = _device_pair(indices, values)
            return
        idx = np.asarray(indices)
        if idx.dtype == np.bool_ or not (np.issubdtype(idx.dtype, np.integer) or idx.size == 0):
            raise TypeError(f"indices must be integers, got dtype {idx.dtype}")
        if idx.ndim != 1:
            raise ValueError(f"indices must be 1-D (one row index per value row), got shape "
                             f"{idx.shape}")
        if idx.dtype != np.int64:
            if idx.size and np.issubdtype(idx.dtype, np.unsignedinteger) \
                    and idx.max() > np.iinfo(np.int64).max:
                raise ValueError("indices has values beyond int64")
            idx = idx.astype(np.int64)
        vals = values if isinstance(values, np.ndarray) else np.asarray(values)
        if vals.ndim < 1 or vals.shape[0] != idx.shape[0]:
            raise ValueError(f"values must have one row per index: indices has {idx.shape[0]} "
                             f"entries, values has shape {vals.shape}")
        self.indices = idx
        self.values = vals

    @property
    def nnz(self):
        """Number of (index, row) entries, duplicates counted."""
        return int(self.indices.shape[0])

    @property
    def row_shape(self):
        """The shape of one row: ``param.shape[1:]``."""
        return tuple(self.values.shape[1:])

    def to_dense(self, shape):
        """The dense gradient of a parameter of `shape` (duplicates summed; for tests)."""
        out = np.zeros(shape, self.values.dtype)
        np.add.at(out, self.indices, self.values)
        return out

    def __repr__(self):
        return (f"RowSparseGrad(nnz={self.nnz}, row_shape={self.row_shape}, "
                f"dtype={self.values.dtype})")


def _on_device(a):
    return type(a).__module__.startswith("cupy")


def _device_pair(indices, values):
    """(indices as int64, values) of a gradient held by CuPy arrays (both on the device)."""
    if not (_on_device(indices) and _on_device(values)):
        raise TypeError("indices and values must both be CuPy arrays or both host arrays, "
                        f"got {type(indices).__name__} and {type(values).__name__}")
    kind = np.dtype(indices.dtype)
    if kind == np.bool_ or not (np.issubdtype(kind, np.integer) or indices.size == 0):
        raise TypeError(f"indices must be integers, got dtype {kind}")
    if indices.ndim != 1:
        raise ValueError(f"indices must be 1-D (one row index per value row), got shape "
                         f"{indices.shape}")
    if values.ndim < 1 or values.shape[0] != indices.shape[0]:
        raise ValueError(f"values must have one row per index: indices has "
                         f"{indices.shape[0]} entries, values has shape {values.shape}")
    return (indices if kind == np.int64 else indices.astype(np.int64)), values


def check_row_sparse(grad, param, name):
    """`grad` as a RowSparseGrad fit for `param` (values of its dtype, C-contiguous: a copy
    only when needed), or TypeError/ValueError naming `name`. A plain array is refused as
    torch.optim.SparseAdam refuses dense gradients. Index ranges are checked by the kernel,
    before it writes."""
    if isinstance(grad, tuple) and len(grad) == 2:
        try:
            grad = RowSparseGrad(*grad)
        except (TypeError, ValueError) as e:
            raise type(e)(f"{name}: {e}") from None
    if not isinstance(grad, RowSparseGrad):
        if hasattr(grad, "__array_interface__") or isinstance(grad, numbers.Number):
            raise TypeError(f"{name}: SparseAdam does not support dense gradients, please "
                            "consider Adam instead (pass a fastopt.RowSparseGrad(indices, "
                            "values) or an (indices, values) tuple)")
        raise TypeError(f"{name} must be a fastopt.RowSparseGrad or an (indices, values) "
                        f"tuple, got {type(grad).__name__}")
    if _on_device(param):                         # CuPy: fastopt._sparse_adam_cupy checks
        from ._sparse_adam_cupy import check_grad
        return check_grad(grad, param, name)
    if not isinstance(param, np.ndarray) or param.ndim < 1:
        raise ValueError(f"{name}: a row-sparse gradient needs a parameter with at least one "
                         "axis")
    vals = grad.values
    if not isinstance(vals, np.ndarray):
        raise TypeError(f"{name}.values must be a numpy.ndarray, got {type(vals).__name__}")
    if vals.dtype != param.dtype:
        raise TypeError(f"{name}.values has dtype {vals.dtype}, expected {param.dtype} like its "
                        "parameter")
    expected = (grad.indices.shape[0],) + param.shape[1:]
    if vals.shape != expected:
        raise ValueError(f"{name}.values has shape {vals.shape}, expected {expected} (one row of "
                         f"the parameter's shape {param.shape[1:]} per index)")
    idx = grad.indices
    if not (isinstance(idx, np.ndarray) and idx.dtype == np.int64 and idx.ndim == 1):
        raise TypeError(f"{name}.indices must be a 1-D int64 array (RowSparseGrad converts "
                        "them)")
    if not (vals.flags.c_contiguous and vals.flags.aligned) or \
            not (idx.flags.c_contiguous and idx.flags.aligned):
        grad = RowSparseGrad(np.ascontiguousarray(idx), np.ascontiguousarray(vals))
    return grad
