"""Compare fastopt's step times of `fastopt bench --json` runs of two builds (before / after).

    python bench/compare_runs.py --before a1.json a2.json --after b1.json b2.json

Takes the runs of each build (alternate them: before, after, before, after, ... on the same
machine), the median over the runs of each case's median step time, and prints the ratio
after/before per case (optimizer, dtype, N, threads) of the "sizes" section, then the median,
the smallest and the largest ratio with the CPU model. A ratio above 1 is slower after.
"""
import argparse
import json

import numpy as np


def _times(paths):
    out, machine = {}, None
    for path in paths:
        with open(path) as f:
            run = json.load(f)
        machine = run.get("machine", {})
        for row in run.get("sizes", []):
            key = (row["optimizer"], row["dtype"], row["n"], row["threads"])
            out.setdefault(key, []).append(row["fastopt"]["median_ms"])
    return out, machine


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--before", nargs="+", required=True, help="JSON runs of the old build")
    parser.add_argument("--after", nargs="+", required=True, help="JSON runs of the new build")
    args = parser.parse_args(argv)
    before, machine = _times(args.before)
    after, _ = _times(args.after)
    ratios = []
    print(f"CPU: {machine.get('cpu', '?')} ({machine.get('logical_cpus', '?')} logical CPUs)")
    print(f"{'optimizer':10} {'dtype':8} {'N':>10} {'thr':>3} {'before ms':>10} {'after ms':>10}"
          f" {'after/before':>12}")
    for key in sorted(set(before) & set(after)):
        b, a = float(np.median(before[key])), float(np.median(after[key]))
        ratios.append(a / b)
        print(f"{key[0]:10} {key[1]:8} {key[2]:>10} {key[3]:>3} {b:10.4f} {a:10.4f}"
              f" {a / b:12.3f}")
    if ratios:
        print(f"median after/before over {len(ratios)} cases: {np.median(ratios):.3f} "
              f"(min {min(ratios):.3f}, max {max(ratios):.3f})")
    return ratios


if __name__ == "__main__":
    main()
