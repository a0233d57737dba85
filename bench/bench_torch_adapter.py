"""fastopt.torch.Adam vs torch.optim.Adam on a ResNet-50-shaped parameter list (CPU, float32).

The 161 parameter tensors of ResNet-50 (torchvision's layout: conv weights, batch-norm weights
and biases, the final linear layer; 25,557,032 floats) are written out below. Every
optimizer steps the same parameters with the same gradients; the optimizers are timed in
interleaved rounds within one process, and the report gives per-step medians and the ratio
to fastopt.torch.Adam. A stream kernel (b += s c over the same number of floats) is timed
alongside as the machine's in-place update bandwidth.

    PYTHONPATH=src python bench/bench_torch_adapter.py --threads 2
"""
import argparse
import math
import statistics
import time

import numpy as np
import torch

import fastopt as fo
import fastopt.torch as ft
from fastopt import _kernels

RESNET50_SHAPES = [
    (64, 3, 7, 7), (64,), (64,), (64, 64, 1, 1), (64,), (64,), (64, 64, 3, 3), (64,), (64,),
    (256, 64, 1, 1), (256,), (256,), (256, 64, 1, 1), (256,), (256,), (64, 256, 1, 1), (64,),
    (64,), (64, 64, 3, 3), (64,), (64,), (256, 64, 1, 1), (256,), (256,), (64, 256, 1, 1),
    (64,), (64,), (64, 64, 3, 3), (64,), (64,), (256, 64, 1, 1), (256,), (256,),
    (128, 256, 1, 1), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1),
    (512,), (512,), (512, 256, 1, 1), (512,), (512,), (128, 512, 1, 1), (128,), (128,),
    (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1), (512,), (512,), (128, 512, 1, 1),
    (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1), (512,), (512,),
    (128, 512, 1, 1), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1),
    (512,), (512,), (256, 512, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,),
    (1024, 256, 1, 1), (1024,), (1024,), (1024, 512, 1, 1), (1024,), (1024,),
    (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,), (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,),
    (1024, 256, 1, 1), (1024,), (1024,), (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3),
    (256,), (256,), (1024, 256, 1, 1), (1024,), (1024,), (256, 1024, 1, 1), (256,), (256,),
    (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1), (1024,), (1024,), (256, 1024, 1, 1),
    (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1), (1024,), (1024,),
    (512, 1024, 1, 1), (512,), (512,), (512, 512, 3, 3), (512,), (512,), (2048, 512, 1, 1),
    (2048,), (2048,), (2048, 1024, 1, 1), (2048,), (2048,), (512, 2048, 1, 1), (512,), (512,),
    (512, 512, 3, 3), (512,), (512,), (2048, 512, 1, 1), (2048,), (2048,), (512, 2048, 1, 1),
    (512,), (512,), (512, 512, 3, 3), (512,), (512,), (2048, 512, 1, 1), (2048,), (2048,),
    (1000, 2048), (1000,),
]
assert len(RESNET50_SHAPES) == 161
N_FLOATS = sum(math.prod(s) for s in RESNET50_SHAPES)
assert N_FLOATS == 25_557_032


def make_params(seed=0):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=g)) for s in RESNET50_SHAPES]
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=g)
    return params


def candidates(params, lr=1e-3):
    """name -> a zero-argument step function, for every optimizer that can be built."""
    out = {}
    try:
        fused = torch.optim.Adam(params, lr=lr, fused=True)
        fused.step()
        out["torch.optim.Adam(fused=True)"] = fused.step
    except (RuntimeError, ValueError) as e:
        print(f"torch fused Adam unavailable on CPU: {e}")
    out["torch.optim.Adam(foreach=True)"] = torch.optim.Adam(params, lr=lr, foreach=True).step
    out["torch.optim.Adam(foreach=False)"] = torch.optim.Adam(params, lr=lr, foreach=False).step
    out["fastopt.torch.Adam"] = ft.Adam(params, lr=lr).step
    arrays = [p.detach().numpy() for p in params]
    grads = [p.grad.numpy() for p in params]
    numpy_opt = fo.Adam(arrays, lr=lr)
    out["fastopt.Adam (NumPy arrays)"] = lambda: numpy_opt.step(grads)
    return out


def stream():
    b = np.zeros(N_FLOATS, np.float32)
    c = np.ones(N_FLOATS, np.float32)
    return lambda: _kernels.stream_axpy(b, c, 1e-7)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed sample")
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    fo.set_num_threads(args.threads)
    params = make_params()
    runs = candidates(params)
    runs["stream b += s*c (yardstick)"] = stream()
    for fn in runs.values():                     # warm up: state allocation, first touch
        fn()
        fn()
    times = {name: [] for name in runs}
    for _ in range(args.rounds):
        for name, fn in runs.items():
            t0 = time.perf_counter()
            for _ in range(args.steps):
                fn()
            times[name].append((time.perf_counter() - t0) / args.steps)
    ours = times["fastopt.torch.Adam"]
    ref = statistics.median(ours)
    print(f"ResNet-50 parameter list: {len(RESNET50_SHAPES)} tensors, {N_FLOATS:,} float32; "
          f"torch {torch.__version__}, {args.threads} threads, {args.rounds} rounds x "
          f"{args.steps} steps")
    print("ratio = time / time of fastopt.torch.Adam: of the medians, and the median of the "
          "per-round ratios (rounds interleave the optimizers, so each pair saw similar load)")
    print(f"{'optimizer':36s} {'median ms':>10s} {'min ms':>8s} {'ratio':>7s} {'paired':>7s} "
          f"{'GB/s':>6s}")
    for name, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / o for t, o in zip(ts, ours))
        moved = (12 if name.startswith("stream") else 28) * N_FLOATS   # bytes read + written
        print(f"{name:36s} {1e3 * med:10.2f} {1e3 * min(ts):8.2f} {med / ref:6.2f}x "
              f"{paired:6.2f}x {moved / med / 1e9:6.1f}")
    torch_best = min((n for n in times if n.startswith("torch.")),
                     key=lambda n: statistics.median(times[n]))
    paired = statistics.median(t / o for t, o in zip(times[torch_best], ours))
    print(f"\nfastest torch: {torch_best}; it takes {statistics.median(times[torch_best]) / ref:.2f}x "
          f"(medians), {paired:.2f}x (paired rounds) the time of fastopt.torch.Adam")


if __name__ == "__main__":
    main()
