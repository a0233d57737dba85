"""fastopt.torch.Adafactor: torch.optim.Adafactor with its step on fastopt's C kernel.

Design note
-----------
Adafactor's state is not elementwise (row and column factors of another shape than the
parameter), so it does not go through the table-driven adapter of fastopt.torch. The class
subclasses ``torch.optim.Adafactor`` itself: construction (torch's checks and messages),
``_init_group`` (state creation with torch's shapes and its complex/sparse errors),
state_dict, load_state_dict, hooks and pickling are torch's, so checkpoints interchange
exactly. Only `step` is replaced: per group, every tensor is checked first (CPU, float32 or
float64, dense, gradient like its parameter), then each parameter's ``step`` is advanced and
fastopt._adafactor steps it in place on the tensors' memory (``Tensor.numpy()``; a tensor
that is not C-contiguous is stepped through a contiguous copy, copied back). The column-sum
scratch is one NumPy buffer per optimizer, grown only when a wider parameter appears.
"""
import numpy as np
import torch

from . import _adafactor, _kernels, _torch_scalars
from . import _torch_dtensor as _dt
from ._adafactor_hyper import RULES, adafactor_scalars, eps1_for
from .optim.adafactor import Adafactor as _NumpyAdafactor

__all__ = ["Adafactor"]

_DTYPES = (torch.float32, torch.float64)


def _check(t, what, like=None, written=True):
    """fastopt.torch's checks of a tensor handed to the kernels (dense, CPU; when `written`,
    not overlapping itself; with `like`, its dtype and shape), then the dtypes this kernel
    has."""
    Adafactor._fo_check_tensor(t, what, like, written)
    if _dt.is_dtensor(t):
        raise TypeError(f"{what} is a DTensor; fastopt.torch.Adafactor steps plain CPU tensors")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{what} has dtype {t.dtype}; fastopt.torch.Adafactor steps float32 "
                        "and float64 tensors")


def _array(t):
    """(NumPy array over t's memory or over a contiguous copy, whether it is a copy)."""
    t = t.detach()
    if t.is_contiguous():
        return t.numpy(), False
    return t.contiguous().numpy(), True


def _validated(group, where):
    """fastopt's rules (fastopt._adafactor_hyper.RULES) on a group's hyperparameters, a
    one-element tensor lr read as its number; raises TypeError/ValueError naming `where`,
    before anything is written."""
    out = dict(group)
    for key, rule in RULES.items():
        if key in group:
            value = group[key]
            if key == "lr" and isinstance(value, torch.Tensor) and value.numel() == 1:
                value = value.item()
            try:
                out[key] = rule(f"{where}[{key!r}]", value)
            except (TypeError, ValueError) as e:
                if str(e).startswith(where):
                    raise
                raise type(e)(f"{where}: {e}") from None    # torch's message, named
    if isinstance(group.get("lr"), torch.Tensor):   # torch's 0-d tensor arithmetic for it
        out = _torch_scalars.torch_math(group, out)
    return out


class Adafactor(torch.optim.Adafactor):
    __doc__ = ("torch.optim.Adafactor with the step of fastopt's C kernel (CPU float32/float64 "
               "tensors; see fastopt._torch_adafactor).\n\n"
               + (_NumpyAdafactor.__doc__ or "").split("\n    >>>")[0].strip() + "\n")

    #: fastopt.torch's tensor check, set by fastopt.torch when it imports this module (so
    #: that this module does not import fastopt.torch back)
    _fo_check_tensor = None

    def __init__(self, params, lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0,
                 weight_decay=0.0, *, foreach=None, maximize=False):
        super().__init__(params, lr=lr, beta2_decay=beta2_decay, eps=eps, d=d,
                         weight_decay=weight_decay, foreach=foreach, maximize=maximize)
        self._fo_scratch = np.zeros(0)

    def __setstate__(self, state):
        super().__setstate__(state)
        self.__dict__.setdefault("_fo_scratch", np.zeros(0))

    @torch.no_grad()
    def step(self, closure=None):
        """One step (see torch.optim.Adafactor); every tensor of every group is checked
        before any is written."""
        if getattr(self, "grad_scale", None) is not None or \
                getattr(self, "found_inf", None) is not None:
            raise AssertionError("Grad scaling should occur outside of optimizer.step()")
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = []
        hypers = [_validated(group, f"param_groups[{gi}]")
                  for gi, group in enumerate(self.param_groups)]
        for gi, group in enumerate(self.param_groups):
            params, grads, rows, cols, variances, steps = [], [], [], [], [], []
            self._init_group(group, params, grads, rows, cols, variances, steps)
            for j, (p, g) in enumerate(zip(params, grads)):
                what = f"param_groups[{gi}]['params'][{j}]"
                _check(p, what)
                _check(g, f"{what}.grad", p, written=False)     # read only: may be expanded
                for t, name in ((rows[j], "row_var"), (cols[j], "col_var"),
                                (variances[j], "variance")):
                    if t is not None:
                        _check(t, f"state of {what}[{name!r}]")
            if params:
                work.append((hypers[gi], params, grads, rows, cols, variances, steps))
        shapes = [p.shape for item in work for p in item[1]]
        need = _adafactor.scratch_length(shapes, _kernels.get_num_threads())
        if self._fo_scratch.size < need:
            self._fo_scratch = np.zeros(need)
        for item in work:
            self._fo_group(*item)
        stepped = [p for item in work for p in item[1]]
        if stepped:                         # as torch's in-place updates: autograd sees them
            torch.autograd.graph.increment_version(stepped)
        return loss

    def _fo_group(self, group, params, grads, rows, cols, variances, steps):
        lr = group["lr"]            # a number, or a tensor lr's TensorScalar
        eps1, eps2 = group["eps"]
        eps1 = eps1_for(eps1, np.float32 if params[0].dtype == torch.float32 else np.float64)
        arrays = []
        for p, g, r, c, v in zip(params, grads, rows, cols, variances):
            views = [_array(t) if t is not None else (None, False) for t in (p, g, r, c, v)]
            _adafactor.check(*(a for a, _ in views), self._fo_scratch)
            arrays.append(views)
        for p, r, c, v, step_t, views in zip(params, rows, cols, variances, steps, arrays):
            step_t += 1
            omb, rho, decay = adafactor_scalars(step_t.item(), lr, group["beta2_decay"],
                                                group["weight_decay"])
            # rho is the float32 tensor lr when that is the smaller: torch's step size is then
            # float32 arithmetic (the kernel's f32_scalars)
            f32 = isinstance(rho, _torch_scalars.TensorScalar) and \
                rho.tensor.dtype == torch.float32
            (pa, pcopy), (ga, _), (ra, rcopy), (ca, ccopy), (va, vcopy) = views
            _adafactor.step(pa, ga, ra, ca, va, self._fo_scratch, omb, float(rho), eps1, eps2,
                            group["d"], float(decay), group["maximize"], f32_scalars=f32)
            for t, a, copied in ((p, pa, pcopy), (r, ra, rcopy), (c, ca, ccopy),
                                 (v, va, vcopy)):
                if copied:
                    t.copy_(torch.from_numpy(a))
