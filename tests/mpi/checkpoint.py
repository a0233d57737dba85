"""Save on N ranks, load on M ranks (run under mpiexec): usage `checkpoint.py save|load DIR`.

save: 10 steps with a ShardedOptimizer (Adam, two param groups, a schedule as lr) and a
      DistributedOptimizer (SGD with momentum), then both checkpoints and the parameters are
      written to DIR, then 10 more steps whose parameters are recorded (the trajectory).
load: the parameters and checkpoints are read back on this number of ranks, 10 steps are
      taken the same way, and the trajectories are written to DIR/continued-<size>.npz. On a
      single rank the sharded checkpoint also goes into a plain fastopt.Adam via fastopt.load.
      The state also makes the round trip through a plain fastopt.Adam and fastopt.save into
      another ShardedOptimizer, which must then hold exactly the same state.
"""
import os
import sys

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from fastopt.schedules import cosine_decay
from common import batch, grads, init_params, local_rows, report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
mode, directory = sys.argv[1], sys.argv[2]
SCHEDULE = cosine_decay(0.05, 40)


def groups(params):
    return [{"params": params[:1], "lr": SCHEDULE}, {"params": params[1:], "lr": 0.01}]


def flat(params, dtype):
    return np.concatenate([p.ravel() for p in params if p.dtype == dtype]).astype(np.float64)


def run(sharded, s_params, dist, d_params, start, steps=10):
    """Steps start..start+steps-1; the parameters after each, float64 and float32 apart."""
    f64, f32 = [], []
    for t in range(start, start + steps):
        x, y = batch(t)
        xl, yl = local_rows(x, rank, size), local_rows(y, rank, size)
        sharded.step(grads(s_params, xl, yl))
        dist.step(grads(d_params, xl, yl))
        f64.append(flat(s_params + d_params, np.float64))
        f32.append(flat(s_params + d_params, np.float32))
    return {"float64": np.array(f64), "float32": np.array(f32)}


def build(s_params, d_params):
    sharded = ShardedOptimizer(fo.Adam, groups(s_params), comm, betas=(0.8, 0.99))
    dist = DistributedOptimizer(fo.SGD(d_params, lr=0.05, momentum=0.9), comm)
    return sharded, dist


s_params, d_params = init_params(), init_params()
sharded, dist = build(s_params, d_params)
if mode == "save":
    run(sharded, s_params, dist, d_params, 0)
    sharded.save(os.path.join(directory, "sharded.npz"))
    dist.save(os.path.join(directory, "dist.npz"))
    if rank == 0:
        np.savez(os.path.join(directory, "params.npz"), *s_params, *d_params)
    traj = run(sharded, s_params, dist, d_params, 10)
    if rank == 0:
        np.savez(os.path.join(directory, f"saved-{size}.npz"), **traj)
    report(rank, size=size)
else:
    with np.load(os.path.join(directory, "params.npz")) as z:
        saved = [z[f"arr_{i}"] for i in range(6)]
    for p, v in zip(s_params + d_params, saved):
        p[...] = v
    sharded.load(os.path.join(directory, "sharded.npz"))
    dist.load(os.path.join(directory, "dist.npz"))
    # a plain fastopt.save file (here: the same state through a plain Adam) loads as well
    resaved = os.path.join(directory, f"resaved-{size}.npz")
    if rank == 0:
        plain = fo.Adam(groups([v.copy() for v in saved[:3]]), betas=(0.8, 0.99))
        fo.load(plain, os.path.join(directory, "sharded.npz"))
        fo.save(plain, resaved)
    comm.Barrier()
    again = ShardedOptimizer(fo.Adam, groups([v.copy() for v in saved[:3]]), comm,
                             betas=(0.8, 0.99))
    again.load(resaved)
    mine, theirs = sharded.state_dict(), again.state_dict()
    same_state = rank != 0 or (len(mine["state"]) == 3 and mine["state"].keys() == theirs["state"].keys() and all(
        mine["state"][i].keys() == theirs["state"][i].keys()
        and all(np.array_equal(mine["state"][i][k], theirs["state"][i][k])
                for k in mine["state"][i]) for i in mine["state"]))
    traj = run(sharded, s_params, dist, d_params, 10)
    if size == 1:                        # the sharded checkpoint is a plain fastopt.save file
        ps = [v.copy() for v in saved[:3]]
        plain = fo.Adam(groups(ps), betas=(0.8, 0.99))
        fo.load(plain, os.path.join(directory, "sharded.npz"))
        plain_traj = {"float64": [], "float32": []}
        for t in range(10, 20):
            x, y = batch(t)
            plain.step(grads(ps, x, y))
            for dtype in plain_traj:
                plain_traj[dtype].append(flat(ps, dtype))
        np.savez(os.path.join(directory, "plain.npz"), **plain_traj)
    if rank == 0:
        np.savez(os.path.join(directory, f"continued-{size}.npz"), **traj)
    report(rank, size=size, plain_file_loads_the_same_state=bool(same_state))
