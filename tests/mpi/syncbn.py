"""SyncBatchNorm on N ranks vs BatchNorm on the concatenated batch (run under mpiexec).

Two training steps (forward + backward; the second uses the running mean moved by the first
as its shift) and one eval forward, for (N, C) and (N, C, H, W) float64 inputs. Reports the
relative errors of this rank's output rows, input gradient, the all-reduced affine
gradients, and the running statistics; then one rank passes a wrong-shaped input and every
rank reports the error it got.
"""
import numpy as np
from mpi4py import MPI

from fastopt.distributed import SyncBatchNorm
from fastopt.nn import BatchNorm
from common import local_rows, rel_error, report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
C = 3


def compare(shape):
    errors = {}
    full = BatchNorm(C, momentum=0.3, dtype=np.float64)
    sync = SyncBatchNorm(comm, C, momentum=0.3, dtype=np.float64)
    for bn in (full, sync):
        bn.weight[...] = [1.5, -0.5, 2.0]
        bn.bias[...] = [0.1, 0.2, -0.3]
    for step in range(2):
        rng = np.random.default_rng(step)
        x = 2.0 + rng.standard_normal(shape) * np.array([1.0, 3.0, 0.5]).reshape(1, C, *[1] * (len(shape) - 2))
        dy = rng.standard_normal(shape)
        y_full = full.forward(x)
        dx_full = full.backward(dy)
        y = sync.forward(local_rows(x, rank, size))
        dx = sync.backward(local_rows(dy, rank, size))
        grad_w = comm.allreduce(sync.grad_weight)
        grad_b = comm.allreduce(sync.grad_bias)
        errors[f"step{step}"] = {
            "y": rel_error(y, local_rows(y_full, rank, size)),
            "dx": rel_error(dx, local_rows(dx_full, rank, size)),
            "grad_weight": rel_error(grad_w, full.grad_weight),
            "grad_bias": rel_error(grad_b, full.grad_bias),
            "running_mean": rel_error(sync.running_mean, full.running_mean),
            "running_var": rel_error(sync.running_var, full.running_var),
        }
    x = np.random.default_rng(9).standard_normal(shape)
    errors["eval"] = {"y": rel_error(sync.eval().forward(local_rows(x, rank, size)),
                                     local_rows(full.eval().forward(x), rank, size))}
    return errors


results = {"NC": compare((12, C)), "NCHW": compare((6 * size, C, 4, 5))}

bn = SyncBatchNorm(comm, C, dtype=np.float64)
x = np.ones((4, C + (rank == size - 1), 2))       # the last rank has the wrong channel count
try:
    bn.forward(x)
    error = None
except ValueError as e:
    error = str(e)
report(rank, size=size, errors=results, bad_input_error=error)
