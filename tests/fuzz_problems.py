"""Fuzz drivers of fastopt.problems, fastopt.datasets, fastopt.train and fastopt.convergence.

The same contract as tests/fuzz_optim.py: each call works and matches a float64 NumPy reference
written here from the docstrings' equations, or raises TypeError/ValueError with every input
(arena bytes, generator state, optimizer and problem state) unchanged. These functions are
pure (train and solve only update the optimizer's parameter, and only on success), so inputs
are also checked to be unchanged after a successful call.

* problems: logistic losses, gradients, Hessians and Hessian-vector products over minibatch
  index sets (repeats count twice), binary and multinomial, with and without the penalty,
  from log-sum-exp and sigmoid formulas; L, L_max and mu from their definitions (eigenvalues
  of X^T X / n, row norms); the quadratics against a general eigenvalue routine; the 2-D
  functions from their formulas, gradients checked by complex-step differentiation of the
  value and Hessians taken by complex steps of the gradient. Tolerances follow the rounding
  error of the evaluation: a relative constant times the magnitude of the same expression
  with every term made non-negative.
* datasets: the loaders against the packaged .npz files read directly, standardized here.
* train: the run replayed by hand with a twin optimizer: the same batches (recorded by a
  wrapper around the problem, then checked to cover every sample once per epoch), the
  documented snapshot, Hessian-subsample and line-search rules, records every `record_every`
  steps and at the end, and the documented stopping rules; the History must match exactly.
* convergence: `solve` replayed step by step; `compare` checked trace by trace against the
  documented budget, stopping rule and a replay of its final iterate.
"""
import math
import warnings
from pathlib import Path

import numpy as np
from hypothesis import strategies as st

from fastopt import convergence, datasets, optim
from fastopt import schedules as S
from fastopt.problems import (Beale, IllConditionedQuadratic, LogisticRegression, Quadratic,
                              Rosenbrock, Saddle)
from fastopt.train import History, train
from fuzzing import BAD_FORMS, ERRORS, HUGE, entry_point, same_state_dict, special_value

F32, F64 = np.dtype(np.float32), np.dtype(np.float64)
REL = {F32: 1e-5, F64: 1e-11}             # error / magnitude of the expression
FLOOR = {F32: 1e-43, F64: 1e-322}         # per squared feature: subnormal weights lose bits
INT_DTYPES = ("int8", "int16", "int32", "int64", "uint8", "uint16", "uint32", "uint64")


# ------------------------------------------------------------------------------ argument forms
def arena_copy(ex, a):
    """A copy of ndarray `a` in the example's arena (so that a write to it shows)."""
    a = np.asarray(a)
    if a.dtype.hasobject:
        return a.copy()
    chunk, off = ex._place(a.nbytes + 1, ex.draw(st.sampled_from([0, 8, 40]), "gap"))
    out = chunk.buf[off:off + a.nbytes].view(a.dtype).reshape(a.shape)
    out[...] = a
    return out


def float_input(ex, values, dtype, label, pct=8):
    """`values` (float64) as an argument meant to be a float32/float64 array of that shape.

    Returns (argument, form): form "good", one of fuzzing.BAD_FORMS, or "shape" (one element
    more, or an extra axis). Arrays live in the arena.
    """
    values = np.asarray(values, np.float64)
    form = "good"
    if ex.chance(pct, f"bad {label}"):
        form = ex.draw(st.sampled_from(BAD_FORMS + ("shape",)), f"{label} form")
    if form in ("wrongshape", "shape"):
        form = "shape"
        values = (np.append(values.reshape(-1), 1.0) if ex.draw(st.booleans(), "longer")
                  else values.reshape(values.shape + (1,)))
    if form == "wrongdtype":
        dtype, form = (F64 if dtype == F32 else F32), "good"
    if form == "list":
        return values.astype(dtype).tolist(), form
    if form == "scalar":
        return (float(values.flat[0]) if values.size else 1.0), form
    if form == "none":
        return None, form
    if form == "object":
        return values.astype(object), form
    if form in ("float16", "int32", "int64", "bool", "complex64", "complex128", "longdouble"):
        dtype = np.dtype(form)
    if dtype.kind in "iu":
        src = np.clip(np.nan_to_num(values * 8), -2**30, 2**30).astype(dtype)
    elif dtype.kind == "b":
        src = values > 0
    else:
        with np.errstate(over="ignore"):
            src = values.astype(dtype)
    if form == "strided":
        a = arena_copy(ex, np.repeat(src.reshape(-1), 2))[::2].reshape(src.shape)
    elif form == "fortran":
        a = arena_copy(ex, np.asfortranarray(src).T.copy()).T if src.ndim >= 2 else arena_copy(ex, src)
    elif form == "reversed":
        a = arena_copy(ex, src.reshape(-1)[::-1])[::-1].reshape(src.shape)
    elif form == "unaligned" and src.dtype.itemsize > 1:
        chunk, off = ex._place(src.nbytes + 2, 0)
        a = chunk.buf[off + 1:off + 1 + src.nbytes].view(src.dtype).reshape(src.shape)
        a[...] = src
    elif form == "swapped":
        a = arena_copy(ex, src.astype(src.dtype.newbyteorder()))
    else:
        a = arena_copy(ex, src)
    if form == "readonly":
        a.flags.writeable = False
    return a, form


def float_ok(arg):
    """The documented parameter types: a float32/float64 ndarray (any layout or byte order),
    or something np.asarray turns into a float64 array (a list); never another dtype."""
    if isinstance(arg, np.ndarray):
        return arg.dtype.kind == "f" and arg.dtype.itemsize in (4, 8)
    if arg is None or isinstance(arg, (str, bytes)):
        return False
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("error", np.exceptions.ComplexWarning)
            np.asarray(arg, np.float64)
    except (TypeError, ValueError, np.exceptions.ComplexWarning):
        return False
    return True


def same_values(a, b):
    """Two arrays hold the same values (NaN equal to NaN)."""
    if a.dtype != b.dtype or a.shape != b.shape:
        return False
    if a.dtype.kind == "O":
        a, b = a.astype(np.float64), b.astype(np.float64)
    return bool(np.array_equal(a, b, equal_nan=a.dtype.kind in "fcO"))


def as64(arg):
    return np.asarray(arg, np.float64)


def out_dtype(arg, default):
    """Results come back in the (native) float dtype of the array passed, else `default`."""
    if isinstance(arg, np.ndarray) and arg.dtype.kind == "f":
        return arg.dtype.newbyteorder("=")
    return np.dtype(default)


def moderate(*arrays):
    return all(np.all(np.isfinite(a)) and np.abs(a).max(initial=0.0) <= HUGE for a in arrays)


def scalar_draw(ex, label, good, bad, pct=8):
    """(value, valid): from `good`, or with chance `pct` from `bad`."""
    if ex.chance(pct, f"bad {label}"):
        return ex.draw(st.sampled_from(bad), label), False
    return ex.draw(st.sampled_from(good), label), True


def check_close(actual, expected, magnitude, dtype, what, floor=0.0):
    """|actual - expected| <= REL[dtype] * magnitude + floor, elementwise."""
    a = np.asarray(actual, np.float64)
    e = np.asarray(expected, np.float64)
    assert a.shape == e.shape, f"{what}: shape {a.shape}, expected {e.shape}"
    allowed = REL[np.dtype(dtype)] * np.asarray(magnitude, np.float64) + floor
    allowed = np.nan_to_num(allowed, nan=np.inf, posinf=np.inf)
    err = np.abs(a - e)
    bad = ~(err <= allowed)
    if np.asarray(actual).dtype == F32:   # beyond float32's range: infinity of the same sign
        top = float(np.finfo(F32).max)
        over = np.abs(e) >= 0.99 * top
        bad &= ~(over & (np.sign(a) == np.sign(e)) & (np.abs(a) >= 0.98 * top))
    assert not bad.any(), (f"{what}: differs from the reference at {np.argwhere(bad)[0].tolist()}: "
                           f"{a[bad][:4]} vs {e[bad][:4]} (allowed {allowed[bad][:4]})")


def refused(ex, snap, err, valid, what, extra=()):
    """A refused call: it was allowed to refuse, and nothing changed."""
    assert valid is not True, f"{what}: rejected valid arguments: {err!r}"
    changed = ex.changed_bytes(snap)
    assert not changed, f"{what} raised but changed input bytes (first at arena offset {changed})"
    for ok, message in extra:
        assert ok(), f"{what} raised but {message}"


# ============================================================================ index arguments
def draw_idx(ex, n):
    """(idx, rows): an `idx` argument of a finite-sum method and the sample list it selects
    (repeats included), or rows None when the call must be refused."""
    kind = ex.draw(st.sampled_from(["none"] * 3 + ["array"] * 5 + ["list", "slice", "slice", "bad"]),
                   "idx kind")
    if kind == "none":
        return None, list(range(n))
    if kind == "slice":
        ends = [None, 0, 1, 2, n - 1, n, n + 3, -1, -2, -n - 3]
        sl = slice(ex.draw(st.sampled_from(ends), "start"), ex.draw(st.sampled_from(ends), "stop"),
                   ex.draw(st.sampled_from([None, 1, 2, 3, -1, -2, 0]), "step"))
        if sl.step == 0:
            return sl, None
        rows = list(range(n))[sl]
        return sl, (rows or None)
    if kind == "bad":
        bad = ex.draw(st.sampled_from(["float", "bool", "2d", "scalar", "int", "str", "floats",
                                       "empty list", "object", "huge", "huge list"]), "bad idx")
        base = ex.rng.integers(0, n, max(1, n // 2))
        arg = {"float": base.astype(np.float64), "bool": np.arange(n) % 2 == 0,
               "2d": base.reshape(-1, 1), "scalar": np.int64(0), "int": 0, "str": "0",
               "floats": [0.0], "empty list": [], "object": base.astype(object),
               "huge": np.array([2**62], np.int64), "huge list": [2**70]}[bad]
        return arg, None
    m = ex.draw(st.integers(0, 2 * n + 1), "batch length")
    dtype = np.dtype(ex.draw(st.sampled_from(INT_DTYPES), "idx dtype"))
    values = ex.rng.integers(0, n, m).astype(object)
    if m and ex.chance(12, "out of range"):
        values[ex.draw(st.integers(0, m - 1), "at")] = ex.draw(
            st.sampled_from([n, n + 1, -1, -n, 2**31, 2**40]), "value")
    with np.errstate(over="ignore"):
        fits = all(np.iinfo(dtype).min <= v <= np.iinfo(dtype).max for v in values)
        arr = np.array([int(v) for v in values], dtype=dtype) if fits else \
            np.array([int(v) for v in values], np.int64)
    rows = [int(v) for v in arr]
    ok = m > 0 and all(0 <= r < n for r in rows)
    if kind == "list":
        return [int(v) for v in arr], (rows if ok else None)
    form = ex.draw(st.sampled_from(["plain", "plain", "strided", "reversed", "readonly", "swapped"]),
                   "idx form")
    if form == "strided":
        a = arena_copy(ex, np.repeat(arr, 2))[::2]
    elif form == "reversed":
        a = arena_copy(ex, arr[::-1])[::-1]
    elif form == "swapped":
        a = arena_copy(ex, arr.astype(arr.dtype.newbyteorder()))
    else:
        a = arena_copy(ex, arr)
    if form == "readonly":
        a.flags.writeable = False
    return a, (rows if ok else None)


# ====================================================================== logistic regression
def logistic_reference(X, y, multinomial, l2, W, rows, V=None):
    """loss, grad, hessian (and hvp with V) of the docstring's equations over `rows`, with
    the magnitudes that bound their rounding errors."""
    Xb, yb = X[rows], y[rows]
    m = len(rows)
    A = np.abs(Xb)
    if not multinomial:
        w = W.reshape(-1)
        z = Xb @ w
        zmag = A @ np.abs(w)
        loss = np.mean(np.logaddexp(0.0, z) - yb * z) + 0.5 * l2 * (w @ w)
        loss_mag = 1 + np.mean(np.abs(np.logaddexp(0.0, z)) + np.abs(yb * z) + zmag) + 0.5 * l2 * (w @ w)
        p = np.exp(-np.logaddexp(0.0, -z))                                   # sigma(z)
        q = np.exp(-np.logaddexp(0.0, z))                                    # 1 - sigma(z)
        s = np.exp(-np.logaddexp(0.0, z) - np.logaddexp(0.0, -z))           # sigma'(z)
        r = np.where(yb == 1, -q, p)                                          # sigma(z) - y
        grad = Xb.T @ r / m + l2 * w
        grad_mag = A.T @ (np.abs(r) + s * zmag) / m + l2 * np.abs(w)
        H = (Xb.T * s) @ Xb / m + l2 * np.eye(w.size)
        H_mag = (A.T * (s * (1 + zmag))) @ A / m + l2 * np.eye(w.size)
    else:
        K, d = W.shape
        Z = Xb @ W.T
        zmag = (A @ np.abs(W).T).max(axis=1, initial=0.0)
        top = Z.max(axis=1)
        lse = top + np.log(np.exp(Z - top[:, None]).sum(axis=1))
        loss = np.mean(lse - Z[np.arange(m), yb]) + 0.5 * l2 * np.sum(W * W)
        loss_mag = 1 + np.mean(np.abs(lse) + np.abs(Z[np.arange(m), yb]) + zmag) + 0.5 * l2 * np.sum(W * W)
        P = np.exp(Z - lse[:, None])
        R = P.copy()                      # P - Y, the true class's p_y - 1 as -(the others)
        R[np.arange(m), yb] = 0.0
        R[np.arange(m), yb] = -R.sum(axis=1)
        grad = R.T @ Xb / m + l2 * W
        mag = np.abs(R) + 2 * P * zmag[:, None]
        mag[np.arange(m), yb] = np.abs(R[np.arange(m), yb]) + 2 * zmag     # a sum of K - 1
        grad_mag = mag.T @ A / m + l2 * np.abs(W)
        H = np.zeros((K * d, K * d))
        H_mag = np.zeros((K * d, K * d))
        for k in range(K):
            for j in range(K):
                c = P[:, k] * ((1.0 if k == j else 0.0) - P[:, j])
                cm = P[:, k] * ((1.0 if k == j else 0.0) + P[:, j]) * (1 + 4 * zmag)
                H[k * d:(k + 1) * d, j * d:(j + 1) * d] = (Xb.T * c) @ Xb / m
                H_mag[k * d:(k + 1) * d, j * d:(j + 1) * d] = (A.T * cm) @ A / m
        H += l2 * np.eye(K * d)
        H_mag += l2 * np.eye(K * d)
    out = dict(loss=(loss, loss_mag), grad=(grad, grad_mag), hessian=(H, H_mag))
    if V is not None:
        v = V.reshape(-1)
        out["hvp"] = (H @ v, H_mag @ np.abs(v))
    return out


def _labels(ex, n, K):
    y = ex.rng.integers(0, K, n)
    if n >= K and ex.draw(st.booleans(), "every class"):
        y[:K] = np.arange(K)
    return y


def draw_logistic(ex, max_n=30):
    """(constructor kwargs, validity, reference data) for LogisticRegression."""
    n = ex.draw(st.integers(1, max_n), "n")
    d = ex.draw(st.integers(0, 5), "d")
    dtype = ex.dtype()
    scale = ex.draw(st.sampled_from([1.0, 1.0, 1e-3, 1e3] + ([1e-150, 1e150] if dtype == F64 else [1e-18])),
                    "X scale")
    Xv = ex.rng.integers(-80, 81, (n, d)) / 8.0 * scale
    X_special = None
    if n * d and ex.chance(6, "X special"):
        X_special = ex.draw(st.sampled_from(["nan", "inf", "-inf", "huge"]), "which")
        Xv.flat[ex.draw(st.integers(0, n * d - 1), "at")] = special_value(X_special, dtype)
    X, X_form = float_input(ex, Xv, dtype, "X", pct=6)
    K = ex.draw(st.sampled_from([2, 2, 3, 4]), "classes")
    yv = _labels(ex, n, K)
    y_kind = ex.draw(st.sampled_from(["int64", "int64", "int32", "uint8", "bool", "float", "list"]), "y kind")
    if y_kind == "bool" and K != 2:
        y_kind = "int64"
    y = {"int64": yv, "int32": yv.astype(np.int32), "uint8": yv.astype(np.uint8), "bool": yv.astype(bool),
         "float": yv.astype(np.float64), "list": yv.tolist()}[y_kind]
    y_ok = True
    if ex.chance(8, "bad y"):
        y_ok = False
        bad = ex.draw(st.sampled_from(["negative", "too big", "fraction", "nan", "str", "short", "2d",
                                       "none"]), "bad y")
        if bad == "negative":
            y = yv.copy()
            y[0] = -1
        elif bad == "too big":
            y = yv.copy()
            y[-1] = 5
            y_ok = None                   # valid unless n_classes says fewer classes
        elif bad == "fraction":
            y = yv + 0.5
        elif bad == "nan":
            y = yv.astype(np.float64)
            y[0] = np.nan
        elif bad == "str":
            y = yv.astype(str)
        elif bad == "short":
            y = yv[:-1]
        elif bad == "2d":
            y = yv.reshape(-1, 1)
        else:
            y = None
    if not isinstance(y, list) and y is not None:
        y = arena_copy(ex, y)
    l2, l2_ok = scalar_draw(ex, "l2", [0.0, 0.0, 1e-3, 0.25, 2, np.float64(0.1), np.float32(0.5)],
                            [-1.0, -1e-300, float("nan"), float("inf"), True, "0.1", None, 1j])
    n_classes, nc_ok = scalar_draw(ex, "n_classes", [None, None, K, max(K, 3), np.int64(K)],
                                   [1, 0, -2, 2.5, True, "3", np.float64(K)])
    multinomial, mn_ok = scalar_draw(ex, "multinomial", [None, None, True, False, np.bool_(True)],
                                     ["yes", 1, 0, "False"], pct=5)
    kwargs = dict(X=X, y=y, l2=l2, multinomial=multinomial, n_classes=n_classes)
    # the contract, from the docstring
    valid = True
    if not (float_ok(X) and np.ndim(as64(X)) == 2 and as64(X).shape[0] >= 1
            and np.all(np.isfinite(as64(X)))):
        valid = False
    elif X_form == "shape" or not (y_ok is not False and l2_ok and nc_ok and mn_ok):
        valid = False
    if valid:
        labels = np.asarray(yv) if y_ok else np.asarray(y).astype(np.int64)
        k_classes = max(2, int(labels.max()) + 1) if n_classes is None else int(n_classes)
        if labels.max() >= k_classes:
            valid = False
        elif multinomial is not None and not multinomial and k_classes > 2:
            valid = False
    info = dict(n=n, d=d, K=K, X_special=X_special, y_ok=y_ok)
    return kwargs, valid, info


def _logistic_w(ex, prob, label):
    """A parameter argument for `prob` and its float64 value (None: must be refused)."""
    shape = prob.shape if ex.draw(st.booleans(), f"{label} shaped") else (prob.n_params,)
    dtype = ex.dtype()
    wscale = ex.draw(st.sampled_from([1.0, 1.0, 0.01, 100.0] + ([1e-100] if dtype == F64 else [])), f"{label} scale")
    values = ex.rng.integers(-80, 81, shape) / 8.0 * wscale
    if values.size and ex.special and ex.chance(20, f"{label} special"):
        values.flat[ex.draw(st.integers(0, values.size - 1), "at")] = special_value(
            ex.draw(st.sampled_from(["nan", "inf", "-inf", "huge", "-huge", "tiny", "-0"]), "which"), dtype)
    arg, form = float_input(ex, values, dtype, label)
    # by the shape it has: a "wrong" shape can be the other accepted one ((K, 1) vs (K,) + (1,))
    ok = float_ok(arg) and np.shape(arg) in (tuple(prob.shape), (prob.n_params,))
    return arg, (as64(arg).reshape(prob.shape) if ok else None)


@entry_point("LogisticRegression", entry="problems")
def fuzz_logistic(ex, _):
    """LogisticRegression: construction, constants, loss/grad/loss_grad/hessian/hvp over
    minibatches, predict_proba, init."""
    ex.special = ex.special and ex.chance(30, "w specials")
    kwargs, valid, info = draw_logistic(ex)
    snap = ex.snapshot()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            prob = LogisticRegression(kwargs["X"], kwargs["y"], kwargs["l2"],
                                      multinomial=kwargs["multinomial"], n_classes=kwargs["n_classes"])
    except ERRORS as err:
        refused(ex, snap, err, valid, "LogisticRegression()")
        return
    assert valid is not False, f"LogisticRegression accepted invalid arguments {info}"
    assert not ex.changed_bytes(snap), "LogisticRegression() changed its arguments"
    X = as64(kwargs["X"])
    y = np.asarray(kwargs["y"]).astype(np.int64)
    n, d = X.shape
    K = max(2, int(y.max()) + 1) if kwargs["n_classes"] is None else int(kwargs["n_classes"])
    multi = K > 2 if kwargs["multinomial"] is None else bool(kwargs["multinomial"])
    l2 = float(kwargs["l2"])
    dtype = out_dtype(kwargs["X"], F64)
    assert prob.n_samples == n and prob.n_features == d and prob.n_classes == K
    assert prob.multinomial is multi and prob.l2 == l2 and prob.mu == l2
    assert prob.dtype == dtype and prob.dtype.isnative, f"problem dtype {prob.dtype}, expected {dtype}"
    assert tuple(prob.shape) == ((K, d) if multi else (d,)) and prob.n_params == (K * d if multi else d)
    plain = bool(np.all(np.isfinite(X))) and np.abs(X).max(initial=0.0) <= (1e160 if dtype == F64 else 1e6)
    # constants: L = c lambda_max(X^T X / n) + l2, L_max = c max_i ||x_i||^2 + l2, c = 1/4 or 1/2
    c = 0.5 if multi else 0.25
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            L, L_max = prob.L, prob.L_max
    except ValueError:            # overflow in the Gram matrix of huge features
        assert not plain, "L or L_max failed on moderate data"
    else:
        assert isinstance(L, float) and isinstance(L_max, float)
        if plain:
            gram = X.T @ X / n
            L_ref = c * (float(np.linalg.eigvalsh(gram)[-1]) if d else 0.0) + l2
            check_close(L, L_ref, c * float(np.trace(gram)) + l2, dtype, "L")
            rows_max = c * float((X * X).sum(axis=1).max()) + l2
            check_close(L_max, rows_max, rows_max, F64, "L_max")
    w0 = prob.init()
    assert w0.shape == tuple(prob.shape) and w0.dtype == dtype and not w0.any()
    for t in range(ex.draw(st.integers(1, 4), "calls")):
        method = ex.draw(st.sampled_from(["loss", "grad", "loss_grad", "hessian", "hvp", "predict_proba"]), "method")
        w, w64 = _logistic_w(ex, prob, "w")
        if ex.chance(5, "w is a row of X") and not multi and isinstance(kwargs["X"], np.ndarray) \
                and float_ok(kwargs["X"]) and n:
            w = kwargs["X"][0]
            w64 = as64(w)
        v, v64 = (_logistic_w(ex, prob, "v") if method == "hvp" else (None, None))
        if method == "hvp" and ex.chance(10, "v is w"):
            v, v64 = w, w64
        idx, rows = draw_idx(ex, n) if method != "predict_proba" else (None, list(range(n)))
        Xp, Xp64 = None, X
        if method == "predict_proba" and ex.draw(st.booleans(), "new rows"):
            rows_new = ex.draw(st.integers(0, 6), "rows")
            Xp, form = float_input(ex, ex.rng.integers(-80, 81, (rows_new, d)) / 8.0, ex.dtype(), "X new")
            if Xp is None:                         # X=None: the training data
                Xp64 = X
            else:
                Xp64 = as64(Xp) if float_ok(Xp) and np.ndim(Xp) == 2 and np.shape(Xp)[1] == d else None
        ok = w64 is not None and rows is not None and (method != "hvp" or v64 is not None) and Xp64 is not None
        either = ok and (not moderate(w64) or (v64 is not None and not moderate(v64)) or not plain
                         or (Xp is not None and not moderate(Xp64)))
        snap = ex.snapshot()
        state = (prob.X.tobytes(), prob.y.tobytes(), prob.l2, prob.shape)
        args = {"loss": (w, idx), "grad": (w, idx), "loss_grad": (w, idx), "hessian": (w, idx),
                "hvp": (w, v, idx), "predict_proba": (w, Xp)}[method]
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                result = getattr(prob, method)(*args)
        except ERRORS as err:
            refused(ex, snap, err, None if either else ok, f"{method} (call {t})")
            assert state == (prob.X.tobytes(), prob.y.tobytes(), prob.l2, prob.shape)
            continue
        assert ok, (f"{method} (call {t}) accepted invalid arguments: w {type(w).__name__} "
                    f"{getattr(w, 'dtype', None)} {np.shape(w)}, v {type(v).__name__} "
                    f"{getattr(v, 'dtype', None)} {np.shape(v)}, idx {idx!r}, X {type(Xp).__name__}, "
                    f"problem shape {prob.shape}")
        assert not ex.changed_bytes(snap), f"{method} changed its arguments"
        assert state == (prob.X.tobytes(), prob.y.tobytes(), prob.l2, prob.shape), f"{method} changed the problem"
        _check_logistic_result(prob, method, result, w, v, X, y, multi, l2, w64, v64, rows, Xp64,
                               either, F32 if Xp is not None and out_dtype(Xp, F64) == F32 else dtype)


def _check_logistic_result(prob, method, result, w, v, X, y, multi, l2, w64, v64, rows, Xp64,
                           either, dtype):
    """`dtype`: the problem's (predict_proba: float32 when either it or the new rows are)."""
    W = w64.reshape(prob.shape)
    # the problem computes in its dtype: a float32 problem sees w rounded to float32
    W_eff = W.astype(prob.dtype).astype(np.float64)
    V = None if v64 is None else v64.reshape(prob.shape)
    V_eff = None if V is None else V.astype(prob.dtype).astype(np.float64)
    wd = out_dtype(w, F64)
    what = f"{method} ({'multinomial' if multi else 'binary'}, {dtype}, l2={l2})"
    # results are rounded to w's (v's) dtype: a float32 result of a float64 problem too
    coarse = F32 if F32 in (dtype, wd, out_dtype(v, F64) if method == "hvp" else wd) else F64
    floor = FLOOR[coarse] * (1 + float(np.max(X * X, initial=0.0)))
    if method == "predict_proba":
        K = prob.n_classes if multi else 2
        assert isinstance(result, np.ndarray) and result.shape == (Xp64.shape[0], K), \
            f"{what}: probabilities of shape {getattr(result, 'shape', None)}"
        if either:
            return
        Z = Xp64 @ W_eff.T if multi else (Xp64 @ W_eff)[:, None]
        Wm = W_eff if multi else W_eff.reshape(1, -1)
        zmag = (np.abs(Xp64) @ np.abs(Wm).T).max(axis=1, initial=0.0)
        if multi:
            E = np.exp(Z - Z.max(axis=1, keepdims=True))
            P = E / E.sum(axis=1, keepdims=True)
        else:
            p = np.exp(-np.logaddexp(0.0, -Z[:, 0]))
            P = np.stack([1 - p, p], axis=1)
        check_close(result, P, np.broadcast_to((1 + zmag)[:, None], P.shape), dtype, what)
        assert np.all(np.abs(result.sum(axis=1) - 1) <= 10 * REL[dtype]), f"{what}: rows do not sum to 1"
        return
    ref = logistic_reference(X, y, multi, l2, W_eff, rows, V_eff)
    if method in ("loss", "loss_grad"):
        f = result[0] if method == "loss_grad" else result
        assert isinstance(f, float), f"{what}: loss is a {type(f).__name__}"
        if not either:
            check_close(f, ref["loss"][0], ref["loss"][1], dtype, what)
    if method in ("grad", "loss_grad"):
        g = result[1] if method == "loss_grad" else result
        assert isinstance(g, np.ndarray) and g.shape == np.shape(w) and g.dtype == wd, \
            f"{what}: gradient {getattr(g, 'dtype', None)} {np.shape(g)}, expected {wd} {np.shape(w)}"
        assert not np.shares_memory(g, prob.X)
        if not either:
            check_close(g.reshape(prob.shape), ref["grad"][0], ref["grad"][1], coarse, what, floor)
    if method == "loss_grad" and not either:
        f = prob.loss(w, np.array(rows))
        assert math.isclose(result[0], f, rel_tol=1e-12, abs_tol=1e-300), f"{what}: {result[0]} != loss() {f}"
    if method == "hessian":
        p = prob.n_params
        assert isinstance(result, np.ndarray) and result.shape == (p, p) and result.dtype == wd
        if not either:
            check_close(result, ref["hessian"][0], ref["hessian"][1], coarse, what, floor)
            # the smoothness constants bound the (reference) Hessian's spectrum
            if len(rows) == len(y) and sorted(rows) == list(range(len(y))) and p:
                top = float(np.linalg.eigvalsh(ref["hessian"][0])[-1])
                assert top <= prob.L * (1 + 1e-6) + 1e-300, f"{what}: lambda_max {top} > L {prob.L}"
            if len(set(rows)) == 1 and p:
                top = float(np.linalg.eigvalsh(ref["hessian"][0])[-1])
                assert top <= prob.L_max * (1 + 1e-6) + 1e-300, f"{what}: lambda_max {top} > L_max {prob.L_max}"
    if method == "hvp":
        vd = out_dtype(v, F64)
        assert isinstance(result, np.ndarray) and result.shape == np.shape(v) and result.dtype == vd, \
            f"{what}: hvp {result.dtype} {result.shape}, expected {vd} {np.shape(v)}"
        if not either:
            check_close(result.reshape(-1), ref["hvp"][0], ref["hvp"][1], coarse, what,
                        floor * (1 + float(np.abs(V_eff).sum())))


# ================================================================================ quadratics
def _deterministic_idx(ex):
    """idx for a deterministic problem: None, or anything else (refused)."""
    if ex.chance(85, "idx None"):
        return None, True
    return ex.draw(st.sampled_from([0, [0], np.array([0]), slice(None), np.zeros(0, int), "all"]), "idx"), False


def _quadratic_calls(ex, prob, A, b, c, d, what):
    """loss, grad, hessian, hvp and init of a Quadratic with the given A, b, c (float64)."""
    for t in range(ex.draw(st.integers(1, 4), "calls")):
        method = ex.draw(st.sampled_from(["loss", "grad", "hessian", "hvp"]), "method")
        dtype = ex.dtype()
        wv = ex.rng.integers(-80, 81, d) / 8.0 * ex.draw(st.sampled_from([1.0, 1e-3, 1e3]), "w scale")
        if d and ex.special and ex.chance(20, "w special"):
            wv[ex.draw(st.integers(0, d - 1), "at")] = special_value(
                ex.draw(st.sampled_from(["nan", "inf", "huge", "tiny"]), "which"), dtype)
        w, form = float_input(ex, wv, dtype, "w")
        v, vform = (float_input(ex, ex.rng.integers(-80, 81, d) / 8.0, ex.dtype(), "v")
                    if method == "hvp" else (None, "good"))
        if method == "hvp" and ex.chance(10, "v is w"):
            v, vform = w, form
        idx, idx_ok = _deterministic_idx(ex)
        ok = (float_ok(w) and form != "shape" and np.shape(w) == (d,) and idx_ok
              and (method != "hvp" or (float_ok(v) and vform != "shape" and np.shape(v) == (d,))))
        snap = ex.snapshot()
        args = (w, v, idx) if method == "hvp" else (w, idx)
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = getattr(prob, method)(*args)
        except ERRORS as err:
            refused(ex, snap, err, ok, f"{what}.{method} (call {t})")
            continue
        assert ok, f"{what}.{method} (call {t}) accepted invalid arguments"
        assert not ex.changed_bytes(snap), f"{what}.{method} changed its arguments"
        w64 = as64(w)
        plain = moderate(w64)
        Aa = np.abs(A)
        if method == "loss":
            assert isinstance(out, float)
            if plain:
                check_close(out, 0.5 * w64 @ A @ w64 - b @ w64 + c,
                            1 + 0.5 * np.abs(w64) @ Aa @ np.abs(w64) + np.abs(b) @ np.abs(w64) + abs(c), F64, what)
        elif method == "grad":
            assert out.shape == (d,) and out.dtype == out_dtype(w, F64), f"{what}: grad {out.dtype}"
            if plain:
                check_close(out, A @ w64 - b, 1 + Aa @ np.abs(w64) + np.abs(b), out.dtype, what)
        elif method == "hessian":
            assert out.shape == (d, d) and out.dtype == out_dtype(w, F64)
            check_close(out, A, 1 + Aa, out.dtype, what)
            assert not np.shares_memory(out, prob.A), "hessian returned the problem's own matrix"
        else:
            v64 = as64(v)
            assert out.shape == (d,) and out.dtype == out_dtype(v, F64), f"{what}: hvp {out.dtype}"
            if plain and moderate(v64):
                coarse = F32 if F32 in (out.dtype, out_dtype(w, F64)) else F64
                check_close(out, A @ v64, 1 + Aa @ np.abs(v64), coarse, what)
    w0 = prob.init()
    assert w0.shape == (d,) and w0.dtype == F64


def _eig_reference(A):
    """Eigenvalues from the general (nonsymmetric) routine: an independent path to L and mu."""
    lam = np.sort(np.linalg.eigvals(A).real)
    return float(lam[0]), float(lam[-1])


@entry_point("Quadratic", entry="problems")
def fuzz_quadratic(ex, _):
    """Quadratic(A, b, c): L, mu, minimizer, f_star, then loss/grad/hessian/hvp."""
    d = ex.draw(st.integers(0, 4), "d")
    M = ex.rng.integers(-3, 4, (d, ex.draw(st.integers(0, 4), "rank"))) / 2.0
    shift = ex.draw(st.sampled_from([0.0, 0.5, 1.0, 3.0, -2.0]), "shift")
    Av = M @ M.T + shift * np.eye(d)
    A_ok = True
    fault = ex.draw(st.sampled_from([None] * 8 + ["asym", "nonsquare", "nan", "1d"]), "A fault")
    if fault == "asym" and d >= 2:
        Av[0, 1] += 1.0
        A_ok = False
    elif fault == "nonsquare":
        Av = np.ones((d, d + 1))
        A_ok = False
    elif fault == "nan" and d:
        Av[0, 0] = np.nan
        A_ok = False
    elif fault == "1d":
        Av = np.ones(d)
        A_ok = False
    A, A_form = float_input(ex, Av, ex.dtype(), "A", pct=6)
    b_none = ex.draw(st.booleans(), "b is None")
    bv = ex.rng.integers(-80, 81, d) / 8.0
    if not b_none and d and ex.chance(5, "b nan"):
        bv[0] = np.nan
    b, b_form = (None, "good") if b_none else float_input(ex, bv, ex.dtype(), "b", pct=6)
    c, c_ok = scalar_draw(ex, "c", [0.0, 1.5, -2, np.float64(0.25), np.float32(3.0)],
                          [float("nan"), float("inf"), "x", None, 1j, [1.0]])
    valid = (A_ok and float_ok(A) and A_form != "shape" and np.shape(A) == (d, d)
             and np.all(np.isfinite(as64(A)))
             and (b is None or (float_ok(b) and b_form != "shape" and np.shape(b) == (d,)
                                and np.all(np.isfinite(as64(b)))))
             and c_ok)
    snap = ex.snapshot()
    try:
        prob = Quadratic(A, b, c)
    except ERRORS as err:
        refused(ex, snap, err, valid, "Quadratic()")
        return
    assert valid, "Quadratic accepted invalid arguments"
    assert not ex.changed_bytes(snap), "Quadratic() changed its arguments"
    A64 = as64(A)
    b64 = np.zeros(d) if b is None else as64(b)
    assert prob.shape == (d,) and prob.n_samples == 1
    scale = 1 + float(np.abs(A64).sum())
    if d:
        mu_ref, L_ref = _eig_reference(A64)
        check_close([prob.mu, prob.L], [mu_ref, L_ref], [scale, scale], F64, "Quadratic L, mu")
        if mu_ref > 1e-8 * scale:
            x = prob.minimizer
            assert x is not None and x.shape == (d,), "a positive definite A has a minimizer"
            check_close(A64 @ x, b64, 1 + np.abs(A64) @ np.abs(x) + np.abs(b64), F64, "A x* = b")
            check_close(prob.f_star, 0.5 * x @ A64 @ x - b64 @ x + float(c),
                        1 + 0.5 * np.abs(x) @ np.abs(A64) @ np.abs(x) + np.abs(b64) @ np.abs(x) + abs(float(c)),
                        F64, "f_star")
        elif mu_ref < -1e-8 * scale:
            assert prob.minimizer is None and prob.f_star is None
    _quadratic_calls(ex, prob, A64, b64, float(c), d, "Quadratic")


@entry_point("IllConditionedQuadratic", entry="problems")
def fuzz_ill_conditioned(ex, _):
    """IllConditionedQuadratic(kappa, angle): R diag(1, kappa) R^T, minimum 0 at the origin."""
    kappa, k_ok = scalar_draw(ex, "kappa", [1, 1.0, 1.5, 25.0, 1e3, 10, np.float64(4.0)],
                              [0.5, 0, -1.0, float("nan"), float("inf"), "x", None])
    angle, a_ok = scalar_draw(ex, "angle", [0.0, math.pi / 6, -1.3, 3.0, 100.0, 2],
                              [float("nan"), float("inf"), "x", None])
    try:
        prob = IllConditionedQuadratic(kappa, angle) if ex.draw(st.booleans(), "positional") \
            else IllConditionedQuadratic(kappa=kappa, angle=angle)
    except ERRORS as err:
        assert not (k_ok and a_ok), f"rejected valid arguments: {err!r}"
        return
    assert k_ok and a_ok, "accepted invalid arguments"
    co, si = math.cos(angle), math.sin(angle)
    R = np.array([[co, -si], [si, co]])
    A = R @ np.diag([1.0, float(kappa)]) @ R.T
    assert prob.kappa == float(kappa)
    check_close([prob.mu, prob.L], [1.0, float(kappa)], [kappa, kappa], F64, "IllConditionedQuadratic L, mu")
    check_close(prob.A, A, 1 + np.abs(A), F64, "A")
    assert np.all(np.abs(prob.minimizer) <= 1e-12) and abs(prob.f_star) <= 1e-12
    w0 = prob.init()
    assert np.array_equal(w0, [-4.0, 2.0])
    w0[:] = 7.0
    assert np.array_equal(prob.init(), [-4.0, 2.0]), "init() returned the problem's own start"
    _quadratic_calls(ex, prob, A, np.zeros(2), 0.0, 2, "IllConditionedQuadratic")


# ===================================================================== 2-D test functions
_BEALE_C = (1.5, 2.25, 2.625)


def _f2(name, x, y, a=1.0, b=100.0):
    """Value of the 2-D function (works for complex arguments: used by the complex steps)."""
    if name == "Rosenbrock":
        return (a - x) ** 2 + b * (y - x * x) ** 2
    if name == "Beale":
        return sum((c - x + x * _pow(y, k)) ** 2 for k, c in zip((1, 2, 3), _BEALE_C))
    return 0.5 * (x * x - y * y)


def _pow(y, k):
    """y**k by multiplication (exact steps for complex y too)."""
    out = 1.0
    for _ in range(k):
        out = out * y
    return out


def _g2(name, x, y, a=1.0, b=100.0):
    """Gradient, derived here: Rosenbrock d/dx = 2(x - a) + 4 b x (x^2 - y), d/dy = 2 b (y - x^2);
    Beale: with r_k = c_k - x + x y^k, d/dx = sum 2 r_k (y^k - 1), d/dy = sum 2 r_k k x y^(k-1)."""
    if name == "Rosenbrock":
        return np.array([2 * (x - a) + 4 * b * x * (x * x - y), 2 * b * (y - x * x)])
    if name == "Beale":
        gx = gy = 0.0
        for k, c in zip((1, 2, 3), _BEALE_C):
            yk = _pow(y, k)
            r = c - x + x * yk
            gx = gx + 2 * r * (yk - 1)
            gy = gy + 2 * r * k * x * _pow(y, k - 1)
        return np.array([gx, gy])
    return np.array([x, -y])


def _magnitudes(name, x, y, a=1.0, b=100.0):
    """(f, grad, hessian) of the same expressions with every term non-negative."""
    x, y, a, b = abs(x), abs(y), abs(a), abs(b)
    if name == "Rosenbrock":
        u = y + x * x
        return ((a + x) ** 2 + b * u * u, np.array([2 * (a + x) + 4 * b * x * u, 2 * b * u]),
                np.array([[2 + 4 * b * u + 8 * b * x * x, 4 * b * x], [4 * b * x, 2 * b]]))
    if name == "Beale":
        f = 0.0
        g = np.zeros(2)
        H = np.zeros((2, 2))
        for k, c in zip((1, 2, 3), _BEALE_C):
            yk = y ** k
            r = c + x + x * yk
            rx, ry = yk + 1, k * x * y ** (k - 1)
            f += r * r
            g += [2 * r * rx, 2 * r * ry]
            ryy = k * (k - 1) * x * y ** (k - 2) if k >= 2 else 0.0
            H += [[2 * rx * rx, 2 * (rx * ry + r * k * y ** (k - 1))],
                  [2 * (rx * ry + r * k * y ** (k - 1)), 2 * (ry * ry + r * ryy)]]
        return f, g, H
    return 0.5 * (x * x + y * y), np.array([x, y]), np.eye(2)


def _reference_2d(name, x, y, a, b):
    """f, grad (checked against a complex step of f) and the Hessian (complex steps of grad)."""
    h = 1e-30
    f = _f2(name, x, y, a, b)
    g = _g2(name, x, y, a, b)
    step = np.array([_f2(name, x + 1j * h, y, a, b).imag, _f2(name, x, y + 1j * h, a, b).imag]) / h
    fm, gm, Hm = _magnitudes(name, x, y, a, b)
    check_close(g, step, gm, F64, f"{name}: the reference gradient against complex steps",
                floor=1e-250)           # x h underflows for subnormal x
    H = np.array([_g2(name, x + 1j * h, y, a, b).imag, _g2(name, x, y + 1j * h, a, b).imag]).T / h
    return (f, fm), (g, gm), (H, Hm)


@entry_point("Rosenbrock", "Beale", "Saddle", entry="problems")
def fuzz_function_2d(ex, name):
    """The 2-D test functions: construction, loss/grad on points and grids, hessian, hvp."""
    a = b = None
    if name == "Rosenbrock":
        a, a_ok = scalar_draw(ex, "a", [1.0, 2.5, -1.0, 0.0, 3, np.float64(0.5)], ["x", None, 1j, [1.0]])
        b, b_ok = scalar_draw(ex, "b", [100.0, 10.0, 1.0, 0.0, 5], ["x", None, 2j])
        valid = a_ok and b_ok
        try:
            prob = Rosenbrock(a, b) if ex.draw(st.booleans(), "positional") else Rosenbrock(a=a, b=b)
        except ERRORS as err:
            assert not valid, f"rejected valid arguments: {err!r}"
            return
        assert valid, "accepted invalid arguments"
        a, b = float(a), float(b)
        assert np.array_equal(prob.minimizer, [a, a * a]) and prob.f_star == 0.0
    else:
        if ex.chance(5, "extra argument"):
            try:
                {"Beale": Beale, "Saddle": Saddle}[name](1.0)
            except TypeError:
                return
            raise AssertionError(f"{name}(1.0) accepted an argument")
        prob = Beale() if name == "Beale" else Saddle()
    start = {"Rosenbrock": (-1.5, 2.0), "Beale": (1.0, 1.5), "Saddle": (1.0, 1e-3)}[name]
    w0 = prob.init()
    assert w0.dtype == F64 and np.array_equal(w0, start) and prob.shape == (2,)
    w0[0] = 99.0
    assert np.array_equal(prob.init(), start), "init() returned the problem's own start"
    if name == "Beale":
        assert np.array_equal(prob.minimizer, [3.0, 0.5]) and prob.f_star == 0.0
    for t in range(ex.draw(st.integers(1, 4), "calls")):
        method = ex.draw(st.sampled_from(["loss", "grad", "hessian", "hvp"]), "method")
        grid = method in ("loss", "grad") and ex.chance(30, "grid")
        shape = (2,) + tuple(ex.draw(st.lists(st.integers(0, 3), min_size=1, max_size=2), "grid")) if grid else (2,)
        dtype = ex.dtype()
        wv = ex.rng.integers(-80, 81, shape) / 8.0 * ex.draw(st.sampled_from([1.0, 0.125, 8.0]), "scale")
        if ex.special and ex.chance(20, "w special") and wv.size:
            wv.flat[ex.draw(st.integers(0, wv.size - 1), "at")] = special_value(
                ex.draw(st.sampled_from(["nan", "inf", "-inf", "huge", "tiny", "-0"]), "which"), dtype)
        w, form = float_input(ex, wv, dtype, "w")
        v, vform = (float_input(ex, ex.rng.integers(-80, 81, 2) / 8.0, ex.dtype(), "v")
                    if method == "hvp" else (None, "good"))
        idx, idx_ok = _deterministic_idx(ex)
        wshape = np.shape(w) if float_ok(w) else None
        ok = (float_ok(w) and idx_ok
              and (wshape[:1] == (2,) if method in ("loss", "grad") else wshape == (2,))
              and (method != "hvp" or (float_ok(v) and vform != "shape" and np.shape(v) == (2,))))
        snap = ex.snapshot()
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                out = getattr(prob, method)(*((w, v, idx) if method == "hvp" else (w, idx)))
        except ERRORS as err:
            refused(ex, snap, err, ok, f"{name}.{method} (call {t})")
            continue
        assert ok, f"{name}.{method} (call {t}) accepted invalid arguments {np.shape(w)} {idx!r}"
        assert not ex.changed_bytes(snap), f"{name}.{method} changed its arguments"
        w64 = as64(w)
        pts = w64.reshape(2, -1)
        wd = out_dtype(w, F64)
        if method == "loss":
            if w64.shape == (2,):
                assert isinstance(out, float)
            else:
                assert isinstance(out, np.ndarray) and out.shape == w64.shape[1:]
        elif method == "grad":
            assert out.shape == w64.shape and out.dtype == wd, f"{name}: grad {out.dtype} {out.shape}"
        elif method == "hessian":
            assert out.shape == (2, 2) and out.dtype == wd
        else:
            assert out.shape == (2,) and out.dtype == out_dtype(v, F64)
        flat = np.asarray(out, np.float64).reshape(-1) if method in ("loss",) else \
            np.asarray(out, np.float64).reshape(2, -1) if method == "grad" else np.asarray(out, np.float64)
        for j in range(pts.shape[1]):
            x, y = pts[:, j]
            if not moderate(pts[:, j]):
                continue
            (f, fm), (g, gm), (H, Hm) = _reference_2d(name, x, y, 1.0 if a is None else a,
                                                      100.0 if b is None else b)
            what = f"{name}.{method} at ({x}, {y})"
            if method == "loss":
                check_close(flat[j], f, fm + 1, F64, what)
            elif method == "grad":
                check_close(flat[:, j], g, gm + 1, wd, what)
            elif method == "hessian":
                check_close(flat, H, Hm + 1, wd, what)
                assert np.array_equal(flat, flat.T), f"{what}: not symmetric"
            else:
                v64 = as64(v)
                if moderate(v64):
                    check_close(flat, H @ v64, Hm @ np.abs(v64) + 1,
                                F32 if F32 in (wd, out_dtype(v, F64)) else F64, what)


# ================================================================================== datasets
_DATA = Path(datasets.__file__).parent / "data"
_EXPECTED = {}


def standardize_reference(X):
    """(Z, magnitude) of Z[:, j] = (X[:, j] - mean_j) / std_j (ddof 0; exactly 0 for a constant
    column), with the exactly rounded column sums of math.fsum."""
    n, d = X.shape
    mean = np.array([math.fsum(X[:, j]) / n for j in range(d)])
    dev = X - mean
    std = np.sqrt(np.array([math.fsum(dev[:, j] ** 2) / n for j in range(d)]))
    constant = np.all(X == X[:1], axis=0)
    safe = np.where(constant | (std == 0), 1.0, std)
    Z = np.where(constant, 0.0, dev / safe)
    spread = (np.abs(X).max(axis=0, initial=0.0) + np.abs(mean)) / safe
    # (n + 2) u max|x| / std for x - mean, and as much again relative to Z for std; REL = 1e-11
    # is 1e5 u, so 1e-3 n leaves a factor of 100
    magnitude = np.where(constant, 0.0, 1 + 1e-3 * n * (1 + np.abs(Z).max(axis=0, initial=0.0)) * spread)
    return Z, np.broadcast_to(magnitude, Z.shape)


def expected_dataset(name, standardize, intercept):
    """(X, y) that load_<name> must return, from the packaged file read here."""
    key = (name, standardize, intercept)
    if key not in _EXPECTED:
        with np.load(_DATA / f"{name}.npz") as f:
            X, y = np.array(f["X"], np.float64), np.array(f["y"]).astype(np.int64)
        if name == "breast_cancer":
            assert X.shape == (569, 30) and np.bincount(y).tolist() == [212, 357]
        else:
            assert X.shape == (1797, 64) and sorted(set(y.tolist())) == list(range(10))
            assert np.array_equal(X, np.round(X)) and X.min() == 0 and X.max() == 16
        mag = np.zeros_like(X)
        if standardize:
            X, mag = standardize_reference(X)
        if intercept:
            X = np.hstack([X, np.ones((len(X), 1))])
            mag = np.hstack([mag, np.zeros((len(X), 1))])
        _EXPECTED[key] = (X, y, np.array(mag))
    return _EXPECTED[key]


_FLAG_GOOD = [True, False, np.True_, np.False_]
_FLAG_BAD = ["no", "False", 1, 0, None, 1.0]


@entry_point("load_breast_cancer", "load_digits", entry="datasets")
def fuzz_load(ex, name):
    """The loaders: keyword flags (booleans), against the packaged data standardized here."""
    loader = getattr(datasets, name)
    kwargs, valid = {}, True
    for flag in ("standardize", "intercept"):
        if ex.draw(st.booleans(), f"pass {flag}"):
            kwargs[flag], ok = scalar_draw(ex, flag, _FLAG_GOOD, _FLAG_BAD, pct=15)
            valid = valid and ok
    args = ()
    if ex.chance(5, "misuse"):
        if ex.draw(st.booleans(), "positional"):
            args = (True,)
        else:
            kwargs["scale"] = True
        valid = False
    try:
        X, y = loader(*args, **kwargs)
    except ERRORS as err:
        assert not valid, f"{name} rejected {kwargs}: {err!r}"
        return
    assert valid, f"{name} accepted {args} {kwargs}"
    eX, ey, mag = expected_dataset(name[len("load_"):], bool(kwargs.get("standardize", True)),
                                   bool(kwargs.get("intercept", False)))
    assert X.dtype == F64 and X.flags.c_contiguous and X.shape == eX.shape
    assert y.dtype == np.int64 and np.array_equal(y, ey)
    check_close(X, eX, mag, F64, name)
    if ex.chance(30, "results are fresh"):
        X[...] = -1.0
        y[...] = -1
        X2, y2 = loader(**kwargs)
        assert np.array_equal(y2, ey) and not np.shares_memory(X2, X)
        check_close(X2, eX, mag, F64, f"{name} after changing an earlier result")


@entry_point("standardize", entry="datasets")
def fuzz_standardize(ex, _):
    """datasets.standardize(X): a 2-D real array; columns standardized, constant ones 0."""
    n = ex.draw(st.integers(0, 40), "n")
    d = ex.draw(st.integers(0, 5), "d")
    kind = ex.draw(st.sampled_from(["grid", "normal", "constant", "offset", "mixed"]), "values")
    V = ex.rng.integers(-80, 81, (n, d)) / 8.0
    if kind in ("normal", "mixed"):
        V = ex.rng.standard_normal((n, d)) * ex.draw(st.sampled_from([1.0, 1e-8, 1e8]), "spread")
    if kind in ("constant", "mixed") and d:
        for j in range(d):
            if ex.draw(st.booleans(), "constant column"):
                V[:, j] = ex.draw(st.sampled_from([0.1, 1 / 3, -7.3, 1e10 + 0.1, 0.0, 2.5]), "constant")
    if kind == "offset":
        V += ex.draw(st.sampled_from([1e8, -3e5, 0.7]), "offset")
    if n * d and ex.special and ex.chance(20, "special"):
        V.flat[ex.draw(st.integers(0, n * d - 1), "at")] = special_value(
            ex.draw(st.sampled_from(["nan", "inf", "huge", "tiny"]), "which"), F64)
    form = ex.draw(st.sampled_from(["float64"] * 4 + ["float32", "int64", "bool", "float16", "list",
                                                      "fortran", "strided", "readonly", "swapped",
                                                      "object", "complex", "str", "1d", "3d", "0d", "none"]), "form")
    valid = True
    if form in ("float64", "float32", "readonly"):
        with np.errstate(over="ignore"):
            X = arena_copy(ex, V.astype(F32 if form == "float32" else F64))
        X.flags.writeable = form != "readonly"
    elif form == "fortran":
        X = arena_copy(ex, V.T.copy()).T
    elif form == "strided":
        X = arena_copy(ex, np.repeat(V, 2, axis=1))[:, ::2]
    elif form == "swapped":
        X = arena_copy(ex, V.astype(F64.newbyteorder()))
    elif form == "int64":
        X = arena_copy(ex, np.nan_to_num(V * 8).clip(-2**40, 2**40).astype(np.int64))
    elif form == "bool":
        X = arena_copy(ex, V > 0)
    elif form == "float16":
        with np.errstate(over="ignore"):
            X = arena_copy(ex, V.astype(np.float16))
    elif form == "list":
        X = V.tolist()
    elif form == "object":
        X = V.astype(object)
    elif form == "complex":
        X, valid = V.astype(np.complex128), False
    elif form == "str":
        X, valid = V.astype(str), None          # numeric strings: either parse or refuse
    elif form == "1d":
        X, valid = V.reshape(-1), False
    elif form == "3d":
        X, valid = V.reshape(n, d, 1), False
    elif form == "0d":
        X, valid = np.float64(1.5), False
    else:
        X, valid = None, False
    if valid and np.ndim(X) != 2:         # the list of an (0, d) array is [], 1-D
        valid = False
    before = np.array(X, copy=True) if isinstance(X, np.ndarray) else None
    snap = ex.snapshot()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            Z = datasets.standardize(X)
    except ERRORS as err:
        refused(ex, snap, err, valid, "standardize")
        return
    assert valid is not False, f"standardize accepted {form} input"
    assert not ex.changed_bytes(snap) and (before is None or same_values(X, before)), \
        "standardize changed its input"
    X64 = np.asarray(X, np.float64) if form != "str" else np.asarray(X).astype(np.float64)
    assert isinstance(Z, np.ndarray) and Z.dtype == F64 and Z.flags.c_contiguous and Z.shape == X64.shape
    assert not (isinstance(X, np.ndarray) and np.shares_memory(Z, X)), "standardize returned a view of its input"
    if n == 0:
        return
    cols = [j for j in range(d) if np.all(np.isfinite(X64[:, j])) and np.abs(X64[:, j]).max() <= 1e150]
    ref, mag = standardize_reference(X64[:, cols])
    check_close(Z[:, cols], ref, mag, F64, f"standardize ({kind}, {form})")
    constant = [j for j in cols if np.all(X64[:, j] == X64[0, j])]
    assert np.all(Z[:, constant] == 0), "a constant column is not all zeros"


# ==================================================================================== train
class Spy:
    """A problem that forwards to another and records the sample indices of every call."""

    def __init__(self, prob):
        self.prob, self.calls = prob, []
        self.n_samples, self.shape, self.dtype = prob.n_samples, prob.shape, prob.dtype
        self.n_params = prob.n_params
        if hasattr(prob, "loss_grad"):
            self.loss_grad = self._loss_grad

    def _note(self, what, idx):
        self.calls.append((what, None if idx is None else np.array(idx, copy=True)))

    def loss(self, w, idx=None):
        self._note("loss", idx)
        return self.prob.loss(w, idx)

    def grad(self, w, idx=None):
        self._note("grad", idx)
        return self.prob.grad(w, idx)

    def hessian(self, w, idx=None):
        self._note("hessian", idx)
        return self.prob.hessian(w, idx)

    def _loss_grad(self, w, idx=None):
        self._note("loss_grad", idx)
        return self.prob.loss_grad(w, idx)


def small_problem(ex, kinds=("binary", "binary", "multinomial", "quadratic", "rosenbrock", "saddle", "ill"),
                  max_n=24, dtypes=(F64, F32)):
    kind = ex.draw(st.sampled_from(kinds), "problem")
    if kind in ("binary", "multinomial"):
        n = ex.draw(st.integers(1, max_n), "n")
        d = ex.draw(st.integers(1, 3), "d")
        X = arena_copy(ex, ex.rng.standard_normal((n, d)).astype(ex.draw(st.sampled_from(dtypes), "X dtype")))
        K = 2 if kind == "binary" else 3
        return LogisticRegression(X, _labels(ex, n, K), l2=ex.draw(st.sampled_from([0.0, 0.01, 0.1]), "l2"),
                                  n_classes=K)
    if kind == "quadratic":
        d = ex.draw(st.integers(1, 3), "d")
        M = ex.rng.integers(-2, 3, (d, d)) / 2.0
        return Quadratic(M @ M.T + np.eye(d), ex.rng.integers(-8, 9, d) / 4.0, 0.5)
    return {"rosenbrock": Rosenbrock, "saddle": Saddle, "ill": lambda: IllConditionedQuadratic(5.0)}[kind]()


_OPTIMIZERS = ("SGD", "SGD", "momentum", "Adam", "Adagrad", "RMSprop", "SVRG", "Newton", "Newton")


def draw_optimizer_spec(ex):
    name = ex.draw(st.sampled_from(_OPTIMIZERS), "optimizer")
    if name == "SGD":
        return optim.SGD, dict(lr=ex.draw(st.sampled_from([0.05, 0.2, 0.5, 5.0]), "lr"))
    if name == "momentum":
        return optim.SGD, dict(lr=0.05, momentum=0.9, nesterov=ex.draw(st.booleans(), "nesterov"))
    if name == "Adam":
        return optim.Adam, dict(lr=0.05)
    if name == "Adagrad":
        return optim.Adagrad, dict(lr=0.1)
    if name == "RMSprop":
        return optim.RMSprop, dict(lr=0.01)
    if name == "SVRG":
        return optim.SVRG, dict(lr=0.05, snapshot_every=ex.draw(st.sampled_from([None, 1, 3]), "every"))
    return optim.Newton, dict(lr=ex.draw(st.sampled_from([1.0, 0.5]), "lr"),
                              damping=ex.draw(st.sampled_from([0.0, 0.1]), "damping"),
                              line_search=ex.draw(st.sampled_from([None, "armijo"]), "line search"))


def start_point(ex, prob, dtype):
    w = np.asarray(prob.init(), np.float64)
    if isinstance(prob, (LogisticRegression, Quadratic)) and not isinstance(prob, IllConditionedQuadratic):
        w = w + ex.rng.integers(-8, 9, w.shape) / 8.0
    shape = prob.shape if ex.draw(st.booleans(), "shaped parameter") else (prob.n_params,)
    return arena_copy(ex, w.astype(dtype).reshape(shape))


REC_KEYS = ("step", "epoch", "loss", "grad_norm", "grad_evals", "hess_evals", "loss_evals")


def _check_batches(batches, n, batch, shuffle):
    """Each epoch visits every sample once, in batches of `batch` (the last one smaller)."""
    spe = -(-n // batch)
    for e in range(0, len(batches), spe):
        epoch = batches[e:e + spe]
        seen = []
        for j, idx in enumerate(epoch):
            size = batch if j < spe - 1 else n - (spe - 1) * batch
            assert idx.ndim == 1 and idx.dtype.kind in "iu" and len(idx) == size, \
                f"batch {e + j}: {idx!r}, expected {size} indices"
            if not shuffle:
                assert np.array_equal(idx, np.arange(j * batch, j * batch + size)), \
                    f"shuffle=False: batch {e + j} is {idx}"
            seen += idx.tolist()
        assert len(set(seen)) == len(seen) and all(0 <= i < n for i in seen), \
            f"an epoch visits a sample twice: {sorted(seen)}"
        if len(epoch) == spe:
            assert sorted(seen) == list(range(n)), "an epoch misses samples"


def replay(prob, cls, hyper, w_start, a, batches, hessian_idx, stop_rule):
    """The documented loop, step by step with a twin optimizer on the recorded batches.

    Returns (records, stop reasons at the end, the final parameter, w at each record)."""
    n = int(prob.n_samples)
    batch = n if a["batch_size"] is None else min(int(a["batch_size"]), n)
    full = batch >= n
    spe = -(-n // batch)
    every = a["record_every"] or max(1, spe // 10)
    hb = a["hessian_batch_size"]
    v = np.array(w_start, copy=True)
    twin = cls([v], **hyper)
    if a["schedule"] is not None:
        for group in twin.param_groups:
            group["lr"] = a["schedule"]
    svrg, newton = cls is optim.SVRG, cls is optim.Newton
    rec = {k: [] for k in REC_KEYS}
    ws = []
    cnt = dict(step=0, grad_evals=0, hess_evals=0, loss_evals=0)
    bq, hq = list(batches), list(hessian_idx)
    since = [0]

    def record():
        f = prob.loss(v)
        gn = float(np.linalg.norm(np.asarray(prob.grad(v), np.float64)))
        for k in ("step", "grad_evals", "hess_evals", "loss_evals"):
            rec[k].append(cnt[k])
        rec["epoch"].append(cnt["step"] * batch / n)
        rec["loss"].append(float(f))
        rec["grad_norm"].append(gn)
        ws.append(v.copy())
        why = set()
        if not (math.isfinite(f) and math.isfinite(gn)):
            why.add("diverged")
        if a["gtol"] is not None and gn <= a["gtol"]:
            why.add("gtol")
        if a["ftol"] is not None and f - a["f_star"] <= a["ftol"]:
            why.add("ftol")
        if stop_rule is not None and stop_rule({k: rec[k][-1] for k in REC_KEYS}):
            why.add("callback")
        return why

    def one_step(idx):
        m = n if idx is None else len(idx)
        if svrg:
            if twin.needs_snapshot or (hyper["snapshot_every"] is None and since[0] >= spe):
                twin.snapshot([prob.grad(v)])
                cnt["grad_evals"] += n
                since[0] = 0
            twin.step([prob.grad(v, idx)], [prob.grad(twin.snapshot_params[0], idx)])
            cnt["grad_evals"] += 2 * m
            since[0] += 1
        elif newton:
            f0, g = prob.loss(v, idx), prob.grad(v, idx)
            assert hq, "train evaluated fewer Hessians than steps"
            hidx = hq.pop(0)
            if hb is None:
                assert (hidx is None and idx is None) or np.array_equal(hidx, idx), \
                    f"the Hessian was not evaluated on the batch: {hidx} vs {idx}"
            elif hb >= n:
                assert hidx is None, f"hessian_batch_size {hb} >= n: the Hessian must use every sample"
            else:
                assert hidx.ndim == 1 and len(hidx) == hb and len(set(hidx.tolist())) == hb \
                    and hidx.min() >= 0 and hidx.max() < n, f"a Hessian subsample of {hb}: {hidx}"
            H = prob.hessian(v, hidx)
            cnt["grad_evals"] += m
            cnt["hess_evals"] += n if hidx is None else len(hidx)

            def closure():
                cnt["loss_evals"] += m
                return prob.loss(v, idx)
            twin.step([g], [H], closure=closure, loss=f0)
        else:
            twin.step([prob.grad(v, idx)])
            cnt["grad_evals"] += m
        cnt["step"] += 1

    why = record()
    epoch = 0
    while not why and epoch < a["epochs"]:
        for _ in range(spe):
            if full:
                idx = None
            else:
                assert bq, f"train stopped after {cnt['step']} steps; the documented loop goes on"
                idx = bq.pop(0)
            one_step(idx)
            if a["max_evals"] is not None and cnt["grad_evals"] >= a["max_evals"]:
                why = record() or {"max_evals"}
                break
            if cnt["step"] % every == 0:
                why = record()
                if why:
                    break
        epoch += 1
    if not why:
        why = {"epochs"}
        if rec["step"][-1] != cnt["step"]:
            why = record() or {"epochs"}
    assert not bq, f"train took more steps than the documented loop ({cnt['step']})"
    assert not hq, "train evaluated more Hessians than steps"
    return rec, why, v, ws, dict(batch_size=batch, n_samples=n, steps_per_epoch=spe)


def _draw_train_args(ex, prob, cls, w):
    """(keyword arguments, the values replay() needs, valid, stop rule)."""
    n = int(prob.n_samples)
    newton = cls is optim.Newton
    a, kw, valid = {}, {}, True

    def pick(key, good, bad, pct=6, default=None):
        nonlocal valid
        if ex.chance(60, f"pass {key}"):
            value, ok = scalar_draw(ex, key, good, bad, pct=pct)
            kw[key] = value
            valid = valid and ok
            a[key] = value
        else:
            a[key] = default
    pick("epochs", [1, 2, 3, np.int64(2)], [0, -1, 1.5, True, "2", None], default=10)
    if "epochs" not in kw:
        kw["epochs"] = a["epochs"] = ex.draw(st.sampled_from([1, 2, 3]), "epochs")
    pick("batch_size", [None, 1, 2, 5, n, n + 3, np.int64(3)], [0, -1, 2.5, True, "4"])
    pick("shuffle", [True, False, np.True_], ["no", 1, None], default=True)
    pick("seed", [0, 7, 2**40, [1, 2], "generator"], [-1, "x", 1.5], default=0)
    gen = None
    if a["seed"] == "generator":
        gen = np.random.default_rng(ex.draw(st.integers(0, 99), "generator seed"))
        kw["seed"] = gen
    pick("schedule", [None, S.inverse_time(0.1, decay=0.5), "lambda"], [0.1, "x"])
    if isinstance(a["schedule"], str) and a["schedule"] == "lambda":
        kw["schedule"] = a["schedule"] = lambda t: 0.1 / (1 + t)
    pick("gtol", [None, 0.0, 1e-3, 0.5, 1], [-1.0, float("nan"), float("inf"), "x", True])
    pick("ftol", [None, 0.0, 1e-2, 0.5], [-1.0, float("nan"), "x"])
    f0 = float(prob.loss(w))
    pick("f_star", [None, 0.0, f0 - 1.0 if math.isfinite(f0) else 0.0, -3],
         [float("nan"), float("inf"), "x"])
    if a["ftol"] is not None and a["f_star"] is None:
        valid = False
    pick("max_evals", [None, 1, 5, 17, 100], [0, -3, 2.5, True])
    pick("record_every", [None, 1, 2, 5], [0, -1, 1.5, True])
    pick("hessian_batch_size", [None, 1, 3, n, n + 2] if newton else [None], [0, 1.5] + ([] if newton else [3]))
    pick("progress", [None, False], ["x", 1])
    stop_rule = None
    if ex.chance(25, "callback"):
        if ex.chance(8, "bad callback"):
            kw["callback"] = ex.draw(st.sampled_from([3, "x"]), "callback")
            valid = False
        else:
            limit = ex.draw(st.integers(0, 6), "stop at step")
            stop_rule = (lambda r: r["step"] >= limit) if ex.draw(st.booleans(), "by step") else \
                (lambda r: r["loss"] < f0 - 0.01)
    return kw, a, valid, stop_rule, gen


def _bad_train_target(ex, prob, w):
    """A problem or optimizer that train must refuse (or None)."""
    if not ex.chance(8, "bad target"):
        return None
    kind = ex.draw(st.sampled_from(["object", "None", "no grad", "two params", "wrong shape", "not optimizer"]), "bad")
    if kind in ("object", "None", "no grad"):
        class NoGrad:
            n_samples, shape, n_params = prob.n_samples, prob.shape, prob.n_params

            def loss(self, w, idx=None):
                return prob.loss(w, idx)
        return "problem", {"object": object(), "None": None, "no grad": NoGrad()}[kind]
    if kind == "two params":
        return "optimizer", optim.SGD([w, arena_copy(ex, np.zeros(2))], lr=0.1)
    if kind == "wrong shape":
        return "optimizer", optim.SGD([arena_copy(ex, np.zeros(prob.n_params + 1))], lr=0.1)
    return "optimizer", object()


@entry_point("train", entry="train")
def fuzz_train(ex, _):
    """train(problem, optimizer, ...): the History equals a replay of the documented loop."""
    ex.special = False
    prob = small_problem(ex)
    cls, hyper = draw_optimizer_spec(ex)
    dtype = ex.dtype()
    w = start_point(ex, prob, dtype)
    w_start = w.copy()
    opt = cls([w], **hyper)
    kw, a, valid, stop_rule, gen = _draw_train_args(ex, prob, cls, w)
    seen = []
    if stop_rule is not None:
        def callback(record):
            seen.append(({k: record[k] for k in REC_KEYS}, np.array(record["w"], copy=True)))
            assert record["w"] is w, "the callback's w is not the parameter"
            return stop_rule(record)
        kw["callback"] = callback
    spy = Spy(prob)
    target_prob, target_opt = spy, opt
    bad = _bad_train_target(ex, prob, w)
    if bad is not None:
        valid = False
        if bad[0] == "problem":
            target_prob = bad[1]
        else:
            target_opt = bad[1]
    lrs = [g["lr"] for g in opt.param_groups]
    sd = opt.state_dict()
    sd = {"param_groups": [dict(g) for g in sd["param_groups"]],
          "state": {i: {k: (v.copy() if isinstance(v, np.ndarray) else v) for k, v in e.items()}
                    for i, e in sd["state"].items()}}
    gen_state = None if gen is None else repr(gen.bit_generator.state)
    snap = ex.snapshot()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                hist = train(target_prob, target_opt, **kw)
    except ERRORS as err:
        refused(ex, snap, err, valid, f"train({kw})", extra=[
            (lambda: same_state_dict(sd, opt.state_dict()), "changed the optimizer's state"),
            (lambda: all(g["lr"] is lr for g, lr in zip(opt.param_groups, lrs)), "changed the lr"),
            (lambda: gen is None or repr(gen.bit_generator.state) == gen_state, "used the generator")])
        return
    assert valid, f"train accepted invalid arguments {kw}"
    assert isinstance(hist, History)
    calls = spy.calls
    n = int(prob.n_samples)
    batch = n if a["batch_size"] is None else min(int(a["batch_size"]), n)
    steps = [idx for what, idx in calls if what in ("grad", "loss_grad") and idx is not None]
    if cls is optim.SVRG:
        assert len(steps) % 2 == 0 and all(np.array_equal(x, y) for x, y in zip(steps[::2], steps[1::2])), \
            "SVRG's two gradients per step are not on the same batch"
        steps = steps[::2]
    _check_batches(steps, n, batch, bool(a["shuffle"]))
    hess = [idx for what, idx in calls if what == "hessian"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            rec, why, v, ws, info = replay(prob, cls, hyper, w_start, a, steps, hess, stop_rule)
    for k in REC_KEYS:
        got = getattr(hist, k)
        assert got.shape == (len(rec[k]),) and np.array_equal(got, rec[k], equal_nan=True), \
            f"History.{k} = {got}, the documented loop gives {rec[k]}"
    assert hist.step.dtype == np.int64 and hist.loss.dtype == np.float64
    assert hist.time.shape == hist.step.shape and hist.time[0] == 0 and np.all(np.diff(hist.time) >= 0)
    assert hist.stop_reason in why, f"stopped for {hist.stop_reason!r}, the rules say {why}"
    assert hist.converged == (hist.stop_reason in ("gtol", "ftol"))
    assert np.array_equal(w, v, equal_nan=True), "the parameter differs from the replay"
    assert np.array_equal(hist.w, w, equal_nan=True) and not np.shares_memory(hist.w, w)
    assert hist.info == info, f"info {hist.info}, expected {info}"
    if a["schedule"] is not None:
        assert all(g["lr"] is a["schedule"] for g in opt.param_groups)
    for record, wr in seen:
        j = rec["step"].index(record["step"])
        for k in REC_KEYS:
            assert record[k] == rec[k][j] or (k in ("loss", "grad_norm") and math.isnan(rec[k][j])), \
                f"callback saw {k} = {record[k]}, the record is {rec[k][j]}"
        assert np.array_equal(wr, ws[j], equal_nan=True)


# ============================================================================== convergence
def _solve_replay(prob, w0, max_iter):
    """solve's documented rule: Newton with an Armijo line search from w0 (float64 copy) until
    the gradient norm is 0 or has not reached a new low for two steps; the best iterate."""
    w = np.array(prob.init() if w0 is None else w0, dtype=np.float64, copy=True, order="C")
    opt = optim.Newton([w], line_search="armijo")
    f, g = prob.loss(w), prob.grad(w)
    best = (w.copy(), float(f), float(np.linalg.norm(g)))
    stalls = 0
    for _ in range(max_iter):
        if best[2] == 0:
            break
        opt.step([g], [prob.hessian(w)], closure=lambda: prob.loss(w), loss=f)
        f, g = prob.loss(w), prob.grad(w)
        gn = float(np.linalg.norm(g))
        if gn < best[2]:
            best, stalls = (w.copy(), float(f), gn), 0
        else:
            stalls += 1
            if stalls >= 2:
                break
    return best


@entry_point("solve", entry="convergence")
def fuzz_solve(ex, _):
    """convergence.solve(problem, w0, max_iter): the replayed Newton iteration; on strongly
    convex problems f* accurate to rounding."""
    prob = small_problem(ex, kinds=("binary", "multinomial", "quadratic", "rosenbrock", "ill"), max_n=20,
                         dtypes=(F64,))
    w0, w0_ok = None, True
    if ex.draw(st.booleans(), "pass w0"):
        values = np.asarray(prob.init(), np.float64) + ex.rng.integers(-8, 9, prob.shape) / 8.0
        if ex.chance(8, "w0 special") and values.size:
            values.flat[0] = ex.draw(st.sampled_from([np.nan, np.inf, 1e300]), "which")
            w0_ok = None
        w0, form = float_input(ex, values, ex.dtype(), "w0")
        # np.array(w0, float64) takes any real array or list of the right shape
        real = isinstance(w0, list) or (isinstance(w0, np.ndarray) and w0.dtype.kind in "biuf")
        if not (real and np.shape(w0) in (tuple(prob.shape), (prob.n_params,))):
            w0_ok = False
        if w0 is None:                 # the "none" form: w0=None is the default start
            w0_ok = True
    kw = {} if w0 is None and ex.draw(st.booleans(), "omit None") else {"w0": w0}
    target = prob
    if ex.chance(4, "bad problem"):
        target, w0_ok = ex.draw(st.sampled_from([None, object(), Saddle]), "bad problem"), False
    max_iter, mi_ok = scalar_draw(ex, "max_iter", [0, 1, 3, 100, np.int64(5)], [-1, 2.5, "x", None, True])
    if ex.draw(st.booleans(), "pass max_iter") or not mi_ok:
        kw["max_iter"] = max_iter
    else:
        max_iter = 100
    valid = w0_ok if mi_ok else False
    snap = ex.snapshot()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                w_star, f_star, gn = convergence.solve(target, **kw)
    except ERRORS as err:
        refused(ex, snap, err, valid, f"solve({kw})")
        return
    assert valid is not False, f"solve accepted invalid arguments {kw}"
    assert not ex.changed_bytes(snap), "solve changed w0"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with np.errstate(all="ignore"):
            best = _solve_replay(prob, None if w0 is None else np.asarray(w0, np.float64), int(max_iter))
    assert np.array_equal(w_star, best[0], equal_nan=True) and w_star.dtype == F64
    assert (f_star, gn) == best[1:] or (math.isnan(f_star) and math.isnan(best[1])), \
        f"solve returned f* {f_star}, |g| {gn}; the replay {best[1:]}"
    assert f_star == prob.loss(w_star) or math.isnan(f_star)
    # "f* accurate to rounding": for a mu-strongly convex f, f(w) - f* <= |grad f(w)|^2 / (2 mu)
    mu = prob.l2 if isinstance(prob, LogisticRegression) else getattr(prob, "mu", 0.0)
    if mu and mu > 0 and max_iter >= 50 and valid is True:
        assert gn * gn / (2 * mu) <= 1e-13 * (1 + abs(f_star)), \
            f"solve stopped at |g| = {gn}: f* is not accurate to rounding (mu = {mu})"


@entry_point("default_problem", entry="convergence")
def fuzz_default_problem(ex, _):
    """default_problem(l2): the standardized breast-cancer data with an intercept column."""
    l2, ok = scalar_draw(ex, "l2", [1e-2, 0.0, 1e-3, 1, 0.5], [-1.0, float("nan"), "x", None, True], pct=15)
    try:
        prob = convergence.default_problem(l2) if ex.draw(st.booleans(), "positional") \
            else convergence.default_problem(l2=l2)
    except ERRORS as err:
        assert not ok, f"rejected l2={l2!r}: {err!r}"
        return
    assert ok, f"accepted l2={l2!r}"
    X, y, mag = expected_dataset("breast_cancer", True, True)
    assert isinstance(prob, LogisticRegression) and not prob.multinomial and prob.l2 == float(l2)
    assert prob.shape == (31,) and prob.n_samples == 569 and np.array_equal(prob.y, y)
    check_close(prob.X, X, mag, F64, "default_problem X")


_CHEAP = ("gd", "momentum", "nesterov", "newton", "adam", "adagrad", "minibatch_sgd", "rmsprop",
          "adadelta", "adamax", "svrg", "sgd")


def _draw_method(ex):
    """(Method, valid) with a drawn optimizer, batch size and hyperparameters."""
    name = ex.draw(st.sampled_from(["mine", "gd", "x y"]), "method name")
    opt_name, o_ok = scalar_draw(ex, "optimizer", ["SGD", "Adam", "Adagrad", "RMSprop", "Adamax", "Adadelta",
                                                   "AdamW", "SVRG", "Newton"],
                                 ["Bogus", "Optimizer", "NewtonStep", "np", 3], pct=10)
    batch, b_ok = scalar_draw(ex, "batch", [None, 1, 4, 100], [0, -2, 2.5, "x", True], pct=10)
    lr = {"Newton": 1.0, "SGD": 0.1, "SVRG": 0.05}.get(opt_name, 0.05) if isinstance(opt_name, str) else 0.1
    hyper, h_ok = scalar_draw(ex, "hyper", [lambda p: dict(lr=lr), lambda p: {}, lambda p: dict(lr=0.5 * lr)],
                              [lambda p: dict(lr=-1.0), lambda p: dict(bogus=1), 3, lambda p: 3], pct=10)
    return convergence.Method(name, f"label of {name}", opt_name, batch, hyper), (o_ok and b_ok and h_ok)


def _check_trace(prob, method, tr, a, f_star, n):
    batch = n if method.batch_size is None else min(method.batch_size, n)
    arrays = (tr.grad_evals, tr.epochs, tr.hess_evals, tr.time, tr.loss, tr.subopt)
    assert all(isinstance(x, np.ndarray) and x.shape == tr.grad_evals.shape for x in arrays)
    assert tr.name == method.name and tr.label == method.label and tr.batch_size == batch
    assert tr.grad_evals[0] == 0 and np.all(np.diff(tr.grad_evals) >= 0) and np.all(np.diff(tr.time) >= 0)
    assert np.array_equal(tr.subopt, tr.loss - f_star, equal_nan=True)
    assert np.array_equal(tr.epochs, tr.grad_evals / n)
    hyper = method.hyper(prob)
    assert set(tr.hyperparameters) == set(hyper) and all(
        tr.hyperparameters[k] == (repr(v) if callable(v) else v) for k, v in hyper.items())
    w0 = np.ascontiguousarray(prob.init(), dtype=np.float64)
    assert tr.loss[0] == prob.loss(w0)
    if tr.stop_reason != "diverged":
        assert math.isclose(tr.loss[-1], prob.loss(tr.w), rel_tol=1e-12, abs_tol=1e-300)
    if method.optimizer == "Newton":
        assert np.array_equal(tr.hess_evals, tr.grad_evals)
        assert tr.stop_reason in ("ftol", "epochs", "diverged")
        # newton_iters passes over the data (iterations of the full-batch method)
        assert len(tr.loss) <= a["newton_iters"] * -(-n // batch) + 1
        if tr.stop_reason == "ftol":
            assert tr.loss[-1] - f_star <= 0
        replay_kw = dict(epochs=a["newton_iters"], record_every=1, ftol=0.0, f_star=f_star, seed=a["seed"])
    else:
        assert not tr.hess_evals.any()
        budget = max(1, int(a["epochs"] * n))
        cost = 2 * batch + n if method.optimizer == "SVRG" else batch
        if tr.stop_reason != "diverged":
            assert tr.stop_reason == "max_evals", f"{method.name}: stopped for {tr.stop_reason}"
            assert budget <= tr.grad_evals[-1] < budget + cost, \
                f"{method.name}: spent {tr.grad_evals[-1]} sample-gradients for a budget of {budget}"
        replay_kw = dict(epochs=math.ceil(a["epochs"]) + 2, max_evals=budget, seed=a["seed"])
    if tr.stop_reason == "diverged":
        return
    w = w0.copy()
    opt = getattr(optim, method.optimizer)([w], **hyper)
    if method.optimizer not in ("Newton", "SVRG") and batch >= n:
        # full-batch first-order methods by hand: one step per n sample-gradients
        for _ in range(-(-replay_kw["max_evals"] // n)):
            opt.step([prob.grad(w)])
    else:
        train(prob, opt, batch_size=method.batch_size, progress=False, **replay_kw)
    assert np.array_equal(w, tr.w), f"{method.name}: the final iterate differs from a replay"


@entry_point("compare", "Method", entry="convergence")
def fuzz_compare(ex, name):
    """compare(problem, methods, ...): budgets, stopping, traces and a replay of each final
    iterate (name "Method": custom Method objects)."""
    ex.special = False
    default = ex.chance(3, "default problem")
    prob = None if default else small_problem(ex, kinds=("binary", "binary", "multinomial", "quadratic"),
                                              max_n=16, dtypes=(F64,))
    n = 569 if default else int(prob.n_samples)
    methods, valid = [], True
    target = prob
    if not default and ex.chance(3, "bad problem"):
        target, valid = ex.draw(st.sampled_from([object(), 3, "problem"]), "bad problem"), False
    for _ in range(ex.draw(st.integers(1, 3), "methods")):
        if name == "Method" and ex.draw(st.booleans(), "custom"):
            m, ok = _draw_method(ex)
            methods.append(m)
            valid = valid and ok
        elif ex.chance(5, "bad method"):
            methods.append(ex.draw(st.sampled_from(["bfgs", 3, None]), "bad method"))
            valid = False
        else:
            methods.append(ex.draw(st.sampled_from(_CHEAP[:4] if default else _CHEAP), "method"))
    a, kw = {}, {}
    for key, good, bad, default_value in (
            ("epochs", [0.5, 1, 2, 1.5], [0, -1, float("nan"), float("inf"), "1", True, None], 30),
            ("records_per_epoch", [1, 3, 10, 2.5], [0, -1, float("nan"), "x", None, True], 10),
            ("seed", [0, 3], [-1, "x"], 0),
            ("newton_iters", [1, 3, 20], [0, -1, 2.5, None], 20)):
        if ex.draw(st.booleans(), f"pass {key}") or key == "epochs":
            value, ok = scalar_draw(ex, key, good, bad, pct=6)
            kw[key] = a[key] = value
            valid = valid and ok
        else:
            a[key] = default_value
    if ex.draw(st.booleans(), "pass f_star"):
        f_star, ok = scalar_draw(ex, "f_star", ["solve", -1.0, 0.0], [float("nan"), float("inf"), "x"])
        valid = valid and ok
        if f_star == "solve":
            f_star = convergence.solve(prob if prob is not None else convergence.default_problem())[1]
        kw["f_star"] = f_star
    snap = ex.snapshot()
    listed = list(methods)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                res = convergence.compare(target, methods, **kw)
    except ERRORS as err:
        refused(ex, snap, err, valid, f"compare({methods}, {kw})",
                extra=[(lambda: methods == listed, "changed the method list")])
        return
    assert valid, f"compare accepted invalid arguments {methods} {kw}"
    assert not ex.changed_bytes(snap) and methods == listed
    the_prob = prob if prob is not None else convergence.default_problem()
    if "f_star" in kw:
        assert res.f_star == float(kw["f_star"]) and res.w_star is None
    else:
        w_star, f_star, _ = convergence.solve(the_prob)
        assert res.f_star == f_star and np.array_equal(res.w_star, w_star)
    assert res.n_samples == n and res.problem == repr(the_prob)
    objects = [convergence.METHODS[m] if isinstance(m, str) else m for m in methods]
    names = list(dict.fromkeys(m.name for m in objects))
    assert res.names() == names
    last = {m.name: m for m in objects}
    for m in names:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            with np.errstate(all="ignore"):
                _check_trace(the_prob, last[m], res[m], a, res.f_star, n)
