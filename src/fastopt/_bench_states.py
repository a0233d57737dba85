"""The state-format section of `fastopt bench`: Adam's step with float32, bfloat16 and int8
state against torch's fused Adam, bitsandbytes' CPU Adam8bit and each format's bandwidth limit.

For one float32 tensor of N elements, every contender is timed alternately
(`fastopt.bench.measure`) at the same thread count:

* ``float32`` / ``bfloat16`` / ``int8``: ``fastopt.Adam(..., state_dtype=...)``; the bytes of
  state per parameter are measured from the state arrays;
* ``stream``: the update-bandwidth yardstick (``b += s * c``, 12 bytes per element), from
  which each format's limit is computed: the bytes it moves per parameter (parameter read and
  written, gradient read: 12; each moment read and written: 4 + 4, 2 + 2 or 1 + 1 + 8/256)
  at the yardstick's rate;
* ``torch``: ``torch.optim.Adam(fused=True)`` (when torch is installed);
* ``bnb``: ``bitsandbytes.optim.Adam8bit`` on the CPU (when installed; never with --quick).
"""
import numpy as np

#: N of the section (--quick: 1e6)
N, QUICK_N = 50_000_000, 1_000_000
FORMATS = ("float32", "bfloat16", "int8")
#: bytes moved per parameter by Adam with each state format
MOVED = {"float32": 12 + 2 * 8, "bfloat16": 12 + 2 * 4, "int8": 12 + 2 * (2 + 8 / 256)}


def jobs(cfg):
    return [(cfg.states_n, threads) for threads in cfg.threads]


def describe(args):
    return f"states adam N={args[0]:.0e} {args[1]}t"


def _bnb_step(w, g):
    """bitsandbytes' CPU Adam8bit step on a copy of w, or None without bitsandbytes."""
    try:
        import bitsandbytes
        import torch
    except Exception:        # bitsandbytes raises more than ImportError without its backends
        return None
    p = torch.nn.Parameter(torch.from_numpy(w.copy()))
    p.grad = torch.from_numpy(g)
    opt = bitsandbytes.optim.Adam8bit([p], lr=1e-4)
    return opt.step


def run(args, cfg, kit):
    """One row: {n, threads, per contender summary (+ bytes per parameter, limit ms, ratio to
    float32 state), stream GB/s}, timed with fastopt.bench's helpers (`kit`)."""
    n, threads = args
    ratio = kit.ratio
    from .optim import Adam
    rng = np.random.default_rng(0)
    g = rng.standard_normal(n, dtype=np.float32) * np.float32(1e-2)
    w = rng.standard_normal(n, dtype=np.float32)
    contenders, state_bytes = {}, {}
    for fmt in FORMATS:
        opt = Adam([w.copy()], lr=1e-4, state_dtype=fmt)
        opt.step([g])
        state_bytes[fmt] = sum(b.nbytes for b in opt.state[0].values()
                               if hasattr(b, "nbytes")) / n
        contenders[fmt] = (lambda o=opt: o.step([g]))
    contenders["stream"] = kit.stream_step(n, "float32")
    torch = kit.torch() if cfg.torch else None
    if torch is not None:
        tw = torch.nn.Parameter(torch.from_numpy(w.copy()))
        tw.grad = torch.from_numpy(g)
        contenders["torch"] = torch.optim.Adam([tw], lr=1e-4, fused=True).step
    bnb = _bnb_step(w, g) if (torch is not None and not cfg.quick) else None
    if bnb is not None:
        bnb()
        contenders["bnb"] = bnb
    with kit.threads(threads):
        times = kit.measure(contenders, max(3, cfg.samples), batch_s=cfg.batch_ms / 1e3)
    row = {"n": n, "threads": threads}
    for name, ts in times.items():
        row[name] = kit.summary(ts)
    stream_s = row["stream"]["median_ms"] / 1e3
    row["stream"]["gbs"] = 12 * n / stream_s / 1e9
    for fmt in FORMATS:
        row[fmt]["state_bytes"] = state_bytes[fmt]
        row[fmt]["limit_ms"] = MOVED[fmt] / 12 * stream_s * 1e3
        row[fmt]["vs_float32"] = ratio(times[fmt], times["float32"])
    for other in ("torch", "bnb"):
        if other in times:
            row[other]["vs_float32"] = ratio(times[other], times["float32"])
            row[other]["over_int8"] = ratio(times[other], times["int8"])
    return row


def table(rows, kit):
    fmt_ms = kit.fmt_ms
    head = ["N", "thr", "state", "ms", "x float32 state", "state B/param", "limit ms",
            "torch fused ms", "bnb Adam8bit ms", "bnb / int8"]
    out = []
    for r in rows:
        for fmt in FORMATS:
            e = r[fmt]
            int8 = fmt == "int8"
            out.append([f"{r['n']:.0e}", r["threads"], fmt,
                        f"{fmt_ms(e['median_ms'])} ±{e['spread_pct']:.0f}%",
                        f"{e['vs_float32']:.2f}", f"{e['state_bytes']:.3f}",
                        fmt_ms(e["limit_ms"]),
                        fmt_ms(r["torch"]["median_ms"]) if "torch" in r and int8 else "",
                        fmt_ms(r["bnb"]["median_ms"]) if "bnb" in r and int8 else "",
                        f"{r['bnb']['over_int8']:.1f}x" if "bnb" in r and int8 else ""])
    return ("\nAdam by state format, one float32 tensor, warm (x float32 state: time over the "
            "float32-state step's, per sample pair; limit: the format's bytes per parameter at "
            "the stream kernel's GB/s in the same samples):\n" + kit.table(head, out))
