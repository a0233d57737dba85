"""Non-finite averaged gradients: ``step(grads, nonfinite=...)`` agrees on every rank (mpiexec).

For DistributedOptimizer and ShardedOptimizer with SGD-momentum, Adam and Adagrad, against a
plain optimizer stepped here on the whole-batch gradients (the average of the ranks'):

* a first step whose average is non-finite is skipped and creates no state;
* bad local gradients -- NaN on the last rank only, +Inf on rank 0 only, -Inf on rank 1 only,
  finite values whose sum over the ranks overflows (float64 and float32), two bad tensors --
  make "skip" return False and "raise" raise on every rank, with the parameters, the flat
  buffers and the (local) optimizer state bit-identical before and after;
* the good steps in between match the plain optimizer that never saw the bad ones (skipped
  steps are not counted: bias corrections, lr decay, first momentum step);
* "ignore" applies the update: a NaN reaches the same element as in the plain optimizer.

Also: an invalid `nonfinite` on every rank, or on one rank only, raises on every rank with
nothing changed; the Allreduce calls of one step per mode; a wrapped MixedPrecision with a
dynamic loss scale skips on every rank. Every rank reports what it saw.
"""
import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import batch, grads, init_params, local_rows, rel_error, report

CASES = {
    "sgd_momentum": (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3)),
    "adam": (fo.Adam, dict(lr=0.02, weight_decay=1e-3, amsgrad=True)),
    "adagrad": (fo.Adagrad, dict(lr=0.1, lr_decay=0.1, initial_accumulator_value=0.1)),
}
WRAPPERS = {
    "distributed": lambda cls, ps, h, c: DistributedOptimizer(cls(ps, **h), c, bucket_bytes=96),
    "sharded": lambda cls, ps, h, c: ShardedOptimizer(cls, ps, c, **h),
}

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
BIG64 = 0.75 * np.finfo(np.float64).max
BIG32 = np.float32(0.75) * np.finfo(np.float32).max


def spoil(g, param, index, value, ranks):
    """Set element `index` of gradient `param` to `value` on the given ranks."""
    if rank in ranks:
        g[param].reshape(-1)[index] = value
    return g


# name: (list of (param, flat index, value, ranks), first parameter whose average is bad)
BAD = {
    "nan_on_last_rank": ([(0, 0, np.nan, {size - 1})], 0),
    "inf_on_rank_0": ([(1, 4, np.inf, {0})], 1),
    "neg_inf_f32_on_rank_1": ([(2, 9, -np.inf, {1})], 2),
    "overflow_f64": ([(0, 30, BIG64, set(range(size)))], 0),
    "overflow_f32": ([(2, 0, BIG32, set(range(size)))], 2),
    "two_tensors": ([(2, 3, np.nan, {0}), (1, 0, -np.inf, {size - 1})], 1),
}


def local_grads(params, t):
    x, y = batch(t)
    return grads(params, local_rows(x, rank, size), local_rows(y, rank, size))


def inner_of(opt):
    return opt._inner if isinstance(opt, ShardedOptimizer) else opt.opt


def snapshot(opt, params):
    """Bytes of everything a step may change on this rank."""
    inner = inner_of(opt)
    sd = inner.state_dict()
    state = sorted((i, k, v.tobytes() if isinstance(v, np.ndarray) else v)
                   for i, entry in sd["state"].items() for k, v in entry.items())
    flat = [b.tobytes() for b in opt._flat] if isinstance(opt, ShardedOptimizer) else []
    return ([p.tobytes() for p in params], flat, state, [r.step for r in inner._records],
            repr(sd["param_groups"]))


def outcome(fn):
    try:
        return fn()
    except (TypeError, ValueError) as e:
        return f"{type(e).__name__}: {e}"


def compare(params, ref_params):
    """Relative error of the finite elements, and whether NaN/Inf lie at the same places."""
    same_mask = all(np.array_equal(np.isfinite(p), np.isfinite(r))
                    for p, r in zip(params, ref_params))
    errs = {"float64": 0.0, "float32": 0.0}
    for p, r in zip(params, ref_params):
        ok = np.isfinite(r)
        errs[p.dtype.name] = max(errs[p.dtype.name], rel_error(p[ok], r[ok]))
    return same_mask, errs


def bad_steps(opt, params, t, modes):
    seen = []
    for case, (spoils, first) in BAD.items():
        for mode in modes:
            g = local_grads(params, t)
            for where in spoils:
                spoil(g, *where)
            before = snapshot(opt, params)
            got = outcome(lambda: opt.step(g, nonfinite=mode))
            seen.append({"case": case, "mode": mode, "first": first, "got": got,
                         "unchanged": snapshot(opt, params) == before})
    return seen


def run(wrapper, name):
    opt_cls, hyper = CASES[name]
    ref_params = init_params()
    ref = opt_cls(ref_params, **hyper)
    params = init_params()
    opt = WRAPPERS[wrapper](opt_cls, params, hyper, comm)
    out = {}

    g = spoil(local_grads(params, 0), 0, 7, np.nan, {size - 1})
    before = snapshot(opt, params)
    out["first_step_skipped"] = opt.step(g, nonfinite="skip")
    out["first_step_no_state"] = inner_of(opt).state == {} and snapshot(opt, params) == before

    good = []

    def good_step(t, mode):
        x, y = batch(t)
        ref.step(grads(ref_params, x, y))
        good.append(opt.step(local_grads(params, t), nonfinite=mode))

    good_step(0, "skip")
    out["bad"] = bad_steps(opt, params, 1, ["skip", "raise"])
    good_step(1, "raise")
    good_step(2, "ignore")
    out["bad"] += bad_steps(opt, params, 3, ["skip", "raise"])
    good_step(3, "skip")
    out["good_returns"] = good
    out["steps"] = [r.step for r in inner_of(opt)._records]
    out["same_mask"], out["errors"] = compare(params, ref_params)

    # "ignore": the NaN of rank 0 reaches b[2] here as in the plain optimizer
    x, y = batch(4)
    g_ref = grads(ref_params, x, y)
    g_ref[1][2] = np.nan
    ref.step(g_ref)
    out["ignore_returns"] = opt.step(spoil(local_grads(params, 4), 1, 2, np.nan, {0}),
                                     nonfinite="ignore")
    out["ignore_same_mask"], out["ignore_errors"] = compare(params, ref_params)
    out["ignore_reached_b2"] = bool(np.isnan(params[1][2]))
    return out


class CountingComm(MPI.Intracomm):
    """COMM_WORLD's handle, counting the Allreduce calls made through it."""
    calls = 0

    def Allreduce(self, *args, **kwargs):
        type(self).calls += 1
        return super().Allreduce(*args, **kwargs)


def allreduce_calls():
    counting = CountingComm(comm)
    calls = {}
    for wrapper, make in WRAPPERS.items():
        params = init_params()
        opt = make(fo.Adam, params, {"lr": 0.01}, counting)
        for mode in ["ignore", "skip", "raise"]:
            CountingComm.calls = 0
            opt.step(local_grads(params, 0), nonfinite=mode)
            calls[f"{wrapper}/{mode}"] = CountingComm.calls
    return calls


def invalid_mode(wrapper):
    params = init_params()
    opt = WRAPPERS[wrapper](fo.Adam, params, {"lr": 0.01}, comm)
    opt.step(local_grads(params, 0))
    out = {}
    for case, mode in [("everywhere", "Skip"), ("last_rank", None if rank == size - 1 else "skip")]:
        before = snapshot(opt, params)
        out[case] = outcome(lambda: opt.step(local_grads(params, 1), nonfinite=mode))
        out[f"{case}_unchanged"] = snapshot(opt, params) == before
    out["usable_after"] = opt.step(local_grads(params, 1), nonfinite="skip")
    return out


def mixed_dynamic():
    """A wrapped MixedPrecision (float32 params, dynamic loss scale) skips on every rank."""
    w = np.zeros(4, np.float32)
    opt = DistributedOptimizer(fo.MixedPrecision(fo.SGD, [w], lr=0.1, loss_scale="dynamic"),
                               comm)
    scale = opt.opt.loss_scale
    g = np.full(4, 1.0, np.float32)
    if rank == size - 1:
        g[1] = np.inf
    results = [opt.step([g]), opt.step([g], nonfinite="skip"),
               outcome(lambda: opt.step([g], nonfinite="raise"))]
    return {"results": results, "scale_ratio": opt.opt.loss_scale / scale,
            "unchanged": bool(np.all(w == 0)), "skipped_steps": opt.opt.skipped_steps}


results = {f"{w}/{n}": run(w, n) for w in WRAPPERS for n in CASES}
report(rank, size=size, results=results, allreduce_calls=allreduce_calls(),
       invalid_mode={w: invalid_mode(w) for w in WRAPPERS}, mixed=mixed_dynamic())
