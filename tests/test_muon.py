"""fastopt.Muon: torch's goldens, the NumPy reference over shapes and hyperparameters, the
functional form, validation with nothing modified, checkpoints, schedules, the param split."""
import json
import threading
import tracemalloc
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import fastopt as fo
from fastopt import _muon
from fastopt.functional import muon_
from fastopt.optim.muon import split_params
from muon_reference import muon_step, newton_schulz

GOLDEN = Path(__file__).parent / "golden" / "muon.npz"


# ---------------------------------------------------------------------------------- goldens
def _golden_cases():
    with np.load(GOLDEN) as f:
        return sorted(k.split("/", 1)[1] for k in f.files if k.startswith("hyper/"))


def _run_golden(case, kind):
    with np.load(GOLDEN) as f:
        h = json.loads(str(f[f"hyper/{case}"]))
        if "ns_coefficients" in h:
            h["ns_coefficients"] = tuple(h["ns_coefficients"])
        n = sum(1 for k in f.files if k.startswith(f"inputs/{kind}/") and k.endswith("/init"))
        params = [f[f"inputs/{kind}/p{i}/init"].copy() for i in range(n)]
        opt = fo.Muon(params, ns_dtype="float64" if kind == "float64" else None, **h)
        t = 0
        while f"inputs/{kind}/p0/grad{t}" in f.files:
            opt.step([f[f"inputs/{kind}/p{i}/grad{t}"] for i in range(n)])
            t += 1
        want = [(f[f"{case}/{kind}/p{i}/final"], f[f"{case}/{kind}/p{i}/momentum_buffer"])
                for i in range(n)]
    return params, [opt.state[i]["momentum_buffer"] for i in range(n)], want, t


@pytest.mark.parametrize("case", _golden_cases())
def test_float64_iteration_matches_torchs_algorithm_in_float64(case):
    params, bufs, want, steps = _run_golden(case, "float64")
    assert steps == 5
    for p, b, (p_ref, b_ref) in zip(params, bufs, want):
        assert p.dtype == np.float64
        assert np.abs(p - p_ref).max() <= 1e-12 * max(1.0, np.abs(p_ref).max())
        assert np.abs(b - b_ref).max() <= 1e-14 * max(1.0, np.abs(b_ref).max())


@pytest.mark.parametrize("case", _golden_cases())
def test_bfloat16_default_matches_torchs_muon(case):
    """ns_dtype=None on float32 parameters: torch's own Muon step for step. On these small
    matrices every bfloat16 rounding agrees (measured: bit-identical), so the bound is one
    float32 ulp of the parameters."""
    params, bufs, want, _ = _run_golden(case, "bfloat16")
    for p, b, (p_ref, b_ref) in zip(params, bufs, want):
        assert p.dtype == np.float32
        np.testing.assert_array_max_ulp(p, p_ref, maxulp=1)
        np.testing.assert_array_max_ulp(b, b_ref, maxulp=1)


def test_bfloat16_iteration_against_torch_on_large_matrices():
    """Large matrices: a float32 accumulation on a bfloat16 rounding boundary may round the
    other way than torch's (another BLAS summation order) and spreads over the iterations;
    measured, the output stays within one bfloat16 ulp at 1 (2^-8) of torch's."""
    torch = pytest.importorskip("torch")
    from torch.optim._muon import _zeropower_via_newtonschulz
    rng = np.random.default_rng(0)
    for shape in ((64, 128), (128, 64), (200, 77)):
        G = rng.standard_normal(shape).astype(np.float32)
        ref = _zeropower_via_newtonschulz(torch.from_numpy(G), (3.4445, -4.7750, 2.0315), 5,
                                          1e-7).float().numpy()
        ours = _muon.orthogonalize(G)
        assert np.abs(ours - ref).max() <= 2.0 ** -8
        # up to the first iteration, the emulation is exact
        ref1 = _zeropower_via_newtonschulz(torch.from_numpy(G), (3.4445, -4.7750, 2.0315), 1,
                                           1e-7).float().numpy()
        np.testing.assert_array_equal(_muon.orthogonalize(G, ns_steps=1), ref1)


# ------------------------------------------------------------------------------- reference
shapes = st.tuples(st.integers(1, 12), st.integers(1, 12))
hypers = st.fixed_dictionaries({
    "lr": st.floats(1e-4, 0.1),
    "weight_decay": st.sampled_from([0.0, 0.1, 0.5]),
    "momentum": st.sampled_from([0.0, 0.3, 0.9, 0.95]),
    "nesterov": st.booleans(),
    "ns_steps": st.integers(0, 6),
    "ns_coefficients": st.sampled_from([(3.4445, -4.7750, 2.0315), (2.0, -1.5, 0.5)]),
    "eps": st.sampled_from([1e-7, 1e-3]),
    "adjust_lr_fn": st.sampled_from([None, "original", "match_rms_adamw"]),
})


def _compare(shape, h, dtype, ns_dtype, seed, steps=3):
    rng = np.random.default_rng(seed)
    p = rng.standard_normal(shape).astype(dtype)
    q, state = p.astype(np.float64), {}
    opt = fo.Muon([p], ns_dtype=ns_dtype, **h)
    worst = 0.0
    for _ in range(steps):
        g = rng.standard_normal(shape).astype(dtype)
        opt.step([g])
        q = muon_step(q, g.astype(np.float64), state, {**h, "ns_dtype": ns_dtype})
        worst = max(worst, float(np.abs(p - q).max()))
    return p, q, opt.state[0]["momentum_buffer"], state["momentum_buffer"], worst


@given(shape=shapes, h=hypers, seed=st.integers(0, 2 ** 16))
def test_float64_matches_reference(shape, h, seed):
    p, q, b, b_ref, _ = _compare(shape, h, np.float64, "float64", seed)
    assert np.abs(p - q).max() <= 1e-12
    assert np.abs(b - b_ref).max() <= 1e-15


@given(shape=shapes, h=hypers, seed=st.integers(0, 2 ** 16))
def test_float32_iteration_matches_reference(shape, h, seed):
    p, q, b, b_ref, _ = _compare(shape, h, np.float32, "float32", seed)
    adj = h["lr"] * max(1.0, 0.2 * max(shape), (shape[0] / shape[1]) ** 0.5)
    assert np.abs(p - q).max() <= 1e-6 + 3 * adj * 1e-4
    assert np.abs(b - b_ref).max() <= 1e-6


@given(shape=shapes, h=hypers, seed=st.integers(0, 2 ** 16))
def test_bfloat16_iteration_matches_reference(shape, h, seed):
    """Against the reference's bfloat16 (ml_dtypes rounding, NumPy's float32 matmul): a
    rounding boundary may split them (another summation order); each step then differs by at
    most a few bfloat16 ulps of O times the adjusted learning rate."""
    pytest.importorskip("ml_dtypes")
    p, q, b, b_ref, _ = _compare(shape, h, np.float32, None, seed)
    adj = h["lr"] * max(1.0, 0.2 * max(shape), (shape[0] / shape[1]) ** 0.5)
    assert np.abs(p - q).max() <= 1e-6 + 3 * adj * 2.0 ** -5
    assert np.abs(b - b_ref).max() <= 1e-6


@pytest.mark.parametrize("shape", [(1, 1), (1, 9), (9, 1), (5, 5), (33, 17), (17, 33)])
@pytest.mark.parametrize("ns_dtype", [None, "float32", "float64"])
def test_orthogonalize_matches_reference_iteration(shape, ns_dtype):
    if ns_dtype is None:
        pytest.importorskip("ml_dtypes")
    G = np.random.default_rng(3).standard_normal(shape)
    mode = {None: 0, "float32": 1, "float64": 2}[ns_dtype]
    ours = _muon.orthogonalize(G, mode=mode)
    ref = newton_schulz(G, (3.4445, -4.7750, 2.0315), 5, 1e-7, ns_dtype)
    tol = {None: 2.0 ** -6, "float32": 1e-5, "float64": 1e-13}[ns_dtype]
    assert np.abs(ours - ref).max() <= tol
    # the iteration pushes singular values into about [0.7, 1.2]
    if ns_dtype == "float64":
        s = np.linalg.svd(ours, compute_uv=False)
        assert s.min() > 0.6 and s.max() < 1.3


def test_round_bf16_is_ties_to_even():
    x = np.array([1.0, 1 + 2 ** -8, 1 + 3 * 2 ** -8, 1 + 2 ** -7 + 2 ** -9, np.inf, -0.0],
                 np.float32)
    np.testing.assert_array_equal(_muon.round_bf16(x),
                                  [1.0, 1.0, 1 + 2 ** -6, 1 + 2 ** -7, np.inf, -0.0])
    assert np.isnan(_muon.round_bf16(np.float32(np.nan)))


# ------------------------------------------------------------------------ class behaviour
def _problem(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in ((6, 4), (4, 9), (5, 5))]
    grads = [[rng.standard_normal(p.shape).astype(dtype) for p in params] for _ in range(3)]
    return params, grads


@pytest.mark.parametrize("ns_dtype", [None, "float32", "float64"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_functional_form_equals_class(ns_dtype, dtype):
    params, grads = _problem(dtype=dtype)
    mine = [p.copy() for p in params]
    bufs = [np.zeros_like(p) for p in params]
    opt = fo.Muon(params, lr=0.05, ns_dtype=ns_dtype)
    work = np.empty(2 * 9 * 4 + 2 * 16 * 2, np.float64 if ns_dtype == "float64" else np.float32)
    for gs in grads:
        opt.step(gs)
        muon_(mine, gs, bufs, lr=0.05, ns_dtype=ns_dtype, workspace=work)
    for p, q, b, i in zip(params, mine, bufs, range(3)):
        np.testing.assert_array_equal(p, q)
        np.testing.assert_array_equal(opt.state[i]["momentum_buffer"], b)
        assert p.dtype == dtype


def test_param_groups_and_schedule():
    params, grads = _problem()
    a, b = [p.copy() for p in params], [p.copy() for p in params]
    sched = fo.schedules.cosine_decay(0.05, 10)
    opt = fo.Muon([{"params": a[:2]}, {"params": a[2:], "lr": 0.01, "ns_steps": 3}], lr=sched)
    ref1 = fo.Muon(b[:2], lr=0.05)
    ref2 = fo.Muon(b[2:], lr=0.01, ns_steps=3)
    for t, gs in enumerate(grads):
        ref1.param_groups[0]["lr"] = sched(t)
        opt.step(gs)
        ref1.step(gs[:2])
        ref2.step(gs[2:])
    for x, y in zip(a, b):
        np.testing.assert_array_equal(x, y)


def test_checkpoint_round_trip(tmp_path):
    params, grads = _problem()
    opt = fo.Muon(params, lr=0.02, adjust_lr_fn="match_rms_adamw", ns_dtype="float32")
    opt.step(grads[0])
    fo.save(opt, tmp_path / "muon.npz")
    copies = [p.copy() for p in params]
    other = fo.Muon(copies, lr=1.0)
    fo.load(other, tmp_path / "muon.npz")
    assert other.param_groups[0]["adjust_lr_fn"] == "match_rms_adamw"
    assert other.param_groups[0]["ns_coefficients"] == (3.4445, -4.7750, 2.0315)
    for gs in grads[1:]:
        opt.step(gs)
        other.step(gs)
    for x, y in zip(params, copies):
        np.testing.assert_array_equal(x, y)
    sd = other.state_dict()
    assert set(sd["state"][0]) == {"step", "momentum_buffer"} and sd["state"][0]["step"] == 3


def _unchanged(params, opt):
    return [p.copy() for p in params], {i: {k: v.copy() for k, v in e.items()}
                                        for i, e in opt.state.items()}


def _assert_same(params, opt, saved):
    ps, state = saved
    for p, q in zip(params, ps):
        np.testing.assert_array_equal(p, q)
    assert state.keys() == opt.state.keys()
    for i in state:
        for k in state[i]:
            np.testing.assert_array_equal(state[i][k], opt.state[i][k])


@pytest.mark.parametrize("bad, err, match", [
    (dict(ns_steps=100), ValueError, "less than 100"),
    (dict(ns_steps=2.0), TypeError, "ns_steps"),
    (dict(adjust_lr_fn="arbitrary"), ValueError, "Adjust learning rate function arbitrary"),
    (dict(ns_dtype="bfloat16x"), ValueError, "ns_dtype"),
    (dict(ns_coefficients=(1.0, 2.0)), ValueError, "exactly 3"),
    (dict(momentum=-0.1), ValueError, "momentum"),
    (dict(weight_decay=-1.0), ValueError, "weight_decay"),
    (dict(lr=float("nan")), ValueError, "learning rate"),
    (dict(nesterov=1), TypeError, "nesterov"),
])
def test_bad_hyperparameters_refused_and_nothing_changes(bad, err, match):
    params, grads = _problem()
    with pytest.raises(err, match=match):
        fo.Muon(params, **bad)
    opt = fo.Muon(params)
    opt.step(grads[0])
    saved = _unchanged(params, opt)
    key, value = next(iter(bad.items()))
    opt.param_groups[0][key] = value
    with pytest.raises(err, match=match):
        opt.step(grads[1])
    _assert_same(params, opt, saved)


def test_bad_inputs_refused_and_nothing_changes():
    with pytest.raises(ValueError, match="Muon only supports 2D parameters"):
        fo.Muon([np.zeros(3, np.float32)])
    with pytest.raises(ValueError, match="2D"):
        fo.Muon([np.zeros((2, 2, 2))])
    with pytest.raises(TypeError):
        fo.Muon([np.zeros((2, 2), np.int64)])
    params, grads = _problem()
    opt = fo.Muon([{"params": params[:2]}, {"params": params[2:], "ns_dtype": "float64"}])
    opt.step(grads[0])
    saved = _unchanged(params, opt)
    bad_lists = [
        grads[1][:2],                                              # too few
        grads[1][:2] + [grads[1][2].astype(np.float64)],           # dtype
        grads[1][:2] + [grads[1][2][:, :4]],                       # shape
        [grads[1][0], grads[1][1], params[2]],                     # aliases a parameter
        [grads[1][0], grads[1][1], opt.state[0]["momentum_buffer"][:5, :]],
        [grads[1][0], grads[1][1], opt.state[2]["momentum_buffer"]],  # a buffer
        [opt.state[1]["momentum_buffer"], grads[1][1], grads[1][2]],   # another group's
    ]
    for gs in bad_lists:
        with pytest.raises((TypeError, ValueError)):
            opt.step(gs)
        _assert_same(params, opt, saved)
    nan = [g.copy() for g in grads[1]]
    nan[2][0, 0] = np.nan
    assert opt.step(nan, nonfinite="skip") is False
    _assert_same(params, opt, saved)
    with pytest.raises(ValueError, match=r"grads\[2\]"):
        opt.step(nan, nonfinite="raise")
    _assert_same(params, opt, saved)
    with pytest.raises(ValueError, match="nonfinite"):
        opt.step(grads[1], nonfinite="maybe")
    assert opt.step(grads[1]) is True


def test_functional_refuses_before_writing():
    p = np.ones((3, 4), np.float32)
    g = np.ones((3, 4), np.float32)
    b = np.zeros((3, 4), np.float32)
    for kwargs, err in ((dict(ns_steps=-1), ValueError), (dict(lr=lambda t: 0.1), TypeError),
                        (dict(workspace=np.empty(3, np.float32)), ValueError),
                        (dict(ns_dtype="float64", workspace=np.empty(100, np.float32)),
                         ValueError)):
        with pytest.raises(err):
            muon_(p, g, b, **kwargs)
        np.testing.assert_array_equal(p, 1.0)
        np.testing.assert_array_equal(b, 0.0)
    with pytest.raises(ValueError, match="2D"):
        muon_(np.ones(3), np.ones(3), np.zeros(3))
    with pytest.raises(ValueError):
        muon_(p, g, p)                            # the buffer is the parameter
    with pytest.raises(ValueError):
        muon_(p, b, b)                            # the gradient is the buffer
    np.testing.assert_array_equal(p, 1.0)


def test_no_allocation_proportional_to_parameters_per_step():
    rng = np.random.default_rng(0)
    params = [rng.standard_normal((256, 128)).astype(np.float32),
              rng.standard_normal((64, 300)).astype(np.float32)]
    grads = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    opt = fo.Muon(params, lr=0.01)
    opt.step(grads)                      # state and the work buffer are created here
    tracemalloc.start()
    try:
        base = tracemalloc.take_snapshot()
        for _ in range(3):
            opt.step(grads)
        grown = sum(s.size_diff for s in tracemalloc.take_snapshot().compare_to(base, "filename"))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024 and grown < 16 * 1024, (peak, grown)


def test_steps_in_threads_release_the_gil():
    """Two optimizers stepped from two threads give the results of serial steps."""
    a, grads = _problem(1)
    b = [p.copy() for p in a]
    serial = [p.copy() for p in a]
    opts = [fo.Muon(a[:2]), fo.Muon(a[2:])]
    ref = [fo.Muon(serial[:2]), fo.Muon(serial[2:])]

    def run(i):
        for gs in grads:
            opts[i].step(gs[:2] if i == 0 else gs[2:])
    threads = [threading.Thread(target=run, args=(i,)) for i in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for gs in grads:
        ref[0].step(gs[:2])
        ref[1].step(gs[2:])
    for x, y in zip(a, serial):
        np.testing.assert_array_equal(x, y)
    assert not all(np.array_equal(x, y) for x, y in zip(a, b))


def test_cupy_arrays_refused_clearly():
    """Arrays that are neither NumPy nor CuPy (here tests/fake_cupy's stand-in, not
    registered as ``cupy``) are refused with a TypeError that names the kinds Muon takes (its
    CuPy path: tests/test_cuda_muon_adafactor.py)."""
    import fake_cupy
    with pytest.raises(TypeError, match="numpy.ndarray"):
        fo.Muon([fake_cupy.empty((2, 2), np.float32)])
    with pytest.raises(TypeError, match="numpy.ndarray"):
        a = fake_cupy.empty((2, 2), np.float32)
        muon_(a, a, a)


# ------------------------------------------------------------------------------ the split
def test_split_params_by_name_and_shape():
    named = [("tok_embeddings.weight", np.zeros((50, 8))), ("layers.0.attn.wq", np.zeros((8, 8))),
             ("layers.0.norm.weight", np.zeros(8)), ("layers.0.mlp.w1", np.zeros((16, 8))),
             ("conv.weight", np.zeros((4, 3, 3, 3))), ("output.weight", np.zeros((50, 8))),
             ("head_dim_proj.weight", np.zeros((8, 8)))]
    muon, adamw = split_params(named)
    assert [m is named[i][1] for i, m in zip((1, 3, 6), muon)] == [True] * 3
    assert len(muon) == 3 and len(adamw) == 4
    muon, adamw = split_params(named, exclude=None)
    assert len(muon) == 5
    with pytest.raises(TypeError):
        split_params([np.zeros((2, 2))])


def test_muon_and_adamw_train_together():
    rng = np.random.default_rng(0)
    X = rng.standard_normal((64, 8))
    Y = np.tanh(X @ rng.standard_normal((8, 4)))
    named = {"hidden.weight": rng.standard_normal((16, 8)) * 0.3, "hidden.bias": np.zeros(16),
             "head.weight": rng.standard_normal((4, 16)) * 0.3}
    muon, adamw = split_params(named)
    opts = [fo.Muon(muon, lr=0.02, weight_decay=0.0, ns_dtype="float64"),
            fo.AdamW(adamw, lr=3e-3, weight_decay=0.0)]
    W1, b1, W2 = named["hidden.weight"], named["hidden.bias"], named["head.weight"]

    def loss_grads():
        H = np.tanh(X @ W1.T + b1)
        R = H @ W2.T - Y
        dH = (R @ W2) * (1 - H ** 2) * 2 / len(X)
        return (R ** 2).mean() * 4, dH.T @ X, dH.sum(0), 2 * R.T @ H / len(X)

    first = loss_grads()[0]
    for _ in range(200):
        _, gW1, gb1, gW2 = loss_grads()
        opts[0].step([gW1])
        opts[1].step([gb1, gW2])
    assert loss_grads()[0] < 0.5 * first
