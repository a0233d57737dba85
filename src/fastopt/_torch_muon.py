"""fastopt.torch.Muon: torch.optim.Muon's interface over fastopt's Muon step (fastopt._muon),
and `muon_param_groups`, the Muon/AdamW split of a torch module's parameters.

The class is a ``torch.optim.Optimizer`` with torch.optim.Muon's signature, defaults, error
types and messages, and state layout (``momentum_buffer`` per parameter, no ``step``), plus
fastopt's ``ns_dtype`` keyword-only (None: torch's bfloat16 iteration, emulated; "float32";
"float64"). A step reads ``p.grad`` and updates each 2-D float32/float64 CPU tensor in place on
its own memory (``Tensor.numpy()`` shares it); the Newton-Schulz iteration runs on scipy's
BLAS with the GIL released, in one work buffer per iteration dtype reused across steps.
Every parameter and gradient of every group is checked before anything is written.
Not supported (clear errors): 16-bit or complex parameters, sparse gradients, non-contiguous
parameters, CUDA tensors, ``differentiable``/``foreach`` (torch's Muon has neither either).
"""
import inspect

import torch

from . import _muon_rules as _rules
from .optim.muon import DEFAULT_EXCLUDE, Muon as _NumpyMuon

__all__ = ["Muon", "muon_param_groups"]


def _plain(value):
    """A one-element tensor as its Python number; anything else as it is."""
    if isinstance(value, torch.Tensor) and value.numel() == 1:
        return value.item()
    return value


def _torch_checks(values):
    """torch.optim.Muon's constructor checks, in its order, with its messages."""
    lr = values["lr"]
    if isinstance(lr, torch.Tensor) and lr.numel() != 1:
        raise ValueError("Tensor lr must be 1-element")
    for key, text in (("lr", "Learning rate should be >= 0 but is: {}"),
                      ("momentum", "momentum should be >= 0 but is: {}"),
                      ("weight_decay", "weight decay should be >= 0 but is: {}")):
        v = _plain(values[key])
        if isinstance(v, (int, float)) and not isinstance(v, bool) and not 0.0 <= v:
            raise ValueError(text.format(values[key]))
    fn = values["adjust_lr_fn"]
    if fn is not None and fn not in ["original", "match_rms_adamw"]:
        raise ValueError(f"Adjust learning rate function {fn} is not supported")


def _validated(group, where):
    """fastopt's rules on a group's values (one-element tensors read as numbers)."""
    values = {k: _plain(group.get(k, d)) for k, d in _rules.DEFAULTS.items()}
    try:
        return {k: rule(k, values[k]) for k, rule in _rules.RULES.items()}
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None


class Muon(torch.optim.Optimizer):
    __doc__ = ("torch.optim.Optimizer running fastopt's Muon step on CPU tensors (see "
               "fastopt._torch_muon and :class:`fastopt.Muon`).\n\n"
               + inspect.getdoc(_NumpyMuon).split("\n>>>")[0])

    def __init__(self, params, lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                 ns_coefficients=_rules.DEFAULT_NS_COEFFICIENTS, eps=1e-7, ns_steps=5,
                 adjust_lr_fn=None, *, ns_dtype=None):
        defaults = dict(lr=lr, weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                        ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                        adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)
        _torch_checks(defaults)
        _validated(defaults, "defaults")
        self._fo_work = _rules.Workspaces()
        super().__init__(params, defaults)

    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        try:
            _torch_checks(group)
            _validated(group, f"param_groups[{len(self.param_groups) - 1}]")
            for p in group["params"]:
                if p.ndim != 2:
                    raise ValueError("Muon only supports 2D parameters whereas we found a "
                                     f"parameter with size: {p.size()}")
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state):
        super().__setstate__(state)
        self._fo_work = _rules.Workspaces()
        for group in self.param_groups:
            group.setdefault("ns_dtype", None)

    # ------------------------------------------------------------------------------ step
    def _fo_prepare(self):
        """Check every group, parameter, gradient and state tensor; write nothing. Returns
        [(values, lr, [(param, grad, buffer or None), ...]), ...]."""
        work = []
        for gi, group in enumerate(self.param_groups):
            hyper = _validated(group, f"param_groups[{gi}]")
            items = []
            for j, p in enumerate(group["params"]):
                if p.grad is None:
                    continue
                where = f"param_groups[{gi}]['params'][{j}]"
                if torch.is_complex(p):
                    raise RuntimeError("Muon does not support complex parameters")
                if p.grad.is_sparse:
                    raise RuntimeError("Muon does not support sparse gradients")
                if p.dtype not in (torch.float32, torch.float64) or p.device.type != "cpu":
                    raise TypeError(f"{where}: fastopt.torch.Muon takes float32/float64 CPU "
                                    f"tensors, got {p.dtype} on {p.device}")
                if p.ndim != 2:
                    raise ValueError("Muon only supports 2D parameters whereas we found a "
                                     f"parameter with size: {p.size()}")
                if not p.is_contiguous():
                    raise ValueError(f"{where} must be contiguous (fastopt.torch.Muon updates "
                                     "it in place on its memory)")
                g = p.grad
                if g.shape != p.shape or g.dtype != p.dtype or g.device != p.device:
                    raise ValueError(f"{where}.grad must have the parameter's shape, dtype and "
                                     f"device, got {tuple(g.shape)} {g.dtype} {g.device}")
                buf = self.state.get(p, {}).get("momentum_buffer")
                if buf is not None and (buf.shape != p.shape or buf.dtype != p.dtype
                                        or not buf.is_contiguous()
                                        or buf.device != p.device):
                    raise ValueError(f"state of {where}: momentum_buffer must be a contiguous "
                                     f"tensor of the parameter's shape and dtype, got "
                                     f"{tuple(buf.shape)} {buf.dtype}")
                items.append((p, g, buf))
            work.append((hyper, group["lr"], items))
        return work

    @staticmethod
    def _fo_scalars(lr, hyper, shape):
        """(decay, step size) of one parameter as torch computes them: in Python floats, or,
        for a tensor lr (kept a tensor by torch), in the tensor's dtype."""
        if not isinstance(lr, torch.Tensor):
            return None, None
        lr = lr.detach().reshape(())
        ratio = _rules.adjusted_lr(1.0, hyper["adjust_lr_fn"], shape)
        return float(1 - lr * hyper["weight_decay"]), float(lr * ratio)

    @torch.no_grad()
    def step(self, closure=None):
        """Update every parameter that has a gradient; returns closure's loss, if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        work = self._fo_prepare()
        shapes = [tuple(p.shape) for _, _, items in work for p, _, _ in items]
        buffers = {h["ns_dtype"]: self._fo_work.get(h["ns_dtype"], shapes) for h, _, _ in work}
        kernel = _rules.kernel_module()
        for hyper, lr, items in work:
            plain = hyper.pop("lr")
            for p, g, buf in items:
                if buf is None:     # a parameter listed twice shares one buffer, as in torch
                    buf = self.state[p].get("momentum_buffer")
                if buf is None:
                    buf = torch.zeros_like(p, memory_format=torch.preserve_format)
                    self.state[p]["momentum_buffer"] = buf
                decay, size = self._fo_scalars(lr, hyper, tuple(p.shape))
                _rules.step_one(kernel, p.detach().numpy(), g.detach().contiguous().numpy(),
                                buf.numpy(), buffers[hyper["ns_dtype"]], lr=plain,
                                decay=decay, step_size=size, **hyper)
        stepped = [p for _, _, items in work for p, _, _ in items]
        if stepped:                         # as torch's in-place updates: autograd sees them
            torch.autograd.graph.increment_version(stepped)
        return loss


def muon_param_groups(module, *, exclude=DEFAULT_EXCLUDE, muon=None, adamw=None):
    """Split a torch module's parameters into a Muon group and an AdamW group, as torch's
    Muon documentation recommends: the 2-D weights of hidden layers go to Muon; biases, norm
    gains, higher-dimensional tensors, the weights of ``torch.nn.Embedding`` modules and
    parameters whose name matches `exclude` (output heads: ``lm_head``, ``head``, ``output``,
    ``classifier``, ...; see fastopt.optim.muon.split_params) go to AdamW.

    Returns ``(muon_group, adamw_group)``: dicts ``{"params": [...], **muon}`` and
    ``{"params": [...], **adamw}`` (`muon`, `adamw`: extra group keys, e.g. a learning
    rate), ready for ``Muon([muon_group])`` and ``torch.optim.AdamW([adamw_group])``.

    >>> import torch, fastopt.torch as ft
    >>> model = torch.nn.Sequential(torch.nn.Embedding(10, 4), torch.nn.Linear(4, 8),
    ...                             torch.nn.LayerNorm(8), torch.nn.Linear(8, 10))
    >>> hidden, rest = ft.muon_param_groups(model, exclude=r"^3\\.")   # layer 3: the head
    >>> [tuple(p.shape) for p in hidden["params"]]
    [(8, 4)]
    >>> len(rest["params"])
    5
    """
    import re
    pattern = re.compile(exclude) if exclude is not None else None
    embeddings = {id(m.weight) for m in module.modules() if isinstance(m, torch.nn.Embedding)}
    hidden, rest = [], []
    for name, p in module.named_parameters():
        if not p.requires_grad:
            continue
        is_hidden = p.ndim == 2 and id(p) not in embeddings \
            and not (pattern and pattern.search(name))
        (hidden if is_hidden else rest).append(p)
    return {"params": hidden, **(muon or {})}, {"params": rest, **(adamw or {})}
