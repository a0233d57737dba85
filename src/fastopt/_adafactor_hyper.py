"""Adafactor's hyperparameter rules (torch's messages) and per-step scalars, shared by
fastopt.Adafactor and fastopt.functional.adafactor_ (a lower layer than fastopt.optim)."""
import numpy as np

from . import _validate
from ._validate import boolean, learning_rate, nonneg, optional_boolean, real

__all__ = ["RULES", "DEFAULTS", "adafactor_scalars", "eps1_for"]


def _beta2_decay(name, value):
    """A finite number <= 0 (torch's message when positive)."""
    v = real(name, value)
    if not v <= 0.0:
        raise ValueError(f"beta2_decay should be <= 0 but is: {v}")
    return v


def _eps(name, value):
    """The pair (eps1, eps2): eps1 None (the dtype's machine epsilon) or a finite number
    >= 0, eps2 a finite number >= 0; torch's messages when negative."""
    if isinstance(value, np.ndarray) or not isinstance(value, (tuple, list)) or len(value) != 2:
        raise TypeError(f"{name} must be a pair (eps1, eps2): eps1 None or a number >= 0, "
                        f"eps2 a number >= 0, got {_validate._kind(value)}")
    e1, e2 = value
    if e1 is not None:
        e1 = real(f"{name}[0]", e1)
        if not e1 >= 0.0:
            raise ValueError(f"epsilon1 should be >= 0 but is: {e1}")
    e2 = real(f"{name}[1]", e2)
    if not e2 >= 0.0:
        raise ValueError(f"epsilon2 should be >= 0 but is: {e2}")
    return (e1, e2)


def _clip_threshold(name, value):
    """A finite number >= 1 (torch's message otherwise)."""
    v = real(name, value)
    if not v >= 1.0:
        raise ValueError(f"Clipping threshold d should be >= 1 but is: {v}")
    return v


def eps1_for(eps1, dtype):
    """eps1, or the machine epsilon of `dtype` when eps1 is None (torch's default)."""
    return float(np.finfo(dtype).eps) if eps1 is None else float(eps1)


def adafactor_scalars(step, lr, beta2_decay, weight_decay):
    """(one_minus_beta2, rho, decay) of 1-based `step`, as torch computes them:
    ``step ** beta2_decay``, ``min(lr, 1 / step ** 0.5)`` and ``1 - lr * weight_decay``."""
    t = float(step)
    return t ** beta2_decay, min(lr, 1 / (t ** 0.5)), 1 - lr * weight_decay


DEFAULTS = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                foreach=None, maximize=False)
RULES = dict(lr=learning_rate, beta2_decay=_beta2_decay, eps=_eps, d=_clip_threshold,
             weight_decay=nonneg, foreach=optional_boolean, maximize=boolean)
