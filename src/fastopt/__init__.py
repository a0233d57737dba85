"""fastopt: fused, in-place optimizer update rules in C/OpenMP for NumPy (and CuPy) arrays.

>>> import numpy as np, fastopt as fo
>>> w = np.zeros(3, np.float32)
>>> opt = fo.Adam([w], lr=1e-3)
>>> opt.step([np.ones(3, np.float32)])
True
>>> w.round(6)
array([-0.001, -0.001, -0.001], dtype=float32)

``import fastopt`` loads only the core (the optimizers, the functional forms, schedules, mixed
precision, nn, tricks): a few tens of milliseconds beyond NumPy. Every other submodule is
imported on first access as an attribute (PEP 562), with its optional dependencies:
``fastopt.problems`` (scipy), ``fastopt.demo`` and ``fastopt.viz`` (matplotlib, tqdm),
``fastopt.cuda`` (CuPy), ``fastopt.torch`` (PyTorch), ``fastopt.distributed`` (mpi4py), ...;
`fastopt.save` / `fastopt.load` import the checkpoint module on first use, and Newton's
Cholesky solve loads scipy's LAPACK on the first solve.
"""
import importlib as _importlib

from . import functional, nn, schedules, tricks
from ._kernels import get_num_threads, has_openmp, set_num_threads
from .flat import flatten
from .mixed import DynamicLossScale, MixedPrecision
from .nn import BatchNorm
from .optim import (SVRG, Adafactor, HessianShiftWarning, LineSearchWarning, Muon, Newton,
                    NewtonStep, Optimizer)
from .optim import LBFGS
from .optim.first_order import CLASSES as _CLASSES
from .optim import SparseAdam
from .sparse import RowSparseGrad
from .tricks import RandomBatchShapes, mixup, random_resize, smooth_labels, softmax_cross_entropy

__version__ = "0.1.0"

# the first-order optimizer classes, one per entry of the optimizer table (fastopt._table)
globals().update({_cls.__name__: _cls for _cls in _CLASSES.values()})

__all__ = [
    *(_cls.__name__ for _cls in _CLASSES.values()), "Optimizer",
    "functional", "save", "load", "flatten", "set_num_threads", "get_num_threads", "has_openmp",
    "schedules", "tricks", "nn", "BatchNorm", "mixup", "smooth_labels", "softmax_cross_entropy",
    "random_resize", "RandomBatchShapes", "MixedPrecision", "DynamicLossScale", "Newton",
    "NewtonStep", "SVRG", "Muon", "HessianShiftWarning", "LineSearchWarning", "problems", "datasets",
    "train", "convergence", "SparseAdam", "RowSparseGrad", "sparse", "Adafactor", "LBFGS",
]

#: every public submodule. Those not imported above are imported on first access (PEP 562).
#: `torch` and `cuda` are attributes only, not in __all__: ``from fastopt import *`` never binds
#: a name ``torch`` over the user's, and never imports PyTorch or CuPy.
_SUBMODULES = ("bench", "checkpoint", "cli", "convergence", "cuda", "datasets", "demo",
               "distributed", "flat", "functional", "mixed", "nn", "optim", "plot", "problems",
               "schedules", "sparse", "state_format", "torch", "train", "tricks", "viz")


#: public functions whose module is imported on their first access: name -> submodule
#: (checkpoint pulls hashlib/OpenSSL, tempfile and json: about half of the import time)
_LAZY_NAMES = {"save": "checkpoint", "load": "checkpoint"}


def __getattr__(name):
    """Import the submodule `name`, or the module of a function of _LAZY_NAMES, on first
    access (PEP 562)."""
    if name in _SUBMODULES:
        return _importlib.import_module(f"{__name__}.{name}")
    if name in _LAZY_NAMES:
        value = getattr(_importlib.import_module(f"{__name__}.{_LAZY_NAMES[name]}"), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def __dir__():
    return sorted(set(globals()) | set(_SUBMODULES) | set(_LAZY_NAMES))
