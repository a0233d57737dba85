"""Stateful optimizers (torch.optim's names, keywords, defaults and state layout)."""
from .adadelta import Adadelta
from .adagrad import Adagrad
from .adam import Adam, AdamW
from .adamax import Adamax
from .base import Optimizer
from .newton import HessianShiftWarning, LineSearchWarning, Newton, NewtonStep
from .rmsprop import RMSprop
from .sgd import SGD
from .svrg import SVRG

__all__ = ["Optimizer", "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "Adamax",
           "Newton", "NewtonStep", "SVRG", "HessianShiftWarning", "LineSearchWarning"]
