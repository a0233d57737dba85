"""Synchronized batch normalization: `fastopt.nn.BatchNorm` with statistics over all ranks.

Design note
-----------
`BatchNorm` routes its cross-example reductions through hooks; this class overrides the two
reductions with one in-place ``Allreduce(SUM)`` each: in the forward pass of the per-channel
sums of ``x - s`` and ``(x - s)^2`` and the count, in the backward pass of ``sum dy`` and
``sum dy * xhat``; and the shift ``s`` with the running mean, which is the same on every
rank (every rank applies the same reduced update to it), so no message is needed for it. The mean, variance and input gradient are then those of BatchNorm on the
concatenated global batch. Each message carries one more element, an error flag: a rank whose
input is rejected before it reaches the reduction still joins it with the flag set, so every
rank raises instead of waiting.
"""
import numpy as np

from ..nn import BatchNorm
from ._mpi import mpi, world

__all__ = ["SyncBatchNorm"]


class SyncBatchNorm(BatchNorm):
    """BatchNorm whose training-mode batch statistics come from all ranks of `comm`.

    ``SyncBatchNorm(comm, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=float32)``;
    `comm` is an mpi4py communicator (None: ``MPI.COMM_WORLD``). In training mode `forward`
    and `backward` are collective (every rank calls them, in the same order); with per-rank
    batches :math:`x^{(r)}` the result on rank r equals rows r of ``BatchNorm`` applied to the
    concatenation of all :math:`x^{(r)}`. ``grad_weight``/``grad_bias`` are this rank's sums,
    to be averaged with the other gradients (e.g. by `DistributedOptimizer`). Eval mode uses
    the running statistics, identical on every rank, and communicates nothing.
    """

    def __init__(self, comm, num_features, eps=1e-5, momentum=0.1, affine=True,
                 dtype=np.float32):
        super().__init__(num_features, eps=eps, momentum=momentum, affine=affine, dtype=dtype)
        self.comm = world(comm)
        self._joined = True

    def _allreduce(self, values, flag):
        """Sum `values` (float64) over the ranks in one message; raise if any rank flagged."""
        buf = np.empty(values.size + 1)
        buf[:-1] = values
        buf[-1] = flag
        self.comm.Allreduce(mpi().IN_PLACE, buf)
        self._joined = True
        if buf[-1] != 0 and not flag:
            raise ValueError(f"{type(self).__name__}: the input was rejected on "
                             f"{int(buf[-1])} other rank(s); see the error there")
        return buf[:-1]

    def stats_shift(self, x3):
        """The running mean: identical on every rank, so the shifted sums add up."""
        return self.running_mean.astype(np.float64)

    def reduce_stats(self, stats):
        return self._allreduce(stats, 0)

    def reduce_grad_sums(self, sums):
        return self._allreduce(sums, 0)

    def _collective(self, call, arg, size, communicates):
        self._joined = not communicates
        try:
            return call(arg)
        except (TypeError, ValueError, RuntimeError):
            if not self._joined:                 # failed before the reduction: join it, flagged
                self._allreduce(np.zeros(size), 1)
            raise

    def forward(self, x):
        return self._collective(super().forward, x, 2 * self.num_features + 1, self.training)

    __call__ = forward

    def backward(self, dy):
        training = self._cache is not None and self._cache[0] == "train"
        return self._collective(super().backward, dy, 2 * self.num_features, training)

    def __repr__(self):
        return (f"SyncBatchNorm({self.num_features}, eps={self.eps}, momentum={self.momentum}, "
                f"affine={self.affine}, dtype={self.dtype.name}, ranks={self.comm.Get_size()})")
