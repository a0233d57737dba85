"""Fuzz drivers of Adafactor: the class and the functional form (see fuzz_optim.py).

The reference is tests/adafactor_reference.py (float64, from the equations). Adafactor mixes
every element of a tensor (row and column means, two norms), so one NaN, Inf, huge or
subnormal input moves the whole tensor: such examples are checked for acceptance, dtypes and
"nothing changed on error" only; examples of moderate values are compared with the
reference (elements non-finite in the reference, e.g. 0/0 with eps=(0, 0), for finiteness).
"""
import math

import numpy as np
from hypothesis import strategies as st

from adafactor_reference import AdafactorReference, state_shapes
from fastopt import functional as F
from fastopt.optim import Adafactor
from fuzzing import ERRORS, checked_step, HUGE, Masks, assert_close, disjoint, entry_point, layout_ok, like, \
    overlapping, param_ok

_SHAPES = [(0,), (1,), (5,), (), (2, 3), (3, 1), (1, 4), (2, 2, 3), (0, 3)]


def _real(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v)


def _draw_hyper(ex):
    return dict(lr=ex.pick("lr", [1e-2, 0.3, 0.0], [-0.1, float("nan"), "x"]),
                beta2_decay=ex.pick("beta2_decay", [-0.8, -0.5, 0.0], [0.5, float("inf")]),
                eps=ex.pick("eps", [(None, 1e-3), (1e-3, 1e-2), (None, 0.0)],
                            [(-1.0, 1e-3), (None, -1.0), 1e-3, (None,)]),
                d=ex.pick("d", [1.0, 1.5], [0.5, float("nan")]),
                weight_decay=ex.pick("weight_decay", [0.0, 0.1], [-0.1]),
                maximize=ex.pick("maximize", [False, True], [1, None]))


def _valid(h):
    """Whether hyperparameters `h` are valid (torch's ranges, fastopt's types)."""
    eps = h["eps"]
    return (_real(h["lr"]) and h["lr"] >= 0 and _real(h["beta2_decay"])
            and h["beta2_decay"] <= 0 and isinstance(eps, tuple) and len(eps) == 2
            and (eps[0] is None or (_real(eps[0]) and eps[0] >= 0)) and _real(eps[1])
            and eps[1] >= 0 and _real(h["d"]) and h["d"] >= 1 and _real(h["weight_decay"])
            and h["weight_decay"] >= 0 and isinstance(h["maximize"], bool))


def _hyper(ex):
    h = _draw_hyper(ex)
    return h, _valid(h)


def _moderate(arrays):
    for a in arrays:
        x = np.asarray(a, np.float64)
        m = Masks(x)
        if m.nonfinite.any() or m.huge.any() or (x.size and np.abs(x).max() > HUGE / 1e3):
            return False
    return True


def _compare(actual, expected, before, what):
    masks = Masks(before)
    masks.add(expected)
    assert_close(actual, expected, masks, what, scale_from=np.abs(before) + 1e-3)


@entry_point("Adafactor")
def fuzz_adafactor(ex, _):
    """optim.Adafactor: construction, steps (maybe with invalid gradients), the reference."""
    dtype = ex.dtype()
    params = []
    for _ in range(ex.draw(st.integers(1, 3), "params")):
        params.append(ex.array(ex.draw(st.sampled_from(_SHAPES), "shape"), dtype, "param",
                               targets=params))
    hyper, valid = _hyper(ex)
    valid = valid and all(param_ok(p) for p in params) and disjoint(params)
    try:
        opt = Adafactor(params, **hyper)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    ref = AdafactorReference([p.copy() for p in params], **hyper)
    for t in range(ex.draw(st.integers(1, 3), "steps")):
        grads = [ex.array(p.shape, p.dtype, "grad", targets=params) for p in params]
        ok = all(layout_ok(g) and like(g, p) for g, p in zip(grads, params)) and \
            not any(overlapping(g, p) for g in grads for p in params)
        before = [np.array(p, np.float64) for p in params]
        if not checked_step(ex, ok, lambda: opt.step(grads)):
            continue
        ref.step(grads)
        if not _moderate(before + grads):
            return                      # the reference's tensors went their own way
        for j, (p, q, b) in enumerate(zip(params, ref.params, before)):
            assert p.dtype == dtype
            _compare(p, q, b, f"Adafactor step {t + 1}, params[{j}]")


@entry_point("adafactor", entry="functional")
def fuzz_functional_adafactor(ex, _):
    """functional.adafactor_: one step on given state, or a clear error with nothing changed."""
    dtype = ex.dtype()
    shape = ex.draw(st.sampled_from(_SHAPES), "shape")
    p = ex.array(shape, dtype, "param")
    g = ex.array(shape, dtype, "grad", targets=[p])
    shapes = state_shapes(shape)
    state = {k: ex.array(s, dtype, "state", targets=[p, g], nonneg=True)
             for k, s in shapes.items()}
    hyper, valid = _hyper(ex)
    eps = hyper.pop("eps")
    if not (isinstance(eps, tuple) and len(eps) == 2):      # the form's two arguments
        eps = (None, eps[0] if isinstance(eps, tuple) else eps)
        valid = _valid(dict(hyper, eps=eps))
    step = ex.pick("step", [1, 2, 7], [0, 1.5, -1])
    writes = [p, *state.values()]
    ok = (valid and param_ok(p) and layout_ok(g) and like(g, p) and step in (1, 2, 7)
          and all(param_ok(a) and a.dtype == dtype and a.shape == shapes[k]
                  for k, a in state.items())
          and disjoint(writes) and not any(overlapping(g, a) for a in writes))
    before = [np.array(a, np.float64) for a in writes]
    snap = ex.snapshot()
    kwargs = {k: state.get(k) for k in ("row_var", "col_var", "variance")}
    try:
        F.adafactor_(p, g, **kwargs, step=step, eps1=eps[0], eps2=eps[1], **hyper)
    except ERRORS as err:
        assert not ok, f"rejected valid arguments: {err!r}"
        assert not ex.changed_bytes(snap)
        return
    assert ok, "accepted invalid arguments"
    from adafactor_reference import adafactor_step
    ref_state = {k: v.copy() for k, v in zip(state, before[1:])}
    eps1 = float(np.finfo(dtype).eps) if eps[0] is None else eps[0]
    h = dict(hyper, eps=eps)
    q = adafactor_step(before[0], g, ref_state, step, hyper["lr"], h, eps1)
    if _moderate(before + [g]):
        _compare(p, q, before[0], "adafactor_ param")
