"""Fuzz drivers of SparseAdam (class and functional form) and fastopt.RowSparseGrad (see
fuzz_optim.py for the contract): a call matches the float64 reference (tests/reference.py)
or raises TypeError/ValueError with parameters, state and gradients unchanged."""
import numpy as np
from hypothesis import strategies as st

import fastopt as fo
from fastopt.functional import sparse_adam_
from fuzzing import ERRORS, entry_point
from reference import sparse_adam as reference_step

TOL = {np.dtype(np.float32): 1e-4, np.dtype(np.float64): 1e-11}


def _shape(ex):
    return tuple(ex.draw(st.lists(st.integers(0, 5), min_size=0, max_size=3), "shape"))


def _grad(ex, p, dtype):
    """A RowSparseGrad for `p`, sometimes wrong (returns it and whether it is valid)."""
    rows = p.shape[0] if p.ndim else 0
    nnz = ex.draw(st.integers(0, 12), "nnz")
    idx = ex.rng.integers(0, max(rows, 1), nnz)
    ok = rows > 0 or nnz == 0 or p.ndim == 0
    vshape, vdtype = (nnz,) + p.shape[1:], dtype
    kind = ex.draw(st.sampled_from(["good"] * 6 + ["range", "negative", "shape", "dtype",
                                                    "dense"]), "grad kind")
    if kind == "range" and nnz:
        idx[ex.draw(st.integers(0, nnz - 1), "at")] = rows
        ok = False
    elif kind == "negative" and nnz:
        idx[0] = -1
        ok = False
    elif kind == "shape" and p.ndim:
        vshape = (nnz,) + tuple(d + 1 for d in p.shape[1:]) + ((1,) if p.ndim == 1 else ())
        ok = False
    elif kind == "dtype":
        vdtype = np.float32 if dtype == np.float64 else np.float64
        ok = False
    values = ex.rng.standard_normal(vshape).astype(vdtype)
    if kind == "dense":
        return np.zeros(p.shape, dtype), False
    return fo.RowSparseGrad(idx, values), ok and p.ndim > 0


def _hyper(ex):
    h = dict(lr=ex.pick("lr", [1e-3, 0.05, 0.3], [0.0, -1.0, float("nan")]),
             betas=ex.pick("betas", [(0.9, 0.999), (0.0, 0.5), (0.5, 0.9)], [(1.0, 0.9), (0.9,)]),
             eps=ex.pick("eps", [1e-8, 1e-3], [0.0, -1e-8]),
             maximize=ex.pick("maximize", [False, True], [1, None]))
    ok = (isinstance(h["lr"], float) and h["lr"] > 0 and len(h["betas"]) == 2
          and all(0 <= b < 1 for b in h["betas"]) and h["eps"] > 0
          and isinstance(h["maximize"], bool))
    return h, ok


def _check(p, p0, g, state, t, h, what):
    ref = reference_step(p0, g.indices, g.values, state, t, h["lr"], *h["betas"], h["eps"],
                         h["maximize"])
    scale = max(1.0, float(np.abs(ref).max(initial=0.0)))
    err = float(np.abs(np.asarray(p, np.float64) - ref).max(initial=0.0)) / scale
    assert err <= TOL[p.dtype], f"{what}: {err}"
    return ref


@entry_point("SparseAdam")
def fuzz_sparse_adam(ex, _):
    """optim.SparseAdam: the lazy Adam step on the touched rows, or a refusal changing nothing."""
    dtype = ex.dtype()
    p = ex.rng.standard_normal(_shape(ex)).astype(dtype)
    h, ok = _hyper(ex)
    try:
        opt = fo.SparseAdam([p], **h)
    except ERRORS as err:
        assert not (ok and p.ndim > 0), f"rejected valid arguments: {err!r}"
        return
    assert ok and p.ndim > 0, "accepted invalid arguments"
    ref, state, t = p.astype(np.float64), {}, 0
    for _ in range(ex.draw(st.integers(1, 4), "steps")):
        g, good = _grad(ex, p, dtype)
        before = [p.copy()] + [a.copy() for a in opt.state.get(0, {}).values()]
        try:
            opt.step([g])
        except ERRORS as err:
            assert not good, f"rejected a valid gradient: {err!r}"
            after = [p] + list(opt.state.get(0, {}).values())
            assert len(after) == len(before) and all(
                np.array_equal(a, b, equal_nan=True) for a, b in zip(after, before))
            continue
        assert good, "accepted an invalid gradient"
        t += 1
        ref = _check(p, ref, g, state, t, h, f"step {t}")


@entry_point("sparse_adam", entry="functional")
def fuzz_functional_sparse_adam(ex, _):
    """functional.sparse_adam_: one array or a list, checked before anything is written."""
    dtype = ex.dtype()
    n = ex.draw(st.integers(1, 3), "arrays")
    ps = [ex.rng.standard_normal(_shape(ex) or (3,)).astype(dtype) for _ in range(n)]
    ms = [np.zeros_like(p) for p in ps]
    vs = [np.zeros_like(p) for p in ps]
    grads, oks = zip(*(_grad(ex, p, dtype) for p in ps))
    h, ok = _hyper(ex)
    step = ex.pick("step", [1, 2, 7], [0, -1, 1.5])
    ok = ok and all(oks) and isinstance(step, int) and step >= 1
    before = [a.copy() for a in ps + ms + vs]
    kwargs = dict(step=step, lr=h["lr"], beta1=h["betas"][0],
                  beta2=h["betas"][1] if len(h["betas"]) > 1 else 0.999, eps=h["eps"],
                  maximize=h["maximize"])
    if len(h["betas"]) != 2:
        ok = False
        kwargs["beta2"] = "bad"
    single = n == 1 and ex.draw(st.booleans(), "single")
    try:
        if single:
            sparse_adam_(ps[0], grads[0], ms[0], vs[0], **kwargs)
        else:
            sparse_adam_(ps, list(grads), ms, vs, **kwargs)
    except ERRORS as err:
        assert not ok, f"rejected valid arguments: {err!r}"
        assert all(np.array_equal(a, b) for a, b in zip(ps + ms + vs, before))
        return
    assert ok, "accepted invalid arguments"
    for p, p0, g in zip(ps, before, grads):
        state = {"exp_avg": np.zeros(p.shape), "exp_avg_sq": np.zeros(p.shape)}
        if step == 1:
            _check(p, p0, g, state, step, h, "functional step")


@entry_point("RowSparseGrad", entry="sparse")
def fuzz_row_sparse_grad(ex, _):
    """fastopt.RowSparseGrad: int64 1-D indices and one value row each, or TypeError/ValueError."""
    n = ex.draw(st.integers(0, 5), "n")
    kind = ex.draw(st.sampled_from(["list", "int32", "uint8", "float", "bool", "2d", "short"]),
                   "indices kind")
    idx = {"list": list(range(n)), "int32": np.arange(n, dtype=np.int32),
           "uint8": np.arange(n, dtype=np.uint8), "float": np.arange(n, dtype=float) + 0.5,
           "bool": np.ones(n, bool), "2d": np.zeros((n, 1), np.int64),
           "short": list(range(max(n - 1, 0)))}[kind]
    values = np.ones((n, 2))
    ok = kind in ("list", "int32", "uint8") or (kind == "float" and n == 0) or \
        (kind == "short" and n == 0)
    try:
        g = fo.RowSparseGrad(idx, values)
    except ERRORS:
        assert not ok or kind in ("float",), f"rejected valid indices ({kind})"
        return
    assert ok, f"accepted invalid indices ({kind})"
    assert g.indices.dtype == np.int64 and g.indices.shape == (n,) and g.values is values
    np.testing.assert_array_equal(g.indices, np.arange(n))
