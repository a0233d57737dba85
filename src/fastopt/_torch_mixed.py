"""16-bit parameters and loss scaling in fastopt.torch.

- float16 and bfloat16 parameters are planned on fastopt's mixed-precision kernels
  (fastopt._mixed, as :class:`fastopt.MixedPrecision`), float32 ones may share the plan (they
  are their own master). The group options `OPTIONS` (``master_weights``, ``rounding``,
  ``seed``) are those of MixedPrecision, checked by `options`. State buffers of a 16-bit
  parameter are float32 (`state_dtype`); with master weights its float32 master copy is the
  state's ``'master'``.
- `hold_float32`/`restore_float32`: torch.optim's load_state_dict casts every floating state
  tensor to its parameter's dtype; the float32 state of 16-bit parameters is taken out before
  and put back after, so nothing is rounded to 16 bits.
- `grad_scale` and `found_inf`: torch.amp.GradScaler's protocol for fused optimizers
  (``_step_supports_amp_scaling``): gradients are divided by ``grad_scale`` and the step is
  skipped when ``found_inf`` is nonzero.
"""
import math

import torch

from . import _validate

__all__ = ["LOW", "OPTIONS", "options", "state_dtype", "check_param", "grad_scale", "found_inf",
           "hold_float32", "restore_float32"]

LOW = (torch.float16, torch.bfloat16)
OPTIONS = {"master_weights": True, "rounding": "nearest", "seed": 0}
ROUNDINGS = ("nearest", "stochastic")


def options(group, where, low_state=False):
    """(master_weights, rounding, seed) of a group, checked; TypeError/ValueError naming
    `where`. With `low_state` (a low-bit ``state_dtype``, fastopt._torch_qstate) rounding and
    seed are those of the state, checked there."""
    try:
        mw = _validate.boolean("master_weights", group.get("master_weights", True))
        rounding = group.get("rounding", "nearest")
        if rounding not in ROUNDINGS:
            raise ValueError(f"rounding must be one of {ROUNDINGS}, got {rounding!r}")
        if rounding == "stochastic" and mw and not low_state:
            raise ValueError("rounding='stochastic' needs master_weights=False (with a master "
                             "copy the 16-bit parameter is the master rounded to nearest even)")
        seed = _validate.seed("seed", group.get("seed", 0))
    except (TypeError, ValueError) as e:
        raise type(e)(f"{where}: {e}") from None
    return mw, rounding, seed


def state_dtype(p):
    """The dtype of the state buffers of parameter `p` (float32 for 16-bit parameters)."""
    return torch.float32 if p.dtype in LOW else p.dtype


def check_param(p, what, rounding):
    """A 16-bit parameter the mixed kernels can take with this rounding (ValueError/TypeError
    naming it otherwise)."""
    if p.dtype == torch.float16 and rounding == "stochastic":
        raise ValueError(f"{what} is float16; rounding='stochastic' is implemented for "
                         "bfloat16 parameters only (use rounding='nearest' or master weights)")
    if p.dtype == torch.bfloat16:
        try:
            import ml_dtypes  # noqa: F401
        except ImportError:     # pragma: no cover - ml_dtypes comes with fastopt[torch]
            raise TypeError(f"{what} is bfloat16; fastopt.torch needs ml_dtypes for bfloat16 "
                            'tensors: pip install "fastopt[torch]"') from None


def _number(value, name):
    if isinstance(value, torch.Tensor):
        if value.numel() != 1:
            raise ValueError(f"{name} must be a one-element tensor, got shape "
                             f"{tuple(value.shape)}")
        return value.item()
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise TypeError(f"{name} must be a one-element tensor or a number, got "
                        f"{type(value).__name__}")
    return value


def grad_scale(value):
    """The float that gradients are divided by (None: no scaling)."""
    if value is None:
        return None
    s = float(_number(value, "grad_scale"))
    if not (0 < s < math.inf):
        raise ValueError(f"grad_scale must be finite and > 0, got {s}")
    return s


def found_inf(value):
    """Whether GradScaler found an inf/NaN gradient (the step is then skipped)."""
    return value is not None and _number(value, "found_inf") != 0


def hold_float32(opt, sd):
    """(state_dict without the floating state of 16-bit parameters, [(param, name, tensor)])
    for torch's load_state_dict, which would round those tensors to 16 bits."""
    held, state = [], dict(sd["state"])
    for saved, group in zip(sd["param_groups"], opt.param_groups):
        low_state = group.get("state_dtype", "float32") != "float32"   # (no 16-bit params)
        keep_master = options(group, "param group", low_state)[0]
        for pid, p in zip(saved["params"], group["params"]):
            entry = state.get(pid)
            if p.dtype not in LOW or not isinstance(entry, dict):
                continue
            kept = {}
            for name, value in entry.items():
                if name != "step" and isinstance(value, torch.Tensor) \
                        and value.is_floating_point():
                    held.append((p, name, value, name != "master" or keep_master))
                else:
                    kept[name] = value
            state[pid] = kept
    return {**sd, "state": state}, held


@torch.no_grad()
def restore_float32(opt, held):
    """Put the held tensors back as float32 on the parameters' device; a 16-bit parameter
    with a master copy is set to it, rounded to nearest even (as MixedPrecision does; in a
    group without master weights the master is not kept)."""
    for p, name, value, keep in held:
        value = value.to(dtype=torch.float32, device=p.device)
        if keep:
            opt.state[p][name] = value
        if name == "master":
            p.copy_(value)
