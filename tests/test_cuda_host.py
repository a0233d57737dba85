"""fastopt.cuda's host logic on a stand-in CuPy (tests/fake_cupy.py): runs without a GPU.

Checked here: the pointer and chunk tables (every element updated exactly once, by the right
rule, with the right state rows), the gradient-row refresh, validation and its messages with
nothing modified, the device checks, stream ordering and the pinned-buffer ring. The kernels
themselves are checked on a GPU by tests/test_cuda.py and compiled by tests/test_cuda_source.py.
"""
import subprocess
import sys

import numpy as np
import pytest

import fake_cupy as fk
from cuda_cases import CASES, make_problem, run_backend, run_cpu

cuda = pytest.importorskip("fastopt.cuda")
pytest.importorskip("fastopt._kernels")


@pytest.fixture
def fake(monkeypatch):
    """fastopt.cuda running on the stand-in CuPy, with small chunks and fresh caches."""
    fk.reset()
    monkeypatch.setitem(sys.modules, "cupy", fk)
    monkeypatch.setattr(cuda, "_MODULES", {})
    monkeypatch.setattr(cuda, "_KERNELS", {})
    monkeypatch.setattr(cuda, "CHUNK", 5)
    yield fk
    fk.release_events()
    fk.reset()


def dev(a, device=0):
    return fk.ndarray(np.array(a, copy=True), device)


LAYOUTS = {
    "empty": [(0,)],
    "one": [(1,)],
    "odd": [(23,)],
    "many": [(3, 4), (0,), (1,), (11,), (5,), (2, 2, 2)],
}


@pytest.mark.parametrize("layout", sorted(LAYOUTS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("case", sorted(CASES))
def test_tables_match_cpu_bitwise(fake, case, dtype, layout):
    shapes = LAYOUTS[layout]
    dtypes = [dtype] * len(shapes)
    params, grads = make_problem(shapes, dtypes, steps=4, seed=len(case) + len(layout))
    want_p, want_s = run_cpu(case, params, grads, dtypes)
    got_p, got_s = run_backend(cuda, dev, lambda a: a.get(), case, params, grads)
    for a, b in zip(got_p + sum(got_s, []), want_p + sum(want_s, [])):
        assert a.dtype == b.dtype and np.array_equal(a, b, equal_nan=True)


@pytest.mark.parametrize("case", ["adam-1", "rmsprop-3", "sgd-3"])
def test_mixed_dtypes_one_launch_per_type(fake, case):
    shapes = [(7,), (3,), (12,), (0,)]
    dtypes = [np.float64, np.float32, np.float32, np.float64]
    params, grads = make_problem(shapes, dtypes, steps=3, seed=1)
    want_p, want_s = run_cpu(case, params, grads, dtypes)
    got_p, got_s = run_backend(cuda, dev, lambda a: a.get(), case, params, grads)
    for a, b in zip(got_p + sum(got_s, []), want_p + sum(want_s, [])):
        assert a.dtype == b.dtype and np.array_equal(a, b)
    opt = CASES[case][0]
    # chunks of 5: f32 tensors 3 + 12 -> 1 + 3 chunks; f64 tensors 7 + 0 -> 2 chunks
    assert fk.log["launches"] == [(opt, np.dtype(np.float32), 4), (opt, np.dtype(np.float64), 2)] * 3


def test_no_launch_without_elements(fake):
    plan = cuda.Plan([dev(np.zeros(0, np.float32)), dev(np.zeros((2, 0), np.float32))])
    cuda.sgd(plan, [dev(np.zeros(0, np.float32)), dev(np.zeros((2, 0), np.float32))],
             0.1, 0.0, 0.0, 0.0, 0)
    assert fk.log["launches"] == []
    empty = cuda.Plan([])
    empty.set_state(0, [])
    empty.set_state(1, [])
    adam_step(empty, [])
    assert len(empty) == 0 and fk.log["launches"] == []


def test_gradient_row_uploaded_only_when_addresses_change(fake):
    p = [dev(np.ones(6, np.float32)), dev(np.ones(3, np.float64))]
    plan = cuda.Plan(p)
    g1 = [dev(np.full(6, 0.5, np.float32)), dev(np.full(3, 0.5))]
    g2 = [dev(np.full(6, 0.25, np.float32)), dev(np.full(3, 0.25))]
    base = fk.log["copies"]
    cuda.sgd(plan, g1, 1.0, 0.0, 0.0, 0.0, 0)
    assert fk.log["copies"] == base + 2            # one row per element type
    cuda.sgd(plan, g1, 1.0, 0.0, 0.0, 0.0, 0)
    assert fk.log["copies"] == base + 2            # same buffers: nothing to upload
    cuda.sgd(plan, g2, 1.0, 0.0, 0.0, 0.0, 0)
    assert fk.log["copies"] == base + 4
    np.testing.assert_array_equal(p[0].get(), np.full(6, 1 - 0.5 - 0.5 - 0.25, np.float32))
    np.testing.assert_array_equal(p[1].get(), np.full(3, 1 - 0.5 - 0.5 - 0.25))


def snapshot(plan):
    arrays = list(plan.params) + [a for s in plan.states if s is not None for a in s]
    return [a.get() for a in arrays]


def assert_unchanged(plan, before):
    for a, b in zip(snapshot(plan), before):
        np.testing.assert_array_equal(a, b)


@pytest.fixture
def adam_plan(fake):
    p = [dev(np.arange(6, dtype=np.float32).reshape(2, 3)), dev(np.ones(4, np.float32))]
    plan = cuda.Plan(p)
    for k in range(3):
        plan.set_state(k, [dev(np.full(a.shape, 0.5, np.float32)) for a in p])
    return plan


def adam_step(plan, grads, flags=0):
    cuda.adam(plan, grads, 1e-3, 0.9, 0.999, 0.1, 1e-8, 0.0, 1.0, flags)


GOOD = [np.ones((2, 3), np.float32), np.ones(4, np.float32)]


@pytest.mark.parametrize("grads, exc, match", [
    (lambda: GOOD[0], TypeError, r"grads must be a list of arrays \(one per parameter\)"),
    (lambda: [dev(GOOD[0])], ValueError, "grads has 1 arrays but there are 2 parameters"),
    (lambda: [dev(GOOD[0]), GOOD[1]], TypeError,
     r"grads\[1\] must be a cupy.ndarray of float32 like params\[1\], got numpy.ndarray .*host "
     r"memory.*cupy.asarray"),
    (lambda: [dev(GOOD[0]), [1.0] * 4], TypeError, r"grads\[1\] must be a cupy.ndarray"),
    (lambda: [dev(GOOD[0]), dev(GOOD[1].astype(np.float64))], TypeError,
     r"grads\[1\] must have dtype float32 like params\[1\], got float64"),
    (lambda: [dev(GOOD[0]), dev(np.ones(5, np.float32))], ValueError,
     r"grads\[1\] must have shape \(4,\) like params\[1\], got \(5,\)"),
    (lambda: [dev(GOOD[0]), dev(np.ones(8, np.float32))[::2]], ValueError,
     r"grads\[1\] must be C-contiguous"),
    (lambda: [dev(GOOD[0]), dev(GOOD[1], device=1)], ValueError,
     r"grads\[1\] is on GPU 1 but params\[0\] is on GPU 0; .* must all be on one device"),
])
def test_bad_grads_raise_and_change_nothing(adam_plan, grads, exc, match):
    before = snapshot(adam_plan)
    launches = len(fk.log["launches"])
    with pytest.raises(exc, match=match):
        adam_step(adam_plan, grads())
    with pytest.raises(exc, match=match):
        adam_plan.check_grads(grads())
    assert_unchanged(adam_plan, before)
    assert len(fk.log["launches"]) == launches
    adam_step(adam_plan, [dev(a) for a in GOOD])      # still usable afterwards
    assert len(fk.log["launches"]) == launches + 1


def test_grad_sharing_memory_with_param_or_state(adam_plan):
    before = snapshot(adam_plan)
    for g in (adam_plan.params[1], adam_plan.states[2][1]):
        with pytest.raises(ValueError, match=r"grads\[1\] shares memory with a parameter"):
            adam_step(adam_plan, [dev(GOOD[0]), g])
    assert_unchanged(adam_plan, before)


def test_missing_state_is_an_error(fake):
    plan = cuda.Plan([dev(np.ones(3, np.float32))])
    plan.set_state(0, [dev(np.zeros(3, np.float32))])
    with pytest.raises(RuntimeError, match="state slot 1 is required"):
        adam_step(plan, [dev(np.ones(3, np.float32))])
    plan.set_state(1, [dev(np.zeros(3, np.float32))])
    with pytest.raises(RuntimeError, match="state slot 2 is required"):
        adam_step(plan, [dev(np.ones(3, np.float32))], flags=cuda.AMSGRAD)
    np.testing.assert_array_equal(plan.params[0].get(), np.ones(3, np.float32))
    adam_step(plan, [dev(np.ones(3, np.float32))])
    plan.set_state(1, None)
    assert plan.states[1] is None
    with pytest.raises(RuntimeError, match="state slot 1 is required"):
        adam_step(plan, [dev(np.ones(3, np.float32))])


@pytest.mark.parametrize("params, exc, match", [
    (lambda: dev(np.ones(3, np.float32)), TypeError, "params must be a list of arrays"),
    (lambda: [dev(np.ones(3, np.float32)), np.ones(3, np.float32)], TypeError,
     r"params\[1\] must be a cupy.ndarray of float32 or float64, got numpy.ndarray"),
    (lambda: [dev(np.ones(3, np.int64))], TypeError,
     r"params\[0\] must have dtype float32 or float64, got int64"),
    (lambda: [dev(np.ones(3, np.float16))], TypeError, "got float16"),
    (lambda: [dev(np.ones((4, 4), np.float32)).T], ValueError, r"params\[0\] must be C-contiguous"),
    (lambda: [dev(np.ones(3)), dev(np.ones(3), device=1)], ValueError,
     r"params\[1\] is on GPU 1 but params\[0\] is on GPU 0"),
])
def test_bad_params(fake, params, exc, match):
    with pytest.raises(exc, match=match):
        cuda.Plan(params())


def test_duplicate_params(fake):
    a = dev(np.ones(8, np.float32))
    with pytest.raises(ValueError, match=r"params\[0\] and params\[1\] share memory"):
        cuda.Plan([a, a])
    with pytest.raises(ValueError, match="share memory"):
        cuda.Plan([a, a[2:5]])


def test_plan_name_in_messages(fake):
    with pytest.raises(TypeError, match=r"weights\[0\] must be a cupy.ndarray"):
        cuda.Plan([np.ones(2)], name="weights")


@pytest.mark.parametrize("arrays, exc, match", [
    (lambda p: [dev(np.zeros(3, np.float32))], ValueError, "state slot 1: expected 2 arrays \\(one per parameter\\), got 1"),
    (lambda p: [dev(np.zeros(3, np.float32)), np.zeros(4, np.float32)], TypeError,
     r"state buffer 1 of params\[1\] must be a cupy.ndarray"),
    (lambda p: [dev(np.zeros(3, np.float32)), dev(np.zeros(4))], ValueError,
     r"state buffer 1 of params\[1\] must be float32 cupy array of shape \(4,\) on GPU 0, got float64"),
    (lambda p: [dev(np.zeros(3, np.float32)), dev(np.zeros(5, np.float32))], ValueError,
     r"must be float32 cupy array of shape \(4,\)"),
    (lambda p: [dev(np.zeros(3, np.float32)), dev(np.zeros(4, np.float32), device=1)], ValueError,
     r"state buffer 1 of params\[1\] is on GPU 1 but params\[0\] is on GPU 0"),
    (lambda p: [dev(np.zeros(3, np.float32)), p[1]], ValueError, "share memory"),
])
def test_bad_state(fake, arrays, exc, match):
    p = [dev(np.ones(3, np.float32)), dev(np.ones(4, np.float32))]
    plan = cuda.Plan(p)
    plan.set_state(0, [dev(np.zeros(3, np.float32)), dev(np.zeros(4, np.float32))])
    with pytest.raises(exc, match=match):
        plan.set_state(1, arrays(p))
    assert plan.states[1] is None
    with pytest.raises(ValueError, match=r"state slot must be in \[0, 3\), got 3"):
        plan.set_state(3, None)
    # the plan still works and its tables still point at the right state
    plan.set_state(1, [dev(np.zeros(3, np.float32)), dev(np.zeros(4, np.float32))])
    adam_step(plan, [dev(np.ones(3, np.float32)), dev(np.ones(4, np.float32))])
    assert np.all(plan.states[0][1].get() != 0) and np.all(plan.states[1][1].get() != 0)


def test_interface_mirrors_cpu_binding():
    import inspect

    from fastopt import _kernels as K
    from fastopt import _table
    for name in _table.KERNELS:
        want = [p.name for p in inspect.signature(getattr(K, name)).parameters.values()]
        got = [p.name for p in inspect.signature(getattr(cuda, name)).parameters.values()]
        assert got == want, name
    for flag in _table.FLAG_BITS:
        assert getattr(cuda, flag) == getattr(K, flag)
    for attr in ("set_state", "check_grads", "__len__"):
        assert callable(getattr(cuda.Plan, attr))
    for attr in ("set_state", "check_grads"):     # what optim/ and functional call
        want = [p.name for p in inspect.signature(getattr(K.Plan, attr)).parameters.values()]
        got = [p.name for p in inspect.signature(getattr(cuda.Plan, attr)).parameters.values()]
        assert got == want, attr
    got = [p.name for p in inspect.signature(cuda.Plan.__init__).parameters.values()]
    assert got == ["self", "params", "name", "offset"]
    K.Plan([np.zeros(2)], "params", 3)              # the CPU plan takes the same call


def test_stream_change_waits_on_device_only(fake):
    plan = cuda.Plan([dev(np.ones(3, np.float32))])
    g = [dev(np.ones(3, np.float32))]
    cuda.sgd(plan, g, 0.1, 0.0, 0.0, 0.0, 0)
    cuda.sgd(plan, g, 0.1, 0.0, 0.0, 0.0, 0)
    assert fk.log["waits"] == 0
    with fk.cuda.Stream():
        cuda.sgd(plan, g, 0.1, 0.0, 0.0, 0.0, 0)
    assert fk.log["waits"] == 1
    cuda.sgd(plan, g, 0.1, 0.0, 0.0, 0.0, 0)
    assert fk.log["waits"] == 2 and fk.log["syncs"] == 0
    np.testing.assert_allclose(plan.params[0].get(), 1 - 4 * np.float32(0.1), rtol=1e-6)


def test_pinned_ring_grows_instead_of_waiting(fake, monkeypatch):
    monkeypatch.setattr(cuda, "_MAX_SLOTS", 10)
    plan = cuda.Plan([dev(np.zeros(4, np.float32))])
    fk.pending_events[0] = True                 # the device falls behind: no copy completes
    grads = [[dev(np.full(4, float(i), np.float32))] for i in range(14)]
    for g in grads[:10]:
        cuda.sgd(plan, g, 1.0, 0.0, 0.0, 0.0, 0)
    assert fk.log["syncs"] == 0 and len(plan._uploader._slots) == 10
    for g in grads[10:]:
        cuda.sgd(plan, g, 1.0, 0.0, 0.0, 0.0, 0)
    assert fk.log["syncs"] == 4 and len(plan._uploader._slots) == 10
    np.testing.assert_array_equal(plan.params[0].get(), np.full(4, -sum(range(14)), np.float32))


def test_pending_buffers_outlive_their_plan(fake):
    import gc
    gc.collect()
    cuda._prune_retired()
    assert cuda._RETIRED == []
    plan = cuda.Plan([dev(np.zeros(4, np.float32))])
    fk.pending_events[0] = True
    cuda.sgd(plan, [dev(np.ones(4, np.float32))], 1.0, 0.0, 0.0, 0.0, 0)
    n_pending = sum(not s.event.done for s in plan._uploader._slots)
    assert n_pending >= 1
    del plan
    gc.collect()
    assert len(cuda._RETIRED) == n_pending
    fk.release_events()
    cuda._prune_retired()
    assert cuda._RETIRED == []


def test_kernels_compiled_once_from_generated_source(fake):
    for _ in range(3):
        plan = cuda.Plan([dev(np.ones(3, np.float32)), dev(np.ones(3))])
        plan.set_state(0, [dev(np.zeros(3, np.float32)), dev(np.zeros(3))])
        cuda.adagrad(plan, [dev(np.ones(3, np.float32)), dev(np.ones(3))], 0.1, 1e-10, 0.0, 0)
    assert len(fk.log["modules"]) == 1
    code, options = fk.log["modules"][0]
    assert code == cuda.generate_cuda_source()
    assert "--fmad=false" in options


def test_helpers(fake):
    tree = {"state": {0: {"exp_avg": dev(np.arange(3.0)), "step": 4}},
            "groups": [dev(np.ones(2, np.float32))]}
    host = cuda.to_numpy(tree)
    assert isinstance(host["state"][0]["exp_avg"], np.ndarray) and host["state"][0]["step"] == 4
    np.testing.assert_array_equal(host["state"][0]["exp_avg"], np.arange(3.0))
    back = cuda.to_device(host, device=1)
    assert cuda.is_cupy_array(back["groups"][0]) and back["groups"][0].device.id == 1
    np.testing.assert_array_equal(back["state"][0]["exp_avg"].get(), np.arange(3.0))
    z = cuda.zeros_like(dev(np.ones((2, 3), np.float32), device=1))
    assert z.device.id == 1 and z.shape == (2, 3) and z.dtype == np.float32
    assert not np.any(z.get())
    assert cuda.is_cupy_array(dev(np.ones(1))) and not cuda.is_cupy_array(np.ones(1))


def test_works_without_cupy():
    code = r"""
import sys, numpy as np
sys.modules["cupy"] = None              # as if CuPy were not installed
import fastopt.cuda as c
assert not c.is_cupy_array(np.ones(3)) and not c.has_gpu()
assert "fo_adam_multi_f32" in c.generate_cuda_source()
for call in (lambda: c.Plan([np.ones(3)]), c.require_cupy, lambda: c.zeros_like(np.ones(1))):
    try:
        call()
    except ImportError as e:
        assert "fastopt[gpu]" in str(e) and "cupy-cuda12x" in str(e), e
    else:
        raise AssertionError("no ImportError")
print("ok")
"""
    import os

    import fastopt
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(fastopt.__file__)))
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env)
    assert out.returncode == 0 and out.stdout.strip() == "ok", out.stderr


def test_step_path_never_reads_device_memory_on_the_host():
    """No .get(), .item(), host conversion or synchronize on the path of a step.

    (The pinned-buffer ring may wait, only when _MAX_SLOTS copies are in flight; that branch is
    covered by test_pinned_ring_grows_instead_of_waiting.)
    """
    import inspect
    import re
    funcs = [cuda.Plan._step, cuda.Plan._load, cuda.Plan._enter_stream, cuda.Plan._overlaps,
             cuda.Plan._require, cuda._interval, cuda._check_float_array,
             cuda.sgd, cuda.adagrad, cuda.rmsprop, cuda.adam, cuda.adadelta, cuda.adamax]
    bad = re.compile(r"\.get\(|\.item\(|asnumpy|\.tolist\(|synchronize|\bbool\(|__array__")
    for f in funcs:
        src = inspect.getsource(f)
        assert not bad.search(src), f"{f.__qualname__}: {bad.search(src).group(0)}"
