# cython: language_level=3
"""Newton's linear algebra: weighted Gram matrices with BLAS syrk, Cholesky solves with LAPACK.

Design note
-----------
The Hessian of a linear model's mean loss is a weighted Gram matrix,
``H = alpha * sum_i w_i x_i x_i^T`` (logistic regression: ``w_i = p_i (1 - p_i)``); for the
softmax loss each (k, m) block of ``H`` is such a matrix with weights ``p_ik (delta_km - p_im)``.
Here that sum is formed without any n-by-d temporary: rows are scaled by ``sqrt(|w_i|)`` a chunk
at a time into one buffer (`get_chunk_bytes()`, 16 MiB by default, at least 64 rows: large
enough that each syrk call runs near peak and a fit makes few BLAS calls, each of which is a
synchronization of the BLAS threads), and each chunk is accumulated with BLAS
``syrk`` (``C += alpha * A A^T``, half the flops of ``gemm``). A C-contiguous n-by-d array is,
to Fortran, the d-by-n matrix ``X^T``, so a chunk of scaled rows is passed as-is with
``trans='N'``. ``syrk`` fills one triangle of each block; the result is mirrored at the end so
callers always get a full symmetric matrix.

The solve is a Cholesky factorization (``potrf``/``potrs``). A symmetric matrix is the same in
row- and column-major order, so no transposes are needed. When the factorization fails, or its
smallest pivot shows the matrix is numerically singular, a multiple of the identity ``tau I`` is
added, ``tau`` growing by `SHIFT_GROWTH` from a scale-aware start, until it succeeds (Nocedal &
Wright, Numerical Optimization, Algorithm 3.3); the shift used is returned, never an exception
from inside LAPACK. BLAS and LAPACK come from ``scipy.linalg.cython_blas`` /
``cython_lapack`` (no link-time dependency), float32 (``s*``) and float64 (``d*``) from one fused
type; all numeric work runs with the GIL released.

`scores` and `transpose_times` (the products ``X W^T`` and ``R^T X`` of a linear model's loss
and gradient) use the same BLAS (``gemv``/``gemm``), so that a Newton iteration runs in one
BLAS library and one thread pool: alternating NumPy's and SciPy's OpenBLAS leaves the idle pool's
threads spinning against the busy one's, which made whole fits several times slower on a
2-core machine.
"""
import numpy as np
cimport numpy as cnp
from cpython.mem cimport PyMem_Free, PyMem_Malloc
from libc.math cimport fabs, sqrt
from libc.stdint cimport int64_t
from scipy.linalg.cython_blas cimport dgemm, dgemv, dsyrk, sgemm, sgemv, ssyrk
from scipy.linalg.cython_lapack cimport dpotrf, dpotrs, spotrf, spotrs

from ._kernels cimport _describe, int_setting

cnp.import_array()

ctypedef fused real:
    float
    double

cdef enum:
    _MAX_SHIFT_TRIES = 200
cdef double _SHIFT_GROWTH = 4.0
cdef int64_t _chunk_bytes = 1 << 24     # 16 MiB: few, large syrk calls
#: Factor by which the identity shift grows after a failed factorization.
SHIFT_GROWTH = _SHIFT_GROWTH

# Bytes of scaled rows handed to one syrk call (at least 64 rows are always used; tuning, tests).
_chunk_setting = int_setting(&_chunk_bytes, "chunk bytes")
get_chunk_bytes = _chunk_setting.get
set_chunk_bytes = _chunk_setting.set


# ------------------------------------------------------------------------------- checks
cdef object _check_matrix(object a, str name, int ndim):
    if not isinstance(a, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64, got {_describe(a)}")
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"{name} must have dtype float32 or float64, got {a.dtype}")
    if a.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D, got shape {a.shape}")
    return np.ascontiguousarray(a)


cdef int _chunk_rows(Py_ssize_t d, Py_ssize_t itemsize):
    cdef Py_ssize_t rows = _chunk_bytes // max(1, d * itemsize)
    return <int>max(64, min(rows, 1 << 20))


# ------------------------------------------------------------------------------- kernels
cdef inline void _syrk(int n, int k, real alpha, real *a, real *c, int ldc) noexcept nogil:
    """c (n-by-n block, Fortran, leading dim ldc) += alpha * a a^T; a is n-by-k Fortran."""
    cdef char uplo = b'U'
    cdef char trans = b'N'
    cdef real one = 1
    if real is float:
        ssyrk(&uplo, &trans, &n, &k, &alpha, a, &n, &one, c, &ldc)
    else:
        dsyrk(&uplo, &trans, &n, &k, &alpha, a, &n, &one, c, &ldc)


cdef void _gram_blocks(const real[:, ::1] X, const real[:, ::1] P, bint softmax, double alpha,
                       real *H, real *buf, int chunk) noexcept nogil:
    """Accumulate the (upper, Fortran) triangles of every block k <= m of H.

    softmax=False: one block, weights P[:, 0].  softmax=True: K = P.shape[1] classes, block
    (k, m) has weights P[i,k] (delta_km - P[i,m]); weights of blocks k < m are <= 0, so they are
    accumulated as -alpha * sum (sqrt(P_ik P_im) x_i)(...)^T. On the diagonal, 1 - P[i,k] is
    summed from the other classes, which keeps its relative precision when P[i,k] -> 1.
    """
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t K = P.shape[1] if softmax else 1
    cdef Py_ssize_t p = d * K
    cdef Py_ssize_t start, r, j, k, m
    cdef int b
    cdef real s, pk, q
    cdef real a_pos = <real>alpha
    cdef real a_neg = <real>(-alpha)
    start = 0
    while start < n:
        b = <int>min(<Py_ssize_t>chunk, n - start)
        for k in range(K):
            for m in range(k, K):
                for r in range(b):
                    pk = P[start + r, k]
                    if not softmax:
                        s = sqrt(pk)
                    elif k == m:        # 1 - p_k summed from the others: no cancellation
                        q = 0
                        for j in range(K):
                            if j != k:
                                q = q + P[start + r, j]
                        s = sqrt(pk * q)
                    else:
                        s = sqrt(pk * P[start + r, m])
                    for j in range(d):
                        buf[r * d + j] = s * X[start + r, j]
                _syrk(<int>d, b, a_pos if k == m else a_neg, buf,
                      H + k * d + m * d * p, <int>p)
        start += b


cdef void _symmetrize(real *H, Py_ssize_t d, Py_ssize_t K) noexcept nogil:
    """Complete H (row-major p-by-p, p = d K) from the block triangles that syrk filled."""
    cdef Py_ssize_t p = d * K, k, m, i, j, a, c
    cdef real *B
    # syrk filled, in row-major terms, the lower triangle of each block (m, k) with m >= k
    for k in range(K):
        for m in range(k, K):
            B = H + m * d * p + k * d
            for i in range(d):
                for j in range(i + 1, d):
                    B[i * p + j] = B[j * p + i]
    for a in range(p):
        for c in range(a + 1, p):
            H[a * p + c] = H[c * p + a]


# ------------------------------------------------------------------------------- Gram API
def _gram(X, P, double alpha, out, bint softmax):
    cdef Py_ssize_t n = X.shape[0], d = X.shape[1]
    cdef Py_ssize_t K = P.shape[1] if softmax else 1
    cdef Py_ssize_t p = d * K
    if out is None:
        out = np.zeros((p, p), dtype=X.dtype)
    else:
        if not isinstance(out, np.ndarray) or out.dtype != X.dtype or out.shape != (p, p) \
                or not out.flags.c_contiguous or not out.flags.writeable:
            raise ValueError(f"out must be a writable C-contiguous {X.dtype} array of shape "
                             f"{(p, p)}, got {_describe(out)}")
        out.fill(0)
    if p == 0:
        return out
    cdef int chunk = _chunk_rows(d, X.itemsize)
    cdef Py_ssize_t rows = min(<Py_ssize_t>chunk, max(n, 1))
    cdef void *buf = PyMem_Malloc(rows * d * X.itemsize + 1)
    if buf == NULL:
        raise MemoryError()
    try:
        if X.dtype == np.float32:
            _gram_into(<float>0, X, P, softmax, alpha, <cnp.ndarray>out, buf, chunk, K)
        else:
            _gram_into(<double>0, X, P, softmax, alpha, <cnp.ndarray>out, buf, chunk, K)
    finally:
        PyMem_Free(buf)
    return out


cdef int _gram_into(real kind, X, P, bint softmax, double alpha, cnp.ndarray H, void *buf,
                    int chunk, Py_ssize_t K) except -1:
    """_gram's work for element type `real` (`kind` only selects it), the GIL released."""
    cdef const real[:, ::1] Xv = X
    cdef const real[:, ::1] Pv = P
    with nogil:
        _gram_blocks(Xv, Pv, softmax, alpha, <real *>cnp.PyArray_DATA(H), <real *>buf, chunk)
        _symmetrize(<real *>cnp.PyArray_DATA(H), Xv.shape[1], K)
    return 0


def weighted_gram(X, weights, double alpha=1.0, out=None):
    """``alpha * X^T diag(weights) X`` (d-by-d, full and symmetric), by chunked BLAS syrk.

    `X` is an n-by-d float32/float64 array, `weights` n non-negative finite numbers (cast to
    X's dtype). No n-by-d temporary is made: rows are scaled by ``sqrt(weights)`` a chunk at a
    time. `out`, if given, is a C-contiguous d-by-d array of X's dtype that is overwritten.
    """
    X = _check_matrix(X, "X", 2)
    w = np.asarray(weights)
    if w.ndim != 1 or w.shape[0] != X.shape[0]:
        raise ValueError(f"weights must have shape ({X.shape[0]},) to match X {X.shape}, "
                         f"got {w.shape}")
    w = np.ascontiguousarray(w, dtype=X.dtype)
    if w.size and not (np.all(np.isfinite(w)) and w.min() >= 0):
        raise ValueError("weights must be finite and >= 0")
    return _gram(X, w.reshape(-1, 1), alpha, out, False)


def softmax_gram(X, P, double alpha=1.0, out=None):
    """Hessian of the mean softmax loss without the penalty: the p-by-p matrix, p = K d,

    ``H[k d + j, m d + l] = alpha * sum_i X[i,j] X[i,l] P[i,k] (delta_km - P[i,m])``,

    i.e. parameters ordered class-major (``W`` of shape (K, d), flattened). `P` (n-by-K, rows
    on the probability simplex) holds the predicted class probabilities. Each block is
    accumulated by chunked BLAS syrk, as in :func:`weighted_gram`.
    """
    X = _check_matrix(X, "X", 2)
    P = _check_matrix(P, "P", 2)
    if P.shape[0] != X.shape[0]:
        raise ValueError(f"P must have {X.shape[0]} rows to match X {X.shape}, got {P.shape}")
    P = np.ascontiguousarray(P, dtype=X.dtype)
    if P.size and not (np.all(np.isfinite(P)) and P.min() >= 0 and P.max() <= 1):
        raise ValueError("P must hold probabilities in [0, 1]")
    return _gram(X, P, alpha, out, True)


# ------------------------------------------------------------------------------- Cholesky
cdef int _potrf(real *a, int p) noexcept nogil:
    cdef char uplo = b'U'
    cdef int info = 0
    if real is float:
        spotrf(&uplo, &p, a, &p, &info)
    else:
        dpotrf(&uplo, &p, a, &p, &info)
    return info


cdef int _potrs(real *a, int p, real *b, int nrhs) noexcept nogil:
    cdef char uplo = b'U'
    cdef int info = 0
    if real is float:
        spotrs(&uplo, &p, &nrhs, a, &p, b, &p, &info)
    else:
        dpotrs(&uplo, &p, &nrhs, a, &p, b, &p, &info)
    return info


cdef int _factor(const real *H, real *work, Py_ssize_t p, double shift, double eps) noexcept nogil:
    """work = chol(H + shift I); 0 on success, > 0 if not (numerically) positive definite."""
    cdef Py_ssize_t i, n2 = p * p
    cdef double diag_max = 0, piv_min, v
    for i in range(n2):
        work[i] = H[i]
    for i in range(p):
        work[i * p + i] = <real>(work[i * p + i] + shift)
        diag_max = max(diag_max, fabs(<double>work[i * p + i]))
    cdef int info = _potrf(work, <int>p)
    if info != 0:
        return info
    # accepted only if the smallest pivot is above rounding level: d^2 >= p eps max|H_ii|
    piv_min = <double>work[0]
    for i in range(p):
        v = <double>work[i * p + i]
        piv_min = min(piv_min, v * v)
    if piv_min <= p * eps * diag_max or diag_max == 0:
        return <int>p
    return 0


cdef double _solve(const real *H, real *work, real *b, Py_ssize_t p, int nrhs, double damping,
                   double eps, int *tries) noexcept nogil:
    """Factor H + (damping + shift) I, solve in place into b; returns the shift.

    shift = 0 if H + damping I factors; else shift = 2 tau with tau the first of
    tau_0 GROWTH^j that factors (so the shifted matrix has eigenvalues >= tau in exact
    arithmetic); -1 if nothing worked in _MAX_SHIFT_TRIES tries.
    """
    cdef double tau, diag_min, diag_max = 0, v
    cdef Py_ssize_t i
    cdef int t
    tries[0] = 1
    if _factor(H, work, p, damping, eps) == 0:
        _potrs(work, <int>p, b, nrhs)
        return 0.0
    diag_min = <double>H[0] + damping
    for i in range(p):
        v = <double>H[i * p + i] + damping
        diag_min = min(diag_min, v)
        diag_max = max(diag_max, fabs(v))
    if diag_max == 0:
        diag_max = 1
    tau = max(0.0, -diag_min) + sqrt(eps) * diag_max
    for t in range(_MAX_SHIFT_TRIES):
        tries[0] += 1
        if _factor(H, work, p, damping + tau, eps) == 0:
            tries[0] += 1
            if _factor(H, work, p, damping + 2 * tau, eps) == 0:
                _potrs(work, <int>p, b, nrhs)
                return 2 * tau
        tau *= _SHIFT_GROWTH
    return -1.0


def cholesky_solve(H, b, double damping=0.0):
    """Solve ``(H + (damping + shift) I) x = b`` by Cholesky; returns ``(x, shift)``.

    `H` is a symmetric p-by-p float32/float64 array (only one triangle is read), `b` has shape
    (p,) or (p, k); `x` has b's shape and H's dtype. ``shift`` is 0 when ``H + damping I``
    factors with pivots above rounding level (smallest squared pivot > p eps max_i |H_ii|).
    Otherwise ``shift = 2 tau``, with ``tau`` the first of ``tau_0 * SHIFT_GROWTH**j``,
    ``tau_0 = max(0, -min_i (H_ii + damping)) + sqrt(eps) * max_i |H_ii + damping|``, for
    which the factorization succeeds; doubling it keeps the smallest eigenvalue of the shifted
    matrix at least ``tau`` (so an indefinite H never yields a nearly singular system). Neither
    input is modified. Raises ValueError for non-finite entries or mismatched shapes.
    """
    H = _check_matrix(H, "hessian", 2)
    if H.shape[0] != H.shape[1]:
        raise ValueError(f"hessian must be square, got shape {H.shape}")
    cdef Py_ssize_t p = H.shape[0]
    if not isinstance(b, np.ndarray):
        b = np.asarray(b)
    if b.ndim not in (1, 2) or b.shape[0] != p:
        raise ValueError(f"the right-hand side must have shape ({p},) or ({p}, k) to match the "
                         f"{p}-by-{p} hessian, got {b.shape}")
    if b.dtype.kind not in "fiu":
        raise TypeError(f"the right-hand side must be a real array, got dtype {b.dtype}")
    if not np.isfinite(damping) or damping < 0:
        raise ValueError(f"damping must be a finite number >= 0, got {damping!r}")
    if not np.all(np.isfinite(H)):
        raise ValueError("hessian contains NaN or inf")
    if not np.all(np.isfinite(b)):
        raise ValueError("the right-hand side contains NaN or inf")
    cdef int nrhs = 1 if b.ndim == 1 else b.shape[1]
    x = np.array(b, dtype=H.dtype, order="F", copy=True)
    if p == 0 or nrhs == 0:
        return x, 0.0
    work = np.empty((p, p), dtype=H.dtype)
    cdef double eps = float(np.finfo(H.dtype).eps)
    cdef double shift
    if H.dtype == np.float32:
        shift = _solve_into(<float>0, H, work, <cnp.ndarray>x, p, nrhs, damping, eps)
    else:
        shift = _solve_into(<double>0, H, work, <cnp.ndarray>x, p, nrhs, damping, eps)
    if shift < 0:
        raise ValueError("hessian: no multiple of the identity made it positive definite "
                         "(entries too large for its dtype?)")
    return np.ascontiguousarray(x), shift


cdef double _solve_into(real kind, H, work, cnp.ndarray x, Py_ssize_t p, int nrhs,
                        double damping, double eps):
    """cholesky_solve's work for element type `real` (`kind` only selects it), without the GIL."""
    cdef const real[:, ::1] Hv = H
    cdef real[:, ::1] Wv = work
    cdef int tries = 0
    cdef double shift
    with nogil:
        shift = _solve(&Hv[0, 0], &Wv[0, 0], <real *>cnp.PyArray_DATA(x), p, nrhs, damping, eps,
                       &tries)
    return shift


# ------------------------------------------------------------------------------ products
cdef void _gemv(char trans, int m, int n, real alpha, const real *a, int lda, const real *x,
                real beta, real *y) noexcept nogil:
    cdef int one = 1
    if real is float:
        sgemv(&trans, &m, &n, &alpha, <float *>a, &lda, <float *>x, &one, &beta, y, &one)
    else:
        dgemv(&trans, &m, &n, &alpha, <double *>a, &lda, <double *>x, &one, &beta, y, &one)


cdef void _gemm(char ta, char tb, int m, int n, int k, real alpha, const real *a, int lda,
                const real *b, int ldb, real *c, int ldc) noexcept nogil:
    cdef real zero = 0
    if real is float:
        sgemm(&ta, &tb, &m, &n, &k, &alpha, <float *>a, &lda, <float *>b, &ldb, &zero, c, &ldc)
    else:
        dgemm(&ta, &tb, &m, &n, &k, &alpha, <double *>a, &lda, <double *>b, &ldb, &zero, c, &ldc)


cdef _product(X, V, double alpha, bint transpose):
    """transpose=False: alpha X V^T (V (K, d) or (d,)); True: alpha V^T X (V (n, K) or (n,))."""
    X = _check_matrix(X, "X", 2)
    cdef int n = X.shape[0], d = X.shape[1]
    V = np.asarray(V)
    cdef int inner = n if transpose else d
    if V.ndim not in (1, 2) or V.shape[V.ndim - 1 if not transpose else 0] != inner:
        want = f"({n},) or ({n}, K)" if transpose else f"({d},) or (K, {d})"
        raise ValueError(f"expected an array of shape {want} to multiply with X {X.shape}, "
                         f"got {V.shape}")
    V = np.ascontiguousarray(V, dtype=X.dtype)
    cdef int K = 1 if V.ndim == 1 else V.shape[1 if transpose else 0]
    cdef list shape = [d if transpose else n]
    if V.ndim == 2:
        shape = [K, d] if transpose else [n, K]
    out = np.empty(tuple(shape), dtype=X.dtype)
    if out.size == 0:
        return out
    if n == 0 or d == 0:
        out.fill(0)
        return out
    if X.dtype == np.float32:
        _product_into(<float>alpha, <cnp.ndarray>X, <cnp.ndarray>V, <cnp.ndarray>out, n, d, K,
                      transpose)
    else:
        _product_into(alpha, <cnp.ndarray>X, <cnp.ndarray>V, <cnp.ndarray>out, n, d, K,
                      transpose)
    return out


cdef void _product_into(real alpha, cnp.ndarray Xa, cnp.ndarray Va, cnp.ndarray Oa, int n, int d,
                        int K, bint transpose) noexcept:
    """_product's BLAS call for element type `real`, without the GIL."""
    cdef char T = b'T', N = b'N'
    cdef bint vector = cnp.PyArray_NDIM(Va) == 1
    cdef real *x = <real *>cnp.PyArray_DATA(Xa)
    cdef real *v = <real *>cnp.PyArray_DATA(Va)
    cdef real *o = <real *>cnp.PyArray_DATA(Oa)
    # C-contiguous X (n-by-d) is the Fortran matrix A = X^T (d-by-n, lda = d)
    with nogil:
        if vector:
            _gemv(N if transpose else T, d, n, alpha, x, d, v, 0, o)   # A v: (d,); A^T v: (n,)
        elif transpose:        # out (K, d) row-major = Fortran (d, K) = A R^T, R row-major (n, K)
            _gemm(N, T, d, K, n, alpha, x, d, v, K, o, d)
        else:                  # out (n, K) row-major = Fortran (K, n) = W A, W row-major (K, d)
            _gemm(T, N, K, n, d, alpha, v, d, x, d, o, K)


def scores(X, W, double alpha=1.0):
    """``alpha * X @ W`` for W of shape (d,), or ``alpha * X @ W.T`` for W of shape (K, d)
    (BLAS gemv / gemm in X's dtype; W is cast to it)."""
    return _product(X, W, alpha, False)


def transpose_times(X, R, double alpha=1.0):
    """``alpha * X.T @ R`` for R of shape (n,), or ``alpha * R.T @ X`` (shape (K, d)) for R of
    shape (n, K) (BLAS gemv / gemm in X's dtype; R is cast to it)."""
    return _product(X, R, alpha, True)
