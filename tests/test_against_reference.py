"""Every optimizer and option vs the NumPy float64 oracle (tests/reference.py).

Hypothesis draws sizes (0, 1, odd, above the OpenMP threshold), dtypes, thread counts, one or
several tensors in one or two groups, gradient scales and step counts; after the steps, params
and every state buffer must agree with the oracle within the dtype's tolerance.
"""
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import fastopt as fo
from cases import CASES, EXTRA_CASES
from reference import NAMES, ReferenceOptimizer

CLASSES = {"sgd": fo.SGD, "adagrad": fo.Adagrad, "rmsprop": fo.RMSprop, "adam": fo.Adam,
           "adamw": fo.AdamW, "adadelta": fo.Adadelta, "adamax": fo.Adamax}
# max|fastopt - oracle| <= TOL * max(1, max|oracle|), per tensor
TOL = {np.float32: 2e-5, np.float64: 1e-12}
ALL_CASES = [(n, h) for n in NAMES for h in CASES[n] + EXTRA_CASES.get(n, [])]
BIG = fo._kernels.get_parallel_threshold() + 1001
sizes = st.sampled_from([0, 1, 2, 7, 33, 1000, BIG])


def close(a, b, dtype):
    scale = max(1.0, float(np.max(np.abs(b)))) if b.size else 1.0
    err = float(np.max(np.abs(a.astype(np.float64) - b))) if b.size else 0.0
    return err <= TOL[dtype] * scale, err


def check_against_reference(name, hyper, dtype, shapes, split, steps, threads, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    groups = [{"params": params[:split]}] + ([{"params": params[split:], "lr": hyper["lr"] * 0.5}]
                                             if split < len(params) else [])
    opt = CLASSES[name](groups, **hyper)
    ref = ReferenceOptimizer(name, [dict(hyper, **g) for g in groups])
    old = fo.get_num_threads()
    fo.set_num_threads(threads)
    try:
        for _ in range(steps):
            scale = 10.0 ** rng.uniform(-2, 1)
            grads = [(scale * rng.standard_normal(s)).astype(dtype) for s in shapes]
            opt.step(grads)
            ref.step(grads)
    finally:
        fo.set_num_threads(old)
    for i, (p, r) in enumerate(zip(params, ref.params)):
        assert p.dtype == dtype
        ok, err = close(p, r, dtype)
        assert ok, f"{name} {hyper} param {i}: error {err:.3g}"
    flat_states = [s for g in ref.states for s in g]
    for i, rs in enumerate(flat_states):
        for key, value in rs.items():
            ok, err = close(opt.state[i][key], value, dtype)
            assert ok, f"{name} {hyper} state {key} of param {i}: error {err:.3g}"


@pytest.mark.parametrize("name,hyper", ALL_CASES, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL_CASES)])
@settings(max_examples=8)
@given(dtype=st.sampled_from([np.float32, np.float64]),
       shapes=st.lists(sizes, min_size=1, max_size=4).map(lambda ns: [(n,) for n in ns]),
       split=st.integers(1, 4), steps=st.integers(1, 6), threads=st.sampled_from([1, 2]),
       seed=st.integers(0, 2**32 - 1))
def test_matches_reference(name, hyper, dtype, shapes, split, steps, threads, seed):
    check_against_reference(name, hyper, dtype, shapes, min(split, len(shapes)), steps, threads,
                            seed)


@pytest.mark.parametrize("name", NAMES)
@settings(max_examples=25)
@given(data=st.data())
def test_random_hyperparameters(name, data):
    """Hyperparameters drawn from their valid ranges, not only the fixed grid."""
    lr = data.draw(st.floats(1e-4, 0.5))
    unit = st.floats(0.0, 0.999)
    hyper = {"lr": lr, "weight_decay": data.draw(st.sampled_from([0.0, 1e-3, 0.1])),
             "maximize": data.draw(st.booleans())}
    if name == "sgd":
        m = data.draw(st.sampled_from([0.0, 0.5, 0.9, 0.99]))
        nesterov = m > 0 and data.draw(st.booleans())
        hyper.update(momentum=m, nesterov=nesterov,
                     dampening=0.0 if nesterov else data.draw(st.sampled_from([0.0, 0.3])))
    elif name == "adagrad":
        hyper.update(lr_decay=data.draw(st.sampled_from([0.0, 0.05])),
                     eps=data.draw(st.sampled_from([1e-10, 1e-3])),
                     initial_accumulator_value=data.draw(st.sampled_from([0.0, 0.5])))
    elif name == "rmsprop":
        centered = data.draw(st.booleans())
        # centered with alpha -> 0 makes v - m^2 cancel to rounding noise (ill-conditioned in
        # any precision), so it draws alpha from [0.5, 1)
        hyper.update(alpha=data.draw(st.floats(0.5, 0.999) if centered else unit),
                     eps=data.draw(st.sampled_from([1e-8, 1e-3])),
                     momentum=data.draw(st.sampled_from([0.0, 0.9])), centered=centered)
    elif name in ("adam", "adamw", "adamax"):
        hyper.update(betas=(data.draw(unit), data.draw(unit)),
                     eps=data.draw(st.sampled_from([1e-8, 1e-4])))
        if name != "adamax":
            hyper["amsgrad"] = data.draw(st.booleans())
    elif name == "adadelta":
        hyper.update(rho=data.draw(st.floats(0.0, 1.0)),
                     eps=data.draw(st.sampled_from([1e-6, 1e-3])))
    dtype = data.draw(st.sampled_from([np.float32, np.float64]))
    n = data.draw(sizes)
    check_against_reference(name, hyper, dtype, [(n,), (3, 5)], 1, data.draw(st.integers(1, 5)),
                            data.draw(st.sampled_from([1, 2])), data.draw(st.integers(0, 2**31)))


def test_one_and_two_threads_give_identical_bits():
    rng = np.random.default_rng(0)
    n = 3 * BIG
    results = []
    for threads in (1, 2):
        p = rng.standard_normal(n).astype(np.float32) * 0 + np.linspace(-1, 1, n, dtype=np.float32)
        opt = fo.Adam([p], lr=0.01, amsgrad=True)
        fo.set_num_threads(threads)
        try:
            for k in range(3):
                opt.step([np.cos(np.arange(n, dtype=np.float32) * (k + 1))])
        finally:
            fo.set_num_threads(0)
        results.append(p)
    assert np.array_equal(results[0], results[1])


def test_rmsprop_equals_adam_with_beta1_zero():
    """Adam(beta1=0, beta2=a, eps=0) = RMSprop(alpha=a, eps=0) with lr_t = lr sqrt(1 - a^t)."""
    rng = np.random.default_rng(3)
    a, lr = 0.9, 0.01
    p1 = rng.standard_normal(50)
    p2 = p1.copy()
    adam = fo.Adam([p1], lr=lr, betas=(0.0, a), eps=0.0)
    rms = fo.RMSprop([p2], lr=lambda t: lr * np.sqrt(1 - a ** (t + 1)), alpha=a, eps=0.0)
    for _ in range(20):
        g = rng.standard_normal(50) + 0.1
        adam.step([g])
        rms.step([g])
    np.testing.assert_allclose(p1, p2, rtol=1e-13, atol=1e-14)


def _fma(a, b, c):
    """a*b + c rounded once (exact rational arithmetic; Python's int/int division rounds
    correctly), elementwise over float64 arrays."""
    from fractions import Fraction
    return np.array([float(Fraction(x) * Fraction(y) + Fraction(z))
                     for x, y, z in np.broadcast(a, b, c)])


def test_sgd_without_momentum_is_gradient_descent():
    """p <- p - lr g, rounded once as torch's param.add_(grad, alpha=-lr) (a fused
    multiply-add), and no state."""
    rng = np.random.default_rng(4)
    p = rng.standard_normal(100)
    expected = p.copy()
    opt = fo.SGD([p], lr=0.1, momentum=0.0)
    for _ in range(10):
        g = rng.standard_normal(100)
        opt.step([g])
        expected = _fma(-0.1, g, expected)
    np.testing.assert_array_equal(p, expected)
    assert opt.state == {}


def test_sutskever_momentum_equals_torch_form_at_constant_lr():
    rng = np.random.default_rng(5)
    p1 = rng.standard_normal(64)
    p2 = p1.copy()
    a = fo.SGD([p1], lr=0.05, momentum=0.9)
    b = fo.SGD([p2], lr=0.05, momentum=0.9, sutskever=True)
    for _ in range(30):
        g = rng.standard_normal(64)
        a.step([g])
        b.step([g])
    np.testing.assert_allclose(p1, p2, rtol=1e-12, atol=1e-12)


@pytest.mark.parametrize("name", NAMES)
def test_updates_in_place_and_keeps_dtype(name):
    for dtype in (np.float32, np.float64):
        p = np.ones((4, 3), dtype)
        before = p.__array_interface__["data"][0]
        opt = CLASSES[name]([p], **CASES[name][0])
        opt.step([np.full((4, 3), 0.5, dtype)])
        assert p.__array_interface__["data"][0] == before and p.dtype == dtype
        assert not np.array_equal(p, np.ones((4, 3), dtype))
        for key, buf in opt.state.get(0, {}).items():
            assert buf.dtype == dtype and buf.shape == p.shape
            assert not np.shares_memory(buf, p)


def test_mixed_dtypes_in_one_group():
    p32 = np.ones(10, np.float32)
    p64 = np.ones(7, np.float64)
    opt = fo.Adam([p32, p64], lr=0.1)
    opt.step([np.ones(10, np.float32), np.ones(7, np.float64)])
    np.testing.assert_allclose(p32, 0.9, rtol=1e-6)
    np.testing.assert_allclose(p64, 0.9, rtol=1e-7)
