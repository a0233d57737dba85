"""Crafted checkpoints under mpiexec (usage `crafted.py DIR`): rank 0 writes every crafted file
of tests/crafted_checkpoints.py into DIR; each is loaded by a DistributedOptimizer and by a
ShardedOptimizer. Every load must raise on every rank, leave the parameters and state as they
were, and run no code (the payloads would create DIR/marker).
"""
import os
import sys
from pathlib import Path

import numpy as np
from mpi4py import MPI

import fastopt as fo
from fastopt.distributed import DistributedOptimizer, ShardedOptimizer
from common import report

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from crafted_checkpoints import crafted_files  # noqa: E402

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
directory = Path(sys.argv[1])
marker = directory / "marker"
files = crafted_files(directory, marker) if rank == 0 else None
names = comm.bcast(sorted(files) if rank == 0 else None, root=0)

results = {}
for name in names:
    path = directory / f"{name}.npz"
    for kind in ("distributed", "sharded"):
        p = np.linspace(-1, 1, 5)
        if kind == "distributed":
            opt = DistributedOptimizer(fo.Adam([p], lr=0.01), comm)
        else:
            opt = ShardedOptimizer(fo.Adam, [p], comm, lr=0.01)
        opt.step([np.ones(5)])
        before = (p.tobytes(), repr(opt.state_dict()))
        try:
            opt.load(path)
            outcome = "loaded"
        except ValueError as e:
            outcome = f"ValueError: {e}"
        except Exception as e:  # noqa: BLE001 - reported, the test decides
            outcome = f"{type(e).__name__}: {e}"
        results[f"{kind}/{name}"] = {
            "outcome": outcome,
            "unchanged": (p.tobytes(), repr(opt.state_dict())) == before,
        }
comm.Barrier()
report(rank, results=results, marker_exists=os.path.exists(marker))
