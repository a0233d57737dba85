"""Inputs refused before they corrupt anything, and steps that never apply half of a change.

- Param groups edited behind the optimizer's back (a group's 'params' replaced or edited, a
  group removed or inserted) raise ValueError naming the group, nothing changed: base
  optimizers, MixedPrecision, Newton, SVRG and ShardedOptimizer.
- A parameter (or state buffer, or master copy) resized or reallocated in place raises
  ValueError naming it instead of being written through a stale pointer (NumPy, mixed and
  CuPy plans, ShardedOptimizer).
- numpy.ma.MaskedArray and numpy.matrix are refused as parameters and gradients (TypeError).
- A value written into a param group while a step runs is never half-applied: every group
  of a step runs with the values validated in its prepare phase.
- MixedPrecision refuses a gradient that aliases another group's parameter, master or state.
- Rules with a product that can overflow where torch's fused multiply-add does not (centered
  RMSprop's v - m^2, weight decay g + wd p, SGD's update) stay finite where torch does.

Every refused step is checked to leave parameters and optimizer state exactly as they were.
"""
import re
import sys
import threading
import time
from fractions import Fraction

import numpy as np
import pytest

import fastopt as fo
from fastopt.mixed import MixedPrecision
from fastopt.optim import SVRG, Newton

pytestmark = pytest.mark.filterwarnings("ignore:the matrix subclass:PendingDeprecationWarning")


# ----------------------------------------------------------------------------- helpers
def _copy(x):
    if isinstance(x, np.ndarray):
        return x.copy()
    if isinstance(x, dict):
        return {k: _copy(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return type(x)(_copy(v) for v in x)
    return x


def _equal(a, b):
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        return (isinstance(a, np.ndarray) and isinstance(b, np.ndarray) and a.dtype == b.dtype
                and a.shape == b.shape and np.array_equal(a, b, equal_nan=True))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(_equal(x, y) for x, y in zip(a, b)))
    return a == b or (a != a and b != b)


def _state_of(opt):
    """Everything an optimizer holds, read without going through checks that might refuse."""
    out = {"state": _copy(opt.state)}
    if hasattr(opt, "_records"):
        out["steps"] = [r.step for r in opt._records]
        out["present"] = [r.present for r in opt._records]
    if hasattr(opt, "_steps"):
        out["steps"] = list(opt._steps)
    if isinstance(opt, MixedPrecision):
        out["masters"] = _copy([m for r in opt._records for m in r.plan.masters])
        out["counters"] = [r.plan.counter for r in opt._records]
        out["scale"] = opt.loss_scale
        out["skipped"] = opt.skipped_steps
    return out


class Frozen:
    """Snapshot of arrays and optimizer state; `unchanged()` says whether both are as they were."""

    def __init__(self, opt, arrays):
        self.opt, self.arrays = opt, list(arrays)
        self.values = [a.copy() for a in self.arrays]
        self.state = _state_of(opt)

    def assert_unchanged(self):
        for i, (a, v) in enumerate(zip(self.arrays, self.values)):
            assert a.dtype == v.dtype and a.shape == v.shape and np.array_equal(a, v), \
                f"array {i} changed"
        assert _equal(_state_of(self.opt), self.state), "optimizer state changed"


KINDS = ["adam", "sgd-momentum", "mixed", "newton", "svrg"]


def _make(kind, n=(3, 4)):
    """An optimizer of `kind` over two groups, one step taken; returns (opt, params, step)."""
    rng = np.random.default_rng(0)
    dtype = np.float16 if kind == "mixed" else np.float64
    params = [rng.standard_normal(k).astype(dtype) for k in n]
    groups = [{"params": [params[0]]}, {"params": [params[1]], "lr": 0.05}]
    if kind == "adam":
        opt = fo.Adam(groups, lr=0.1)
    elif kind == "sgd-momentum":
        opt = fo.SGD(groups, lr=0.1, momentum=0.9)
    elif kind == "mixed":
        opt = MixedPrecision(fo.Adam, groups, lr=0.1)
    elif kind == "newton":
        opt = Newton(groups, lr=0.5, damping=0.1)
    else:
        opt = SVRG(groups, lr=0.1)

    def step(grads_for=None):
        ps = [p for g in opt.param_groups for p in g["params"]] if grads_for is None else grads_for
        grads = [np.full(p.shape, 0.5, p.dtype) for p in ps]
        if kind == "newton":
            return opt.step(grads, [np.eye(p.size) * 2.0 for p in ps])
        if kind == "svrg":
            if not opt.has_snapshot:
                opt.snapshot(grads)
            return opt.step(grads, [np.full(p.shape, 0.25, p.dtype) for p in ps])
        return opt.step(grads)

    step()
    return opt, params, step


# ------------------------------------------------------------------- item 4: param groups
def _replace_params(opt, new):
    opt.param_groups[0]["params"] = [new]


def _edit_params_in_place(opt, new):
    opt.param_groups[0]["params"][0] = new


def _append_param(opt, new):
    opt.param_groups[0]["params"].append(new)


def _delete_group(opt, new):
    del opt.param_groups[0]


def _append_group(opt, new):
    opt.param_groups.append({**{k: v for k, v in opt.param_groups[0].items()}, "params": [new]})


def _insert_group(opt, new):
    opt.param_groups.insert(0, {**{k: v for k, v in opt.param_groups[0].items()},
                                "params": [new]})


def _swap_groups(opt, new):
    opt.param_groups[0], opt.param_groups[1] = opt.param_groups[1], opt.param_groups[0]


EDITS = {"replace-params": (_replace_params, 0), "edit-params-in-place": (_edit_params_in_place, 0),
         "append-param": (_append_param, 0), "delete-group": (_delete_group, 0),
         "append-group": (_append_group, 2), "insert-group": (_insert_group, 0),
         "swap-groups": (_swap_groups, 0)}


@pytest.mark.parametrize("edit", sorted(EDITS))
@pytest.mark.parametrize("kind", KINDS)
def test_param_groups_edited_behind_the_optimizers_back_raise_with_nothing_changed(kind, edit):
    opt, params, step = _make(kind)
    new = np.ones_like(params[0])
    change, group = EDITS[edit]
    frozen = Frozen(opt, params + [new])
    change(opt, new)
    with pytest.raises(ValueError, match=rf"param_groups\[{group}\].*add_param_group"):
        step()
    frozen.assert_unchanged()
    with pytest.raises(ValueError, match=r"param_groups\["):
        opt.state_dict()
    with pytest.raises(ValueError, match=r"param_groups\["):
        opt.add_param_group({"params": [np.ones(2, params[0].dtype)]})
    frozen.assert_unchanged()


@pytest.mark.parametrize("kind", KINDS)
def test_a_group_dict_or_params_list_replaced_by_an_equal_copy_keeps_stepping(kind):
    opt, params, step = _make(kind)
    ref, ref_params, ref_step = _make(kind)
    opt.param_groups[0] = dict(opt.param_groups[0])
    opt.param_groups[1]["params"] = list(opt.param_groups[1]["params"])
    step()
    ref_step()
    for p, r in zip(params, ref_params):
        np.testing.assert_array_equal(p, r)


def test_the_group_that_remains_after_a_deletion_is_not_stepped_with_the_wrong_lr():
    """The issue's reproduction: before, the removed group's array was stepped with the other
    group's lr."""
    a, b = np.ones(3), np.ones(3)
    opt = fo.SGD([{"params": [a], "lr": 1.0}, {"params": [b], "lr": 0.1}])
    del opt.param_groups[0]
    with pytest.raises(ValueError, match=r"param_groups\[0\] was removed"):
        opt.step([np.ones(3)])
    np.testing.assert_array_equal(a, 1.0)
    np.testing.assert_array_equal(b, 1.0)


# ------------------------------------------------------------- item 8: stale pointers
@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("how", ["resize-larger", "resize-same-size", "reshape-in-place"])
def test_a_parameter_resized_in_place_is_refused_not_written_through(kind, how):
    opt, params, step = _make(kind)
    p = params[1]
    if how == "resize-larger":
        p.resize(1000, refcheck=False)
    elif how == "resize-same-size":
        p.resize((2, 2), refcheck=False)
    else:
        p.shape = (2, 2)
    frozen = Frozen(opt, params)
    grads = [np.full((3,), 0.5, p.dtype), np.full((4,), 0.5, p.dtype)]
    with pytest.raises(ValueError, match=r"params\[1\] was resized or reallocated"):
        if kind == "newton":
            opt.step(grads, [np.eye(3) * 2.0, np.eye(4) * 2.0])
        elif kind == "svrg":
            opt.step(grads, [g * 0.5 for g in grads])
        else:
            opt.step(grads)
    frozen.assert_unchanged()


def test_a_mixed_precision_master_or_state_buffer_resized_in_place_is_refused():
    for target in ("master", "state"):
        opt, params, step = _make("mixed")
        buf = opt.master_params[1] if target == "master" else opt.state[1]["exp_avg"]
        buf.resize(100, refcheck=False)
        frozen = Frozen(opt, params)
        label = "master copy of params[1]" if target == "master" else "state buffer 0 of params[1]"
        with pytest.raises(ValueError, match=re.escape(label) + " was resized"):
            step()
        frozen.assert_unchanged()


def test_a_state_buffer_reshaped_in_place_is_refused():
    w = np.ones(6)
    opt = fo.Adam([w])
    opt.step([np.ones(6)])
    opt.state[0]["exp_avg_sq"].shape = (2, 3)
    frozen = Frozen(opt, [w])
    with pytest.raises(ValueError, match=r"state buffer 1 of params\[0\] was resized"):
        opt.step([np.ones(6)])
    frozen.assert_unchanged()


def test_sharded_optimizer_refuses_a_resized_parameter_and_edited_groups():
    pytest.importorskip("mpi4py")
    from fastopt.distributed import ShardedOptimizer
    a, b = np.ones(4), np.ones(3)
    opt = ShardedOptimizer(fo.Adam, [{"params": [a]}, {"params": [b], "lr": 0.1}])
    assert opt.step([np.ones(4), np.ones(3)])
    b.resize(50, refcheck=False)
    a_before, b_before = a.copy(), b.copy()
    with pytest.raises(ValueError, match=r"params\[1\] was resized or reallocated"):
        opt.step([np.ones(4), np.ones(3)])
    np.testing.assert_array_equal(a, a_before)
    np.testing.assert_array_equal(b, b_before)

    c, d = np.ones(4), np.ones(3)
    opt = ShardedOptimizer(fo.Adam, [{"params": [c]}, {"params": [d], "lr": 0.1}])
    del opt.param_groups[0]
    with pytest.raises(ValueError, match=r"param_groups\[0\] was removed"):
        opt.step([np.ones(4), np.ones(3)])
    np.testing.assert_array_equal(c, 1.0)
    np.testing.assert_array_equal(d, 1.0)


def test_cupy_plan_refuses_a_reallocated_parameter_or_state(monkeypatch):
    """On the stand-in CuPy (tests/fake_cupy.py): the plan's device tables hold pointers."""
    import fake_cupy as fk
    cuda = pytest.importorskip("fastopt.cuda")
    fk.reset()
    monkeypatch.setitem(sys.modules, "cupy", fk)
    monkeypatch.setattr(cuda, "_MODULES", {})
    monkeypatch.setattr(cuda, "_KERNELS", {})
    try:
        for target in ("param", "state"):
            p = fk.ndarray(np.ones(5, np.float32))
            buf = fk.ndarray(np.zeros(5, np.float32))
            plan = cuda.Plan([p])
            plan.set_state(0, [buf])
            g = [fk.ndarray(np.ones(5, np.float32))]
            cuda.sgd(plan, g, 0.1, 0.9, 0.0, 0.0, cuda.MOMENTUM | cuda.FIRST)
            moved = p if target == "param" else buf
            kept = buf if target == "param" else p
            kept_before = kept.get()
            moved._a = moved._a.copy()          # the array now owns other memory
            moved_before = moved.get()
            label = "params[0]" if target == "param" else "state buffer 0 of params[0]"
            with pytest.raises(ValueError, match=re.escape(label) + " was resized or reallocated"):
                cuda.sgd(plan, g, 0.1, 0.9, 0.0, 0.0, cuda.MOMENTUM)
            np.testing.assert_array_equal(moved.get(), moved_before)
            np.testing.assert_array_equal(kept.get(), kept_before)
    finally:
        fk.release_events()
        fk.reset()


# --------------------------------------------------------- item 9: masked arrays, matrix
SUBCLASSES = {"masked": (lambda a: np.ma.masked_array(a, mask=np.arange(a.size) % 2 == 0),
                         "MaskedArray"),
              "matrix": (lambda a: np.matrix(a.reshape(1, -1)), "matrix")}


@pytest.mark.parametrize("sub", sorted(SUBCLASSES))
@pytest.mark.parametrize("kind", ["adam", "mixed", "newton", "svrg", "functional"])
def test_masked_arrays_and_matrices_are_refused_as_parameters(kind, sub):
    make, word = SUBCLASSES[sub]
    dtype = np.float16 if kind == "mixed" else np.float64
    p = make(np.ones(4, dtype))
    before = np.asarray(p).copy()
    with pytest.raises(TypeError, match=word):
        if kind == "adam":
            fo.Adam([p])
        elif kind == "mixed":
            MixedPrecision(fo.Adam, [p])
        elif kind == "newton":
            Newton([p])
        elif kind == "svrg":
            SVRG([p])
        else:
            fo.functional.sgd_(p, np.ones(p.shape), lr=0.1)
    np.testing.assert_array_equal(np.asarray(p), before)


@pytest.mark.parametrize("sub", sorted(SUBCLASSES))
@pytest.mark.parametrize("kind", KINDS)
def test_masked_arrays_and_matrices_are_refused_as_gradients(kind, sub):
    make, word = SUBCLASSES[sub]
    opt, params, step = _make(kind, n=(4, 4))
    frozen = Frozen(opt, params)
    grads = [np.full(4, 0.5, params[0].dtype), make(np.full(4, 0.5, params[0].dtype))]
    with pytest.raises(TypeError, match=word):
        if kind == "newton":
            opt.step(grads, [np.eye(4) * 2.0] * 2)
        elif kind == "svrg":
            opt.step(grads, [np.full(4, 0.25)] * 2)
        else:
            opt.step(grads)
    frozen.assert_unchanged()


@pytest.mark.parametrize("sub", sorted(SUBCLASSES))
def test_a_masked_or_matrix_hessian_is_refused(sub):
    w = np.ones(2)
    opt = Newton([w])
    H = {"masked": np.ma.masked_array(2 * np.eye(2), mask=[[0, 1], [0, 0]]),
         "matrix": np.matrix(2 * np.eye(2))}[sub]
    with pytest.raises(TypeError, match=r"hessians\[0\] is a numpy\.(ma\.)?" + SUBCLASSES[sub][1]):
        opt.step([np.ones(2)], [H])
    np.testing.assert_array_equal(w, 1.0)


def test_distributed_layout_refuses_masked_gradients_and_parameters():
    from fastopt.distributed import _flat
    layout = _flat.FlatLayout([np.ones(3)])
    assert "MaskedArray" in layout.grad_problem([np.ma.masked_array(np.ones(3))])
    with pytest.raises(TypeError, match="matrix"):
        _flat.check_param(np.matrix(np.ones((1, 3))), "params[0]")


def test_memmap_parameters_still_work(tmp_path):
    p = np.memmap(tmp_path / "w.bin", dtype=np.float64, mode="w+", shape=(3,))
    p[:] = 1.0
    fo.SGD([p], lr=0.5).step([np.ones(3)])
    np.testing.assert_array_equal(p, 0.5)


# ------------------------------------------- item 13: validated snapshot, prepare/apply
def _reference(kind, steps):
    """The parameters after `steps` steps of _make(kind) with nothing written into groups."""
    opt, params, step = _make(kind)
    for _ in range(steps - 1):
        step()
    return params


BAD = {"adam": ("betas", (2.0, 0.5)), "sgd-momentum": ("momentum", -1.0),
       "mixed": ("eps", -1.0), "newton": ("damping", -5.0), "svrg": ("weight_decay", -3.0)}


@pytest.mark.parametrize("kind", KINDS)
@pytest.mark.parametrize("target", [0, 1])
def test_a_value_written_into_a_group_during_a_step_is_not_half_applied(kind, target):
    """A schedule (called in the prepare phase, after its group's values were read) writes an
    invalid value into a group, as another thread could at that moment. The step must run
    every group with the values it validated; the next step refuses the bad value, with
    nothing changed."""
    opt, params, step = _make(kind)
    key, bad = BAD[kind]
    lr = opt.param_groups[1]["lr"]
    calls = []

    def schedule(t):
        if not calls:
            opt.param_groups[target][key] = bad
        calls.append(t)
        return lr

    opt.param_groups[1]["lr"] = schedule
    step()
    want = _reference(kind, 2)
    for p, w in zip(params, want):
        np.testing.assert_array_equal(p, w)
    steps = _state_of(opt)["steps"]
    assert steps == [2, 2], steps
    frozen = Frozen(opt, params)
    with pytest.raises(ValueError, match=rf"param_groups\[{target}\]"):
        step()
    frozen.assert_unchanged()


def test_a_thread_writing_bad_values_into_group_1_never_causes_a_partial_update():
    """The issue's reproduction: one thread steps, another flips group 1's eps between a
    valid and an invalid value. Every step either updates both groups (with the valid value)
    or neither."""
    def fresh():
        rng = np.random.default_rng(1)
        a, b = rng.standard_normal(1000), rng.standard_normal(1000)
        return a, b, fo.Adam([{"params": [a]}, {"params": [b], "lr": 0.01}], lr=0.01)

    a, b, opt = fresh()
    g = [np.full(1000, 0.1), np.full(1000, 0.2)]
    stop = threading.Event()
    ok = [0]

    def writer():
        while not stop.is_set():
            opt.param_groups[1]["eps"] = -1.0
            time.sleep(0)
            opt.param_groups[1]["eps"] = 1e-8
            time.sleep(0)

    w = threading.Thread(target=writer)
    interval = sys.getswitchinterval()
    sys.setswitchinterval(1e-6)         # many thread switches, also inside a step
    w.start()
    try:
        for _ in range(400):
            try:
                opt.step(g)
                ok[0] += 1
            except ValueError:
                pass
    finally:
        stop.set()
        w.join()
        sys.setswitchinterval(interval)
    steps = [r.step for r in opt._records]
    assert steps == [ok[0], ok[0]], (steps, ok[0])
    a2, b2, ref = fresh()
    for _ in range(ok[0]):
        ref.step(g)
    np.testing.assert_array_equal(a, a2)
    np.testing.assert_array_equal(b, b2)


def test_an_invalid_group_1_leaves_group_0_unstepped():
    a, b = np.ones(3), np.ones(3)
    opt = fo.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)
    opt.param_groups[1]["eps"] = float("nan")
    frozen = Frozen(opt, [a, b])
    with pytest.raises(ValueError, match=r"param_groups\[1\]"):
        opt.step([np.ones(3), np.ones(3)])
    frozen.assert_unchanged()


# ------------------------------------------------- item 5: MixedPrecision group aliasing
@pytest.mark.parametrize("alias", ["param", "master", "state"])
def test_mixed_precision_refuses_a_gradient_aliasing_another_groups_array(alias):
    p0, p1 = np.ones(4, np.float16), np.ones(4, np.float16)
    opt = MixedPrecision(fo.Adam, [{"params": [p0]}, {"params": [p1]}], lr=0.1,
                         loss_scale="dynamic")
    opt.step([np.full(4, 0.5, np.float16), np.full(4, 0.5, np.float16)])
    other = {"param": p0, "master": opt.master_params[0], "state": opt.state[0]["exp_avg"]}[alias]
    frozen = Frozen(opt, [p0, p1])
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory"):
        opt.step([np.full(4, 0.5, np.float16), other])
    frozen.assert_unchanged()


def test_mixed_precision_with_a_separate_gradient_per_group_still_matches_one_group():
    p, q = np.ones(4, np.float16), np.ones(4, np.float16)
    two = MixedPrecision(fo.Adam, [{"params": [p]}, {"params": [q]}], lr=0.1)
    r = np.ones(8, np.float16)
    one = MixedPrecision(fo.Adam, [r[:4], r[4:]], lr=0.1)
    for _ in range(3):
        two.step([np.full(4, 0.5, np.float16), np.full(4, 0.25, np.float16)])
        one.step([np.full(4, 0.5, np.float16), np.full(4, 0.25, np.float16)])
    np.testing.assert_array_equal(np.concatenate([p, q]), r)


# ------------------------------------------------- item 7: no intermediate overflow
def _fma(a, b, c):
    return float(Fraction(float(a)) * Fraction(float(b)) + Fraction(float(c)))


@pytest.mark.parametrize("mixed", [False, True])
def test_centered_rmsprop_stays_finite_for_a_huge_float32_gradient(mixed):
    """v - m^2 with v = inf and m^2 = 4e38 (> float32 max): torch's fused multiply-add gives
    inf, so sqrt(...) = inf and the update g / inf = 0; a rounded product gave inf - inf = NaN."""
    w = np.ones(3, np.float32)
    if mixed:
        opt = MixedPrecision(fo.RMSprop, [w], lr=0.01, centered=True)
    else:
        opt = fo.RMSprop([w], lr=0.01, centered=True)
    with np.errstate(over="ignore"):
        opt.step([np.full(3, 2e21, np.float32)])
    np.testing.assert_array_equal(w, 1.0)                   # torch 2.13: 1.0 exactly
    assert np.isposinf(opt.state[0]["square_avg"]).all()
    np.testing.assert_array_equal(opt.state[0]["grad_avg"], np.float32(2e19))


COUPLED = [(fo.SGD, {}), (fo.SGD, {"momentum": 0.9}), (fo.SGD, {"momentum": 0.9, "nesterov": True}),
           (fo.Adagrad, {}), (fo.RMSprop, {}), (fo.RMSprop, {"centered": True, "momentum": 0.5}),
           (fo.Adam, {}), (fo.Adam, {"amsgrad": True}), (fo.Adadelta, {}), (fo.Adamax, {})]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("cls,extra", COUPLED, ids=lambda x: getattr(x, "__name__", str(x)))
def test_weight_decay_that_cancels_the_gradient_does_not_overflow(cls, extra, dtype):
    """g + wd p with wd p beyond the largest float but g of the other sign: torch computes it
    as one fused multiply-add (finite); a rounded product made it inf and the step NaN."""
    big = np.finfo(dtype).max
    p0 = np.array([0.9 * big, -0.9 * big], dtype)
    g = np.array([-0.9 * big, 0.9 * big], dtype)
    w = p0.copy()
    opt = cls([w], lr=0.1, weight_decay=1.5, **extra)
    with np.errstate(all="ignore"):
        opt.step([g])
    assert np.isfinite(w).all(), w


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_update_is_one_fused_multiply_add(dtype):
    """p - lr g with lr g beyond the largest float and p of the same sign as g: finite, and
    rounded once, as torch's param.add_(grad, alpha=-lr)."""
    big = np.finfo(dtype).max
    p0 = np.array([0.9 * big], dtype)
    g = np.array([0.4 * big], dtype)
    w = p0.copy()
    with np.errstate(all="ignore"):
        fo.SGD([w], lr=3.0).step([g])
    # p - 3 g is exact in double for these float32/float64 values' scales (a few bits more
    # than the operands), so rounding the exact value once more to `dtype` is the fma
    assert w[0] == np.array(_fma(-3.0, g[0], p0[0]), dtype)


def test_extreme_values_are_finite_wherever_torch_is_finite():
    torch = pytest.importorskip("torch")
    rng = np.random.default_rng(3)
    classes = {"SGD": [dict(lr=2.0, momentum=3.0, weight_decay=1.5),
                       dict(lr=0.5, momentum=3.0, nesterov=True, weight_decay=1.5)],
               "RMSprop": [dict(lr=0.01, centered=True),
                           dict(lr=3.0, momentum=2.0, centered=True, weight_decay=1.5)],
               "Adagrad": [dict(lr=0.5, weight_decay=1.5)], "Adam": [dict(lr=0.5, weight_decay=1.5)],
               "Adadelta": [dict(lr=5.0, weight_decay=1.5)], "Adamax": [dict(lr=0.5, weight_decay=1.5)]}
    n = 4000
    for name, cases in classes.items():
        for hyper in cases:
            p0 = (rng.choice([-1, 1], n) * 10.0 ** rng.uniform(30, 38.5, n)).astype(np.float32)
            with np.errstate(all="ignore"):
                g0 = np.clip(-hyper.get("weight_decay", 1.0) * p0.astype(np.float64)
                             * rng.uniform(0.3, 1.7, n), -3.4e38, 3.4e38).astype(np.float32)
            grads = [g0, (10.0 ** rng.uniform(15, 25, n)).astype(np.float32), g0]
            w = p0.copy()
            t = torch.tensor(p0.copy(), requires_grad=True)
            ours = getattr(fo, name)([w], **hyper)
            theirs = getattr(torch.optim, name)([t], **hyper)
            with np.errstate(all="ignore"):
                for g in grads:
                    ours.step([g])
                    t.grad = torch.tensor(g)
                    theirs.step()
            ref = t.detach().numpy()
            bad = np.isfinite(ref) & ~np.isfinite(w)
            assert not bad.any(), f"{name} {hyper}: {int(bad.sum())} elements NaN/inf, finite in torch"
