"""Adam's step with a low-bit state format in two builds (before / after), alternated.

    python bench/state_ab.py BEFORE_SRC AFTER_SRC [--format bfloat16] [--n 4e4] [--threads 1]
                             [--rounds 6] [--steps 2000] [--level best]

BEFORE_SRC and AFTER_SRC are the ``src`` folders of two built checkouts (``python setup.py
build_ext --inplace`` in each; e.g. ``git worktree add /tmp/before <commit>``). Each round runs
one subprocess per build, in alternating order, that warms up and then times ``--steps`` steps
of ``fastopt.Adam(state_dtype=...)`` on one float32 tensor of ``--n`` elements
(``codec_levels.sample``, beside this script); prints the
median ns per parameter of each build over the rounds and their ratio after / before, with the
CPU model.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys

CHILD = r'''
import json, sys
sys.path.insert(0, sys.argv[5])
import fastopt as fo
from fastopt.bench import machine_info
from codec_levels import sample
fmt, n, threads, steps = sys.argv[1], int(float(sys.argv[2])), int(sys.argv[3]), int(sys.argv[4])
fo.set_num_threads(threads)
from fastopt import _qstate
_qstate.use_codecs(sys.argv[6])
print(json.dumps([sample(n, fmt, steps, warmup=max(3, steps // 10)), machine_info()["cpu"]]))
'''


def _sample(src, args):
    env = dict(os.environ, PYTHONPATH=os.path.abspath(src))
    here = os.path.dirname(os.path.abspath(__file__))
    out = subprocess.run([sys.executable, "-c", CHILD, args.format, str(args.n),
                          str(args.threads), str(args.steps), here, args.level],
                         env=env, check=True, capture_output=True, text=True)
    return json.loads(out.stdout.strip().splitlines()[-1])


def alternate(args, sample):
    """{"before": [...], "after": [...]} of `sample(src, args)`'s first value over
    `args.rounds` rounds, the builds' order alternating each round, and the second value of the
    last call (the CPU model); also bench/lbfgs_ab.py's."""
    got = {"before": [], "after": []}
    for r in range(args.rounds):
        order = ("before", "after") if r % 2 == 0 else ("after", "before")
        for which in order:
            value, cpu = sample(getattr(args, which), args)
            got[which].append(value)
    return got, cpu


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("before")
    ap.add_argument("after")
    ap.add_argument("--format", default="bfloat16", choices=("float32", "bfloat16", "int8"))
    ap.add_argument("--n", type=float, default=4e4)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--rounds", type=int, default=6)
    ap.add_argument("--steps", type=int, default=2000)
    ap.add_argument("--level", default="best", choices=("best", "avx512f", "avx2", "scalar"),
                    help="the codec level (fastopt._qstate.use_codecs; capped at the CPU's)")
    args = ap.parse_args()
    got, cpu = alternate(args, _sample)
    b, a = statistics.median(got["before"]), statistics.median(got["after"])
    print(f"cpu: {cpu} | Adam, {args.format} state, N={args.n:.0e}, {args.threads} "
          f"thread(s), codecs {args.level}, {args.rounds} rounds: before {b:.3f} ns/param, "
          f"after {a:.3f} ns/param, after/before {a / b:.3f}")


if __name__ == "__main__":
    main()
