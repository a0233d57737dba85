"""The int8 map tables: a process keeps the tables of up to 16 distinct maps (csrc/qstate.c);
a step whose map the full cache cannot hold prepares its own table for the step, with the same
results (before: every such step failed with an internal error once 16 other maps had been
decoded, e.g. by loading int8 checkpoints with maps of their own)."""
import subprocess
import sys
import textwrap

CHILD = textwrap.dedent('''
    import hashlib, sys
    import numpy as np, fastopt as fo
    from fastopt.state_format import Blockwise8, dynamic_map
    n = 5000
    if sys.argv[1] == "fill":       # decode int8 state of 20 other maps: the cache fills up
        base = dynamic_map(True).astype(np.float64)
        rng = np.random.default_rng(0)
        p = np.zeros(n, np.float32)
        f32 = fo.Adam([p], lr=1e-3)
        f32.step([np.ones(n, np.float32)])
        for k in range(20):
            q = np.sort(np.clip(base * (1 - 1e-3 * (k + 1)), -1, 1)).astype(np.float32)
            sd = f32.state_dict()
            blocks = -(-n // 256)
            for key in ("exp_avg", "exp_avg_sq"):
                sd["state"][0][key] = Blockwise8(rng.integers(0, 256, n).astype(np.uint8),
                                                 np.ones(blocks, np.float32), q)
            f32.load_state_dict(sd)
    rng = np.random.default_rng(1)
    w = rng.standard_normal(n).astype(np.float32)
    opt = fo.AdamW([w], lr=1e-2, state_dtype="int8")
    for _ in range(3):
        opt.step([rng.standard_normal(n).astype(np.float32)])
    st = opt.state_dict()["state"][0]
    h = hashlib.sha256(w.tobytes())
    for key in ("exp_avg", "exp_avg_sq"):
        h.update(np.asarray(st[key].codes).tobytes())
        h.update(np.asarray(st[key].absmax).tobytes())
    print(h.hexdigest())
''')


def run(mode):
    out = subprocess.run([sys.executable, "-c", CHILD, mode], capture_output=True, text=True)
    assert out.returncode == 0, out.stderr
    return out.stdout.strip().splitlines()[-1]


def test_a_step_with_the_map_cache_full_gives_the_same_bits():
    assert run("fill") == run("clean")
