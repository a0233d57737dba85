"""Regenerate tests/golden/torch_trajectories.npz from torch.optim (needs torch installed).

    python tests/golden/make_golden.py              record every optimizer
    python tests/golden/make_golden.py NAME ...     record these, keep the others' records

Records, for every optimizer and option set of tests/cases.py and both dtypes, the parameters
at the steps torch_runner.RECORD_AT and the final state buffers (and, for optimizers with
train/eval modes, the parameters after eval() and the group-level scalars: torch_runner).
"""
import os
import sys

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, HERE)
sys.path.insert(0, os.path.dirname(HERE))

import torch  # noqa: E402
from cases import CASES  # noqa: E402
from torch_runner import run_torch  # noqa: E402


def main(names=()):
    path = os.path.join(HERE, "torch_trajectories.npz")
    arrays = {"torch_version": np.array(torch.__version__)}
    if names:
        with np.load(path) as z:
            arrays = {k: z[k] for k in z.files if k.split("/")[0] not in names}
    for name, cases in CASES.items():
        if names and name not in names:
            continue
        for i, hyper in enumerate(cases):
            for dtype in (np.float32, np.float64):
                traj, state = run_torch(name, hyper, dtype)
                key = f"{name}/{i}/{np.dtype(dtype).name}"
                for t, params in traj.items():
                    for j, p in enumerate(params):
                        arrays[f"{key}/step{t}/param{j}"] = p
                for j, bufs in state.items():
                    for b, v in bufs.items():
                        arrays[f"{key}/state{j}/{b}"] = v
    np.savez_compressed(path, **arrays)
    print(f"wrote {path}: {len(arrays)} arrays from torch {torch.__version__}")


if __name__ == "__main__":
    main(tuple(sys.argv[1:]))
