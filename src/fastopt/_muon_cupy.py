"""Muon's step on CuPy arrays: the passes of `fastopt._muon` as CuPy array operations, the
Newton-Schulz products on cuBLAS (``cupy.matmul``).

Design note
-----------
The same three phases, in the same order, as the CPU step (`fastopt._muon`, whose docstring
gives the equations):

1. ``buf = lerp(buf, g, 1 - mu)``; ``u = lerp(g, buf, mu)`` (Nesterov) or ``buf``, in the
   parameter's dtype, each lerp in torch's two forms (``self + w (end - self)`` for w < 1/2,
   else ``end + (w - 1)(end - self)``); ``X = u`` in the iteration's dtype (through float32
   for bfloat16), rounded to bfloat16 in the default mode;
2. ``X /= max(||X||, eps)`` (the sum of squares accumulated in float64; the norm, eps and
   the quotient rounded to bfloat16 in the default mode), then `ns_steps` iterations of
   ``A = X X^T``, ``B = b A + c A A``, ``X = a X + B X`` on cuBLAS through ``cupy.matmul``,
   each product rounded to bfloat16 in the default mode; when m > n the iteration runs on
   the transpose, as torch's, by transposed views (cuBLAS's transpose flags), never a copy;
3. ``p = p (1 - lr wd)``, then ``p = p - lr' O``.

bfloat16 rounding (round to nearest, ties to even, NaN to the quiet NaN) is the CPU's bit
operation ``(u + 0x7FFF + ((u >> 16) & 1)) & 0xFFFF0000`` on the float32 bits, done with
integer ufuncs, so it is bit-exact. What differs from the CPU, by rounding only: the CPU's
lerps and the final update are single-rounding fmas, here a multiply and an add (two
roundings); the CPU squares in double, here in the iteration's dtype before the float64 sum;
the gemm accumulation order is cuBLAS's; ``B = b A + c A A`` is rounded after the product,
the scaling and the sum (the CPU: once, inside gemm). In float64 the results agree with the
CPU to about 1e-13 relative; in bfloat16 mode a value near a rounding boundary may differ by
one bfloat16 ulp.

Every buffer a step writes besides the parameter and its momentum is in a `Workspace`,
allocated once per (device, parameter dtype, iteration dtype) at the size of the largest
parameter and reused: a step allocates only 0-d/1-element temporaries.
"""
import numpy as np

__all__ = ["Workspaces", "step"]

_BF16_HALF = 0x7FFF
_BF16_MASK = 0xFFFF0000
_QNAN = 0x7FC00000


def _cupy():
    from .cuda import require_cupy
    return require_cupy()


class Workspace:
    """Device buffers for parameters of up to `size` elements and min(m, n)^2 <= `square`."""

    def __init__(self, cp, dtype, wdtype, size, square):
        size, square = max(1, size), max(1, square)
        self.size, self.square = size, square
        self.T = cp.empty(size, dtype=dtype)            # the parameter's dtype
        self.X = cp.empty(size, dtype=wdtype)
        self.Y = cp.empty(size, dtype=wdtype)
        self.A = cp.empty(square, dtype=wdtype)
        self.B = cp.empty(square, dtype=wdtype)
        self.bits = cp.empty(size, dtype=np.uint32)     # bfloat16 rounding
        self.nan = cp.empty(size, dtype=np.bool_)
        self.ss = cp.empty(1, dtype=np.float64)
        self.nrm = cp.empty(1, dtype=wdtype)


class Workspaces:
    """One `Workspace` per (device, parameter dtype, iteration dtype), grown (rarely: new
    parameters) to the largest parameter's need."""

    def __init__(self):
        self._ws = {}

    def get(self, ns_dtype, params):
        cp = _cupy()
        wdt = np.dtype(np.float64 if ns_dtype == "float64" else np.float32)
        out = {}
        for p in params:
            key = (p.device.id, np.dtype(p.dtype), wdt)
            m, n = p.shape
            ws = self._ws.get(key)
            if ws is None or ws.size < m * n or ws.square < min(m, n) ** 2:
                size = max(m * n, ws.size if ws else 0)
                square = max(min(m, n) ** 2, ws.square if ws else 0)
                with cp.cuda.Device(p.device.id):
                    ws = Workspace(cp, p.dtype, wdt, size, square)
                self._ws[key] = ws
            out[key] = ws
        return _ByParam(out, wdt)


class _ByParam:
    def __init__(self, table, wdt):
        self.table, self.wdt = table, wdt

    def __getitem__(self, p):
        return self.table[(p.device.id, np.dtype(p.dtype), self.wdt)]


def _round_bf16(cp, x, bits, nan):
    """`x` (float32, any shape) rounded in place to the nearest bfloat16 values."""
    v = x.view(np.uint32)
    t = bits[:x.size].reshape(x.shape)
    m = nan[:x.size].reshape(x.shape)
    cp.isnan(x, out=m)
    cp.right_shift(v, np.uint32(16), out=t)
    cp.bitwise_and(t, np.uint32(1), out=t)
    cp.add(t, np.uint32(_BF16_HALF), out=t)
    cp.add(t, v, out=t)
    cp.bitwise_and(t, np.uint32(_BF16_MASK), out=v)
    cp.copyto(v, np.uint32(_QNAN), where=m)


def _lerp(cp, start, end, w, out, tmp):
    """out = lerp(start, end, w) (torch's two forms); `tmp` may be `out`, not start/end."""
    cp.subtract(end, start, out=tmp)
    if w < 0.5:
        cp.multiply(tmp, w, out=tmp)
        cp.add(start, tmp, out=out)
    else:
        cp.multiply(tmp, w - w.dtype.type(1), out=tmp)
        cp.add(end, tmp, out=out)


def step(param, grad, buf, work, *, decay, step_size, momentum, nesterov, a, b, c, ns_steps,
         eps, mode):
    """One Muon step of one 2-D CuPy parameter in place; `work` from `Workspaces.get`
    (the arguments are checked by the caller, as for `fastopt._muon.step`). `mode`: 0
    bfloat16, 1 float32, 2 float64 (fastopt._muon's MODE_*)."""
    cp = _cupy()
    ws = work[param]
    m, n = param.shape
    size = m * n
    dt = np.dtype(param.dtype).type
    bf16 = mode == 0
    with cp.cuda.Device(param.device.id):
        # 1. momentum, the update u, X = u in the iteration's dtype
        T = ws.T[:size].reshape(m, n)
        _lerp(cp, buf, grad, dt(1.0 - momentum), buf, T)
        u = buf
        if nesterov:
            _lerp(cp, grad, buf, dt(momentum), T, T)
            u = T
        X = ws.X[:size].reshape(m, n)
        Y = ws.Y[:size].reshape(m, n)
        cp.copyto(X, u, casting="unsafe")
        if size == 0:
            return
        if bf16:
            _round_bf16(cp, X, ws.bits, ws.nan)
        # 2. normalize, Newton-Schulz
        cp.multiply(X, X, out=Y)
        cp.sum(Y.reshape(-1), dtype=np.float64, out=ws.ss.reshape(()))
        cp.sqrt(ws.ss, out=ws.ss)
        nrm = ws.nrm
        cp.copyto(nrm, ws.ss, casting="unsafe")
        wt = ws.X.dtype.type
        e = np.array([eps], dtype=ws.X.dtype)
        if bf16:
            _round_bf16(cp, nrm, ws.bits, ws.nan)
            e = _host_bf16(e)
        cp.maximum(nrm, wt(e[0]), out=nrm)
        cp.divide(X, nrm, out=X)
        if bf16:
            _round_bf16(cp, X, ws.bits, ws.nan)
        X = _newton_schulz(cp, ws, X, Y, m, n, wt(a), wt(b), wt(c), ns_steps, bf16)
        # 3. decay, update
        cp.multiply(param, dt(decay), out=param)
        cp.copyto(T, X, casting="unsafe")
        cp.multiply(T, dt(step_size), out=T)
        cp.subtract(param, T, out=param)


def _host_bf16(x):
    v = x.view(np.uint32)
    out = ((v + np.uint32(_BF16_HALF) + ((v >> np.uint32(16)) & np.uint32(1)))
           & np.uint32(_BF16_MASK)).astype(np.uint32)
    out[np.isnan(x)] = _QNAN
    return out.view(np.float32)


def _newton_schulz(cp, ws, X, Y, m, n, a, b, c, steps, bf16):
    """`steps` iterations; X, Y: m-by-n views of the workspace. Returns the one holding the
    result. On the transpose (X^T, k = n) when m > n, by views."""
    wide = m <= n
    k = m if wide else n
    A = ws.A[:k * k].reshape(k, k)
    B = ws.B[:k * k].reshape(k, k)
    for _ in range(steps):
        if wide:                                   # X is k-by-l
            cp.matmul(X, X.T, out=A)
        else:                                      # X^T is k-by-l: A = X^T X
            cp.matmul(X.T, X, out=A)
        if bf16:
            _round_bf16(cp, A, ws.bits, ws.nan)
        cp.matmul(A, A, out=B)                     # B = b A + c A A
        cp.multiply(B, c, out=B)
        bA = Y.reshape(-1)[:k * k].reshape(k, k)   # Y is free until the next product
        cp.multiply(A, b, out=bA)
        cp.add(bA, B, out=B)
        if bf16:
            _round_bf16(cp, B, ws.bits, ws.nan)
        if wide:                                   # X' = a X + B X
            cp.matmul(B, X, out=Y)
        else:                                      # X'^T = a X^T + B X^T, i.e. X' = a X + X B^T
            cp.matmul(X, B.T, out=Y)
        cp.multiply(X, a, out=X)
        cp.add(X, Y, out=Y)
        if bf16:
            _round_bf16(cp, Y, ws.bits, ws.nan)
        X, Y = Y, X
    return X
