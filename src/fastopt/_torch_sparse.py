"""fastopt.torch.SparseAdam: torch.optim.SparseAdam's class over fastopt's row-sparse kernel.

Design note
-----------
The class is torch's (the same constructor checks and messages, the same state: ``step`` an
int, ``exp_avg`` and ``exp_avg_sq`` tensors like the parameter, created at a parameter's first
gradient; parameters without a gradient are skipped and count their own steps), so its
state_dict is torch's and loads both ways. Only the step differs: a sparse COO gradient is
handed to fastopt's C kernel as it is, uncoalesced (``_indices()``/``_values()``, no copy when
the values are contiguous): the kernel coalesces in torch's order and updates the touched rows
in place, on the tensors' own memory. A gradient with k sparse dimensions is the row-sparse
gradient of the parameter viewed as ``(prod(shape[:k]), *shape[k:])``, with the indices
flattened as torch's coalesce flattens them. Every gradient of the step is checked before any
parameter is written. Parameters must be dense, contiguous CPU float32/float64 tensors.
"""
import math

import numpy as np
import torch

from . import _sparse, _validate
from ._sparse_adam import RULES

__all__ = ["SparseAdam"]

_DTYPES = (torch.float32, torch.float64)


def _where(gi, j):
    return f"param_groups[{gi}]['params'][{j}]"


def _plain(value):
    return value.item() if isinstance(value, torch.Tensor) and value.numel() == 1 else value


def _step_size(lr, bias_correction1, bias_correction2):
    """torch's ``lr * math.sqrt(bias_correction2) / bias_correction1``: in Python floats, or
    for a tensor lr in the tensor's dtype (a float32 lr rounds the step size to float32, and
    torch multiplies the update by that value), as a Python float."""
    if isinstance(lr, torch.Tensor):
        lr = lr.detach().reshape(())
        return float(lr * math.sqrt(bias_correction2) / bias_correction1)
    return lr * math.sqrt(bias_correction2) / bias_correction1


class SparseAdam(torch.optim.Optimizer):
    """torch.optim.SparseAdam with fastopt's kernel (see :class:`fastopt.SparseAdam` for the
    equations and fastopt._torch_sparse for how gradients are handed over)."""

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False):
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if not 0.0 < lr:
            raise ValueError(f"Invalid learning rate: {lr}")
        if not 0.0 < eps:
            raise ValueError(f"Invalid epsilon value: {eps}")
        if not 0.0 <= betas[0] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 0: {betas[0]}")
        if not 0.0 <= betas[1] < 1.0:
            raise ValueError(f"Invalid beta parameter at index 1: {betas[1]}")
        defaults = {"lr": lr, "betas": betas, "eps": eps, "maximize": maximize}
        super().__init__(params, defaults)
        sparse, complex_ = [], []
        for gi, group in enumerate(self.param_groups):
            for j, p in enumerate(group["params"]):
                if p.is_sparse:
                    sparse.append([gi, j])
                if p.is_complex():
                    complex_.append([gi, j])
        if sparse:
            raise ValueError(f"Sparse params at indices {sparse}: SparseAdam requires dense "
                             "parameter tensors")
        if complex_:
            raise ValueError(f"Complex params at indices {complex_}: SparseAdam does not "
                             "support complex parameters")
        for gi, group in enumerate(self.param_groups):
            self._fo_hyper(group, f"param_groups[{gi}]")
            for j, p in enumerate(group["params"]):
                self._fo_check_param(p, _where(gi, j))

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        if hasattr(self, "state"):             # after __init__: check the new group now
            gi = len(self.param_groups) - 1
            try:
                self._fo_hyper(self.param_groups[gi], f"param_groups[{gi}]")
                for j, p in enumerate(self.param_groups[gi]["params"]):
                    if not p.is_sparse and not p.is_complex():
                        self._fo_check_param(p, _where(gi, j))
            except Exception:
                self.param_groups.pop()
                raise

    @staticmethod
    def _fo_hyper(group, where):
        """The group's hyperparameters checked by fastopt's rules, as plain numbers (a step
        also takes lr = 0, which a scheduler may reach; torch refuses it only at
        construction)."""
        rules = {**RULES, "lr": lambda name, value: _validate.learning_rate(name, value,
                                                                            schedule=False)}
        try:
            return {key: rule(key, _plain(group[key])) for key, rule in rules.items()}
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None

    @staticmethod
    def _fo_check_param(p, what):
        if p.is_sparse or p.is_complex():
            return                               # torch's messages, from __init__
        if p.device.type != "cpu":
            raise TypeError(f"{what} is on {p.device}; fastopt.torch runs on CPU tensors")
        if p.dtype not in _DTYPES:
            raise TypeError(f"{what} has dtype {p.dtype}; fastopt.torch.SparseAdam optimizes "
                            "float32 and float64 tensors")
        if p.dim() == 0:
            raise ValueError(f"{what} is 0-d; SparseAdam indexes rows along the first axis")
        if not p.is_contiguous():
            raise ValueError(f"{what} is not contiguous; fastopt.torch.SparseAdam updates "
                             "contiguous parameters in place (call .contiguous() on the data)")

    @staticmethod
    def _fo_rows(p, g, what):
        """(param rows, indices, values) of p's sparse gradient g as NumPy arrays: the
        parameter viewed as (prod(shape[:k]), *shape[k:]), k = g.sparse_dim()."""
        if not g.is_sparse:
            raise RuntimeError("SparseAdam does not support dense gradients, please consider "
                               "Adam instead")
        if g.dtype != p.dtype:
            raise TypeError(f"{what}.grad has dtype {g.dtype}, expected {p.dtype}")
        if g.shape != p.shape:
            raise ValueError(f"{what}.grad has shape {tuple(g.shape)}, expected "
                             f"{tuple(p.shape)}")
        if g.device.type != "cpu":
            raise TypeError(f"{what}.grad is on {g.device}; expected a CPU tensor")
        k = g.sparse_dim()
        idx = g._indices()
        if k == 1:
            rows = idx[0]
        else:                                    # flattened as torch's coalesce flattens
            rows = torch.zeros(idx.shape[1], dtype=torch.int64)
            for d in range(k):
                rows = rows * p.shape[d] + idx[d]
        values = g._values().detach()
        n_rows = math.prod(p.shape[:k])
        view = p.detach().numpy().reshape((n_rows,) + tuple(p.shape[k:]))
        rows = np.ascontiguousarray(rows.numpy(), dtype=np.int64)
        vals = np.ascontiguousarray(values.resolve_neg().resolve_conj().numpy())
        return view, rows, vals.reshape((rows.shape[0],) + tuple(p.shape[k:])), k

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient (a sparse COO tensor); returns closure's
        loss, if given. Everything is checked before any parameter is written."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        jobs = []
        for gi, group in enumerate(self.param_groups):
            hyper = self._fo_hyper(group, f"param_groups[{gi}]")
            lr = group["lr"] if isinstance(group["lr"], torch.Tensor) else hyper["lr"]
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                what = _where(gi, j)
                self._fo_check_param(p, what)
                view, rows, vals, k = self._fo_rows(p, p.grad, what)
                state = self.state[p]
                m, v = state.get("exp_avg"), state.get("exp_avg_sq")
                fresh = m is None or v is None
                if fresh:
                    m, v = torch.zeros_like(p), torch.zeros_like(p)
                for t, name in ((m, "exp_avg"), (v, "exp_avg_sq")):
                    if t.shape != p.shape or t.dtype != p.dtype or not t.is_contiguous():
                        raise ValueError(f"state[{what}][{name!r}] must be a contiguous "
                                         f"{p.dtype} tensor of shape {tuple(p.shape)}")
                mv, vv = (t.numpy().reshape(view.shape) for t in (m, v))
                names = (what, f"state[{what}]['exp_avg']", f"state[{what}]['exp_avg_sq']",
                         f"{what}.grad indices", f"{what}.grad values")
                _sparse.check_step(view, mv, vv, rows, vals, names)
                step = state.get("step", 0)
                _validate.whole(f"state[{what}]['step']", _plain(step))
                jobs.append((p, state, fresh, m, v, view, mv, vv, rows, vals, names, hyper, lr))
        for p, state, fresh, m, v, view, mv, vv, rows, vals, names, hyper, lr in jobs:
            if fresh:
                state["step"] = state.get("step", 0)
                state["exp_avg"], state["exp_avg_sq"] = m, v
            state["step"] += 1
            step = int(_plain(state["step"]))
            beta1, beta2 = hyper["betas"]
            bias_correction1 = 1 - beta1 ** step
            bias_correction2 = 1 - beta2 ** step
            step_size = _step_size(lr, bias_correction1, bias_correction2)
            _sparse.sparse_adam_step(view, mv, vv, rows, vals, 1 - beta1, 1 - beta2,
                                     hyper["eps"], -step_size, hyper["maximize"], names, True)
        if jobs:
            torch.autograd.graph.increment_version([job[0] for job in jobs])
        return loss
