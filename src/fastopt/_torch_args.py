"""torch.optim's constructor keywords and error messages, for fastopt.torch.

- `signature`: a fastopt.torch class takes the arguments of the torch.optim class of the same
  name, in the same order and of the same kinds (positional or keyword-only), including torch's
  implementation keywords (``foreach``, ``fused``, ``capturable``, ``differentiable``, as the
  installed torch declares them), then fastopt's own options (``sutskever``, ``eps_in_sqrt``)
  as keyword-only arguments.
- `check_group`: the checks torch.optim makes of those keywords and of tensor
  hyperparameters, with torch's error types and messages; fastopt is always fused, so
  ``foreach`` and ``fused`` are recorded and do not change the arithmetic, while
  ``capturable=True`` (CUDA graphs) and ``differentiable=True`` (autograd through the step)
  cannot be honoured and raise RuntimeError.
- `torch_error`: the error for a hyperparameter that fastopt's rules (fastopt._validate)
  refuse, with torch's text where the optimizer table has one (``Hyper.torch_error``), and
  fastopt's reason after it.
"""
import inspect
import re

import torch

from . import _table, _validate
from .optim._state_format import STATE_KEYWORDS

__all__ = ["IMPL", "signature", "check_group", "torch_error", "scalar_betas"]

IMPL = ("foreach", "fused", "capturable", "differentiable")
_OPTIONAL = ("foreach", "fused")          # None (torch picks), True or False
_TENSOR_FOREACH = "{what} as a Tensor is not supported for capturable=False and foreach=True"


def signature(fo_cls, torch_cls):
    """(signature, {implementation keyword: torch's default}) of the fastopt.torch class."""
    fo = {name: p for name, p in inspect.signature(fo_cls.__init__).parameters.items()
          if name not in STATE_KEYWORDS}     # low-bit state: fastopt's classes only (yet)
    if torch_cls is None:
        return inspect.Signature(list(fo.values())), {}
    out, impl = [], {}
    for name, p in inspect.signature(torch_cls.__init__).parameters.items():
        if name in fo:
            out.append(p.replace(default=fo[name].default, annotation=inspect.Parameter.empty))
        elif name in IMPL:
            impl[name] = p.default
            out.append(p.replace(annotation=inspect.Parameter.empty))
    names = {p.name for p in out}
    out += [p.replace(kind=inspect.Parameter.KEYWORD_ONLY) for name, p in fo.items()
            if name not in names]
    return inspect.Signature(out), impl


def scalar_betas(betas):
    """torch's form of tensor betas: one-element tensors squeezed to 0-d (torch.optim.Adam)."""
    if isinstance(betas, (tuple, list)) and len(betas) == 2 \
            and any(isinstance(b, torch.Tensor) for b in betas):
        return tuple(b.squeeze() if isinstance(b, torch.Tensor) and b.dim() else b
                     for b in betas)
    return betas


def _is_tensor(value):
    return isinstance(value, torch.Tensor)


def check_group(cls_name, group, impl, adam_like):
    """torch's checks of the implementation keywords and tensor hyperparameters of a group
    (`impl`: the keywords the class takes; `adam_like`: torch's Adam/AdamW, which check
    tensor lr and betas against foreach). Raises TypeError/ValueError/RuntimeError."""
    for key in impl:
        value = group.get(key, impl[key])
        if key in _OPTIONAL and value is None:
            continue
        if not isinstance(value, bool):
            allowed = "None, True or False" if key in _OPTIONAL else "True or False"
            raise TypeError(f"{key} must be {allowed}, got {type(value).__name__} {value!r}")
    foreach, fused = group.get("foreach"), group.get("fused")
    capturable = group.get("capturable", False)
    differentiable = group.get("differentiable", False)
    if adam_like:
        lr, betas = group.get("lr"), group.get("betas")
        if _is_tensor(lr) and foreach and not capturable:
            raise ValueError(_TENSOR_FOREACH.format(what="lr"))
        if isinstance(betas, (tuple, list)) and len(betas) == 2:
            if _is_tensor(betas[0]) != _is_tensor(betas[1]):
                raise ValueError("betas must be either both floats or both Tensors")
            for i, b in enumerate(betas):
                if _is_tensor(b) and foreach and not capturable:
                    raise ValueError(_TENSOR_FOREACH.format(what=f"betas[{i}]"))
    if fused and differentiable:
        raise RuntimeError("`fused` does not support `differentiable`")
    if fused and foreach:
        raise RuntimeError("`fused` and `foreach` cannot be `True` together.")
    if differentiable:
        raise RuntimeError(f"differentiable=True is not supported by fastopt.torch.{cls_name}: "
                           "its fused kernels update the tensors in place, outside autograd; "
                           f"use torch.optim.{cls_name} to differentiate through a step")
    if capturable:
        raise RuntimeError("If capturable=True, params and state_steps must be on supported "
                           f"devices: {_capturable_devices()}. fastopt.torch runs on CPU "
                           "tensors, where capturable (CUDA graph capture) does not apply; "
                           "use capturable=False")


def _capturable_devices():
    try:
        from torch.optim.optimizer import _get_capturable_supported_devices
        return _get_capturable_supported_devices()
    except ImportError:                     # pragma: no cover - older or newer torch
        return ["cuda"]


def _reason(error):
    """'must be ...' of a fastopt._validate message, or the whole message."""
    m = re.search(r"must be (.+?)(?:, got .*|\))?$", str(error))
    return f"must be {m.group(1)}" if m else str(error)


def _tensor_size_error(key, value, where):
    """torch's ValueError for a tensor lr or beta of more than one element (other
    hyperparameters keep fastopt's TypeError: torch has no message for them)."""
    if key == "lr" and _is_tensor(value) and value.numel() != 1:
        return ValueError(f"Tensor {key} must be 1-element ({where})")
    if key == "betas" and isinstance(value, (tuple, list)):
        for i, b in enumerate(value):
            if _is_tensor(b) and b.numel() != 1:
                return ValueError(f"Tensor betas[{i}] must be 1-element ({where})")
    return None


def _plain(value):
    if _is_tensor(value) and value.numel() == 1:
        return value.item()
    if isinstance(value, (tuple, list)):
        return type(value)(_plain(v) for v in value)
    return value


def torch_error(spec, group, error, where):
    """The exception to raise for a group whose hyperparameters fastopt's rules refused with
    `error`: torch's type and text where torch refuses the value too, else `error` with
    `where` in front."""
    hypers = {h.name: h for h in _table.OPTIMIZERS[spec.name].hyper}
    for key, rule in spec.rules.items():
        if key not in group:
            continue
        raw = group[key]
        size_error = _tensor_size_error(key, raw, where)
        if size_error is not None:
            return size_error
        try:
            rule(key, _plain(raw))
        except TypeError:
            break
        except ValueError as e:
            text = hypers[key].torch_error if key in hypers else None
            if text is None:
                break
            value, index, name = raw, 0, key
            if rule in _validate.PAIRS:         # the first element its rule refuses
                for index, (b, element) in enumerate(zip(raw, _validate.PAIRS[rule])):
                    try:
                        element(f"{key}[{index}]", _plain(b))
                    except ValueError:
                        name = f"{key}[{index}]"
                        value = b if "{index}" in text else raw
                        break
            return ValueError(f"{text.format(value=value, index=index)} ({where}: {name} "
                              f"{_reason(e)})")
    else:
        for condition, message in _table.OPTIMIZERS[spec.name].checks:
            flag = hypers.get(condition.split()[0])
            if message == str(error) and flag is not None and flag.torch_error:
                return ValueError(f"{flag.torch_error} ({where}: {message})")
    return type(error)(f"{where}: {error}")
