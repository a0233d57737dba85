"""Bilinear batch resize: an independent float64 reference, torch golden values (and live
torch), identity, layouts, dtypes, threads, errors, and the RandomBatchShapes sampler."""
from pathlib import Path

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from fastopt import _kernels
from fastopt import _tricks
from fastopt.tricks import RandomBatchShapes, random_resize

GOLDEN = Path(__file__).parent / "golden" / "resize.npz"


# ------------------------------------------------------------------ independent reference

def interpolation_matrix(n_in, n_out):
    """Dense (n_out, n_in) matrix of the 1-D linear interpolation with half-pixel centres.

    Row o puts weight 1 - f on pixel floor(s) and f on the next one (the last pixel when
    floor(s) is the last), where s = max(0, (o + 1/2) n_in / n_out - 1/2) and f = s - floor(s).
    """
    m = np.zeros((n_out, n_in))
    for o in range(n_out):
        s = max(0.0, (o + 0.5) * n_in / n_out - 0.5)
        left = min(int(np.floor(s)), n_in - 1)
        right = min(left + 1, n_in - 1)
        f = s - left
        m[o, left] += 1.0 - f
        m[o, right] += f
    return m


def reference_nchw(x, out_h, out_w):
    """Separable matrix form, float64: out[n, c] = A_h @ x[n, c] @ A_w^T."""
    a_h = interpolation_matrix(x.shape[2], out_h)
    a_w = interpolation_matrix(x.shape[3], out_w)
    return a_h @ x.astype(np.float64) @ a_w.T


def to_nhwc(x):
    return np.ascontiguousarray(x.transpose(0, 2, 3, 1))


def check_uint8(out, ref):
    """uint8: round half away from zero of the exact value, except within float32 error of a tie."""
    expected = np.floor(ref + 0.5)
    near_tie = np.abs(ref - np.floor(ref) - 0.5) < 1e-4
    ok = (out == expected) | (near_tie & (np.abs(out.astype(float) - expected) <= 1))
    assert ok.all(), f"{(~ok).sum()} uint8 pixels differ from the reference"


def resize_both_layouts(x, size):
    nchw = random_resize(x, size, "NCHW")
    nhwc = random_resize(to_nhwc(x), size, "NHWC")
    np.testing.assert_array_equal(nhwc.transpose(0, 3, 1, 2), nchw)  # same arithmetic per pixel
    return nchw


TOL = {np.float32: 1e-5, np.float64: 1e-12}


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("shape, size", [((2, 3, 7, 5), (11, 3)), ((1, 2, 30, 40), (64, 64)),
                                         ((3, 1, 17, 23), (5, 8)), ((1, 1, 1, 1), (3, 2)),
                                         ((1, 2, 224, 224), (288, 256))])
def test_matches_reference(dtype, shape, size):
    x = np.random.default_rng(0).random(shape).astype(dtype)
    out = resize_both_layouts(x, size)
    assert out.dtype == dtype and out.shape == shape[:2] + size and out.flags.c_contiguous
    np.testing.assert_allclose(out, reference_nchw(x, *size), rtol=0, atol=TOL[dtype])


def test_uint8_rounds_and_clamps():
    rng = np.random.default_rng(1)
    x = rng.integers(0, 256, (2, 3, 19, 13), dtype=np.uint8)
    x[0, 0] = 255  # saturated plane: must stay 255 (no overflow to 0)
    x[0, 1] = 0
    out = resize_both_layouts(x, (37, 26))
    assert out.dtype == np.uint8
    assert (out[0, 0] == 255).all() and (out[0, 1] == 0).all()
    check_uint8(out, reference_nchw(x, 37, 26))


def test_uint8_tie_rounds_half_away_from_zero():
    x = np.array([[[[1, 2]]]], np.uint8)  # 1x2 -> 1x4: source coords 0, 0.25, 0.75, 1 -> 1, 1.25, 1.75, 2
    assert random_resize(x, (1, 4)).ravel().tolist() == [1, 1, 2, 2]
    x = np.array([[[[1, 2, 3, 4]]]], np.uint8)  # 4 -> 2: s = 0.5 and 2.5 -> exact ties 1.5, 3.5
    assert random_resize(x, (1, 2)).ravel().tolist() == [2, 4]


@given(n=st.integers(0, 3), c=st.integers(1, 4), h=st.integers(1, 20), w=st.integers(1, 20),
       oh=st.integers(1, 25), ow=st.integers(1, 25),
       dtype=st.sampled_from([np.float32, np.float64, np.uint8]),
       layout=st.sampled_from(["NCHW", "NHWC"]), seed=st.integers(0, 2**32 - 1))
def test_property_matches_reference(n, c, h, w, oh, ow, dtype, layout, seed):
    rng = np.random.default_rng(seed)
    x = rng.integers(0, 256, (n, c, h, w)).astype(dtype) if dtype == np.uint8 else rng.random((n, c, h, w)).astype(dtype)
    src = to_nhwc(x) if layout == "NHWC" else x
    before = src.copy()
    out = random_resize(src, (oh, ow), layout)
    np.testing.assert_array_equal(src, before)  # input untouched
    got = out.transpose(0, 3, 1, 2) if layout == "NHWC" else out
    assert got.shape == (n, c, oh, ow) and out.dtype == dtype
    ref = reference_nchw(x, oh, ow)
    if dtype == np.uint8:
        check_uint8(got, ref)
    else:
        np.testing.assert_allclose(got, ref, rtol=0, atol=TOL[dtype])


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.uint8])
@pytest.mark.parametrize("layout", ["NCHW", "NHWC"])
def test_identity_is_exact_copy(dtype, layout):
    x = (np.random.default_rng(2).random((2, 3, 9, 7)) * 255).astype(dtype)
    x.flat[0] = np.inf if dtype != np.uint8 else 0  # exact even for non-finite values
    src = to_nhwc(x) if layout == "NHWC" else x
    out = random_resize(src, (9, 7), layout)
    np.testing.assert_array_equal(out, src)
    assert not np.shares_memory(out, src)


def test_non_contiguous_input_and_out_argument():
    x = np.random.default_rng(3).random((2, 9, 8, 3))  # NHWC storage viewed as NCHW
    view = x.transpose(0, 3, 1, 2)
    out = np.empty((2, 3, 5, 4))
    result = random_resize(view, (5, 4), out=out)
    assert result is out
    np.testing.assert_allclose(out, reference_nchw(view, 5, 4), rtol=0, atol=1e-12)


def test_threads_do_not_change_results():
    x = np.random.default_rng(4).random((4, 3, 40, 40)).astype(np.float32)
    old_threshold = _tricks.get_parallel_threshold()
    try:
        _tricks.set_parallel_threshold(1)
        _kernels.set_num_threads(1)
        one = random_resize(x, 57)
        _kernels.set_num_threads(2)
        two = random_resize(x, 57)
        nhwc = random_resize(to_nhwc(x), 57, "NHWC")
    finally:
        _kernels.set_num_threads(0)
        _tricks.set_parallel_threshold(old_threshold)
    np.testing.assert_array_equal(one, two)
    np.testing.assert_array_equal(nhwc.transpose(0, 3, 1, 2), one)


# ---------------------------------------------------------------------------------- torch

def _golden():
    with np.load(GOLDEN) as f:
        data = {k: f[k] for k in f.files}
    names = sorted({k.split("/")[0] for k in data if "/" in k})
    return data, names


def test_golden_torch_float64_and_float32():
    data, names = _golden()
    assert len(names) >= 8
    for name in names:
        x = data[f"{name}/x_255"] / 255.0
        size = tuple(int(v) for v in data[f"{name}/size"])
        torch64 = data[f"{name}/float64"]
        np.testing.assert_allclose(random_resize(x, size), torch64, rtol=0, atol=1e-12, err_msg=name)
        ours32 = random_resize(x.astype(np.float32), size)
        np.testing.assert_allclose(ours32, torch64, rtol=0, atol=1e-5, err_msg=name)
        # torch's own float32 path computes source coordinates in float32 (about 1e-5 off at
        # coordinates ~100); ours computes them in float64, hence the looser bound here
        np.testing.assert_allclose(ours32, data[f"{name}/float32"], rtol=0, atol=5e-5, err_msg=name)


def test_golden_torch_uint8_within_one():
    """torch's uint8 path uses fixed-point weights; both are within one level of each other."""
    data, names = _golden()
    for name in names:
        x = data[f"{name}/x_255"]
        size = tuple(int(v) for v in data[f"{name}/size"])
        diff = np.abs(random_resize(x, size).astype(int) - data[f"{name}/uint8"].astype(int))
        assert diff.max() <= 1, name


@pytest.mark.torch
@pytest.mark.parametrize("shape, size", [((2, 3, 13, 17), (20, 9)), ((1, 2, 100, 90), (131, 64)),
                                         ((2, 1, 3, 3), (1, 7))])
def test_live_torch(shape, size):
    torch = pytest.importorskip("torch")
    x = np.random.default_rng(5).random(shape)
    expected = torch.nn.functional.interpolate(torch.from_numpy(x), size=size, mode="bilinear",
                                               align_corners=False, antialias=False).numpy()
    np.testing.assert_allclose(random_resize(x, size), expected, rtol=0, atol=1e-12)
    np.testing.assert_allclose(random_resize(x.astype(np.float32), size), expected, rtol=0, atol=1e-5)


# --------------------------------------------------------------------------------- errors

@pytest.mark.parametrize("kwargs, error, words", [
    (dict(layout="CHW"), ValueError, "layout must be 'NCHW' or 'NHWC'"),
    (dict(layout="nchw"), ValueError, "layout"),
    (dict(size=0), ValueError, "size must be >= 1"),
    (dict(size=(4, -2)), ValueError, "size must be >= 1"),
    (dict(size=4.0), TypeError, "size must be an int"),
    (dict(size=(4, 4, 4)), TypeError, "size"),
    (dict(size=(4.0, 4)), TypeError, "size must hold integers"),
])
def test_bad_arguments(kwargs, error, words):
    x = np.random.default_rng(6).random((1, 2, 5, 5))
    before = x.copy()
    args = dict(size=3, layout="NCHW") | kwargs
    with pytest.raises(error) as info:
        random_resize(x, args["size"], args["layout"])
    assert words in str(info.value)
    np.testing.assert_array_equal(x, before)


@pytest.mark.parametrize("batch, error, words", [
    (np.zeros((1, 2, 5, 5), np.float16), TypeError, "batch dtype must be float32, float64 or uint8"),
    (np.zeros((1, 2, 5, 5), np.int32), TypeError, "batch dtype"),
    (np.zeros((1, 2, 5, 5), ">f4"), TypeError, "batch dtype"),
    (np.zeros((2, 5, 5)), ValueError, "batch must be 4-D"),
    (np.zeros((1, 2, 0, 5)), ValueError, "empty image axis"),
    ([[[[1.0]]]], TypeError, "batch must be a numpy.ndarray"),
])
def test_bad_batches(batch, error, words):
    with pytest.raises(error) as info:
        random_resize(batch, 3)
    assert words in str(info.value)


@pytest.mark.parametrize("out, error, words", [
    (np.empty((1, 2, 3, 3), np.float32), TypeError, "out dtype"),
    (np.empty((1, 2, 3, 4)), ValueError, "out shape"),
    (np.empty((1, 2, 3, 6))[..., ::2], ValueError, "C-contiguous"),
    ([0.0], TypeError, "out must be a numpy.ndarray"),
])
def test_bad_out(out, error, words):
    with pytest.raises(error) as info:
        random_resize(np.ones((1, 2, 5, 5)), 3, out=out)
    assert words in str(info.value)


def test_out_aliasing_and_readonly():
    x = np.ones((1, 1, 4, 4))
    ro = np.zeros((1, 1, 2, 2))
    ro.setflags(write=False)
    with pytest.raises(ValueError, match="writable"):
        random_resize(x, 2, out=ro)
    big = np.zeros(32)
    with pytest.raises(ValueError, match="share memory"):
        random_resize(big[:16].reshape(1, 1, 4, 4), (2, 4), out=big[8:16].reshape(1, 1, 2, 4))
    assert (big == 0).all()


# ------------------------------------------------------------------------ RandomBatchShapes

def test_random_batch_shapes_draws_from_the_list():
    shapes = RandomBatchShapes([8, 12, (6, 10)], np.random.default_rng(7))
    x = np.random.default_rng(8).random((2, 3, 9, 9)).astype(np.float32)
    seen = set()
    for _ in range(60):
        out = shapes(x)
        assert out.shape[2:] == shapes.current_size
        seen.add(out.shape[2:])
    assert seen == {(8, 8), (12, 12), (6, 10)}
    np.testing.assert_array_equal(shapes(x, size=12), random_resize(x, 12))


def test_random_batch_shapes_every_and_wrap():
    shapes = RandomBatchShapes(range(4, 40, 4), np.random.default_rng(9), layout="NHWC", every=3)
    x = np.zeros((1, 10, 10, 2), np.uint8)
    labels = np.arange(1)
    batches = [(x, labels)] * 9
    sizes = []
    for xb, yb in shapes.wrap(batches):
        assert yb is labels and xb.shape[-1] == 2
        sizes.append(xb.shape[1:3])
    assert sizes[0] == sizes[1] == sizes[2] and sizes[3] == sizes[4] == sizes[5]
    assert [o.shape for o in shapes.wrap([x, x])][0][3] == 2
    assert "every=3" in repr(shapes)


@pytest.mark.parametrize("build, error, words", [
    (lambda r: RandomBatchShapes([], r), ValueError, "at least one size"),
    (lambda r: RandomBatchShapes([224, 0], r), ValueError, "sizes[1] must be >= 1"),
    (lambda r: RandomBatchShapes(224, r), TypeError, "sizes must be a sequence"),
    (lambda r: RandomBatchShapes([224], 0), TypeError, "rng must be a numpy.random.Generator"),
    (lambda r: RandomBatchShapes([224], r, layout="HWC"), ValueError, "layout"),
    (lambda r: RandomBatchShapes([224], r, every=0), ValueError, "every must be >= 1"),
])
def test_random_batch_shapes_bad_arguments(build, error, words):
    with pytest.raises(error) as info:
        build(np.random.default_rng(0))
    assert words in str(info.value)


def test_random_batch_shapes_errors_leave_state():
    rng = np.random.default_rng(10)
    shapes = RandomBatchShapes([4, 6], rng)
    state = rng.bit_generator.state
    with pytest.raises(ValueError, match="unknown size 5"):
        shapes(np.zeros((1, 1, 3, 3)), size=5)
    with pytest.raises(TypeError, match="batch dtype"):
        shapes(np.zeros((1, 1, 3, 3), np.int64))
    with pytest.raises(ValueError, match="4-D"):
        shapes(np.zeros((3, 3)))
    assert rng.bit_generator.state == state and shapes.current_size is None
