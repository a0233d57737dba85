"""fastopt Adam vs DeepSpeed's CPU Adam vs torch's fused Adam (a script, not part of CI).

    pip install deepspeed -c <(printf 'torch==2.13.0\n')     # never let pip replace torch
    PYTHONPATH=src python bench/deepspeed_adam.py [--sizes 1e7,5e7] [--samples 9] [--json PATH]

DeepSpeedCPUAdam compiles its C++ op (AVX-512 + OpenMP, -march=native) on first use. It runs
with adamw_mode=False and weight_decay=0, so all three compute torch.optim.Adam's update;
the script checks that the parameters agree after the timed steps. Steps are alternated
(fastopt, stream kernel, DeepSpeed, torch fused, in a rotating order); ratios are
t_other / t_fastopt per sample, median. Threads: fastopt via fastopt.set_num_threads,
DeepSpeed and torch via torch.set_num_threads (one OpenMP runtime in the process).
"""
import argparse
import json
import sys

import numpy as np

from fastopt import _kernels
from fastopt.bench import Evictor, Threads, _fmt_ms, _ratio, _stream_step, _summary, _table, measure

import impls


def make_deepspeed(params, grads):
    import torch
    from deepspeed.ops.adam import DeepSpeedCPUAdam
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(np.array(p, copy=True)))
        t.grad = torch.from_numpy(g)
        tensors.append(t)
    h = impls.HYPER["adam"]
    opt = DeepSpeedCPUAdam(tensors, lr=h["lr"], betas=h["betas"], eps=h["eps"],
                           weight_decay=0.0, adamw_mode=False)

    def step():
        opt.step()

    step.params = [t.detach().numpy() for t in tensors]
    return step


def agreement(n=100_000, steps=5):
    """Largest |fastopt - DeepSpeed| / (|fastopt| + 1e-3) after `steps` steps from one start."""
    rng = np.random.default_rng(1)
    params = [rng.standard_normal(n, dtype=np.float32)]
    grads = [rng.standard_normal(n, dtype=np.float32)]
    mine, ds = impls.make_fastopt("adam", params, grads), make_deepspeed(params, grads)
    for _ in range(steps):
        mine()
        ds()
    a = mine.func.__self__.param_groups[0]["params"][0]
    return float(np.max(np.abs(a - ds.params[0]) / (np.abs(a) + 1e-3)))


def run(sizes, threads_list, samples, cold_sizes):
    rows = []
    evict = Evictor() if cold_sizes else None
    rng = np.random.default_rng(0)
    for n in sizes:
        params = [rng.standard_normal(n, dtype=np.float32)]
        grads = [rng.standard_normal(n, dtype=np.float32) * 0.01]
        for threads in threads_list:
            for cold in ([False, True] if n in cold_sizes else [False]):
                with Threads(threads):
                    contenders = {
                        "fastopt": impls.make_fastopt("adam", params, grads),
                        "stream": _stream_step(n, "float32"),
                        "deepspeed": make_deepspeed(params, grads),
                        "torch_fused": impls.make_torch("adam", params, grads, "fused"),
                    }
                    times = measure(contenders, samples, 0.005, evict if cold else None)
                mine = times["fastopt"]
                row = {"n": n, "threads": threads, "cache": "cold" if cold else "warm"}
                for k, ts in times.items():
                    row[k] = _summary(ts)
                    if k != "fastopt":
                        row[k]["ratio"] = _ratio(ts, mine)
                bw = 3 * 4 * n / (row["stream"]["median_ms"] / 1e3) / 1e9
                row["limit_ms"] = 28 * n / (bw * 1e9) * 1e3
                rows.append(row)
                print(f"  N={n:.0e} threads={threads} {row['cache']}: fastopt "
                      f"{row['fastopt']['median_ms']:.2f} ms, deepspeed {row['deepspeed']['median_ms']:.2f} ms",
                      file=sys.stderr)
                del contenders
    return rows


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--sizes", default="1e7,5e7")
    parser.add_argument("--threads", default=None, help="default: 1 and all")
    parser.add_argument("--cold", default="1e7", help="sizes also measured with caches evicted")
    parser.add_argument("--samples", type=int, default=9)
    parser.add_argument("--json")
    args = parser.parse_args(argv)
    sizes = [int(float(x)) for x in args.sizes.split(",")]
    all_threads = _kernels.get_num_threads()
    threads = ([int(x) for x in args.threads.split(",")] if args.threads
               else sorted({1, all_threads}))
    cold = [int(float(x)) for x in args.cold.split(",") if x]
    diff = agreement()
    rows = run(sizes, threads, args.samples, cold)
    print(f"fastopt and DeepSpeedCPUAdam after 5 steps: max relative difference {diff:.1e}")
    print("Adam float32, median ms per step (±IQR/median); Nx = other / fastopt, per pair:")
    print(_table(
        ["N", "thr", "cache", "fastopt", "DeepSpeed", "vs DS", "torch fused", "vs torch",
         "limit ms"],
        [[f"{r['n']:.0e}", r["threads"], r["cache"],
          f"{_fmt_ms(r['fastopt']['median_ms'])} ±{r['fastopt']['spread_pct']:.0f}%",
          f"{_fmt_ms(r['deepspeed']['median_ms'])} ±{r['deepspeed']['spread_pct']:.0f}%",
          f"{r['deepspeed']['ratio']:.2f}x",
          f"{_fmt_ms(r['torch_fused']['median_ms'])}", f"{r['torch_fused']['ratio']:.2f}x",
          _fmt_ms(r["limit_ms"])] for r in rows]))
    print("limit ms: 28 bytes/parameter at the stream kernel's GB/s measured in the same samples.")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"max_rel_diff": diff, "rows": rows}, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
