"""fastopt's int8 Adam against bitsandbytes' blockwise CPU Adam8bit: the maps, one step's codes
from the same state and gradient (>= 99.9% equal, never more than one code apart) and a
200-step trajectory on a problem whose gradients depend on the parameters (it follows
bitsandbytes' far more closely than either follows float32 Adam). Against the recorded
golden file always (tests/golden/bnb_adam8bit.npz, recorder make_bnb_golden.py), and live
when bitsandbytes is installed.
"""
import os
import sys

import numpy as np
import pytest

import fastopt as fo
from fastopt.state_format import dynamic_map

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "golden"))
from bnb_problem import (HYPER, STEPS, least_squares, ls_grad, ls_loss,  # noqa: E402
                         one_step_problem, run_bnb)

GOLDEN = os.path.join(HERE, "golden", "bnb_adam8bit.npz")
_LIVE = {}


def bnb_results(source):
    if source == "golden":
        with np.load(GOLDEN) as z:
            return {k: z[k] for k in z.files}
    try:
        import bitsandbytes  # noqa: F401
    except Exception as e:      # not installed (or no usable backend)
        pytest.skip(f"bitsandbytes is not available ({type(e).__name__}: {e}); the golden "
                    "file keeps the comparison")
    if not _LIVE:
        _LIVE.update(run_bnb())
    return _LIVE


SOURCES = ["golden", "live"]


@pytest.mark.parametrize("source", SOURCES)
def test_maps_are_bitsandbytes(source):
    r = bnb_results(source)
    np.testing.assert_array_equal(dynamic_map(True), r["qmap1"])
    np.testing.assert_array_equal(dynamic_map(False), r["qmap2"])


def codes_agree(mine, theirs, what):
    d = np.abs(mine.reshape(-1).astype(np.int64) - theirs.reshape(-1).astype(np.int64))
    assert d.max() <= 1, f"{what}: codes {d.max()} apart"
    assert (d == 0).mean() >= 0.999, f"{what}: {(d != 0).mean():.3%} of codes differ"
    return (d == 0).mean()


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("source", SOURCES)
def test_one_step_gives_bitsandbytes_codes(source, threads):
    r = bnb_results(source)
    p, g1, g2 = one_step_problem()
    opt = fo.Adam([p], lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"],
                  state_dtype="int8")
    opt.step([g1])                                  # allocates the state; step 1
    p[...] = r["start_p"]
    m, v = opt.state[0]["exp_avg"], opt.state[0]["exp_avg_sq"]
    m.codes[...] = r["start_state1"]
    m.absmax[...] = r["start_absmax1"]
    v.codes[...] = r["start_state2"]
    v.absmax[...] = r["start_absmax2"]
    fo.set_num_threads(threads)
    try:
        opt.step([g2])
    finally:
        fo.set_num_threads(0)
    # the codes of bitsandbytes' nearest-code quantizer (its default backend, the rounding
    # of its CUDA kernel and of the paper) for the same update
    codes_agree(m.codes, r["ref_state1"], "exp_avg")
    codes_agree(v.codes, r["ref_state2"], "exp_avg_sq")
    # its native CPU quantizer (0.50.2) is not nearest: the same absmax, codes near
    for mine, cpu in ((m.codes, r["end_state1"]), (v.codes, r["end_state2"])):
        d = np.abs(mine.astype(np.int64) - cpu.astype(np.int64))
        assert (d == 0).mean() > 0.75 and d.max() <= 8
    np.testing.assert_allclose(m.absmax, r["end_absmax1"], rtol=1e-5)
    np.testing.assert_allclose(v.absmax, r["end_absmax2"], rtol=1e-5)
    np.testing.assert_allclose(p, r["end_p"], rtol=1e-6, atol=1e-7)


def fastopt_trajectory(state_dtype):
    a, b, p, noise = least_squares()
    opt = fo.Adam([p], lr=HYPER["lr"], betas=HYPER["betas"], eps=HYPER["eps"],
                  state_dtype=state_dtype)
    losses = []
    for k in range(STEPS):
        opt.step([ls_grad(a, b, p, noise[k])])
        losses.append(ls_loss(a, b, p))
    return p, np.array(losses)


@pytest.mark.parametrize("source", SOURCES)
def test_trajectory_follows_bitsandbytes(source):
    r = bnb_results(source)
    p8, loss8 = fastopt_trajectory("int8")
    p32, loss32 = fastopt_trajectory("float32")
    ours_theirs = np.linalg.norm(p8 - r["traj_p"])
    to_f32 = min(np.linalg.norm(p8 - p32), np.linalg.norm(r["traj_p"] - p32))
    # bitsandbytes' CPU codes are not nearest (see above): closer to it than to float32 Adam
    assert ours_theirs < 0.5 * to_f32, (ours_theirs, to_f32)
    np.testing.assert_allclose(loss8, r["traj_loss"], rtol=2e-2)
    # and the same loss as float32 Adam
    assert abs(loss8[-1] - loss32[-1]) <= 0.02 * loss32[-1]
