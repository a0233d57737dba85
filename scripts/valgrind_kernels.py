"""A short run of every kernel, for valgrind memcheck (scripts/valgrind.sh).

Every optimizer and option case of tests/cases.py, float32 and float64, sizes around the SIMD
and thread boundaries, mixed-type groups, serial and parallel (threshold lowered so the split
runs on small arrays); the all-finite check; the bandwidth kernel; the overlap checks. Then the
other C code: the mixed-precision kernels (csrc/mixed.c: float16, and bfloat16 when ml_dtypes
is installed; with and without master weights, stochastic rounding, a loss scale), bilinear
resizing (csrc/resize.c: NCHW/NHWC, float32/float64/uint8, up and down) and Newton's
Hessian/Cholesky path (fastopt._linalg over scipy's BLAS/LAPACK, including the shifted
fallback).
"""
import sys

import numpy as np

sys.path.insert(0, "tests")
import fastopt as fo  # noqa: E402
from fastopt import _kernels  # noqa: E402
from fastopt._specs import SPECS  # noqa: E402
from cases import CASES, EXTRA_CASES  # noqa: E402

SIZES = (0, 1, 3, 16, 17, 33, 1000)


def main():
    rng = np.random.default_rng(0)
    calls = 0
    for threads, threshold in ((1, 32768), (2, 16)):
        fo.set_num_threads(threads)
        _kernels.set_parallel_threshold(threshold)
        for name, spec in SPECS.items():
            cls = getattr(fo, spec.class_name)
            for hyper in CASES[name] + EXTRA_CASES.get(name, []):
                params = [rng.standard_normal(n).astype(dt) for n in SIZES
                          for dt in (np.float32, np.float64)]
                opt = cls([{"params": params[:7]}, {"params": params[7:]}], **hyper)
                for step in range(3):
                    grads = [rng.standard_normal(p.shape).astype(p.dtype) for p in params]
                    opt.step(grads, nonfinite=("ignore", "skip", "raise")[step])
                    calls += 1
                grads[5][-1] = np.nan
                assert opt.step(grads, nonfinite="skip") is False
                assert all(np.isfinite(p).all() for p in params)
        for dt in (np.float32, np.float64):
            b, c = np.zeros(1001, dt), np.ones(1001, dt)
            _kernels.stream_axpy(b, c, 0.5)
            assert (b == 0.5).all()
    fo.set_num_threads(0)
    print(f"valgrind_kernels: {calls} optimizer steps over {len(SPECS)} optimizers, ok")
    _kernels.set_parallel_threshold(32768)
    print(f"valgrind_kernels: {mixed_precision(rng)} mixed-precision steps, ok")
    print(f"valgrind_kernels: {resizes(rng)} resizes, ok")
    print(f"valgrind_kernels: {newton(rng)} Newton steps, ok")


def mixed_precision(rng):
    """Every optimizer over 16-bit parameters (csrc/mixed.c), serial and parallel split."""
    lowp = [np.float16]
    try:
        import ml_dtypes
        lowp.append(ml_dtypes.bfloat16)
    except ImportError:
        pass
    calls = 0
    for threads, threshold in ((1, 32768), (2, 16)):
        fo.set_num_threads(threads)
        _kernels.set_parallel_threshold(threshold)
        for dt in lowp:
            options = [{"master_weights": True}, {"master_weights": True, "loss_scale": "dynamic"},
                       {"master_weights": False}]
            if dt is not np.float16:
                options.append({"master_weights": False, "rounding": "stochastic"})
            for name, spec in SPECS.items():
                cls = getattr(fo, spec.class_name)
                for mp in options:
                    params = [rng.standard_normal(n).astype(dt) for n in SIZES]
                    opt = fo.MixedPrecision(cls, params, **mp)
                    for step in range(2):
                        grads = [rng.standard_normal(p.shape).astype(dt) for p in params]
                        opt.step(grads)
                        calls += 1
                    grads[-1][-1] = np.inf
                    opt.step(grads, nonfinite="skip")
                    calls += 1
    fo.set_num_threads(0)
    return calls


def resizes(rng):
    """Bilinear resizing (csrc/resize.c) in both layouts and every supported type."""
    from fastopt import _tricks
    calls, saved = 0, _tricks.get_parallel_threshold()
    for threads, threshold in ((1, saved), (2, 1)):      # serial, then the parallel split
        fo.set_num_threads(threads)
        _tricks.set_parallel_threshold(threshold)
        for dt in (np.float32, np.float64, np.uint8):
            for layout, shape in (("NCHW", (2, 3, 7, 9)), ("NHWC", (2, 7, 9, 3))):
                batch = (rng.random(shape) * 200).astype(dt)
                for size in ((7, 9), (4, 5), (13, 17), (1, 1), (1, 20)):
                    out = fo.random_resize(batch, size, layout=layout)
                    assert out.dtype == batch.dtype
                    calls += 1
    _tricks.set_parallel_threshold(saved)
    fo.set_num_threads(0)
    return calls


def newton(rng):
    """Newton steps on logistic regression (Hessian by BLAS, Cholesky by LAPACK) and on an
    indefinite quadratic (the identity-shift fallback), float32 and float64."""
    import warnings
    from fastopt.problems import LogisticRegression, Quadratic
    calls = 0
    for dt in (np.float32, np.float64):
        X = rng.standard_normal((40, 5)).astype(dt)
        y = (rng.random(40) > 0.5).astype(np.int64)
        for multinomial, labels in ((False, y), (True, rng.integers(0, 3, 40))):
            prob = LogisticRegression(X, labels, l2=0.01, multinomial=multinomial)
            w = np.zeros(prob.shape, dt)
            opt = fo.Newton([w])
            for _ in range(3):
                opt.step([prob.grad(w)], [prob.hessian(w)])
                calls += 1
        A = np.diag(np.array([2.0, -1.0, 0.5], dt))
        quad = Quadratic(A, np.ones(3, dt))
        w = np.ones(3, dt)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fo.Newton([w]).step([quad.grad(w)], [quad.hessian(w)])
        calls += 1
    return calls


if __name__ == "__main__":
    main()
