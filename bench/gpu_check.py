"""One prepared GPU check for fastopt.cuda: tests, parity figures, bandwidth, torch comparison.

Run from the repository root on a machine with a CUDA GPU and CuPy (see bench/gpu_setup.md):

    python3 bench/gpu_check.py            # about 2-3 minutes; writes $OUT/gpu_check.md if set

Parts (each reports its own failure and the script goes on):
  0. build fastopt in place if its extension is missing (python3 setup.py build_ext --inplace);
  1. pytest -q tests/test_cuda.py tests/test_cuda_source.py tests/test_cuda_host.py
     tests/test_cuda_optim.py;
  2. parity figures: every optimizer case, float32 and float64, many tensors, 100 steps,
     GPU vs the CPU kernels: the largest relative error and how many runs are bit-identical;
  3. the Adam step on 1e8 float32 parameters: median of 20 CUDA-event timings, the achieved
     bandwidth counted from the minimal traffic (reads p, g, m, v and writes p, m, v:
     28 bytes per parameter) against a device-to-device copy of the same number of bytes; the
     same for every optimizer over a few launch configurations (block, chunk, unroll);
  4. torch's fused CUDA Adam (and foreach Adam) on the same size, when torch with CUDA imports;
  5. launch overhead: 200 tensors of 10,000 elements, host time per step, fastopt vs torch.
Prints a markdown table and writes it (with the pytest log) under $OUT when set.
"""
import os
import statistics
import subprocess
import sys
import time
import traceback
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SRC = ROOT / "src"
sys.path.insert(0, str(SRC))
sys.path.insert(0, str(ROOT / "tests"))
OUT = os.environ.get("OUT")
N = 100_000_000
REPS = 20
ROWS = []          # (part, result)
LOG = []


def say(msg):
    print(msg, flush=True)
    LOG.append(msg)


def part(name):
    def wrap(fn):
        def run(*args):
            t0 = time.perf_counter()
            say(f"\n== {name}")
            try:
                return fn(*args)
            except Exception as exc:  # report and carry on with the next part
                say(traceback.format_exc())
                ROWS.append((name, f"FAILED: {type(exc).__name__}: {str(exc)[:200]}"))
            finally:
                say(f"   ({time.perf_counter() - t0:.1f} s)")
        return run
    return wrap


@part("environment")
def environment():
    import numpy
    ROWS.append(("python / numpy", f"{sys.version.split()[0]} / {numpy.__version__}"))
    import cupy
    props = cupy.cuda.runtime.getDeviceProperties(cupy.cuda.Device().id)
    name = props["name"].decode() if isinstance(props["name"], bytes) else props["name"]
    ROWS.append(("GPU", f"{name}, {props['multiProcessorCount']} SMs, "
                        f"{props['totalGlobalMem'] / 2**30:.0f} GiB"))
    ROWS.append(("CuPy / CUDA runtime", f"{cupy.__version__} / {cupy.cuda.runtime.runtimeGetVersion()}"))


@part("build")
def build():
    try:
        import fastopt._kernels  # noqa: F401
        ROWS.append(("build", "fastopt._kernels already built"))
        return
    except ImportError:
        pass
    t0 = time.perf_counter()
    out = subprocess.run([sys.executable, "setup.py", "build_ext", "--inplace", "-q"], cwd=ROOT,
                         capture_output=True, text=True, timeout=240)
    say(out.stdout[-3000:] + out.stderr[-3000:])
    if out.returncode != 0:
        raise RuntimeError(f"setup.py build_ext failed (rc {out.returncode})")
    import fastopt._kernels  # noqa: F401
    ROWS.append(("build", f"built in place in {time.perf_counter() - t0:.0f} s"))


@part("pytest")
def run_tests():
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(SRC), env_get("PYTHONPATH")]),
               HYPOTHESIS_PROFILE="ci")
    cmd = [sys.executable, "-m", "pytest", "-q", "-rs", "-p", "no:cacheprovider",
           "tests/test_cuda.py", "tests/test_cuda_source.py", "tests/test_cuda_host.py",
           "tests/test_cuda_optim.py"]
    out = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=300, env=env)
    text = out.stdout + out.stderr
    if OUT:
        Path(OUT, "pytest.log").write_text(text)
    say(text[-6000:])
    summary = [ln for ln in text.strip().splitlines() if " passed" in ln or " failed" in ln]
    ROWS.append(("pytest " + " ".join(cmd[cmd.index("-q") + 4:]),
                 (summary[-1].strip("= ") if summary else "no summary") + f" (rc {out.returncode})"))


def env_get(name):
    return os.environ.get(name, "")


@part("parity figures")
def parity():
    import cupy as cp
    import numpy as np
    from cuda_cases import CASES, make_problem, rel_err, run_backend, run_cpu

    from fastopt import cuda
    c = cuda.CHUNK
    shapes = [(3, 5), (0,), (1,), (2 * c + 1,), (257,)]
    for dtype in (np.float32, np.float64):
        worst, worst_case, identical = 0.0, "", 0
        for case in sorted(CASES):
            params, grads = make_problem(shapes, [dtype] * len(shapes), 100, seed=1)
            want_p, want_s = run_cpu(case, params, grads, [dtype] * len(shapes))
            got_p, got_s = run_backend(cuda, cp.asarray, lambda a: a.get(), case, params, grads)
            pairs = list(zip(got_p + sum(got_s, []), want_p + sum(want_s, [])))
            err = max(rel_err(a, b) for a, b in pairs)
            identical += all(np.array_equal(a, b, equal_nan=True) for a, b in pairs)
            if err > worst:
                worst, worst_case = err, case
        ROWS.append((f"parity {np.dtype(dtype)}, {len(CASES)} cases x 100 steps",
                     f"max rel. error {worst:.2e}{' (' + worst_case + ')' if worst_case else ''}; "
                     f"bit-identical to the CPU in {identical}/{len(CASES)}"))


def median_ms(cp, fn, reps=REPS, warm=3):
    for _ in range(warm):
        fn()
    ev = [(cp.cuda.Event(), cp.cuda.Event()) for _ in range(reps)]
    for a, b in ev:
        a.record()
        fn()
        b.record()
    ev[-1][1].synchronize()
    return statistics.median(cp.cuda.get_elapsed_time(a, b) for a, b in ev)


STATE = {}


@part("bandwidth: copy and fastopt steps on 1e8 float32")
def bandwidth():
    import cupy as cp
    import numpy as np

    from fastopt import cuda
    nbytes = 14 * N                                   # copy: 14 B read + 14 B written per param
    src = cp.random.random(nbytes // 4, dtype=cp.float32)
    dst = cp.empty_like(src)
    rt = cp.cuda.runtime

    def copy():
        rt.memcpyAsync(dst.data.ptr, src.data.ptr, nbytes, rt.memcpyDeviceToDevice,
                       cp.cuda.get_current_stream().ptr)
    ms = median_ms(cp, copy)
    copy_gbs = 2 * nbytes / ms / 1e6
    STATE["copy_gbs"] = copy_gbs
    ROWS.append(("device-to-device copy of 2.8 GB (1.4 GB read + 1.4 GB written)",
                 f"{ms:.3f} ms, {copy_gbs:.0f} GB/s"))
    ms = median_ms(cp, lambda: cp.copyto(dst, src))
    ROWS.append(("cupy.copyto (an elementwise copy kernel), same bytes",
                 f"{ms:.3f} ms, {2 * nbytes / ms / 1e6:.0f} GB/s ({2 * nbytes / ms / 1e6 / copy_gbs:.0%})"))
    del src, dst

    rng = cp.random.default_rng(0)
    p = rng.standard_normal(N, dtype=cp.float32)
    g = rng.standard_normal(N, dtype=cp.float32)
    init = [rng.random(N, dtype=cp.float32) * 0.01 for _ in range(3)]
    states = [cp.empty_like(a) for a in init]
    # label -> (minimal bytes per parameter, step)
    steps = {
        "Adam": (28, lambda plan: cuda.adam(plan, [g], 1e-3, 0.9, 0.999, 0.5, 1e-8, 0.0, 1.0, 0)),
        "AdamW amsgrad": (36, lambda plan: cuda.adam(plan, [g], 1e-3, 0.9, 0.999, 0.5, 1e-8, 0.01,
                                                     0.99999, cuda.AMSGRAD | cuda.DECOUPLED)),
        "SGD momentum": (20, lambda plan: cuda.sgd(plan, [g], 1e-3, 0.9, 0.0, 0.0, cuda.MOMENTUM)),
        "Adagrad": (20, lambda plan: cuda.adagrad(plan, [g], 1e-2, 1e-10, 0.0, 0)),
        "RMSprop": (20, lambda plan: cuda.rmsprop(plan, [g], 1e-3, 0.99, 1e-8, 0.0, 0.0, 0)),
        "Adadelta": (28, lambda plan: cuda.adadelta(plan, [g], 1.0, 0.9, 1e-6, 0.0, 0)),
        "Adamax": (28, lambda plan: cuda.adamax(plan, [g], 2e-3, 0.9, 0.999, 1e-8, 0.0, 0)),
    }
    defaults = (cuda.BLOCK, cuda.CHUNK, cuda.MIN_BLOCKS, cuda.UNROLL)
    configs = [defaults] + [(256, 4096, 0, u) for u in (1, 2, 4, 8)] + [(128, 4096, 0, 4),
                                                                        (512, 8192, 0, 4),
                                                                        (256, 4096, 8, 4)]
    configs = list(dict.fromkeys(configs))
    sweep = {name: [] for name in steps}
    for cfg in configs:
        cuda.BLOCK, cuda.CHUNK, cuda.MIN_BLOCKS, cuda.UNROLL = cfg
        try:
            plan = cuda.Plan([p])
            for k in range(3):
                plan.set_state(k, [states[k]])
            for name, (bpp, step) in steps.items():
                for s, s0 in zip(states, init):
                    s[...] = s0
                ms = median_ms(cp, lambda: step(plan))
                if not bool(cp.isfinite(p).all()):
                    raise FloatingPointError(f"{name} made the parameters non-finite")
                gbs = bpp * N / ms / 1e6
                sweep[name].append((ms, gbs / copy_gbs))
                if cfg == defaults and name == "Adam":
                    STATE["adam_ms"] = ms
                    ROWS.append((f"fastopt Adam 1e8 float32 (block {cfg[0]}, chunk {cfg[1]}, "
                                 f"unroll {cfg[3]})",
                                 f"{ms:.3f} ms, {gbs:.0f} GB/s = {gbs / copy_gbs:.0%} of copy"))
        finally:
            cuda.BLOCK, cuda.CHUNK, cuda.MIN_BLOCKS, cuda.UNROLL = defaults
    head = ["optimizer (bytes/param)"] + [
        f"b{c[0]} c{c[1]} u{c[3]}" + (f" mb{c[2]}" if c[2] else "") + (" (default)" if c == defaults else "")
        for c in configs]
    lines = ["| " + " | ".join(head) + " |", "|" + " --- |" * len(head)]
    for name, vals in sweep.items():
        cells = [f"{ms:.3f} ms, {frac:.0%}" for ms, frac in vals]
        lines.append(f"| {name} ({steps[name][0]}) | " + " | ".join(cells) + " |")
    STATE["sweep"] = ("Step time on 1e8 float32 parameters and achieved bandwidth as a fraction of "
                      "the device-to-device copy, per launch configuration (b block, c chunk, "
                      "u unroll, mb min blocks/SM):\n\n" + "\n".join(lines))
    for name, vals in sweep.items():
        i = min(range(len(vals)), key=lambda j: vals[j][0])
        STATE.setdefault("best", []).append(f"{name}: {head[i + 1]}")


@part("torch fused Adam on 1e8 float32")
def torch_adam():
    import torch
    if not torch.cuda.is_available():
        ROWS.append(("torch", f"{torch.__version__} without CUDA: skipped"))
        return
    import cupy as cp
    copy_gbs = STATE.get("copy_gbs")
    for mode in ("fused", "foreach"):
        p = torch.randn(N, device="cuda", requires_grad=True)
        p.grad = torch.randn(N, device="cuda")
        opt = torch.optim.Adam([p], lr=1e-3, **{mode: True})
        for _ in range(3):
            opt.step()
        times = []
        for _ in range(REPS):
            a, b = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            a.record()
            opt.step()
            b.record()
            times.append((a, b))
        torch.cuda.synchronize()
        ms = statistics.median(a.elapsed_time(b) for a, b in times)
        gbs = 28 * N / ms / 1e6
        rel = f", fastopt/torch time {STATE['adam_ms'] / ms:.2f}" if "adam_ms" in STATE else ""
        ROWS.append((f"torch {torch.__version__} Adam({mode}=True)",
                     f"{ms:.3f} ms, {gbs:.0f} GB/s"
                     + (f" = {gbs / copy_gbs:.0%} of copy" if copy_gbs else "") + rel))
        del opt, p
        torch.cuda.empty_cache()
    del cp


@part("launch overhead: 200 tensors x 10,000 float32")
def many_tensors():
    import cupy as cp

    from fastopt import cuda
    n, size, steps = 200, 10_000, 200
    ps = [cp.random.standard_normal(size, dtype=cp.float32) for _ in range(n)]
    gs = [cp.random.standard_normal(size, dtype=cp.float32) for _ in range(n)]
    plan = cuda.Plan(ps)
    for k in range(2):
        plan.set_state(k, [cp.zeros_like(a) for a in ps])

    def run():
        for _ in range(steps):
            cuda.adam(plan, gs, 1e-3, 0.9, 0.999, 0.5, 1e-8, 0.0, 1.0, 0)
        cp.cuda.get_current_stream().synchronize()
    run()
    t0 = time.perf_counter()
    run()
    us = (time.perf_counter() - t0) / steps * 1e6
    ROWS.append(("fastopt Adam, 200 tensors (one launch), host wall time per step", f"{us:.0f} us"))
    try:
        import torch
        if torch.cuda.is_available():
            tp = [torch.randn(size, device="cuda", requires_grad=True) for _ in range(n)]
            for t in tp:
                t.grad = torch.randn(size, device="cuda")
            opt = torch.optim.Adam(tp, lr=1e-3, fused=True)

            def trun():
                for _ in range(steps):
                    opt.step()
                torch.cuda.synchronize()
            trun()
            t0 = time.perf_counter()
            trun()
            tus = (time.perf_counter() - t0) / steps * 1e6
            ROWS.append(("torch Adam(fused=True), same 200 tensors, host wall time per step",
                         f"{tus:.0f} us"))
    except ImportError:
        pass


def report():
    lines = ["| check | result |", "| --- | --- |"]
    lines += [f"| {a} | {b} |" for a, b in ROWS]
    if "best" in STATE:
        lines.append("| fastest configuration per optimizer | " + "; ".join(STATE["best"]) + " |")
    table = "\n".join(lines)
    if "sweep" in STATE:
        table += "\n\n" + STATE["sweep"]
    print("\n" + table, flush=True)
    if OUT:
        Path(OUT).mkdir(parents=True, exist_ok=True)
        Path(OUT, "gpu_check.md").write_text("# fastopt GPU check\n\n" + table + "\n")
        Path(OUT, "gpu_check.log").write_text("\n".join(LOG) + "\n")


def main():
    t0 = time.perf_counter()
    if OUT:
        Path(OUT).mkdir(parents=True, exist_ok=True)
    environment()
    build()
    run_tests()
    parity()
    bandwidth()
    torch_adam()
    many_tensors()
    ROWS.append(("total wall time", f"{time.perf_counter() - t0:.0f} s"))
    report()


if __name__ == "__main__":
    main()
