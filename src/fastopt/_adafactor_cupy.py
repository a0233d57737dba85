"""Adafactor's step on CuPy arrays: the passes of csrc/adafactor.c as CuPy array operations.

Design note
-----------
The same equations, in the same order, as the CPU kernel (fastopt/adafactor.h, the loops in
fastopt/adafactor_loops.h), per tensor:

* a tensor of >= 2 dims, seen as ``batch`` matrices of its last two dims (rows, cols):
  1. g^2 in float64 (the CPU squares in double); its row means and column means (float64
     sums, divided, rounded to the parameter's dtype) lerped into ``row_var`` / ``col_var``
     (torch's lerp: ``self + w (end - self)``, or ``end + (w - 1)(end - self)`` for
     |w| >= 1/2); the sum of p^2 in float64;
  2. per batch ``max(mean(row_var), eps1)`` (a float64 sum, rounded); ``V = (r c) / mean``,
     ``max(V, eps1^2)``, ``U = g * (1 / sqrt(V))`` in the parameter's dtype; the sum of U^2
     in float64;
  3. ``s = -alpha / max(1, RMS(U)/d)`` with ``alpha = max(eps2, RMS(p)) rho`` (the norms
     rounded to the dtype, as torch's), negated under ``maximize``; ``p = p decay + s U``.
* a vector (or 0-d): ``variance = lerp(variance, g g, w)`` in the dtype, then U and the
  update as above.

The scalars of 3. stay on the device (0-d arrays): a step never waits for the GPU. What
differs from the CPU, by rounding only: the CPU's lerps and final update are fmas (here a
multiply and an add), and its float64 sums run in its own order (here CuPy's reductions).
float64 results agree with the CPU to about 1e-15 relative, float32 to about 1e-6.

Work buffers (a float64 and a parameter-dtype buffer of the largest parameter's size) are
made once per (device, dtype) and reused; a step allocates only row- and column-sized
temporaries (the reductions' outputs), never parameter-sized ones.
"""
import math

import numpy as np

from .cuda import check_device_array

__all__ = ["Workspaces", "step"]


def _cupy():
    from .cuda import require_cupy
    return require_cupy()


class Workspaces:
    """Per (device, dtype): a float64 buffer and a buffer of the dtype, each of the largest
    parameter's size, grown (rarely: new parameters) and reused by every step."""

    def __init__(self):
        self._ws = {}

    def get(self, params):
        cp = _cupy()
        for p in params:
            key = (p.device.id, np.dtype(p.dtype))
            have = self._ws.get(key)
            if have is None or have[0].size < max(1, p.size):
                with cp.cuda.Device(p.device.id):
                    n = max(1, p.size, have[0].size if have else 0)
                    self._ws[key] = (cp.empty(n, dtype=np.float64), cp.empty(n, dtype=p.dtype))
        return self

    def __getitem__(self, p):
        return self._ws[(p.device.id, np.dtype(p.dtype))]


def _lerp(cp, state, end, w, tmp):
    """state = lerp(state, end, w) in place (torch's two forms); tmp: like state."""
    cp.subtract(end, state, out=tmp)
    if -0.5 < w < 0.5:
        cp.multiply(tmp, w, out=tmp)
        cp.add(state, tmp, out=state)
    else:
        cp.multiply(tmp, w - w.dtype.type(1), out=tmp)
        cp.add(end, tmp, out=state)


def _sum_sq64(cp, x, w64):
    """The float64 sum of squares of `x`, as a 1-element device array."""
    sq = w64[:x.size].reshape(x.shape)
    cp.copyto(sq, x, casting="unsafe")
    cp.multiply(sq, sq, out=sq)
    return cp.sum(sq.reshape(-1), dtype=np.float64, keepdims=True)


def _u(cp, g, v, eps1sq, out):
    """out = g * (1 / sqrt(max(v, eps1^2))), in the dtype."""
    cp.maximum(v, eps1sq, out=out)
    cp.sqrt(out, out=out)
    cp.divide(out.dtype.type(1), out, out=out)
    cp.multiply(g, out, out=out)


def step(param, grad, row_var, col_var, variance, work, *, one_minus_beta2, rho, eps1, eps2,
         d, decay, maximize):
    """One Adafactor step of one CuPy tensor in place (the arguments checked by the caller,
    as for ``fastopt._adafactor.step``); `work`: a `Workspaces` holding this parameter's."""
    cp = _cupy()
    if param.size == 0:
        return
    t = np.dtype(param.dtype).type
    w, eps1_t, eps1sq = t(one_minus_beta2), t(eps1), t(eps1 * eps1)
    w64, wt = work[param]
    n = param.size
    with cp.cuda.Device(param.device.id):
        U = wt[:n].reshape(param.shape)
        if param.ndim >= 2:
            rows, cols = param.shape[-2:]
            batch = n // (rows * cols)
            g3, u3 = grad.reshape(batch, rows, cols), U.reshape(batch, rows, cols)
            sq = w64[:n].reshape(batch, rows, cols)
            cp.copyto(sq, g3, casting="unsafe")
            cp.multiply(sq, sq, out=sq)                       # g^2 in double
            r_new = cp.sum(sq, axis=2, dtype=np.float64)      # (batch, rows)
            c_new = cp.sum(sq, axis=1, dtype=np.float64)      # (batch, cols)
            psq = _sum_sq64(cp, param, w64)
            cp.divide(r_new, float(cols), out=r_new)
            cp.divide(c_new, float(rows), out=c_new)
            r = row_var.reshape(batch, rows)
            c = col_var.reshape(batch, cols)
            r_end, c_end = r_new.astype(param.dtype), c_new.astype(param.dtype)
            _lerp(cp, r, r_end, w, cp.empty_like(r))
            _lerp(cp, c, c_end, w, cp.empty_like(c))
            mean = cp.sum(r, axis=1, dtype=np.float64)        # (batch,)
            cp.divide(mean, float(rows), out=mean)
            mean_t = mean.astype(param.dtype)
            cp.maximum(mean_t, eps1_t, out=mean_t)
            cp.multiply(r.reshape(batch, rows, 1), c.reshape(batch, 1, cols), out=u3)
            cp.divide(u3, mean_t.reshape(batch, 1, 1), out=u3)
            _u(cp, g3, u3, eps1sq, u3)
        else:
            g2 = U.reshape(param.shape)
            cp.multiply(grad, grad, out=g2)                   # g^2 in the dtype
            _lerp(cp, variance, g2, w, cp.empty_like(variance))
            psq = _sum_sq64(cp, param, w64)
            _u(cp, grad, variance, eps1sq, U)
        usq = _sum_sq64(cp, U, w64)
        s = _scale(cp, psq, usq, n, rho, eps2, d, maximize, param.dtype)
        cp.multiply(param, t(decay), out=param)
        cp.multiply(U, s, out=U)
        cp.add(param, U, out=param)


def _scale(cp, psq, usq, numel, rho, eps2, d, maximize, dtype):
    """s = -alpha / max(1, RMS(U)/d) (negated under maximize) as a 0-d array of the
    dtype, from the float64 sums of squares; the norms rounded to the dtype, as torch's."""
    root = math.sqrt(numel)
    rms = cp.sqrt(psq).astype(dtype).astype(np.float64)
    cp.divide(rms, root, out=rms)
    cp.maximum(rms, eps2, out=rms)
    cp.multiply(rms, rho, out=rms)                            # alpha
    ratio = cp.sqrt(usq).astype(dtype).astype(np.float64)
    cp.divide(ratio, root * d, out=ratio)
    cp.maximum(ratio, 1.0, out=ratio)
    cp.divide(rms, ratio, out=rms)
    if not maximize:
        cp.multiply(rms, -1.0, out=rms)
    return rms.astype(dtype).reshape(())


def check(param, grad, row_var, col_var, variance, names):
    """TypeError/ValueError unless the arrays of one CuPy step fit together (the checks of
    ``fastopt._adafactor.check``): CuPy float32/float64 C-contiguous arrays on the
    parameter's device, the gradient like the parameter, the state of torch's shapes
    (`names`: the parameter's, the gradient's and the state's labels)."""
    cp = _cupy()
    pname, gname, sname = names
    from ._adafactor import state_shapes
    if not isinstance(param, cp.ndarray) or param.dtype not in (np.float32, np.float64):
        raise TypeError(f"{pname} must be a float32 or float64 cupy.ndarray")
    given = {"row_var": row_var, "col_var": col_var, "variance": variance}
    for label, a in [(gname, grad)] + [(f"{sname}{'[' + repr(k) + ']' if sname else k}", v)
                                       for k, v in given.items()]:
        if a is None:
            continue
        check_device_array(a, label, param, pname)
        if a.dtype != param.dtype:
            raise TypeError(f"{label} must have dtype {param.dtype} like {pname}, got {a.dtype}")
        if not a.flags.c_contiguous:
            raise ValueError(f"{label} must be C-contiguous")
    if grad is None or grad.shape != param.shape:
        raise ValueError(f"{gname} must have shape {param.shape} like {pname}, got "
                         f"{None if grad is None else grad.shape}")
    for k, shape in state_shapes(param.shape).items():
        a = given[k]
        if a is None or a.shape != shape:
            raise ValueError(f"{sname or k} must hold {k} of shape {shape} for {pname} of "
                             f"shape {param.shape}, got {None if a is None else a.shape}")
