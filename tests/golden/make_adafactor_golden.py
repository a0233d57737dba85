"""Record tests/golden/adafactor.npz from torch.optim.Adafactor (needs torch installed).

    python tests/golden/make_adafactor_golden.py

For every case of CASES (shapes: vector, 0-d, matrix, 3-D and 4-D batches; options:
defaults, weight decay, maximize, eps1, beta2_decay, d, a lr above 1/sqrt(t)) and both dtypes,
torch's single-tensor path (foreach=False) runs N_STEPS steps on seeded parameters and
gradients (GRADS: numpy.random.default_rng(seed), gradients drawn per step, the same ones
fastopt's tests replay); the parameters after every step and the final state are recorded.
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)

N_STEPS = 5
SHAPES = [(7,), (), (6, 5), (3, 4, 5), (2, 2, 3, 4), (1, 9)]
CASES = [
    {},
    {"weight_decay": 0.1, "lr": 0.05},
    {"maximize": True, "weight_decay": 0.05},
    {"eps": (1e-3, 1e-2)},
    {"beta2_decay": -0.5, "d": 1.5},
    {"lr": 0.9, "d": 1.0},
    {"beta2_decay": 0.0},
]


def problem(dtype, seed=0):
    """(params, grads per step) as float arrays of `dtype`: the same for torch and fastopt."""
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s)).astype(dtype) for s in SHAPES]
    grads = [[np.asarray(rng.standard_normal(s) * (1 + 3 * t)).astype(dtype) for s in SHAPES]
             for t in range(N_STEPS)]
    return params, grads


def run_torch(hyper, dtype):
    import torch
    params, grads = problem(dtype)
    ts = [torch.tensor(p) for p in params]
    opt = torch.optim.Adafactor(ts, foreach=False, **hyper)
    traj = []
    for step_grads in grads:
        for t, g in zip(ts, step_grads):
            t.grad = torch.tensor(g)
        opt.step()
        traj.append([t.detach().numpy().copy() for t in ts])
    state = [{k: v.numpy().copy() for k, v in opt.state[t].items() if k != "step"} for t in ts]
    return traj, state


def main():
    import torch
    arrays = {"torch_version": np.array(torch.__version__)}
    for i, hyper in enumerate(CASES):
        for dtype in (np.float32, np.float64):
            traj, state = run_torch(hyper, dtype)
            key = f"{i}/{np.dtype(dtype).name}"
            for t, ps in enumerate(traj):
                for j, p in enumerate(ps):
                    arrays[f"{key}/step{t + 1}/param{j}"] = p
            for j, bufs in enumerate(state):
                for b, v in bufs.items():
                    arrays[f"{key}/state{j}/{b}"] = v
    path = os.path.join(HERE, "adafactor.npz")
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(arrays)} arrays from torch {torch.__version__}")


if __name__ == "__main__":
    main()
