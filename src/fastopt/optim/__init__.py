"""Stateful optimizers (torch.optim's names, keywords, defaults and state layout).

The first-order classes (SGD, Adam, ...) are made from the optimizer table by
:mod:`fastopt.optim.first_order`; the others (Newton, SVRG, Muon, SparseAdam, Adafactor,
LBFGS) are written in their own modules.
"""
from . import first_order
from .base import Optimizer
from .first_order import CLASSES
from .newton import HessianShiftWarning, LineSearchWarning, Newton, NewtonStep
from .svrg import SVRG
from .muon import Muon
from .sparse_adam import SparseAdam
from .adafactor import Adafactor
from .lbfgs import LBFGS

globals().update({cls.__name__: cls for cls in CLASSES.values()})

__all__ = ["Optimizer", *(cls.__name__ for cls in CLASSES.values()),
           "Newton", "NewtonStep", "SVRG", "HessianShiftWarning", "LineSearchWarning",
           "Muon", "SparseAdam", "Adafactor", "LBFGS"]
