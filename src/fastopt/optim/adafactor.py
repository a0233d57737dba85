"""Adafactor (torch.optim.Adafactor): factored second moments, relative step sizes, update
clipping."""
import numpy as np

from .. import _adafactor, _kernels
from .._adafactor_hyper import DEFAULTS, RULES, adafactor_scalars, eps1_for
from ._grouped import GroupedOptimizer

__all__ = ["Adafactor"]

_NONFINITE = ("ignore", "skip", "raise")


class Adafactor(GroupedOptimizer):
    r"""Adafactor (Shazeer & Stern, 2018) with torch.optim.Adafactor's equations.

    With learning rate :math:`\gamma` (``lr``), decay exponent :math:`\tau`
    (``beta2_decay``), :math:`(\epsilon_1, \epsilon_2)` (``eps``; :math:`\epsilon_1` None is
    the machine epsilon of the group's first parameter's dtype, as torch), clipping threshold
    :math:`d` (``d``), weight decay :math:`\lambda` (``weight_decay``) and gradient
    :math:`G_t` (negated when ``maximize``), each step does

    .. math::
        \hat\beta_{2,t} &= 1 - t^{\tau}, \qquad \rho_t = \min(\gamma, 1/\sqrt t), \qquad
        \alpha_t = \max(\epsilon_2, \mathrm{RMS}(\theta_{t-1}))\,\rho_t \\
        \theta &\leftarrow \theta_{t-1} (1 - \gamma\lambda) \\
        \text{(dim} \ge 2\text{)}\quad R_t &= \hat\beta_{2,t} R_{t-1}
              + (1 - \hat\beta_{2,t})\,\mathrm{mean}_j (G_t \odot G_t), \quad
        C_t = \hat\beta_{2,t} C_{t-1} + (1 - \hat\beta_{2,t})\,\mathrm{mean}_i (G_t \odot G_t),
        \quad \hat V_t = \frac{R_t C_t}{\max(\mathrm{mean}_i R_t, \epsilon_1)} \\
        \text{(dim} < 2\text{)}\quad \hat V_t &= \hat\beta_{2,t} \hat V_{t-1}
              + (1 - \hat\beta_{2,t})\, G_t \odot G_t \\
        U_t &= G_t / \sqrt{\max(\hat V_t, \epsilon_1^2)}, \qquad
        \theta_t = \theta - \frac{\alpha_t}{\max(1, \mathrm{RMS}(U_t)/d)}\, U_t

    For a parameter of >= 2 dims the second moment is factored over its last two: ``row_var``
    (:math:`R`, the parameter's shape with the last dim 1) and ``col_var`` (:math:`C`, the
    second-to-last dim 1), one pair of factors per matrix of the leading (batch) dims; a
    vector (or 0-d) keeps the full ``variance``. RMS is over the whole tensor.

    Defaults: ``lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
    foreach=None, maximize=False``; ``foreach`` is accepted as torch's and changes nothing.
    State per parameter (torch's layout, so state_dicts interchange with torch's): ``step``
    and ``row_var``, ``col_var`` or ``variance`` (the parameter's dtype). Each step runs, per
    tensor, three fused passes of the C kernel (csrc/adafactor.c; two for a vector) with the
    GIL released; the column sums use scratch sized once, when the state is created, for the
    thread count of that moment (more threads later: pass 1 runs on that many). An empty
    parameter is left as it is (torch's step divides by its size). On CuPy arrays the same
    passes run as CuPy array operations (`fastopt._adafactor_cupy`), equal to the CPU to
    rounding. Reference: N. Shazeer and
    M. Stern, "Adafactor: Adaptive Learning Rates with Sublinear Memory Cost", ICML 2018.

    >>> import numpy as np
    >>> from fastopt.optim import Adafactor
    >>> w = np.ones((2, 3))
    >>> opt = Adafactor([w], lr=0.1)
    >>> opt.step([np.full((2, 3), 0.5)])
    True
    >>> w.round(6)
    array([[0.9, 0.9, 0.9],
           [0.9, 0.9, 0.9]])
    >>> opt.state[0]["row_var"].shape, opt.state[0]["col_var"].shape
    ((2, 1), (1, 3))
    """

    DEFAULTS = DEFAULTS
    RULES = RULES
    BUFFERS = ("row_var", "col_var", "variance")

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False):
        self._scratch = np.empty(0)
        super().__init__(params, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                         weight_decay=weight_decay, foreach=foreach, maximize=maximize)

    def _plan_for(self, params, offset):
        if params and type(params[0]).__module__.startswith("cupy"):   # fastopt._adafactor_cupy
            from .. import _adafactor_cupy, cuda
            if getattr(self, "_device_work", None) is None:
                self._device_work = _adafactor_cupy.Workspaces()
            return cuda, cuda.Plan(params, "params", offset)
        return super()._plan_for(params, offset)

    @property
    def _on_device(self):
        return bool(self._records) and self._records[0].mod is not _kernels

    # ------------------------------------------------------------------------------ state
    def _ensure_scratch(self):
        """The column-sum scratch for every parameter, sized for today's thread count (made
        with the state, never during a step that has its state)."""
        if self._on_device:
            return
        need = _adafactor.scratch_length([p.shape for p in self._all_params()],
                                         _kernels.get_num_threads())
        if self._scratch.size < need:
            self._scratch = np.zeros(need)

    def _create_state(self, i, p):
        entry = self.state.setdefault(i, {})
        for name, shape in _adafactor.state_shapes(p.shape).items():
            if isinstance(p, np.ndarray):
                entry[name] = np.zeros(shape, p.dtype)
            else:
                from ..cuda import require_cupy
                cp = require_cupy()
                with cp.cuda.Device(p.device.id):
                    entry[name] = cp.zeros(shape, p.dtype)

    def _has_state(self, i):
        return any(name in self.state.get(i, {}) for name in self.BUFFERS)

    # ------------------------------------------------------------------------------- step
    def step(self, grads, nonfinite="ignore"):
        """One Adafactor step with `grads` (a list of arrays in the order of the parameters).

        `nonfinite` as in the first-order classes: ``"ignore"`` (torch's behaviour),
        ``"skip"`` (nothing updated when a gradient holds NaN/Inf; returns False) or
        ``"raise"`` (ValueError, nothing updated). Returns True when the update was applied.
        Every check runs before anything is written.
        """
        if nonfinite not in _NONFINITE:
            raise ValueError(f"nonfinite must be one of {_NONFINITE}, got {nonfinite!r}")
        if isinstance(grads, np.ndarray):
            grads = [grads]
        with self._lock:
            snapshots = self._snapshots()
            grads = self._check_like_params(grads, "grads")
            if not self._finite_gate(grads, nonfinite):
                return False
            device = self._on_device
            params = self._all_params()
            for i, p in enumerate(params):
                if not self._has_state(i):
                    self._create_state(i, p)
            self._ensure_scratch()
            for i, (p, g) in enumerate(zip(params, grads)):
                entry = self.state[i]
                if device:
                    from .. import _adafactor_cupy
                    _adafactor_cupy.check(p, g, entry.get("row_var"), entry.get("col_var"),
                                          entry.get("variance"),
                                          (f"params[{i}]", f"grads[{i}]", f"state[{i}]"))
                else:
                    _adafactor.check(p, g, entry.get("row_var"), entry.get("col_var"),
                                     entry.get("variance"), self._scratch, f"params[{i}]",
                                     f"grads[{i}]", f"state[{i}]")
            if device:
                self._device_work.get(params)      # buffers first: a failure writes nothing
            for (hyper, lr), rec in zip(snapshots, self._records):
                self._step_group(hyper, lr, rec, params, grads)
            return True

    def _step_group(self, hyper, lr, rec, params, grads):
        omb, rho, decay = adafactor_scalars(rec.step + 1, lr, hyper["beta2_decay"],
                                            hyper["weight_decay"])
        eps1, eps2 = hyper["eps"]
        eps1 = eps1_for(eps1, params[rec.offset].dtype)
        for i in range(rec.offset, rec.offset + len(rec.plan)):
            entry = self.state[i]
            if not isinstance(params[i], np.ndarray):
                from .. import _adafactor_cupy
                _adafactor_cupy.step(params[i], grads[i], entry.get("row_var"),
                                     entry.get("col_var"), entry.get("variance"),
                                     self._device_work, one_minus_beta2=omb, rho=rho,
                                     eps1=eps1, eps2=eps2, d=hyper["d"], decay=decay,
                                     maximize=hyper["maximize"])
                continue
            _adafactor.step(params[i], grads[i], entry.get("row_var"), entry.get("col_var"),
                            entry.get("variance"), self._scratch, omb, rho, eps1, eps2,
                            hyper["d"], decay, hyper["maximize"], f"params[{i}]",
                            f"grads[{i}]", f"state[{i}]")
        rec.step += 1

    # ------------------------------------------------------------------------- state dict
    def _buffer_shape(self, name, p):
        shapes = _adafactor.state_shapes(p.shape)
        if name not in shapes:
            raise ValueError(f"state has {name!r}, but a parameter of shape {p.shape} keeps "
                             f"{sorted(shapes)}")
        return shapes[name]

    def _saved_entry(self, i, entry, p, like=""):
        """A saved entry's buffers, with torch's shapes for this parameter (row_var and
        col_var for >= 2 dims, else variance), all of them or none."""
        out = super()._saved_entry(i, entry, p, f" for a parameter of shape {p.shape}")
        missing = sorted(set(_adafactor.state_shapes(p.shape)) - set(out))
        if out and missing:
            raise ValueError(f"state[{i}] lacks {missing}")
        return out

    def _check_entries(self, gi, entries):
        have = [bool(e) for e in entries]
        if any(have) and not all(have):
            raise ValueError(f"param_groups[{gi}]: some parameters have state and others do "
                             "not; fastopt steps all parameters of a group together")

    def _load_state(self, rec, group, entries):
        for j, (p, entry) in enumerate(zip(group["params"], entries)):
            i = rec.offset + j
            if not entry:
                self.state.pop(i, None)
                continue
            mine = self.state.get(i)
            if not mine or any(name not in mine for name in entry):
                self.state.pop(i, None)
                self._create_state(i, p)
                mine = self.state[i]
            for name, value in entry.items():
                if isinstance(mine[name], np.ndarray):
                    np.copyto(mine[name], np.asarray(value), casting="unsafe")
                else:                                    # CuPy: a new device array
                    from ..cuda import require_cupy, to_numpy
                    cp = require_cupy()
                    host = np.asarray(to_numpy(value), dtype=p.dtype).reshape(mine[name].shape)
                    with cp.cuda.Device(p.device.id):
                        mine[name] = cp.asarray(np.ascontiguousarray(host))
        self._ensure_scratch()

    def _checkpoint_shapes(self):
        """The shapes of every array a state_dict of this optimizer holds (fastopt.load)."""
        return [shape for p in self._all_params()
                for shape in (p.shape, *_adafactor.state_shapes(p.shape).values())]
