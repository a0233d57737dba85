"""Mutation check: put one-line bugs into the update rules and show that the tests catch each.

Run: python scripts/mutate.py [--only ID ...] [--list] [--rebuild] (from the repository root,
with the build in place; ~1-2 min per mutation on 2 cores; exit status 0 when all are caught).

Each mutation below replaces one line (the first occurrence of `old` after `anchor`) in the C
rules (csrc/fastopt/rules_impl.h), the optimizer table's element constants and per-step
scalars (src/fastopt/_table.py, from which the build generates constants.h and the runners), the
mixed-precision loops (csrc/mixed.c) and 16-bit conversions (csrc/fastopt/half.h) or the kernel
loops (csrc/kernels.c): wrong constants, flipped signs, an off-by-one bias correction,
eps-sized changes (eps added twice, eps dropped, a 1e-7 relative perturbation) that only show
in float32, and bugs in code paths that only mixed precision runs.

All work happens in a scratch copy of the tree (tracked and untracked-but-not-ignored files
plus the built extensions) under $TMPDIR; the working tree is never modified. For every
mutation the script edits the copy, rebuilds the extensions that include the edited file
(``python setup.py build_ext --inplace -j 2``), runs the mutation's target tests with ``-x``
under the CI hypothesis profile, and restores the pristine file and extensions. First the
targets run on the unmutated copy and must pass, so a failure means the bug was caught.
The report is a table: caught (the first failing test) or MISSED.
"""
import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

RULES = "csrc/fastopt/rules_impl.h"
TABLE = "src/fastopt/_table.py"      # constants (generated constants.h) and per-step scalars
MIXED = "csrc/mixed.c"
HALF = "csrc/fastopt/half.h"
KERNELS = "csrc/kernels.c"

# the tests that compare the rules with the float64 oracle and torch's recorded output
RULE_TESTS = ["tests/test_against_reference.py", "tests/test_functional.py",
              "tests/test_kernel_split.py", "tests/test_torch_parity.py"]
MIXED_TESTS = ["tests/test_mixed.py"]


@dataclass
class Mutation:
    id: str
    path: str
    anchor: str
    old: str
    new: str
    what: str
    tests: tuple = tuple(RULE_TESTS)


F32_ONLY = "(sizeof(FO_T) == 4 ? {} : (FO_T)0)"
# in an Adam table constant: the element type is float32 (a field of the k struct being
# initialized that is not an hp field, so the generator leaves the name alone)
F32_CONST = "sizeof(k.one_minus_beta2) == 4"

MUTATIONS = [
    # ---------------------------------------------------------------- wrong constants, signs
    Mutation("sgd-dampening-sign", TABLE, 'name="sgd", title', '"1.0 - dampening"',
             '"1.0 + dampening"', "SGD: 1 + dampening instead of 1 - dampening"),
    Mutation("sgd-momentum-constant", TABLE, 'name="sgd", title',
             'consts=(("lr", "lr"), ("momentum", "momentum"),',
             'consts=(("lr", "lr"), ("momentum", "momentum * 0.999"),',
             "SGD: momentum 0.1% too small"),
    Mutation("sgd-nesterov-sign", RULES, "fo_sgd_rule", "FO_FMA(k.momentum, b, g) : b",
             "FO_FMA(-k.momentum, b, g) : b", "SGD: Nesterov look-ahead with the wrong sign"),
    Mutation("sutskever-nesterov-sign", RULES, "fo_sgd_rule", "FO_FMA(k.momentum, v, -k.lr * g)",
             "FO_FMA(k.momentum, v, k.lr * g)", "SGD Sutskever+Nesterov: + lr g"),
    Mutation("weight-decay-sign", RULES, "fo_grad)(FO_T g", "FO_FMA(weight_decay, p, g)",
             "FO_FMA(-weight_decay, p, g)",
             "coupled weight decay with the wrong sign (the shared gradient preamble)"),
    Mutation("adagrad-eps-in-sqrt-swapped", RULES, "fo_adagrad_rule",
             "FO_SQRT(s + k.eps) : FO_SQRT(s) + k.eps", "FO_SQRT(s) + k.eps : FO_SQRT(s + k.eps)",
             "Adagrad: eps inside/outside the square root swapped (eps-sized)"),
    Mutation("rmsprop-centered-sign", RULES, "fo_rmsprop_rule", "v = FO_FMA(-m, m, v);",
             "v = FO_FMA(m, m, v);", "RMSprop centered: v + m^2"),
    Mutation("rmsprop-alpha-complement", TABLE, 'name="rmsprop", title', '"1.0 - alpha"',
             '"1.0 - alpha * alpha"', "RMSprop: 1 - alpha^2 for 1 - alpha"),
    Mutation("adam-amsgrad-no-max", RULES, "fo_adam_rule", "v = FO_MAX(s2[i], v);",
             "v = FO_MAX(v, v);", "Adam amsgrad: the running max is never taken"),
    Mutation("adamw-decay-dropped", RULES, "fo_adam_rule",
             "if (k.flags & FO_DECOUPLED) x = x * k.decay_factor;",
             "if (k.flags & FO_DECOUPLED) x = x;", "AdamW: decoupled decay not applied"),
    Mutation("adadelta-rho-swapped", RULES, "fo_adadelta_rule",
             "s1[i] = s1[i] * k.rho + k.one_minus_rho * d * d;",
             "s1[i] = s1[i] * k.one_minus_rho + k.rho * d * d;",
             "Adadelta: rho and 1 - rho swapped in acc_delta"),
    # ---------------------------------------------------------------- off by one
    Mutation("adam-bias-correction-off-by-one", TABLE, 'name="adam", title',
             '"(1 - beta2 ** step) ** 0.5"', '"(1 - beta2 ** (step + 1)) ** 0.5"',
             "Adam: second-moment bias correction of step t + 1"),
    Mutation("adamax-bias-correction-off-by-one", TABLE, 'name="adamax", title',
             '"lr / (1 - beta1 ** step)"', '"lr / (1 - beta1 ** (step - 1 or 1))"',
             "Adamax: bias correction of step t - 1"),
    Mutation("kernel-split-off-by-one", KERNELS, "int fo_##OPT##_step_##SFX(",
             "if (hi > lo) fo_##OPT##_range_##SFX(segs, nseg, lo, hi, k);",
             "if (hi > lo) fo_##OPT##_range_##SFX(segs, nseg, lo, hi - (t + 1 < team), k);",
             "kernels.c: each thread but the last skips its last element"),
    # ---------------------------------------------------------------- eps-sized
    Mutation("rmsprop-eps-twice", RULES, "fo_rmsprop_rule", ": FO_SQRT(v) + k.eps;",
             ": FO_SQRT(v) + k.eps + k.eps;", "RMSprop: eps added twice"),
    Mutation("adam-eps-twice-float32", RULES, "fo_adam_rule",
             "FO_T denom = FO_SQRT(v) / k.bc2_sqrt + k.eps;",
             "FO_T denom = FO_SQRT(v) / k.bc2_sqrt + k.eps + " + F32_ONLY.format("k.eps") + ";",
             "Adam: eps added twice, float32 only"),
    Mutation("adam-beta2-1e-7-float32", TABLE, 'name="adam", title', '"1.0 - beta2"',
             f'"1.0 - beta2 * ({F32_CONST} ? 1 + 1e-7 : 1.0)"',
             "Adam: beta2 1e-7 too large (relative) in 1 - beta2, float32 only"),
    Mutation("adam-complement-in-float32", TABLE, 'name="adam", title', '"1.0 - beta2"',
             f'"{F32_CONST} ? (double)((float)1 - (float)beta2) : 1.0 - beta2"',
             "Adam: 1 - beta2 formed in the element type (float32 only)"),
    Mutation("adadelta-eps-dropped", RULES, "fo_adadelta_rule", "FO_SQRT(s1[i] + k.eps) / std",
             "FO_SQRT(s1[i] + (sizeof(FO_T) == 4 ? 0 : k.eps)) / std",
             "Adadelta: eps dropped from the numerator, float32 only"),
    Mutation("adamax-eps-dropped", RULES, "fo_adamax_rule", "FO_T b = FO_FABS(g) + k.eps;",
             "FO_T b = FO_FABS(g);", "Adamax: eps dropped"),
    Mutation("adamax-eps-1.5x-float32", RULES, "fo_adamax_rule", "FO_T b = FO_FABS(g) + k.eps;",
             "FO_T b = FO_FABS(g) + k.eps * (sizeof(FO_T) == 4 ? (FO_T)1.5 : (FO_T)1);",
             "Adamax: eps 1.5x, float32 only"),
    # ---------------------------------------------------------------- mixed precision only
    Mutation("mixed-option-flags-dropped", MIXED, "#define FO_MIXED_CASE(OPT, SFX, V)",
             "kv.flags = (k.flags & ~FO_MASK_##OPT) | (V);",
             "kv.flags = (k.flags & ~FO_MASK_##OPT);",
             "mixed: the specialized loops lose their option flags", tuple(MIXED_TESTS)),
    Mutation("mixed-unscale-reciprocal", MIXED, "fo_load_grad",
             "for (int64_t i = 0; i < m; ++i) buf[i] = fo_h2f(g[i]) / scale;",
             "for (int64_t i = 0; i < m; ++i) buf[i] = fo_h2f(g[i]) * (1.0f / scale);",
             "mixed: float16 gradients times 1/S instead of divided by S (1 ulp)",
             tuple(MIXED_TESTS)),
    Mutation("mixed-scale-1e-7", MIXED, "fo_mixed_##OPT##_range(",
             "const float scale = (float)o->grad_scale;",
             "const float scale = (float)(o->grad_scale * (1 + 1e-7));",
             "mixed: loss scale 1e-7 too large (relative) in the update", tuple(MIXED_TESTS)),
    Mutation("mixed-master-less-widening", MIXED, "fo_load_values",
             "for (int64_t i = 0; i < m; ++i) buf[i] = fo_h2f(p[i]);",
             "for (int64_t i = 0; i < m; ++i) buf[i] = fo_bf2f(p[i]);",
             "mixed: float16 parameters without master widened as bfloat16", tuple(MIXED_TESTS)),
    Mutation("mixed-bf16-ties-away", HALF, "fo_f2bf(float f)",
             "(x + 0x7fffu + ((x >> 16) & 1u)) >> 16", "(x + 0x8000u) >> 16",
             "mixed: bfloat16 rounding ties away from zero", tuple(MIXED_TESTS)),
    Mutation("mixed-stochastic-noise-biased", HALF, "static inline uint32_t fo_noise(",
             "& 0xffffu;", "& 0x7fffu;", "mixed: stochastic rounding noise in [0, 2^15)",
             tuple(MIXED_TESTS)),
    Mutation("mixed-split-off-by-one", MIXED, "fo_share(total, t, team, 32, &lo, &hi);",
             "fo_mixed_##OPT##_range(segs, nseg, lo, hi, k, o);",
             "fo_mixed_##OPT##_range(segs, nseg, lo, hi - (t + 1 < team), k, o);",
             "mixed: each thread but the last skips its last element", tuple(MIXED_TESTS)),
]

# which extension sources to touch when a file changes (setup.py also lists the headers as
# dependencies; the table regenerates constants.h at the build)
DEPENDENTS = {RULES: [KERNELS, MIXED], TABLE: [KERNELS, MIXED], HALF: [MIXED], MIXED: [],
              KERNELS: []}


def copy_tree(dst):
    """Tracked and untracked-but-not-ignored files, plus the built extensions (mtimes kept,
    so the copy's build is up to date)."""
    files = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                           cwd=ROOT, check=True, capture_output=True).stdout.decode().split("\0")
    built = []
    for dirpath, _, names in os.walk(os.path.join(ROOT, "src", "fastopt")):
        built += [os.path.relpath(os.path.join(dirpath, n), ROOT) for n in names
                  if n.endswith((".so", ".pyd")) or (n.endswith(".c") and dirpath.endswith("fastopt"))]
    for rel in [f for f in files if f] + built:
        src = os.path.join(ROOT, rel)
        if os.path.isfile(src):
            os.makedirs(os.path.dirname(os.path.join(dst, rel)), exist_ok=True)
            shutil.copy2(src, os.path.join(dst, rel))


def extensions(tree):
    """The built extensions in place and in build/ (``build_ext --inplace`` copies build/'s
    copy into the tree whenever it finds build/ up to date, so both must be restored)."""
    found = []
    for top in (os.path.join(tree, "src", "fastopt"), os.path.join(tree, "build")):
        for dirpath, _, names in os.walk(top):
            found += [os.path.join(dirpath, n) for n in names if n.endswith((".so", ".pyd"))]
    return found


def build(tree, log):
    with open(log, "w") as out:
        return subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-j", "2"],
                              cwd=tree, stdout=out, stderr=subprocess.STDOUT).returncode == 0


def run_tests(tree, tests):
    """(passed, first failing test or the tail of the output)."""
    env = dict(os.environ, PYTHONPATH="src", HYPOTHESIS_PROFILE="ci")
    env.pop("FASTOPT_TEST_SEED", None)
    r = subprocess.run([sys.executable, "-m", "pytest", "-x", "-q", "-p", "no:cacheprovider",
                        "-rf", *tests], cwd=tree, env=env, capture_output=True, text=True)
    failed = [line[len("FAILED "):].split(" - ")[0] for line in r.stdout.splitlines()
              if line.startswith("FAILED ")]
    if r.returncode == 0:
        return True, ""
    return False, failed[0] if failed else r.stdout.strip().splitlines()[-1:]


def apply(tree, m):
    path = os.path.join(tree, m.path)
    with open(path) as f:
        text = f.read()
    at = text.find(m.anchor)
    if at < 0:
        raise ValueError(f"{m.id}: anchor {m.anchor!r} not found in {m.path}")
    i = text.find(m.old, at)
    if i < 0:
        raise ValueError(f"{m.id}: {m.old!r} not found after {m.anchor!r} in {m.path}")
    if "\n" in text[i:i + len(m.old)]:
        raise ValueError(f"{m.id}: the change must stay on one line")
    with open(path, "w") as f:
        f.write(text[:i] + m.new + text[i + len(m.old):])
    now = time.time()
    for dep in DEPENDENTS.get(m.path, []):
        os.utime(os.path.join(tree, dep), (now, now))


def main(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--only", nargs="*", help="run only these mutation ids")
    ap.add_argument("--list", action="store_true", help="list the mutations and exit")
    ap.add_argument("--rebuild", action="store_true", help="rebuild the copy from scratch first")
    args = ap.parse_args(argv)
    chosen = [m for m in MUTATIONS if not args.only or m.id in args.only]
    if args.list or not chosen:
        for m in MUTATIONS:
            print(f"{m.id:34} {m.path:28} {m.what}")
        return 0
    tree = tempfile.mkdtemp(prefix="fastopt-mutate-")
    try:
        print(f"mutate: scratch copy in {tree}", flush=True)
        copy_tree(tree)
        if args.rebuild:
            for so in extensions(tree):
                os.remove(so)
            shutil.rmtree(os.path.join(tree, "build"), ignore_errors=True)
        if not build(tree, os.path.join(tree, "build-pristine.log")):
            print("mutate: the unmutated copy does not build; see build-pristine.log")
            return 2
        pristine_dir = os.path.join(tree, ".pristine")
        os.makedirs(pristine_dir)
        saved = {}
        sources = {m.path for m in chosen} | {d for m in chosen for d in DEPENDENTS[m.path]}
        for p in extensions(tree) + [os.path.join(tree, rel) for rel in sorted(sources)]:
            saved[p] = os.path.join(pristine_dir, str(len(saved)))
            shutil.copy2(p, saved[p])
        targets = sorted({t for m in chosen for t in m.tests})
        t0 = time.time()
        ok, why = run_tests(tree, targets)
        print(f"mutate: unmutated run of {len(targets)} test files: "
              f"{'passed' if ok else 'FAILED ' + str(why)} ({time.time() - t0:.0f} s)", flush=True)
        if not ok:
            return 2
        rows = []
        for m in chosen:
            t0 = time.time()
            apply(tree, m)
            if not build(tree, os.path.join(tree, f"build-{m.id}.log")):
                result, detail = "BUILD ERROR", f"see build-{m.id}.log"
            else:
                passed, first = run_tests(tree, list(m.tests))
                result, detail = ("MISSED", "") if passed else ("caught", first)
            for p, copy in saved.items():          # pristine sources and extensions back
                shutil.copy2(copy, p)
            rows.append((m, result, detail, time.time() - t0))
            print(f"  {m.id:34} {result:7} {detail}  ({time.time() - t0:.0f} s)", flush=True)
        print()
        print("| mutation | file | bug | result | first failing test |")
        print("|---|---|---|---|---|")
        for m, result, detail, _ in rows:
            print(f"| {m.id} | {m.path} | {m.what} | {result} | {detail} |")
        missed = [m.id for m, r, _, _ in rows if r != "caught"]
        print(f"\n{len(rows) - len(missed)} of {len(rows)} caught"
              + (f"; not caught: {', '.join(missed)}" if missed else ""))
        return 1 if missed else 0
    finally:
        shutil.rmtree(tree, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main())
