"""DistributedOptimizer with Muon, Adafactor, SparseAdam and LBFGS (run under mpiexec).

Each runs N ranks on 1/N of each global batch against one process on the whole batch:

* Muon (ns_dtype "float64" and "float32") and Adafactor: 20 steps of the common problem's
  gradients (Muon: W and a float32 least-squares matrix M; Adafactor: W, b, v);
* SparseAdam: two embedding tables (float64 20x4, float32 15x3) whose row gradients come
  from token ids with repeats, each rank passing the rows of its share of the batch; plus a
  step where one rank passes an index out of range and one where one rank passes values of
  the wrong shape (every rank must raise, nothing changed);
* LBFGS (strong Wolfe, and without line search): 4 steps of max_iter 5 on the mean softmax
  cross-entropy, the closure returning this rank's (loss, grads); plus a closure that raises
  on the last rank only (every rank must raise, the parameters as before the step);
* ShardedOptimizer refusing each of the four (TypeError naming the rule), and
  DistributedOptimizer refusing Newton.

Reports relative errors, whether every rank holds the same parameters, and the errors.
"""
import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import batch, grads, init_params, local_rows, rel_error, report

comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
STEPS = 20


def local(x, y):
    return local_rows(x, rank, size), local_rows(y, rank, size)


def same_everywhere(arrays):
    """True when every rank holds bit-identical arrays."""
    mine = np.concatenate([np.asarray(a, np.float64).ravel() for a in arrays])
    gathered = comm.allgather(mine.tobytes())
    return all(g == gathered[0] for g in gathered)


def muon_grads(params, x, y):
    w, m = params
    gw = grads([w, np.zeros(w.shape[1]), np.zeros(x.shape[1], np.float32)], x, y)[0]
    xf = x.astype(np.float32)
    gm = xf.T @ (xf @ m - np.float32(1.0)) / np.float32(len(y))
    return [gw, gm]


def muon_params():
    w = init_params()[0]
    m = (0.1 * np.random.default_rng(3).standard_normal((w.shape[0], 3))).astype(np.float32)
    return [w, m]


def dense_case(cls, hyper, make_params, grad_fn):
    ref_params, params = make_params(), make_params()
    ref = cls(ref_params, **hyper)
    opt = DistributedOptimizer(cls(params, **hyper), comm, bucket_bytes=200)
    for t in range(STEPS):
        x, y = batch(t)
        ref.step(grad_fn(ref_params, x, y))
        opt.step(grad_fn(params, *local(x, y)))
    return {"errors": [rel_error(p, r) for p, r in zip(params, ref_params)],
            "dtypes": [str(p.dtype) for p in params], "same": same_everywhere(params)}


results = {}
for ns in ("float64", "float32"):
    results[f"muon/{ns}"] = dense_case(
        fo.Muon, dict(lr=0.02, weight_decay=0.01, ns_dtype=ns, adjust_lr_fn="match_rms_adamw"),
        muon_params, muon_grads)
results["muon/default"] = dense_case(fo.Muon, dict(lr=0.02), muon_params, muon_grads)
results["adafactor"] = dense_case(fo.Adafactor, dict(lr=0.02, weight_decay=1e-3),
                                  init_params, grads)


# ------------------------------------------------------------------------------ SparseAdam
SHAPES = [((20, 4), np.float64), ((15, 3), np.float32)]


def tables():
    rng = np.random.default_rng(11)
    return [rng.standard_normal(s).astype(d) for s, d in SHAPES]


def sparse_batch(t, tabs):
    """Per table: token ids of the global batch (repeats) and their row gradients (of a
    mean over the batch)."""
    rng = np.random.default_rng(500 + t)
    out = []
    for (rows, width), dtype in SHAPES:
        ids = rng.integers(0, rows // 2 + 2 * (t % 3), GLOBAL)        # some rows never seen
        vals = rng.standard_normal((GLOBAL, width)).astype(dtype) / GLOBAL
        out.append((ids, vals))
    return out


GLOBAL = 12


def sparse_local(gs):
    """This rank's share of the rows, its values those of the mean over its share (the
    global batch's are of the mean over all rows), as a rank's local loss would give."""
    n = GLOBAL // size
    return [fo.RowSparseGrad(i[rank * n:(rank + 1) * n],
                             v[rank * n:(rank + 1) * n] * v.dtype.type(size)) for i, v in gs]


ref_tabs, tabs = tables(), tables()
ref = fo.SparseAdam(ref_tabs, lr=0.05)
opt = DistributedOptimizer(fo.SparseAdam(tabs, lr=0.05), comm)
for t in range(STEPS):
    gs = sparse_batch(t, ref_tabs)
    ref.step([fo.RowSparseGrad(i, v) for i, v in gs])
    opt.step(sparse_local(gs))
sparse = {"errors": [rel_error(p, r) for p, r in zip(tabs, ref_tabs)],
          "dtypes": [str(p.dtype) for p in tabs],
          "state": [rel_error(opt.state[i]["exp_avg_sq"], ref.state[i]["exp_avg_sq"])
                    for i in range(2)],
          "same": same_everywhere(tabs), "moved": rel_error(tabs[0], tables()[0])}
before = [p.copy() for p in tabs] + [opt.state[0]["exp_avg"].copy()]
for label, bad in [("range", lambda g: fo.RowSparseGrad(np.array([99]), g[0].values[:1])),
                   ("shape", lambda g: fo.RowSparseGrad(g[0].indices, g[0].values[:, :2]))]:
    gs = sparse_local(sparse_batch(STEPS, ref_tabs))
    if rank == size - 1:
        gs[0] = bad(gs)
    try:
        opt.step(gs)
        sparse[f"bad_{label}"] = None
    except ValueError as e:
        sparse[f"bad_{label}"] = str(e)
sparse["unchanged"] = all(np.array_equal(a, b) for a, b in zip(
    before, [p for p in tabs] + [opt.state[0]["exp_avg"]]))
try:
    opt.step(sparse_local(sparse_batch(STEPS, ref_tabs)), nonfinite="skip")
    sparse["nonfinite"] = None
except ValueError as e:
    sparse["nonfinite"] = str(e)
results["sparse_adam"] = sparse


# ------------------------------------------------------------------------------ LBFGS
def loss_and_grads(params, x, y):
    w, b = params
    z = x @ w + b
    z = z - z.max(axis=1, keepdims=True)
    logp = z - np.log(np.exp(z).sum(axis=1, keepdims=True))
    loss = -logp[np.arange(len(y)), y].mean() + 0.5e-2 * float((w * w).sum())
    g = grads([w, b, np.zeros(x.shape[1], np.float32)], x, y)[:2]
    g[0] = g[0] + 1e-2 * w
    return loss, g


for search in ("strong_wolfe", None):
    ref_params, params = init_params()[:2], init_params()[:2]
    hyper = dict(lr=1, max_iter=5, history_size=4, line_search_fn=search)
    ref = fo.LBFGS(ref_params, **hyper)
    opt = DistributedOptimizer(fo.LBFGS(params, **hyper), comm)
    losses, ref_losses, calls = [], [], [0]
    for t in range(4):
        x, y = batch(t, rows=GLOBAL * 3)
        ref_losses.append(ref.step(lambda: loss_and_grads(ref_params, x, y)))
        xl, yl = local(x, y)

        def closure():
            calls[0] += 1
            return loss_and_grads(params, xl, yl)
        losses.append(opt.step(closure))
    results[f"lbfgs/{search}"] = {
        "errors": [rel_error(p, r) for p, r in zip(params, ref_params)],
        "dtypes": [str(p.dtype) for p in params], "loss_error": rel_error(losses, ref_losses), "same": same_everywhere(params),
        "calls": calls[0], "ref_evals": ref.state[0]["func_evals"],
        "evals": opt.state[0]["func_evals"]}

before = [p.copy() for p in params]
x, y = batch(99, rows=GLOBAL * 3)
xl, yl = local(x, y)
count = [0]


def failing():
    count[0] += 1
    if count[0] == 2 and rank == size - 1:
        raise FloatingPointError("this rank's closure failed")
    return loss_and_grads(params, xl, yl)


try:
    opt.step(failing)
    failure = None
except Exception as e:
    failure = f"{type(e).__name__}: {e}"
results["lbfgs_failure"] = {"error": failure,
                            "unchanged": all(np.array_equal(a, b) for a, b in zip(before, params))}

# ------------------------------------------------------------------ ShardedOptimizer refuses
refusals = {}
for cls in (fo.Muon, fo.Adafactor, fo.SparseAdam, fo.LBFGS):
    try:
        ShardedOptimizer(cls, [np.zeros((4, 3))], comm)
        refusals[cls.__name__] = None
    except TypeError as e:
        refusals[cls.__name__] = str(e)
results["sharded_refuses"] = refusals
try:
    DistributedOptimizer(fo.Newton([np.zeros(3)]), comm)
    results["distributed_refuses_newton"] = None
except TypeError as e:
    results["distributed_refuses_newton"] = str(e)

report(rank, size=size, results=results)
