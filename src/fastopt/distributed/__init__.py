"""Data-parallel training over MPI (mpi4py): averaged gradients, sharded state, SyncBatchNorm.

Run the same script on N processes, e.g. ``mpiexec -n 4 python train.py``; each rank computes
gradients on its 1/N of the global batch.

* `DistributedOptimizer(opt, comm)`: every rank keeps all state; gradients are averaged with
  bucketed in-place ``Allreduce``, then `opt`'s fused step runs (also Muon and Adafactor;
  SparseAdam's row-sparse gradients are all-gathered; LBFGS's closure is averaged).
* `ShardedOptimizer(opt_cls, params, comm, **hyperparameters)`: ZeRO stage 1, each rank keeps
  and updates the state of 1/N of the parameters (``Reduce_scatter`` + ``Allgatherv``);
  elementwise rules only (Muon, Adafactor, SparseAdam, LBFGS raise TypeError).
* `SyncBatchNorm(comm, num_features, ...)`: `fastopt.nn.BatchNorm` with batch statistics over all ranks.

Needs the ``[mpi]`` extra (``pip install "fastopt[mpi]"``: mpi4py and the mpich wheel, which
puts ``mpiexec`` next to the Python executable) or mpi4py built against a system MPI. mpi4py
is imported (and MPI initialised) only when one of these objects is created.
"""
from .data_parallel import DistributedOptimizer
from .sharded import ShardedOptimizer
from .sync_batchnorm import SyncBatchNorm

__all__ = ["DistributedOptimizer", "ShardedOptimizer", "SyncBatchNorm"]
