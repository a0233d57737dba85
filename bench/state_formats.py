"""Adam step time and state bytes per parameter by state format (issue 18's rows).

    python bench/state_formats.py [N] [--bnb]

fastopt Adam with state_dtype float32 / bfloat16 / int8, torch's fused CPU Adam, and with
--bnb bitsandbytes' CPU Adam8bit (slow: 2 repeats), at 1 and 2 threads, alternating, medians;
plus the bandwidth limit of each format from its bytes moved per parameter and the machine's
stream bandwidth (fastopt._kernels.stream_axpy). Prints one table.
"""
import sys
import time

import numpy as np

import fastopt as fo


def median_time(fn, reps):
    out = []
    for _ in range(reps):
        t = time.perf_counter()
        fn()
        out.append(time.perf_counter() - t)
    return float(np.median(out))


def main(argv):
    n = int(float(argv[0])) if argv and not argv[0].startswith("-") else int(5e7)
    rng = np.random.default_rng(0)
    g = (rng.standard_normal(n, dtype=np.float32) * 1e-2)
    runs = {}
    for fmt in ("float32", "bfloat16", "int8"):
        w = rng.standard_normal(n, dtype=np.float32)
        opt = fo.Adam([w], lr=1e-4, state_dtype=fmt)
        opt.step([g])
        runs[f"fastopt {fmt}"] = (lambda o=opt: o.step([g]), 5,
                                  sum(b.nbytes for b in opt.state[0].values()) / n)
    try:
        import torch
        tw = torch.zeros(n)
        tw.grad = torch.from_numpy(g)
        topt = torch.optim.Adam([tw], lr=1e-4, fused=True)
        topt.step()
        runs["torch fused"] = (topt.step, 5, 8.0)
        if "--bnb" in argv:
            import bitsandbytes as bnb
            bw = torch.zeros(n)
            bw.grad = torch.from_numpy(g)
            bopt = bnb.optim.Adam8bit([bw], lr=1e-4)
            bopt.step()
            runs["bitsandbytes Adam8bit"] = (bopt.step, 2, None)
    except ImportError:
        pass
    # bytes moved per parameter: p r/w 8, g 4, state r/w 2 x (4 | 2 | 1 + 4/256)
    moved = {"fastopt float32": 28, "fastopt bfloat16": 20, "fastopt int8": 16 + 16 / 256}
    a, b = np.ones(n, np.float32), np.ones(n, np.float32)
    print(f"N = {n:.0e} float32; CPU {cpu()}; ISA {fo._kernels.vector_isa()}")
    for threads in (1, 2):
        fo.set_num_threads(threads)
        try:
            import torch
            torch.set_num_threads(threads)
        except ImportError:
            pass
        bw = 12 * n / median_time(lambda: fo._kernels.stream_axpy(a, b, 1.0), 5)
        times = {name: median_time(fn, reps) for name, (fn, reps, _) in runs.items()}
        base = times["fastopt float32"]
        print(f"\n{threads} thread(s); stream bandwidth {bw / 1e9:.1f} GB/s")
        print(f"{'implementation':24s} {'ms':>9s} {'x f32':>7s} {'state B/param':>14s} "
              f"{'bandwidth limit ms':>19s}")
        for name, t in times.items():
            per = runs[name][2]
            limit = f"{moved[name] * n / bw * 1e3:19.1f}" if name in moved else " " * 19
            print(f"{name:24s} {t * 1e3:9.1f} {t / base:7.2f} "
                  f"{(f'{per:.3f}' if per else '-'):>14s} {limit}")
    fo.set_num_threads(0)


def cpu():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return "?"


if __name__ == "__main__":
    main(sys.argv[1:])
