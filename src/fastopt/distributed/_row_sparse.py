"""Row-sparse gradients over MPI: every rank's rows, all-gathered, for SparseAdam.

Design note
-----------
A row-sparse gradient (``fastopt.RowSparseGrad``: row indices and their values) cannot be
summed in place like a dense buffer: the ranks touch different rows, in different numbers.
Since SparseAdam sums duplicated indices (as torch's ``coalesce``), the average over the ranks
is simply every rank's (index, value) pairs side by side, the values scaled by 1/N: one
``Allgather`` of the row counts per parameter (with an error flag, so a rank with a bad
gradient makes every rank raise instead of leaving the others in a collective), then per
parameter one ``Allgatherv`` of the indices and one of the values. Every rank ends with the
same gradient, rank order, so the wrapped SparseAdam's own checks (index ranges) and update
are the same everywhere. Message sizes follow the touched rows, never the table's size; the
gathered arrays are new each step (their length is the number of rows touched over all ranks,
which changes from step to step).
"""
import numpy as np

from ..sparse import RowSparseGrad, check_row_sparse
from ._mpi import mpi, mpi_type

__all__ = ["gather"]


def _local(params, grads):
    """(checked RowSparseGrads, None) or (None, error message), this rank alone."""
    if isinstance(grads, RowSparseGrad):
        grads = [grads]
    if not isinstance(grads, (list, tuple)):
        return None, (f"grads must be a list of fastopt.RowSparseGrad (one per parameter), got "
                      f"{type(grads).__name__}")
    if len(grads) != len(params):
        return None, (f"grads has {len(grads)} entries but the optimizer has {len(params)} "
                      "parameters")
    try:
        return [check_row_sparse(g, p, f"grads[{i}]")
                for i, (g, p) in enumerate(zip(grads, params))], None
    except (TypeError, ValueError) as e:
        return None, str(e)


def gather(comm, params, grads, problem=None):
    """The average over the ranks of `grads` (this rank's row-sparse gradients, one per
    parameter), as one RowSparseGrad per parameter holding every rank's rows, values / N.
    Collective. Raises ValueError on every rank if any rank's gradients are invalid or has
    a `problem` (an error message about its other arguments)."""
    size = comm.Get_size()
    checked = None
    if problem is None:
        checked, problem = _local(params, grads)
    mine = np.zeros(len(params) + 1, np.int64)
    if problem is None:
        mine[:-1] = [g.nnz for g in checked]
    else:
        mine[-1] = 1
    counts = np.empty((size, len(params) + 1), np.int64)
    comm.Allgather(mine, counts)
    n_bad = int(counts[:, -1].sum())
    if n_bad:
        where = problem if problem is not None else "see the error on the other rank(s)"
        raise ValueError(f"invalid input to step on {n_bad} of {size} ranks, nothing was "
                         f"updated: {where}")
    MPI, out = mpi(), []
    for i, (p, g) in enumerate(zip(params, checked)):
        n = counts[:, i]
        displs = np.concatenate([[0], np.cumsum(n)[:-1]])
        row = int(np.prod(p.shape[1:], dtype=np.int64))
        idx = np.empty(int(n.sum()), np.int64)
        vals = np.empty((idx.size,) + p.shape[1:], p.dtype)
        comm.Allgatherv([g.indices, MPI.INT64_T], [idx, (n, displs), MPI.INT64_T])
        kind = mpi_type(p.dtype)
        comm.Allgatherv([g.values, kind], [vals, (n * row, displs * row), kind])
        vals *= p.dtype.type(1.0 / size)
        out.append(RowSparseGrad(idx, vals))
    return out
