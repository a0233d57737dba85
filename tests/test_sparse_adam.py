"""fastopt.SparseAdam: against the float64 NumPy reference (hypothesis), torch's goldens and
live torch, the coalescing order, laziness, threads, groups, schedules, checkpoints and every
refusal with nothing modified."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import fastopt as fo
from fastopt import _kernels, _sparse
from fastopt.functional import sparse_adam_

from reference import sparse_adam as reference_step

GOLDEN = Path(__file__).parent / "golden" / "sparse_adam.npz"
TOL = {np.float64: 1e-12, np.float32: 2e-5}


def grads_for(rng, shape, dtype, n_steps, most=None, span=None):
    out = []
    span = span or max(1, shape[0])
    for _ in range(n_steps):
        nnz = int(rng.integers(0, (most or 2 * shape[0] + 1) + 1))
        idx = rng.integers(0, span, nnz)
        out.append(fo.RowSparseGrad(idx, rng.standard_normal((nnz,) + shape[1:]).astype(dtype)))
    return out


def rel(a, b):
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max(initial=0.0) / max(1.0, np.abs(b).max(initial=0.0)))


# ------------------------------------------------------------------- the reference, hypothesis
@settings(deadline=None)
@given(shape=st.lists(st.integers(0, 7), min_size=1, max_size=3).map(tuple).filter(
           lambda s: s[0] > 0),
       dtype=st.sampled_from([np.float32, np.float64]),
       lr=st.floats(1e-4, 0.3), beta1=st.floats(0.0, 0.99), beta2=st.floats(0.5, 0.9999),
       eps=st.floats(1e-10, 1e-3), maximize=st.booleans(), n_steps=st.integers(1, 6),
       seed=st.integers(0, 2 ** 32 - 1))
def test_matches_the_reference(shape, dtype, lr, beta1, beta2, eps, maximize, n_steps, seed):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape).astype(dtype)
    ref, ref_state = p.astype(np.float64), {}
    opt = fo.SparseAdam([p], lr=lr, betas=(beta1, beta2), eps=eps, maximize=maximize)
    for t, g in enumerate(grads_for(rng, shape, dtype, n_steps, span=max(1, shape[0] // 2 + 1)),
                          1):
        opt.step([g])
        ref = reference_step(ref, g.indices, g.values, ref_state, t, lr, beta1, beta2, eps,
                             maximize)
    assert p.dtype == dtype
    assert rel(p, ref) <= TOL[dtype]
    for name in ("exp_avg", "exp_avg_sq"):
        assert rel(opt.state[0][name], ref_state[name]) <= TOL[dtype], name


def test_only_the_touched_rows_change():
    rng = np.random.default_rng(0)
    p = rng.standard_normal((10, 3))
    opt = fo.SparseAdam([p], lr=0.1)
    opt.step([fo.RowSparseGrad([1, 4], rng.standard_normal((2, 3)))])
    m_before, p_before = opt.state[0]["exp_avg"].copy(), p.copy()
    opt.step([fo.RowSparseGrad([4, 7, 4], rng.standard_normal((3, 3)))])
    untouched = [0, 1, 2, 3, 5, 6, 8, 9]
    np.testing.assert_array_equal(p[untouched], p_before[untouched])
    np.testing.assert_array_equal(opt.state[0]["exp_avg"][untouched], m_before[untouched])
    assert not np.array_equal(p[[4, 7]], p_before[[4, 7]])
    assert opt.state_dict()["state"][0]["step"] == 2.0


def test_an_empty_gradient_counts_the_step_and_moves_nothing():
    p = np.ones((4, 2))
    opt = fo.SparseAdam([p])
    opt.step([fo.RowSparseGrad(np.zeros(0, np.int64), np.zeros((0, 2)))])
    np.testing.assert_array_equal(p, 1.0)
    opt.step([(np.array([0]), np.ones((1, 2)))])          # an (indices, values) tuple
    ref = reference_step(np.ones((4, 2)), [0], np.ones((1, 2)), {}, 2, 1e-3)
    np.testing.assert_allclose(p, ref, rtol=0, atol=1e-15)


def test_functional_form_matches_the_class():
    rng = np.random.default_rng(1)
    a, b = rng.standard_normal((6, 4)), rng.standard_normal((9,))
    a2, b2 = a.copy(), b.copy()
    opt = fo.SparseAdam([a, b], lr=0.05, betas=(0.8, 0.95), maximize=True)
    ms = [np.zeros_like(a2), np.zeros_like(b2)]
    vs = [np.zeros_like(a2), np.zeros_like(b2)]
    for t in range(1, 5):
        ga = fo.RowSparseGrad(rng.integers(0, 6, 5), rng.standard_normal((5, 4)))
        gb = fo.RowSparseGrad(rng.integers(0, 9, 7), rng.standard_normal(7))
        opt.step([ga, gb])
        sparse_adam_([a2, b2], [ga, gb], ms, vs, step=t, lr=0.05, beta1=0.8, beta2=0.95,
                     maximize=True)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)
    np.testing.assert_array_equal(opt.state[1]["exp_avg_sq"], vs[1])


# --------------------------------------------------------------------- torch's numbers
def test_goldens_from_torch():
    with np.load(GOLDEN) as f:
        data = {k: f[k] for k in f.files}
    cases = sorted({k.split("/")[0] for k in data if "/" in k})
    assert len(cases) >= 7
    worst = 0.0
    for case in cases:
        lr, b1, b2, eps, maximize = data[f"{case}/hyper"]
        p = data[f"{case}/param0"].copy()
        opt = fo.SparseAdam([p], lr=lr, betas=(b1, b2), eps=eps, maximize=bool(maximize))
        off, idx, vals = data[f"{case}/offsets"], data[f"{case}/indices"], data[f"{case}/values"]
        for t in range(len(off) - 1):
            opt.step([fo.RowSparseGrad(idx[off[t]:off[t + 1]], vals[off[t]:off[t + 1]])])
            worst = max(worst, rel(p, data[f"{case}/params"][t]))
        # the moments involve no square root: torch's bits exactly (its duplicate order too)
        np.testing.assert_array_equal(opt.state[0]["exp_avg"], data[f"{case}/exp_avg"])
        np.testing.assert_array_equal(opt.state[0]["exp_avg_sq"], data[f"{case}/exp_avg_sq"])
    assert worst <= 1e-11


def test_coalesce_order_is_torchs_sort():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(2)
    for n in (0, 1, 2, 16, 17, 100, 1000, 5000, 32767, 32768, 40000):
        for idx in (rng.integers(0, max(1, n // 3), n), np.sort(rng.integers(0, 50, n))[::-1],
                    np.full(n, 3)):
            idx = np.array(idx, np.int64)          # a fresh copy (torch refuses negative strides)
            order, unique = _sparse.coalesce_order(idx)
            np.testing.assert_array_equal(order, torch.from_numpy(idx).sort(0).indices.numpy())
            assert unique == len(np.unique(idx))


@pytest.mark.parametrize("dtype", [np.float64, np.float32])
@pytest.mark.parametrize("maximize", [False, True])
def test_live_torch_parity(dtype, maximize):
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    p = rng.standard_normal((300, 5)).astype(dtype)
    w = torch.nn.Parameter(torch.from_numpy(p.copy()))
    ref = torch.optim.SparseAdam([w], lr=0.01, maximize=maximize)
    opt = fo.SparseAdam([p], lr=0.01, maximize=maximize)
    for g in grads_for(rng, p.shape, dtype, 10, most=2000, span=100):
        w.grad = torch.sparse_coo_tensor(torch.from_numpy(g.indices)[None],
                                         torch.from_numpy(g.values), p.shape)
        ref.step()
        opt.step([g])
    for name in ("exp_avg", "exp_avg_sq"):       # bit for bit (no square root involved)
        np.testing.assert_array_equal(opt.state[0][name], ref.state[w][name].numpy())
    # the parameters: torch's sqrt (MKL) is 1 ulp off for some elements; nothing more
    ulp = np.spacing(np.abs(w.detach().numpy())).max()
    assert np.abs(p - w.detach().numpy()).max() <= 64 * ulp


# ------------------------------------------------------------------------------ threads
def test_threads_give_the_same_bits():
    rng = np.random.default_rng(4)
    base = rng.standard_normal((5000, 16)).astype(np.float32)
    grads = grads_for(rng, base.shape, np.float32, 3, most=8000, span=4000)
    results = []
    saved, threshold = _kernels.get_num_threads(), _sparse.get_parallel_threshold()
    try:
        for threads, thr in ((1, threshold), (2, 1), (2, threshold)):
            _kernels.set_num_threads(threads)
            _sparse.set_parallel_threshold(thr)
            p = base.copy()
            opt = fo.SparseAdam([p], lr=0.01)
            for g in grads:
                opt.step([g])
            results.append(p)
    finally:
        _kernels.set_num_threads(saved)
        _sparse.set_parallel_threshold(threshold)
    for r in results[1:]:
        np.testing.assert_array_equal(r, results[0])


# ------------------------------------------------------------ groups, schedules, state
def test_param_groups_and_a_schedule():
    rng = np.random.default_rng(5)
    a, b = rng.standard_normal((8, 2)), rng.standard_normal((5, 3))
    ra, rb, sa, sb = a.copy(), b.copy(), {}, {}
    sched = fo.schedules.exponential(0.1, 0.5)
    opt = fo.SparseAdam([{"params": [a], "lr": sched}, {"params": [b], "betas": (0.5, 0.9)}],
                        lr=0.02)
    for t in range(1, 5):
        ga = fo.RowSparseGrad(rng.integers(0, 8, 4), rng.standard_normal((4, 2)))
        gb = fo.RowSparseGrad(rng.integers(0, 5, 6), rng.standard_normal((6, 3)))
        opt.step([ga, gb])
        ra = reference_step(ra, ga.indices, ga.values, sa, t, sched(t - 1))
        rb = reference_step(rb, gb.indices, gb.values, sb, t, 0.02, 0.5, 0.9)
    assert rel(a, ra) <= 1e-12 and rel(b, rb) <= 1e-12
    opt.param_groups[1]["lr"] = 0.5          # mutable, read at the next step
    before = b.copy()
    opt.step([fo.RowSparseGrad([], np.zeros((0, 2))), fo.RowSparseGrad([0], np.ones((1, 3)))])
    rb = reference_step(before, [0], np.ones((1, 3)), sb, 5, 0.5, 0.5, 0.9)
    assert rel(b, rb) <= 1e-12


def test_state_dict_and_checkpoint_round_trip(tmp_path):
    rng = np.random.default_rng(6)
    p = rng.standard_normal((20, 4))
    opt = fo.SparseAdam([p], lr=0.03)
    grads = grads_for(rng, p.shape, np.float64, 6, most=30)
    for g in grads[:3]:
        opt.step([g])
    fo.save(opt, tmp_path / "ckpt.npz")
    sd = opt.state_dict()
    assert sorted(sd["state"][0]) == ["exp_avg", "exp_avg_sq", "step"]
    q = p.copy()
    other = fo.SparseAdam([q], lr=0.5)
    fo.load(other, tmp_path / "ckpt.npz")
    assert other.param_groups[0]["lr"] == 0.03
    third = fo.SparseAdam([r := p.copy()])
    third.load_state_dict(sd)
    for g in grads[3:]:
        opt.step([g])
        other.step([g])
        third.step([g])
    np.testing.assert_array_equal(p, q)
    np.testing.assert_array_equal(p, r)
    with pytest.raises(ValueError, match="SparseAdam"):     # a checkpoint of another optimizer
        fo.load(fo.Adam([p.copy()]), tmp_path / "ckpt.npz")


# ---------------------------------------------------------------------------- refusals
def _setup():
    rng = np.random.default_rng(7)
    a, b = rng.standard_normal((6, 3)), rng.standard_normal((4,))
    opt = fo.SparseAdam([a, b], lr=0.1)
    opt.step([fo.RowSparseGrad([0, 1], np.ones((2, 3))), fo.RowSparseGrad([2], np.ones(1))])
    return opt, a, b


def _unchanged(opt, a, b, fn, error, match):
    saved = [a.copy(), b.copy(), opt.state[0]["exp_avg"].copy(), opt.state[1]["exp_avg_sq"].copy()]
    step = opt.state_dict()["state"][0]["step"]
    with pytest.raises(error, match=match):
        fn()
    for x, y in zip(saved, [a, b, opt.state[0]["exp_avg"], opt.state[1]["exp_avg_sq"]]):
        np.testing.assert_array_equal(x, y)
    assert opt.state_dict()["state"][0]["step"] == step


good_a = fo.RowSparseGrad([1], np.ones((1, 3)))


@pytest.mark.parametrize("second,error,match", [
    (np.ones(4), TypeError, "does not support dense gradients"),
    (fo.RowSparseGrad([4], np.ones(1)), ValueError, r"grads\[1\].indices\[0\] = 4 is out of range"),
    (fo.RowSparseGrad([-1], np.ones(1)), ValueError, "out of range"),
    (fo.RowSparseGrad([0], np.ones((1, 1))), ValueError, r"grads\[1\].values has shape"),
    (fo.RowSparseGrad([0], np.ones(1, np.float32)), TypeError, "dtype float32"),
    ("grad", TypeError, "RowSparseGrad"),
])
def test_a_bad_gradient_changes_nothing(second, error, match):
    opt, a, b = _setup()
    _unchanged(opt, a, b, lambda: opt.step([good_a, second]), error, match)


def test_bad_calls_change_nothing():
    opt, a, b = _setup()
    _unchanged(opt, a, b, lambda: opt.step([good_a]), ValueError, "1 arrays")
    opt.param_groups[0]["lr"] = -1.0
    _unchanged(opt, a, b, lambda: opt.step([good_a, good_a]), ValueError, "learning rate")
    opt.param_groups[0]["lr"] = 0.1
    values = np.ones((1, 3))
    _unchanged(opt, a, b, lambda: opt.step([fo.RowSparseGrad([0], a[:1]), good_a]), ValueError,
               "shares memory")
    assert values.sum() == 3


def test_row_sparse_grad_checks():
    with pytest.raises(TypeError, match="integers"):
        fo.RowSparseGrad([0.5], np.ones((1, 2)))
    with pytest.raises(TypeError, match="integers"):
        fo.RowSparseGrad([True], np.ones((1, 2)))
    with pytest.raises(ValueError, match="1-D"):
        fo.RowSparseGrad([[0]], np.ones((1, 2)))
    with pytest.raises(ValueError, match="one row per index"):
        fo.RowSparseGrad([0, 1], np.ones((1, 2)))
    g = fo.RowSparseGrad(np.array([3, 0], np.int32), np.ones((2, 2)))
    assert g.indices.dtype == np.int64 and g.nnz == 2 and g.row_shape == (2,)
    np.testing.assert_array_equal(g.to_dense((4, 2))[:, 0], [1, 0, 0, 1])


@pytest.mark.parametrize("kwargs,error,match", [
    ({"lr": 0.0}, ValueError, "Invalid learning rate"),
    ({"lr": -1.0}, ValueError, "Invalid learning rate"),
    ({"eps": 0.0}, ValueError, "eps"),
    ({"betas": (1.0, 0.9)}, ValueError, r"betas\[0\]"),
    ({"betas": (0.9, -0.1)}, ValueError, r"betas\[1\]"),
    ({"maximize": 1}, TypeError, "maximize"),
    ({"momentum": 0.9}, TypeError, "unexpected"),
])
def test_hyperparameter_errors(kwargs, error, match):
    with pytest.raises(error, match=match):
        fo.SparseAdam([np.zeros((2, 2))], **kwargs)


def test_parameters_the_kernel_cannot_take():
    with pytest.raises(ValueError, match="0-d"):
        fo.SparseAdam([np.zeros(())])
    with pytest.raises(TypeError):
        fo.SparseAdam([np.zeros((3, 2), np.int64)])
    with pytest.raises(ValueError):
        fo.SparseAdam([np.zeros((3, 4))[:, ::2]])


def test_functional_refusals_change_nothing():
    p, m, v = np.ones((3, 2)), np.zeros((3, 2)), np.zeros((3, 2))
    q = np.ones((2, 2))
    with pytest.raises(ValueError, match=r"grad\[1\].indices\[0\] = 5"):
        sparse_adam_([p, q], [fo.RowSparseGrad([0], np.ones((1, 2))),
                              fo.RowSparseGrad([5], np.ones((1, 2)))],
                     [m, np.zeros_like(q)], [v, np.zeros_like(q)], step=1)
    np.testing.assert_array_equal(p, 1.0)
    np.testing.assert_array_equal(m, 0.0)
    with pytest.raises(ValueError, match="step"):
        sparse_adam_(p, fo.RowSparseGrad([0], np.ones((1, 2))), m, v, step=0)
    with pytest.raises(TypeError, match="exp_avg has dtype"):
        sparse_adam_(p, fo.RowSparseGrad([0], np.ones((1, 2))), m.astype(np.float32), v, step=1)


def test_a_step_allocates_nothing_proportional_to_the_parameter():
    import tracemalloc
    rng = np.random.default_rng(8)
    table = np.zeros((200_000, 16), np.float32)            # 12.8 MB
    opt = fo.SparseAdam([table])
    grads = grads_for(rng, table.shape, np.float32, 3, most=256)
    opt.step([grads[0]])                                    # creates the moments
    tracemalloc.start()
    try:
        for g in grads[1:]:
            opt.step([g])
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 256 * 1024        # scratch for <= 256 entries; the table is 12.8 MB
