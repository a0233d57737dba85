"""Adam with float32, bfloat16 and int8 state at each codec level this machine runs (scalar,
AVX2, AVX-512F, best), in one process: ns per parameter of a whole ``opt.step([g])``, median
of the samples, the levels alternated round by round.

    PYTHONPATH=src python bench/codec_levels.py [--sizes 4e4,4e6] [--rounds 3] [--threads 1]

Every level writes the same codes and bits (tests/test_state_codecs.py); the levels below the
machine's best are what other CPUs run: "scalar" on aarch64 and CPUs without AVX2, "avx2" on
CPUs without AVX-512. The rule's own loop stays this machine's best compiled clone, so a forced
level times the codecs alone.
"""
import argparse
import statistics
import time

import numpy as np

import fastopt as fo
from fastopt import _qstate
from fastopt.bench import machine_info

FORMATS = ("float32", "bfloat16", "int8")


def sample(n, fmt, steps, warmup=1):
    """Median ns per parameter of `steps` Adam steps with `fmt` state on n float32 values,
    after `warmup` steps (also bench/state_ab.py's measurement)."""
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n).astype(np.float32)
    g = (rng.standard_normal(n) * 1e-2).astype(np.float32)
    opt = fo.Adam([w], lr=1e-4, state_dtype=fmt)
    for _ in range(warmup):
        opt.step([g])
    times = []
    for _ in range(steps):
        t0 = time.perf_counter()
        opt.step([g])
        times.append(time.perf_counter() - t0)
    return statistics.median(times) / n * 1e9


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--sizes", default="4e4,4e6")
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args()
    fo.set_num_threads(args.threads)
    info = machine_info()
    print(f"cpu: {info['cpu']} ({info['logical_cpus']} logical), threads {args.threads}")
    names = _qstate.codec_levels()
    for n in (int(float(s)) for s in args.sizes.split(",")):
        steps = max(7, int(2e8 // (n * 50)))
        got = {(lv, f): [] for lv in names for f in FORMATS}
        try:
            for _ in range(args.rounds):
                for lv in names:
                    _qstate.use_codecs(lv)
                    for f in FORMATS:
                        got[lv, f].append(sample(n, f, steps))
        finally:
            _qstate.use_codecs("best")
        print(f"\nN = {n:.0e}: ns per parameter, median of {args.rounds} rounds")
        print("| level | " + " | ".join(FORMATS) + " |")
        print("|---" * (len(FORMATS) + 1) + "|")
        for lv in names:
            cells = [f"{statistics.median(got[lv, f]):.2f}" for f in FORMATS]
            print(f"| {lv} | " + " | ".join(cells) + " |")


if __name__ == "__main__":
    main()
