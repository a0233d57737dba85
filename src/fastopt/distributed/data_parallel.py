"""Data-parallel training: gradients averaged over ranks in buckets, then one fused step.

Design note
-----------
Every rank holds all parameters and a full copy of the wrapped optimizer. Construction checks
collectively that all ranks pass parameters of the same dtypes and shapes, then broadcasts the
parameters from rank 0, so every rank starts from the same point. A step copies the local
gradients into one preallocated flat buffer per dtype, averages it with in-place ``Allreduce``
calls over contiguous buckets of at most ``bucket_bytes`` (a bucket spans as many tensors as
fit, so many small tensors cost one message, not one each), scales by 1/N and hands views of
the buffer to the wrapped optimizer's fused step. Memory: one gradient-sized buffer.

One extra element at the end of the last buffer carries an error flag: a rank whose gradients
(or ``nonfinite`` argument) are invalid still joins every ``Allreduce`` (with zeros) but sets
the flag, so all ranks learn about the error in the same messages and raise together, with
every parameter unchanged, instead of the others waiting for a rank that has left.

Non-finite gradients: after the ``Allreduce`` every rank holds the same averaged buffer (a NaN
or Inf on one rank, or a sum that overflows, is non-finite there on every rank), so the
wrapped optimizer's own ``step(..., nonfinite=...)`` check reaches the same decision
everywhere: every rank skips, or every rank raises, or every rank updates. No extra message.

What a step averages depends on what the wrapped optimizer's step takes:

* gradients (the first-order optimizers of the table, Muon, Adafactor): the buffers above,
  then its step; Muon's Newton-Schulz and Adafactor's row/column factors then see the same
  averaged matrix on every rank, so every rank computes the same update;
* row-sparse gradients (SparseAdam): every rank's rows are all-gathered (``_row_sparse``),
  values / N, and SparseAdam sums duplicated rows; no gradient-sized buffer is kept;
* a closure (LBFGS): ``step(closure)`` runs LBFGS with a closure that calls this rank's
  closure and averages its loss and gradients over the ranks (the bucketed ``Allreduce`` plus
  one two-element ``Allreduce`` of the loss and an error flag) on every evaluation. LBFGS is
  deterministic in what the closure returns, so every rank takes the same iterations, line
  search trials and stopping decision, and calls the closure equally often. A closure that
  raises on one rank makes every rank raise (that rank its own error), LBFGS restoring the
  parameters of the iteration as it does alone.

Newton and SVRG (whose steps take Hessians or snapshots) are refused with a TypeError.
"""
import numpy as np

from .. import _validate, checkpoint
from ..optim.adafactor import Adafactor
from ..optim.base import Optimizer
from ..optim.lbfgs import LBFGS
from ..optim.muon import Muon
from ..optim.sparse_adam import SparseAdam
from . import _flat, _row_sparse
from ._mpi import agree, bcast_tree, check_same, mpi, world

__all__ = ["DistributedOptimizer"]

DEFAULT_BUCKET_BYTES = 25 * 2 ** 20


def _check_closure(closure, problem):
    if problem is not None:
        raise ValueError(problem)
    if not callable(closure):
        raise TypeError(f"closure must be a callable returning (loss, grads), got "
                        f"{type(closure).__name__}")


class DistributedOptimizer:
    """Wrap a fastopt optimizer so that `step` uses gradients averaged over all ranks.

    With :math:`N` ranks, rank :math:`r` computing :math:`g^{(r)}` on its share of the batch,
    each step applies the wrapped rule to :math:`\\bar g = \\frac1N \\sum_r g^{(r)}` on every
    rank, so parameters stay identical everywhere. With equal local batch sizes and mean
    losses, :math:`\\bar g` is the gradient of the mean loss over the global batch.

    Parameters
    ----------
    opt : fastopt.Optimizer
        The optimizer to drive (over NumPy arrays); it keeps its state and hyperparameters:
        a first-order one (``fastopt.Adam``, ...), ``Muon`` or ``Adafactor`` (``step(grads)``),
        ``SparseAdam`` (``step(row_sparse_grads)``: the rows of all ranks are gathered) or
        ``LBFGS`` (``step(closure)``: each evaluation's loss and gradients are averaged).
    comm : mpi4py communicator, default ``MPI.COMM_WORLD``
    bucket_bytes : int, default 25 MiB
        Largest message of one ``Allreduce``.

    Construction and `step` are collective: every rank of `comm` must call them.
    ``step(grads, nonfinite="ignore" | "skip" | "raise")`` treats NaN/Inf in :math:`\\bar g`
    as `opt.step` does (see `fastopt.Optimizer.step`), on every rank alike.

    >>> from mpi4py import MPI                                  # doctest: +SKIP
    >>> opt = DistributedOptimizer(fo.Adam([w, b], lr=1e-3))    # doctest: +SKIP
    >>> opt.step([gw, gb])          # local gradients in, averaged update  # doctest: +SKIP
    True
    """

    def __init__(self, opt, comm=None, bucket_bytes=DEFAULT_BUCKET_BYTES):
        self.comm = comm = world(comm)
        self.opt = opt
        params = agree(comm, self._check_args, opt, bucket_bytes)
        self._kind = ("sparse" if isinstance(opt, SparseAdam) else
                      "closure" if isinstance(opt, LBFGS) else "dense")
        check_same(comm, [("optimizer", type(opt).__name__)] + _flat.signature(params),
                   "the optimizers or parameters")
        self._params = params
        self._layout = _flat.FlatLayout(params)
        self._buffers = self._layout.empty()
        self._buffers[-1] = np.empty(self._layout.sizes[-1] + 1, self._layout.dtypes[-1])
        self._grad_views = self._layout.views(self._buffers, [p.shape for p in params])
        self._buckets = self._split(bucket_bytes)
        self._inv_size = 1.0 / comm.Get_size()
        self._broadcast_params()
        if self._kind == "sparse":           # gradients are gathered rows, not these buffers
            self._buffers = self._grad_views = None
        self._status = np.zeros(2, np.float64)          # LBFGS: the loss and an error flag

    @staticmethod
    def _check_args(opt, bucket_bytes):
        if not isinstance(opt, (Optimizer, Muon, Adafactor, SparseAdam, LBFGS)):
            what = type(opt).__name__
            if what in ("Newton", "SVRG"):
                raise TypeError(f"DistributedOptimizer does not drive {what}, whose step takes "
                                "more than gradients (Hessians, snapshots); it drives the "
                                "first-order optimizers, Muon, Adafactor, SparseAdam and LBFGS")
            raise TypeError(f"opt must be a fastopt optimizer (e.g. fastopt.Adam(params)), got "
                            f"{what}")
        _validate.integer("bucket_bytes", bucket_bytes, low=8)
        params = [p for g in opt.param_groups for p in g["params"]]
        for i, p in enumerate(params):
            _flat.check_param(p, f"params[{i}]")
        return params

    def _split(self, bucket_bytes):
        """Contiguous (buffer, start, stop) pieces of at most bucket_bytes, covering all."""
        buckets = []
        for b, buf in enumerate(self._buffers):
            per = max(1, int(bucket_bytes) // buf.itemsize)
            buckets += [(b, s, min(s + per, buf.size)) for s in range(0, buf.size, per)]
        return buckets

    @property
    def param_groups(self):
        """The wrapped optimizer's param groups (mutable; change them alike on every rank)."""
        return self.opt.param_groups

    @property
    def state(self):
        return self.opt.state

    def _broadcast_params(self):
        if self.comm.Get_size() == 1:
            return
        self._layout.pack(self._params, self._buffers)
        for b, start, stop in self._buckets:
            self.comm.Bcast(self._buffers[b][start:stop], root=0)
        if self.comm.Get_rank() != 0:
            self._layout.unpacker(self._buffers, self._params)()

    def step(self, grads, nonfinite="ignore"):
        """Average `grads` (this rank's, in parameter order) over all ranks, then step.

        Collective. `nonfinite` decides what happens when an element of the averaged
        gradients :math:`\\bar g` is NaN or +-Inf (a non-finite value on any one rank, or a
        sum over the ranks that overflows, makes it so), with the same outcome on every rank:

        * ``"ignore"`` (default): update anyway, as `opt.step` does;
        * ``"skip"``: update nothing (parameters, state and step counts stay as they were
          on every rank) and return False;
        * ``"raise"``: raise ValueError on every rank, nothing changed.

        Pass the same `nonfinite` on every rank. Returns True when the update was applied
        (the wrapped optimizer's result). Invalid gradients, or an invalid `nonfinite`, on
        any rank raise ValueError on every rank, with parameters and state unchanged
        everywhere.
        """
        if self._kind != "dense":
            return self._step_other(grads, nonfinite)
        problem = _flat.nonfinite_problem(nonfinite) or self._layout.grad_problem(grads)
        flag = self._buffers[-1][-1:]
        if problem is None:
            self._layout.pack(grads, self._buffers)
            flag[0] = 0
        else:
            for buf in self._buffers:
                buf.fill(0)
            flag[0] = 1
        in_place = mpi().IN_PLACE
        for b, start, stop in self._buckets:
            bucket = self._buffers[b][start:stop]
            self.comm.Allreduce(in_place, bucket)
            bucket *= self._inv_size
        if flag[0] != 0:
            n_bad = int(round(float(flag[0]) * self.comm.Get_size()))
            where = problem if problem is not None else "see the error on the other rank(s)"
            raise ValueError(f"invalid input to step on {n_bad} of {self.comm.Get_size()} "
                             f"ranks, nothing was updated: {where}")
        if nonfinite == "ignore":
            return self.opt.step(self._grad_views)
        return self.opt.step(self._grad_views, nonfinite=nonfinite)

    def _step_other(self, arg, nonfinite):
        """SparseAdam (`arg`: row-sparse gradients) and LBFGS (`arg`: a closure); neither
        has a `nonfinite` option. Bad arguments on any rank raise on every rank."""
        problem = None
        if not (isinstance(nonfinite, str) and nonfinite == "ignore"):
            problem = (f"nonfinite must be 'ignore' for {type(self.opt).__name__}, whose step "
                       f"has no nonfinite option; got {nonfinite!r}")
        if self._kind == "sparse":
            return self.opt.step(_row_sparse.gather(self.comm, self._params, arg, problem))
        agree(self.comm, _check_closure, arg, problem)
        return self.opt.step(lambda: self._averaged(arg))

    def _averaged(self, closure):
        """One evaluation of LBFGS's closure: this rank's (loss, grads), averaged over the
        ranks (collective; every rank raises if one rank's closure failed)."""
        error = None
        try:
            result = closure()
            if not isinstance(result, (tuple, list)) or len(result) != 2:
                raise TypeError("closure() must return (loss, grads), got "
                                f"{type(result).__name__}")
            loss = float(result[0])
            problem = self._layout.grad_problem(result[1])
            if problem is not None:
                raise ValueError(f"closure()'s {problem}")
        except Exception as e:          # joins the collectives below, then raises
            error = e
        status = self._status
        if error is None:
            self._layout.pack(result[1], self._buffers)
            status[:] = loss, 0.0
        else:
            for buf in self._buffers:
                buf.fill(0)
            status[:] = 0.0, 1.0
        in_place = mpi().IN_PLACE
        for b, start, stop in self._buckets:
            bucket = self._buffers[b][start:stop]
            self.comm.Allreduce(in_place, bucket)
            bucket *= self._inv_size
        self.comm.Allreduce(in_place, status)
        if status[1] != 0:
            if error is not None:
                raise error
            raise RuntimeError(f"the closure failed on {int(status[1])} of "
                               f"{self.comm.Get_size()} ranks (see the error there)")
        return status[0] * self._inv_size, self._grad_views

    # ------------------------------------------------------------------- train/eval modes
    def train(self):
        """Collective: the wrapped optimizer's ``train()`` (Schedule-Free: parameters at y),
        on every rank alike."""
        self._set_mode("train")

    def eval(self):
        """Collective: the wrapped optimizer's ``eval()`` (Schedule-Free: parameters at the
        average x, to evaluate and save), on every rank alike."""
        self._set_mode("eval")

    def _set_mode(self, mode):
        if getattr(self.opt.spec, "modes", None) is None:
            raise TypeError(f"{type(self.opt).__name__} has no train/eval modes")
        agree(self.comm, getattr(self.opt, mode))

    # ------------------------------------------------------------------------- checkpoints
    def state_dict(self):
        """The wrapped optimizer's state_dict (the same on every rank)."""
        return self.opt.state_dict()

    def load_state_dict(self, state_dict):
        """Collective: load rank 0's `state_dict` into the wrapped optimizer on every rank."""
        sd = bcast_tree(self.comm, state_dict)
        agree(self.comm, self.opt.load_state_dict, sd)

    def save(self, path):
        """Collective: rank 0 writes the checkpoint (``fastopt.save`` format, atomic)."""
        def write():
            if self.comm.Get_rank() == 0:
                checkpoint.save(self.opt, path)
        agree(self.comm, write)

    def load(self, path):
        """Collective: rank 0 reads a ``fastopt.save`` checkpoint, every rank loads it."""
        def read():
            if self.comm.Get_rank() == 0:
                params = [p for g in self.opt.param_groups for p in g["params"]]
                return checkpoint.read_state_dict_of(path, type(self.opt).__name__, params)
        sd = agree(self.comm, read)
        self.load_state_dict(sd)

    def __repr__(self):
        return (f"DistributedOptimizer(rank {self.comm.Get_rank()} of {self.comm.Get_size()}, "
                f"{len(self._buckets)} bucket(s), {self.opt!r})")

