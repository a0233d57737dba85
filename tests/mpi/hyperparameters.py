"""The distributed wrappers take hyperparameters by the rules of fastopt._validate (mpiexec).

Every rank builds a ShardedOptimizer and a DistributedOptimizer with NumPy-scalar and 0-d
array hyperparameters, and the same with the Python floats of those values; reports whether
the parameters agree bit for bit after a few steps, the types stored in ``param_groups`` and
``state_dict``, and the errors (class: message) of bad values.
"""
import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def outcome(fn):
    try:
        fn()
    except (TypeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"
    return None


def run(make, hyper, edit=None):
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(7), rng.standard_normal((2, 3))]
    opt = make(params, hyper)
    for k in range(3):
        if k == 1 and edit is not None:
            edit(opt.param_groups[0])
        g = np.random.default_rng(10 * k + rank)
        opt.step([g.standard_normal(p.shape) for p in params])
    return params, opt


def sharded(params, hyper):
    return ShardedOptimizer(fo.Adam, params, comm, **hyper)


def distributed(params, hyper):
    bucket_bytes = hyper.pop("bucket_bytes", 96)
    return DistributedOptimizer(fo.Adam(params, **hyper), comm, bucket_bytes=bucket_bytes)


NUMPY = dict(lr=np.float32(0.02), betas=(np.float32(0.8), np.array(0.99)), eps=np.float16(1e-3),
             weight_decay=np.array(0.01, np.float32))
PLAIN = {k: (tuple(float(b) for b in v) if k == "betas" else float(v)) for k, v in NUMPY.items()}

results = {}
for name, make in [("sharded", sharded), ("distributed", distributed)]:
    got, opt = run(make, dict(NUMPY))
    expected, _ = run(make, dict(PLAIN))
    results[f"{name}_bit_identical"] = all(a.tobytes() == b.tobytes()
                                           for a, b in zip(got, expected))
    results[f"{name}_group_types"] = sorted(
        {type(v).__name__ for k, v in opt.param_groups[0].items() if k not in ("params", "betas")}
        | {type(b).__name__ for b in opt.param_groups[0]["betas"]})
    got, opt = run(make, {}, edit=lambda g: g.update(lr=np.float32(0.05)))
    expected, _ = run(make, {}, edit=lambda g: g.update(lr=float(np.float32(0.05))))
    results[f"{name}_edit_bit_identical"] = all(a.tobytes() == b.tobytes()
                                                for a, b in zip(got, expected))
    sd = opt.state_dict()
    if sd is not None:                               # rank 0 (sharded), every rank (distributed)
        results[f"{name}_state_dict_lr_type"] = type(sd["param_groups"][0]["lr"]).__name__
    results[f"{name}_bool_lr"] = outcome(lambda: make([np.zeros(3)], dict(lr=True)))
    results[f"{name}_huge_lr"] = outcome(lambda: make([np.zeros(3)], dict(lr=10 ** 400)))
    results[f"{name}_nan_eps"] = outcome(lambda: make([np.zeros(3)], dict(eps=np.float32("nan"))))
w = np.ones(4)
opt = ShardedOptimizer(fo.Adam, [w], comm, lr=0.1)
opt.param_groups[0]["lr"] = float("nan")
results["sharded_bad_edit"] = outcome(lambda: opt.step([np.ones(4)]))
results["sharded_bad_edit_unchanged"] = bool(np.all(w == 1))
opt.param_groups[0]["lr"] = np.float32(0.1)
opt.step([np.ones(4)])                               # usable again, on every rank
results["sharded_after_edit_lr_type"] = type(opt.param_groups[0]["lr"]).__name__
results["bucket_bytes_numpy"] = outcome(lambda: distributed([np.zeros(3)],
                                                            dict(bucket_bytes=np.int64(64))))
results["bucket_bytes_float"] = outcome(lambda: distributed([np.zeros(3)],
                                                            dict(bucket_bytes=64.0)))
results["bucket_bytes_small"] = outcome(lambda: distributed([np.zeros(3)],
                                                            dict(bucket_bytes=4)))
report(rank, size=size, results=results)
