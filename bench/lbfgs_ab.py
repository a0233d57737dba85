"""fastopt.LBFGS's iteration in two builds (before / after), alternated, against its yardstick.

    python bench/lbfgs_ab.py BEFORE_SRC AFTER_SRC [--n 1e5] [--history 100]
                             [--dtype float64] [--threads 2] [--rounds 6] [--samples 5]

BEFORE_SRC and AFTER_SRC are the ``src`` folders of two built checkouts (``python setup.py
build_ext --inplace`` in each; e.g. ``git worktree add /tmp/before <commit>``). Each round runs
one subprocess per build, in alternating order, that measures a row of `fastopt bench`'s
L-BFGS section (``fastopt._bench_lbfgs.run_lbfgs``: the iteration with the closure excluded,
the recursion alone, and the yardstick, ``history_size`` NumPy dot products over streamed
rows); prints each build's medians over the rounds (ms per iteration and the ratio to the
yardstick measured in the same subprocess), and after / before, with the CPU model.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

from state_ab import alternate

CHILD = r'''
import json, sys
import fastopt as fo
from fastopt._bench_lbfgs import run_lbfgs
from fastopt.bench import machine_info
n, m, dtype, threads, samples = int(float(sys.argv[1])), int(sys.argv[2]), sys.argv[3], \
    int(sys.argv[4]), int(sys.argv[5])
fo.set_num_threads(threads)
print(json.dumps([run_lbfgs(n, m, dtype, samples=samples), machine_info()["cpu"]]))
'''


def _sample(src, args):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    out = subprocess.run([sys.executable, "-c", CHILD, str(args.n), str(args.history),
                          args.dtype, str(args.threads), str(args.samples)],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--n", type=float, default=1e5)
    ap.add_argument("--history", type=int, default=100)
    ap.add_argument("--dtype", default="float64", choices=("float32", "float64"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--samples", type=int, default=5)
    args = ap.parse_args()
    got, cpu = alternate(args, _sample)
    med = {w: {k: statistics.median(r[k] for r in rows)
               for k in ("lbfgs_ms", "recursion_ms", "dot_ms", "ratio", "ratio_recursion")}
           for w, rows in got.items()}
    print(f"cpu: {cpu} | L-BFGS N={args.n:.0e} m={args.history} {args.dtype}, {args.threads} "
          f"thread(s), {args.rounds} rounds (medians)")
    for w in ("before", "after"):
        x = med[w]
        print(f"  {w:6s}: iteration {x['lbfgs_ms']:.3f} ms ({x['ratio']:.2f}x the m dots), "
              f"recursion {x['recursion_ms']:.3f} ms ({x['ratio_recursion']:.2f}x), "
              f"m dots {x['dot_ms']:.3f} ms")
    print(f"  after / before: iteration {med['after']['lbfgs_ms'] / med['before']['lbfgs_ms']:.3f}x,"
          f" recursion {med['after']['recursion_ms'] / med['before']['recursion_ms']:.3f}x")


if __name__ == "__main__":
    main()
