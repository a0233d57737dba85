"""Mismatched or invalid input on one rank must raise on every rank, never hang (mpiexec).

Each case makes the last rank differ (or rank 0, which reads checkpoints, fail); every rank
reports the error message it got (or None).
"""
import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
odd = rank == size - 1


def outcome(fn):
    try:
        fn()
    except (TypeError, ValueError, OSError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def params():
    return [np.zeros((4, 3)), np.zeros(5 + odd)]


def step_with_bad_grads(make):
    ps = params()[:1] + [np.zeros(5)]
    opt = make(ps)
    before = [p.copy() for p in ps]
    gs = [np.ones_like(p) for p in ps]
    if odd:
        gs[1] = np.ones(6)
    message = outcome(lambda: opt.step(gs))
    unchanged = all(np.array_equal(p, b) for p, b in zip(ps, before))
    opt.step([np.ones_like(p) for p in ps])          # still usable, in step on every rank
    return message, unchanged


mine = np.full(3, float(rank))          # differs per rank: a failed constructor must not broadcast
results = {
    "distributed_shapes": outcome(lambda: DistributedOptimizer(fo.Adam(params()), comm)),
    "sharded_shapes": outcome(lambda: ShardedOptimizer(fo.Adam, params(), comm)),
    "sharded_dtype": outcome(lambda: ShardedOptimizer(
        fo.SGD, [np.zeros(3, np.float32 if odd else np.float64)], comm)),
    "sharded_bad_hyper": outcome(lambda: ShardedOptimizer(
        fo.Adam, [mine], comm, lr=-1.0 if odd else 1e-3)),
    "sharded_not_array": outcome(lambda: ShardedOptimizer(
        fo.Adam, [[1.0, 2.0] if odd else np.zeros(2)], comm)),
}
for name, make in [("distributed", lambda ps: DistributedOptimizer(fo.SGD(ps, lr=0.1), comm)),
                   ("sharded", lambda ps: ShardedOptimizer(fo.SGD, ps, comm, lr=0.1))]:
    message, unchanged = step_with_bad_grads(make)
    results[f"{name}_grads"] = message
    results[f"{name}_grads_unchanged"] = unchanged
results["params_kept_after_failed_construction"] = bool(np.all(mine == rank))
sharded = ShardedOptimizer(fo.Adam, [np.zeros(3)], comm)
results["load_missing_file"] = outcome(lambda: sharded.load("/nonexistent/fastopt-ckpt.npz"))
report(rank, size=size, odd=odd, results=results)
