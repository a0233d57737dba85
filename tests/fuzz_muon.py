"""Fuzz drivers of Muon: the class fastopt.Muon and fastopt.functional.muon_ (see fuzz_optim.py).

Each call either works or raises TypeError/ValueError with every input bit-identical. A step
that works is compared with tests/muon_reference.py (float64) when every value it met is
finite and moderate: the Newton-Schulz output O has singular values below about 1.3, so
``|p - p_ref| <= tol |p0| + lr' err_O``, with err_O from the iteration's precision
(float64: 1e-6, the iteration amplifies the input's rounding by at most a few hundred;
float32: 1e-2; bfloat16: 2.5, i.e. O's own bound: a rounding boundary may split fastopt and
the reference, see fastopt._muon).
"""
import math

import numpy as np
from hypothesis import strategies as st

import fastopt as fo
from fastopt import functional as F
from fuzzing import ERRORS, checked_step, HUGE, disjoint, entry_point, layout_ok, like, overlapping, param_ok
from muon_reference import adjusted_lr, muon_step

SHAPES = [(1, 1), (2, 3), (3, 2), (4, 4), (1, 5), (0, 3), (5,), (), (2, 2, 2)]
ERR_O = {"float64": 1e-6, "float32": 1e-2, None: 2.5}


def _hyper(ex):
    return dict(lr=ex.pick("lr", [0.01, 0.1, 0.0], [-0.1, float("nan"), "x"]),
                weight_decay=ex.pick("wd", [0.0, 0.1], [-1.0]),
                momentum=ex.pick("momentum", [0.0, 0.9, 0.95], [-0.5, None]),
                nesterov=ex.pick("nesterov", [True, False], [1, None]),
                ns_steps=ex.pick("ns_steps", [0, 1, 5], [100, -1, 2.0]),
                adjust_lr_fn=ex.pick("adjust", [None, "original", "match_rms_adamw"], ["x", 1]),
                ns_dtype=ex.pick("ns_dtype", [None, "float32", "float64"], ["bf16", 3]))


def _hyper_ok(h):
    def real(v, low=0.0):
        return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) \
            and v >= low
    return (real(h["lr"]) and real(h["weight_decay"]) and real(h["momentum"])
            and isinstance(h["nesterov"], bool)
            and isinstance(h["ns_steps"], int) and not isinstance(h["ns_steps"], bool)
            and 0 <= h["ns_steps"] < 100
            and h["adjust_lr_fn"] in (None, "original", "match_rms_adamw")
            and h["ns_dtype"] in (None, "float32", "float64"))


def _moderate(arrays):
    return all(np.isfinite(a).all() and (np.abs(np.asarray(a, np.float64)) <= HUGE).all()
               for a in arrays)


def _check_step(flat, before, grads, bufs_before, h, lr):
    """Compare a step that worked with the reference, where every value met was moderate."""
    if not _moderate(list(before) + list(grads) + list(bufs_before)):
        return
    for p, p0, g, b0 in zip(flat, before, grads, bufs_before):
        state = {"momentum_buffer": b0}
        ref = muon_step(p0, np.asarray(g, np.float64), state, h, lr=lr)
        if p.size == 0:
            continue
        tol = 1e-12 if p.dtype == np.float64 else 1e-6
        bound = tol * np.abs(p0).max() * 4 + adjusted_lr(lr, h["adjust_lr_fn"], p.shape) \
            * ERR_O[h["ns_dtype"]] + 1e-30
        err = float(np.abs(np.asarray(p, np.float64) - ref).max())
        assert err <= bound, f"Muon step: error {err:.3g} > {bound:.3g}"


def _params(ex):
    groups, flat = [], []
    for _ in range(ex.draw(st.integers(1, 2), "groups")):
        group = []
        for _ in range(ex.draw(st.integers(1, 2), "params in group")):
            a = ex.array(ex.draw(st.sampled_from(SHAPES), "shape"), ex.dtype(), "param",
                         targets=flat)
            group.append(a)
            flat.append(a)
        groups.append(group)
    return groups, flat


def _grads_ok(grads, flat, others=()):
    return all(layout_ok(g) and like(g, p) for g, p in zip(grads, flat)) and \
        not any(overlapping(g, p) for g in grads for p in list(flat) + list(others))


@entry_point("Muon")
def fuzz_muon(ex, _):
    """optim.Muon: 2-D parameters, torch's rules, every step against the reference."""
    groups, flat = _params(ex)
    h = _hyper(ex)
    valid = _hyper_ok(h) and all(param_ok(p) and p.ndim == 2 for p in flat) and disjoint(flat)
    spec = [{"params": g} for g in groups] if len(groups) > 1 else groups[0]
    try:
        opt = fo.Muon(spec, **h)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    for _ in range(ex.draw(st.integers(1, 3), "steps")):
        grads = [ex.array(p.shape, p.dtype, "grad", targets=flat) for p in flat]
        bufs = [opt.state.get(i, {}).get("momentum_buffer") for i in range(len(flat))]
        ok = _grads_ok(grads, flat, [b for b in bufs if b is not None])
        before = [np.array(p, np.float64) for p in flat]
        bufs_before = [np.zeros(p.shape) if b is None else np.array(b, np.float64)
                       for p, b in zip(flat, bufs)]
        if not checked_step(ex, ok, lambda: opt.step(grads)):
            continue
        _check_step(flat, before, grads, bufs_before, h, float(h["lr"]))


@entry_point("muon", entry="functional")
def fuzz_muon_functional(ex, _):
    """functional.muon_: one array or a list, buffers given, the same contract."""
    _, flat = _params(ex)
    single = len(flat) == 1 and ex.draw(st.booleans(), "single")
    h = _hyper(ex)
    if not all(param_ok(p) for p in flat):      # a bad parameter: any buffers will do
        bufs = [np.zeros(np.shape(p)) for p in flat]
        grads = [np.zeros(np.shape(p)) for p in flat]
    else:
        bufs = [ex.array(p.shape, p.dtype, "param", targets=flat) for p in flat]
        grads = [ex.array(p.shape, p.dtype, "grad", targets=flat + bufs) for p in flat]
    valid = _hyper_ok(h) and all(param_ok(p) and p.ndim == 2 for p in flat) \
        and all(param_ok(b) and like(b, p) for b, p in zip(bufs, flat)) \
        and disjoint(flat + bufs) and _grads_ok(grads, flat, bufs)
    before = [np.array(p, np.float64) for p in flat] if valid else []
    bufs_before = [np.array(b, np.float64) for b in bufs] if valid else []
    snap = ex.snapshot()
    try:
        F.muon_(flat[0] if single else flat, grads[0] if single else grads,
                bufs[0] if single else bufs, **h)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        assert not ex.changed_bytes(snap)
        return
    assert valid, "accepted invalid arguments"
    _check_step(flat, before, grads, bufs_before, h, float(h["lr"]))
