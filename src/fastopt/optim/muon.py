"""Muon: momentum orthogonalized by a Newton-Schulz iteration, for 2-D hidden-layer weights."""
import re

import numpy as np

from .. import _kernels
from .. import _muon_rules as _rules
from ._grouped import GroupedOptimizer

__all__ = ["Muon", "split_params"]

_NONFINITE = ("ignore", "skip", "raise")


def _on_device(a):
    """Whether `a` is a CuPy array (by its type's module, without importing CuPy)."""
    return type(a).__module__.startswith("cupy")


class Muon(GroupedOptimizer):
    r"""Muon (torch.optim.Muon): SGD momentum whose update is orthogonalized, for 2-D weights.

    With learning rate :math:`\gamma` (``lr``), weight decay :math:`\lambda`
    (``weight_decay``), momentum :math:`\mu` (``momentum``), coefficients :math:`(a, b, c)`
    (``ns_coefficients``), :math:`k` iterations (``ns_steps``) and :math:`\varepsilon`
    (``eps``), each step of a parameter :math:`\theta` (an :math:`A \times B` matrix) with
    gradient :math:`g_t` does (torch's code: the buffer is an exponential average)

    .. math::
        B_t &= B_{t-1} + (1 - \mu)(g_t - B_{t-1}) \\
        U_t &= g_t + \mu (B_t - g_t) \ \text{(nesterov)}, \quad B_t \ \text{(otherwise)} \\
        X_0 &= U_t / \max(\lVert U_t \rVert_F, \varepsilon) \quad
               \text{(transposed when } A > B) \\
        X_{j+1} &= a X_j + (b\, X_j X_j^\top + c\, (X_j X_j^\top)^2)\, X_j,
               \quad j = 0 \ldots k-1; \quad O_t = X_k \\
        \theta_t &= \theta_{t-1} (1 - \gamma \lambda) - \gamma' O_t

    with :math:`\gamma' = \gamma \sqrt{\max(1, A/B)}` (``adjust_lr_fn=None`` or
    ``"original"``, Keller Jordan's) or :math:`0.2\, \gamma \sqrt{\max(A, B)}`
    (``"match_rms_adamw"``, Moonshot's: reuse AdamW's lr and weight decay).

    The iteration runs on BLAS gemm (scipy's BLAS, three calls per iteration, the GIL
    released) in ``ns_dtype``: ``None`` (default) as torch, which runs it in bfloat16:
    emulated by rounding every bfloat16 value of torch's iteration (the input, the norm, each
    product and sum) to bfloat16 in float32 storage; the result equals torch's except where a
    float32 accumulation lies within a few float32 ulps of a bfloat16 rounding boundary
    (torch's BLAS sums in another order; see fastopt._muon), and such a one-ulp difference
    spreads over the next iterations: measured in :math:`O_t`, at most 2^-8 (one bfloat16 ulp
    at 1) on 64x128 to 256x512 Gaussian matrices, and up to two ulps of an entry on small ones
    (2^-7 at 0.53 in one of four steps on a 3x7 matrix).
    ``"float32"``/``"float64"``: the same iteration without rounding, in that precision
    (``"float64"`` is torch's algorithm in float64).

    Where to use it: the 2-D weights of hidden layers (linear layers, flattened conv kernels).
    Embeddings, the output head, biases and norm gains go to AdamW (torch's advice; Muon is
    not defined for vectors): :func:`split_params` makes the two groups. Parameters must be
    2-D float32/float64 NumPy arrays (anything else: ValueError/TypeError at construction).

    Defaults (torch's): ``lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
    ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5, adjust_lr_fn=None``;
    fastopt's ``ns_dtype=None``. State per parameter: ``momentum_buffer`` (and ``step``).
    One work buffer per iteration dtype, sized for the largest parameter, is allocated when
    first needed and reused. References: K. Jordan, "Muon: An optimizer for hidden layers in
    neural networks" (2024); J. Liu et al., "Muon is Scalable for LLM Training" (2025).

    >>> import numpy as np, fastopt as fo
    >>> W = np.eye(2, 3)
    >>> opt = fo.Muon([W], lr=0.1, weight_decay=0.0, ns_dtype="float64")
    >>> opt.step([np.ones((2, 3))])
    True
    >>> np.round(W, 3)
    array([[ 0.972, -0.028, -0.028],
           [-0.028,  0.972, -0.028]])
    """

    DEFAULTS = dict(_rules.DEFAULTS)
    RULES = _rules.RULES
    BUFFERS = ("momentum_buffer",)

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=_rules.DEFAULT_NS_COEFFICIENTS, eps=1e-7, ns_steps=5,
                 adjust_lr_fn=None, *, ns_dtype=None):
        self._work = _rules.Workspaces()
        super().__init__(params, lr=lr, weight_decay=weight_decay, momentum=momentum,
                         nesterov=nesterov, ns_coefficients=ns_coefficients, eps=eps,
                         ns_steps=ns_steps, adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)

    def _plan_for(self, params, offset):
        for j, p in enumerate(params):
            if isinstance(p, np.ndarray) or _on_device(p):
                _rules.check_2d(p, f"params[{offset + j}]")
        if params and _on_device(params[0]):           # CuPy: fastopt._muon_cupy's step
            from .. import cuda
            return cuda, cuda.Plan(params, "params", offset)
        return super()._plan_for(params, offset)

    @property
    def _device_work(self):
        work = self.__dict__.get("_cupy_work")
        if work is None:
            from .. import _muon_cupy
            work = self.__dict__["_cupy_work"] = _muon_cupy.Workspaces()
        return work

    # ------------------------------------------------------------------------------ step
    def step(self, grads, nonfinite="ignore"):
        """One Muon step with `grads` (a list of arrays in the order of the parameters).

        `nonfinite`: "ignore" (as torch: NaN/Inf flow into the parameters), "skip" (update
        nothing, return False) or "raise" (ValueError, nothing changed) when a gradient holds
        NaN or Inf. Returns True when the update was applied. Every check (gradients,
        hyperparameters of every group, `param_groups` edits) happens before any write.
        """
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
        with self._lock:
            snapshots = self._snapshots()
            grads = self._check_like_params(grads, "grads")
            if not self._finite_gate(grads, nonfinite):
                return False
            device = self._records[0].mod is not _kernels
            params = self._all_params()
            works = {}
            if device:
                from .. import _muon_cupy as kernel
                for snap, _ in snapshots:
                    dt = snap["ns_dtype"]
                    if dt not in works:
                        works[dt] = self._device_work.get(dt, params)
            else:
                kernel = _rules.kernel_module()
            for snap, _ in snapshots:      # work buffers first: an allocation failure writes nothing
                dt = snap["ns_dtype"]
                if dt not in works:
                    works[dt] = self._work.get(dt, [p.shape for p in params])
            for (snap, lr), rec in zip(snapshots, self._records):
                bufs = self._buffers(rec)
                work = works[snap["ns_dtype"]]
                hyper = {k: snap[k] for k in _rules.DEFAULTS if k != "lr"}
                for j, (p, buf) in enumerate(zip(rec.plan.params, bufs)):
                    _rules.step_one(kernel, p, grads[rec.offset + j], buf, work, lr=lr, **hyper)
                rec.step += 1
            return True

    def _buffers(self, rec):
        """The group's momentum buffers, created (zeros) on its first step."""
        n = len(rec.plan)
        entries = [self.state.setdefault(rec.offset + j, {}) for j in range(n)]
        if not all("momentum_buffer" in e for e in entries):
            for e, p in zip(entries, rec.plan.params):
                if isinstance(p, np.ndarray):
                    e["momentum_buffer"] = np.zeros_like(p)
                else:
                    from ..cuda import zeros_like
                    e["momentum_buffer"] = zeros_like(p)
            self._attach(rec)
        return [e["momentum_buffer"] for e in entries]

    def _attach(self, rec):
        """Hand the group's buffers to its plan, whose gradient checks then refuse a gradient
        that overlaps one."""
        bufs = [self.state.get(rec.offset + j, {}).get("momentum_buffer")
                for j in range(len(rec.plan))]
        rec.plan.set_state(0, None if any(b is None for b in bufs) else bufs)

    def _load_state(self, rec, group, entries):
        super()._load_state(rec, group, entries)
        self._attach(rec)


# --------------------------------------------------------------------------- param split
#: parameter names that stay with AdamW although 2-D: embeddings and output heads
DEFAULT_EXCLUDE = r"(^|\.)(\w*embed\w*|wte|wpe|lm_head|head|output|classifier|fc_out)(\.|$)"


def split_params(named_params, *, exclude=DEFAULT_EXCLUDE):
    """Split ``(name, array)`` pairs (or a dict name -> array) into Muon's and AdamW's
    parameters, as torch's Muon documentation recommends: 2-D arrays go to Muon unless their
    name matches `exclude` (a regex searched in the name; default: embeddings and output
    heads, a dotted name component containing ``embed``, or one of ``wte``, ``wpe``,
    ``lm_head``, ``head``, ``output``, ``classifier``, ``fc_out``);
    everything else (biases, norm gains, embeddings, heads, higher-dimensional tensors) goes
    to AdamW. Returns ``(muon_params, adamw_params)``, two lists of arrays in input order.

    >>> import numpy as np
    >>> from fastopt.optim.muon import split_params
    >>> named = {"embed.weight": np.zeros((10, 4)), "block.fc1.weight": np.zeros((8, 4)),
    ...          "block.fc1.bias": np.zeros(8), "lm_head.weight": np.zeros((10, 8))}
    >>> muon, adamw = split_params(named)
    >>> [a.shape for a in muon], [a.shape for a in adamw]
    ([(8, 4)], [(10, 4), (8,), (10, 8)])
    """
    items = named_params.items() if isinstance(named_params, dict) else named_params
    pattern = re.compile(exclude) if exclude is not None else None
    muon, adamw = [], []
    for item in items:
        try:
            name, a = item
        except (TypeError, ValueError):
            raise TypeError("named_params must be (name, array) pairs or a dict name -> "
                            f"array, got an item {type(item).__name__}") from None
        if not isinstance(name, str):
            raise TypeError(f"parameter names must be strings, got {type(name).__name__}")
        hidden = getattr(a, "ndim", None) == 2 and not (pattern and pattern.search(name))
        (muon if hidden else adamw).append(a)
    return muon, adamw
