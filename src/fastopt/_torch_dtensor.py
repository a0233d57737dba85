"""DTensor parameters in fastopt.torch (sharded training: FSDP2's ``fully_shard``, tensor
parallel).

Every rule of the fastopt.torch optimizers is elementwise, so a step on a DTensor parameter
is the kernel run on each rank's local shard: ``p.to_local()``, ``p.grad.to_local()`` and the
local shards of the state. The state buffers are DTensors on the parameter's device mesh with
its placements (made by ``torch.full_like`` of the parameter), so
``torch.distributed.checkpoint`` saves and loads them as it does torch.optim's; ``'step'`` is a
plain 0-d tensor, as torch.optim keeps it. Placements other than ``Shard`` and ``Replicate``
(``Partial``: pending reductions), and a gradient or state tensor on another mesh or with
other placements than its parameter's, raise TypeError naming the tensor. Any mesh (1-D or
2-D) and any Shard/Replicate placements will do (FSDP2's Shard(0); tensor parallel's
Shard(0) for column-wise, Shard(1) for row-wise layers, Replicate for their biases): every rule
of fastopt.torch is elementwise (one per element of rules.h), so none needs the whole tensor.

Stochastic rounding (bfloat16, ``master_weights=False``, ``rounding="stochastic"``) draws
noise keyed by the element's index; on a shard that index is mapped to the element's index in
the whole tensor (``noise_index``: the local shard's global offset), so a sharded run rounds
every element as the unsharded run does, bit for bit, whatever the sharding. A shard whose
elements cannot be mapped by one level of blocks (cut in two dimensions that are not the last
cut one and the one just before the full ones, e.g. Shard(1) and Shard(2) of a 3-D tensor
with more than one entry in dimension 0) raises ValueError for that rounding only.

Nothing here imports torch.distributed: a DTensor exists only once
``torch.distributed.tensor`` is imported, so its absence from ``sys.modules`` means no tensor
is one.
"""
import sys

import torch

__all__ = ["is_dtensor", "local", "check", "like", "noise_index", "shard_noise_index"]


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


def noise_index(global_shape, local_shape, offset):
    """(block, stride, base) such that element e of a C-ordered shard of shape `local_shape`
    at `offset` (per dimension) in a C-ordered tensor of shape `global_shape` is element
    ``base + (e // block) * stride + e % block`` of the whole; None when the shard is the whole
    tensor or empty. ValueError when no such triple exists (see the module docstring)."""
    shape, lshape, off = tuple(global_shape), tuple(local_shape), tuple(offset)
    if lshape == shape or 0 in lshape:
        return None
    gs, step = [0] * len(shape), 1                  # the whole tensor's C strides
    for d in reversed(range(len(shape))):
        gs[d] = step
        step *= shape[d]
    base = sum(o * g for o, g in zip(off, gs))
    dims = [d for d, n in enumerate(lshape) if n > 1]
    # a shard's elements are the sums of j_d * gs[d] over its dimensions of more than one
    # entry; runs of consecutive elements (the blocks) come from the innermost dimensions as
    # long as each steps over the whole of the next, and the blocks' starts likewise
    k = len(dims)
    if dims and gs[dims[-1]] == 1:
        k -= 1
        while k > 0 and gs[dims[k - 1]] == lshape[dims[k]] * gs[dims[k]]:
            k -= 1
    block = 1
    for d in dims[k:]:
        block *= lshape[d]
    outer = dims[:k]
    if not outer:
        return block, block, base
    if any(gs[a] != lshape[b] * gs[b] for a, b in zip(outer, outer[1:])):
        raise ValueError(f"a shard of shape {lshape} at {off} of a tensor of shape {shape} "
                         "has no element index of one level of blocks")
    return block, gs[outer[-1]], base


def shard_noise_index(p, what):
    """noise_index of DTensor `p`'s local shard on this rank (None for a plain tensor);
    ValueError naming `what` when the shard cannot be keyed."""
    if not is_dtensor(p):
        return None
    from torch.distributed.tensor._utils import compute_local_shape_and_global_offset
    lshape, offset = compute_local_shape_and_global_offset(p.shape, p.device_mesh, p.placements)
    try:
        return noise_index(p.shape, lshape, offset)
    except ValueError as e:
        raise ValueError(f"{what}: {e}, so stochastic rounding on it would depend on the "
                         f"sharding ({tuple(p.placements)}); use rounding='nearest' or "
                         "master_weights=True for it") from None
