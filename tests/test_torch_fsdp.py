"""fastopt.torch under torch's own sharded training: FSDP2 (``fully_shard``) on 2 CPU processes
(gloo), parameters and state as DTensors, checkpoints through torch.distributed.checkpoint.

Each test spawns 2 processes that train a float64 MLP 20 steps with a fastopt.torch optimizer
and with torch.optim's class of the same name from the same initial weights and data, and
compare the gathered parameters and state; then save a distributed checkpoint after 10 steps,
load it into a fresh model and optimizer and check that training continues exactly as the
uninterrupted run.
"""
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
from gloo import CASES, spawn  # noqa: E402

from fastopt import torch as fot  # noqa: E402

import torch.distributed as dist  # noqa: E402

STEPS = 20


def _model(seed, mesh):
    from torch.distributed.fsdp import fully_shard
    torch.manual_seed(seed)
    # uneven shards (13, 5 rows over 2 ranks) and an empty one (1 row: rank 1 holds none)
    model = torch.nn.Sequential(torch.nn.Linear(7, 13), torch.nn.Tanh(), torch.nn.Linear(13, 5),
                                torch.nn.Tanh(), torch.nn.Linear(5, 1)).double()
    for layer in model:
        if isinstance(layer, torch.nn.Linear):
            fully_shard(layer, mesh=mesh)
    fully_shard(model, mesh=mesh)
    return model


def _batches(rank):
    g = torch.Generator().manual_seed(1000 + rank)        # each rank its own data
    return [(torch.randn(16, 7, generator=g, dtype=torch.float64),
             torch.randn(16, 1, generator=g, dtype=torch.float64)) for _ in range(STEPS)]


def _train(model, opt, batches):
    for x, y in batches:
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x), y).backward()
        opt.step()


def _full(model):
    return [p.full_tensor() for p in model.parameters()]


def _close(a, b, what):
    for k, (u, v) in enumerate(zip(a, b)):
        err = (u - v).abs().max().item() if u.numel() else 0.0
        assert err <= 1e-12, f"{what}[{k}]: max |difference| {err}"


def _check_state(opt, model, ref_opt, ref_model, name):
    from torch.distributed.tensor import DTensor
    for p, q in zip(model.parameters(), ref_model.parameters()):
        st, ref = opt.state[p], ref_opt.state[q]
        assert set(st) == set(ref), (sorted(st), sorted(ref))
        for key, value in st.items():
            if key == "step":                 # a plain 0-d tensor, as torch.optim keeps it
                assert type(value) is torch.Tensor and value.dim() == 0
                assert value.item() == ref[key].item() == STEPS
                continue
            assert isinstance(value, DTensor), (name, key, type(value))
            assert value.device_mesh == p.device_mesh and value.placements == p.placements
            _close([value.full_tensor()], [ref[key].full_tensor()], f"{name} state {key}")


def _checkpoint(mesh, name, kwargs, batches, expected, path):
    """Save after 10 steps, reload into a fresh model and optimizer, finish: as uninterrupted."""
    import torch.distributed.checkpoint as dcp
    from torch.distributed.checkpoint.state_dict import (get_model_state_dict,
                                                         get_optimizer_state_dict,
                                                         set_model_state_dict,
                                                         set_optimizer_state_dict)
    cls = getattr(fot, name)
    model = _model(0, mesh)
    opt = cls(model.parameters(), **kwargs)
    _train(model, opt, batches[:STEPS // 2])
    dcp.save({"model": get_model_state_dict(model),
              "optim": get_optimizer_state_dict(model, opt)}, checkpoint_id=path)
    dist.barrier()
    fresh = _model(7, mesh)                   # other weights: the checkpoint must set them
    fresh_opt = cls(fresh.parameters(), **kwargs)
    sd = {"model": get_model_state_dict(fresh),
          "optim": get_optimizer_state_dict(fresh, fresh_opt)}
    dcp.load(sd, checkpoint_id=path)
    set_model_state_dict(fresh, sd["model"])
    set_optimizer_state_dict(fresh, fresh_opt, sd["optim"])
    if fresh_opt.spec.counts_steps:          # the counts come back from the checkpoint
        for p in fresh.parameters():
            assert fresh_opt.state[p]["step"].item() == STEPS // 2
    _train(fresh, fresh_opt, batches[STEPS // 2:])
    for k, (u, v) in enumerate(zip(_full(fresh), expected)):
        assert torch.equal(u, v), f"{name}: parameter {k} differs after reloading"


def _placements_refused(mesh):
    """A DTensor parameter placed Partial, a gradient placed otherwise than its parameter and a
    plain gradient of a DTensor parameter are refused, naming the tensor; nothing changes."""
    from torch.distributed.tensor import DTensor, Partial, Replicate, Shard
    ones = torch.ones(2, dtype=torch.float64)
    partial = torch.nn.Parameter(DTensor.from_local(ones, mesh, [Partial()], run_check=False))
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\] is a DTensor "
                                        r"with placement .*Partial"):
        fot.Adam([partial], lr=0.1)
    p = torch.nn.Parameter(DTensor.from_local(ones.clone(), mesh, [Shard(0)], run_check=False))
    opt = fot.Adam([p], lr=0.1)
    for grad, why in ((DTensor.from_local(torch.ones(4, dtype=torch.float64), mesh,
                                          [Replicate()], run_check=False), "placements"),
                      (torch.ones(4, dtype=torch.float64), "plain")):
        p.grad = grad
        with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[0\]\.grad .*" + why):
            opt.step()
        assert torch.equal(p.to_local(), ones) and not opt.state


def _bf16_masters(mesh, rank):
    """bfloat16 FSDP2 parameters: float32 state and master copies as DTensors placed like
    their parameters, each parameter its master rounded, through a state_dict round trip."""
    from torch.distributed.checkpoint.state_dict import (get_optimizer_state_dict,
                                                         set_optimizer_state_dict)
    from torch.distributed.tensor import DTensor
    model = _model(0, mesh).bfloat16()
    opt = fot.AdamW(model.parameters(), lr=1e-2)
    for k, (x, y) in enumerate(_batches(rank)[:4]):
        if k == 2:
            set_optimizer_state_dict(model, opt, get_optimizer_state_dict(model, opt))
        opt.zero_grad()
        torch.nn.functional.mse_loss(model(x.bfloat16()).float(), y.float()).backward()
        opt.step()
    for p in model.parameters():
        for key in ("master", "exp_avg", "exp_avg_sq"):
            t = opt.state[p][key]
            assert isinstance(t, DTensor) and t.placements == p.placements, (key, type(t))
            assert t.dtype == torch.float32, (key, t.dtype)
        assert torch.equal(opt.state[p]["master"].full_tensor().bfloat16(), p.full_tensor())


def _worker(mesh, rank, name, path):
    kwargs = CASES[name]
    batches = _batches(rank)
    model, ref_model = _model(0, mesh), _model(0, mesh)
    opt = getattr(fot, name)(model.parameters(), **kwargs)
    ref_opt = getattr(torch.optim, name)(ref_model.parameters(), **kwargs)
    _train(model, opt, batches)
    _train(ref_model, ref_opt, batches)
    full, ref_full = _full(model), _full(ref_model)
    assert any(not torch.equal(u, v) for u, v in zip(full, _full(_model(0, mesh))))
    _close(full, ref_full, f"{name} parameters")
    _check_state(opt, model, ref_opt, ref_model, name)
    _checkpoint(mesh, name, kwargs, batches, full, path)
    _placements_refused(mesh)
    if name == "AdamW":
        _bf16_masters(mesh, rank)


@pytest.mark.parametrize("name", sorted(CASES))
def test_fsdp2_matches_torch_and_checkpoints(name, tmp_path):
    spawn(_worker, name, str(tmp_path / "ckpt"))
