"""Muon's hyperparameter rules, learning-rate adjustment and work buffers, shared by
`fastopt.optim.Muon`, `fastopt.functional.muon_` and `fastopt.torch.Muon`.

The step itself is `fastopt._muon.step` (Cython over scipy's BLAS); it is imported on the
first step, so that ``import fastopt`` does not load scipy.
"""
import math

import numpy as np

from ._validate import boolean, integer, learning_rate, nonneg, real

#: torch.optim.Muon's defaults (Keller Jordan's coefficients)
DEFAULT_NS_COEFFICIENTS = (3.4445, -4.7750, 2.0315)
DEFAULTS = dict(lr=1e-3, weight_decay=0.1, momentum=0.95, nesterov=True,
                ns_coefficients=DEFAULT_NS_COEFFICIENTS, eps=1e-7, ns_steps=5,
                adjust_lr_fn=None, ns_dtype=None)
ADJUST_LR_FNS = (None, "original", "match_rms_adamw")
NS_DTYPES = (None, "float32", "float64")
MAX_NS_STEPS = 99     # torch: "Number of steps must be less than 100"


def ns_coefficients(name, value):
    """(a, b, c): three finite reals, as a tuple of floats."""
    if isinstance(value, (str, bytes)) or not hasattr(value, "__len__"):
        raise TypeError(f"{name} must be a tuple of three numbers (a, b, c), got "
                        f"{type(value).__name__}")
    if len(value) != 3:
        raise ValueError(f"Coefficients must be a tuple of exactly 3 values ({name} has "
                         f"{len(value)})")
    return tuple(real(f"{name}[{i}]", v) for i, v in enumerate(value))


def ns_steps(name, value):
    """An integer in [0, 99] (torch refuses 100 and more)."""
    raw = getattr(value, "item", lambda: value)() if np.ndim(value) == 0 else value
    if isinstance(raw, (int, np.integer)) and not isinstance(raw, (bool, np.bool_)) \
            and raw > MAX_NS_STEPS:
        raise ValueError(f"Number of steps must be less than 100 for computational efficiency "
                         f"({name} = {raw})")
    return integer(name, value, low=0, high=MAX_NS_STEPS)


def adjust_lr_fn(name, value):
    """None, "original" or "match_rms_adamw" (torch's error text otherwise)."""
    if value is not None and not isinstance(value, str):
        raise TypeError(f"{name} must be None, 'original' or 'match_rms_adamw', got "
                        f"{type(value).__name__}")
    if value not in ADJUST_LR_FNS:
        raise ValueError(f"Adjust learning rate function {value} is not supported ({name} must "
                         "be None, 'original' or 'match_rms_adamw')")
    return value


def ns_dtype(name, value):
    """None (torch's bfloat16 iteration), "float32" or "float64"; numpy dtypes float32 and
    float64 are read as their names."""
    if value is not None and not isinstance(value, str):
        try:
            dt = np.dtype(value)
        except TypeError:
            raise TypeError(f"{name} must be None, 'float32' or 'float64', got "
                            f"{type(value).__name__}") from None
        value = dt.name
    if value not in NS_DTYPES:
        raise ValueError(f"{name} must be None (bfloat16, as torch), 'float32' or 'float64', "
                         f"got {value!r}")
    return value


RULES = dict(lr=learning_rate, weight_decay=nonneg, momentum=nonneg, nesterov=boolean,
             ns_coefficients=ns_coefficients, eps=nonneg, ns_steps=ns_steps,
             adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)


def check_2d(p, what):
    if p.ndim != 2:
        raise ValueError(f"Muon only supports 2D parameters whereas we found a parameter with "
                         f"size: {tuple(p.shape)} ({what}; optimize it with AdamW, see "
                         "fastopt.optim.muon.split_params)")


def adjusted_lr(lr, fn, shape):
    """torch's _adjust_lr: lr sqrt(max(1, A/B)) ("original", None) or lr 0.2 sqrt(max(A, B))
    ("match_rms_adamw"), A, B = the parameter's rows and columns."""
    rows, cols = shape[:2]
    if fn is None or fn == "original":
        ratio = math.sqrt(max(1, rows / cols)) if cols else 1.0
    else:
        ratio = 0.2 * math.sqrt(max(rows, cols))
    return lr * ratio


def mode_of(dtype_name):
    """fastopt._muon's mode for an ns_dtype value."""
    return {None: 0, "float32": 1, "float64": 2}[dtype_name]


def work_dtype(dtype_name):
    return np.float64 if dtype_name == "float64" else np.float32


def workspace_elements(shapes):
    """Elements of one work buffer that serves every parameter of `shapes` in turn."""
    best = 0
    for m, n in shapes:
        k = min(m, n)
        best = max(best, 2 * m * n + 2 * k * k)
    return best


class Workspaces:
    """One work buffer per iteration dtype, grown (rarely: new parameters) to the largest
    parameter's need and reused by every step."""

    def __init__(self):
        self._bufs = {}

    def get(self, dtype_name, shapes):
        dt = np.dtype(work_dtype(dtype_name))
        need = max(1, workspace_elements(shapes))
        buf = self._bufs.get(dt)
        if buf is None or buf.size < need:
            buf = np.empty(need, dtype=dt)
            self._bufs[dt] = buf
        return buf


def step_one(kernel, p, g, buf, work, *, lr, weight_decay, momentum, nesterov,
             ns_coefficients, eps, ns_steps, adjust_lr_fn, ns_dtype, decay=None,
             step_size=None):
    """One parameter's step through fastopt._muon (all arguments checked by the caller).
    `decay` (1 - lr wd) and `step_size` (the adjusted lr) default to their float64 values
    (fastopt.torch passes those of a tensor lr, computed as torch does)."""
    a, b, c = ns_coefficients
    if decay is None:
        decay = 1.0 - lr * weight_decay
    if step_size is None:
        step_size = adjusted_lr(lr, adjust_lr_fn, p.shape)
    kernel.step(p, g, buf, work, decay=decay, step_size=step_size, momentum=momentum,
                nesterov=nesterov, a=a, b=b, c=c, ns_steps=ns_steps, eps=eps,
                mode=mode_of(ns_dtype))


def kernel_module():
    """fastopt._muon, imported on first use (it loads scipy's BLAS)."""
    from . import _muon
    return _muon
