"""Fuzz driver of fastopt.LBFGS (see fuzz_optim.py): arguments accepted or refused by the
rules, a refused step changes nothing, an accepted one follows torch's bookkeeping."""
import math

import numpy as np
from hypothesis import strategies as st

from fastopt.optim import LBFGS
from fuzz_second_order import _params
from fuzzing import ERRORS, disjoint, entry_point, layout_ok, like, overlapping, param_ok


def _count_ok(v, low=1):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_)) and v >= low


@entry_point("LBFGS")
def fuzz_lbfgs(ex, _):
    """optim.LBFGS: one group of one dtype; step(closure) with (loss, grads) from the closure."""
    groups, flat = _params(ex)
    hyper = dict(lr=ex.pick("lr", [1.0, 0.5, 0.1], [-0.1, float("nan"), "1"]),
                 max_iter=ex.pick("max_iter", [1, 3, 20], [0, 2.0, True]),
                 max_eval=ex.pick("max_eval", [None, 2, 30], [0, 1.5]),
                 history_size=ex.pick("history_size", [1, 3, 100], [0, -2, 2.5]),
                 tolerance_grad=ex.pick("tolerance_grad", [1e-7, 0.0], [-1.0]),
                 line_search_fn=ex.pick("line_search_fn", [None, "strong_wolfe"],
                                        ["armijo", 1]))
    h = hyper
    valid = (isinstance(h["lr"], float) and h["lr"] >= 0 and _count_ok(h["max_iter"])
             and (h["max_eval"] is None or _count_ok(h["max_eval"]))
             and _count_ok(h["history_size"]) and h["tolerance_grad"] >= 0
             and h["line_search_fn"] in (None, "strong_wolfe") and len(groups) == 1
             and len({p.dtype for p in flat}) == 1
             and all(param_ok(p) for p in flat) and disjoint(flat))
    spec = [{"params": g} for g in groups] if len(groups) > 1 else groups[0]
    try:
        opt = LBFGS(spec, **hyper)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    c = [np.linspace(1.0, 3.0, p.size).reshape(p.shape).astype(p.dtype) for p in flat]
    for _ in range(ex.draw(st.integers(1, 3), "steps")):
        bad = ex.chance(15, "bad closure")
        grads = [ex.array(p.shape, p.dtype, "grad", targets=flat) for p in flat] if bad else None
        ok = not bad or (all(layout_ok(g) and like(g, p) for g, p in zip(grads, flat))
                         and not any(overlapping(g, p) for g in grads for p in flat))

        def closure():
            if grads is not None:
                return 0.0, grads
            g = [np.asarray(ci * p, p.dtype) for ci, p in zip(c, flat)]   # 0-d: an array
            return 0.5 * float(sum(np.dot(gi.reshape(-1), p.reshape(-1))
                                   for gi, p in zip(g, flat))), g
        snap = ex.snapshot()
        n_iter = opt.state.get(0, {}).get("n_iter", 0)
        f0 = closure()[0] if not bad else 0.0
        try:
            loss = opt.step(closure)
        except ERRORS as err:
            assert not ok, f"step rejected a valid closure: {err!r}"
            assert not ex.changed_bytes(snap)
            continue
        assert ok, "step accepted invalid gradients"
        if bad:
            return                          # arbitrary gradients: no property to check
        assert loss == f0 or (math.isnan(loss) and math.isnan(f0))
        st0 = opt.state[0]
        assert st0["n_iter"] >= n_iter and st0["func_evals"] >= 1
        if st0["n_iter"] > n_iter and h["line_search_fn"] == "strong_wolfe" \
                and all(np.isfinite(p).all() for p in flat) and np.isfinite(f0):
            assert closure()[0] <= f0 * (1 + 1e-6) + 1e-30, "the line search went uphill"
