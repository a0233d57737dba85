"""`fastopt bench`: how fast an update is, against the machine's limit and against its peers.

Design note
-----------
One run measures everything at the same thread count, on the same machine state:

* the in-place update bandwidth, with the stream kernel ``b += s * c``
  (``fastopt._kernels.stream_axpy``, split and vectorized like the update loops);
* for every optimizer, float32/float64, N from 1e3 to 5e7, one thread and all threads:
  fastopt's ``opt.step(grads)`` (the whole call, Python included), textbook and best-effort
  NumPy, and torch.optim's fastest CPU variant when torch is installed
  (bench/impls.py of the source checkout builds the contenders: they are not shipped, so
  `fastopt bench` runs from a checkout, ``pip install -e .`` or an in-place build);
* warm (the arrays stay in cache if they fit) and cold (caches evicted before every step);
* two lists of tensors: ResNet-50's 161 parameter shapes (25.6M values) and 1000 x 1000;
* 1 vs all threads for fastopt alone, with the process's CPU time per wall time;
* the serial/parallel crossover that sets the kernels' parallel threshold;
* SparseAdam on an embedding table (row-sparse gradients with repeated lookups) against
  torch.optim.SparseAdam.

Contenders are timed alternately: each sample runs every contender once, in an order that
rotates, so drifts of a noisy machine hit all of them alike. A sample is one step, or for fast
steps a batch of steps lasting about ``--batch-ms``. Reported: the median time per step, its
spread (inter-quartile range / median), GB/s from the minimal traffic
(``impls.TRAFFIC``), the percentage of the stream kernel's GB/s measured in the same
samples, and speed ratios ``t_other / t_fastopt`` computed per sample pair, then the median.
"""
import argparse
import gc
import importlib.util
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import numpy as np

from . import _kernels
from ._specs import SPECS

__all__ = ["main", "add_arguments", "run", "Config", "measure", "format_report", "load_impls"]

#: the --optimizers choices: every optimizer of the registry (bench/impls.py has a contender each)
OPTIMIZERS = tuple(SPECS)

_IMPLS_FILE = Path(__file__).resolve().parents[2] / "bench" / "impls.py"
_loaded_impls = None


def load_impls(path=None):
    """The contenders module: bench/impls.py of the source checkout this fastopt runs from, or
    the file `path`. Loaded once; raises ImportError saying how to get it when it is absent
    (an installed wheel does not ship the benchmark implementations)."""
    global _loaded_impls
    if _loaded_impls is not None and path is None:
        return _loaded_impls
    path = Path(path) if path is not None else _IMPLS_FILE
    if not path.is_file():
        raise ImportError(
            "the NumPy and torch contenders (bench/impls.py) come with a source checkout, not "
            f"with the installed package (no {path}). In a clone of the fastopt repository: "
            "`pip install -e .`, or `python setup.py build_ext --inplace` then "
            "`PYTHONPATH=src python -m fastopt bench`")
    spec = importlib.util.spec_from_file_location("fastopt_bench_impls", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    _loaded_impls = module
    return module


class _Impls:
    """`impls.X` is load_impls().X: the contenders are loaded at the first use, not on import."""

    def __getattr__(self, name):
        return getattr(load_impls(), name)


impls = _Impls()

FULL_SIZES = (1_000, 10_000, 100_000, 1_000_000, 10_000_000, 50_000_000)
QUICK_SIZES = (10_000, 1_000_000)
DTYPES = ("float32", "float64")
#: the parts of a run, in order, with what each measures (for --help)
SECTIONS = {
    "sizes": "one tensor per size, warm cache, 1 and all threads",
    "cold": "one tensor, caches evicted before every step",
    "lists": "lists of tensors: ResNet-50's 161 shapes and 1000 tensors of 1000",
    "threads": "fastopt alone at 1 vs all threads",
    "crossover": "serial vs parallel step at small sizes",
    "muon": "Muon's step vs the BLAS gemm rate of its Newton-Schulz iteration and torch's Muon",
    "sparse": "SparseAdam on an embedding table (1e6 x 64 float32, 4096-lookup batches with "
              "repeats; 1e5 rows with --quick) vs torch.optim.SparseAdam",
    "adafactor": "Adafactor (not elementwise) on one matrix vs torch's variants, float32",
    "lbfgs": "L-BFGS per iteration (closure excluded) vs history_size numpy dots",
    "states": "Adam with float32, bfloat16 and int8 state (5e7 float32; 1e6 with --quick) vs "
              "torch's fused Adam, bitsandbytes' CPU Adam8bit and each format's bandwidth limit",
}
#: the SparseAdam case: (table rows, row length, lookups per batch)
SPARSE_SHAPE = (1_000_000, 64, 4096)
QUICK_SPARSE_SHAPE = (100_000, 64, 4096)
#: the matrix of the adafactor section (5e7 values; 1000 x 1000 with --quick)
ADAFACTOR_SHAPE, ADAFACTOR_QUICK_SHAPE = (5000, 10000), (1000, 1000)


# ----------------------------------------------------------------------------- configuration
class Config:
    """What to measure; built from the command line (see add_arguments)."""

    def __init__(self, quick=False, optimizers=None, dtypes=None, sizes=None, threads=None,
                 samples=None, batch_ms=None, cold_sizes=None, lists=True, list_scale=None,
                 thread_sizes=None, crossover_sizes=None, torch=True, evict_mb=None,
                 sections=None, muon_shapes=None, sparse_shape=None, lbfgs_cases=None,
                 states_n=None):
        all_threads = _kernels.get_num_threads() if not threads else max(threads)
        self.quick = quick
        self.optimizers = tuple(optimizers or impls.OPTIMIZERS)
        self.dtypes = tuple(dtypes or (("float32",) if quick else ("float32", "float64")))
        self.sizes = tuple(sizes or (QUICK_SIZES if quick else FULL_SIZES))
        self.threads = tuple(threads or sorted({1, all_threads}))
        self.all_threads = all_threads
        self.samples = samples or (3 if quick else 9)
        self.batch_ms = batch_ms or (1.0 if quick else 5.0)
        self.cold_sizes = tuple(cold_sizes if cold_sizes is not None
                                else ((1_000_000,) if quick else (1_000_000, 10_000_000)))
        few = tuple(o for o in ("adam", "sgd") if o in self.optimizers) or self.optimizers[:1]
        self.cold_optimizers = few[:1] if quick else self.optimizers
        self.list_optimizers = few if quick else self.optimizers
        self.list_threads = (all_threads,) if quick else self.threads
        self.thread_optimizers = few if quick else self.optimizers
        self.pick_torch = not quick    # quick: take fused > foreach > single without a trial
        self.lists = lists
        self.list_scale = list_scale or (64 if quick else 1)
        self.thread_sizes = tuple(thread_sizes if thread_sizes is not None
                                  else ((1_000_000,) if quick else (1_000_000, 10_000_000, 50_000_000)))
        self.crossover_sizes = tuple(crossover_sizes if crossover_sizes is not None
                                     else ((8_192, 65_536) if quick else
                                           (2_048, 4_096, 8_192, 16_384, 32_768, 65_536, 131_072, 262_144)))
        self.crossover_optimizers = few[:1] if quick else self.optimizers
        self.torch = torch
        self.evict_mb = evict_mb
        self.sections = tuple(sections or SECTIONS)
        from ._bench_muon import FULL_SHAPES, QUICK_SHAPES
        self.muon_shapes = tuple(tuple(s) for s in (muon_shapes or (QUICK_SHAPES if quick
                                                                     else FULL_SHAPES)))
        self.sparse_shape = tuple(sparse_shape or (QUICK_SPARSE_SHAPE if quick else SPARSE_SHAPE))
        self.adafactor_shape = ADAFACTOR_QUICK_SHAPE if quick else ADAFACTOR_SHAPE
        #: L-BFGS rows: (N, history_size, dtype)
        self.lbfgs_cases = tuple(lbfgs_cases if lbfgs_cases is not None else
                                 (((10_000, 20, "float64"),) if quick else
                                  ((10_000, 100, "float64"), (100_000, 100, "float64"),
                                   (100_000, 100, "float32"))))
        from ._bench_states import N as STATES_N, QUICK_N as STATES_QUICK_N
        #: the N of the state-format rows
        self.states_n = int(states_n or (STATES_QUICK_N if quick else STATES_N))


# ------------------------------------------------------------------------------- machine
def _llc_bytes():
    """Size of the largest CPU cache (Linux sysfs), or None."""
    best = None
    base = "/sys/devices/system/cpu/cpu0/cache"
    try:
        for entry in os.listdir(base):
            if not entry.startswith("index"):
                continue
            with open(os.path.join(base, entry, "size")) as f:
                text = f.read().strip()
            scale = {"K": 1024, "M": 1024 ** 2, "G": 1024 ** 3}.get(text[-1:], 1)
            size = int(text.rstrip("KMG")) * scale
            best = size if best is None else max(best, size)
    except (OSError, ValueError):
        return None
    return best


def _cpu_name():
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def _state_codecs():
    """The low-bit state codecs running ("avx512vbmi+bf16": the AVX-512 BF16 conversion too)."""
    from . import _qstate
    return _qstate.codec_level() + ("+bf16" if _qstate.bf16_instruction() else "")


def machine_info():
    """Facts printed above the tables and stored in --json."""
    import fastopt
    info = {
        "cpu": _cpu_name(), "logical_cpus": os.cpu_count(), "llc_bytes": _llc_bytes(),
        "fastopt": fastopt.__version__, "numpy": np.__version__,
        "python": platform.python_version(), "openmp": _kernels.has_openmp(),
        "vector_isa": _kernels.vector_isa(), "isa_clones": _kernels.has_isa_clones(),
        "state_codecs": _state_codecs(),
        "parallel_threshold": int(_kernels.get_parallel_threshold()),
        "max_threads": int(_kernels.get_num_threads()),
    }
    torch = _torch()
    info["torch"] = torch.__version__ if torch is not None else None
    return info


def _torch():
    try:
        import torch
    except ImportError:
        return None
    return torch


class Threads:
    """Set fastopt's (and torch's) thread count for a block; restores them after."""

    def __init__(self, n):
        self.n = n

    def __enter__(self):
        self.saved = _kernels.get_num_threads()
        _kernels.set_num_threads(self.n)
        torch = _torch()
        if torch is not None:
            self.saved_torch = torch.get_num_threads()
            torch.set_num_threads(self.n)
        return self

    def __exit__(self, *exc):
        _kernels.set_num_threads(self.saved)
        torch = _torch()
        if torch is not None:
            torch.set_num_threads(self.saved_torch)


class Evictor:
    """Evicts the CPU caches by sweeping a buffer larger than the last-level cache."""

    def __init__(self, megabytes=None):
        if megabytes is None:
            llc = _llc_bytes() or 32 * 2 ** 20
            megabytes = min(max(2 * llc, 64 * 2 ** 20), 1024 * 2 ** 20) / 2 ** 20
        self.bytes = int(megabytes * 2 ** 20)
        self.buffer = np.ones(self.bytes // 4, np.float32)

    def __call__(self):
        np.add(self.buffer, 1.0, out=self.buffer)


# ------------------------------------------------------------------------------- timing
def _calibrate(fn, target_s):
    """Steps per sample so that one sample lasts about target_s (fn is run twice: warm-up)."""
    fn()
    t = time.perf_counter()
    fn()
    dt = time.perf_counter() - t
    if dt <= 0:
        return 1000
    return int(min(100_000, max(1, round(target_s / dt))))


def measure(contenders, samples, batch_s=0.005, evict=None):
    """Time `contenders` (name -> zero-argument step) alternately.

    Returns name -> list of seconds per step, one entry per sample. With `evict`, every step
    is preceded by an eviction and timed alone.
    """
    names = list(contenders)
    inner = {k: 1 if evict is not None else _calibrate(contenders[k], batch_s) for k in names}
    if evict is not None:
        for k in names:
            contenders[k]()
    times = {k: [] for k in names}
    clock = time.perf_counter
    for j in range(samples):
        shift = j % len(names)
        for k in names[shift:] + names[:shift]:
            fn, n = contenders[k], inner[k]
            if evict is not None:
                evict()
            t = clock()
            for _ in range(n):
                fn()
            times[k].append((clock() - t) / n)
    return times


def settle(timeout=2.0, quiet=0.05, probe=0.01, idle=0.1):
    """Wait until the process is idle: until it has spent at most `idle` CPU seconds per wall
    second over `quiet` seconds in a row (sleeps of `probe` seconds), or `timeout` seconds
    have passed. Returns True when the process went idle.

    OpenMP's worker threads (fastopt's, and torch's) spin-wait after a parallel region before
    they sleep (libgomp: GOMP_SPINCOUNT iterations, milliseconds of CPU), and the process's
    CPU time counts that spinning. On a busy machine a spinning thread runs only now and
    then, so one short idle probe proves little: several in a row are required.
    """
    end = time.perf_counter() + timeout
    calm = 0.0
    while True:
        c, w = time.process_time(), time.perf_counter()
        time.sleep(probe)
        dt = time.perf_counter() - w
        calm = calm + dt if time.process_time() - c <= idle * dt else 0.0
        if calm >= quiet:
            return True
        if time.perf_counter() >= end:
            return False


def cpu_per_wall(fn, seconds=0.05, evict=None):
    """The process's CPU seconds per wall second while calling fn for about `seconds`.

    Starts from an idle process (:func:`settle`), so that threads still spinning after
    earlier steps at another thread count are not counted; spinning between fn's own steps
    is (it is part of what fn costs).
    """
    n = 1 if evict is not None else _calibrate(fn, seconds)
    settle()
    reps = 3
    cpu = wall = 0.0
    for _ in range(reps):
        if evict is not None:
            evict()
        c, w = time.process_time(), time.perf_counter()
        for _ in range(n):
            fn()
        cpu += time.process_time() - c
        wall += time.perf_counter() - w
    return cpu / wall if wall > 0 else float("nan")


def _summary(ts):
    ts = np.asarray(ts)
    med = float(np.median(ts))
    q1, q3 = np.percentile(ts, [25, 75])
    return {"median_ms": med * 1e3, "spread_pct": float((q3 - q1) / med * 100) if med > 0 else 0.0}


def _ratio(other, mine):
    return float(np.median(np.asarray(other) / np.asarray(mine)))


# --------------------------------------------------------------------------------- data
def _free(nbytes):
    """Collect reference cycles (torch optimizers hold some) when large buffers may be in them.

    A full collection costs a fraction of a second once torch is imported, so small cases skip
    it; their buffers are negligible.
    """
    if nbytes >= 64 * 2 ** 20:
        gc.collect()


class Inputs:
    """Initial parameters and gradients per (shapes, dtype), made once and reused."""

    def __init__(self):
        self.cache = {}

    def get(self, shapes, dtype):
        key = (tuple(shapes), dtype)
        if key not in self.cache:
            self.cache.clear()
            _free(2 ** 30)
            rng = np.random.default_rng(0)
            params = [rng.standard_normal(s, dtype=np.float32).astype(dtype, copy=False)
                      for s in shapes]
            grads = [(rng.standard_normal(s, dtype=np.float32) * 0.01).astype(dtype, copy=False)
                     for s in shapes]
            self.cache[key] = (params, grads)
        return self.cache[key]


def list_cases(scale=1):
    """The list cases: name -> shapes (tensor sizes divided by `scale`, at least 1)."""
    def shrink(shape):
        return (max(1, math.prod(shape) // scale),)
    resnet = [shrink(s) if scale > 1 else s for s in impls.RESNET50_SHAPES]
    many = [shrink((1000,))] * 1000
    return {"resnet50": resnet, "1000x1000": many}


def list_label(name, shapes, scale=1):
    """The printed name of list case `name`: with its real size when shrunk by `scale`
    (``resnet50/64``, ``1000x15``), and its tensor count and total size."""
    n = sum(math.prod(s) for s in shapes)
    if scale > 1:
        name = f"{name}/{scale}" if name == "resnet50" else f"{len(shapes)}x{n // len(shapes)}"
    return f"{name} ({len(shapes)} tensors, N={_fmt_n(n)})"


# ---------------------------------------------------------------------------------- cases
def _stream_step(n, dtype):
    b = np.ones(n, dtype)
    c = np.full(n, 1e-6, dtype)
    return lambda: _kernels.stream_axpy(b, c, 1e-3)


def _pick_torch(name, params, grads, cfg, evict):
    """The fastest torch variant for this case: (variant, step) or (None, None)."""
    if not cfg.torch:
        return None, None
    best = (None, None, math.inf)
    for variant in impls.torch_variants(name):
        try:
            step = impls.make_torch(name, params, grads, variant)
            step()
        except (RuntimeError, TypeError, ValueError):
            continue
        if not cfg.pick_torch:
            return variant, step
        t = np.median(measure({"t": step}, 3, cfg.batch_ms / 1e3, evict)["t"])
        if t < best[2]:
            best = (variant, step, t)
        else:
            del step
        _free(sum(p.nbytes for p in params))
    return best[0], best[1]


def run_case(name, shapes, dtype, threads, cfg, inputs, evict=None, flat=False):
    """Measure one case; returns its row (a dict, see format_report)."""
    params, grads = inputs.get(shapes, dtype)
    n = sum(math.prod(s) for s in shapes)
    itemsize = np.dtype(dtype).itemsize
    with Threads(threads):
        contenders = {"fastopt": impls.make_fastopt(name, params, grads)}
        if flat:
            contenders["fastopt_flat"] = impls.make_fastopt_flat(name, params, grads)
        contenders["stream"] = _stream_step(n, dtype)
        best = impls.make_numpy(name, params, grads, "best")
        if best is not None:
            contenders["numpy_best"] = best
        contenders["numpy_textbook"] = impls.make_numpy(name, params, grads, "textbook")
        variant, tstep = _pick_torch(name, params, grads, cfg, evict)
        if tstep is not None:
            contenders["torch"] = tstep
        times = measure(contenders, cfg.samples, cfg.batch_ms / 1e3, evict)
        cpu_wall = cpu_per_wall(contenders["fastopt"], cfg.batch_ms / 1e3 * 4, evict)
    del contenders
    _free(n * itemsize)
    mine = times["fastopt"]
    row = {"optimizer": name, "dtype": dtype, "n": n, "tensors": len(shapes),
           "threads": threads, "cache": "cold" if evict is not None else "warm"}
    for key, ts in times.items():
        entry = _summary(ts)
        passes = impls.TRAFFIC["stream" if key == "stream" else name]
        entry["gbs"] = passes * itemsize * n / (entry["median_ms"] / 1e3) / 1e9
        if key != "fastopt":
            entry["ratio"] = _ratio(ts, mine)
        row[key] = entry
    row["fastopt"]["pct_bandwidth"] = float(np.median(
        np.asarray(times["stream"]) / np.asarray(mine))) * impls.TRAFFIC[name] / 3 * 100
    row["fastopt"]["cpu_per_wall"] = cpu_wall
    if "torch" in row:
        row["torch"]["variant"] = variant
    return row


def run_sparse(rows, dim, batch, threads, cfg):
    """SparseAdam on a float32 embedding table (rows, dim), `batch` lookups per step, against
    torch.optim.SparseAdam (default hyperparameters; the same batches, uncoalesced)."""
    batches = impls.sparse_batches(rows, dim, batch, np.float32)
    table = np.random.default_rng(1).standard_normal((rows, dim), dtype=np.float32)
    with Threads(threads):
        contenders = {"fastopt": impls.make_sparse_adam("fastopt", table, batches)}
        torch_step = impls.make_sparse_adam("torch", table, batches) if cfg.torch else None
        if torch_step is not None:
            contenders["torch"] = torch_step
        del table
        times = measure(contenders, cfg.samples, cfg.batch_ms / 1e3)
    del contenders
    _free(3 * 2 * rows * dim * 4)
    touched = float(np.mean([len(np.unique(i)) for i, _ in batches])) * dim
    row = {"optimizer": "sparse_adam", "dtype": "float32", "rows": rows, "dim": dim,
           "batch": batch, "threads": threads, "touched": touched}
    for key, ts in times.items():
        entry = _summary(ts)
        if key != "fastopt":
            entry["ratio"] = _ratio(ts, times["fastopt"])
        row[key] = entry
    ms = row["fastopt"]["median_ms"]
    row["fastopt"]["gbs"] = impls.SPARSE_TRAFFIC * 4 * touched / (ms / 1e3) / 1e9
    return row


def run_threads(name, n, dtype, cfg, inputs):
    """fastopt alone at 1 and at all threads, alternated on one optimizer."""
    params, grads = inputs.get([(n,)], dtype)
    step = impls.make_fastopt(name, params, grads)

    def at(k):
        def go():
            _kernels.set_num_threads(k)
            step()
        return go

    saved = _kernels.get_num_threads()
    try:
        times = measure({"1": at(1), "all": at(cfg.all_threads)}, cfg.samples, cfg.batch_ms / 1e3)
        cw1 = cpu_per_wall(at(1), cfg.batch_ms / 1e3 * 4)
        cwn = cpu_per_wall(at(cfg.all_threads), cfg.batch_ms / 1e3 * 4)
    finally:
        _kernels.set_num_threads(saved)
    return {"optimizer": name, "dtype": dtype, "n": n, "threads": cfg.all_threads,
            "one": _summary(times["1"]), "all": _summary(times["all"]),
            "speedup": _ratio(times["1"], times["all"]),
            "cpu_per_wall_one": cw1, "cpu_per_wall_all": cwn}


def run_adafactor(shape, threads, cfg, inputs):
    """fastopt.Adafactor vs torch.optim.Adafactor (for-loop and foreach, the faster reported
    as "torch") and the stream kernel, on one float32 matrix, alternated."""
    params, grads = inputs.get([shape], "float32")
    n = math.prod(shape)
    with Threads(threads):
        contenders = {"fastopt": impls.make_fastopt_adafactor(params, grads),
                      "stream": _stream_step(n, "float32")}
        if cfg.torch:
            for variant in impls.adafactor_torch_variants():
                contenders[f"torch_{variant}"] = impls.make_torch_adafactor(params, grads,
                                                                            variant)
        times = measure(contenders, cfg.samples, cfg.batch_ms / 1e3)
    del contenders
    _free(n * 4)
    mine = times["fastopt"]
    row = {"optimizer": "adafactor", "dtype": "float32", "shape": list(shape), "n": n,
           "threads": threads}
    for key, ts in times.items():
        entry = _summary(ts)
        passes = 3 if key == "stream" else impls.ADAFACTOR_TRAFFIC
        entry["gbs"] = passes * 4 * n / (entry["median_ms"] / 1e3) / 1e9
        if key != "fastopt":
            entry["ratio"] = _ratio(ts, mine)
        row[key] = entry
    row["fastopt"]["pct_bandwidth"] = float(np.median(
        np.asarray(times["stream"]) / np.asarray(mine))) * impls.ADAFACTOR_TRAFFIC / 3 * 100
    torches = [k for k in row if k.startswith("torch_")]
    if torches:
        best = min(torches, key=lambda k: row[k]["median_ms"])
        row["torch"] = dict(row[best], variant=best.partition("_")[2])
    return row


def run_crossover(name, n, cfg, inputs):
    """Serial vs parallel (threshold forced to 1) at n float32 elements, alternated."""
    params, grads = inputs.get([(n,)], "float32")
    step = impls.make_fastopt(name, params, grads)
    saved_t, saved_thr = _kernels.get_num_threads(), _kernels.get_parallel_threshold()

    def serial():
        _kernels.set_num_threads(1)
        step()

    def parallel():
        _kernels.set_num_threads(cfg.all_threads)
        step()

    try:
        _kernels.set_parallel_threshold(1)
        times = measure({"serial": serial, "parallel": parallel}, cfg.samples, cfg.batch_ms / 1e3)
    finally:
        _kernels.set_num_threads(saved_t)
        _kernels.set_parallel_threshold(saved_thr)
    return {"optimizer": name, "n": n, "threads": cfg.all_threads,
            "serial_us": float(np.median(times["serial"])) * 1e6,
            "parallel_us": float(np.median(times["parallel"])) * 1e6,
            "speedup": _ratio(times["serial"], times["parallel"])}


def _stream_reference(cfg):
    """Stream kernel GB/s on large arrays at each thread count (the headline bandwidth)."""
    n = max(cfg.sizes)
    out = []
    for dtype in cfg.dtypes:
        step = _stream_step(n, dtype)
        for threads in cfg.threads:
            with Threads(threads):
                ts = measure({"s": step}, cfg.samples, cfg.batch_ms / 1e3)["s"]
            entry = _summary(ts)
            entry.update(dtype=dtype, n=n, threads=threads,
                         gbs=3 * np.dtype(dtype).itemsize * n / (entry["median_ms"] / 1e3) / 1e9)
            out.append(entry)
        del step
        _free(n * np.dtype(dtype).itemsize)
    return out


#: sections measured by a module of their own: section -> module of fastopt, which defines
#: jobs(cfg) (the argument tuples of its rows), describe(args) (a progress label),
#: run(args, cfg, kit) (one row) and table(rows, kit) (its part of the report); `kit` is _Kit
MODULE_SECTIONS = {"muon": "_bench_muon", "lbfgs": "_bench_lbfgs", "states": "_bench_states"}


def _section_module(section):
    return importlib.import_module(f".{MODULE_SECTIONS[section]}", __package__)


def plan(cfg):
    """The list of (section, callable) jobs of a run, in order."""
    jobs = []
    if "sizes" in cfg.sections:
        for dtype in cfg.dtypes:
            for n in cfg.sizes:
                for name in cfg.optimizers:
                    for threads in cfg.threads:
                        jobs.append(("sizes", (name, [(n,)], dtype, threads)))
    if "cold" in cfg.sections:
        for n in cfg.cold_sizes:
            for name in cfg.cold_optimizers:
                jobs.append(("cold", (name, [(n,)], "float32", cfg.all_threads)))
    if "lists" in cfg.sections and cfg.lists:
        for label, shapes in list_cases(cfg.list_scale).items():
            for name in cfg.list_optimizers:
                for threads in cfg.list_threads:
                    jobs.append(("lists", (name, shapes, "float32", threads, label)))
    if "threads" in cfg.sections and cfg.all_threads > 1:
        for n in cfg.thread_sizes:
            for name in cfg.thread_optimizers:
                jobs.append(("threads", (name, n, "float32")))
    if "crossover" in cfg.sections and cfg.all_threads > 1:
        for name in cfg.crossover_optimizers:
            for n in cfg.crossover_sizes:
                jobs.append(("crossover", (name, n)))
    if "sparse" in cfg.sections:
        for threads in cfg.threads:
            jobs.append(("sparse", (*cfg.sparse_shape, threads)))
    if "adafactor" in cfg.sections:
        for threads in cfg.threads:
            jobs.append(("adafactor", (cfg.adafactor_shape, threads)))
    for section in MODULE_SECTIONS:
        if section in cfg.sections:
            jobs += [(section, args) for args in _section_module(section).jobs(cfg)]
    return jobs


class _Lines:
    """Progress as one stderr line per case, where tqdm is missing or stderr is not a terminal."""

    def __init__(self, total):
        self.total, self.done, self.note = total, 0, ""

    def set_postfix_str(self, text):
        self.note = text

    def update(self):
        self.done += 1
        print(f"[{self.done}/{self.total}] {self.note}", file=sys.stderr, flush=True)

    def close(self):
        pass


def _progress(total, enabled):
    """A tqdm bar (optional dependency) on a terminal, else progress lines, or None."""
    if not enabled:
        return None
    if sys.stderr.isatty():
        try:
            from tqdm.auto import tqdm
        except ImportError:
            pass
        else:
            return tqdm(total=total, desc="fastopt bench", unit="case", leave=False)
    return _Lines(total)


def _describe_job(section, args):
    if section in MODULE_SECTIONS:
        return _section_module(section).describe(args)
    if section in ("sizes", "cold", "lists"):
        name, shapes, dtype, threads = args[:4]
        what = f"N={_fmt_n(sum(math.prod(s) for s in shapes))}"
        if section == "lists":
            what = f"{args[4]} {what}"
        return f"{section} {name} {what} {dtype} {threads}t"
    if section == "sparse":
        return f"sparse_adam {_fmt_n(args[0])}x{args[1]} batch {args[2]} {args[3]}t"
    if section == "adafactor":
        return f"adafactor {args[0][0]}x{args[0][1]} float32 {args[1]}t"
    return f"{section} {args[0]} N={_fmt_n(args[1])}"


def run(cfg, progress=True):
    """Run every job of `cfg`; returns the report dict (machine, stream, sections' rows)."""
    report = {"machine": machine_info(), "config": {k: v for k, v in vars(cfg).items()},
              "stream": [], "sizes": [], "cold": [], "lists": [], "threads": [], "crossover": [],
              "sparse": [], "adafactor": [], **{name: [] for name in MODULE_SECTIONS}}
    started = time.perf_counter()
    report["stream"] = _stream_reference(cfg)
    jobs = plan(cfg)
    inputs = Inputs()
    evict = Evictor(cfg.evict_mb) if any(s == "cold" for s, _ in jobs) else None
    bar = _progress(len(jobs), progress)
    spent = report["section_seconds"] = {}
    try:
        for section, args in jobs:
            t_job = time.perf_counter()
            if bar is not None:
                bar.set_postfix_str(_describe_job(section, args))
            if section in ("sizes", "cold"):
                row = run_case(*args, cfg, inputs, evict if section == "cold" else None)
            elif section == "lists":
                name, shapes, dtype, threads, label = args
                row = run_case(name, shapes, dtype, threads, cfg, inputs, flat=True)
                row["list"] = label
                row["label"] = list_label(label, shapes, cfg.list_scale)
            elif section == "threads":
                row = run_threads(*args, cfg, inputs)
            elif section == "sparse":
                row = run_sparse(*args, cfg)
            elif section == "adafactor":
                row = run_adafactor(*args, cfg, inputs)
            elif section in MODULE_SECTIONS:
                row = _section_module(section).run(args, cfg, _Kit)
            else:
                row = run_crossover(*args, cfg, inputs)
            report[section].append(row)
            spent[section] = spent.get(section, 0.0) + time.perf_counter() - t_job
            if bar is not None:
                bar.update()
    finally:
        if bar is not None:
            bar.close()
    report["seconds"] = time.perf_counter() - started
    return report


# -------------------------------------------------------------------------------- report
def _fmt_n(n):
    if n >= 1_000_000 and n % 1_000_000 == 0:
        return f"{n // 1_000_000}M"
    if n >= 1000 and n % 1000 == 0:
        return f"{n // 1000}k"
    if n >= 1_000_000:
        return f"{n / 1e6:.3g}M"
    if n >= 100_000:
        return f"{n / 1e3:.0f}k"
    return str(n)


def _fmt_ms(ms):
    if ms >= 100:
        return f"{ms:.0f}"
    if ms >= 1:
        return f"{ms:.2f}"
    if ms >= 0.01:
        return f"{ms:.3f}"
    return f"{ms:.4f}"


def _table(header, rows):
    widths = [max(len(str(h)), *(len(str(r[i])) for r in rows)) if rows else len(str(h))
              for i, h in enumerate(header)]
    lines = ["  ".join(str(h).rjust(w) for h, w in zip(header, widths)),
             "  ".join("-" * w for w in widths)]
    for r in rows:
        lines.append("  ".join(str(c).rjust(w) for c, w in zip(r, widths)))
    return "\n".join(lines)


def _x(entry):
    return f"{entry['ratio']:.2f}x" if entry else "-"


def _case_rows(rows, with_list=False):
    out = []
    for r in rows:
        f = r["fastopt"]
        torch = r.get("torch")
        cells = [r.get("label", r.get("list", "")) if with_list else _fmt_n(r["n"]),
                 r["optimizer"]]
        if not with_list:
            cells.insert(1, r["dtype"].replace("float", "f"))
        cells += [r["threads"], f"{_fmt_ms(f['median_ms'])} ±{f['spread_pct']:.0f}%",
                  f"{f['gbs']:.1f}", f"{f['pct_bandwidth']:.0f}%"]
        if with_list:
            cells.append(_fmt_ms(r["fastopt_flat"]["median_ms"]))
        cells += [_x(r.get("numpy_best")), _x(r.get("numpy_textbook")),
                  f"{torch['variant']} {_fmt_ms(torch['median_ms'])}" if torch else "-",
                  _x(torch), f"{f['cpu_per_wall']:.2f}"]
        out.append(cells)
    return out


class _Kit:
    """What a section module may use of this one (passed in: the modules sit below
    fastopt.bench in the import graph)."""
    measure = staticmethod(measure)
    threads = Threads
    torch = staticmethod(_torch)
    summary = staticmethod(_summary)
    ratio = staticmethod(_ratio)
    stream_step = staticmethod(_stream_step)
    table = staticmethod(_table)
    fmt_ms = staticmethod(_fmt_ms)
    fmt_n = staticmethod(_fmt_n)


def format_report(report):
    """The human-readable tables of a report (what `fastopt bench` prints)."""
    m = report["machine"]
    parts = [f"fastopt {m['fastopt']} | {m['cpu']} | {m['logical_cpus']} logical CPUs | "
             f"vector ISA: {m['vector_isa']} | state codecs: {m.get('state_codecs', '?')} | "
             f"parallel threshold {m['parallel_threshold']} | "
             f"numpy {m['numpy']} | torch {m['torch'] or 'not installed'}"]
    parts.append("ms: median ms per step (±: inter-quartile range / median); GB/s from the "
                 "minimal traffic; %bw: share of the stream kernel's GB/s in the same samples; "
                 "Nx: other's time / fastopt's time, per sample pair, median; cpu/wall: "
                 "process CPU time per wall time during fastopt steps, from an idle start "
                 "(no thread left spinning by earlier steps).")
    if report["stream"]:
        parts.append("\nUpdate bandwidth (stream kernel b += s*c, largest N):\n" + _table(
            ["dtype", "N", "threads", "ms", "GB/s"],
            [[s["dtype"], _fmt_n(s["n"]), s["threads"], _fmt_ms(s["median_ms"]), f"{s['gbs']:.1f}"]
             for s in report["stream"]]))
    head = ["N", "dtype", "optimizer", "thr", "fastopt ms", "GB/s", "%bw", "vs numpy",
            "vs textbook", "torch ms", "vs torch", "cpu/wall"]
    if report["sizes"]:
        parts.append("\nOne tensor, warm cache:\n" + _table(head, _case_rows(report["sizes"])))
    if report["cold"]:
        parts.append("\nOne tensor, caches evicted before every step:\n"
                     + _table(head, _case_rows(report["cold"])))
    if report["lists"]:
        lhead = ["list", "optimizer", "thr", "fastopt ms", "GB/s", "%bw", "flat ms", "vs numpy",
                 "vs textbook", "torch ms", "vs torch", "cpu/wall"]
        parts.append("\nLists of tensors (float32, warm; flat: the same tensors as views of one "
                     "buffer, fastopt.flatten):\n" + _table(lhead, _case_rows(report["lists"], True)))
    if report["threads"]:
        parts.append("\nfastopt, 1 thread vs all threads (float32, alternated):\n" + _table(
            ["N", "optimizer", "1 thread ms", "all ms", "speedup", "cpu/wall 1", "cpu/wall all"],
            [[_fmt_n(r["n"]), r["optimizer"], _fmt_ms(r["one"]["median_ms"]),
              _fmt_ms(r["all"]["median_ms"]), f"{r['speedup']:.2f}x",
              f"{r['cpu_per_wall_one']:.2f}", f"{r['cpu_per_wall_all']:.2f}"]
             for r in report["threads"]]))
    if report["crossover"]:
        parts.append("\nSerial vs parallel step (float32, threshold forced to 1):\n" + _table(
            ["N", "optimizer", "serial us", "parallel us", "parallel speedup"],
            [[r["n"], r["optimizer"], f"{r['serial_us']:.1f}", f"{r['parallel_us']:.1f}",
              f"{r['speedup']:.2f}x"] for r in report["crossover"]]))
    if report.get("sparse"):
        parts.append("\nSparseAdam on an embedding table (float32, warm; GB/s over the touched "
                     "rows):\n" + _table(
                         ["table", "batch", "thr", "fastopt ms", "GB/s", "torch ms", "vs torch"],
                         [[f"{_fmt_n(r['rows'])}x{r['dim']}", r["batch"], r["threads"],
                           f"{_fmt_ms(r['fastopt']['median_ms'])} ±"
                           f"{r['fastopt']['spread_pct']:.0f}%", f"{r['fastopt']['gbs']:.1f}",
                           _fmt_ms(r["torch"]["median_ms"]) if "torch" in r else "-",
                           _x(r.get("torch"))] for r in report["sparse"]]))
    if report.get("adafactor"):
        parts.append("\nAdafactor, one float32 matrix, warm (GB/s and %bw from reading p and g "
                     "and writing p; torch: its faster variant):\n" + _table(
                         ["shape", "thr", "fastopt ms", "GB/s", "%bw", "torch ms", "vs torch"],
                         [["x".join(map(str, r["shape"])), r["threads"],
                           f"{_fmt_ms(r['fastopt']['median_ms'])} ±{r['fastopt']['spread_pct']:.0f}%",
                           f"{r['fastopt']['gbs']:.1f}", f"{r['fastopt']['pct_bandwidth']:.0f}%",
                           f"{r['torch']['variant']} {_fmt_ms(r['torch']['median_ms'])}"
                           if r.get("torch") else "-", _x(r.get("torch"))]
                          for r in report["adafactor"]]))
    for section in MODULE_SECTIONS:
        if report.get(section):
            parts.append(_section_module(section).table(report[section], _Kit))
    spent = ", ".join(f"{k} {v:.0f} s" for k, v in report.get("section_seconds", {}).items())
    parts.append(f"\n{report.get('seconds', 0):.0f} s ({spent})")
    return "\n".join(parts)


# ----------------------------------------------------------------------------------- CLI
def _int_list(text):
    try:
        return tuple(int(float(x)) for x in text.split(",") if x)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected comma-separated numbers, got {text!r}") from None


def _name_list(choices):
    def parse(text):
        names = tuple(x.strip() for x in text.split(",") if x.strip())
        bad = [x for x in names if x not in choices]
        if bad:
            raise argparse.ArgumentTypeError(f"unknown {bad}; choose from {', '.join(choices)}")
        return names
    return parse


def add_arguments(parser):
    """The options of `fastopt bench` (shared by the `fastopt` command and main())."""
    parser.add_argument("--quick", action="store_true",
                        help="small grid (float32, N=1e4 and 1e6, few samples, the lists' "
                             "tensors 64 times smaller): under a minute")
    parser.add_argument("--json", metavar="PATH",
                        help="also write the full results as JSON to PATH ('-' for stdout)")
    parser.add_argument("--optimizers", type=_name_list(OPTIMIZERS), metavar="NAMES",
                        help=f"comma-separated subset of {', '.join(OPTIMIZERS)} "
                             "(default: all)")
    parser.add_argument("--dtypes", type=_name_list(DTYPES), metavar="DTYPES",
                        help=f"comma-separated subset of {', '.join(DTYPES)} (default: both; "
                             "float32 with --quick)")
    parser.add_argument("--sizes", type=_int_list, metavar="N,...",
                        help="comma-separated N, e.g. 1e3,1e6 (default: "
                             f"{','.join(_fmt_n(n) for n in FULL_SIZES)}; with --quick "
                             f"{','.join(_fmt_n(n) for n in QUICK_SIZES)})")
    parser.add_argument("--threads", type=_int_list, metavar="T,...",
                        help="comma-separated thread counts (default: 1 and all)")
    parser.add_argument("--samples", type=int, help="samples per case (median over them; "
                                                    "default 9, 3 with --quick)")
    parser.add_argument("--batch-ms", type=float, help="target duration of one sample "
                                                       "(default 5, 1 with --quick)")
    parser.add_argument("--sections", type=_name_list(tuple(SECTIONS)), metavar="SECTIONS",
                        help="comma-separated parts to run (default: all): "
                             + "; ".join(f"{k}: {v}" for k, v in SECTIONS.items()))
    parser.add_argument("--no-torch", action="store_true", help="do not compare with torch")
    parser.add_argument("--evict-mb", type=float,
                        help="cache-eviction buffer size (default: twice the last-level cache)")
    parser.add_argument("--no-progress", action="store_true", help="no progress bar")
    return parser


def config_from_args(args):
    return Config(quick=args.quick, optimizers=args.optimizers, dtypes=args.dtypes,
                  sizes=args.sizes, threads=args.threads, samples=args.samples,
                  batch_ms=args.batch_ms, torch=not args.no_torch, evict_mb=args.evict_mb,
                  sections=args.sections)


def run_from_args(args):
    """Entry point of the `bench` subcommand: run, print the tables, write --json."""
    try:
        load_impls()
    except ImportError as e:
        print(f"fastopt bench: {e}", file=sys.stderr)
        return 2
    cfg = config_from_args(args)
    report = run(cfg, progress=not args.no_progress)
    text = format_report(report)
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1, default=str)
        sys.stdout.write("\n")
        print(text, file=sys.stderr)
    else:
        print(text)
        if args.json:
            with open(args.json, "w") as f:
                json.dump(report, f, indent=1, default=str)
    return 0


def main(argv=None):
    """`python -m fastopt.bench [options]`, the same as `fastopt bench [options]`."""
    parser = add_arguments(argparse.ArgumentParser(
        prog="fastopt bench", description=__doc__.split("\n")[0]))
    return run_from_args(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
