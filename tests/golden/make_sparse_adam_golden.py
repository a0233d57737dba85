"""Record torch.optim.SparseAdam trajectories into tests/golden/sparse_adam.npz.

Run with torch installed (``pip install torch==2.13.0``):

    python tests/golden/make_sparse_adam_golden.py

Each case is one float64 parameter stepped N_STEPS times by torch.optim.SparseAdam with a
sparse COO gradient of one sparse dimension (row indices drawn with replacement from a few
rows, so most indices repeat, often three times or more; one step has no index at all, which
counts the step and moves nothing). Stored per case: ``hyper`` ([lr, beta1, beta2, eps,
maximize]), ``param0`` (the start), ``indices`` and ``values`` (every step's, concatenated),
``offsets`` (where each step's entries start; N_STEPS + 1), ``params`` (the parameter after
each step) and the final ``exp_avg`` and ``exp_avg_sq``. tests/test_sparse_adam.py replays the
gradients through fastopt.SparseAdam.
"""
import sys
from pathlib import Path

import numpy as np

N_STEPS = 30
EMPTY_STEP = 7          # this step's gradient has no entries
OUT = Path(__file__).with_name("sparse_adam.npz")

#: name: (shape, rows touched per step at most, hyperparameters)
CASES = {
    "default": ((40, 6), 30, {}),
    "lr": ((40, 6), 30, {"lr": 0.05}),
    "maximize": ((40, 6), 30, {"lr": 0.05, "maximize": True}),
    "betas_eps": ((25, 4), 60, {"lr": 0.02, "betas": (0.5, 0.9), "eps": 1e-6}),
    "three_d": ((12, 3, 2), 20, {"lr": 0.03}),
    "vector": ((50,), 40, {"lr": 0.01, "betas": (0.8, 0.99)}),
    "wide_rows": ((6, 260), 5, {"lr": 0.01}),     # rows longer than the C chunk (256)
}


def record(name, shape, most, hyper, seed):
    import torch
    rng = np.random.default_rng(seed)
    param0 = rng.standard_normal(shape)
    w = torch.nn.Parameter(torch.from_numpy(param0.copy()))
    opt = torch.optim.SparseAdam([w], **hyper)
    indices, values, offsets, params = [], [], [0], []
    for t in range(N_STEPS):
        nnz = 0 if t == EMPTY_STEP else int(rng.integers(1, most + 1))
        idx = rng.integers(0, max(1, shape[0] // 3), nnz)      # a third of the rows: repeats
        val = rng.standard_normal((nnz,) + shape[1:]) * 10.0 ** rng.integers(-3, 2)
        w.grad = torch.sparse_coo_tensor(torch.from_numpy(idx)[None], torch.from_numpy(val),
                                         shape)
        opt.step()
        indices.append(idx)
        values.append(val)
        offsets.append(offsets[-1] + nnz)
        params.append(w.detach().numpy().copy())
    state = opt.state[w]
    assert state["step"] == N_STEPS
    h = {"lr": 1e-3, "betas": (0.9, 0.999), "eps": 1e-8, "maximize": False, **hyper}
    return {
        f"{name}/hyper": np.array([h["lr"], *h["betas"], h["eps"], float(h["maximize"])]),
        f"{name}/param0": param0,
        f"{name}/indices": np.concatenate(indices).astype(np.int64),
        f"{name}/values": np.concatenate(values),
        f"{name}/offsets": np.array(offsets, np.int64),
        f"{name}/params": np.stack(params),
        f"{name}/exp_avg": state["exp_avg"].numpy().copy(),
        f"{name}/exp_avg_sq": state["exp_avg_sq"].numpy().copy(),
    }


def main():
    try:
        import torch
    except ImportError:
        sys.exit("make_sparse_adam_golden.py needs torch (pip install torch==2.13.0)")
    arrays = {"torch_version": np.array(torch.__version__)}
    for seed, (name, (shape, most, hyper)) in enumerate(CASES.items()):
        arrays.update(record(name, shape, most, hyper, seed))
    np.savez_compressed(OUT, **arrays)
    print(f"wrote {OUT} ({len(CASES)} cases, {N_STEPS} steps each, torch {torch.__version__})")


if __name__ == "__main__":
    main()
