"""Mixed-precision Adam steps vs the float32 Adam step, 25.6M elements, one process.

    PYTHONPATH=src python bench/bench_mixed.py [--threads 2] [--rounds 9]

Bytes moved per element: float32 Adam 28 (p, m, v read and written, g read); mixed with a
master 28 as well (16-bit g read, master, m, v read and written, 16-bit copy written), 20
without a master. Rounds interleave the variants; medians and minimums are reported.
"""
import argparse
import statistics
import time

import numpy as np

import fastopt as fo
from fastopt.mixed import MixedPrecision


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=9)
    ap.add_argument("--n", type=int, default=25_557_032)
    args = ap.parse_args()
    import ml_dtypes
    fo.set_num_threads(args.threads)
    rng = np.random.default_rng(0)
    w32 = (0.02 * rng.standard_normal(args.n)).astype(np.float32)
    g32 = (1e-3 * rng.standard_normal(args.n)).astype(np.float32)
    wbf, gbf = w32.astype(ml_dtypes.bfloat16), g32.astype(ml_dtypes.bfloat16)
    wh, gh = w32.astype(np.float16), g32.astype(np.float16)
    runs = {
        "fo.Adam float32": (fo.Adam([w32.copy()], lr=1e-3), [g32]),
        "Mixed Adam bf16 + master": (MixedPrecision(fo.Adam, [wbf.copy()], lr=1e-3), [gbf]),
        "Mixed Adam fp16 + master, S=1024": (
            MixedPrecision(fo.Adam, [wh.copy()], lr=1e-3, loss_scale=1024.0), [gh]),
        "Mixed Adam bf16, stochastic, no master": (
            MixedPrecision(fo.Adam, [wbf.copy()], lr=1e-3, master_weights=False,
                           rounding="stochastic"), [gbf]),
    }
    for opt, g in runs.values():
        opt.step(g)
        opt.step(g)
    times = {k: [] for k in runs}
    for _ in range(args.rounds):
        for k, (opt, g) in runs.items():
            t0 = time.perf_counter()
            opt.step(g)
            times[k].append(time.perf_counter() - t0)
    ref = statistics.median(times["fo.Adam float32"])
    print(f"{args.n:,} elements, {args.threads} threads, {args.rounds} rounds")
    for k, v in times.items():
        med = statistics.median(v)
        print(f"{k:40s} median {1e3 * med:7.1f} ms  min {1e3 * min(v):7.1f} ms  "
              f"{med / ref:5.2f}x float32")


if __name__ == "__main__":
    main()
