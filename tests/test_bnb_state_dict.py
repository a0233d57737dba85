"""fastopt.torch's int8 AdamW and bitsandbytes' AdamW8bit state_dicts, both ways.

- import: a bitsandbytes state_dict (recorded in tests/golden/bnb_adamw8bit_state_dict.npz by
  make_bnb_state_dict_golden.py, and live when bitsandbytes is installed) loads into
  ``fastopt.torch.AdamW(state_dtype="int8")`` with codes, absmax and maps as they are; the next
  step from the same state and gradient gives the codes of bitsandbytes' nearest-code rule on
  >= 99.9% of elements, never more than one apart (as tests/test_state_dtype_bnb.py compares),
  and bitsandbytes' absmax and parameters;
- export: ``bitsandbytes_state_dict()`` loads into bitsandbytes' AdamW8bit (live), which
  continues from it: its next step against the nearest-code rule and fastopt's step.
"""
import copy
import os
import sys

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt.torch as ft  # noqa: E402

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path.insert(0, os.path.join(HERE, "golden"))
from bnb_state_dict_problem import (HYPER, SHAPES, STEPS, nearest_next, problem,  # noqa: E402
                                    run_bnb, unflatten)

GOLDEN = os.path.join(HERE, "golden", "bnb_adamw8bit_state_dict.npz")
_LIVE = {}


def _bnb():
    try:
        import bitsandbytes
    except Exception as e:      # not installed (or no usable backend)
        pytest.skip(f"bitsandbytes is not available ({type(e).__name__}: {e}); the golden "
                    "file keeps the import checked")
    return bitsandbytes


def bnb_results(source):
    if source == "golden":
        with np.load(GOLDEN) as z:
            return {k: z[k] for k in z.files}
    _bnb()
    if not _LIVE:
        _LIVE.update(run_bnb())
    return _LIVE


def codes_agree(mine, theirs, what):
    d = np.abs(np.asarray(mine).reshape(-1).astype(np.int64)
               - np.asarray(theirs).reshape(-1).astype(np.int64))
    assert d.max() <= 1, f"{what}: codes {d.max()} apart"
    assert (d == 0).mean() >= 0.999, f"{what}: {(d != 0).mean():.3%} of codes differ"
    return (d == 0).mean()


def near_native(mine, native):
    """bitsandbytes' native CPU quantizer (0.50.2) is not nearest: codes near it."""
    d = np.abs(np.asarray(mine).astype(np.int64) - np.asarray(native).astype(np.int64))
    assert (d == 0).mean() > 0.75 and d.max() <= 8


@pytest.mark.parametrize("source", ["golden", "live"])
def test_import_bitsandbytes_state_dict(source):
    r = bnb_results(source)
    sd = unflatten(r)
    params = [torch.tensor(r[f"start_p{i}"]) for i in range(len(SHAPES))]
    opt = ft.AdamW(params, lr=HYPER["lr"], state_dtype="int8")
    opt.load_state_dict(sd)
    group = opt.param_groups[0]
    assert group["weight_decay"] == HYPER["weight_decay"] and "alpha" not in group
    st = opt.state[params[0]]
    for k, name in (("1", "exp_avg"), ("2", "exp_avg_sq")):      # taken as they are
        np.testing.assert_array_equal(st[name].numpy(), r[f"s0_state{k}"])
        np.testing.assert_array_equal(st[name + "_absmax"].numpy(), r[f"s0_absmax{k}"])
        np.testing.assert_array_equal(st[name + "_qmap"].numpy(), r[f"s0_qmap{k}"])
    assert float(st["step"]) == STEPS
    small = opt.state[params[1]]
    np.testing.assert_array_equal(small["exp_avg"].numpy(), r["s1_state1"])
    for i, p in enumerate(params):
        p.grad = torch.tensor(r[f"g_next{i}"])
    opt.step()
    codes_agree(st["exp_avg"].numpy(), r["ref_state1"], "exp_avg")
    codes_agree(st["exp_avg_sq"].numpy(), r["ref_state2"], "exp_avg_sq")
    near_native(st["exp_avg"].numpy(), r["end_state1"])
    near_native(st["exp_avg_sq"].numpy(), r["end_state2"])
    np.testing.assert_allclose(st["exp_avg_absmax"].numpy(), r["end_absmax1"], rtol=1e-5)
    np.testing.assert_allclose(st["exp_avg_sq_absmax"].numpy(), r["end_absmax2"], rtol=1e-5)
    for i, p in enumerate(params):
        np.testing.assert_allclose(p.numpy(), r[f"end_p{i}"], rtol=1e-6, atol=1e-7)
    np.testing.assert_allclose(small["exp_avg"].numpy(), r["end_small_state1"], rtol=1e-5,
                               atol=1e-9)
    np.testing.assert_allclose(small["exp_avg_sq"].numpy(), r["end_small_state2"], rtol=1e-5)


def test_bitsandbytes_weight_decay_is_decoupled():
    """bitsandbytes applies weight decay as AdamW in Adam8bit too: into fastopt.torch.Adam a
    nonzero weight_decay is refused (AdamW takes it), nothing loaded."""
    with np.load(GOLDEN) as z:
        sd = unflatten({k: z[k] for k in z.files})
    params = [torch.zeros(s) for s in SHAPES]
    opt = ft.Adam(params, state_dtype="int8")
    with pytest.raises(ValueError, match="weight_decay"):
        opt.load_state_dict(sd)
    assert not opt.state
    sd["param_groups"][0]["weight_decay"] = 0.0
    opt.load_state_dict(sd)
    assert opt.state[params[0]]["exp_avg"].dtype == torch.uint8
    sd["param_groups"][0]["alpha"] = 5.0                  # AdEMAMix
    with pytest.raises(ValueError, match="alpha"):
        ft.Adam([torch.zeros(s) for s in SHAPES], state_dtype="int8").load_state_dict(sd)
    with pytest.raises(TypeError, match="Adam and AdamW"):
        ft.SGD([torch.zeros(s) for s in SHAPES], lr=0.1, momentum=0.9,
               state_dtype="int8").load_state_dict(sd)


def _fastopt_after(steps):
    params, grads = problem()
    ts = [torch.tensor(p) for p in params]
    opt = ft.AdamW(ts, **HYPER, state_dtype="int8")
    for k in range(steps):
        for t, g in zip(ts, grads[k]):
            t.grad = torch.tensor(g)
        opt.step()
    return ts, opt, grads


def test_export_layout():
    ts, opt, _ = _fastopt_after(STEPS)
    sd = opt.bitsandbytes_state_dict()
    big, small = sd["state"][0], sd["state"][1]
    assert big["step"] == STEPS and isinstance(big["step"], int)
    q = big["__bnb_optimizer_quant_state__"]
    assert sorted(q) == ["absmax1", "absmax2", "qmap1", "qmap2", "state1", "state2"]
    assert q["state1"].dtype == torch.uint8 and q["absmax1"].dtype == torch.float32
    assert small["__bnb_optimizer_quant_state__"]["state1"].dtype == torch.float32
    g = sd["param_groups"][0]
    assert g["alpha"] == 0.0 and g["t_alpha"] is None and g["betas"] == HYPER["betas"]
    # it is a copy: stepping does not change it
    before = q["state1"].clone()
    for t in ts:
        t.grad = torch.ones_like(t)
    opt.step()
    assert torch.equal(q["state1"], before)
    with pytest.raises(ValueError, match="weight_decay"):
        ft.Adam([torch.zeros(5000)], weight_decay=0.1,
                state_dtype="int8").bitsandbytes_state_dict()


def test_bitsandbytes_continues_from_export():
    bnb = _bnb()
    ts, opt, grads = _fastopt_after(STEPS)
    sd = copy.deepcopy(opt.bitsandbytes_state_dict())
    theirs = [t.detach().clone() for t in ts]
    other = bnb.optim.AdamW8bit(theirs, **HYPER)
    other.load_state_dict(sd)
    st = other.state[theirs[0]]
    mine = opt.state[ts[0]]
    np.testing.assert_array_equal(st["state1"].numpy(), mine["exp_avg"].numpy())
    np.testing.assert_array_equal(st["absmax2"].numpy(), mine["exp_avg_sq_absmax"].numpy())
    assert st["step"] == STEPS
    ref = {k: nearest_next(mine[name].numpy(), mine[name + "_absmax"].numpy(),
                           mine[name + "_qmap"].numpy(), grads[STEPS][0], beta, power)[0]
           for k, name, beta, power in (("1", "exp_avg", HYPER["betas"][0], 1),
                                        ("2", "exp_avg_sq", HYPER["betas"][1], 2))}
    for a, b, g in zip(ts, theirs, grads[STEPS]):
        a.grad, b.grad = torch.tensor(g), torch.tensor(g)
    opt.step()
    other.step()
    assert st["step"] == STEPS + 1
    codes_agree(mine["exp_avg"].numpy(), ref["1"], "fastopt exp_avg")
    codes_agree(mine["exp_avg_sq"].numpy(), ref["2"], "fastopt exp_avg_sq")
    near_native(mine["exp_avg"].numpy(), st["state1"].numpy())
    near_native(mine["exp_avg_sq"].numpy(), st["state2"].numpy())
    np.testing.assert_allclose(mine["exp_avg_absmax"].numpy(), st["absmax1"].numpy(), rtol=1e-5)
    for a, b in zip(ts, theirs):
        np.testing.assert_allclose(a.numpy(), b.numpy(), rtol=1e-6, atol=1e-7)
    small = other.state[theirs[1]]
    np.testing.assert_allclose(opt.state[ts[1]]["exp_avg"].numpy(), small["state1"].numpy(),
                               rtol=1e-5, atol=1e-9)
