"""Low-bit optimizer state through DistributedOptimizer and ShardedOptimizer (run under mpiexec):
usage ``state_dtype.py DIR``.

For Adam, SGD with momentum and Schedule-Free AdamW, ``state_dtype`` "bfloat16" (rounded to
nearest and stochastically) and "int8" (two param groups, four
float32 tensors: two int8 ones that a shard boundary cuts, one below ``min_8bit_size`` and one
just above it): every rank passes the same dyadic gradients, so the averaged gradient is exactly
``float32(N g) * float32(1 / N)``, which the single-process reference here steps with. Reports
whether the parameters and the state_dict (codes, absmax, bits) equal the reference's bit for
bit after 6 steps, whether a save mid-run, a load into fresh wrappers (and, on rank 0, into a
plain optimizer with ``fastopt.load``) continue bit for bit, where the shard boundaries fall,
and the bytes of state each rank holds.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from fastopt.state_format import Blockwise8
from common import report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
directory = sys.argv[1]
SHAPES = [(5000,), (40, 130), (300,), (4097,)]
CASES = {"adam": (fo.Adam, dict(lr=0.01)), "sgd": (fo.SGD, dict(lr=0.05, momentum=0.9)),
         "sfadamw": (fo.ScheduleFreeAdamW, dict(lr=0.01))}   # z float32, exp_avg_sq low-bit
#: case label -> (state_dtype, extra keywords): stochastic bfloat16 draws each element's noise
#: from its index in its whole tensor, so shards draw the noise of one process
FORMATS = {"bfloat16": ("bfloat16", {}), "int8": ("int8", {}),
           "bfloat16sr": ("bfloat16", {"rounding": "stochastic", "seed": 5})}


def init():
    rng = np.random.default_rng(3)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def groups(params):
    return [{"params": params[:2]}, {"params": params[2:], "lr": 0.02}]


def grad(p, t):
    """Dyadic values (multiples of 2^-10 below 4): sums over ranks are exact."""
    g = np.sin(np.arange(p.size).reshape(p.shape) * 0.37 + 1.3 * t + p * 0.5) * 2.0
    return (np.round(g * 1024.0) / 1024.0).astype(np.float32)


def averaged(g):
    return np.float32(size) * g * np.float32(1.0 / size)


def flat_state(sd):
    out = []
    for i in sorted(sd["state"]):
        for k in sorted(sd["state"][i]):
            v = sd["state"][i][k]
            if isinstance(v, Blockwise8):
                out.append((i, k, "int8", v.codes.tobytes(), v.absmax.tobytes(),
                            v.qmap.tobytes()))
            elif isinstance(v, np.ndarray):
                out.append((i, k, v.dtype.str, v.shape, v.tobytes()))
            else:
                out.append((i, k, repr(v)))
    return out


def run(wrapper, params, ref, ref_params, start, stop):
    for t in range(start, stop):
        gs = [grad(p, t) for p in params]
        wrapper.step(gs)
        if ref is not None:
            ref.step([averaged(grad(p, t)) for p in ref_params])


def same(params, ref_params):
    return all(p.tobytes() == q.tobytes() for p, q in zip(params, ref_params))


results = {}
for name, (cls, hyper) in CASES.items():
    for label, (fmt, extra) in FORMATS.items():
        hyper_f = {**hyper, **extra}
        for kind in ("sharded", "distributed"):
            case = f"{name}-{label}-{kind}"
            path = os.path.join(directory, f"{case}.npz")
            params, ref_params = init(), init()
            ref = cls(groups(ref_params), state_dtype=fmt, **hyper_f)

            def build(ps):
                if kind == "sharded":
                    return ShardedOptimizer(cls, groups(ps), comm, state_dtype=fmt, **hyper_f)
                return DistributedOptimizer(cls(groups(ps), state_dtype=fmt, **hyper_f), comm)

            opt = build(params)
            if hasattr(ref, "train"):
                ref.train()
                opt.train()
            run(opt, params, ref, ref_params, 0, 6)
            out = {"params_equal": same(params, ref_params)}
            sd = opt.state_dict()
            if rank == 0:
                out["state_equal"] = flat_state(sd) == flat_state(ref.state_dict())
                kinds = sorted({type(v).__name__ if isinstance(v, Blockwise8) else v.dtype.str
                                for e in sd["state"].values() for k, v in e.items()
                                if k != "step"})
                out["kinds"] = kinds
            if kind == "sharded":
                out["bounds"] = [list(s.displs) + [sum(s.counts)] for s in opt._shards]
                out["state_nbytes"] = opt.state_nbytes()
            opt.save(path)
            saved = [p.copy() for p in params]
            run(opt, params, ref, ref_params, 6, 10)
            # a fresh wrapper from the file continues bit for bit
            again_params = [p.copy() for p in saved]
            again = build(again_params)
            again.load(path)
            for p, v in zip(again_params, saved):
                p[...] = v
            run(again, again_params, None, None, 6, 10)
            out["continued_equal"] = same(again_params, params)
            sd_after = again.state_dict()
            if rank == 0:
                out["continued_state_equal"] = flat_state(sd_after) == flat_state(ref.state_dict())
                plain_params = [p.copy() for p in saved]
                plain = cls(groups(plain_params), state_dtype=fmt, **hyper_f)
                fo.load(plain, path)          # Schedule-Free: saved in train mode
                for t in range(6, 10):
                    plain.step([averaged(grad(p, t)) for p in plain_params])
                out["plain_continued_equal"] = same(plain_params, params)
            results[case] = out
report(rank, size=size, results=results)
