"""Per-step scalars and option flags, compiled from the optimizer table (fastopt._table).

For each kernel of the table, ``runner(kernel)`` is the runner that ``fastopt.functional``
exposes as ``_<kernel>``::

    _adam(mod, plan, grads, step, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
          decoupled_weight_decay, name="grads")

It evaluates the kernel's ``scalars`` (the fields of ``fo_<kernel>_hp``: bias corrections,
decayed step sizes, ...) and ``flags`` expressions from the table, once per step, and calls the
binding ``mod.<kernel>(plan, grads, *scalars, flags, name)`` of a kernel backend (``_kernels``,
``_mixed`` or ``cuda``). The runner is compiled from source text made from the table, so a step
does exactly the arithmetic the table states, in its order (results are those of the same
expressions written by hand), with no interpretation per call.

``hp_values(optimizer, group, step, lr, first=False)`` gives the same scalars and flags from a
param group's hyperparameters (torch's names, ``betas`` included), and
``state_mask(kernel, flags)`` the state slots a rule uses under those flags.
"""
import linecache
import math

from . import _table

__all__ = ["runner", "hp_values", "state_mask", "state_mask_expr", "compile_function",
           "advance_lines", "derived_lines", "scalar_init"]


def as_stored(x):
    """A value as the reference stores its per-parameter scalars (the table's param_scalars):
    unchanged here (float64); fastopt.torch rounds to torch's scalar dtype instead."""
    return x


# the builtins the table's per-step group computations (Optimizer.advance) may call
_ADVANCE_BUILTINS = {"max": max, "min": min, "abs": abs, "as_stored": as_stored}


def compile_function(name, source, namespace=None, module=__name__):
    """The function `name` defined by `source` (Python text made from the table), as a
    function of `module`. The text is registered with linecache, so tracebacks and
    inspect.getsource show it."""
    filename = f"<generated from fastopt._table: {module}.{name}>"
    linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
    ns = dict(namespace or {})
    exec(compile(source, filename, "exec"), ns)
    fn = ns[name]
    fn.__module__ = module
    return fn


def _flags_expr(kernel, only=None):
    """Python expression of the kernel's flags (those named in `only`, if given)."""
    bits = _table.FLAG_BITS
    return " | ".join(f"({bits[flag]} if {cond} else 0)"
                      for flag, cond in kernel.flags.items()
                      if only is None or flag in only) or "0"


def _scalars_expr(kernel):
    return ", ".join(expr for _, expr in kernel.scalars)


def derived_lines(kernel):
    """Source lines (indented for a function body) computing the kernel's ``derived`` values,
    the names its scalar and flag expressions may use besides the inputs."""
    return "".join(f"    {name} = {expr}\n" for name, expr in kernel.derived)


def _runner_source(kernel):
    args = ", ".join(kernel.inputs)
    return (f"def {kernel.name}(mod, plan, grads, {args}, name=\"grads\"):\n"
            f"{derived_lines(kernel)}"
            f"    mod.{kernel.name}(plan, grads, {_scalars_expr(kernel)}, {_flags_expr(kernel)},"
            f" name)\n")


def runner(kernel):
    """The runner ``<kernel>(mod, plan, grads, *inputs, name="grads")`` (module docstring)."""
    k = _table.KERNELS[kernel]
    fn = compile_function(kernel, _runner_source(k), module="fastopt._runners")
    fn.__doc__ = (f"{k.title} step: fo_{kernel}_hp ({', '.join(f for f, _ in k.scalars)}) and "
                  f"flags from ({', '.join(k.inputs)}) as the optimizer table states, then "
                  f"mod.{kernel}(plan, grads, *hp, flags, name).")
    return fn


_VALUES = {}


def _values_function(kernel):
    fn = _VALUES.get(kernel)
    if fn is None:
        k = _table.KERNELS[kernel]
        source = (f"def _values({', '.join(k.inputs)}):\n{derived_lines(k)}"
                  f"    return ({_scalars_expr(k)},), {_flags_expr(k)}\n")
        fn = _VALUES[kernel] = compile_function("_values", source, module=f"{__name__}.{kernel}")
    return fn


def advance_lines(opt):
    """Source lines (indented once) of the table entry's per-step group computation
    (``Optimizer.advance``), in order (``as_stored``: the identity), checked
    (`checked_advance`)."""
    return checked_advance(opt, "".join(
        ["    as_stored = _as_stored\n" if opt.param_scalars else ""]
        + [f"    _at = {name!r}\n    {name} = {expr}\n" for name, expr in opt.advance]))


def checked_advance(opt, source):
    """`source` (the lines of `opt`'s advance, each assignment after ``_at = <its name>``)
    inside a try whose arithmetic errors become `advance_error`'s ValueError, then each
    assigned value checked by `check_advanced` (names ``_advance_error``,
    ``_check_advanced`` of the generated function's namespace: `ADVANCE_NAMESPACE`), so
    that a step whose group computation fails raises before its kernel runs."""
    if not opt.advance:
        return source
    kept = {g.name for g in opt.group_state} | {p.name for p in opt.param_scalars}
    return ("    try:\n" + "".join(f"    {line}\n" for line in source.splitlines())
            + "    except (ArithmeticError, ValueError, TypeError) as e:\n"
            f"        _advance_error({opt.class_name!r}, step, _at, e)\n"
            + "".join(f"    _check_advanced({opt.class_name!r}, step, {name!r}, {name}, "
                      f"{name in kept})\n" for name, _ in opt.advance))


def advance_error(optimizer, step, name, error):
    """The ValueError of a per-step group computation (the table's ``advance``) that cannot
    be done with these hyperparameters (an overflow, a division by zero)."""
    raise ValueError(f"{optimizer}: at step {step}, {name} cannot be computed from the "
                     f"hyperparameters ({type(error).__name__}: {error}); nothing was "
                     "changed") from None


def check_advanced(optimizer, step, name, value, kept):
    """A value of the per-step group computation: a real number, and finite when it is kept
    for the next step (group state, per-parameter scalars); else a ValueError (before the
    kernel runs, so that nothing changes)."""
    if isinstance(value, complex) or (kept and not math.isfinite(value)):
        raise ValueError(f"{optimizer}: at step {step}, the hyperparameters make {name} = "
                         f"{value!r}, not a finite real number; nothing was changed")


#: the names `checked_advance`'s lines call
ADVANCE_NAMESPACE = {"_advance_error": advance_error, "_check_advanced": check_advanced}


def scalar_init(opt, group, lr):
    """{name: initial value} of the per-parameter scalars of `opt` (``param_scalars``), for
    state created at a step with learning rate `lr`, over `group`'s hyperparameters."""
    ns = {**group, "lr": lr}
    return {s.name: float(eval(s.init, {"__builtins__": {}}, ns)) for s in opt.param_scalars}


def advance(opt, group, lr, step=1):
    """The names the per-step group computation of `opt` assigns (``Optimizer.advance``),
    evaluated over `group` (its hyperparameters, group state and per-parameter scalars; those
    it lacks at their initial values), this step's `lr` and 1-based `step`:
    {name: value}, ``lr`` included."""
    ns = {name: eval(expr, {"__builtins__": {}}, dict(group))
          for name, expr in opt.inputs.items()}
    ns = {**scalar_init(opt, group, lr), **group, **ns, "lr": lr, "step": step}
    out = {"lr": lr}
    for name, expr in opt.advance:
        ns[name] = out[name] = eval(expr, {"__builtins__": _ADVANCE_BUILTINS}, ns)
    return out


def hp_values(optimizer, group, step, lr, first=False):
    """(the fo_<kernel>_hp fields, flags) of a step of `optimizer` with the hyperparameters of
    param `group` (a dict with torch's names, and the group state of an optimizer that has
    one, and the per-parameter scalars as the step finds them: initial values where absent), at
    1-based `step` with learning rate `lr`; `first`: the state buffers were created for this
    step."""
    opt = _table.OPTIMIZERS[optimizer]
    k = _table.KERNELS[opt.kernel]
    special = {"step": step, "lr": lr, "first": first}
    if opt.advance:
        special.update(advance(opt, group, lr, step))
    inputs = {}
    for name in k.inputs:
        if name in special:
            inputs[name] = special[name]
        elif name in opt.inputs:
            inputs[name] = eval(opt.inputs[name], {"__builtins__": {}}, dict(group))
        else:
            inputs[name] = group[name]
    return _values_function(opt.kernel)(**inputs)


def state_mask_expr(kernel):
    """Python expression (of an int `flags`) of the state slots the rule of `kernel` reads and
    writes: bit i = slot i."""
    state = _table.KERNELS[kernel].state
    always = sum(1 << i for i, s in enumerate(state) if s.needs is None)
    terms = [f"({1 << i} if flags & {_table.FLAG_BITS[s.needs]} else 0)"
             for i, s in enumerate(state) if s.needs is not None]
    return " | ".join(([str(always)] if always or not terms else []) + terms)


def state_mask(kernel, flags):
    """Bit i set: the rule of `kernel` reads and writes state slot i under `flags`."""
    return eval(state_mask_expr(kernel), {"__builtins__": {}}, {"flags": int(flags)})
