"""Optimizers with group state and train/eval modes in fastopt.torch (Schedule-Free).

The table's ``Optimizer.group_state`` (Schedule-Free's ``k``, ``weight_sum``, ``lr_max``,
``scheduled_lr``) and ``Optimizer.modes`` (``train_mode``) live in the torch optimizer's
param groups, as the ``schedulefree`` package keeps them, so state_dicts move between the two:

- `defaults`: the group state's initial values; the mode starts as the package's does,
  **eval** (``train_mode=False``): call ``opt.train()`` before the first step, as with the
  package. (The NumPy classes start in train mode; before the first step, with no ``z``, both
  points coincide and the mode moves nothing.)
- `check_train_mode`: a step needs every group in train mode (RuntimeError, nothing changed;
  the package checks the first group only).
- `advance`: a group's new scalars for a step in which none of its parameters has a gradient
  (the package advances ``k`` and the average's weights of every group at every step). Groups
  with gradients get theirs from the kernel's runner (``Spec.run``), once per group: every
  kernel call of a group reads the same checked snapshot of it.
- `set_mode`: ``train()``/``eval()``: every group not in that mode moves each parameter with a
  ``z`` by ``p.lerp_(z, w)`` (torch's lerp, as the package); a 16-bit parameter with a master
  copy moves its float32 master and is written from it rounded to nearest even (without a
  master, the move runs on a float32 copy of the 16-bit value).
- `copy_of_param`: a state buffer that starts as a copy of its parameter (``z``): the float32
  master of a 16-bit parameter where there is one, else the parameter (float32 for 16-bit).
"""
import torch

from . import _steps, _table
from . import _torch_mixed as _tm

__all__ = ["defaults", "check_train_mode", "advance", "set_mode", "copy_of_param"]


def defaults(spec):
    """The group-state entries of a torch optimizer's defaults (the mode key: False, eval)."""
    out = dict(spec.group_state)
    if spec.modes is not None:
        out[spec.modes.key] = False
    return out


def check_train_mode(spec, hyper, gi):
    if spec.modes is not None and not hyper[spec.modes.key]:
        raise RuntimeError(f"param_groups[{gi}]: Optimizer was not in train mode when step is "
                           "called. Please insert .train() and .eval() calls on the optimizer. "
                           "See documentation for details. Nothing was updated.")


def advance(spec, hyper, lr):
    """{name: new value} of the group state after a step of the group `hyper` (checked plain
    values) at learning rate `lr`, without a kernel call."""
    values = _steps.advance(_table.OPTIMIZERS[spec.name], hyper, lr)
    return {name: values[name] for name in spec.group_state if name in values}


@torch.no_grad()
def set_mode(opt, mode, hypers):
    """Move the parameters of every group not in `mode` ("train": to y, "eval": to x);
    `hypers`: every group's checked values (all checked before anything moves)."""
    spec = opt.spec
    key, name = spec.modes.key, spec.modes.state
    target = mode == "train"
    moves = [(group, spec.mode_weight(hyper, mode))
             for group, hyper in zip(opt.param_groups, hypers) if bool(hyper[key]) != target]
    for group, weight in moves:
        for p in group["params"]:
            st = opt.state.get(p)
            if st and st.get(name) is not None:
                _move(p, st, st[name], weight)
        group[key] = target


def _move(p, st, end, weight):
    if p.dtype not in _tm.LOW:
        p.lerp_(end.to(p.device), weight)
        return
    master = st.get("master")
    values = p.to(torch.float32) if master is None else master
    values.lerp_(end.to(values.device), weight)
    p.copy_(values)


def copy_of_param(p, st):
    """A new state buffer equal to parameter `p` (its master copy for a 16-bit parameter that
    has one), in the state's dtype, with p's memory format."""
    master = (st or {}).get("master")
    if p.dtype in _tm.LOW and master is not None:
        return master.detach().clone(memory_format=torch.preserve_format)
    return p.detach().to(dtype=_tm.state_dtype(p), copy=True,
                         memory_format=torch.preserve_format)
