"""fastopt.torch.LBFGS: torch.optim.LBFGS's interface over fastopt's L-BFGS (fastopt._lbfgs).

A subclass of torch.optim.Optimizer with torch's signature, defaults, checks and closure
semantics (``step(closure)``: the closure zeroes the gradients, re-evaluates the model, calls
``backward`` and returns the loss; it runs with gradients enabled). The iterations run in a
`fastopt.optim.LBFGS` over NumPy views of the parameters' memory (complex parameters as their
real views, as torch does); the closure's gradients are read from ``p.grad`` (None counts as
zeros, sparse gradients are made dense). The state is torch's, kept under the first parameter:
``func_evals``, ``n_iter``, ``t``, ``H_diag``, ``prev_loss`` and ``ro``/``al`` as Python numbers,
``d``, ``prev_flat_grad``, ``old_dirs`` and ``old_stps`` as tensors (views of fastopt's
buffers), so a state_dict of torch.optim.LBFGS loads here and back. Parameters must be dense
contiguous tensors of one dtype (float32, float64, complex64 or complex128) on one device.

CUDA tensors (needs CuPy): the inner optimizer runs on CuPy views of the parameters and
gradients (fastopt._torch_cuda.array, zero-copy), its history and vectors on the parameters'
GPU (fastopt._lbfgs_cupy), every CuPy operation on torch's current stream of that device (so
ordered after the closure's backward pass); the state's tensors view fastopt's device buffers
(fastopt._torch_cuda.tensor).
"""
import contextlib
import numbers

import numpy as np
import torch

from . import _torch_cuda, _validate
from .optim.lbfgs import LBFGS as _NumpyLBFGS

__all__ = ["LBFGS"]

_HYPER = ("lr", "max_iter", "max_eval", "tolerance_grad", "tolerance_change", "history_size",
          "line_search_fn")
_DTYPES = (torch.float32, torch.float64, torch.complex64, torch.complex128)


def _plain(value):
    """A one-element tensor as a Python number; anything else unchanged."""
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            return value
        return value.item()
    return value


def _as_array(t, what):
    """The NumPy (CPU) or CuPy (CUDA) view of a parameter tensor's memory (complex: its real
    view)."""
    if not isinstance(t, torch.Tensor) or t.layout != torch.strided \
            or t.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{what} must be a dense CPU or CUDA tensor")
    if t.dtype not in _DTYPES:
        raise TypeError(f"{what} must be float32, float64, complex64 or complex128, got "
                        f"{t.dtype}")
    if not t.is_contiguous():
        raise ValueError(f"{what} must be contiguous")
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    return _torch_cuda.array(t) if t.device.type == "cuda" else t.numpy()


def _grad_array(p, like, what):
    """p.grad as an array like `like` (its parameter's view): None counts as zeros, a sparse
    gradient is made dense; TypeError for a gradient on another device."""
    g = p.grad
    if g is None:
        g = torch.zeros_like(p)
    if g.device != p.device:
        raise TypeError(f"{what} is on {g.device}, its parameter on {p.device}")
    if g.is_sparse:
        g = g.to_dense()
    g = g.detach().contiguous()
    if g.is_complex():
        g = torch.view_as_real(g)
    g = g.reshape(like.shape)
    return _torch_cuda.array(g) if g.device.type == "cuda" else g.numpy()


def _address(a):
    """Where an array's memory starts (NumPy or CuPy)."""
    return a.ctypes.data if isinstance(a, np.ndarray) else a.data.ptr


class LBFGS(torch.optim.Optimizer):
    """torch.optim.LBFGS running fastopt's L-BFGS (see the module docstring and
    :class:`fastopt.LBFGS` for the algorithm). ``threads`` (keyword-only, default 1): the CPU
    recursion's threads, as :class:`fastopt.LBFGS`'s (raise it only where the closure leaves
    the cores idle)."""

    def __init__(self, params, lr=1, max_iter=20, max_eval=None, tolerance_grad=1e-7,
                 tolerance_change=1e-9, history_size=100, line_search_fn=None, *, threads=1):
        self._threads = _validate.integer("threads", threads, low=1, high=1 << 16)
        if isinstance(lr, torch.Tensor) and lr.numel() != 1:
            raise ValueError("Tensor lr must be 1-element")
        if isinstance(_plain(lr), numbers.Real) and not 0.0 <= _plain(lr):
            raise ValueError(f"Invalid learning rate: {lr}")
        if max_eval is None:
            max_eval = max_iter * 5 // 4
        defaults = {"lr": lr, "max_iter": max_iter, "max_eval": max_eval,
                    "tolerance_grad": tolerance_grad, "tolerance_change": tolerance_change,
                    "history_size": history_size, "line_search_fn": line_search_fn}
        super().__init__(params, defaults)
        if len(self.param_groups) != 1:
            raise ValueError("LBFGS doesn't support per-parameter options (parameter groups)")
        self._params = self.param_groups[0]["params"]
        self._fo = None
        self._fo_key = None
        for i, p in enumerate(self._params):       # the rest is checked at the first step
            _as_array(p, f"params[{i}]")
        devices = {str(p.device) for p in self._params}
        if len(devices) > 1:
            raise ValueError("LBFGS treats its parameters as one vector: they must be on one "
                             f"device, got {', '.join(sorted(devices))}")

    def _group_values(self):
        group = self.param_groups[0]
        return {k: _plain(group[k]) for k in _HYPER}

    def _inner_for(self):
        """The fastopt.optim.LBFGS over the parameters' current memory (remade, keeping its
        buffers and state, when a parameter's storage changed)."""
        arrays = [_as_array(p, f"params[{i}]") for i, p in enumerate(self._params)]
        key = tuple((_address(a), a.shape, a.dtype.str) for a in arrays)
        hyper = self._group_values()
        if self._fo is None or key != self._fo_key:
            inner = _NumpyLBFGS(arrays, **hyper, threads=self._threads)
            if self._fo is not None and inner.numel == self._fo.numel \
                    and arrays[0].dtype == self._fo._all_params()[0].dtype:
                old = self._fo
                inner._ws, inner._hist, inner.state = old._ws, old._hist, old.state
                inner._records[0].step = old._records[0].step
                inner._flat = type(old._flat)([a.reshape(-1) for a in arrays], old._ws)
            self._fo, self._fo_key = inner, key
        else:
            self._fo.param_groups[0].update(hyper)
        return self._fo

    @torch.no_grad()
    def step(self, closure):
        """Perform a single optimization step (up to ``max_iter`` L-BFGS iterations).

        Args:
            closure (Callable): A closure that reevaluates the model and returns the loss.
        """
        if len(self.param_groups) != 1:
            raise AssertionError(
                f"Expected exactly one param_group, but got {len(self.param_groups)}")
        if not callable(closure):
            raise TypeError("LBFGS.step needs a closure that reevaluates the model and "
                            "returns the loss")
        inner = self._inner_for()
        arrays = inner._all_params()
        closure = torch.enable_grad()(closure)
        first = []
        start = inner.state.get(0, {}).get("n_iter", 0)

        def array_closure():
            if first:       # the parameters moved since the last evaluation: as torch's
                self._fo_moved()    # in-place updates, autograd sees new versions
            loss = closure()
            if not first:
                first.append(loss)
            grads = [_grad_array(p, a, f"params[{i}].grad")
                     for i, (p, a) in enumerate(zip(self._params, arrays))]
            return float(loss), grads

        try:
            with self._stream():
                inner.step(array_closure)
        finally:
            self._publish()
            if inner.state.get(0, {}).get("n_iter", 0) != start:   # the last move
                self._fo_moved()
        return first[0]

    def _fo_moved(self):
        """Tell autograd the parameters changed in place (their version counters), as torch's
        ``p.add_`` does: a graph that saved them before the move then refuses to run."""
        torch.autograd.graph.increment_version(self._params)

    def _stream(self):
        """CUDA parameters: torch's current stream of their device as CuPy's current one."""
        device = self._params[0].device
        if device.type != "cuda":
            return contextlib.nullcontext()
        return _torch_cuda.on(device)

    def _publish(self):
        """torch's state layout under the first parameter, from the inner optimizer's state
        (tensors share fastopt's buffers)."""
        src = self._fo.state.get(0)
        if not src:
            return
        device = self._params[0].device
        if device.type == "cuda":
            tensor = lambda a: _torch_cuda.tensor(a, device)
        else:
            tensor = torch.from_numpy
        out = {}
        for key, value in src.items():
            if key == "step":
                continue
            if key in ("d", "prev_flat_grad") and value is not None:
                out[key] = tensor(value)
            elif isinstance(value, list) and key in ("old_dirs", "old_stps"):
                out[key] = [tensor(v) for v in value]
            elif isinstance(value, list):
                out[key] = list(value)
            else:
                out[key] = value
        self.state[self._params[0]] = out

    def state_dict(self):
        sd = super().state_dict()
        for entry in sd["state"].values():
            for key, value in list(entry.items()):
                if isinstance(value, torch.Tensor):
                    entry[key] = value.clone()
                elif isinstance(value, list):
                    entry[key] = [v.clone() if isinstance(v, torch.Tensor) else v
                                  for v in value]
        return sd

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        inner = self._inner_for()
        entry = self.state.get(self._params[0], {})

        def numpy(v):
            if isinstance(v, torch.Tensor):
                if v.numel() == 1 and v.dim() == 0:
                    return v.item()
                v = v.detach().cpu()
                if v.is_complex():
                    v = torch.view_as_real(v)
                return v.reshape(-1).numpy()
            if isinstance(v, list):
                return [numpy(x) for x in v]
            return v

        sd = {"state": {0: {k: numpy(v) for k, v in entry.items()}} if entry else {},
              "param_groups": [{**self._group_values(),
                                "params": list(range(len(self._params)))}]}
        with self._stream():             # the copies to the device on torch's stream
            inner.load_state_dict(sd)
        self._publish()
