"""The Muon section of `fastopt bench`: the step against the BLAS gemm rate and torch's Muon.

For one m-by-n float32 parameter and an iteration dtype (None: the bfloat16 emulation, or
"float32"), three contenders are timed alternately (`fastopt.bench.measure`):

* ``fastopt``: ``fastopt.Muon.step`` (the whole call: checks, momentum pass, the iteration,
  the update);
* ``gemm``: the iteration's gemm calls only, same BLAS (scipy's sgemm through
  `fastopt._muon.gemm_only`), same shapes and flags, nothing else: the yardstick. ``%gemm``
  is its time over the step's, i.e. the step's rate in the gemm flops
  (``ns_steps (4 k^2 l + 2 k^3)``, k = min(m, n), l = max(m, n)) as a share of the bare gemm
  rate;
* ``torch``: ``torch.optim.Muon.step`` on a tensor of the same values (when torch is
  installed), at the same thread count.

BLAS threads are set with threadpoolctl when it is installed (fastopt._bench_blas; else the
BLAS default).
"""
import contextlib

import numpy as np

from . import _bench_blas

QUICK_SHAPES = ((256, 512),)
FULL_SHAPES = ((512, 512), (512, 2048), (2048, 512), (1024, 1024))
NS_DTYPES = (None, "float32")


def jobs(cfg):
    return [(tuple(shape), ns_dtype, threads) for shape in cfg.muon_shapes
            for ns_dtype in NS_DTYPES for threads in cfg.threads]


def describe(args):
    (m, n), ns_dtype, threads = args
    return f"muon {m}x{n} {ns_dtype or 'bfloat16'} {threads}t"


def run(args, cfg, kit):
    """One row: {shape, ns_dtype, threads, fastopt/gemm/torch summaries, pct_gemm, ratios},
    timed with fastopt.bench's helpers (`kit`)."""
    shape, ns_dtype, threads = args
    measure, threads_ctx, summary, ratio = kit.measure, kit.threads, kit.summary, kit.ratio
    from . import _muon
    from .optim.muon import Muon
    m, n = shape
    rng = np.random.default_rng(0)
    W = rng.standard_normal(shape).astype(np.float32) * 0.02
    G = rng.standard_normal(shape).astype(np.float32)
    opt = Muon([W], lr=1e-4, weight_decay=0.0, ns_dtype=ns_dtype)
    k = min(m, n)
    X, Y = np.ones(shape, np.float32) / max(m, n), np.empty(shape, np.float32)
    A, B = np.empty((k, k), np.float32), np.zeros((k, k), np.float32)
    steps = opt.param_groups[0]["ns_steps"]
    contenders = {"fastopt": lambda: opt.step([G]),
                  "gemm": lambda: _muon.gemm_only(X, Y, A, B, steps)}
    torch = kit.torch() if cfg.torch else None
    if torch is not None:
        Wt = torch.nn.Parameter(torch.from_numpy(W.copy()))
        Wt.grad = torch.from_numpy(G.copy())
        topt = torch.optim.Muon([Wt], lr=1e-4, weight_decay=0.0)
        contenders["torch"] = topt.step
    with threads_ctx(threads), _bench_blas.limit(threads) or contextlib.nullcontext():
        times = measure(contenders, max(3, cfg.samples), batch_s=cfg.batch_ms / 1e3)
    flops = _muon.flops(m, n, steps)
    row = {"shape": list(shape), "ns_dtype": ns_dtype or "bfloat16", "threads": threads,
           "flops": flops}
    for name, ts in times.items():
        row[name] = summary(ts)
        row[name]["gflops"] = flops / (row[name]["median_ms"] / 1e3) / 1e9
    row["pct_gemm"] = 100 * ratio(times["gemm"], times["fastopt"])
    if "torch" in times:
        row["torch"]["ratio"] = ratio(times["torch"], times["fastopt"])
    return row


def table(rows, kit):
    fmt_ms = kit.fmt_ms
    head = ["shape", "ns_dtype", "thr", "fastopt ms", "GFLOP/s", "gemm ms", "gemm GFLOP/s",
            "%gemm", "torch ms", "vs torch"]
    out = []
    for r in rows:
        t = r.get("torch")
        out.append([f"{r['shape'][0]}x{r['shape'][1]}", r["ns_dtype"], r["threads"],
                    f"{fmt_ms(r['fastopt']['median_ms'])} ±{r['fastopt']['spread_pct']:.0f}%",
                    f"{r['fastopt']['gflops']:.1f}", fmt_ms(r["gemm"]["median_ms"]),
                    f"{r['gemm']['gflops']:.1f}", f"{r['pct_gemm']:.0f}%",
                    fmt_ms(t["median_ms"]) if t else "-", f"{t['ratio']:.2f}x" if t else "-"])
    return ("\nMuon step, float32 parameter (gemm: the Newton-Schulz gemm calls alone, same "
            "BLAS; %gemm: gemm time / step time; vs torch: torch.optim.Muon's time / "
            "fastopt's):\n" + kit.table(head, out))
