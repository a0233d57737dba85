# cython: language_level=3
"""Muon's step: the momentum pass, the Newton-Schulz iteration on BLAS gemm, the update pass.

Design note
-----------
One call steps one 2-D parameter (m rows, n columns, C order) with the GIL released:

1. a fused pass over the elements (the parameter's dtype): ``buf = lerp(buf, g, 1 - mu)``,
   ``u = lerp(g, buf, mu)`` with Nesterov else ``buf`` (torch's vectorized lerp, with fma),
   ``u`` written into the work matrix ``X`` in the iteration's dtype and its squared norm
   summed in double;
2. ``X /= max(||X||, eps)``, then `ns_steps` iterations of ``A = X X^T``,
   ``B = b A + c A A``, ``X = a X + B X`` as three BLAS gemm calls
   (``scipy.linalg.cython_blas`` sgemm/dgemm, no link-time BLAS), ``X`` being the k-by-l
   matrix with k = min(m, n): torch transposes when m > n, which here is only a choice of
   gemm's ``trans`` flags (a C-order m-by-n array is the Fortran n-by-m matrix);
3. a fused pass ``p = p (1 - lr wd)``, then ``p = p - lr' O`` (one rounding, as torch's
   ``add_(O, alpha=-lr')``).

The work matrices (``X``, the next ``X``, ``A``, ``B``) are views of one buffer the caller
owns and reuses (`workspace_size`): nothing is allocated per step.

Modes (the ``ns_dtype`` of fastopt.Muon): ``MODE_BF16`` emulates torch's bfloat16
iteration: every value torch holds as a bfloat16 tensor is a float32 here rounded to the
nearest bfloat16 (ties to even, torch's ``c10::BFloat16``): the input ``u`` (a float64 ``u``
goes through float32 first, as torch's conversion does), the norm, each gemm's output and the
quotient ``X / ||X||``. The gemm products and the ``b A + c A A`` / ``a X + B X`` sums are
float32 accumulations rounded once to bfloat16, as torch's CPU bfloat16 matmul and addmm do;
the float32 accumulation order (the BLAS's blocking) is not torch's (oneDNN's or its own
kernels), so an output whose float32 value lies within a few float32 ulps of a bfloat16
rounding boundary may round the other way (a one-bfloat16-ulp difference); the norm is the
double sum of squares rounded to float32 then bfloat16, where torch sums in float32 in its own
order. ``MODE_F32`` / ``MODE_F64``: the same iteration in float32 / float64, no rounding step.
"""
import numpy as np
cimport numpy as cnp
from libc.math cimport fma, fmaf, sqrt
from libc.stdint cimport uint32_t
from libc.string cimport memcpy
from scipy.linalg.cython_blas cimport dgemm, sgemm

cnp.import_array()

ctypedef fused real:       # the parameter's element type
    float
    double

ctypedef fused wreal:      # the iteration's element type
    float
    double

MODE_BF16 = 0
MODE_F32 = 1
MODE_F64 = 2


# ------------------------------------------------------------------------------ scalars
cdef inline float _bf16(float x) noexcept nogil:
    """x rounded to the nearest bfloat16 (ties to even), as a float; NaN -> quiet NaN."""
    cdef uint32_t u
    if x != x:
        u = 0x7FC00000
    else:
        memcpy(&u, &x, 4)
        u = (u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000u
    memcpy(&x, &u, 4)
    return x


def round_bf16(x):
    """A float32 array `x` rounded to the nearest bfloat16 values (ties to even), as float32
    (a new array); tests and the NumPy reference use it."""
    a = np.array(x, dtype=np.float32, order="C", copy=True)
    cdef float[::1] v = a.reshape(-1)
    cdef Py_ssize_t i
    with nogil:
        for i in range(v.shape[0]):
            v[i] = _bf16(v[i])
    return a


cdef inline real _lerp(real self, real end, real w, real w_minus_one, bint small) noexcept nogil:
    # torch's vectorized CPU lerp (aten's lerp_vec): fma(w, end - self, self) for w < 1/2,
    # else fma(w - 1, end - self, end); one rounding each, as torch's kernels on x86-64
    if real is float:
        return fmaf(w, end - self, self) if small else fmaf(w_minus_one, end - self, end)
    else:
        return fma(w, end - self, self) if small else fma(w_minus_one, end - self, end)


# ------------------------------------------------------------------------------ passes
cdef double _momentum(real *buf, const real *g, wreal *X, Py_ssize_t n, double momentum,
                      bint nesterov, bint bf16) noexcept nogil:
    """buf = lerp(buf, g, 1 - mu); X = (nesterov ? lerp(g, buf, mu) : buf) in X's type
    (rounded to bfloat16 when bf16); returns the sum of squares of X (double)."""
    cdef real w = <real>(1.0 - momentum)
    cdef real omw = w - <real>1
    cdef bint small = w < <real>0.5
    cdef real mu = <real>momentum
    cdef real omm = mu - <real>1
    cdef bint small_mu = mu < <real>0.5
    cdef real b, u
    cdef wreal x
    cdef double ss = 0
    cdef Py_ssize_t i
    for i in range(n):
        b = _lerp(buf[i], g[i], w, omw, small)
        buf[i] = b
        u = _lerp(g[i], b, mu, omm, small_mu) if nesterov else b
        if bf16:
            x = <wreal>_bf16(<float>u)
        else:
            x = <wreal>u
        X[i] = x
        ss += <double>x * <double>x
    return ss


cdef void _normalize(wreal *X, Py_ssize_t n, double ss, double eps, bint bf16) noexcept nogil:
    """X /= max(||X||, eps), the norm and eps in X's precision (bfloat16 when bf16)."""
    cdef wreal nrm, e
    if bf16:
        nrm = <wreal>_bf16(<float>sqrt(ss))
        e = <wreal>_bf16(<float>eps)
    else:
        nrm = <wreal>sqrt(ss)
        e = <wreal>eps
    if nrm < e:                  # NaN stays NaN, as torch's clamp
        nrm = e
    cdef Py_ssize_t i
    for i in range(n):
        if bf16:
            X[i] = <wreal>_bf16(<float>(X[i] / nrm))
        else:
            X[i] = X[i] / nrm


cdef void _update(real *p, const wreal *O, Py_ssize_t n, double decay, double step) noexcept nogil:
    """p = p * decay, then p = p - step * O rounded once (in the wider of the two types)."""
    cdef real d = <real>decay
    cdef real q
    cdef Py_ssize_t i
    for i in range(n):
        q = p[i] * d
        if real is float and wreal is float:
            p[i] = fmaf(<float>(-step), O[i], q)
        else:
            p[i] = <real>fma(-step, <double>O[i], <double>q)


cdef inline void _round_all(wreal *a, Py_ssize_t n) noexcept nogil:
    cdef Py_ssize_t i
    for i in range(n):
        a[i] = <wreal>_bf16(<float>a[i])


cdef inline void _gemm(char ta, char tb, int m, int n, int k, wreal alpha, wreal *a, int lda,
                       wreal *b, int ldb, wreal beta, wreal *c, int ldc) noexcept nogil:
    if wreal is float:
        sgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, a, &lda, b, &ldb, &beta, c, &ldc)


cdef wreal *_newton_schulz(wreal *X, wreal *Y, wreal *A, wreal *B, int m, int n, double a,
                           double b, double c, int steps, bint bf16) noexcept nogil:
    """`steps` iterations on X (the m-by-n C-order matrix, transposed when m > n); Y, A, B:
    work matrices (m n, k k, k k elements, k = min(m, n)). Returns X or Y, whichever holds
    the result (m-by-n, C order)."""
    cdef bint wide = m <= n            # torch's X is G (k = m) or G^T (k = n)
    cdef int k = m if wide else n
    cdef int l = n if wide else m
    cdef Py_ssize_t kk = <Py_ssize_t>k * k, kl = <Py_ssize_t>k * l
    cdef char N = b'N', T = b'T'
    cdef wreal *t
    cdef int s
    for s in range(steps):
        # A = X X^T. wide: the buffer is the Fortran l-by-k matrix X^T; else the k-by-l X.
        if wide:
            _gemm(T, N, k, k, l, <wreal>1, X, l, X, l, <wreal>0, A, k)
        else:
            _gemm(N, T, k, k, l, <wreal>1, X, k, X, k, <wreal>0, A, k)
        if bf16:
            _round_all(A, kk)
        # B = b A + c A A
        memcpy(B, A, kk * sizeof(wreal))
        _gemm(N, N, k, k, k, <wreal>c, A, k, A, k, <wreal>b, B, k)
        if bf16:
            _round_all(B, kk)
        # X' = a X + B X  (wide: X'^T = a X^T + X^T B^T)
        memcpy(Y, X, kl * sizeof(wreal))
        if wide:
            _gemm(N, T, l, k, k, <wreal>1, X, l, B, k, <wreal>a, Y, l)
        else:
            _gemm(N, N, k, l, k, <wreal>1, B, k, X, k, <wreal>a, Y, k)
        if bf16:
            _round_all(Y, kl)
        t = X
        X = Y
        Y = t
    return X


# ------------------------------------------------------------------------------ entry points
def workspace_size(Py_ssize_t m, Py_ssize_t n):
    """Elements of the work buffer one m-by-n parameter needs: 2 m n + 2 min(m, n)^2."""
    cdef Py_ssize_t k = min(m, n)
    return 2 * m * n + 2 * k * k


cdef object _check(object a, str name, object dtype, tuple shape):
    if not isinstance(a, np.ndarray) or a.dtype != dtype or not a.flags.c_contiguous:
        raise TypeError(f"{name} must be a C-contiguous {np.dtype(dtype)} numpy.ndarray")
    if shape is not None and a.shape != shape:
        raise ValueError(f"{name} must have shape {shape}, got {a.shape}")
    return a


def step(param, grad, buf, work, *, double decay, double step_size, double momentum,
         bint nesterov, double a, double b, double c, int ns_steps, double eps, int mode):
    """One Muon step of one 2-D parameter in place (see the module docstring).

    `param`, `grad`, `buf` (momentum_buffer): m-by-n, C order, one dtype (float32/float64);
    `work`: a 1-D buffer of at least `workspace_size(m, n)` elements, float32 for MODE_BF16
    and MODE_F32, float64 for MODE_F64. `decay` = 1 - lr wd; `step_size` = the adjusted lr.
    """
    if not isinstance(param, np.ndarray) or param.ndim != 2:
        raise ValueError("param must be a 2-D numpy.ndarray")
    dt = param.dtype
    if dt != np.float32 and dt != np.float64:
        raise TypeError(f"param must be float32 or float64, got {dt}")
    shape = param.shape
    _check(param, "param", dt, shape)
    _check(grad, "grad", dt, shape)
    _check(buf, "momentum_buffer", dt, shape)
    if not param.flags.writeable or not buf.flags.writeable:
        raise ValueError("param and momentum_buffer must be writable")
    if mode not in (MODE_BF16, MODE_F32, MODE_F64):
        raise ValueError(f"unknown mode {mode}")
    wdt = np.float64 if mode == MODE_F64 else np.float32
    _check(work, "work", wdt, None)
    cdef Py_ssize_t m = shape[0], n = shape[1]
    if work.ndim != 1 or work.shape[0] < workspace_size(m, n):
        raise ValueError(f"work must be 1-D with at least {workspace_size(m, n)} elements")
    if ns_steps < 0:
        raise ValueError("ns_steps must be >= 0")
    if m > 2147483647 or n > 2147483647:
        raise ValueError("parameter too large for BLAS (int dimensions)")
    cdef _Settings s
    s.m, s.n, s.decay, s.step_size, s.momentum = m, n, decay, step_size, momentum
    s.a, s.b, s.c, s.eps, s.ns_steps, s.nesterov = a, b, c, eps, ns_steps, nesterov
    s.bf16 = mode == MODE_BF16
    cdef cnp.ndarray P = param, G = grad, M = buf, W = work
    cdef void *w = cnp.PyArray_DATA(W)
    cdef bint w64 = wdt == np.float64
    if dt == np.float32:
        _run_p(<float *>cnp.PyArray_DATA(P), <float *>cnp.PyArray_DATA(G),
               <float *>cnp.PyArray_DATA(M), w, w64, s)
    else:
        _run_p(<double *>cnp.PyArray_DATA(P), <double *>cnp.PyArray_DATA(G),
               <double *>cnp.PyArray_DATA(M), w, w64, s)


cdef struct _Settings:
    Py_ssize_t m, n
    double decay, step_size, momentum, a, b, c, eps
    int ns_steps
    bint nesterov, bf16


cdef void _run_p(real *p, const real *g, real *buf, void *work, bint w64,
                 _Settings s) noexcept:
    if w64:
        _run(p, g, buf, <double *>work, s)
    else:
        _run(p, g, buf, <float *>work, s)


cdef void _run(real *p, const real *g, real *buf, wreal *work, _Settings s) noexcept:
    cdef Py_ssize_t size = s.m * s.n, k = min(s.m, s.n)
    cdef wreal *X = work
    cdef wreal *Y = work + size
    cdef wreal *A = work + 2 * size
    cdef wreal *B = A + k * k
    cdef double ss
    with nogil:
        ss = _momentum(buf, g, X, size, s.momentum, s.nesterov, s.bf16)
        if size == 0:
            return
        _normalize(X, size, ss, s.eps, s.bf16)
        X = _newton_schulz(X, Y, A, B, <int>s.m, <int>s.n, s.a, s.b, s.c, s.ns_steps, s.bf16)
        _update(p, X, size, s.decay, s.step_size)


def orthogonalize(G, *, double a=3.4445, double b=-4.7750, double c=2.0315, int ns_steps=5,
                  double eps=1e-7, int mode=MODE_BF16):
    """The Newton-Schulz output O for one m-by-n matrix G (a new array in the iteration's
    dtype; its momentum pass is the identity: zero buffer, momentum 0, no Nesterov). For tests
    and the benchmark."""
    G = np.ascontiguousarray(G)
    if G.ndim != 2 or G.dtype not in (np.float32, np.float64):
        raise ValueError("G must be a 2-D float32 or float64 array")
    wdt = np.float64 if mode == MODE_F64 else np.float32
    m, n = G.shape
    out = np.zeros((m, n), dtype=wdt)
    buf = np.zeros_like(G)
    work = np.empty(workspace_size(m, n), dtype=wdt)
    # p = 0 * 1 - (-1) O = O  (decay 1, step size -1 on a zero parameter, momentum 0)
    if wdt == G.dtype:
        step(out, G, buf, work, decay=1.0, step_size=-1.0, momentum=0.0, nesterov=False,
             a=a, b=b, c=c, ns_steps=ns_steps, eps=eps, mode=mode)
        return out
    p = np.zeros_like(G)
    step(p, G, buf, work, decay=1.0, step_size=-1.0, momentum=0.0, nesterov=False,
         a=a, b=b, c=c, ns_steps=ns_steps, eps=eps, mode=mode)
    return p.astype(wdt)


def gemm_only(X, Y, A, B, int steps):
    """The Newton-Schulz iteration's gemm calls only (no rounding, no copies) on the C-order
    m-by-n float32/float64 matrices X, Y and k-by-k A, B (k = min(m, n)), `steps` times: the
    BLAS yardstick of the benchmark (same BLAS, same shapes and flags as `step`)."""
    if not isinstance(X, np.ndarray) or X.ndim != 2:
        raise ValueError("X must be a 2-D numpy.ndarray")
    if X.dtype != np.float32 and X.dtype != np.float64:
        raise TypeError(f"X must be float32 or float64, got {X.dtype}")
    k = min(X.shape)
    _check(X, "X", X.dtype, X.shape)
    _check(Y, "Y", X.dtype, X.shape)
    _check(A, "A", X.dtype, (k, k))
    _check(B, "B", X.dtype, (k, k))
    if steps < 0 or k == 0:
        raise ValueError("steps must be >= 0 and X not empty")
    cdef cnp.ndarray Xa = X, Ya = Y, Aa = A, Ba = B
    cdef int m = X.shape[0], n = X.shape[1]
    if X.dtype == np.float32:
        _gemms[float](<float *>cnp.PyArray_DATA(Xa), <float *>cnp.PyArray_DATA(Ya),
                      <float *>cnp.PyArray_DATA(Aa), <float *>cnp.PyArray_DATA(Ba), m, n, steps)
    else:
        _gemms[double](<double *>cnp.PyArray_DATA(Xa), <double *>cnp.PyArray_DATA(Ya),
                       <double *>cnp.PyArray_DATA(Aa), <double *>cnp.PyArray_DATA(Ba), m, n,
                       steps)


cdef void _gemms(wreal *X, wreal *Y, wreal *A, wreal *B, int m, int n, int steps) noexcept:
    cdef bint wide = m <= n
    cdef int k = m if wide else n
    cdef int l = n if wide else m
    cdef char N = b'N', T = b'T'
    cdef int s
    with nogil:
        for s in range(steps):
            if wide:
                _gemm(T, N, k, k, l, <wreal>1, X, l, X, l, <wreal>0, A, k)
            else:
                _gemm(N, T, k, k, l, <wreal>1, X, k, X, k, <wreal>0, A, k)
            _gemm(N, N, k, k, k, <wreal>2, A, k, A, k, <wreal>-4, B, k)
            if wide:
                _gemm(N, T, l, k, k, <wreal>1, X, l, B, k, <wreal>3, Y, l)
            else:
                _gemm(N, N, k, l, k, <wreal>1, B, k, X, k, <wreal>3, Y, k)


def flops(Py_ssize_t m, Py_ssize_t n, int steps):
    """Floating-point operations of the iteration's gemms: steps (4 k^2 l + 2 k^3)."""
    cdef double k = min(m, n), l = max(m, n)
    return steps * (4.0 * k * k * l + 2.0 * k * k * k)
