"""fastopt.torch under tensor parallelism: DTensor parameters placed Shard(0), Shard(1) and
Replicate on 1-D and 2-D meshes, 2 CPU processes over gloo (as tests/test_torch_fsdp.py).

- A float64 MLP parallelized by torch's ``parallelize_module`` (``ColwiseParallel``: weight and
  bias Shard(0); ``RowwiseParallel``: weight Shard(1), bias Replicate) trains 12 steps with
  fastopt.torch's Adam, AdamW and SGD as with torch.optim's classes (1e-12), the state kept
  as DTensors placed like the parameters, and a torch.distributed.checkpoint saved after 6
  steps reloads into a fresh model and optimizer and continues identically.
- bfloat16 parameters updated in 16 bits with stochastic rounding (``master_weights=False,
  rounding="stochastic"``): the sharded run equals the unsharded one bit for bit, on a 1-D
  mesh and on 2-D meshes (2, 1) and (1, 2), for Shard(0), Shard(1), Shard(2) of a 3-D tensor,
  (Shard(0), Shard(1)) and Replicate; and differs from rounding to nearest (the noise acts).
- ``noise_index`` (the map from a shard's element to the whole tensor's) against the indices
  themselves, for every box of a few shapes; the shards it cannot map raise ValueError.
"""
import itertools

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
from gloo import CASES, WORLD, spawn  # noqa: E402

from fastopt import _torch_dtensor  # noqa: E402
from fastopt import torch as fot  # noqa: E402

import torch.distributed as dist  # noqa: E402

STEPS = 12


# ------------------------------------------------------------------------ noise_index (no dist)
def _boxes(shape):
    """Every box (offset, local shape) of a tensor of `shape` whose extents are nonzero."""
    ranges = [[(o, n) for o in range(size) for n in range(1, size - o + 1)] for size in shape]
    for combo in itertools.product(*ranges):
        yield tuple(o for o, _ in combo), tuple(n for _, n in combo)


@pytest.mark.parametrize("shape", [(7,), (3, 4), (2, 3, 4), (1, 3, 2)])
def test_noise_index_maps_shard_elements_to_the_whole(shape):
    whole = np.arange(int(np.prod(shape))).reshape(shape)
    mapped = refused = 0
    for offset, local in _boxes(shape):
        want = whole[tuple(slice(o, o + n) for o, n in zip(offset, local))].ravel()
        try:
            index = _torch_dtensor.noise_index(shape, local, offset)
        except ValueError:
            refused += 1
            assert not _one_level(want), (offset, local)    # refused only where none exists
            continue
        mapped += 1
        if index is None:
            assert local == shape
            continue
        block, stride, base = index
        e = np.arange(want.size)
        assert np.array_equal(base + (e // block) * stride + e % block, want), (offset, local)
    assert mapped > 0
    assert refused > 0 or shape != (2, 3, 4)


def _one_level(indices):
    """Whether sorted `indices` are runs of one length `b` of consecutive integers, each run
    starting a fixed stride after the previous one (what one level of blocks can index)."""
    b = 1
    while b < len(indices) and indices[b] == indices[b - 1] + 1:
        b += 1
    if b == len(indices):
        return True
    stride = indices[b] - indices[0]
    e = np.arange(len(indices))
    return bool(np.array_equal(indices[0] + (e // b) * stride + e % b, indices))


def test_noise_index_of_uneven_and_two_dimension_shards():
    # rows 2..3 and columns 1..2 of a 4 x 5 tensor: one level of blocks of 2, stride 5
    assert _torch_dtensor.noise_index((4, 5), (2, 2), (2, 1)) == (2, 5, 11)
    assert _torch_dtensor.noise_index((4, 5), (0, 5), (4, 0)) is None       # an empty shard
    with pytest.raises(ValueError, match="one level of blocks"):
        _torch_dtensor.noise_index((2, 3, 4), (2, 2, 2), (0, 1, 1))


# ------------------------------------------------------------------------------- workers
def _tp_model(seed, mesh):
    from torch.distributed.tensor.parallel import (ColwiseParallel, RowwiseParallel,
                                                   parallelize_module)
    torch.manual_seed(seed)
    model = torch.nn.Sequential(torch.nn.Linear(6, 10), torch.nn.Tanh(),
                                torch.nn.Linear(10, 3)).double()
    return parallelize_module(model, mesh, {"0": ColwiseParallel(), "2": RowwiseParallel()})


def _batches():
    g = torch.Generator().manual_seed(5)                  # the same data on every rank
    return [(torch.randn(8, 6, generator=g, dtype=torch.float64),
             torch.randn(8, 3, generator=g, dtype=torch.float64)) for _ in range(STEPS)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _full(model):
    return [p.full_tensor() for p in model.parameters()]


def _tensor_parallel(mesh, name, path):
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.tensor import DTensor, Replicate, Shard
    kwargs, batches = CASES[name], _batches()
    model, ref_model = _tp_model(0, mesh), _tp_model(0, mesh)
    placements = [tuple(p.placements) for p in model.parameters()]
    assert placements == [(Shard(0),), (Shard(0),), (Shard(1),), (Replicate(),)], placements
    opt = getattr(fot, name)(model.parameters(), **kwargs)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), **kwargs)
    _train(model, opt, batches)
    _train(ref_model, ref_opt, batches)
    full = _full(model)
    assert any(not torch.equal(u, v) for u, v in zip(full, _full(_tp_model(0, mesh))))
    for k, (u, v) in enumerate(zip(full, _full(ref_model))):
        assert (u - v).abs().max().item() <= 1e-12, f"{name} parameter {k}"
    for p, q in zip(model.parameters(), ref_model.parameters()):
        for key, value in opt.state[p].items():
            if key == "step":
                continue
            assert isinstance(value, DTensor) and value.placements == p.placements, key
            ref = ref_opt.state[q][key].full_tensor()
            assert (value.full_tensor() - ref).abs().max().item() <= 1e-12, (name, key)
    # distributed checkpoint after half the steps, reloaded into other weights: as uninterrupted
    model = _tp_model(0, mesh)
    opt = getattr(fot, name)(model.parameters(), **kwargs)
    _train(model, opt, batches[:STEPS // 2])
    dcp.save({"model": get_model_state_dict(model),
              "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)
    dist.barrier()
    fresh = _tp_model(7, mesh)
    fresh_opt = getattr(fot, name)(fresh.parameters(), **kwargs)
    sd = {"model": get_model_state_dict(fresh),
          "optim": get_optimizer_state_dict(fresh, fresh_opt)}
    dcp.load(sd, checkpoint_id=path)
    set_model_state_dict(fresh, sd["model"])
    set_optimizer_state_dict(fresh, fresh_opt, sd["optim"])
    _train(fresh, fresh_opt, batches[STEPS // 2:])
    for k, (u, v) in enumerate(zip(_full(fresh), full)):
        assert torch.equal(u, v), f"{name}: parameter {k} differs after reloading"


SHAPES = [(6, 10), (10, 6), (4, 6, 5), (7,)]


def _bf16_run(params, rounding, steps=6):
    """6 AdamW steps on bfloat16 `params` (DTensors or plain) with the same gradients on every
    rank; returns the parameters as full plain tensors."""
    opt = fot.AdamW(params, lr=3e-2, weight_decay=0.1, master_weights=False,
                    rounding=rounding, seed=11)
    g = torch.Generator().manual_seed(9)
    for _ in range(steps):
        for p in params:
            full = torch.randn(p.shape, generator=g).bfloat16()
            if _torch_dtensor.is_dtensor(p):
                from torch.distributed.tensor import distribute_tensor
                p.grad = distribute_tensor(full, p.device_mesh, p.placements)
            else:
                p.grad = full
        opt.step()
    return [p.full_tensor() if _torch_dtensor.is_dtensor(p) else p.detach() for p in params]


def _stochastic(mesh, placements):
    """Sharded == unsharded, bit for bit, with stochastic rounding."""
    from torch.distributed.tensor import distribute_tensor
    g = torch.Generator().manual_seed(3)
    init = [torch.randn(s, generator=g).bfloat16() for s in SHAPES]
    plain = [torch.nn.Parameter(t.clone()) for t in init]
    sharded = [torch.nn.Parameter(distribute_tensor(t.clone(), mesh, pl))
               for t, pl in zip(init, placements)]
    want = _bf16_run(plain, "stochastic")
    got = _bf16_run(sharded, "stochastic")
    for k, (u, v) in enumerate(zip(got, want)):
        assert torch.equal(u, v), f"parameter {k} placed {placements[k]} differs from unsharded"
    nearest = _bf16_run([torch.nn.Parameter(t.clone()) for t in init], "nearest")
    assert any(not torch.equal(u, v) for u, v in zip(want, nearest))


def _worker(mesh, rank, name, path):
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.tensor import Replicate, Shard
    if name == "stochastic":
        _stochastic(mesh, [(Shard(0),), (Shard(1),), (Shard(2),), (Replicate(),)])
        _stochastic(mesh, [(Shard(1),), (Replicate(),), (Shard(1),), (Shard(0),)])
        for shape in ((WORLD, 1), (1, WORLD)):
            mesh2 = init_device_mesh("cpu", shape)
            two = (Shard(0), Shard(1))
            _stochastic(mesh2, [two, two, (Shard(0), Shard(2)), (Replicate(), Shard(0))])
    else:
        _tensor_parallel(mesh, name, path)


@pytest.mark.parametrize("name", [*sorted(CASES), "stochastic"])
def test_tensor_parallel(name, tmp_path):
    spawn(_worker, name, str(tmp_path / "ckpt"))
