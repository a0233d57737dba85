"""fastopt.flatten and the plan's merging of tensors that continue each other in memory."""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _kernels
from fastopt._specs import SPECS
from fastopt._table import OPTIMIZERS
from fastopt.flat import consecutive_runs, flatten, state_like

SHAPES = [(3, 4), (5,), (2, 2, 2), (1,), (0,), (7, 3)]
# per optimizer, the option set of the table with the most options (lr left to the test)
OPTIONS = {name: {k: v for k, v in max(opt.cases, key=len).items() if k != "lr"}
           for name, opt in OPTIMIZERS.items()}


def _arrays(shapes, dtype, seed):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(dtype) for s in shapes]


def _address(a):
    return a.__array_interface__["data"][0]


def _plan(opt, gi=0):
    return opt._records[gi].plan


# ------------------------------------------------------------------------------- flatten
def test_views_share_one_aligned_buffer_in_order():
    arrays = _arrays(SHAPES, np.float32, 0)
    buffer, views = flatten(arrays)
    assert buffer.ndim == 1 and buffer.flags.c_contiguous and buffer.dtype == np.float32
    assert buffer.size == sum(a.size for a in arrays)
    assert _address(buffer) % 64 == 0
    start = 0
    for a, v in zip(arrays, views):
        assert v.shape == a.shape and v.dtype == buffer.dtype
        assert np.array_equal(v, a)
        assert not np.shares_memory(v, a)
        if v.size:
            assert np.shares_memory(buffer, v)
            assert _address(v) == _address(buffer) + start * buffer.itemsize
        start += a.size
    assert np.array_equal(buffer, np.concatenate([a.ravel() for a in arrays]))
    views[0][0, 0] = 42.0
    assert buffer[0] == 42.0
    buffer[-1] = -1.0
    assert views[-1][-1, -1] == -1.0


def test_dtype_rules():
    a, b = np.ones(3, np.float32), np.ones(2, np.float64)
    assert flatten([a, b])[0].dtype == np.float64
    assert flatten([a, a])[0].dtype == np.float32
    buf, views = flatten([np.arange(3)], dtype=np.float32)
    assert buf.dtype == np.float32 and np.array_equal(views[0], [0, 1, 2])
    buf, views = flatten([])
    assert buf.size == 0 and views == []
    buf, views = flatten((np.float64(2.5),))
    assert views[0].shape == () and views[0] == 2.5


@pytest.mark.parametrize("bad, exc", [(np.ones(3), TypeError), ("abc", TypeError),
                                      ([np.ones(2), "x"], TypeError), ([[1.0, 2.0]], TypeError)])
def test_bad_input(bad, exc):
    with pytest.raises(exc):
        flatten(bad)


def test_non_numeric_dtype_rejected():
    with pytest.raises(TypeError, match="dtype"):
        flatten([np.ones(2)], dtype="U3")


def test_consecutive_runs():
    buf, views = flatten(_arrays([(2,), (3,), (4,)], np.float64, 1))
    other = np.ones(3)
    assert consecutive_runs(views) == [[0, 1, 2]]
    assert consecutive_runs([views[0], views[2], views[1]]) == [[0], [1], [2]]
    assert consecutive_runs(views[:2] + [other] + views[2:]) == [[0, 1], [2], [3]]
    assert consecutive_runs([]) == []
    cast = buf.view(np.int64)[2:5]          # continues views[0] in memory but another dtype
    assert consecutive_runs([views[0], cast]) == [[0], [1]]
    _, f32 = flatten([np.ones(2, np.float32), np.ones(3, np.float32)])
    assert consecutive_runs([f32[0], views[0], f32[1], views[1]]) == [[0, 2], [1, 3]]
    assert consecutive_runs([views[0], views[1][::2], views[2]]) == [[0], [1], [2]]


def test_state_like_allocates_one_buffer_per_run():
    _, views = flatten(_arrays([(2, 3), (4,), (5,)], np.float32, 2))
    loose = np.zeros(4, np.float32)
    states = state_like(views[:2] + [loose] + views[2:], 0.5)
    for s, p in zip(states, views[:2] + [loose] + views[2:]):
        assert s.shape == p.shape and s.dtype == p.dtype and np.all(s == 0.5)
        assert not np.shares_memory(s, p)
    assert _address(states[1]) == _address(states[0]) + states[0].nbytes
    assert not np.shares_memory(states[2], states[0])
    empty = state_like(views)                 # no fill: uninitialized, still one buffer
    assert [e.shape for e in empty] == [v.shape for v in views]
    assert _address(empty[2]) == _address(empty[1]) + empty[1].nbytes
    assert not any(np.shares_memory(e, v) for e in empty for v in views)



def test_state_like_puts_separate_tensors_of_one_dtype_in_one_aligned_arena():
    rng = np.random.default_rng(3)
    params = [rng.standard_normal(n).astype(np.float32) for n in (3, 17, 1, 64)]
    params += [rng.standard_normal((2, 5)), np.zeros(0, np.float32), np.ones(4, np.float32)[::2]]
    states = state_like(params, 0.25)
    for s, p in zip(states, params):
        assert s.shape == p.shape and s.dtype == p.dtype and np.all(s == 0.25)
        assert not any(np.shares_memory(s, q) for q in params)
    f32 = [states[i] for i in (0, 1, 2, 3)]
    assert all(np.shares_memory(f32[0].base, s) for s in f32)            # one buffer
    assert all(_address(s) % 64 == 0 for s in f32)                       # each run aligned
    assert not any(np.shares_memory(a, b) for i, a in enumerate(f32) for b in f32[i + 1:])
    assert states[4].dtype == np.float64 and not np.shares_memory(states[4], f32[0].base)
    assert states[6].base is None or not np.shares_memory(states[6], f32[0].base)  # strided

# ------------------------------------------------------------- optimizers on flat params
@pytest.mark.parametrize("name", sorted(SPECS))
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_flat_params_step_as_one_segment_with_identical_results(name, dtype):
    cls = getattr(fo, SPECS[name].class_name)
    options = OPTIONS.get(name, {})
    params = _arrays(SHAPES, dtype, 3)
    grads = [_arrays(SHAPES, dtype, 10 + t) for t in range(4)]
    loose = [p.copy() for p in params]
    _, flat = flatten(params)
    opt_loose, opt_flat = cls(loose, **options), cls(flat, **options)
    for g in grads:
        _, gflat = flatten(g)
        opt_loose.step(g)
        opt_flat.step(gflat)
        assert _plan(opt_flat).segments_used == 1
        assert _plan(opt_loose).segments_used == sum(1 for s in SHAPES if np.prod(s) > 0)
    for a, b in zip(flat, loose):
        np.testing.assert_array_equal(a, b)
    for i in opt_loose.state:
        for key, value in opt_loose.state[i].items():
            np.testing.assert_array_equal(opt_flat.state[i][key], value)


def test_flat_params_with_separate_grads_step_per_tensor():
    params = _arrays(SHAPES, np.float64, 4)
    grads = _arrays(SHAPES, np.float64, 5)
    _, flat = flatten(params)
    loose = [p.copy() for p in params]
    a, b = fo.Adam(flat, lr=0.1), fo.Adam(loose, lr=0.1)
    a.step(grads)
    b.step(grads)
    assert _plan(a).segments_used == sum(1 for s in SHAPES if np.prod(s) > 0)
    for x, y in zip(flat, loose):
        np.testing.assert_array_equal(x, y)


def test_two_buffers_and_two_dtypes_give_one_segment_each():
    _, f32 = flatten(_arrays([(5,), (6,)], np.float32, 6))
    _, f64 = flatten(_arrays([(7,), (8,)], np.float64, 7))
    _, g32 = flatten(_arrays([(5,), (6,)], np.float32, 8))
    _, g64 = flatten(_arrays([(7,), (8,)], np.float64, 9))
    opt = fo.RMSprop([f32[0], f64[0], f32[1], f64[1]], lr=0.01)
    opt.step([g32[0], g64[0], g32[1], g64[1]])
    assert _plan(opt).segments_used == 2


def test_state_dict_round_trip_keeps_flat_state():
    params = _arrays(SHAPES, np.float32, 11)
    grads = _arrays(SHAPES, np.float32, 12)
    _, gflat = flatten(grads)
    _, flat = flatten(params)
    opt = fo.Adam(flat, lr=0.01)
    opt.step(gflat)
    sd = opt.state_dict()
    _, flat2 = flatten(flat)                  # the parameters after the first step
    opt2 = fo.Adam(flat2, lr=0.01)
    opt2.load_state_dict(sd)
    opt2.step(gflat)
    assert _plan(opt2).segments_used == 1
    opt.step(gflat)
    for x, y in zip(flat, flat2):
        np.testing.assert_array_equal(x, y)


def test_functional_step_on_flat_views():
    params = _arrays([(4,), (6,)], np.float64, 13)
    grads = _arrays([(4,), (6,)], np.float64, 14)
    _, p = flatten(params)
    _, g = flatten(grads)
    _, m = flatten([np.zeros(4), np.zeros(6)])
    _, v = flatten([np.zeros(4), np.zeros(6)])
    ref_p = [x.copy() for x in params]
    ref_m = [np.zeros(4), np.zeros(6)]
    ref_v = [np.zeros(4), np.zeros(6)]
    fo.functional.adam_(p, g, m, v, step=1, lr=0.1)
    fo.functional.adam_(ref_p, grads, ref_m, ref_v, step=1, lr=0.1)
    for a, b in zip(p + m + v, ref_p + ref_m + ref_v):
        np.testing.assert_array_equal(a, b)


def test_errors_leave_flat_params_unchanged():
    params = _arrays(SHAPES, np.float32, 15)
    _, flat = flatten(params)
    opt = fo.Adam(flat, lr=0.1)
    _, gflat = flatten(_arrays(SHAPES, np.float32, 16))
    bad = list(gflat)
    bad[2] = bad[2].astype(np.float64)
    with pytest.raises(TypeError):
        opt.step(bad)
    for a, b in zip(flat, params):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(ValueError, match="share"):
        opt.step([flat[0]] + list(gflat[1:]))     # a gradient that is a parameter
    for a, b in zip(flat, params):
        np.testing.assert_array_equal(a, b)


def test_parallel_split_over_merged_segment_matches_serial():
    saved_threshold, saved_threads = _kernels.get_parallel_threshold(), _kernels.get_num_threads()
    shapes = [(1000,), (37,), (4097,), (3,), (2048,)]
    params = _arrays(shapes, np.float32, 17)
    grads = _arrays(shapes, np.float32, 18)
    try:
        results = []
        for threads in (1, 2):
            _kernels.set_num_threads(threads)
            _kernels.set_parallel_threshold(16)
            _, flat = flatten(params)
            _, gflat = flatten(grads)
            opt = fo.Adam(flat, lr=0.01)
            for _ in range(3):
                opt.step(gflat)
            results.append([x.copy() for x in flat])
        for a, b in zip(*results):
            np.testing.assert_array_equal(a, b)
    finally:
        _kernels.set_parallel_threshold(saved_threshold)
        _kernels.set_num_threads(saved_threads)
