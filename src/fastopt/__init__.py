"""fastopt: fused, in-place optimizer update rules in C/OpenMP for NumPy (and CuPy) arrays.

>>> import numpy as np, fastopt as fo
>>> w = np.zeros(3, np.float32)
>>> opt = fo.Adam([w], lr=1e-3)
>>> opt.step([np.ones(3, np.float32)])
True
>>> w.round(6)
array([-0.001, -0.001, -0.001], dtype=float32)
"""
from . import convergence, datasets, functional, nn, problems, schedules, train, tricks
from ._kernels import get_num_threads, has_openmp, set_num_threads
from .checkpoint import load, save
from .flat import flatten
from .mixed import DynamicLossScale, MixedPrecision
from .nn import BatchNorm
from .optim import (SGD, SVRG, Adadelta, Adagrad, Adam, Adamax, AdamW, HessianShiftWarning,
                    LineSearchWarning, Newton, NewtonStep, Optimizer, RMSprop)
from .tricks import RandomBatchShapes, mixup, random_resize, smooth_labels, softmax_cross_entropy

__version__ = "0.1.0"

__all__ = [
    "SGD", "Adagrad", "RMSprop", "Adam", "AdamW", "Adadelta", "Adamax", "Optimizer",
    "functional", "save", "load", "flatten", "set_num_threads", "get_num_threads", "has_openmp",
    "schedules", "tricks", "nn", "BatchNorm", "mixup", "smooth_labels", "softmax_cross_entropy",
    "random_resize", "RandomBatchShapes", "MixedPrecision", "DynamicLossScale", "Newton",
    "NewtonStep", "SVRG", "HessianShiftWarning", "LineSearchWarning", "problems", "datasets",
    "train", "convergence",
]
