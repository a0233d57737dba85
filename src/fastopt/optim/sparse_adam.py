"""SparseAdam: Adam with lazy moments on row-sparse gradients (embedding tables)."""
import numpy as np

from .. import _sparse_adam
from ..sparse import RowSparseGrad
from ._grouped import GroupedOptimizer

__all__ = ["SparseAdam"]


def _zeros(p):
    """Zeros like `p`, written now: the pages are mapped at the first step (as torch's
    zeros_like does), not one page fault at a time when a row is first looked up."""
    if not isinstance(p, np.ndarray):                 # CuPy
        from ..cuda import zeros_like
        return zeros_like(p)
    a = np.empty_like(p)
    a.fill(0)
    return a


class SparseAdam(GroupedOptimizer):
    r"""SparseAdam (torch.optim.SparseAdam): Adam on the rows a row-sparse gradient touches.

    With learning rate :math:`\gamma` (``lr``), :math:`(\beta_1, \beta_2)` (``betas``),
    :math:`\epsilon` (``eps``) and a gradient given as row indices :math:`I_t` and rows
    (a :class:`fastopt.RowSparseGrad`), the rows of one index are first summed (as torch's
    ``coalesce`` sums them, in its order) into :math:`g_{t,i}` (negated when ``maximize``);
    then, for each distinct row :math:`i \in I_t` only,

    .. math::
        m_{t,i} &= m_{t-1,i} + (1-\beta_1)(g_{t,i} - m_{t-1,i}) \\
        v_{t,i} &= v_{t-1,i} + (1-\beta_2)(g_{t,i}^2 - v_{t-1,i}) \\
        \theta_{t,i} &= \theta_{t-1,i} - \frac{\gamma \sqrt{1-\beta_2^t}}{1-\beta_1^t}
                        \cdot \frac{m_{t,i}}{\sqrt{v_{t,i}} + \epsilon}

    while the moments and parameters of the other rows stay as they are (lazy moments), and
    :math:`t` counts every step. Rows are indexed along a parameter's first axis (an embedding
    table ``(num_embeddings, dim)``, or any N-D array with ``values`` of shape
    ``(n, *param.shape[1:])``). The arithmetic is torch's: its order of operations, its
    scalars rounded to the element type, its summation order of duplicates (the permutation of
    torch's sort, replayed in C). The one difference: fastopt's square root is IEEE's
    (correctly rounded), while torch's CPU ``sqrt`` (MKL's vector math) is off by one unit in
    the last place for about 0.6% of elements; those elements differ by that much.

    ``step(grads)``: one :class:`fastopt.RowSparseGrad` (or ``(indices, values)`` tuple) per
    parameter, in parameter order; an empty one (no index) counts the step and moves nothing,
    as in torch. A dense array is refused (``SparseAdam does not support dense gradients``),
    as is an index out of range, with nothing modified. The coalescing sort and the update run
    in C (csrc/sparse_adam.c) with the GIL released, rows split over OpenMP threads; a step
    allocates only scratch proportional to the gradient's entries.

    Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False`` (``lr`` > 0 and
    ``eps`` > 0, as torch requires). State per parameter: ``step``, ``exp_avg``,
    ``exp_avg_sq`` (created as zeros at the first step). Reference: D. P. Kingma and J. Ba,
    "Adam: A Method for Stochastic Optimization", ICLR 2015; torch.optim.SparseAdam.

    >>> import numpy as np, fastopt as fo
    >>> table = np.zeros((5, 2), np.float32)
    >>> opt = fo.SparseAdam([table], lr=0.1)
    >>> opt.step([fo.RowSparseGrad([3, 1, 3], np.ones((3, 2), np.float32))])
    >>> table[:, 0].round(4)
    array([ 0. , -0.1,  0. , -0.1,  0. ], dtype=float32)
    >>> opt.state[0]["exp_avg"][:, 0]
    array([0. , 0.1, 0. , 0.2, 0. ], dtype=float32)
    """

    DEFAULTS = _sparse_adam.DEFAULTS
    RULES = _sparse_adam.RULES
    BUFFERS = ("exp_avg", "exp_avg_sq")

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, maximize=maximize)

    def _plan_for(self, params, offset):
        for j, p in enumerate(params):
            if getattr(p, "ndim", None) == 0:
                raise ValueError(f"params[{offset + j}] is 0-d; SparseAdam indexes rows along "
                                 "a parameter's first axis")
        if params and type(params[0]).__module__.startswith("cupy"):   # _sparse_adam_cupy
            from .. import cuda
            return cuda, cuda.Plan(params, "params", offset)
        return super()._plan_for(params, offset)

    def _names(self, i):
        return (f"params[{i}]", f"state[{i}]['exp_avg']", f"state[{i}]['exp_avg_sq']",
                f"grads[{i}].indices", f"grads[{i}].values")

    def step(self, grads):
        """One step with `grads` (see the class docstring). Returns None."""
        if isinstance(grads, RowSparseGrad):
            grads = [grads]
        with self._lock:
            self._apply(*self._prepare(grads))

    def _prepare(self, grads):
        """Phase 1: check everything the step reads, write nothing. New moment buffers (the
        first step) are made here and stored only by `_apply`."""
        snapshots = self._snapshots()
        grads = self._as_list(grads, "grads")
        params = self._all_params()
        ms, vs, fresh = [], [], []
        for i, p in enumerate(params):
            entry = self.state.get(i, {})
            m, v = entry.get("exp_avg"), entry.get("exp_avg_sq")
            fresh.append(m is None or v is None)
            ms.append(_zeros(p) if m is None else m)
            vs.append(_zeros(p) if v is None else v)
        grads = _sparse_adam.prepare(params, grads, ms, vs, self._names)
        return snapshots, params, grads, ms, vs, fresh

    def _apply(self, snapshots, params, grads, ms, vs, fresh):
        """Phase 2: store new buffers, run the kernel per parameter, count the steps."""
        for i, new in enumerate(fresh):
            if new:
                entry = self.state.setdefault(i, {})
                entry["exp_avg"], entry["exp_avg_sq"] = ms[i], vs[i]
        for (snap, lr), rec in zip(snapshots, self._records):
            sl = slice(rec.offset, rec.offset + len(rec.plan))
            beta1, beta2 = snap["betas"]
            _sparse_adam.run(params[sl], grads[sl], ms[sl], vs[sl], rec.step + 1, lr, beta1,
                             beta2, snap["eps"], snap["maximize"],
                             lambda j, off=rec.offset: self._names(off + j))
            rec.step += 1

    def _check_entries(self, gi, entries):
        for e in entries:
            if ("exp_avg" in e) != ("exp_avg_sq" in e):
                raise ValueError(f"param_groups[{gi}]: a parameter has only one of 'exp_avg' "
                                 "and 'exp_avg_sq'")
