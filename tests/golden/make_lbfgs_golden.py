"""Regenerate tests/golden/lbfgs.npz from torch.optim.LBFGS (needs torch installed).

    python tests/golden/make_lbfgs_golden.py

For each configuration of tests/lbfgs_cases.py (float64): the data (X, y), and after each of
STEPS calls of step(closure) the parameters (concatenated), the first loss of the step, and
the state counters n_iter and func_evals. The closure sets p.grad from the NumPy problem's
gradient, so the record is torch's L-BFGS alone.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
from lbfgs_cases import CONFIGS, STEPS, data, loss_and_grads, problem, start  # noqa: E402


def run_torch(config, X, y):
    prob = problem(X, y)
    params = [torch.nn.Parameter(torch.from_numpy(p)) for p in start(prob)]
    opt = torch.optim.LBFGS(params, **CONFIGS[config])

    def closure():
        loss, grads = loss_and_grads(prob, [p.detach().numpy() for p in params])
        for p, g in zip(params, grads):
            p.grad = torch.from_numpy(g)
        return torch.tensor(loss, dtype=torch.float64)

    traj, losses, counts = [], [], []
    for _ in range(STEPS):
        losses.append(float(opt.step(closure)))
        traj.append(np.concatenate([p.detach().numpy().copy() for p in params]))
        st = opt.state[params[0]]
        counts.append((st["n_iter"], st["func_evals"]))
    return np.array(traj), np.array(losses), np.array(counts, np.int64)


def main():
    X, y = data()
    arrays = {"torch_version": np.array(torch.__version__), "X": X, "y": y}
    for config in CONFIGS:
        traj, losses, counts = run_torch(config, X, y)
        arrays[f"{config}/params"] = traj
        arrays[f"{config}/loss"] = losses
        arrays[f"{config}/counts"] = counts
    path = os.path.join(HERE, "lbfgs.npz")
    np.savez(path, **arrays)
    print(f"wrote {path} ({len(arrays)} arrays, torch {torch.__version__})")


if __name__ == "__main__":
    main()
