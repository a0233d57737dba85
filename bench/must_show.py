"""Check a `fastopt bench --json` report against the speed targets (a script, not a test).

    PYTHONPATH=src python -m fastopt bench --json run.json
    python bench/must_show.py run.json [--deepspeed ds.json]

Prints one line per target with the measured figures and PASS/MISS. The targets:
every optimizer at N=5e7 float32 with all threads at >= 90% of the stream kernel's bandwidth
and >= 1.1x torch's fused step (Adam, AdamW, SGD, Adagrad) or >= 3x torch's best (RMSprop,
Adadelta, Adamax); the ResNet-50 list >= 1.2x torch fused (all threads) and 1000 x 1000
>= 4x; Adam N=1e4 `opt.step` under 15 us; >= 10x textbook NumPy for N >= 1e6; all threads
faster than one at N >= 1e6; not slower than DeepSpeedCPUAdam at N=1e7 and 5e7
(bench/deepspeed_adam.py --json).
"""
import argparse
import json
import sys

FUSED = ("adam", "adamw", "sgd", "adagrad")


def _line(ok, text):
    return f"{'PASS' if ok else 'MISS'}  {text}"


def check(report, deepspeed=None):
    lines = []
    all_threads = report["machine"]["max_threads"]
    big = [r for r in report["sizes"] if r["n"] == 50_000_000 and r["dtype"] == "float32"
           and r["threads"] == all_threads]
    for r in big:
        f, t = r["fastopt"], r.get("torch")
        need = 1.1 if r["optimizer"] in FUSED else 3.0
        lines.append(_line(f["pct_bandwidth"] >= 90,
                           f"{r['optimizer']} N=5e7 f32 {all_threads} threads: {f['median_ms']:.1f} ms, "
                           f"{f['pct_bandwidth']:.0f}% of bandwidth (>= 90%)"))
        if t:
            lines.append(_line(t["ratio"] >= need,
                               f"{r['optimizer']} N=5e7 vs torch {t['variant']}: {t['ratio']:.2f}x "
                               f"(>= {need}x)"))
    for r in report["lists"]:
        if r["optimizer"] != "adam" or "torch" not in r:
            continue
        need = 1.2 if r["list"] == "resnet50" else 4.0
        if r["list"] == "resnet50" and r["threads"] != all_threads:
            continue
        lines.append(_line(r["torch"]["ratio"] >= need,
                           f"adam {r['list']} {r['threads']} thread(s) vs torch {r['torch']['variant']}: "
                           f"{r['torch']['ratio']:.2f}x (>= {need}x); flat {r['fastopt_flat']['median_ms']:.2f} ms "
                           f"vs {r['fastopt']['median_ms']:.2f} ms"))
    for r in report["sizes"]:
        if r["n"] == 10_000 and r["threads"] == 1 and r["dtype"] == "float32":
            us = r["fastopt"]["median_ms"] * 1e3
            lines.append(_line(us < 15, f"{r['optimizer']} N=1e4 opt.step, 1 thread: {us:.1f} us (< 15 us)"))
    worst = {}
    for r in report["sizes"] + report["cold"]:
        if r["n"] >= 1_000_000:
            x = r["numpy_textbook"]["ratio"]
            key = r["optimizer"]
            if key not in worst or x < worst[key][0]:
                worst[key] = (x, f"N={r['n']:.0e} {r['dtype']} {r['threads']}t {r['cache']}")
    for name, (x, where) in worst.items():
        lines.append(_line(x >= 10, f"{name} vs textbook NumPy, N >= 1e6, lowest: {x:.1f}x at {where} (>= 10x)"))
    for r in report["threads"]:
        lines.append(_line(r["speedup"] > 1,
                           f"{r['optimizer']} N={r['n']:.0e}: {r['threads']} threads / 1 thread speedup "
                           f"{r['speedup']:.2f}x, cpu/wall {r['cpu_per_wall_all']:.2f} "
                           f"(1 thread: {r['cpu_per_wall_one']:.2f})"))
    if deepspeed:
        for r in deepspeed["rows"]:
            lines.append(_line(r["deepspeed"]["ratio"] >= 1.0,
                               f"adam N={r['n']:.0e} {r['threads']}t {r['cache']} vs DeepSpeedCPUAdam: "
                               f"{r['deepspeed']['ratio']:.2f}x (>= 1x)"))
    return lines


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("report")
    parser.add_argument("--deepspeed")
    args = parser.parse_args(argv)
    with open(args.report) as f:
        report = json.load(f)
    ds = None
    if args.deepspeed:
        with open(args.deepspeed) as f:
            ds = json.load(f)
    lines = check(report, ds)
    print("\n".join(lines))
    print(f"{sum(l.startswith('PASS') for l in lines)} of {len(lines)} targets met")
    return 0


if __name__ == "__main__":
    sys.exit(main())
