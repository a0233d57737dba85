"""Two CPU processes over gloo, for the tests of fastopt.torch under torch.distributed
(tests/test_torch_fsdp.py, tests/test_torch_tp.py).

``spawn(body, *args)`` runs ``body(mesh, rank, *args)`` in WORLD processes, each with one torch
thread, a gloo process group and a 1-D CPU device mesh over all of them; ``body`` must be a
module-level function (it is pickled). ``CASES``: the optimizers and options both suites train
with, against torch.optim's class of the same name.
"""
import datetime
import os
import socket

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")

if not (torch.distributed.is_available() and torch.distributed.is_gloo_available()):
    pytest.fail("this torch build has no torch.distributed with gloo (the CPU wheel has both)",
                pytrace=False)

import torch.distributed as dist  # noqa: E402
import torch.multiprocessing as mp  # noqa: E402

WORLD = 2
BARRIER_S = 60
CASES = {
    "Adam": {"lr": 1e-2, "betas": (0.8, 0.95), "weight_decay": 1e-2},
    "AdamW": {"lr": 1e-2, "weight_decay": 0.1, "amsgrad": True},
    "SGD": {"lr": 5e-2, "momentum": 0.9, "nesterov": True, "weight_decay": 1e-3},
}


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _entry(rank, port, body, args):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    torch.set_num_threads(1)
    dist.init_process_group("gloo", rank=rank, world_size=WORLD)
    try:
        from torch.distributed.device_mesh import init_device_mesh
        body(init_device_mesh("cpu", (WORLD,)), rank, *args)
    finally:
        # the ranks meet before either closes its connections (a worker aborted once,
        # "terminate called without an active exception", on a loaded machine); bounded, so
        # that a rank which failed between collectives does not hang the other
        try:
            dist.monitored_barrier(timeout=datetime.timedelta(seconds=BARRIER_S))
        finally:
            dist.destroy_process_group()


def spawn(body, *args):
    mp.spawn(_entry, args=(_free_port(), body, args), nprocs=WORLD, join=True)
