"""Bilinear batch resize: the C/OpenMP kernel against a vectorized NumPy implementation.

    PYTHONPATH=src python -m pytest bench/bench_resize.py --benchmark-group-by=param:case \
        --benchmark-columns=min,median,mean,rounds

A 64x3x224x224 float32 batch (38.5 MB) resized to 288x288 (up) and 160x160 (down), NCHW and
NHWC; the kernel with 1 thread and with every OpenMP thread, NumPy as fancy-index gathers
(the same interpolation, separable: rows first, then columns, in float32).
"""
import numpy as np
import pytest

from fastopt import _kernels
from fastopt.tricks import random_resize

CASES = {"nchw_224_to_288": ("NCHW", 288), "nchw_224_to_160": ("NCHW", 160),
         "nhwc_224_to_288": ("NHWC", 288)}


def axis(n_in, n_out, dtype):
    o = np.arange(n_out)
    s = np.maximum((o + 0.5) * (n_in / n_out) - 0.5, 0.0)
    i0 = np.minimum(s.astype(np.intp), n_in - 1)
    i1 = np.minimum(i0 + 1, n_in - 1)
    w1 = (s - i0).astype(dtype)
    return i0, i1, (1 - w1).astype(dtype), w1


def numpy_resize(x, size, layout):
    """Vectorized NumPy bilinear resize (align_corners=False), separable."""
    if layout == "NHWC":
        x = x.transpose(0, 3, 1, 2)
    y0, y1, wy0, wy1 = axis(x.shape[2], size, x.dtype)
    x0, x1, wx0, wx1 = axis(x.shape[3], size, x.dtype)
    rows = x[:, :, y0, :] * wy0[:, None] + x[:, :, y1, :] * wy1[:, None]
    out = rows[..., x0] * wx0 + rows[..., x1] * wx1
    return np.ascontiguousarray(out.transpose(0, 2, 3, 1)) if layout == "NHWC" else out


@pytest.fixture(scope="module")
def batches():
    x = np.random.default_rng(0).random((64, 3, 224, 224), dtype=np.float32)
    return {"NCHW": x, "NHWC": np.ascontiguousarray(x.transpose(0, 2, 3, 1))}


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("impl", ["fastopt_1_thread", "fastopt_all_threads", "numpy"])
def test_resize(benchmark, batches, case, impl):
    layout, size = CASES[case]
    x = batches[layout]
    if impl == "numpy":
        fn = lambda: numpy_resize(x, size, layout)  # noqa: E731
    else:
        fn = lambda: random_resize(x, size, layout)  # noqa: E731
    _kernels.set_num_threads(1 if impl == "fastopt_1_thread" else 0)
    try:
        out = benchmark.pedantic(fn, rounds=5, warmup_rounds=1)
    finally:
        _kernels.set_num_threads(0)
    benchmark.extra_info["threads"] = 1 if impl == "fastopt_1_thread" else _kernels.get_num_threads()
    np.testing.assert_allclose(out, random_resize(x, size, layout), atol=1e-5)
