"""SparseAdam's checks and per-step scalars, shared by `fastopt.functional.sparse_adam_` and
the class `fastopt.optim.SparseAdam`; the math is in csrc/sparse_adam.c (fastopt._sparse).

The per-step scalars are computed as torch.optim's ``_functional.sparse_adam`` computes them,
in Python floats: ``bias_correction1 = 1 - beta1 ** step``, ``bias_correction2 = 1 - beta2 **
step``, ``step_size = lr * math.sqrt(bias_correction2) / bias_correction1``; the kernel gets
``1 - beta1``, ``1 - beta2``, ``eps`` and ``-step_size`` and converts them to the element type
once, as torch converts a Python scalar for a float32 tensor.
"""
import math

from . import _sparse, _validate
from .sparse import check_row_sparse

__all__ = ["sparse_adam_", "RULES", "DEFAULTS", "positive_lr", "prepare", "run"]

DEFAULTS = dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, maximize=False)


def positive_lr(name, value, *, schedule=True):
    """torch.optim.SparseAdam's learning rate: a number > 0 (``Invalid learning rate: 0``) or,
    in the class, a schedule."""
    value = _validate.learning_rate(name, value, schedule=schedule)
    if not callable(value) and value <= 0.0:
        raise ValueError(f"Invalid learning rate: {value} (must be a finite number > 0)")
    return value


RULES = dict(lr=positive_lr, betas=_validate.betas, eps=_validate.positive,
             maximize=_validate.boolean)


def _on_device(a):
    return type(a).__module__.startswith("cupy")


def _names(i, many):
    at = f"[{i}]" if many else ""
    return (f"param{at}", f"exp_avg{at}", f"exp_avg_sq{at}", f"grad{at}.indices",
            f"grad{at}.values")


def prepare(params, grads, exp_avgs, exp_avg_sqs, names):
    """Check every parameter's arrays and gradient (all before anything is written); returns
    the checked gradients (fastopt.sparse.RowSparseGrad)."""
    checked = []
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        pn, mn, vn, iname, valname = names(i)
        g = check_row_sparse(g, p, iname.rpartition(".")[0])
        if _on_device(p):                     # CuPy: fastopt._sparse_adam_cupy
            from ._sparse_adam_cupy import check_state
            check_state(p, m, v, (pn, mn, vn, iname, valname))
        else:
            _sparse.check_step(p, m, v, g.indices, g.values, (pn, mn, vn, iname, valname))
        checked.append(g)
    return checked


def run(params, grads, exp_avgs, exp_avg_sqs, step, lr, beta1, beta2, eps, maximize, names):
    """The steps of checked arrays (`prepare`), one kernel call per parameter."""
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    step_size = lr * math.sqrt(bias_correction2) / bias_correction1
    for i, (p, g, m, v) in enumerate(zip(params, grads, exp_avgs, exp_avg_sqs)):
        if _on_device(p):
            from . import _sparse_adam_cupy
            _sparse_adam_cupy.step(p, m, v, g.indices, g.values, 1 - beta1, 1 - beta2, eps,
                                   -step_size, maximize, names(i))
            continue
        _sparse.sparse_adam_step(p, m, v, g.indices, g.values, 1 - beta1, 1 - beta2, eps,
                                 -step_size, maximize, names(i), True)


def _listify(x, name, many):
    if many:
        if not isinstance(x, (list, tuple)):
            raise TypeError(f"{name} must be a list like param, got {type(x).__name__}")
        return list(x)
    return [x]


def sparse_adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr=1e-3, beta1=0.9, beta2=0.999,
                 eps=1e-8, maximize=False):
    """SparseAdam step, in place; equations in :class:`fastopt.SparseAdam`.

    `param` is an array or a list of arrays; `grad` a :class:`fastopt.RowSparseGrad` (or an
    ``(indices, values)`` tuple) per parameter; `exp_avg`, `exp_avg_sq` its moments (zeros
    before the first step); `step` the 1-based step being taken. Only the rows in the
    gradients' indices change. Every array is checked before anything is written.
    """
    many = isinstance(param, (list, tuple))
    params = _listify(param, "param", many)
    grads = _listify(grad, "grad", many)
    ms = _listify(exp_avg, "exp_avg", many)
    vs = _listify(exp_avg_sq, "exp_avg_sq", many)
    for other, name in ((grads, "grad"), (ms, "exp_avg"), (vs, "exp_avg_sq")):
        if len(other) != len(params):
            raise ValueError(f"{name} has {len(other)} entries, param has {len(params)}")
    step = _validate.whole("step", step, low=1)
    lr = positive_lr("lr", lr, schedule=False)
    beta1 = _validate.unit_open("beta1", beta1)
    beta2 = _validate.unit_open("beta2", beta2)
    eps = _validate.positive("eps", eps)
    maximize = _validate.boolean("maximize", maximize)

    def names(i):
        return _names(i, many)

    grads = prepare(params, grads, ms, vs, names)
    run(params, grads, ms, vs, step, lr, beta1, beta2, eps, maximize, names)
