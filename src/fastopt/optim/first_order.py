"""The first-order optimizers: one class per entry of the optimizer table (fastopt._table).

Each class is :class:`fastopt.optim.base.Optimizer` with the table entry's registry ``spec``
(fastopt._specs), the entry's algorithm box as its docstring, and an ``__init__`` with torch's
signature made from the entry's hyperparameters: their names and defaults in order, positional
up to ``keyword_only``, keyword-only from there; hyperparameters the entry fixes (AdamW's
``decoupled_weight_decay``) are not arguments. An optimizer with low-bit state formats (the
table's ``state_formats``) also takes the keyword-only ``state_dtype``, ``rounding``, ``seed``
and ``min_8bit_size`` (`fastopt.state_format`). Nothing here is written per optimizer: an entry
added to the table is a class here, exported by ``fastopt.optim`` and ``fastopt``.
"""
import inspect

from .. import _specs, _steps, _table
from ._state_format import STATE_KEYWORDS, make_state_format
from .base import Optimizer

__all__ = ["CLASSES", "make_class"]


def _init_source(opt):
    """The text of ``__init__(self, params, <hyperparameters>)`` for the table entry `opt`."""
    hyper = [h for h in opt.hyper if h.name not in opt.fixed]
    args = []
    for h in hyper:
        if h.name == opt.keyword_only:
            args.append("*")
        args.append(f"{h.name}={h.default!r}")
    passed = ", ".join(f"{h.name}={h.name}" for h in hyper)
    state = ""
    if len(_table.state_formats(_table.KERNELS[opt.kernel])) > 1:   # low-bit state formats
        if "*" not in args:
            args.append("*")
        args += [f"{k}={v!r}" for k, v in STATE_KEYWORDS.items()]
        state = (f"    self._state_format = _make_state_format({opt.kernel!r}, "
                 f"{', '.join(STATE_KEYWORDS)})\n")
    return (f"def __init__(self, params, {', '.join(args)}):\n" + state +
            f"    _Optimizer.__init__(self, params, {passed})\n")


def make_class(opt):
    """The optimizer class of the table entry `opt` (a fastopt._table.Optimizer)."""
    init = _steps.compile_function("__init__", _init_source(opt),
                                   {"_Optimizer": Optimizer,
                                    "_make_state_format": make_state_format},
                                   module=__name__)
    init.__qualname__ = f"{opt.class_name}.__init__"
    members = {"__init__": init, "__doc__": inspect.cleandoc(opt.doc), "__module__": __name__,
               "__qualname__": opt.class_name, "spec": _specs.SPECS[opt.name]}
    if opt.modes is not None:
        members.update(_mode_methods(opt))
    return type(opt.class_name, (Optimizer,), members)


def _mode_methods(opt):
    """``train()`` and ``eval()`` of an entry with modes (the table's ``Modes``)."""
    m = opt.modes

    def train(self):
        self._set_mode("train")

    def eval(self):
        self._set_mode("eval")

    train.__doc__ = (f"Train mode: move each parameter to the point where gradients are taken, "
                     f"p = lerp(p, state[{m.state!r}], {m.train}), in every group not in train "
                     f"mode (group[{m.key!r}] False); then steps are allowed.")
    eval.__doc__ = (f"Eval mode: move each parameter to the point to evaluate and save, "
                    f"p = lerp(p, state[{m.state!r}], {m.eval}), in every group in train mode; "
                    "a step raises RuntimeError until train().")
    for fn in (train, eval):
        fn.__qualname__ = f"{opt.class_name}.{fn.__name__}"
        fn.__module__ = __name__
    return {"train": train, "eval": eval}


#: optimizer name (the table's key) -> class
CLASSES = {name: make_class(opt) for name, opt in _table.OPTIMIZERS.items()}
globals().update({cls.__name__: cls for cls in CLASSES.values()})
__all__ += [cls.__name__ for cls in CLASSES.values()]
