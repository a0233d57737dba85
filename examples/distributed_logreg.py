"""Data-parallel logistic regression over MPI: `mpiexec -n 2 python examples/distributed_logreg.py`.

Every rank generates the same synthetic data set (a fixed seed), takes its contiguous 1/N of
each global mini-batch, computes the gradient of the mean logistic loss on it, and lets
fastopt.distributed average the gradients and apply Adam. Inputs are standardized by a
SyncBatchNorm (affine=False), whose batch statistics are those of the global batch.

Options: ``--sharded`` (ZeRO-1: each rank keeps 1/N of the optimizer state),
``--steps N``, ``--batch B`` (global batch, a multiple of the number of ranks),
``--checkpoint PATH`` (save the optimizer state at the end; loads on any number of ranks).
The loss printed by rank 0 is the same whatever the number of ranks.
"""
import argparse

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer, SyncBatchNorm


def make_data(n_samples=20_000, n_features=20, seed=0):
    """Linearly separable up to label noise: y = 1[x . w_true + noise > 0]."""
    rng = np.random.default_rng(seed)
    x = rng.standard_normal((n_samples, n_features)) * rng.uniform(0.5, 5.0, n_features) + 3.0
    w_true = rng.standard_normal(n_features)
    y = ((x - 3.0) @ w_true + 0.5 * rng.standard_normal(n_samples) > 0).astype(np.float64)
    return x, y


def loss_and_grads(w, b, x, y):
    """Mean logistic loss and its gradients: z = x w + b, L = mean(log(1 + e^z) - y z)."""
    z = x @ w + b[0]
    loss = np.mean(np.logaddexp(0.0, z) - y * z)
    r = (1.0 / (1.0 + np.exp(-z)) - y) / len(y)
    return loss, [x.T @ r, np.array([r.sum()])]


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sharded", action="store_true")
    parser.add_argument("--steps", type=int, default=300)
    parser.add_argument("--batch", type=int, default=240)
    parser.add_argument("--checkpoint", default=None)
    args = parser.parse_args()

    comm = MPI.COMM_WORLD
    rank, size = comm.Get_rank(), comm.Get_size()
    if args.batch % size:
        parser.error(f"--batch {args.batch} must be a multiple of the number of ranks ({size})")
    local = args.batch // size

    x, y = make_data()
    w, b = np.zeros(x.shape[1]), np.zeros(1)
    if args.sharded:
        opt = ShardedOptimizer(fo.Adam, [w, b], comm, lr=0.05)
    else:
        opt = DistributedOptimizer(fo.Adam([w, b], lr=0.05), comm)
    norm = SyncBatchNorm(comm, x.shape[1], affine=False, momentum=None, dtype=np.float64)

    order = np.random.default_rng(1).permutation(len(y))      # the same on every rank
    for step in range(args.steps):
        start = (step * args.batch) % (len(y) - args.batch)
        rows = order[start + rank * local:start + (rank + 1) * local]
        xb = norm.forward(x[rows])
        loss, grads = loss_and_grads(w, b, xb, y[rows])
        opt.step(grads)
        global_loss = comm.allreduce(loss) / size
        if rank == 0 and (step % 50 == 0 or step == args.steps - 1):
            print(f"step {step:4d}  loss {global_loss:.5f}", flush=True)

    norm.eval()
    accuracy = np.mean((norm.forward(x) @ w + b[0] > 0) == (y > 0.5))
    if rank == 0:
        kind = "ShardedOptimizer" if args.sharded else "DistributedOptimizer"
        print(f"{size} rank(s), {kind}: training accuracy {accuracy:.4f}")
    if args.checkpoint:
        opt.save(args.checkpoint)
        if rank == 0:
            print(f"optimizer state saved to {args.checkpoint}")


if __name__ == "__main__":
    main()
