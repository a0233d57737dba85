"""Step time of the distributed optimizers: `mpiexec -n 2 python bench/bench_distributed.py`.

Adam over float32 parameters: ``--big`` tensors of ``--size`` elements plus ``--small``
tensors of 64 elements (biases, norms). Compares, per step (median of ``--repeat``):

* local      the plain fused Adam step, no communication (the floor);
* per-tensor one in-place Allreduce per gradient tensor, then the step (what bucketing avoids);
* bucketed   DistributedOptimizer with the default 25 MiB buckets, and with 1 MiB buckets;
* sharded    ShardedOptimizer (Reduce_scatter + 1/N of the update + Allgatherv).

Rank 0 prints a table; compare ratios within one run (the machine is shared and noisy).
"""
import argparse
import time

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer


def timed(comm, step, repeat):
    times = []
    for _ in range(repeat):
        comm.Barrier()
        t0 = time.perf_counter()
        step()
        times.append(time.perf_counter() - t0)
    return float(np.median(comm.allgather(float(np.median(times)))))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--big", type=int, default=8)
    ap.add_argument("--size", type=int, default=1_000_000)
    ap.add_argument("--small", type=int, default=400)
    ap.add_argument("--repeat", type=int, default=15)
    args = ap.parse_args()
    comm = MPI.COMM_WORLD
    rng = np.random.default_rng(0)
    shapes = [args.size] * args.big + [64] * args.small

    def fresh():
        return [rng.standard_normal(n).astype(np.float32) for n in shapes]

    grads = fresh()
    results = {}

    ps = fresh()
    local = fo.Adam(ps, lr=1e-3)
    results["local"] = timed(comm, lambda: local.step(grads), args.repeat)

    ps = fresh()
    naive = fo.Adam(ps, lr=1e-3)
    bufs = [g.copy() for g in grads]

    def per_tensor():
        for g, b in zip(grads, bufs):
            b[...] = g
            comm.Allreduce(MPI.IN_PLACE, b)
            b *= 1.0 / comm.Get_size()
        naive.step(bufs)
    results["per-tensor"] = timed(comm, per_tensor, args.repeat)

    for label, bucket in [("bucketed 25MiB", 25 * 2 ** 20), ("bucketed 1MiB", 2 ** 20)]:
        ps = fresh()
        dist = DistributedOptimizer(fo.Adam(ps, lr=1e-3), comm, bucket_bytes=bucket)
        results[label] = timed(comm, lambda: dist.step(grads), args.repeat)

    ps = fresh()
    sharded = ShardedOptimizer(fo.Adam, ps, comm, lr=1e-3)
    results["sharded"] = timed(comm, lambda: sharded.step(grads), args.repeat)
    state = comm.allgather(sharded.state_nbytes())

    if comm.Get_rank() == 0:
        n = sum(shapes)
        print(f"{comm.Get_size()} ranks, Adam, {len(shapes)} float32 tensors, {n / 1e6:.2f} M "
              f"elements, {fo.get_num_threads()} thread(s) per rank")
        for label, t in results.items():
            print(f"  {label:15s} {t * 1e3:8.2f} ms/step   x{t / results['local']:.2f} of local")
        print(f"  sharded state per rank: {[s / 2 ** 20 for s in state]} MiB "
              f"(full Adam state: {2 * 4 * n / 2 ** 20:.1f} MiB)")


if __name__ == "__main__":
    main()
