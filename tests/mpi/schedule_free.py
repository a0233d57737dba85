"""Schedule-Free through DistributedOptimizer and ShardedOptimizer (run under mpiexec).

For ScheduleFreeAdamW, ScheduleFreeSGD and ScheduleFreeRAdam (two param groups, warmup and
weight decay): 30 steps on 1/N of each global batch with an eval()/train() round trip after
step 12, against one process on the whole batch; reports the relative error of the train
point y after the steps and of the average x after eval(), and the group scalars. Then a
sharded run saved in eval mode (``save``) is loaded into a plain optimizer here, which must
report the same mode, group scalars and parameters, and continue like the uninterrupted run.
"""
import sys

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import batch, grads, init_params, local_rows, rel_error, report

STEPS = 30
CASES = {
    "adamw": (fo.ScheduleFreeAdamW, dict(lr=0.02, weight_decay=1e-3, warmup_steps=5)),
    "sgd": (fo.ScheduleFreeSGD, dict(lr=0.2, momentum=0.8, weight_decay=1e-3, warmup_steps=5)),
    "radam": (fo.ScheduleFreeRAdam, dict(lr=0.02, betas=(0.9, 0.9), weight_decay=1e-3)),
}
KEYS = ("k", "weight_sum", "lr_max", "scheduled_lr", "train_mode")

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()


def groups(params, hyper):
    return [{"params": params[:2]}, {"params": params[2:], "lr": hyper["lr"] * 2}]


def run(opt, params, steps, local=True):
    for t in steps:
        if t == 12:
            opt.eval()
            opt.train()
        x, y = batch(t)
        if local:
            x, y = local_rows(x, rank, size), local_rows(y, rank, size)
        opt.step(grads(params, x, y))


def scalars(opt):
    return [[g[k] for k in KEYS] for g in opt.param_groups]


WRAPPERS = {
    "distributed": lambda cls, ps, h: DistributedOptimizer(cls(groups(ps, h), **h), comm,
                                                           bucket_bytes=96),
    "sharded": lambda cls, ps, h: ShardedOptimizer(cls, groups(ps, h), comm, **h),
}

errors, same_scalars = {}, {}
for name, (cls, hyper) in CASES.items():
    ref_params = init_params()
    ref = cls(groups(ref_params, hyper), **hyper)
    run(ref, ref_params, range(STEPS), local=False)
    y_ref = [p.copy() for p in ref_params]
    ref_scalars = scalars(ref)
    ref.eval()
    for wrapper, make in WRAPPERS.items():
        params = init_params()
        opt = make(cls, params, hyper)
        opt.train()
        run(opt, params, range(STEPS))
        y_err = [rel_error(p, r) for p, r in zip(params, y_ref)]
        same = scalars(opt) == ref_scalars
        opt.eval()
        x_err = [rel_error(p, r) for p, r in zip(params, ref_params)]
        errors[f"{wrapper}/{name}"] = {      # W, b float64; v float32
            "y": {"float64": max(y_err[:2]), "float32": y_err[2]},
            "x": {"float64": max(x_err[:2]), "float32": x_err[2]}}
        same_scalars[f"{wrapper}/{name}"] = bool(same and all(
            g["train_mode"] is False for g in opt.param_groups))

# a sharded checkpoint in eval mode, loaded by one process
path = sys.argv[1] if len(sys.argv) > 1 else None
checkpoint = {}
if path is not None:
    cls, hyper = CASES["adamw"]
    params = init_params()
    opt = ShardedOptimizer(cls, groups(params, hyper), comm, **hyper)
    run(opt, params, range(10))
    opt.eval()
    opt.save(f"{path}/sf-{size}.npz")
    x_saved = [p.copy() for p in params]
    opt.train()
    run(opt, params, range(10, 20))
    opt.eval()
    if rank == 0:
        plain_params = [p.copy() for p in x_saved]
        plain = cls(groups(plain_params, hyper), **hyper)
        fo.load(plain, f"{path}/sf-{size}.npz")
        checkpoint["mode"] = [g["train_mode"] for g in plain.param_groups]
        checkpoint["k"] = [g["k"] for g in plain.param_groups]
        plain.train()
        run(plain, plain_params, range(10, 20), local=False)
        plain.eval()
        checkpoint["continued"] = max(rel_error(a, b) for a, b in zip(plain_params[:2],
                                                                      params[:2]))
        checkpoint["continued_float32"] = rel_error(plain_params[2], params[2])

report(rank, size=size, errors=errors, same_scalars=same_scalars, checkpoint=checkpoint)
