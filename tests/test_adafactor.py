"""fastopt.Adafactor: the C kernel against the NumPy oracle (tests/adafactor_reference.py),
against torch.optim.Adafactor (recorded goldens, and live when torch is installed), and the
class's contract (state layout, state_dict and checkpoints, errors with nothing modified,
nonfinite=, schedules, the functional form, no per-step allocation)."""
import os
import tracemalloc

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt as fo
from fastopt import _kernels
from fastopt.functional import adafactor_

from adafactor_reference import AdafactorReference, state_shapes
from golden.make_adafactor_golden import CASES, problem

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "adafactor.npz")
TOL = {np.float64: 1e-10, np.float32: 2e-5}


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    if a.size == 0:
        return 0.0
    return float(np.abs(a - b).max() / max(1.0, np.abs(b).max()))


@pytest.fixture(params=[1, 2], ids=["1thread", "2threads"])
def threads(request):
    old = _kernels.get_num_threads()
    _kernels.set_num_threads(request.param)
    yield request.param
    _kernels.set_num_threads(old)


@pytest.fixture
def parallel(threads):
    """Every tensor above the parallel threshold (the threaded paths on small shapes)."""
    old = _kernels.get_parallel_threshold()
    _kernels.set_parallel_threshold(1)
    yield threads
    _kernels.set_parallel_threshold(old)


# ------------------------------------------------------------------------------ goldens
@pytest.mark.parametrize("dtype", [np.float64, np.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("case", range(len(CASES)))
def test_matches_torch_golden(case, dtype, parallel):
    params, grads = problem(dtype)
    opt = fo.Adafactor(params, **CASES[case])
    key = f"{case}/{np.dtype(dtype).name}"
    with np.load(GOLDEN) as z:
        for t, step_grads in enumerate(grads, 1):
            opt.step(step_grads)
            for j, p in enumerate(params):
                assert rel(p, z[f"{key}/step{t}/param{j}"]) <= TOL[dtype], (t, j)
        for j, p in enumerate(params):
            for name in state_shapes(p.shape):
                assert rel(opt.state[j][name], z[f"{key}/state{j}/{name}"]) <= 10 * TOL[dtype]


@pytest.mark.parametrize("case", range(len(CASES)))
def test_golden_file_is_torchs_live(case):
    """The recorded file still is what the installed torch computes (when torch is here)."""
    torch = pytest.importorskip("torch")
    from golden.make_adafactor_golden import run_torch
    traj, state = run_torch(CASES[case], np.float64)
    with np.load(GOLDEN) as z:
        for t, ps in enumerate(traj, 1):
            for j, p in enumerate(ps):
                assert rel(p, z[f"{case}/float64/step{t}/param{j}"]) <= 1e-12
    assert torch.optim.Adafactor is not None


def test_live_torch_random_shapes():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(5)
    shapes = [(33, 17), (4, 3, 40), (129,), (2, 64, 300)]
    for dtype, tol in ((np.float64, 1e-10), (np.float32, 1e-5)):
        ps = [rng.standard_normal(s).astype(dtype) for s in shapes]
        ts = [torch.tensor(p.copy()) for p in ps]
        kw = dict(lr=0.05, weight_decay=0.01, eps=(1e-30, 1e-3), d=1.0)
        ours, theirs = fo.Adafactor(ps, **kw), torch.optim.Adafactor(ts, **kw)
        for _ in range(4):
            gs = [rng.standard_normal(s).astype(dtype) for s in shapes]
            for t, g in zip(ts, gs):
                t.grad = torch.tensor(g)
            theirs.step()
            ours.step(gs)
        for p, t in zip(ps, ts):
            assert rel(p, t.numpy()) <= tol


# ------------------------------------------------------------------------- the oracle
shapes = st.one_of(
    st.tuples(st.integers(0, 70)),
    st.just(()),
    st.tuples(st.integers(1, 40), st.integers(1, 40)),
    st.tuples(st.integers(1, 4), st.integers(1, 9), st.integers(1, 12)),
    st.tuples(st.integers(1, 3), st.integers(1, 3), st.integers(1, 6), st.integers(1, 7)),
)
hypers = st.fixed_dictionaries({
    "lr": st.sampled_from([1e-2, 0.3, 1.5, 0.0]),
    "beta2_decay": st.sampled_from([-0.8, -0.3, -1.0, 0.0]),
    "eps": st.sampled_from([(None, 1e-3), (1e-3, 1e-2), (0.0, 0.0), (1e-30, 1.0)]),
    "d": st.sampled_from([1.0, 1.5, 10.0]),
    "weight_decay": st.sampled_from([0.0, 0.1]),
    "maximize": st.booleans(),
})


@given(shape_list=st.lists(shapes, min_size=1, max_size=4), hyper=hypers,
       dtype=st.sampled_from([np.float32, np.float64]), threads=st.sampled_from([1, 2]),
       low_threshold=st.booleans(), seed=st.integers(0, 2 ** 16))
def test_kernel_matches_reference(shape_list, hyper, dtype, threads, low_threshold, seed):
    rng = np.random.default_rng(seed)
    params = [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shape_list]
    ref = AdafactorReference([p.copy() for p in params], **hyper)
    old = _kernels.get_num_threads(), _kernels.get_parallel_threshold()
    _kernels.set_num_threads(threads)
    if low_threshold:
        _kernels.set_parallel_threshold(1)
    try:
        opt = fo.Adafactor(params, **hyper)
        for _ in range(3):
            grads = [np.asarray(rng.standard_normal(s)).astype(dtype) for s in shape_list]
            opt.step(grads)
            ref.step(grads)
    finally:
        _kernels.set_num_threads(old[0])
        _kernels.set_parallel_threshold(old[1])
    tol = 1e-12 if dtype == np.float64 else 2e-5
    for j, (p, q) in enumerate(zip(params, ref.params)):
        assert p.dtype == dtype
        assert rel(p, q) <= tol, j
        for name, v in ref.states[j].items():
            assert opt.state[j][name].shape == v.shape
            assert rel(opt.state[j][name], v) <= tol, (j, name)


def test_many_batches_and_wide_rows_use_both_paths(parallel):
    """More batch matrices than threads (whole matrices per thread) and fewer (split rows)."""
    rng = np.random.default_rng(1)
    for shape in [(9, 5, 40), (1, 300, 7), (300, 3), (2, 1, 500)]:
        p = rng.standard_normal(shape)
        ref = AdafactorReference([p.copy()])
        opt = fo.Adafactor([p])
        for _ in range(3):
            g = rng.standard_normal(shape)
            opt.step([g])
            ref.step([g])
        assert rel(p, ref.params[0]) <= 1e-12, shape


def test_thread_counts_agree():
    rng = np.random.default_rng(2)
    p0, g = rng.standard_normal((400, 300)), rng.standard_normal((400, 300))
    out = []
    old = _kernels.get_num_threads(), _kernels.get_parallel_threshold()
    _kernels.set_parallel_threshold(1)
    try:
        for nt in (1, 2, 3):
            _kernels.set_num_threads(nt)
            p = p0.copy()
            fo.Adafactor([p]).step([g])
            out.append(p)
    finally:
        _kernels.set_num_threads(old[0])
        _kernels.set_parallel_threshold(old[1])
    assert rel(out[1], out[0]) <= 1e-14 and rel(out[2], out[0]) <= 1e-14


# ------------------------------------------------------------------------ the contract
def test_state_layout_and_in_place():
    w, b, s = np.ones((3, 4, 5), np.float32), np.ones(5, np.float32), np.ones((), np.float32)
    opt = fo.Adafactor([w, b, s])
    ids = [id(w), id(b), id(s)]
    assert opt.step([np.ones_like(w), np.ones_like(b), np.ones_like(s)])
    assert [id(x) for x in (w, b, s)] == ids and w.dtype == np.float32
    assert opt.state[0]["row_var"].shape == (3, 4, 1)
    assert opt.state[0]["col_var"].shape == (3, 1, 5)
    assert set(opt.state[1]) == {"variance"} and opt.state[2]["variance"].shape == ()
    sd = opt.state_dict()
    assert sd["state"][0]["step"] == 1.0 and set(sd["state"][0]) == {"step", "row_var", "col_var"}
    assert sd["param_groups"][0]["eps"] == (None, 1e-3)


def test_empty_parameter_is_left_alone():
    e, w = np.zeros((0, 3)), np.ones(4)
    opt = fo.Adafactor([e, w])
    opt.step([np.zeros((0, 3)), np.ones(4)])
    assert e.shape == (0, 3) and opt.state[0]["row_var"].shape == (0, 1)
    assert not np.all(w == 1)


def test_state_dict_round_trip_and_checkpoint(tmp_path):
    rng = np.random.default_rng(3)
    shapes = [(6, 5), (5,), (2, 3, 4)]
    a = [rng.standard_normal(s) for s in shapes]
    b = [p.copy() for p in a]
    opt_a = fo.Adafactor(a, lr=0.05, weight_decay=0.1, eps=(1e-20, 1e-3))
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(6)]
    for g in grads[:3]:
        opt_a.step(g)
    fo.save(opt_a, tmp_path / "af.npz")
    opt_b = fo.Adafactor([p.copy() for p in b])
    for p, q in zip(opt_b.param_groups[0]["params"], a):
        p[...] = q
    fo.load(opt_b, tmp_path / "af.npz")
    assert opt_b.param_groups[0]["eps"] == (1e-20, 1e-3)
    opt_c = fo.Adafactor([p.copy() for p in a])
    opt_c.load_state_dict(opt_a.state_dict())
    for g in grads[3:]:
        opt_a.step(g)
        opt_b.step(g)
        opt_c.step(g)
    for p, q, r in zip(a, opt_b.param_groups[0]["params"], opt_c.param_groups[0]["params"]):
        assert np.array_equal(p, q) and np.array_equal(p, r)


def test_loads_torchs_state_dict_and_continues_alike():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(4)
    shapes = [(6, 5), (5,)]
    ps = [rng.standard_normal(s) for s in shapes]
    ts = [torch.tensor(p.copy()) for p in ps]
    topt = torch.optim.Adafactor(ts, lr=0.05)
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(5)]
    for g in grads[:2]:
        for t, x in zip(ts, g):
            t.grad = torch.tensor(x)
        topt.step()
    sd = topt.state_dict()
    sd = {"state": {i: {k: v.numpy() if v.dim() else float(v) for k, v in e.items()}
                    for i, e in sd["state"].items()}, "param_groups": sd["param_groups"]}
    mine = [t.numpy().copy() for t in ts]
    opt = fo.Adafactor(mine, lr=0.05)
    opt.load_state_dict(sd)
    for g in grads[2:]:
        for t, x in zip(ts, g):
            t.grad = torch.tensor(x)
        topt.step()
        opt.step(g)
    for p, t in zip(mine, ts):
        assert rel(p, t.numpy()) <= 1e-12


def test_bad_state_dict_changes_nothing():
    w = np.ones((3, 4))
    opt = fo.Adafactor([w])
    opt.step([np.ones((3, 4))])
    sd = opt.state_dict()
    before = {k: v.copy() for k, v in opt.state[0].items()}
    bad = {"state": {0: {"step": 1.0, "row_var": np.zeros((3, 4)), "col_var": np.zeros((1, 4))}},
           "param_groups": sd["param_groups"]}
    with pytest.raises(ValueError, match="row_var"):
        opt.load_state_dict(bad)
    bad["state"][0] = {"step": 1.0, "variance": np.zeros((3, 4))}
    with pytest.raises(ValueError, match="variance"):
        opt.load_state_dict(bad)
    bad["state"][0] = {"step": 1.0, "row_var": np.zeros((3, 1))}
    with pytest.raises(ValueError, match="lacks"):
        opt.load_state_dict(bad)
    for k, v in before.items():
        assert np.array_equal(opt.state[0][k], v)


@pytest.mark.parametrize("kwargs,error,match", [
    ({"lr": -1.0}, ValueError, "learning rate"),
    ({"lr": "x"}, TypeError, "lr"),
    ({"beta2_decay": 0.8}, ValueError, "beta2_decay should be <= 0"),
    ({"eps": (-1e-30, 1e-3)}, ValueError, "epsilon1 should be >= 0"),
    ({"eps": (None, -1.0)}, ValueError, "epsilon2 should be >= 0"),
    ({"eps": 1e-3}, TypeError, "eps"),
    ({"d": 0.5}, ValueError, "Clipping threshold d should be >= 1"),
    ({"weight_decay": -0.1}, ValueError, "weight_decay"),
    ({"maximize": 1}, TypeError, "maximize"),
    ({"foreach": "yes"}, TypeError, "foreach"),
])
def test_bad_hyperparameters(kwargs, error, match):
    with pytest.raises(error, match=match):
        fo.Adafactor([np.ones(3)], **kwargs)
    w = np.ones((2, 3))
    opt = fo.Adafactor([w])
    opt.param_groups[0].update(kwargs)
    with pytest.raises(error, match=match):
        opt.step([np.ones((2, 3))])
    assert np.all(w == 1) and not opt.state


def test_bad_grads_change_nothing():
    w, b = np.ones((2, 3)), np.ones(3)
    opt = fo.Adafactor([w, b])
    opt.step([np.ones((2, 3)), np.ones(3)])
    snap = [w.copy(), b.copy(), *(v.copy() for e in opt.state.values() for v in e.values())]
    for grads, error in [([np.ones((2, 3))], ValueError),
                         ([np.ones((2, 3)), np.ones(4)], ValueError),
                         ([np.ones((2, 3)), np.ones(3, np.float32)], TypeError),
                         ([np.ones((3, 2)).T, np.ones(3)], ValueError),
                         ([w, np.ones(3)], ValueError),
                         ([np.ones((2, 3)), "g"], TypeError)]:
        with pytest.raises(error):
            opt.step(grads)
    now = [w, b, *(v for e in opt.state.values() for v in e.values())]
    assert all(np.array_equal(x, y) for x, y in zip(snap, now))
    assert opt.state_dict()["state"][0]["step"] == 1.0


def test_mixing_cupy_and_numpy_arrays_is_refused(monkeypatch):
    """CuPy arrays run fastopt._adafactor_cupy (tests/test_cuda_muon_adafactor.py); a CuPy
    gradient (the stand-in of tests/fake_cupy.py) for a NumPy parameter, or the other way
    round, is refused with a TypeError before anything is written."""
    import sys
    import fake_cupy as fk
    monkeypatch.setitem(sys.modules, "cupy", fk)
    monkeypatch.setattr(fk.ndarray, "__module__", "cupy")
    dev = fk.ndarray(np.zeros((2, 3), np.float32))
    w = np.ones((2, 3), np.float32)
    with pytest.raises(TypeError, match="CuPy array but param is not"):
        adafactor_(w, dev, np.zeros((2, 1), np.float32), np.zeros((1, 3), np.float32), step=1)
    with pytest.raises(TypeError, match="cupy.ndarray"):
        adafactor_(dev, np.ones((2, 3), np.float32), dev[:, :1], dev[:1], step=1)
    opt = fo.Adafactor([w])
    with pytest.raises(TypeError):
        opt.step([dev])
    np.testing.assert_array_equal(w, 1)


@pytest.mark.parametrize("mode", ["skip", "raise"])
def test_nonfinite(mode):
    w = np.ones((2, 3))
    opt = fo.Adafactor([w])
    g = np.ones((2, 3))
    g[1, 2] = np.nan
    if mode == "skip":
        assert opt.step([g], nonfinite="skip") is False
    else:
        with pytest.raises(ValueError, match=r"grads\[0\] contains NaN"):
            opt.step([g], nonfinite="raise")
    assert np.all(w == 1) and not opt.state
    assert opt.step([np.ones((2, 3))], nonfinite=mode) is True
    assert opt.state_dict()["state"][0]["step"] == 1.0
    opt.step([g])           # "ignore": NaN goes through, as in torch
    assert np.isnan(w).any()


def test_schedule_and_param_groups():
    rng = np.random.default_rng(6)
    w, b = rng.standard_normal((4, 5)), rng.standard_normal(5)
    sched = fo.schedules.step_decay(0.1, 2, 0.5) if hasattr(fo.schedules, "step_decay") \
        else (lambda t: 0.1 * 0.5 ** (t // 2))
    ref = AdafactorReference([{"params": [w.copy()], "lr": sched},
                              {"params": [b.copy()], "lr": 0.02, "weight_decay": 0.1}])
    opt = fo.Adafactor([{"params": [w], "lr": sched},
                        {"params": [b], "lr": 0.02, "weight_decay": 0.1}])
    for _ in range(5):
        g = [rng.standard_normal((4, 5)), rng.standard_normal(5)]
        opt.step(g)
        ref.step(g)
    assert rel(w, ref.params[0]) <= 1e-12 and rel(b, ref.params[1]) <= 1e-12


def test_eps1_none_uses_the_first_parameters_dtype():
    """torch sets eps1 once per group from its first parameter (float32 here)."""
    w32, w64 = np.full((2, 2), 1e-3, np.float32), np.full((2, 2), 1e-3)
    g32, g64 = np.full((2, 2), 1e-9, np.float32), np.full((2, 2), 1e-9)
    ref = AdafactorReference([w32.copy(), w64.copy()])
    opt = fo.Adafactor([w32, w64])
    opt.step([g32, g64])
    ref.step([g32, g64])
    assert rel(w64, ref.params[1]) <= 1e-12


def test_functional_matches_class():
    rng = np.random.default_rng(7)
    shapes = [(5, 6), (6,), (2, 3, 4)]
    a = [rng.standard_normal(s) for s in shapes]
    b = [p.copy() for p in a]
    opt = fo.Adafactor(a, lr=0.1, maximize=True, d=1.5)
    st_ = [{k: np.zeros(v) for k, v in state_shapes(s).items()} for s in shapes]
    for t in range(1, 4):
        g = [rng.standard_normal(s) for s in shapes]
        opt.step(g)
        adafactor_(b, g, [s.get("row_var") for s in st_], [s.get("col_var") for s in st_],
                   [s.get("variance") for s in st_], step=t, lr=0.1, maximize=True, d=1.5)
    for p, q in zip(a, b):
        assert np.array_equal(p, q)
    w = np.ones((2, 3))
    with pytest.raises(TypeError, match="row_var"):
        adafactor_(w, np.ones((2, 3)), step=1)
    with pytest.raises(ValueError, match="variance must be None"):
        adafactor_(w, np.ones((2, 3)), np.zeros((2, 1)), np.zeros((1, 3)), np.zeros(3), step=1)
    with pytest.raises(ValueError, match=r"shape \(2, 1\)"):
        adafactor_(w, np.ones((2, 3)), np.zeros((1, 2)), np.zeros((1, 3)), step=1)
    with pytest.raises(ValueError, match="step"):
        adafactor_(w, np.ones((2, 3)), np.zeros((2, 1)), np.zeros((1, 3)), step=0)
    v, shared = np.zeros(3), np.zeros(4)
    with pytest.raises(ValueError, match="share memory"):      # across parameters
        adafactor_([w, np.ones(3)], [np.ones((2, 3)), np.ones(3)], [shared[:2, None], None],
                   [np.zeros((1, 3)), None], [None, shared[1:]], step=1)
    with pytest.raises(ValueError, match=r"grad\[1\] shares memory with row_var\[0\]"):
        rv = np.zeros((2, 1))
        adafactor_([w, np.ones(2)], [np.ones((2, 3)), rv.reshape(2)], [rv, None],
                   [np.zeros((1, 3)), None], [None, v[:2]], step=1)
    assert np.all(w == 1) and not v.any()


def test_step_allocates_no_parameter_sized_memory():
    w, b = np.ones((512, 256), np.float32), np.ones(4096, np.float32)
    grads = [np.ones_like(w), np.ones_like(b)]
    opt = fo.Adafactor([w, b])
    opt.step(grads)
    tracemalloc.start()
    try:
        tracemalloc.reset_peak()
        opt.step(grads)
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < w.nbytes // 16, peak
