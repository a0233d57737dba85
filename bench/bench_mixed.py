import numpy as np, time, statistics, ml_dtypes, fastopt as fo
from fastopt.mixed import MixedPrecision
fo.set_num_threads(2)
n = 25_557_032
rng = np.random.default_rng(0)
w32 = (0.02 * rng.standard_normal(n)).astype(np.float32); g32 = (1e-3 * rng.standard_normal(n)).astype(np.float32)
wbf = w32.astype(ml_dtypes.bfloat16); gbf = g32.astype(ml_dtypes.bfloat16)
wh = w32.astype(np.float16); gh = g32.astype(np.float16)
runs = {
 "fo.Adam float32": (fo.Adam([w32.copy()], lr=1e-3), [g32]),
 "MixedPrecision Adam bf16 + master": (MixedPrecision(fo.Adam, [wbf.copy()], lr=1e-3), [gbf]),
 "MixedPrecision Adam fp16 + master, S=1024": (MixedPrecision(fo.Adam, [wh.copy()], lr=1e-3, loss_scale=1024.0), [gh]),
 "MixedPrecision Adam bf16, SR, no master": (MixedPrecision(fo.Adam, [wbf.copy()], lr=1e-3, master_weights=False, rounding="stochastic"), [gbf]),
}
for o, g in runs.values(): o.step(g); o.step(g)
t = {k: [] for k in runs}
for r in range(9):
    for k, (o, g) in runs.items():
        t0 = time.perf_counter(); o.step(g); t[k].append(time.perf_counter() - t0)
for k, v in t.items(): print(f"{k:45s} median {1e3*statistics.median(v):7.1f} ms  min {1e3*min(v):7.1f} ms")
