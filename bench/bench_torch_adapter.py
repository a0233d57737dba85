"""fastopt.torch vs torch.optim on a ResNet-50-shaped parameter list (float32, CPU or CUDA).

The 161 parameter tensors of ResNet-50 (torchvision's layout: conv weights, batch-norm weights
and biases, the final linear layer; 25,557,032 floats) are written out below. Every
optimizer steps the same parameters with the same gradients; the optimizers are timed in
interleaved rounds within one process, and the report gives per-step medians and the ratio
to fastopt.torch's class of the same name. A stream kernel (b += s c over the same number of
floats) is timed alongside as the machine's in-place update bandwidth (CPU).

For every optimizer named (default: Adam, AdamW, SGD with momentum), torch.optim's class runs
in each form torch has on the device (``fused=True``, ``foreach=True``, ``foreach=False``) and
fastopt.torch's class; the summary gives, per optimizer, the ratio time(torch) /
time(fastopt.torch) against torch's fused form and its foreach form (> 1: fastopt is faster),
with the target of issue 19 (CPU: >= 1.2x fused; CUDA: >= 1.0x fused Adam, >= 2x foreach
RMSprop/Adadelta/Adamax). On CUDA each sample ends with torch.cuda.synchronize().

    PYTHONPATH=src python bench/bench_torch_adapter.py --threads 2
    PYTHONPATH=src python bench/bench_torch_adapter.py --optimizers Adam AdamW SGD --threads 2
    PYTHONPATH=src python bench/bench_torch_adapter.py --device cuda \
        --optimizers Adam RMSprop Adadelta Adamax
"""
import argparse
import math
import platform
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


HYPER = {"Adam": {"lr": 1e-3}, "AdamW": {"lr": 1e-3, "weight_decay": 1e-2},
         "SGD": {"lr": 1e-2, "momentum": 0.9}, "RMSprop": {"lr": 1e-3},
         "Adadelta": {"lr": 1.0}, "Adamax": {"lr": 2e-3}, "Adagrad": {"lr": 1e-2},
         "RAdam": {"lr": 1e-3}, "Rprop": {"lr": 1e-3}}
TARGETS = {"cpu": {name: ("fused", 1.2) for name in HYPER},
           "cuda": {"Adam": ("fused", 1.0), "RMSprop": ("foreach", 2.0),
                    "Adadelta": ("foreach", 2.0), "Adamax": ("foreach", 2.0)}}
BYTES = {"SGD": 16, "Adagrad": 16, "RMSprop": 16, "Adadelta": 20, "Rprop": 20}   # per float


def make_params(seed=0, device="cpu"):
    g = torch.Generator().manual_seed(seed)
    params = [torch.nn.Parameter(0.02 * torch.randn(s, generator=g).to(device))
              for s in RESNET50_SHAPES]
    for p in params:
        p.grad = 1e-3 * torch.randn(p.shape, generator=g).to(device)
    return params


def candidates(name, params):
    """label -> a zero-argument step function: torch.optim's `name` in each form the device
    has, and fastopt.torch's."""
    hyper = HYPER[name]
    cls = getattr(torch.optim, name)
    out = {}
    for form in ({"fused": True}, {"foreach": True}, {"foreach": False}):
        key, value = next(iter(form.items()))
        try:
            opt = cls(params, **hyper, **form)
            opt.step()
        except (RuntimeError, TypeError, ValueError) as e:
            print(f"torch.optim.{name}({key}={value}) unavailable on {params[0].device}: {e}")
            continue
        out[f"torch.optim.{name}({key}={value})"] = opt.step
    out[f"fastopt.torch.{name}"] = getattr(ft, name)(params, **hyper).step
    if name == "Adam" and params[0].device.type == "cpu":
        arrays = [p.detach().numpy() for p in params]
        grads = [p.grad.numpy() for p in params]
        numpy_opt = fo.Adam(arrays, lr=hyper["lr"])
        out["fastopt.Adam (NumPy arrays)"] = lambda: numpy_opt.step(grads)
    return out


def stream():
    b = np.zeros(N_FLOATS, np.float32)
    c = np.ones(N_FLOATS, np.float32)
    return lambda: _kernels.stream_axpy(b, c, 1e-7)


def measure(runs, rounds, steps, sync):
    for fn in runs.values():                     # warm up: state allocation, first touch
        fn()
        fn()
    sync()
    times = {label: [] for label in runs}
    for r in range(rounds):
        order = list(runs.items())
        order = order[r % len(order):] + order[:r % len(order)]     # rotate the order
        for label, fn in order:
            t0 = time.perf_counter()
            for _ in range(steps):
                fn()
            sync()
            times[label].append((time.perf_counter() - t0) / steps)
    return times


def report(name, times, device):
    ours = times[f"fastopt.torch.{name}"]
    ref = statistics.median(ours)
    print(f"\n{name}: ratio = time / time of fastopt.torch.{name}: of the medians, and the "
          "median of the per-round ratios")
    print(f"{'optimizer':40s} {'median ms':>10s} {'min ms':>8s} {'ratio':>7s} {'paired':>7s} "
          f"{'GB/s':>6s}")
    for label, ts in times.items():
        med = statistics.median(ts)
        paired = statistics.median(t / o for t, o in zip(ts, ours))
        per = 12 if label.startswith("stream") else BYTES.get(name, 28)
        print(f"{label:40s} {1e3 * med:10.2f} {1e3 * min(ts):8.2f} {med / ref:6.2f}x "
              f"{paired:6.2f}x {per * N_FLOATS / med / 1e9:6.1f}")
    summary = {}
    for form in ("fused", "foreach"):
        label = f"torch.optim.{name}({form}=True)"
        if label in times:
            summary[form] = statistics.median(t / o for t, o in zip(times[label], ours))
    return summary


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=15)
    ap.add_argument("--steps", type=int, default=3, help="steps per timed sample")
    ap.add_argument("--device", default="cpu", choices=("cpu", "cuda"))
    ap.add_argument("--optimizers", nargs="+", choices=sorted(HYPER), default=None,
                    help="default: Adam AdamW SGD on cpu, Adam RMSprop Adadelta Adamax on cuda")
    args = ap.parse_args()
    names = args.optimizers or (["Adam", "AdamW", "SGD"] if args.device == "cpu"
                                else ["Adam", "RMSprop", "Adadelta", "Adamax"])
    if args.device == "cuda" and not torch.cuda.is_available():
        raise SystemExit("--device cuda: torch sees no CUDA device here")
    torch.set_num_threads(args.threads)
    fo.set_num_threads(args.threads)
    sync = torch.cuda.synchronize if args.device == "cuda" else (lambda: None)
    where = (torch.cuda.get_device_name() if args.device == "cuda" else
             f"{platform.processor() or platform.machine()}, {args.threads} threads")
    print(f"ResNet-50 parameter list: {len(RESNET50_SHAPES)} tensors, {N_FLOATS:,} float32 on "
          f"{args.device} ({where}); torch {torch.__version__}; {args.rounds} rounds x "
          f"{args.steps} steps, the contenders' order rotating every round")
    results = {}
    for name in names:
        params = make_params(device=args.device)
        runs = candidates(name, params)
        if args.device == "cpu":
            runs["stream b += s*c (yardstick)"] = stream()
        results[name] = report(name, measure(runs, args.rounds, args.steps, sync), args.device)
        del runs, params
    print("\nsummary: time(torch) / time(fastopt.torch), median of paired rounds (> 1: fastopt "
          "faster)")
    for name, summary in results.items():
        cells = "  ".join(f"{form} {r:5.2f}x" for form, r in summary.items())
        target = TARGETS[args.device].get(name)
        goal = "" if target is None else f"   target >= {target[1]:.1f}x {target[0]}: " + (
            "met" if summary.get(target[0], 0) >= target[1] else "NOT met")
        print(f"  {name:9s} {cells}{goal}")


if __name__ == "__main__":
    main()
