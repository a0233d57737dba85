"""L-BFGS with torch.optim.LBFGS's keywords, iterations, line search and state layout."""
import contextlib
import numbers

import numpy as np

from .. import _kernels, _lbfgs
from .._validate import integer, learning_rate, nonneg, real, whole
from ._grouped import GroupedOptimizer

__all__ = ["LBFGS"]

_KEYS = ("func_evals", "n_iter", "d", "t", "old_dirs", "old_stps", "ro", "H_diag",
         "prev_flat_grad", "prev_loss", "al")


def _on_device(a):
    """Whether `a` is a CuPy array (without importing fastopt.cuda or CuPy)."""
    return type(a).__module__.startswith("cupy")


def _cuda():
    from .. import cuda
    return cuda


def _line_search_fn(name, value):
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be None or 'strong_wolfe', got {type(value).__name__}")
    if value not in (None, "strong_wolfe"):
        raise ValueError(f"{name} must be None or 'strong_wolfe' (only 'strong_wolfe' is "
                         f"supported), got {value!r}")
    return value


def _max_eval(name, value):
    return None if value is None else integer(f"{name} (None or a count)", value, low=1)


def _count(name, value):
    return integer(name, value, low=1)


def _optional_real(name, value):
    return None if value is None else float(real(name, value))


def _loss_value(value):
    """The closure's loss as a float: a real number or a one-element array, NumPy or CuPy
    (NaN and inf are passed on, as torch does)."""
    if (isinstance(value, np.ndarray) or _on_device(value)) and value.size == 1 \
            and np.dtype(value.dtype).kind in "fiu":
        return float(value.reshape(()))
    if isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_)):
        return float(value)
    raise TypeError("closure() must return (loss, grads) with loss a real number, got loss of "
                    f"type {type(value).__name__}")


class LBFGS(GroupedOptimizer):
    r"""L-BFGS (torch.optim.LBFGS, after minFunc): quasi-Newton steps from a short history.

    ``step(closure)`` runs up to ``max_iter`` iterations; ``closure()`` evaluates the loss at
    the current parameters and returns ``(loss, grads)`` (a number and a list of arrays like
    the parameters). With all parameters as one vector :math:`x`, gradient :math:`g_k`,
    learning rate :math:`\gamma` (``lr``) and the last m = ``history_size`` pairs
    :math:`s_i = x_{i+1} - x_i`, :math:`y_i = g_{i+1} - g_i` with :math:`y_i^\top s_i >
    10^{-10}` (:math:`\rho_i = 1/y_i^\top s_i`), an iteration does

    .. math::
        q &= -g_k,\quad \alpha_i = \rho_i s_i^\top q,\ q \leftarrow q - \alpha_i y_i
             \quad (i = k-1, \dots, k-m) \\
        r &= H_0 q,\quad H_0 = \frac{s_{k-1}^\top y_{k-1}}{y_{k-1}^\top y_{k-1}},\quad
             \beta_i = \rho_i y_i^\top r,\ r \leftarrow r + (\alpha_i - \beta_i) s_i
             \quad (i = k-m, \dots, k-1) \\
        d_k &= r,\qquad x_{k+1} = x_k + t_k d_k

    (:math:`d_0 = -g_0`), with :math:`t_k = \gamma` (the first iteration ever:
    :math:`\min(1, 1/\lVert g_0 \rVert_1)\,\gamma`), or with ``line_search_fn="strong_wolfe"``
    the step length of torch's strong-Wolfe search (bracketing, then cubic-interpolation zoom;
    :math:`c_1 = 10^{-4}, c_2 = 0.9`) started at that :math:`t_k`. A step stops after
    ``max_iter`` iterations or ``max_eval`` closure calls, when :math:`\max_i |g_i| \le`
    ``tolerance_grad``, when :math:`g^\top d > -` ``tolerance_change``, or when the move
    :math:`\max_i |t_k d_i|` or the loss change falls below ``tolerance_change``. Without line
    search the last iteration's point is not evaluated (as torch). Returns the loss of the
    first evaluation.

    The iterates are torch's to rounding. The two-loop recursion runs in C (each dot product
    fused into the pass before it, ``fastopt._lbfgs``): the history lives in a preallocated
    ``(history_size + 1, 2, n)`` ring buffer (a spare slot takes each new pair in place), read
    twice per iteration; the rest of an iteration is four C passes (the new pair, g.d with
    max |d|, the move, max |g|); a step allocates nothing proportional to the number of
    parameters. On CuPy arrays (parameters, the closure's gradients and the history on one
    GPU) the same iterations run as CuPy operations (``fastopt._lbfgs_cupy``: cuBLAS dot
    products, the recursion's scalars kept on the device); the closure's loss may be a float or
    a one-element CuPy array.

    ``threads`` (keyword-only, default 1): the threads of the two-loop recursion on the CPU
    (serial for vectors below the update loops' parallel threshold; the direction is the
    same bits on any number). Raise it only where the closure leaves the cores idle: NumPy's
    OpenBLAS threads keep spinning for a while after a BLAS call returns, and a recursion on
    several threads, which meets at a barrier once per pass over a history vector, then
    waits for them (2 cores, N=1e5 float64, history 100: 17-20 ms per iteration on 2
    threads with OpenBLAS limited to one thread by threadpoolctl or
    ``OPENBLAS_NUM_THREADS=1``, 31-35 ms on one, 59-88 ms on 2 threads after a closure whose
    BLAS calls ran on 2).

    Defaults: ``lr=1, max_iter=20, max_eval=max_iter * 5 // 4, tolerance_grad=1e-7,
    tolerance_change=1e-9, history_size=100, line_search_fn=None``. One param group; the
    parameters (float32 or float64, all of one dtype) are treated as one vector. ``lr`` may
    be a schedule of the number of ``step`` calls. State, as torch keeps it under the first
    parameter (``state[0]``): ``func_evals``, ``n_iter``, ``d``, ``t``, ``old_dirs`` (the
    y's, oldest first), ``old_stps`` (the s's), ``ro``, ``H_diag``, ``prev_flat_grad``,
    ``prev_loss``, ``al``, plus ``step`` (calls of ``step``); vectors are flat, of the total
    parameter count. Reference: J. Nocedal, "Updating quasi-Newton matrices with limited
    storage", Math. Comp. 35 (1980); D. C. Liu and J. Nocedal (1989); Nocedal & Wright,
    *Numerical Optimization*, Algorithm 7.4.

    >>> import numpy as np
    >>> from fastopt.optim import LBFGS
    >>> A = np.array([[3.0, 1.0], [1.0, 2.0]]); b = np.array([1.0, -1.0])
    >>> w = np.zeros(2)
    >>> opt = LBFGS([w], line_search_fn="strong_wolfe")
    >>> loss = opt.step(lambda: (0.5 * w @ A @ w - b @ w, [A @ w - b]))
    >>> bool(np.allclose(A @ w, b))
    True
    """

    DEFAULTS = dict(lr=1.0, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                    tolerance_change=1e-9, history_size=100, line_search_fn=None)
    RULES = dict(lr=learning_rate, max_iter=_count, max_eval=_max_eval,
                 tolerance_grad=nonneg, tolerance_change=nonneg, history_size=_count,
                 line_search_fn=_line_search_fn)

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, *, threads=1):
        self.threads = integer("threads", threads, low=1, high=1 << 16)
        if max_eval is None and isinstance(max_iter, numbers.Integral) \
                and not isinstance(max_iter, (bool, np.bool_)):
            max_eval = int(max_iter) * 5 // 4
        self._ws = self._hist = self._flat = None
        super().__init__(params, lr=lr, max_iter=max_iter, max_eval=max_eval,
                         tolerance_grad=tolerance_grad, tolerance_change=tolerance_change,
                         history_size=history_size, line_search_fn=line_search_fn)

    def add_param_group(self, param_group):
        if self.param_groups:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        params = param_group.get("params") if isinstance(param_group, dict) else None
        if isinstance(params, (list, tuple)) and len(params) > 1:
            dtypes = {getattr(p, "dtype", None) for p in params}
            if len(dtypes) > 1:
                raise ValueError("params must all have one dtype (LBFGS treats them as one "
                                 f"vector), got {sorted(str(d) for d in dtypes)}")
        super().add_param_group(param_group)

    def _plan_for(self, params, offset):
        kinds = {_on_device(p) for p in params}
        if len(kinds) > 1:
            raise TypeError("LBFGS takes parameters that are all numpy.ndarray or all "
                            "cupy.ndarray (one vector in one memory), got both")
        if params and _on_device(params[0]):
            cuda = _cuda()
            return cuda, cuda.Plan(params, "params", offset)
        return super()._plan_for(params, offset)

    @property
    def _xp(self):
        """The array module of the parameters: numpy, or cupy."""
        return np if self._records[0].mod is _kernels else _cuda().require_cupy()

    # -------------------------------------------------------------------------- buffers
    @property
    def numel(self):
        """The number of parameters (the length of the flat vectors)."""
        return sum(p.size for p in self._all_params())

    def _buffers(self, history_size, history=None):
        """The workspace and history, made on first use (and the history remade when
        `history_size` changed); `history`: a History of that size made already (a load's)."""
        params = self._all_params()
        with self._on_device():
            if self._ws is None:
                n, dtype, xp = self.numel, params[0].dtype, self._xp
                self._ws = _lbfgs.Workspace(n, dtype, xp)
                self._hist = history if history is not None else \
                    _lbfgs.History(history_size, n, dtype, xp)
                self._flat = _lbfgs.Params([p.reshape(-1) for p in params], self._ws)
            elif history is not None:
                self._hist = history
            elif self._hist.size != history_size:
                self._hist = self._hist.resized(history_size)
            self._hist.threads = self.threads
            al = self.state.get(0, {}).get("al")
            if al is not None:
                self.state[0]["al"] = (al + [None] * history_size)[:history_size]
        return self._ws, self._hist, self._flat

    def _on_device(self):
        """A context on the parameters' GPU (CuPy), or one that does nothing (NumPy)."""
        if self._xp is np:
            return contextlib.nullcontext()
        return self._xp.cuda.Device(self._all_params()[0].device.id)

    # ------------------------------------------------------------------------------ step
    def step(self, closure):
        """Up to ``max_iter`` L-BFGS iterations (class docstring); returns the first loss.

        `closure()` returns ``(loss, grads)`` at the current parameters. A bad first return
        (not a pair, a loss that is not a number, gradients unlike the parameters) raises
        TypeError/ValueError with nothing changed; if a later call raises, the parameters go
        back to where that iteration started, the state to the end of the last completed
        iteration (``n_iter`` does not count the failed one, so the next step redoes it, or
        starts afresh when it was the first), and the error propagates.
        """
        if not callable(closure):
            raise TypeError("closure must be a callable returning (loss, grads), got "
                            f"{type(closure).__name__}")
        with self._lock:
            ((hyper, lr),) = self._snapshots()
            hyper = dict(hyper)
            if hyper["max_eval"] is None:
                hyper["max_eval"] = hyper["max_iter"] * 5 // 4
            ws, hist, flat = self._buffers(hyper["history_size"])
            rec = self._records[0]
            state = self.state.setdefault(0, {})

            def evaluate(out):
                result = closure()
                if not isinstance(result, (tuple, list)) or len(result) != 2:
                    raise TypeError("closure() must return (loss, grads), got "
                                    f"{type(result).__name__}")
                loss = _loss_value(result[0])
                grads = self._check_like_params(result[1], "closure()'s grads")
                for g, sl in zip(grads, flat.slices):
                    out[sl] = g.reshape(-1)
                return loss

            fresh = not state
            try:
                with self._on_device():
                    loss = _lbfgs.lbfgs_step(state, hist, ws, flat, evaluate, hyper, lr)
            except BaseException:
                if fresh and not state:
                    self.state.pop(0, None)
                raise
            finally:
                self._expose(state, hist)
            rec.step += 1
            state["step"] = float(rec.step)
            return loss

    def _expose(self, state, hist):
        """torch's history lists in `state`: views of the ring buffer, oldest first."""
        if "d" not in state:
            return
        order = hist.order()
        state["old_stps"] = [hist.buf[k, 0] for k in order]
        state["old_dirs"] = [hist.buf[k, 1] for k in order]
        state["ro"] = [float(hist.ro[k]) for k in order]

    # ------------------------------------------------------------------------ state dict
    def state_dict(self):
        """torch's layout: ``{'state': {0: {func_evals, n_iter, d, t, old_dirs, old_stps,
        ro, H_diag, prev_flat_grad, prev_loss, al, step}}, 'param_groups': [...]}``, with
        copies of the vectors (flat, of the total parameter count)."""
        sd = super().state_dict()
        entry = self.state.get(0)
        if entry:
            out = {}
            is_array = lambda v: isinstance(v, np.ndarray) or _on_device(v)
            with self._on_device():           # CuPy: copies on the parameters' GPU
                for key, value in entry.items():
                    if is_array(value):
                        out[key] = value.copy()
                    elif isinstance(value, list):
                        out[key] = [v.copy() if is_array(v) else v for v in value]
                    else:
                        out[key] = value
            sd["state"] = {0: out}
        else:
            sd["state"] = {}
        return sd

    def _plan_state(self, gi, ids, hyper, entries):
        """Check saved state (ours or torch's, tensors converted to arrays): an entry for the
        first parameter only, with torch's keys (and optionally 'step')."""
        for i, e in zip(ids[1:], entries[1:]):
            if e:
                raise ValueError(f"state[{i}]: LBFGS keeps its state under the first "
                                 "parameter only")
        entry = entries[0] if entries else None
        if not entry:
            return 0, None
        if not isinstance(entry, dict):
            raise ValueError(f"state[{ids[0]}] must be a dict")
        unknown = set(entry) - set(_KEYS) - {"step"}
        if unknown:
            raise ValueError(f"state[{ids[0]}] has unknown entries {sorted(unknown)}; LBFGS "
                             f"keeps {list(_KEYS) + ['step']}")
        n, dtype = self.numel, self._all_params()[0].dtype
        where = f"state[{ids[0]}]"

        def vector(key, v):
            if getattr(v, "shape", None) is None or tuple(v.shape) != (n,):
                raise ValueError(f"{where}[{key!r}] must be a vector of {n} elements (the "
                                 f"parameter count), got shape {getattr(v, 'shape', None)}")
            if np.dtype(v.dtype).kind != "f":
                raise TypeError(f"{where}[{key!r}] must be a floating array, got dtype "
                                f"{v.dtype}")
            return np.asarray(v.get() if _on_device(v) else v).astype(dtype)

        out = {}
        step = whole(f"{where}['step']", entry.get("step", 0))
        for key in ("func_evals", "n_iter"):
            out[key] = whole(f"{where}[{key!r}]", entry.get(key, 0))
        for key in ("t", "H_diag", "prev_loss"):
            out[key] = _optional_real(f"{where}[{key!r}]", entry.get(key))
        for key in ("d", "prev_flat_grad"):
            v = entry.get(key)
            out[key] = None if v is None else vector(key, v)
        lists = {}
        for key in ("old_dirs", "old_stps", "ro", "al"):
            v = entry.get(key, [])
            if v is None:
                v = []
            if not isinstance(v, (list, tuple)):
                raise TypeError(f"{where}[{key!r}] must be a list, got {type(v).__name__}")
            lists[key] = list(v)
        if not len(lists["old_dirs"]) == len(lists["old_stps"]) == len(lists["ro"]):
            raise ValueError(f"{where}: old_dirs, old_stps and ro must have one entry per "
                             f"stored pair, got {len(lists['old_dirs'])}, "
                             f"{len(lists['old_stps'])} and {len(lists['ro'])}")
        out["old_dirs"] = [vector("old_dirs", v) for v in lists["old_dirs"]]
        out["old_stps"] = [vector("old_stps", v) for v in lists["old_stps"]]
        out["ro"] = [float(real(f"{where}['ro'][{i}]", v)) for i, v in enumerate(lists["ro"])]
        out["al"] = [None if v is None else float(real(f"{where}['al'][{i}]", v))
                     for i, v in enumerate(lists["al"])]
        if out["n_iter"] > 0 and (out["d"] is None or out["t"] is None
                                  or out["prev_flat_grad"] is None):
            raise ValueError(f"{where}: n_iter > 0 needs 'd', 't' and 'prev_flat_grad'")
        present = {k for k in _KEYS if k in entry}
        # the history of the loaded size, made now: a size that cannot be allocated is refused
        # before anything changes (the ring buffers hold history_size + 1 pairs)
        size = hyper["history_size"]
        out["history"] = None
        try:
            if self._hist is None or self._hist.size != size:
                with self._on_device():
                    out["history"] = _lbfgs.History(size, n, dtype, self._xp)
            if "al" in present:
                out["al"] = (out["al"] + [None] * size)[:size]
        except (MemoryError, ValueError, OverflowError) as e:
            raise ValueError(f"{where}: history_size={size} needs ring buffers of {size + 1} "
                             f"pairs of {n}-element vectors, which cannot be allocated "
                             f"({type(e).__name__})") from None
        return step, (out, present)

    def _load_state(self, rec, group, planned):
        self.state.clear()
        if planned is None:
            return
        out, present = planned
        size = group["history_size"]
        ws, hist, _ = self._buffers(size, out["history"])
        m = len(out["old_dirs"])
        keep = slice(max(0, m - size), m)
        with self._on_device():
            hist.load(out["old_dirs"][keep], out["old_stps"][keep], out["ro"][keep])
        state = {}
        for key in ("func_evals", "n_iter"):
            if key in present:
                state[key] = out[key]
        if "d" in present:
            for key, buf in (("d", ws.d), ("prev_flat_grad", ws.prev_flat_grad)):
                if out[key] is not None:
                    with self._on_device():
                        ws.xp.copyto(buf, ws.xp.asarray(out[key]))
                state[key] = None if out[key] is None else buf
            state["t"], state["H_diag"], state["prev_loss"] = \
                out["t"], out["H_diag"] if out["H_diag"] is not None else 1.0, out["prev_loss"]
            if "al" in present:
                state["al"] = out["al"]         # padded to history_size by _plan_state
            self._expose(state, hist)
        self.state[0] = state

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if self.state.get(0) is not None and self._records[0].step:
            self.state[0]["step"] = float(self._records[0].step)

    def _checkpoint_shapes(self):
        """Array shapes a checkpoint of this optimizer may hold besides the parameters' (the
        flat vectors; read by fastopt.checkpoint.load before any array data)."""
        return [(self.numel,)]
