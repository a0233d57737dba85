"""Non-finite gradients: ``step(grads, nonfinite="ignore" | "skip" | "raise")``.

"ignore" (the default, as torch.optim) applies the update; "skip" applies nothing and returns
False; "raise" raises ValueError with nothing changed. Checked for every optimizer, both float
types, one and two param groups, NaN/+Inf/-Inf anywhere (first, last, second tensor, second
group, past the parallel split), and the all-finite reduction itself.
"""
import doctest

import numpy as np
import pytest

import fastopt as fo
from fastopt import _kernels
from fastopt._specs import SPECS
from cases import CASES
from reference import ReferenceOptimizer

NAMES = tuple(SPECS)
# the float64 reference meets the same NaN/Inf/overflow the kernels do; numpy's notes are noise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")
DTYPES = (np.float32, np.float64)
TOL = {np.float32: 3e-5, np.float64: 1e-11}


def make(name, dtype, two_groups, n=50_000):
    """An optimizer over three tensors (one above the OpenMP threshold) and its reference."""
    rng = np.random.default_rng(7)
    params = [rng.standard_normal(s).astype(dtype) for s in ((3, 4), (n,), (5,))]
    hyper = dict(CASES[name][-1])
    if two_groups:
        spec = [{"params": params[:2]}, {"params": params[2:], "lr": 0.5 * hyper["lr"]}]
    else:
        spec = params
    opt = getattr(fo, SPECS[name].class_name)(spec, **hyper)
    ref = ReferenceOptimizer(name, [dict(g) for g in opt.param_groups])
    return opt, ref, params


def grads_like(params, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(p.shape).astype(p.dtype) for p in params]


def snapshot(opt, params):
    return [p.tobytes() for p in params], opt.state_dict()


def assert_same(opt, params, snap):
    raw, sd = snap
    assert [p.tobytes() for p in params] == raw, "parameters changed"
    now = opt.state_dict()
    assert now["param_groups"] == sd["param_groups"]
    assert sd["state"].keys() == now["state"].keys()
    for i in sd["state"]:
        assert sd["state"][i].keys() == now["state"][i].keys()
        for k, v in sd["state"][i].items():
            w = now["state"][i][k]
            assert (v.tobytes() == w.tobytes()) if isinstance(v, np.ndarray) else v == w, (i, k)


def assert_matches(opt, ref, params, dtype):
    for p, r in zip(params, ref.params):
        finite = np.isfinite(r)
        assert (np.isfinite(p) == finite).all()
        scale = max(1.0, float(np.abs(r[finite]).max(initial=0)))
        assert float(np.abs(p[finite] - r[finite]).max(initial=0)) / scale <= TOL[dtype]


# (tensor index, element index) of the bad value: first, last, past the split of the big one
PLACES = [(0, 0), (2, -1), (1, 0), (1, 37_123), (1, -1)]
BAD = [np.nan, np.inf, -np.inf]


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_skip_leaves_everything_untouched_and_returns_false(name, dtype, two_groups):
    fo.set_num_threads(2)
    try:
        opt, ref, params = make(name, dtype, two_groups)
        # a first, finite step so that state exists, then every bad place/value is skipped
        g = grads_like(params, 1)
        assert opt.step(g, nonfinite="skip") is True
        ref.step(g)
        for k, (t, i) in enumerate(PLACES):
            g = grads_like(params, 2 + k)
            g[t].reshape(-1)[i] = BAD[k % 3]
            snap = snapshot(opt, params)
            assert opt.step(g, nonfinite="skip") is False
            assert_same(opt, params, snap)
        # skipped steps do not count: the next step is step 2 for the bias corrections
        g = grads_like(params, 99)
        assert opt.step(g, nonfinite="skip") is True
        ref.step(g)
        assert_matches(opt, ref, params, dtype)
    finally:
        fo.set_num_threads(0)


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_skip_on_the_first_step_creates_no_state(name, dtype):
    opt, ref, params = make(name, dtype, True)
    g = grads_like(params, 3)
    g[2][0] = np.nan
    before = [p.copy() for p in params]
    assert opt.step(g, nonfinite="skip") is False
    assert opt.state == {} and opt.state_dict()["state"] == {}
    assert all(np.array_equal(a, b) for a, b in zip(before, params))


@pytest.mark.parametrize("two_groups", [False, True], ids=["one-group", "two-groups"])
@pytest.mark.parametrize("name", NAMES)
def test_raise_names_the_gradient_and_changes_nothing(name, two_groups):
    opt, ref, params = make(name, np.float32, two_groups)
    g = grads_like(params, 1)
    opt.step(g)
    for t, i in PLACES:
        g = grads_like(params, 4)
        g[t].reshape(-1)[i] = np.inf
        snap = snapshot(opt, params)
        with pytest.raises(ValueError, match=rf"grads\[{t}\] contains NaN or Inf"):
            opt.step(g, nonfinite="raise")
        assert_same(opt, params, snap)
    assert opt.step(grads_like(params, 5), nonfinite="raise") is True


@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
@pytest.mark.parametrize("name", NAMES)
def test_ignore_is_the_default_and_applies_the_update(name, dtype):
    """As torch.optim: the update runs and NaN reaches the parameter or its state (Lion's sign
    of a NaN is 0, as torch's), elsewhere it is exact."""
    opt, ref, params = make(name, dtype, False)
    g = grads_like(params, 6)
    g[1][5] = np.nan
    assert opt.step(g) is True
    ref.step(g)
    assert np.isnan(params[1][5]) or any(np.isnan(a[5]) for a in opt.state[1].values()
                                         if isinstance(a, np.ndarray))
    assert_matches(opt, ref, params, dtype)
    g = grads_like(params, 7)
    g[0][0, 0] = -np.inf
    assert opt.step(g, nonfinite="ignore") is True
    ref.step(g)
    assert_matches(opt, ref, params, dtype)


@pytest.mark.parametrize("bad", ["Skip", "none", None, True, 0])
def test_unknown_mode_is_rejected(bad):
    w = np.ones(3)
    opt = fo.SGD([w], lr=0.1)
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        opt.step([np.ones(3)], nonfinite=bad)
    assert (w == 1).all()


def test_bad_gradients_are_reported_before_their_values_are_read():
    w = np.ones(3, np.float32)
    opt = fo.Adam([w])
    with pytest.raises(TypeError, match=r"grads\[0\] must have dtype float32"):
        opt.step([np.full(3, np.nan)], nonfinite="skip")          # float64 for a float32 param
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory"):
        opt.step([w], nonfinite="raise")


# ------------------------------------------------------------------ the all-finite reduction
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("dtype", DTYPES, ids=["f32", "f64"])
def test_all_finite_finds_one_bad_element_anywhere(dtype, threads):
    sizes = [0, 1, 15, 16, 17, 4095, 4096, 4097, 40_000]
    params = [np.zeros(n, dtype) for n in sizes] + [np.zeros(3, np.float64 if dtype == np.float32 else np.float32)]
    plan = _kernels.Plan(params)
    grads = [np.ones_like(p) for p in params]
    old = _kernels.get_parallel_threshold()
    fo.set_num_threads(threads)
    _kernels.set_parallel_threshold(64)
    try:
        assert _kernels.all_finite(plan, grads) is True
        fi = np.finfo(dtype)
        for value in (fi.max, -fi.max, fi.smallest_subnormal, -0.0, fi.tiny):
            grads[-2][-1] = value
            assert _kernels.all_finite(plan, grads) is True
        grads[-2][-1] = 1
        for t, g in enumerate(grads):
            for i in sorted({0, g.size // 2, g.size - 1}) if g.size else []:
                for bad in BAD:
                    g[i] = bad
                    assert _kernels.all_finite(plan, grads) is False, (t, i, bad)
                    g[i] = 1
        assert _kernels.all_finite(plan, grads) is True
    finally:
        fo.set_num_threads(0)
        _kernels.set_parallel_threshold(old)


@pytest.mark.parametrize("dtype,bits", [(np.float32, np.uint32), (np.float64, np.uint64)])
def test_all_finite_agrees_with_numpy_on_random_bit_patterns(dtype, bits):
    """Every NaN payload, both infinities, subnormals: the bit test equals np.isfinite."""
    rng = np.random.default_rng(3)
    p = np.zeros(5, dtype)
    plan = _kernels.Plan([p])
    for _ in range(3000):
        g = rng.integers(0, np.iinfo(bits).max, 5, dtype=bits, endpoint=True).view(dtype)
        assert _kernels.all_finite(plan, [g]) == bool(np.isfinite(g).all())


def test_all_finite_reads_only():
    p = np.zeros(10)
    plan = _kernels.Plan([p])
    g = np.full(10, np.nan)
    g.flags.writeable = False
    assert _kernels.all_finite(plan, [g]) is False
    assert (p == 0).all()


@pytest.mark.parametrize("name", list(fo.optim.first_order.CLASSES))
def test_class_doctests_show_the_returned_flag(name):
    cls = fo.optim.first_order.CLASSES[name]
    runner = doctest.DocTestRunner(optionflags=doctest.ELLIPSIS)
    for test in doctest.DocTestFinder().find(cls, name, globs={}):
        runner.run(test)
    result = runner.summarize(verbose=False)
    assert result.attempted > 0 and result.failed == 0
    assert "True" in cls.__doc__


# ------------------------------------------------------- the other steps that take grads
def test_every_grads_step_takes_nonfinite_with_ignore_as_default():
    """The wrappers of `Optimizer.step` (mixed precision, the MPI optimizers) accept it too."""
    import inspect
    from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
    for cls in (fo.Optimizer, fo.MixedPrecision, DistributedOptimizer, ShardedOptimizer):
        param = inspect.signature(cls.step).parameters.get("nonfinite")
        assert param is not None and param.default == "ignore", cls


def _mixed_snapshot(opt, params):
    sd = opt.state_dict()
    state = sorted((i, k, v.tobytes() if isinstance(v, np.ndarray) else v)
                   for i, entry in sd["state"].items() for k, v in entry.items())
    mp = sd["mixed_precision"]
    return ([p.tobytes() for p in params], [m.tobytes() for m in opt.master_params], state,
            mp["counters"], repr(mp["loss_scale"]), opt.loss_scale, opt.skipped_steps)


def test_mixed_precision_skip_works_without_a_loss_scale():
    w = np.array([1.0, -2.0, 3.0], np.float16)
    opt = fo.MixedPrecision(fo.Adam, [w], lr=0.1)           # skip_nonfinite is off
    assert opt.step([np.ones(3, np.float16)], nonfinite="skip") is True
    snap = _mixed_snapshot(opt, [w])
    g = np.array([1.0, np.nan, 1.0], np.float16)
    assert opt.step([g], nonfinite="skip") is False
    now = _mixed_snapshot(opt, [w])
    assert now[:-1] == snap[:-1] and now[-1] == 1         # counted, nothing else changed
    ref_w = np.array([1.0, -2.0, 3.0], np.float16)
    ref = fo.MixedPrecision(fo.Adam, [ref_w], lr=0.1)
    ref.step([np.ones(3, np.float16)])
    for o in (opt, ref):                                  # the skipped step is not counted
        o.step([np.full(3, 0.5, np.float16)])
    assert w.tobytes() == ref_w.tobytes()
    assert opt.master_params[0].tobytes() == ref.master_params[0].tobytes()
    assert opt.step([g]) is True and np.isnan(w[1])      # "ignore" still follows skip_nonfinite


@pytest.mark.parametrize("loss_scale", [None, "dynamic", 0.5])
def test_mixed_precision_raise_changes_nothing_not_even_the_loss_scale(loss_scale):
    w = np.zeros((2, 3), np.float16)
    v = np.zeros(4, np.float32)
    opt = fo.MixedPrecision(fo.SGD, [w, v], lr=0.1, momentum=0.9, loss_scale=loss_scale)
    opt.step([np.ones((2, 3), np.float16), np.ones(4, np.float32)])
    snap = _mixed_snapshot(opt, [w, v])
    bad = np.full(4, 3e38, np.float32) if loss_scale == 0.5 else np.array([1, 1, np.inf, 1],
                                                                          np.float32)
    with pytest.raises(ValueError, match=r"grads\[1\] contains NaN or Inf after division by "
                                         r"the loss scale .*nonfinite='raise'"):
        opt.step([np.ones((2, 3), np.float16), bad], nonfinite="raise")
    assert _mixed_snapshot(opt, [w, v]) == snap
    assert opt.step([np.ones((2, 3), np.float16), np.ones(4, np.float32)],
                    nonfinite="raise") is True


@pytest.mark.parametrize("bad", ["Skip", None, 1])
def test_mixed_precision_rejects_an_unknown_mode(bad):
    w = np.zeros(3, np.float16)
    opt = fo.MixedPrecision(fo.SGD, [w], lr=0.1)
    with pytest.raises(ValueError, match="nonfinite must be one of"):
        opt.step([np.ones(3, np.float16)], nonfinite=bad)
    assert (w == 0).all() and opt.skipped_steps == 0
