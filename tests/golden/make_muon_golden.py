"""Record torch.optim.Muon trajectories into tests/golden/muon.npz.

Run with torch 2.13 installed:

    python tests/golden/make_muon_golden.py

Two kinds of runs per case (CASES: hyperparameters; the parameters of each run are a wide, a
tall and a square matrix in one group, N_STEPS steps of seeded Gaussian gradients):

* ``<case>/float64``: float64 parameters with torch's Muon, its Newton-Schulz iteration
  replaced by `zeropower_float64` -- torch's ``_zeropower_via_newtonschulz`` with
  ``grad.bfloat16()`` changed to a float64 copy (torch's Muon always casts to bfloat16,
  also for float64 parameters), i.e. torch's algorithm run in float64 with torch's own ops.
  fastopt's ``ns_dtype="float64"`` is compared with it (tests/test_muon.py).
* ``<case>/bfloat16``: float32 parameters with torch's Muon unchanged (its bfloat16
  iteration), compared with fastopt's default ``ns_dtype=None`` to a measured tolerance.

Keys: ``inputs/<kind>/p<i>/init`` and ``inputs/<kind>/p<i>/grad<t>`` (the same for every
case), ``<case>/<kind>/p<i>/final`` and ``<case>/<kind>/p<i>/momentum_buffer``;
``hyper/<case>`` holds the case's keywords as a JSON string.
"""
import json
from pathlib import Path

import numpy as np

OUT = Path(__file__).with_name("muon.npz")
N_STEPS = 5
SHAPES = ((6, 10), (12, 5), (8, 8))
CASES = {
    "default": {},
    "lr": {"lr": 0.02},
    "no_nesterov": {"lr": 0.02, "nesterov": False},
    "momentum_wd": {"lr": 0.01, "momentum": 0.8, "weight_decay": 0.2},
    "match_rms_adamw": {"lr": 0.02, "adjust_lr_fn": "match_rms_adamw"},
    "original": {"lr": 0.02, "adjust_lr_fn": "original", "weight_decay": 0.0},
    "ns_steps": {"lr": 0.02, "ns_steps": 3},
    "coefficients": {"lr": 0.02, "ns_coefficients": (3.4, -4.7, 2.0), "eps": 1e-5},
    "momentum_small": {"lr": 0.05, "momentum": 0.3},
}


def zeropower_float64(grad, ns_coefficients, ns_steps, eps):
    """torch's _zeropower_via_newtonschulz (torch 2.13) with float64 instead of bfloat16."""
    if ns_steps >= 100:
        raise ValueError("Number of steps must be less than 100 for computational efficiency")
    import torch
    a, b, c = ns_coefficients
    ortho_grad = grad.to(torch.float64, copy=True)   # .bfloat16() copies: so must this
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    ortho_grad.div_(ortho_grad.norm().clamp(min=eps))
    for _ in range(ns_steps):
        gram_matrix = ortho_grad @ ortho_grad.T
        gram_update = torch.addmm(gram_matrix, gram_matrix, gram_matrix, beta=b, alpha=c)
        ortho_grad = torch.addmm(ortho_grad, gram_update, ortho_grad, beta=a)
    if grad.size(0) > grad.size(1):
        ortho_grad = ortho_grad.T
    return ortho_grad


def inputs(seed, dtype):
    rng = np.random.default_rng(seed)
    init = [rng.standard_normal(s).astype(dtype) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(dtype) for s in SHAPES] for _ in range(N_STEPS)]
    return init, grads


def run_torch(kwargs, kind):
    import torch
    import torch.optim._muon as tm
    dtype = np.float64 if kind == "float64" else np.float32
    init, grads = inputs(0, dtype)
    params = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in init]
    opt = torch.optim.Muon(params, **kwargs)
    saved = tm._zeropower_via_newtonschulz
    if kind == "float64":
        tm._zeropower_via_newtonschulz = zeropower_float64
    try:
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = torch.from_numpy(g.copy())
            opt.step()
    finally:
        tm._zeropower_via_newtonschulz = saved
    return init, grads, [p.detach().numpy().copy() for p in params], \
        [opt.state[p]["momentum_buffer"].numpy().copy() for p in params]


def record():
    out = {}
    for case, kwargs in CASES.items():
        out[f"hyper/{case}"] = np.array(json.dumps(kwargs))
        for kind in ("float64", "bfloat16"):
            init, grads, final, bufs = run_torch(kwargs, kind)
            for i in range(len(SHAPES)):
                out[f"inputs/{kind}/p{i}/init"] = init[i]
                for t, gs in enumerate(grads):
                    out[f"inputs/{kind}/p{i}/grad{t}"] = gs[i]
                key = f"{case}/{kind}/p{i}"
                out[f"{key}/final"] = final[i]
                out[f"{key}/momentum_buffer"] = bufs[i]
    return out


if __name__ == "__main__":
    import torch
    assert torch.__version__.startswith("2.13"), torch.__version__
    np.savez_compressed(OUT, **record())
    print(f"wrote {OUT}")
