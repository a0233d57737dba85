"""Cost of the per-step identity check of the kernel plans (a parameter or state buffer resized
or reallocated in place is refused): a whole ``opt.step([g])`` of Adam at N=1e4 (float32, one
thread), this checkout's build against a copy built without the check, in one run.

    PYTHONPATH=src python bench/identity_check_cost.py [--rounds 12] [--keep DIR]

The copy is ``git archive HEAD`` with the one ``self._check_identity()`` call of
``Plan._load`` (src/fastopt/_kernels.pyx) removed, built with ``setup.py build_ext --inplace``
in a temporary directory (about a minute; ``--keep DIR`` builds there once and reuses it).
Run it on a clean, built checkout, so that the two builds differ by that call only. Each
round runs both builds in fresh subprocesses, in alternating order; each subprocess warms up,
then times 15 blocks of 2000 steps. Prints the median ns/step of each build and the relative
difference.
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
CALL = "parameters\")\n        self._check_identity()\n        cdef Py_ssize_t i, j\n"

CHILD = r'''
import json, time
import numpy as np
import fastopt as fo
fo.set_num_threads(1)
n = 10_000
w = np.ones(n, np.float32)
g = [np.full(n, 0.01, np.float32)]
opt = fo.Adam([w])
for _ in range(2000):
    opt.step(g)
times = []
for _ in range(15):
    t0 = time.perf_counter_ns()
    for _ in range(2000):
        opt.step(g)
    times.append((time.perf_counter_ns() - t0) / 2000)
print(json.dumps(times))
'''


def build_without_check(where):
    where = Path(where)
    if (where / "src" / "fastopt").is_dir() and any((where / "src" / "fastopt").glob("_kernels*.so")):
        return where / "src"
    where.mkdir(parents=True, exist_ok=True)
    archive = subprocess.run(["git", "-C", str(ROOT), "archive", "HEAD"], check=True,
                             capture_output=True).stdout
    subprocess.run(["tar", "-x", "-C", str(where)], input=archive, check=True)
    pyx = where / "src" / "fastopt" / "_kernels.pyx"
    text = pyx.read_text()
    if text.count(CALL) != 1:
        sys.exit("could not find the identity check call in Plan._load; update CALL")
    pyx.write_text(text.replace(CALL, "parameters\")\n        cdef Py_ssize_t i, j\n"))
    subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"], cwd=where,
                   check=True, capture_output=True)
    return where / "src"


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--rounds", type=int, default=12)
    ap.add_argument("--keep", help="build the copy here (reused when already built)")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        builds = {"with check": ROOT / "src",
                  "without check": build_without_check(args.keep or tmp)}
        samples = {name: [] for name in builds}
        for r in range(args.rounds):
            for name in (list(builds) if r % 2 == 0 else list(reversed(builds))):
                env = {**os.environ, "PYTHONPATH": str(builds[name]), "OMP_NUM_THREADS": "1"}
                out = subprocess.run([sys.executable, "-c", CHILD], env=env, check=True,
                                     capture_output=True, text=True).stdout
                samples[name] += json.loads(out)
    med = {name: statistics.median(v) for name, v in samples.items()}
    for name, v in samples.items():
        q = statistics.quantiles(v, n=4)
        print(f"{name:14s} median {med[name]:8.1f} ns/step (quartiles {q[0]:.1f} .. {q[2]:.1f}; "
              f"{len(v)} blocks of 2000 steps)")
    print(f"identity check: {100 * (med['with check'] / med['without check'] - 1):+.2f} % "
          "of a whole step (Adam, N=1e4, float32, one thread)")


if __name__ == "__main__":
    main()
