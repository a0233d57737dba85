"""The runners: the per-step scalar math of every first-order optimizer, and its kernel call.

A runner turns one step's hyperparameters (and the 1-based step count) into the scalars and
option flags of the C rule (bias corrections, decayed step sizes, ...), computed once per call,
and calls the kernel module `mod` (``fastopt._kernels``, ``fastopt._mixed`` or
``fastopt.cuda``: the same interface) on a plan. `fastopt.functional`'s in-place steps, the
registry entries (``Spec.run`` in `fastopt._specs`) and so every optimizer class, mixed
precision and the torch adapter go through these functions, so each optimizer's step math is
written once. Nothing is validated here: callers check their arguments first.

The runners are compiled from the optimizer table (fastopt._table, by fastopt._steps): one
per C rule, with the table's per-step scalar expressions and option flags; `inspect.getsource`
shows the generated code.
"""

from . import _steps, _table

__all__ = list(_table.KERNELS)

globals().update({name: _steps.runner(name) for name in __all__})
