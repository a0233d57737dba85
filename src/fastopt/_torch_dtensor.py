"""DTensor parameters in fastopt.torch (sharded training: FSDP2's ``fully_shard``, tensor
parallel).

Every rule of the fastopt.torch optimizers is elementwise, so a step on a DTensor parameter
is the kernel run on each rank's local shard: ``p.to_local()``, ``p.grad.to_local()`` and the
local shards of the state. The state buffers are DTensors on the parameter's device mesh with
its placements (made by ``torch.full_like`` of the parameter), so
``torch.distributed.checkpoint`` saves and loads them as it does torch.optim's; ``'step'`` is a
plain 0-d tensor, as torch.optim keeps it. Placements other than ``Shard`` and ``Replicate``
(``Partial``: pending reductions), and a gradient or state tensor on another mesh or with
other placements than its parameter's, raise TypeError naming the tensor.

Nothing here imports torch.distributed: a DTensor exists only once
``torch.distributed.tensor`` is imported, so its absence from ``sys.modules`` means no tensor
is one.
"""
import sys

import torch

__all__ = ["is_dtensor", "local", "check", "like"]


def _dtensor_type():
    mod = sys.modules.get("torch.distributed.tensor")
    return getattr(mod, "DTensor", None)


def is_dtensor(t):
    """Whether `t` is a torch.distributed DTensor (an nn.Parameter of one included)."""
    cls = _dtensor_type()
    return cls is not None and isinstance(t, cls)


def local(t):
    """The local shard of a DTensor (the same tensor object at every call: read under
    no_grad, as in a step); any other tensor as it is."""
    if not is_dtensor(t):
        return t
    with torch.no_grad():
        return t.to_local()


def _placements_ok(t, what):
    from torch.distributed.tensor import Replicate, Shard
    for pl in t.placements:
        if not isinstance(pl, (Shard, Replicate)):
            raise TypeError(f"{what} is a DTensor with placement {pl}; fastopt.torch updates "
                            "DTensors placed by Shard or Replicate only (reduce a Partial "
                            "tensor first, e.g. with .redistribute())")


def check(t, what, like=None):
    """Check a DTensor `t` (TypeError naming `what`): Shard/Replicate placements and, with
    `like` (its parameter), a DTensor on the same mesh with the same placements. A plain
    tensor with a DTensor `like`, or a DTensor with a plain `like`, is refused too."""
    dt = is_dtensor(t)
    if like is not None and dt != is_dtensor(like):
        kind = "a DTensor" if dt else f"a plain {type(t).__name__}"
        other = "a DTensor" if not dt else "a plain tensor"
        raise TypeError(f"{what} is {kind} but its parameter is {other}; a DTensor parameter "
                        "needs a DTensor gradient and state on its mesh with its placements")
    if not dt:
        return
    _placements_ok(t, what)
    if like is not None:
        if t.device_mesh != like.device_mesh or tuple(t.placements) != tuple(like.placements):
            raise TypeError(f"{what} has placements {tuple(t.placements)} on "
                            f"{t.device_mesh}, its parameter {tuple(like.placements)} on "
                            f"{like.device_mesh}; fastopt.torch updates local shards, which "
                            "must correspond")
        if t.shape != like.shape:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, expected "
                             f"{tuple(like.shape)} like its parameter")


def like(local_tensor, p):
    """A DTensor of parameter `p`'s mesh, placements and global shape over `local_tensor` (a
    plain tensor for a plain `p`)."""
    if not is_dtensor(p):
        return local_tensor
    from torch.distributed.tensor import DTensor
    return DTensor.from_local(local_tensor, p.device_mesh, p.placements, run_check=False,
                              shape=p.shape, stride=p.stride())
