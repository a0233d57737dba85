"""Quiet vs busy machine: step and Newton times with one competing CPU-bound process.

    python bench/busy_machine.py [--newton] [--policies default,passive]

For each OpenMP wait policy (``OMP_WAIT_POLICY`` unset = libgomp's default spin-then-sleep,
or ``passive``) and each load (quiet; one other process spinning on the CPU), a fresh Python
process times Adam steps on 1e6 and 1e7 float32 elements (fastopt with all threads, and the
textbook NumPy step), and with ``--newton`` runs bench/bench_newton.py (n=1e5, d=400: fastopt
Newton vs scikit-learn's newton-cholesky). Medians; the CPU model is printed with the figures.
"""
import argparse
import os
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

STEPS = r"""
import time, statistics, numpy as np, fastopt as fo
for n in (10**6, 10**7):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(n).astype(np.float32); g = rng.standard_normal(n).astype(np.float32)
    opt = fo.Adam([w], lr=1e-3)
    m = np.zeros_like(w); v = np.zeros_like(w)
    def textbook(t):
        global m, v
        m = 0.9 * m + 0.1 * g
        v = 0.999 * v + 0.001 * g * g
        mh = m / (1 - 0.9 ** t); vh = v / (1 - 0.999 ** t)
        w[...] = w - 1e-3 * mh / (np.sqrt(vh) + 1e-8)
    reps = 40 if n == 10**6 else 10
    for name, fn in (("fastopt", lambda t: opt.step([g])), ("numpy", textbook)):
        fn(1)
        ts = []
        for t in range(2, reps + 2):
            t0 = time.perf_counter(); fn(t); ts.append(time.perf_counter() - t0)
        print(f"adam {n:.0e} {name} {statistics.median(ts) * 1e3:.3f}")
"""


def spinner():
    return subprocess.Popen([sys.executable, "-c", "while True: pass"])


def run(env, newton):
    out = subprocess.run([sys.executable, "-c", STEPS], env=env, capture_output=True, text=True,
                         check=True).stdout
    rows = [line.split() for line in out.splitlines() if line.startswith("adam")]
    res = {f"adam {r[1]} {r[2]}": float(r[3]) for r in rows}
    if newton:
        text = subprocess.run([sys.executable, str(ROOT / "bench" / "bench_newton.py"),
                               "--repeat", "1"], env=env, capture_output=True, text=True,
                              check=True).stdout
        for line in text.splitlines():
            if line.startswith(("fastopt Newton", "sklearn newton-cholesky")):
                name = "newton fastopt" if line.startswith("fastopt") else "newton sklearn"
                res[name] = float(line.split()[2]) * 1e3
    return res


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--newton", action="store_true")
    ap.add_argument("--policies", default="default,passive")
    args = ap.parse_args()
    cpu = next((ln.split(":", 1)[1].strip() for ln in open("/proc/cpuinfo")
                if ln.startswith("model name")), "unknown CPU")
    print(f"{cpu}, {os.cpu_count()} CPUs")
    base = dict(os.environ, PYTHONPATH=str(ROOT / "src"))
    table = {}
    for policy in args.policies.split(","):
        env = dict(base)
        env.pop("OMP_WAIT_POLICY", None)
        if policy != "default":
            env["OMP_WAIT_POLICY"] = policy
        for load in ("quiet", "busy"):
            spin = spinner() if load == "busy" else None
            try:
                time.sleep(0.5)
                table[(policy, load)] = run(env, args.newton)
            finally:
                if spin:
                    spin.kill()
                    spin.wait()
    keys = list(next(iter(table.values())))
    print(f"{'case (ms, median)':24s}" + "".join(f"{p + '/' + l:>18s}" for p, l in table))
    for k in keys:
        print(f"{k:24s}" + "".join(f"{table[c][k]:18.2f}" for c in table))


if __name__ == "__main__":
    main()
