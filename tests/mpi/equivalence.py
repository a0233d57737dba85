"""N ranks on 1/N of each global batch vs one process on the whole batch (run under mpiexec).

For DistributedOptimizer and ShardedOptimizer with SGD-momentum, Adam and Adagrad: 50 steps
(lr halved through param_groups half-way), then the relative error of every parameter against a plain fastopt optimizer stepped here on
the whole-batch gradients. Also reports the Allreduce count of one DistributedOptimizer step
over many small tensors and the per-rank state memory of ShardedOptimizer.
"""
import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import batch, grads, init_params, local_rows, rel_error, report

STEPS = 50
CASES = {
    "sgd_momentum": (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adam": (fo.Adam, dict(lr=0.02, weight_decay=1e-3, amsgrad=True)),
    "adagrad": (fo.Adagrad, dict(lr=0.1, lr_decay=1e-3, initial_accumulator_value=0.1)),
}

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


class CountingComm(MPI.Intracomm):
    """COMM_WORLD's handle, counting the Allreduce calls made through it."""
    allreduce_calls = 0

    def Allreduce(self, *args, **kwargs):
        type(self).allreduce_calls += 1
        return super().Allreduce(*args, **kwargs)


def train(make, opt_cls, hyper):
    ref_params = init_params()
    ref = opt_cls(ref_params, **hyper)
    params = init_params()
    if rank != 0:                       # differs until the constructor broadcasts rank 0's
        for p in params:
            p += 1.0
    opt = make(opt_cls, params, hyper)
    for t in range(STEPS):
        if t == STEPS // 2:             # an lr edited through param_groups takes effect
            for o in (ref, opt):
                o.param_groups[0]["lr"] *= 0.5
        x, y = batch(t)
        ref.step(grads(ref_params, x, y))
        opt.step(grads(params, local_rows(x, rank, size), local_rows(y, rank, size)))
    return ([rel_error(p, r) for p, r in zip(params[:2], ref_params[:2])],
            rel_error(params[2], ref_params[2]))


WRAPPERS = {
    # small buckets: several Allreduce calls per step, tensors split across buckets
    "distributed": lambda cls, ps, h: DistributedOptimizer(cls(ps, **h), comm, bucket_bytes=96),
    "sharded": lambda cls, ps, h: ShardedOptimizer(cls, ps, comm, **h),
}

errors = {}
for wrapper, make in WRAPPERS.items():
    for name, (opt_cls, hyper) in CASES.items():
        f64, f32 = train(make, opt_cls, hyper)
        errors[f"{wrapper}/{name}"] = {"float64": max(f64), "float32": f32}

# many small tensors, default bucket size: one Allreduce per step
counting = CountingComm(comm)
small = [np.zeros(3) for _ in range(100)]
dist = DistributedOptimizer(fo.SGD(small, lr=0.1), counting)
CountingComm.allreduce_calls = 0
dist.step([np.full(3, rank + 1.0) for _ in small])
calls = CountingComm.allreduce_calls
mean_grad = (size + 1) / 2.0
step_ok = all(np.allclose(p, -0.1 * mean_grad) for p in small)

# per-rank state memory of ShardedOptimizer (Adam: exp_avg, exp_avg_sq) vs total / N
rng = np.random.default_rng(3)
big = [rng.standard_normal(s) for s in [(300, 101), (17,), (1001,), (50, 50)]]
sharded = ShardedOptimizer(fo.Adam, big, comm, lr=1e-3)
sharded.step([np.ones_like(p) for p in big])
full = fo.Adam([p.copy() for p in big], lr=1e-3)
full.step([np.ones_like(p) for p in big])
total = sum(a.nbytes for entry in full.state.values() for a in entry.values())

report(rank, size=size, errors=errors, allreduce_calls=calls, small_step_ok=bool(step_ok),
       state_nbytes=sharded.state_nbytes(), total_state_nbytes=total)
