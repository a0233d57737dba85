"""Fuzz drivers of Newton (class and functional), SVRG and fastopt.flatten (see fuzz_optim.py).

References, written from the docstrings' equations: Newton's direction is
``(H + (damping + shift) I)^{-1} g`` solved in float64 with the shift the step reports (checked
to be 0 when ``H + damping I`` is clearly positive definite, and to make it positive definite
otherwise); an Armijo step must satisfy the Armijo condition and the previous trial must not;
SVRG's update is ``p -= lr (g - g_snap + mu + wd p)``.
"""
import math
import warnings

import numpy as np
from hypothesis import strategies as st

import fastopt as fo
from fastopt import functional as F
from fastopt.optim import SVRG, Newton
from fuzzing import ERRORS, checked_step, FLOATS, Masks, assert_close, disjoint, entry_point, layout_ok, like, \
    overlapping, param_ok

TOL = {np.dtype(np.float32): 2e-3, np.dtype(np.float64): 1e-8}


def _small_shape(ex):
    return ex.draw(st.sampled_from([(0,), (1,), (2,), (5,), (2, 3), (3, 1), (), (1, 1, 2)]), "shape")


def _params(ex, n_groups=None):
    groups, flat = [], []
    for _ in range(n_groups or ex.draw(st.integers(1, 2), "groups")):
        group = []
        for _ in range(ex.draw(st.integers(1, 2), "params in group")):
            a = ex.array(_small_shape(ex), ex.dtype(), "param", targets=flat)
            group.append(a)
            flat.append(a)
        groups.append(group)
    return groups, flat


def _hessian(ex, p):
    """A symmetric (n, n) Hessian for parameter p: positive definite, indefinite, or bad."""
    n = p.size if isinstance(p, np.ndarray) else 1
    a = ex.rng.integers(-4, 5, (n, n)) / 4
    h = a @ a.T + ex.draw(st.sampled_from([0.5, 1.0, 2.0, -3.0]), "diagonal shift") * np.eye(n)
    dtype = p.dtype if isinstance(p, np.ndarray) and p.dtype in FLOATS else np.float64
    h = h.astype(dtype)
    if ex.chance(6, "bad hessian"):
        kind = ex.draw(st.sampled_from(["shape", "asym", "nan", "int", "list", "p-shaped"]), "hessian fault")
        if kind == "shape":
            return np.zeros((n + 1, n + 1), dtype), False
        if kind == "asym" and n >= 2:
            h = h.copy()
            h[0, 1] += 1.0
            return h, False
        if kind == "nan" and n:
            h = h.copy()
            h[0, 0] = np.nan
            return h, False
        if kind == "int":
            return h.astype(np.int64), False
        if kind == "list":
            return h.tolist(), False
        if kind == "p-shaped" and isinstance(p, np.ndarray):
            return h.reshape(p.shape + p.shape), True
    return h, True


def _lr_ok(v):
    return callable(v) or (not isinstance(v, bool) and isinstance(v, (int, float))
                           and math.isfinite(v) and v >= 0)


def _nonneg_ok(v):
    return not isinstance(v, bool) and isinstance(v, (int, float)) and math.isfinite(v) and v >= 0


def _direction(p, g, h, damping, shift):
    n = p.size
    m = np.asarray(h, np.float64).reshape(n, n) + (damping + shift) * np.eye(n)
    return np.linalg.solve(m, np.asarray(g, np.float64).reshape(-1)).reshape(p.shape) if n else np.zeros(p.shape)


def _check_shift(h, damping, shift, dtype, what):
    """The reported shift is 0 for a clearly positive definite H + damping I, and makes it
    positive definite otherwise."""
    n = int(round(math.sqrt(np.asarray(h).size)))
    if n == 0:
        assert shift == 0.0
        return
    m = np.asarray(h, np.float64).reshape(n, n)
    low = float(np.linalg.eigvalsh(m + damping * np.eye(n)).min())
    scale = max(1.0, float(np.abs(m).max()))
    if low > 1e-2 * scale:
        assert shift == 0.0, f"{what}: shifted ({shift}) a positive definite Hessian"
    else:
        assert shift > 0, f"{what}: no shift for an indefinite Hessian (min eigenvalue {low})"
        assert low + shift > 0, f"{what}: shift {shift} leaves the Hessian indefinite"


@entry_point("newton", entry="functional")
def fuzz_newton_functional(ex, _):
    """functional.newton_: param -= lr (H + (damping + shift) I)^{-1} grad."""
    ex.special = False          # a solve mixes every entry: float32/float64 overflow differ
    _, params = _params(ex, 1)
    grads = [ex.array(p.shape, p.dtype, "grad", targets=params) if isinstance(p, np.ndarray)
             else np.zeros(1) for p in params]
    hs = [_hessian(ex, p) for p in params]
    lr = ex.pick("lr", [1.0, 0.5, 0, 2], [-1.0, float("nan"), "1", lambda t: 1.0])
    damping = ex.pick("damping", [0.0, 0.1, 1.0], [-0.5, float("inf")])
    single = len(params) == 1 and ex.draw(st.booleans(), "single")
    valid = (all(param_ok(p) for p in params) and disjoint(params)
             and all(layout_ok(g) and like(g, p) for g, p in zip(grads, params))
             and not any(overlapping(g, p) for g in grads for p in params)
             and all(ok for _, ok in hs) and _lr_ok(lr) and not callable(lr) and _nonneg_ok(damping)
             and all(np.isfinite(g).all() for g in grads))
    before = [p.copy() if isinstance(p, np.ndarray) else p for p in params]
    snap = ex.snapshot()
    h_arg = [h for h, _ in hs]
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            shifts = F.newton_(params[0] if single else params, grads[0] if single else grads,
                               h_arg[0] if single else h_arg, lr=lr, damping=damping)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        assert not ex.changed_bytes(snap), "a refused call changed its inputs"
        return
    assert valid, "accepted invalid arguments"
    shifts = [shifts] if single else shifts
    for p, p0, g, (h, _), s in zip(params, before, grads, hs, shifts):
        _check_shift(h, float(damping), s, p.dtype, "newton_")
        d = float(lr) * _direction(p0, g, h, float(damping), s)
        ref = np.asarray(p0, np.float64) - d
        assert_close(p, ref, Masks(p0), "newton_", scale_from=np.abs(p0) + np.abs(d))


@entry_point("Newton")
def fuzz_newton(ex, _):
    """optim.Newton: construction, param_groups changes, steps with or without a line search."""
    ex.special = False          # a solve mixes every entry: float32/float64 overflow differ
    groups, flat = _params(ex)
    hyper = dict(lr=ex.pick("lr", [1.0, 0.5, 3.0], [-1.0, "x"]),
                 damping=ex.pick("damping", [0.0, 0.25], [-1.0]),
                 line_search=ex.pick("line search", [None, "armijo"], ["wolfe"]),
                 c1=ex.pick("c1", [1e-4, 0.3], [0.0, 1.0]),
                 backtrack=ex.pick("backtrack", [0.5, 0.8], [1.5]),
                 max_backtracks=ex.pick("max backtracks", [30, 2, 0], [-1, 2.5]))
    ok_hyper = (_lr_ok(hyper["lr"]) and _nonneg_ok(hyper["damping"])
                and hyper["line_search"] in (None, "armijo") and 0 < hyper["c1"] < 1
                and 0 < hyper["backtrack"] < 1 and isinstance(hyper["max_backtracks"], int)
                and hyper["max_backtracks"] >= 0)
    valid = ok_hyper and all(param_ok(p) for p in flat) and disjoint(flat)
    spec = [{"params": g} for g in groups] if len(groups) > 1 else groups[0]
    snap = ex.snapshot()
    try:
        opt = Newton(spec, **hyper)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        assert not ex.changed_bytes(snap)
        return
    assert valid, "accepted invalid arguments"
    for t in range(ex.draw(st.integers(1, 3), "steps")):
        undo = None
        if ex.chance(15, "bad group change"):
            key = ex.draw(st.sampled_from(["lr", "damping", "c1", "max_backtracks"]), "key")
            undo = (key, opt.param_groups[0][key])
            opt.param_groups[0][key] = {"lr": -1.0, "damping": float("nan"), "c1": 2.0,
                                        "max_backtracks": -3}[key]
        grads = [ex.array(p.shape, p.dtype, "grad", targets=flat) for p in flat]
        hs = [_hessian(ex, p) for p in flat]
        # the quadratic with these gradients and Hessians at the current point
        x0 = [np.array(p, np.float64).reshape(-1) for p in flat]     # copies: p changes
        hm = [np.asarray(h, np.float64).reshape(p.size, p.size) if ok and np.isfinite(np.asarray(h, np.float64)).all() else None
              for (h, ok), p in zip(hs, flat)]
        gv = [np.asarray(g, np.float64).reshape(-1) if isinstance(g, np.ndarray) and g.size == p.size else None
              for g, p in zip(grads, flat)]

        def closure():
            total = 0.0
            for p, x, h, g in zip(flat, x0, hm, gv):
                if h is None or g is None:
                    continue
                d = np.asarray(p, np.float64).reshape(-1) - x
                total += float(g @ d + 0.5 * d @ h @ d)
            return total
        give_closure = hyper["line_search"] != "armijo" or not ex.chance(10, "no closure")
        valid = (undo is None and all(layout_ok(g) and like(g, p) for g, p in zip(grads, flat))
                 and not any(overlapping(g, p) for g in grads for p in flat)
                 and all(ok for _, ok in hs) and all(np.isfinite(g).all() for g in grads)
                 and give_closure)
        before = [p.copy() for p in flat]
        snap = ex.snapshot()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                info = opt.step(grads, [h for h, _ in hs], closure=closure if give_closure else None)
        except ERRORS as err:
            assert not valid, f"step {t}: rejected valid arguments: {err!r}"
            assert not ex.changed_bytes(snap), "a refused step changed its inputs"
            if undo:
                opt.param_groups[0][undo[0]] = undo[1]
            continue
        assert valid, f"step {t}: accepted invalid arguments"
        lrs = [float(g["lr"]) for g in opt.param_groups for _ in g["params"]]
        dampings = [float(g["damping"]) for g in opt.param_groups for _ in g["params"]]
        dirs = []
        for p0, g, (h, _), s, lr, dmp in zip(before, grads, hs, info.shifts, lrs, dampings):
            _check_shift(h, dmp, s, p0.dtype, f"Newton step {t}")
            dirs.append(lr * _direction(p0, g, h, dmp, s))
        step = info.step_size
        if hyper["line_search"] is None:
            assert step == 1.0 and info.backtracks == 0
        else:
            assert step == 0.0 or math.isclose(step, hyper["backtrack"] ** info.backtracks)
            assert info.backtracks <= hyper["max_backtracks"] + 1
        for p, p0, d in zip(flat, before, dirs):
            assert_close(p, np.asarray(p0, np.float64) - step * d, Masks(p0), f"Newton step {t}",
                         scale_from=np.abs(p0) + np.abs(step * d))
        if hyper["line_search"] == "armijo" and step > 0:
            slope = -sum(float(np.asarray(g, np.float64).reshape(-1) @ d.reshape(-1)) for g, d in zip(grads, dirs))
            f1 = closure()
            assert f1 <= hyper["c1"] * step * slope + 1e-3 * (1 + abs(slope)), "Armijo condition fails"


@entry_point("SVRG")
def fuzz_svrg(ex, _):
    """optim.SVRG: p -= lr (g - g_snapshot + mu + wd p), snapshots, order of calls."""
    groups, flat = _params(ex)
    hyper = dict(lr=ex.pick("lr", [0.1, 0.5, 0.0], [-0.1]),
                 weight_decay=ex.pick("wd", [0.0, 0.01], [-1.0]),
                 snapshot_every=ex.pick("every", [None, 1, 2], [0, 1.5, True]))
    every = hyper["snapshot_every"]
    valid = (_lr_ok(hyper["lr"]) and _nonneg_ok(hyper["weight_decay"])
             and (every is None or (isinstance(every, int) and not isinstance(every, bool) and every >= 1))
             and all(param_ok(p) for p in flat) and disjoint(flat))
    spec = [{"params": g} for g in groups] if len(groups) > 1 else groups[0]
    try:
        opt = SVRG(spec, **hyper)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        return
    assert valid, "accepted invalid arguments"
    if ex.chance(10, "step before snapshot"):
        g = [np.zeros_like(p) for p in flat]
        try:
            opt.step(g, g)
        except RuntimeError as err:          # a call-order error, not an argument error
            assert "snapshot" in str(err)
        else:
            raise AssertionError("stepped without a snapshot")
    snap_p, mu, since = None, None, 0
    for t in range(ex.draw(st.integers(1, 4), "calls")):
        if snap_p is None or ex.draw(st.booleans(), "snapshot"):
            full = [ex.array(p.shape, p.dtype, "grad", targets=flat) for p in flat]
            ok = all(layout_ok(g) and like(g, p) for g, p in zip(full, flat)) and \
                not any(overlapping(g, p) for g in full for p in flat)
            try:
                opt.snapshot(full)
            except ERRORS as err:
                assert not ok, f"snapshot rejected valid gradients: {err!r}"
                continue
            assert ok, "snapshot accepted invalid gradients"
            snap_p = [np.array(p, np.float64) for p in flat]
            mu = [np.array(g, np.float64) for g in full]
            since = 0
            assert opt.needs_snapshot is False
            continue
        grads = [ex.array(p.shape, p.dtype, "grad", targets=flat) for p in flat]
        sgrads = [ex.array(p.shape, p.dtype, "grad", targets=flat) for p in flat]
        ok = all(layout_ok(g) and like(g, p) for gs in (grads, sgrads) for g, p in zip(gs, flat)) and \
            not any(overlapping(g, p) for gs in (grads, sgrads) for g in gs for p in flat)
        before = [np.array(p, np.float64) for p in flat]
        if not checked_step(ex, ok, lambda: opt.step(grads, sgrads)):
            continue
        since += 1
        lrs = [float(g["lr"]) for g in opt.param_groups for _ in g["params"]]
        for p, p0, g, gs, m, lr in zip(flat, before, grads, sgrads, mu, lrs):
            v = np.asarray(g, np.float64) - np.asarray(gs, np.float64) + m + hyper["weight_decay"] * p0
            masks = Masks(p0.reshape(-1))
            for a in (g, gs, m):
                masks.add(np.asarray(a, np.float64).reshape(-1))
            terms = np.abs(p0) + lr * sum(np.abs(np.asarray(a, np.float64)) for a in (g, gs, m))
            assert_close(p, p0 - lr * v, masks, "SVRG step",
                         scale_from=terms + lr * hyper["weight_decay"] * np.abs(p0))
        assert opt.needs_snapshot is (every is not None and since >= every)


@entry_point("flatten")
def fuzz_flatten(ex, _):
    """fastopt.flatten: one 64-byte-aligned buffer, views shaped like the inputs, values cast."""
    arrays = [ex.array(_small_shape(ex), ex.dtype(), "grad") for _ in range(ex.draw(st.integers(0, 4), "n"))]
    container = ex.draw(st.sampled_from([list, tuple, list, "set", "array"]), "container")
    dtype = ex.draw(st.sampled_from([None, None, np.float32, np.int16, np.complex64, bool, "bogus",
                                     object, "U3", "M8[s]"]), "dtype")
    arg = (container(arrays) if callable(container) else
           (set() if container == "set" else np.zeros(3)))
    try:
        sources = [np.asarray(a) for a in arrays]
        want = np.dtype(dtype) if dtype is not None else (
            np.result_type(*sources) if sources else np.dtype(np.float64))
    except (TypeError, ValueError):
        want = None
    valid = (callable(container) and want is not None and want.kind in "fciub"
             and all(isinstance(a, np.ndarray) for a in arrays))
    snap = ex.snapshot()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            buffer, views = fo.flatten(arg, dtype=dtype)
    except ERRORS as err:
        assert not valid, f"rejected valid arguments: {err!r}"
        assert not ex.changed_bytes(snap)
        return
    assert valid, "accepted invalid arguments"
    assert not ex.changed_bytes(snap), "flatten changed its inputs"
    assert buffer.ndim == 1 and buffer.dtype == want
    assert buffer.size == 0 or buffer.ctypes.data % 64 == 0
    assert buffer.size == sum(a.size for a in arrays) and len(views) == len(arrays)
    start = 0
    for a, v in zip(arrays, views):
        assert v.shape == a.shape and v.dtype == want
        assert a.size == 0 or np.shares_memory(v, buffer)
        assert a.size == 0 or v.ctypes.data == buffer.ctypes.data + start * want.itemsize
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            expected = np.asarray(a).astype(want)
        # values, not bytes: longdouble pads 80-bit values to 16 bytes with undefined bytes
        assert np.array_equal(v, expected, equal_nan=want.kind in "fc"), "flatten changed a value"
        start += a.size
