"""fastopt.LBFGS: torch's iterates (golden file and live), state layout, checkpoints, memory,
validation, schedules, and what happens when the closure fails."""
import os
import tracemalloc

import numpy as np
import pytest

import fastopt as fo
from lbfgs_cases import CONFIGS, SPLIT, STEPS, data, loss_and_grads, problem, start

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "lbfgs.npz")


def run_fastopt(config, X, y, steps=STEPS):
    prob = problem(X, y)
    params = start(prob)
    opt = fo.LBFGS(params, **CONFIGS[config])
    traj, losses, counts = [], [], []
    for _ in range(steps):
        losses.append(opt.step(lambda: loss_and_grads(prob, params)))
        traj.append(np.concatenate(params))
        counts.append((opt.state[0]["n_iter"], opt.state[0]["func_evals"]))
    return np.array(traj), np.array(losses), np.array(counts), opt


@pytest.mark.parametrize("config", list(CONFIGS))
def test_matches_torch_golden_float64(config):
    with np.load(GOLDEN) as z:
        X, y = z["X"], z["y"]
        want = {k: z[f"{config}/{k}"] for k in ("params", "loss", "counts")}
    traj, losses, counts, _ = run_fastopt(config, X, y)
    assert np.abs(traj - want["params"]).max() <= 1e-9
    assert np.abs(losses - want["loss"]).max() <= 1e-9
    np.testing.assert_array_equal(counts, want["counts"])


def test_golden_file_covers_every_config():
    with np.load(GOLDEN) as z:
        assert {k.split("/")[0] for k in z.files if "/" in k} == set(CONFIGS)
        assert z["default/params"].shape == (STEPS, SPLIT + z["X"].shape[1] * 3 - SPLIT)


@pytest.mark.parametrize("config", list(CONFIGS))
@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_matches_live_torch(config, dtype):
    torch = pytest.importorskip("torch")
    import golden.make_lbfgs_golden as rec
    X, y = data(dtype)
    ref, ref_loss, ref_counts = rec.run_torch(config, X, y)
    traj, losses, counts, _ = run_fastopt(config, X, y)
    tol = 1e-9 if dtype == np.float64 else 1e-3   # float32: its rounding over 30 iterations
    assert np.abs(traj - ref).max() <= tol
    assert np.abs(losses - ref_loss).max() <= tol
    if dtype == np.float64:
        np.testing.assert_array_equal(counts, ref_counts)
    assert torch.__version__


def test_shapes_do_not_matter():
    """A (K, d) parameter and its flat split give the same iterates."""
    X, y = data()
    prob = problem(X, y)
    w = np.concatenate(start(prob)).reshape(prob.shape)
    opt = fo.LBFGS([w], line_search_fn="strong_wolfe")
    for _ in range(3):
        opt.step(lambda: (float(prob.loss(w)), [prob.grad(w)]))
    traj, _, _, _ = run_fastopt("strong_wolfe", X, y, steps=3)
    np.testing.assert_array_equal(w.reshape(-1), traj[-1])


def test_state_layout_is_torchs():
    X, y = data()
    _, _, _, opt = run_fastopt("short_history", X, y, steps=3)
    st = opt.state_dict()["state"][0]
    assert set(st) == {"func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro",
                       "H_diag", "prev_flat_grad", "prev_loss", "al", "step"}
    n = X.shape[1] * 3
    assert st["d"].shape == st["prev_flat_grad"].shape == (n,)
    assert len(st["old_dirs"]) == len(st["old_stps"]) == len(st["ro"]) == 3
    assert len(st["al"]) == 3 and st["step"] == 3.0


def test_state_dict_moves_to_torch_and_back():
    torch = pytest.importorskip("torch")
    X, y = data()
    prob = problem(X, y)
    kw = CONFIGS["short_history_wolfe"]
    params = start(prob)
    opt = fo.LBFGS(params, **kw)
    for _ in range(2):
        opt.step(lambda: loss_and_grads(prob, params))
    sd = opt.state_dict()
    tparams = [torch.nn.Parameter(torch.from_numpy(p.copy())) for p in params]
    topt = torch.optim.LBFGS(tparams, **kw)

    def to_torch(v):
        if isinstance(v, np.ndarray):
            return torch.from_numpy(v.copy())
        if isinstance(v, list):
            return [to_torch(x) for x in v]
        return v
    st = {k: to_torch(v) for k, v in sd["state"][0].items() if k != "step"}
    topt.load_state_dict({"state": {0: st}, "param_groups": [
        {**{k: v for k, v in sd["param_groups"][0].items()}, "params": [0, 1]}]})

    def tclosure():
        loss, grads = loss_and_grads(prob, [p.detach().numpy() for p in tparams])
        for p, g in zip(tparams, grads):
            p.grad = torch.from_numpy(g)
        return torch.tensor(loss, dtype=torch.float64)
    for _ in range(2):
        opt.step(lambda: loss_and_grads(prob, params))
        topt.step(tclosure)
    for p, q in zip(params, tparams):
        assert np.abs(p - q.detach().numpy()).max() <= 1e-9
    # and torch's state loads into fastopt
    back = fo.LBFGS(start(prob), **kw)
    tsd = topt.state_dict()
    conv = {k: ([x.numpy() if hasattr(x, "numpy") else x for x in v] if isinstance(v, list)
                else (v.numpy() if hasattr(v, "numpy") else v))
            for k, v in tsd["state"][0].items()}
    back.load_state_dict({"state": {0: conv}, "param_groups": tsd["param_groups"]})
    assert back.state[0]["n_iter"] == opt.state[0]["n_iter"]
    np.testing.assert_allclose(back.state[0]["d"], opt.state[0]["d"], rtol=0, atol=1e-9)


def test_save_load_round_trip(tmp_path):
    X, y = data()
    prob = problem(X, y)
    kw = CONFIGS["short_history"]
    a = start(prob)
    opt = fo.LBFGS(a, **kw)
    for _ in range(2):
        opt.step(lambda: loss_and_grads(prob, a))
    fo.save(opt, tmp_path / "ckpt.npz")
    b = [p.copy() for p in a]
    for _ in range(2):
        opt.step(lambda: loss_and_grads(prob, a))
    other = fo.LBFGS(b, **kw)
    fo.load(other, tmp_path / "ckpt.npz")
    for _ in range(2):
        other.step(lambda: loss_and_grads(prob, b))
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)
    assert other.state_dict()["state"][0]["step"] == 4.0


def test_load_refuses_a_checkpoint_of_another_size(tmp_path):
    X, y = data()
    prob = problem(X, y)
    a = start(prob)
    opt = fo.LBFGS(a)
    opt.step(lambda: loss_and_grads(prob, a))
    fo.save(opt, tmp_path / "ckpt.npz")
    other = fo.LBFGS([np.zeros(4), np.zeros(3)])
    with pytest.raises(ValueError, match="does not fit"):
        fo.load(other, tmp_path / "ckpt.npz")
    assert other.state == {}


@pytest.mark.parametrize("history_size", [2 ** 70, 10 ** 11])
def test_a_history_size_that_cannot_be_allocated_is_refused_before_anything_changes(
        history_size):
    """The ring buffers of the loaded size are made while the state_dict is checked: a size
    that cannot be allocated is a ValueError, the optimizer's state and groups unchanged."""
    X, y = data()
    prob = problem(X, y)
    a = start(prob)
    opt = fo.LBFGS(a, history_size=3)
    opt.step(lambda: loss_and_grads(prob, a))
    sd = opt.state_dict()
    before = {k: (list(v) if isinstance(v, list) else v) for k, v in opt.state[0].items()}
    bad = {**sd, "param_groups": [dict(sd["param_groups"][0], history_size=history_size)]}
    with pytest.raises(ValueError, match="history_size"):
        opt.load_state_dict(bad)
    assert opt.param_groups[0]["history_size"] == 3
    assert sorted(opt.state[0]) == sorted(before)
    assert len(opt.state[0]["old_dirs"]) == len(before["old_dirs"])
    opt.step(lambda: loss_and_grads(prob, a))         # and it still steps


def _quadratic(n, dtype):
    """A closure for f = sum(c_i w_i^2) / 2 that allocates nothing (buffers made once)."""
    w = np.ones(n, dtype)
    c = np.linspace(1.0, 4.0, n).astype(dtype)
    g = np.empty(n, dtype)

    def closure():
        np.multiply(w, c, out=g)
        return 0.5 * float(np.dot(w, g)), [g]
    return w, closure


@pytest.mark.parametrize("kw", [{}, {"line_search_fn": "strong_wolfe"}])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_step_allocates_no_parameter_sized_memory(kw, dtype):
    n = 1_000_000
    w, closure = _quadratic(n, dtype)
    opt = fo.LBFGS([w], max_iter=4, max_eval=100, history_size=3, tolerance_grad=0.0,
                   tolerance_change=0.0, **kw)
    opt.step(closure)                       # allocates the buffers once
    assert len(opt.state[0]["old_dirs"]) >= 1
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        for _ in range(3):
            opt.step(closure)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert len(opt.state[0]["old_dirs"]) == 3       # the ring wrapped
    assert peak < 64 * 1024, f"peak {peak} bytes during steps"


def test_schedule_lr_is_read_per_step():
    X, y = data()
    prob = problem(X, y)
    a, b = start(prob), start(prob)
    sched = fo.schedules.exponential(0.5, 0.5)
    o1 = fo.LBFGS(a, lr=sched, max_iter=3)
    o2 = fo.LBFGS(b, lr=0.5, max_iter=3)
    for t in range(3):
        o2.param_groups[0]["lr"] = 0.5 * 0.5 ** t
        o1.step(lambda: loss_and_grads(prob, a))
        o2.step(lambda: loss_and_grads(prob, b))
    for p, q in zip(a, b):
        np.testing.assert_array_equal(p, q)


@pytest.mark.parametrize("kw,exc,match", [
    ({"lr": -1.0}, ValueError, "lr"),
    ({"lr": "x"}, TypeError, "lr"),
    ({"max_iter": 0}, ValueError, "max_iter"),
    ({"max_iter": 2.0}, TypeError, "max_iter"),
    ({"max_eval": 0}, ValueError, "max_eval"),
    ({"tolerance_grad": -1e-3}, ValueError, "tolerance_grad"),
    ({"tolerance_change": float("nan")}, ValueError, "tolerance_change"),
    ({"history_size": 0}, ValueError, "history_size"),
    ({"line_search_fn": "armijo"}, ValueError, "line_search_fn"),
    ({"line_search_fn": 1}, TypeError, "line_search_fn"),
    ({"threads": 0}, ValueError, "threads"),
    ({"threads": 1.5}, TypeError, "threads"),
])
def test_bad_hyperparameters_are_refused(kw, exc, match):
    with pytest.raises(exc, match=match):
        fo.LBFGS([np.zeros(3)], **kw)


def test_bad_params_are_refused():
    with pytest.raises(ValueError, match="parameter groups"):
        fo.LBFGS([{"params": [np.zeros(2)]}, {"params": [np.zeros(2)]}])
    with pytest.raises(ValueError, match="one dtype"):
        fo.LBFGS([np.zeros(2), np.zeros(2, np.float32)])
    with pytest.raises(TypeError, match="params"):
        fo.LBFGS([np.zeros(2, np.int64)])


@pytest.mark.parametrize("closure,exc,match", [
    ("not callable", TypeError, "closure"),
    (lambda: 1.0, TypeError, "closure"),
    (lambda: ("x", [np.ones(3)]), TypeError, "loss"),
    (lambda: (1.0, [np.ones(4)]), ValueError, "grads"),
    (lambda: (1.0, [np.ones(3, np.float32)]), TypeError, "grads"),
    (lambda: (1.0, [np.ones(3), np.ones(3)]), ValueError, "grads"),
])
def test_bad_closure_changes_nothing(closure, exc, match):
    w = np.array([1.0, 2.0, 3.0])
    opt = fo.LBFGS([w])
    with pytest.raises(exc, match=match):
        opt.step(closure)
    np.testing.assert_array_equal(w, [1.0, 2.0, 3.0])
    assert opt.state == {} and opt.state_dict()["state"] == {}
    opt.step(lambda: (float(w @ w), [2 * w]))       # and a good step still works
    assert np.abs(w).max() < 1e-6


def test_closure_failing_mid_step_restores_the_iteration_start():
    w = np.array([1.0, -2.0])
    calls = []

    def closure():
        calls.append(w.copy())
        if len(calls) == 3:
            raise RuntimeError("boom")
        return float(w @ w), [2 * w]
    opt = fo.LBFGS([w], lr=0.1)
    with pytest.raises(RuntimeError, match="boom"):
        opt.step(closure)
    np.testing.assert_array_equal(w, calls[1])      # where the failing iteration started
    assert opt.state[0]["n_iter"] == 1              # the failed second one is not counted


def quadratic(w):
    c = np.linspace(1.0, 9.0, w.size)
    return float(0.5 * (c * w) @ w), [c * w]


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_a_closure_failing_in_the_first_iteration_leaves_a_fresh_start(line_search_fn):
    # the next step starts afresh (torch's first-iteration step size min(1, 1/|g|_1) lr),
    # not with the failed iteration's direction and the plain lr
    w, ref = np.linspace(-3.0, 4.0, 6), np.linspace(-3.0, 4.0, 6)
    calls = []

    def failing():
        calls.append(None)
        if len(calls) == 2:
            raise RuntimeError("transient")
        return quadratic(w)
    opt = fo.LBFGS([w], max_iter=3, line_search_fn=line_search_fn)
    with pytest.raises(RuntimeError, match="transient"):
        opt.step(failing)
    assert opt.state[0]["n_iter"] == 0 and opt.state[0]["d"] is None
    np.testing.assert_array_equal(w, ref)
    fresh = fo.LBFGS([ref], max_iter=3, line_search_fn=line_search_fn)
    opt.step(lambda: quadratic(w))
    fresh.step(lambda: quadratic(ref))
    np.testing.assert_array_equal(w, ref)


@pytest.mark.parametrize("fail_at", [3, 5])
def test_a_step_after_a_failed_iteration_redoes_it(fail_at):
    # a later failure: the next step redoes the failed iteration (its pair repeats with
    # y = 0 and is skipped) and the run goes on as an uninterrupted one
    w, ref = np.linspace(-3.0, 4.0, 6), np.linspace(-3.0, 4.0, 6)
    calls = []

    def failing():
        calls.append(None)
        if len(calls) == fail_at:
            raise RuntimeError("transient")
        return quadratic(w)
    opt = fo.LBFGS([w], lr=0.5, max_iter=100, tolerance_grad=1e-12)
    with pytest.raises(RuntimeError, match="transient"):
        opt.step(failing)
    assert opt.state[0]["n_iter"] == fail_at - 2      # evaluations after completed moves
    opt.step(lambda: quadratic(w))
    uninterrupted = fo.LBFGS([ref], lr=0.5, max_iter=100, tolerance_grad=1e-12)
    uninterrupted.step(lambda: quadratic(ref))
    np.testing.assert_array_equal(w, ref)


def test_converges_like_newton_on_logistic_regression():
    X, y = data()
    prob = problem(X, y)
    w = np.zeros(prob.shape)
    opt = fo.LBFGS([w], line_search_fn="strong_wolfe", max_iter=100, tolerance_change=1e-15)
    opt.step(lambda: (float(prob.loss(w)), [prob.grad(w)]))
    assert np.abs(prob.grad(w)).max() <= 1e-7
    assert opt.state[0]["n_iter"] < 40


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
def test_threads_give_the_same_bits(dtype):
    """LBFGS(threads=k): the two-loop recursion's passes are cut into blocks fixed by the
    vector length and its dot products summed block by block in one order, so the iterates
    are the same bits on 1, 2 and 3 threads (here above the parallel threshold, with many
    blocks: 5e5 elements; the pair count exceeds the history, so the ring wraps)."""
    rng = np.random.default_rng(4)
    n = 500_003
    c = rng.uniform(1.0, 4.0, n).astype(dtype)
    target = rng.standard_normal(n).astype(dtype)
    runs = []
    threshold = fo._kernels.get_parallel_threshold()
    try:
        fo._kernels.set_parallel_threshold(1000)
        for threads in (1, 2, 3):
            w = np.zeros(n, dtype)

            def closure():
                r = w - target
                return float(0.5 * np.dot(r, c * r)), [c * r]
            opt = fo.LBFGS([w], lr=0.5, max_iter=12, history_size=5, threads=threads)
            for _ in range(2):
                opt.step(closure)
            assert opt._hist.ran_on == threads          # the parallel path did run
            runs.append((w.copy(), list(opt.state[0]["al"]), opt.state[0]["d"].copy()))
    finally:
        fo._kernels.set_parallel_threshold(threshold)
    for w, al, d in runs[1:]:
        assert np.array_equal(w.view(np.uint8), runs[0][0].view(np.uint8))
        assert np.array_equal(d.view(np.uint8), runs[0][2].view(np.uint8))
        assert al == runs[0][1]
    assert not np.array_equal(runs[0][0], np.zeros(n, dtype))


def test_torch_lbfgs_takes_threads():
    """fastopt.torch.LBFGS(threads=k) hands k to the recursion: same bits as one thread."""
    torch = pytest.importorskip("torch", reason="fastopt.torch needs torch")
    import fastopt.torch as ft
    with pytest.raises(ValueError, match="threads"):
        ft.LBFGS([torch.nn.Parameter(torch.zeros(3))], threads=0)
    gen = torch.Generator().manual_seed(3)
    c = torch.rand(200_000, generator=gen, dtype=torch.float64) + 1
    target = torch.randn(200_000, generator=gen, dtype=torch.float64)
    threshold = fo._kernels.get_parallel_threshold()
    finals = []
    try:
        fo._kernels.set_parallel_threshold(1000)
        for threads in (1, 2):
            w = torch.nn.Parameter(torch.zeros(200_000, dtype=torch.float64))
            opt = ft.LBFGS([w], lr=0.5, max_iter=8, history_size=4, threads=threads)

            def closure():
                opt.zero_grad()
                loss = 0.5 * ((w - target) ** 2 * c).sum()
                loss.backward()
                return loss
            opt.step(closure)
            assert opt._fo._hist.ran_on == threads
            finals.append(w.detach().clone())
    finally:
        fo._kernels.set_parallel_threshold(threshold)
    assert torch.equal(finals[0], finals[1]) and not torch.equal(finals[0], torch.zeros_like(w))
