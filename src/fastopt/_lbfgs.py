"""L-BFGS's flat-vector machinery, shared by `fastopt.optim.LBFGS` and `fastopt.torch.LBFGS`:
the history in ring buffers, the two-loop recursion, torch's strong-Wolfe line search, and one
`step` (torch.optim.LBFGS.step, line for line) over a parameter vector the caller reaches
through three callbacks.

Design note
-----------
The history is one preallocated buffer of shape ``(history_size + 1, 2, n)`` in the
parameters' dtype: slot k holds ``s_k`` (torch's ``old_stps``) in row 0 and ``y_k``
(``old_dirs``) in row 1, used as a ring with one spare slot, into which each iteration writes
its new pair directly (the oldest pair's slot becomes the spare when the history is full), so
storing a pair copies nothing. The two-loop recursion runs in C over the ring (csrc/lbfgs.c:
torch's arithmetic, each dot product fused into the pass before it, 2k + 2 passes over n).
The rest of an iteration is four more passes on the CPU, each one C loop: the new pair with
its two dot products and g_prev = g, g . d with max |d|, the move (the parameters saved, then
p += t d) and max |g| after the closure; once the history outgrows the caches every n-vector
comes from memory after the recursion, and torch's dozen separate passes there cost about a
sixth of the recursion. Nothing of size n is allocated during a step: every n-vector is a
preallocated buffer (the flat gradient, the previous one, d, a temporary, the line search's
bracket gradients and the point it starts from).

Why not the "vector-free" form (the recursion on the Gram matrices S^T Y, Y^T Y and S^T g,
Y^T g, which reads the history only twice per iteration): it computes s_i . q as
s_i . g - sum_j al_j s_i . y_j, whose rounding error scales with |s_i| |g| rather than
|s_i| |q|; on ill-conditioned problems, where q shrinks by orders of magnitude in the first
loop, its iterates drifted from torch's 100x further than torch's own drift from a start 1 ulp
away (torch's optim_db problem, float64), while the two-loop form stays within it.

The scalars (t, gtd, ys, H_diag, ro, al, losses) are Python floats (float64) whatever the
parameters' dtype; torch keeps them as 0-d tensors of the parameters' dtype, so float32 runs
agree with torch to float32 rounding, float64 runs to float64 rounding.

CuPy: the same buffers are CuPy arrays (``xp``, the array module, is ``cupy``) and every
vector operation is the same call on that module; the two-loop recursion runs as CuPy dot
products and axpys (fastopt._lbfgs_cupy), the al_i and be_i kept on the device (one host sync
per recursion, for the state's ``al``). The line search and the stopping tests read their
scalars on the host, as torch's ``.item()``-like comparisons do.
"""
import math

import numpy as np

from . import _lbfgs_loops as _loops

__all__ = ["History", "Workspace", "cubic_interpolate", "strong_wolfe", "lbfgs_step", "amax"]


def amax(v):
    """max |v_i| without a temporary (NaN if any element is NaN; 0.0 for an empty vector)."""
    if v.size == 0:
        return 0.0
    hi, lo = float(v.max()), float(v.min())
    if hi != hi:
        return hi
    return hi if hi >= -lo else -lo


def _div(a, b):
    """a / b with IEEE semantics (torch's 0-d tensors divide by zero without raising)."""
    try:
        return a / b
    except ZeroDivisionError:
        if a == 0 or a != a:
            return math.nan
        return math.copysign(math.inf, a) * math.copysign(1.0, b)


class History:
    """The (s, y) pairs in a ring buffer and their curvatures ro = 1 / (y . s). `xp`: the
    array module of the buffer (numpy or cupy); ro, al and the slot table stay on the host.

    The buffer has one slot more than `size`, the spare: an iteration writes its new pair
    there (``spare()``) and ``commit`` makes it the newest, the slot of the oldest becoming the
    spare when the history is full, so storing a pair copies nothing. ``ring[:count]`` are the
    slots of the pairs, oldest first; ``ring[count]`` is the spare."""

    def __init__(self, size, n, dtype, xp=np):
        self.size, self.n, self.xp = size, n, xp
        self.buf = xp.zeros((size + 1, 2, n), dtype=dtype)
        self.ro = np.zeros(size + 1)
        self.al = np.zeros(size)
        self.ring = np.arange(size + 1, dtype=np.int64)
        self.count = 0
        self.threads = 1            # of the CPU recursion (LBFGS(threads=...))
        self.ran_on = 1             # the threads the last CPU recursion ran on

    def order(self):
        """The slots from the oldest pair to the newest."""
        return self.ring[:self.count].tolist()

    def clear(self):
        self.count = 0

    def spare(self):
        """(s, y): the spare slot's two vectors, where the next pair is written."""
        k = int(self.ring[self.count])
        return self.buf[k, 0], self.buf[k, 1]

    def commit(self, ys):
        """The pair written into the spare slot becomes the newest (the oldest is dropped when
        the history is full); ro = 1 / ys."""
        k = int(self.ring[self.count])
        self.ro[k] = 1.0 / ys
        if self.count < self.size:
            self.count += 1
        else:
            oldest = int(self.ring[0])
            self.ring[:-1] = self.ring[1:].copy()
            self.ring[-1] = oldest

    def direction(self, g, h_diag, d, al_out, tmp=None):
        """d = -H g by the two-loop recursion (csrc/lbfgs.c; CuPy: fastopt._lbfgs_cupy, with
        `tmp` an n-vector of scratch); al_out[i] = al_i (by age)."""
        k = self.count
        slots = self.ring[:k]
        if self.xp is np:
            self.ran_on = _loops.two_loop(self.buf, slots, self.ro, g, d, h_diag, self.al,
                                          self.threads)
        else:
            from . import _lbfgs_cupy
            _lbfgs_cupy.two_loop(self.xp, self.buf, slots, self.ro, g, d, h_diag, self.al, tmp)
        al_out[:k] = self.al[:k].tolist()

    def resized(self, size):
        """A history of another size holding the newest min(count, size) pairs."""
        other = History(size, self.n, self.buf.dtype, self.xp)
        other.threads = self.threads
        keep = self.order()[max(0, self.count - size):]
        for i, k in enumerate(keep):
            self.xp.copyto(other.buf[i], self.buf[k])
            other.ro[i] = self.ro[k]
        other.count = len(keep)
        return other

    def load(self, dirs, stps, ro):
        """Fill from torch's lists (oldest first): old_dirs (y), old_stps (s), ro; host
        (NumPy) vectors, copied to the device for a CuPy history."""
        self.ring[:] = np.arange(self.size + 1)
        self.count = len(dirs)
        for i in range(len(dirs)):
            self.xp.copyto(self.buf[i, 0], self.xp.asarray(stps[i]))
            self.xp.copyto(self.buf[i, 1], self.xp.asarray(dirs[i]))
            self.ro[i] = ro[i]


class Workspace:
    """Every n-vector a step needs, allocated once (NumPy or CuPy: `xp`)."""

    def __init__(self, n, dtype, xp=np):
        self.n, self.dtype, self.xp = n, np.dtype(dtype), xp
        v = xp.zeros((9, n), dtype=dtype)
        self.flat_grad = v[0]      # the gradient at the current point
        self.prev_flat_grad = v[1]
        self.d = v[2]
        self.tmp = v[3]            # a temporary
        self.x = v[4]              # the point a line search starts from / before a move
        self.g_new = v[5]
        self.g_prev = v[6]
        self.bracket = v[7:9]


def cubic_interpolate(x1, f1, g1, x2, f2, g2, bounds=None):
    """torch.optim.lbfgs._cubic_interpolate (minimizer of the cubic through two points with
    values and slopes, clipped to `bounds`)."""
    if bounds is not None:
        xmin_bound, xmax_bound = bounds
    else:
        xmin_bound, xmax_bound = (x1, x2) if x1 <= x2 else (x2, x1)
    d1 = g1 + g2 - _div(3 * (f1 - f2), x1 - x2)
    d2_square = d1 ** 2 - g1 * g2
    if d2_square >= 0:
        d2 = math.sqrt(d2_square)
        if x1 <= x2:
            min_pos = x2 - (x2 - x1) * _div(g2 + d2 - d1, g2 - g1 + 2 * d2)
        else:
            min_pos = x1 - (x1 - x2) * _div(g1 + d2 - d1, g1 - g2 + 2 * d2)
        return min(max(min_pos, xmin_bound), xmax_bound)
    return (xmin_bound + xmax_bound) / 2.0


def strong_wolfe(obj_func, t, d, f, g, gtd, ws, c1=1e-4, c2=0.9, tolerance_change=1e-9,
                 max_ls=25, d_norm=None):
    """torch.optim.lbfgs._strong_wolfe on preallocated buffers. obj_func(t, out) evaluates
    the loss at x + t d with its gradient written into `out`. Returns (f_new, t, evals); the
    gradient at the returned point is in ``ws.flat_grad`` (g, which the search only reads
    until then)."""
    xp = ws.xp
    if d_norm is None:
        d_norm = amax(d)
    g_new, g_prev_buf, B = ws.g_new, ws.g_prev, ws.bracket
    f_new = obj_func(t, g_new)
    ls_func_evals = 1
    gtd_new = float(xp.dot(g_new, d))
    t_prev, f_prev, gtd_prev = 0, f, gtd
    g_prev = g                       # the buffer holding g_prev: g itself or g_prev_buf
    done = False
    ls_iter = 0
    bracket = bracket_f = bracket_gtd = None
    while ls_iter < max_ls:
        if f_new > (f + c1 * t * gtd) or (ls_iter > 1 and f_new >= f_prev):
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            xp.copyto(B[0], g_prev)
            xp.copyto(B[1], g_new)
            break
        if abs(gtd_new) <= -c2 * gtd:
            bracket, bracket_f = [t], [f_new]
            xp.copyto(B[0], g_new)
            done = True
            break
        if gtd_new >= 0:
            bracket, bracket_f, bracket_gtd = [t_prev, t], [f_prev, f_new], [gtd_prev, gtd_new]
            xp.copyto(B[0], g_prev)
            xp.copyto(B[1], g_new)
            break
        min_step = t + 0.01 * (t - t_prev)
        max_step = t * 10
        tmp = t
        t = cubic_interpolate(t_prev, f_prev, gtd_prev, t, f_new, gtd_new,
                              bounds=(min_step, max_step))
        t_prev = tmp
        f_prev = f_new
        xp.copyto(g_prev_buf, g_new)
        g_prev = g_prev_buf
        gtd_prev = gtd_new
        f_new = obj_func(t, g_new)
        ls_func_evals += 1
        gtd_new = float(xp.dot(g_new, d))
        ls_iter += 1
    if ls_iter == max_ls:
        bracket, bracket_f = [0, t], [f, f_new]
        xp.copyto(B[0], g)
        xp.copyto(B[1], g_new)
        # torch's bracket_gtd is left from the bracketing loop here (or unbound, when the
        # loop never ran: max_ls <= 0); the zoom loop below does not run either way

    insuf_progress = False
    low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[-1] else (1, 0)
    while not done and ls_iter < max_ls:
        if abs(bracket[1] - bracket[0]) * d_norm < tolerance_change:
            break
        t = cubic_interpolate(bracket[0], bracket_f[0], bracket_gtd[0],
                              bracket[1], bracket_f[1], bracket_gtd[1])
        eps = 0.1 * (max(bracket) - min(bracket))
        if min(max(bracket) - t, t - min(bracket)) < eps:
            if insuf_progress or t >= max(bracket) or t <= min(bracket):
                if abs(t - max(bracket)) < abs(t - min(bracket)):
                    t = max(bracket) - eps
                else:
                    t = min(bracket) + eps
                insuf_progress = False
            else:
                insuf_progress = True
        else:
            insuf_progress = False
        f_new = obj_func(t, g_new)
        ls_func_evals += 1
        gtd_new = float(xp.dot(g_new, d))
        ls_iter += 1
        if f_new > (f + c1 * t * gtd) or f_new >= bracket_f[low_pos]:
            bracket[high_pos] = t
            bracket_f[high_pos] = f_new
            xp.copyto(B[high_pos], g_new)
            bracket_gtd[high_pos] = gtd_new
            low_pos, high_pos = (0, 1) if bracket_f[0] <= bracket_f[1] else (1, 0)
        else:
            if abs(gtd_new) <= -c2 * gtd:
                done = True
            elif gtd_new * (bracket[high_pos] - bracket[low_pos]) >= 0:
                bracket[high_pos] = bracket[low_pos]
                bracket_f[high_pos] = bracket_f[low_pos]
                xp.copyto(B[high_pos], B[low_pos])
                bracket_gtd[high_pos] = bracket_gtd[low_pos]
            bracket[low_pos] = t
            bracket_f[low_pos] = f_new
            xp.copyto(B[low_pos], g_new)
            bracket_gtd[low_pos] = gtd_new
    t = bracket[low_pos]
    f_new = bracket_f[low_pos]
    xp.copyto(ws.flat_grad, B[low_pos])
    return f_new, t, ls_func_evals


class Params:
    """The parameters as flat views, moved along a direction without temporaries."""

    def __init__(self, views, ws):
        self.views = views                    # 1-d views of the parameter arrays
        self.ws = ws
        self.slices = []
        start = 0
        for v in views:
            self.slices.append(slice(start, start + v.size))
            start += v.size
        self._fused = ws.xp is np and all(v.flags.c_contiguous for v in views)

    def add(self, t, d, saved=None, threads=1):
        """params += t * d (torch's _add_grad: an add with alpha, one fma per element on the
        CPU, on up to `threads` threads), after copying the parameters into `saved` when it is
        given."""
        if self._fused:
            for v, sl in zip(self.views, self.slices):
                _loops.move(v, d[sl], t, None if saved is None else saved[sl], threads)
            return
        if saved is not None:
            self.save(saved)
        tmp = self.ws.tmp
        self.ws.xp.multiply(d, t, out=tmp)
        for v, sl in zip(self.views, self.slices):
            v += tmp[sl]

    def save(self, out):
        for v, sl in zip(self.views, self.slices):
            out[sl] = v

    def restore(self, src):
        for v, sl in zip(self.views, self.slices):
            v[...] = src[sl]


def new_pair(hist, ws, t):
    """The iteration's pair, written into the history's spare slot: y = g - g_prev, s = t d,
    then g_prev = g; returns (y . s, y . y). One pass on the CPU (csrc/lbfgs.c)."""
    xp, g, pg, d = ws.xp, ws.flat_grad, ws.prev_flat_grad, ws.d
    s, y = hist.spare()
    if xp is np:
        return _loops.pair(g, pg, d, t, s, y, hist.threads)
    xp.subtract(g, pg, out=y)
    xp.multiply(d, t, out=s)
    xp.copyto(pg, g)
    return float(xp.dot(y, s)), float(xp.dot(y, y))


def slope(ws, threads):
    """(g . d, max |d|) for the iteration's direction; one pass on the CPU."""
    xp, g, d = ws.xp, ws.flat_grad, ws.d
    if xp is np:
        return _loops.slope(g, d, threads)
    return float(xp.dot(g, d)), amax(d)


def amax_of(v, threads):
    """max |v_i| (NaN if any is NaN): one pass on the CPU, `amax` on CuPy."""
    if isinstance(v, np.ndarray):
        return _loops.amax(v, threads)
    return amax(v)


def lbfgs_step(state, hist, ws, params, evaluate, hyper, lr):
    """torch.optim.LBFGS.step on flat buffers.

    `state`: the optimizer's state dict (torch's keys; scalars are written back at the end,
    also when the closure raises), `hist`: a History, `ws`: a Workspace, `params`: a Params,
    `evaluate(out)`: the closure's loss at the current parameters (float) with the gradient
    written into `out`. Returns the first loss. If an evaluation after the first raises, the
    parameters go back to where the iteration started and the state to the end of the last
    completed iteration (``n_iter`` does not count the failed one, so a failure in the first
    iteration ever leaves a state whose next step starts afresh, with torch's first-iteration
    step size; a later one is redone by the next step: its pair repeats with y = 0 and is
    skipped), then the error propagates.
    """
    max_iter = hyper["max_iter"]
    max_eval = hyper["max_eval"]
    tolerance_grad = hyper["tolerance_grad"]
    tolerance_change = hyper["tolerance_change"]
    line_search_fn = hyper["line_search_fn"]

    # torch compares its 0-d tensors with these in the parameters' dtype
    as_dtype = ws.dtype.type
    tol_grad_t = float(as_dtype(tolerance_grad))
    tol_change_t = float(as_dtype(tolerance_change))
    curvature_t = float(as_dtype(1e-10))
    xp = ws.xp
    flat_grad = ws.flat_grad
    orig_loss = evaluate(flat_grad)           # first: nothing has been written yet
    state.setdefault("func_evals", 0)
    state.setdefault("n_iter", 0)
    loss = orig_loss
    current_evals = 1
    state["func_evals"] += 1
    threads = hist.threads
    opt_cond = amax_of(flat_grad, threads) <= tol_grad_t
    if opt_cond:
        return orig_loss

    d = ws.d
    t = state.get("t")
    h_diag = state.get("H_diag", 1.0)
    prev_loss = state.get("prev_loss")
    have_prev = state.get("prev_flat_grad") is not None
    n_iter = 0
    moved = False
    counted = False         # state["n_iter"] counts an iteration that has not completed
    try:
        while n_iter < max_iter:
            n_iter += 1
            state["n_iter"] += 1
            counted = True
            if state["n_iter"] == 1:
                xp.negative(flat_grad, out=d)
                xp.copyto(ws.prev_flat_grad, flat_grad)
                hist.clear()
                h_diag = 1.0
            else:
                ys, yy = new_pair(hist, ws, t)       # g_prev = g from here on
                if ys > curvature_t:
                    hist.commit(ys)
                    h_diag = ys / yy if yy != 0 else _div(ys, yy)
                al = state.setdefault("al", [None] * hist.size)
                if hist.count == 0:
                    xp.multiply(flat_grad, -h_diag, out=d)
                else:
                    hist.direction(flat_grad, h_diag, d, al, ws.tmp)
            have_prev = True
            prev_loss = loss
            if state["n_iter"] == 1:
                abs_sum = float(xp.abs(flat_grad, out=ws.tmp).sum())
                t = min(1.0, _div(1.0, abs_sum)) * lr
            else:
                t = lr
            gtd, d_max = slope(ws, threads)
            if gtd > -tol_change_t:
                break
            ls_func_evals = 0
            if line_search_fn is not None:
                params.save(ws.x)
                moved = True

                def obj_func(step, out):
                    params.add(step, d, threads=threads)
                    try:
                        return evaluate(out)
                    finally:
                        params.restore(ws.x)

                loss, t, ls_func_evals = strong_wolfe(obj_func, t, d, loss, flat_grad, gtd,
                                                      ws, max_ls=max_eval - current_evals,
                                                      d_norm=d_max)
                params.add(t, d, threads=threads)
                opt_cond = amax_of(flat_grad, threads) <= tol_grad_t
            else:
                params.add(t, d, saved=ws.x, threads=threads)
                moved = True
                if n_iter != max_iter:
                    loss = evaluate(flat_grad)
                    opt_cond = amax_of(flat_grad, threads) <= tol_grad_t
                    ls_func_evals = 1
            moved = counted = False
            current_evals += ls_func_evals
            state["func_evals"] += ls_func_evals
            if n_iter == max_iter:
                break
            if current_evals >= max_eval:
                break
            if opt_cond:
                break
            if float(as_dtype(d_max * abs(t))) <= tol_change_t:
                break
            if abs(loss - prev_loss) < tolerance_change:
                break
    except BaseException:
        if moved:
            params.restore(ws.x)
        if counted:         # the failed iteration is not counted: the next step redoes it
            state["n_iter"] -= 1
        raise
    finally:
        state["t"] = t
        state["H_diag"] = h_diag
        state["prev_loss"] = prev_loss
        state["d"] = d if state["n_iter"] else None
        state["prev_flat_grad"] = ws.prev_flat_grad if have_prev else None
    return orig_loss
