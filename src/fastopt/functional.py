"""Stateless, in-place optimizer steps: checked arguments, then one runner call.

Each function updates `param` (one array or a list of arrays) and its state buffers in place,
in one fused pass per element type, and returns None. The per-element rules live in
csrc/fastopt/rules.h; what depends only on the step and the hyperparameters (bias
corrections, decayed step sizes, option flags) is computed once per call by the runners of
`fastopt._runners`.

Arrays may be NumPy arrays (C/OpenMP kernels) or CuPy arrays (CUDA kernels, `fastopt[gpu]`);
all arrays of one call must be of one kind. Any other CPU array that exposes ``__dlpack__``
(a torch CPU tensor, a JAX CPU array, ...) is used through a NumPy view of its memory, without
a copy; parameters and state must then be writable through DLPack. `step` is the 1-based index of the step being taken.
Every check happens before any element is written: on error nothing is modified.
Hyperparameters are checked with the same rules as the classes' (fastopt._specs, through
fastopt._validate: any real number, NumPy scalars and 0-d arrays included, used as the Python
float of its value; the same mistake raises the same error class as in the classes).

These functions are usable as a backend by other frameworks; the classes in `fastopt.optim`
call the same runners (`fastopt._runners`, compiled from the optimizer table
fastopt._table by fastopt._steps) with cached plans.
"""
import bisect
import re

import numpy as np

from . import _adafactor, _adafactor_hyper, _kernels, _runners, _specs, _steps, _table, _validate
from ._newton import newton_step
from ._sparse_adam import sparse_adam_

# and the forms: sgd_, adam_, ...
__all__ = ["newton_", "muon_", "sparse_adam_", "adafactor_", "backend_for", "FORMS", "make_form"]


def backend_for(arrays):
    """The kernel module for these arrays: fastopt._kernels (NumPy) or fastopt.cuda (CuPy)."""
    first = arrays[0] if arrays else None
    if first is not None and type(first).__module__.startswith("cupy"):
        from . import cuda
        return cuda
    return _kernels


def _listify(x, name):
    """`x` (an array or a list of arrays) as a list, DLPack arrays viewed through NumPy."""
    if isinstance(x, (list, tuple)):
        return [_from_dlpack(a, f"{name}[{i}]", name != "grad") for i, a in enumerate(x)]
    if x is None:
        raise TypeError(f"{name} must be an array or a list of arrays, got None")
    return [_from_dlpack(x, name, name != "grad")]


def _from_dlpack(a, what, writable):
    """A NumPy view (no copy) of a CPU array of another framework that exposes ``__dlpack__``
    (torch CPU tensors, JAX CPU arrays, ...); NumPy and CuPy arrays are returned as they are.
    Arrays updated in place (`writable`) must come out writable."""
    if isinstance(a, np.ndarray) or not hasattr(a, "__dlpack__") \
            or type(a).__module__.startswith("cupy"):
        return a
    try:
        try:
            arr = np.from_dlpack(a, copy=False)
        except TypeError:                      # NumPy < 2.1 (no `copy`), or an older producer
            arr = np.from_dlpack(a)
    except (BufferError, RuntimeError, TypeError, ValueError) as e:
        raise TypeError(f"{what}: cannot view a {type(a).__module__}.{type(a).__qualname__} as "
                        f"a CPU array through DLPack ({e})") from None
    if writable and not arr.flags.writeable:
        raise ValueError(f"{what}: the {type(a).__qualname__} is read-only through DLPack, but "
                         "it is updated in place; pass a writable array")
    return arr


_UNUSED = object()   # a state buffer these options do not use


def _plan(param, states, name="param"):
    """A one-off plan over `param` with `states` = [(slot, name, arrays or _UNUSED), ...].

    A buffer the options use must be given: None there is a TypeError naming it.
    """
    params = _listify(param, name)
    mod = backend_for(params)
    plan = mod.Plan(params, name)
    for slot, state_name, arrays in states:
        if arrays is not _UNUSED:
            plan.set_state(slot, _listify(arrays, state_name), state_name)
    return mod, plan


def _check_step(step):
    """The 1-based step (an integral float, as torch stores steps, is accepted), as int."""
    return _validate.whole("step", step, low=1)


def _check_lr(lr):
    return _validate.learning_rate("lr", lr, schedule=False)


def _element_rules(opt):
    """{kernel input: rule} for the inputs that are one element of a pair hyperparameter
    (``beta1``: ``betas[0]``), with the rule of that element (fastopt._validate.PAIRS)."""
    rules = _specs.SPECS[opt.name].rules
    out = {}
    for key, expr in opt.inputs.items():
        m = re.fullmatch(r"(\w+)\[([01])\]", expr)
        if m:
            out[key] = _validate.PAIRS[rules[m.group(1)]][int(m.group(2))]
    return out


#: optimizer name -> {argument of its functional form: rule}
_RULES = {name: {**_specs.SPECS[name].rules, **_element_rules(opt)}
          for name, opt in _table.OPTIMIZERS.items()}


def _check_hyper(name, **values):
    """Check hyperparameters with the registry's rules, those the classes apply to groups
    (a pair's elements, such as beta1 and beta2, with its element rules; the group scalars of
    Schedule-Free with theirs); returns them as plain Python values (a dict in the order
    given)."""
    spec = _specs.SPECS[name]
    rules = {**_RULES[name], **spec.group_rules}
    values = {key: rules[key](key, value) for key, value in values.items()}
    if spec.check is not None:
        spec.check({**spec.defaults, **values})
    return values


# ------------------------------------------------------- the forms, made from the table
def _identifiers(expr):
    return set(re.findall(r"[A-Za-z_]\w*", expr))


def _state_args(kernel):
    """[(slot, argument name, the flag condition that needs it or None)], always-needed first."""
    args = [(i, s.arg or s.name, None if s.needs is None else kernel.flags[s.needs])
            for i, s in enumerate(kernel.state)]
    return sorted(args, key=lambda a: a[2] is not None)


def _when(cond):
    """A flag condition as the text of an error message: `amsgrad` -> `amsgrad=True`."""
    return f"{cond}=True" if cond.isidentifier() else cond


def _hyper_args(opt, kernel):
    """[(argument name, default)]: the kernel inputs taken from hyperparameters, in the order of
    the entry's hyperparameters (a pair such as `betas` gives `beta1`, `beta2`)."""
    defaults = {h.name: h.default for h in opt.hyper}
    used = set(kernel.inputs).union(*(_identifiers(expr) for _, expr in opt.advance))
    args = []
    for h in opt.hyper:
        if h.name in opt.fixed or h.name == "lr":
            continue
        if h.name in used and h.name not in opt.inputs:
            args.append((h.name, h.default))
        args += [(name, eval(expr, {"__builtins__": {}}, defaults))
                 for name, expr in opt.inputs.items() if h.name in _identifiers(expr)]
    return args


def _form_source(opt):
    """The text of the functional form of the table entry `opt` (module docstring)."""
    kernel = _table.KERNELS[opt.kernel]
    states = _state_args(kernel)
    hyper = _hyper_args(opt, kernel)
    lr_default = next(h.default for h in opt.hyper if h.name == "lr")
    uses_step = any("step" in _identifiers(expr)
                    for _, expr in kernel.derived + kernel.scalars + tuple(kernel.flags.items())
                    + opt.advance)
    first_needs = [cond for _, _, cond in states if cond is not None] if "first" in kernel.inputs \
        else []
    step_arg = "step" if uses_step else "step=None" if first_needs else "step=1"
    sig = ["param", "grad"] + [f"{arg}=None" if cond else arg for _, arg, cond in states]
    group_state = [(g.name, g.init) for g in opt.group_state]
    hyper += group_state
    scalars = [p.name for p in opt.param_scalars]
    # Rprop's rule reads its step sizes, not lr; ASGD's advance reads it
    takes_lr = "lr" in kernel.inputs or any(
        "lr" in _identifiers(expr) for expr in [e for _, e in opt.advance]
        + [p.init for p in opt.param_scalars])
    sig += ["*", step_arg] + ([f"lr={lr_default!r}"] if takes_lr else []) \
        + [f"{n}={d!r}" for n, d in hyper] + [f"{n}=None" for n in scalars]
    body = ["    lr = _check_lr(lr)\n"] if takes_lr else []
    if not first_needs:
        body.append("    step = _check_step(step)\n")
    if hyper:
        names = ", ".join(n for n, _ in hyper)
        body.append(f"    {names}, = _check_hyper({opt.name!r}, "
                    f"{', '.join(f'{n}={n}' for n, _ in hyper)}).values()\n")
    body += [f"    {name} = {value!r}\n" for name, value in
             ((h.name, h.default) for h in opt.hyper if h.name in opt.fixed)]
    for _, arg, cond in states:
        if cond is not None:
            body.append(f"    if ({cond}) and {arg} is None:\n"
                        f"        raise ValueError({f'{arg} is required when {_when(cond)}'!r})\n")
    if first_needs:
        need = " or ".join(f"({c})" for c in first_needs)
        body.append(f"    if {need}:\n"
                    f"        if step is None:\n"
                    f"            raise ValueError({f'step is required when {_when(first_needs[0])} (1 marks the first step)'!r})\n"
                    f"        step = _check_step(step)\n"
                    f"    else:\n"
                    f"        step = 0\n"
                    f"    first = step == 1\n")
    slots = ", ".join(f"({slot}, {arg!r}, {arg})" if cond is None else
                      f"({slot}, {arg!r}, {arg} if ({cond}) else _UNUSED)"
                      for slot, arg, cond in states)
    body.append(f"    mod, plan = _plan(param, [{slots}])\n")
    # the per-parameter scalars as the step finds them (None: the state's first step)
    body += [f"    {p.name} = _validate.real({p.name!r}, {p.init} if {p.name} is None else "
             f"{p.name})\n" for p in opt.param_scalars]
    body.append(_steps.advance_lines(opt))
    body.append(f"    _runners.{opt.kernel}(mod, plan, _listify(grad, 'grad'), "
                f"{', '.join(kernel.inputs)}, 'grad')\n")
    returned = [n for n, _ in group_state] + scalars
    if returned:
        body.append(f"    return {{{', '.join(f'{n!r}: {n}' for n in returned)}}}\n")
    return f"def {opt.name}_({', '.join(sig)}):\n{''.join(body)}"


def _form_doc(opt):
    kernel = _table.KERNELS[opt.kernel]
    lines = [f"{opt.class_name} step, in place; equations in :class:`fastopt.{opt.class_name}`."]
    if opt.group_state:
        names = ", ".join(f"`{g.name}`" for g in opt.group_state)
        lines.append(f"The group-level scalars {names} (those of the param group, initially "
                     f"{', '.join(f'{g.name}={g.init!r}' for g in opt.group_state)}) are "
                     "inputs; returns their new values as a dict, to pass to the next step. "
                     "The parameters are the gradient point y (train mode).")
    if opt.param_scalars:
        names = ", ".join(f"`{p.name}`" for p in opt.param_scalars)
        lines.append(f"The per-parameter scalars {names} (torch keeps them in each parameter's "
                     f"state; None, the default: their initial values "
                     f"{', '.join(f'{p.name}={p.init}' for p in opt.param_scalars)}, for the "
                     "first step) are inputs; returns their new values as a dict, to pass to "
                     "the next step.")
    notes = [f"`{arg}` is required when {_when(cond)}." for _, arg, cond in _state_args(kernel)
             if cond is not None]
    notes += [f"`{s.arg or s.name}` starts filled with the `{s.init}` hyperparameter's value "
              "(as torch creates it)." for s in kernel.state if isinstance(s.init, str)]
    if "first" in kernel.inputs and notes:
        notes.append("With it, pass the 1-based `step` (1 marks the first step).")
    return "\n\n".join(lines + ([" ".join(notes)] if notes else []))


def make_form(opt):
    """The functional form ``<name>_(param, grad, *state, step, lr, **hyperparameters)`` of
    the table entry `opt` (a fastopt._table.Optimizer)."""
    fn = _steps.compile_function(f"{opt.name}_", _form_source(opt),
                                 {**globals(), "_as_stored": _steps.as_stored,
                                  **_steps.ADVANCE_NAMESPACE}, module=__name__)
    fn.__doc__ = _form_doc(opt)
    return fn


#: optimizer name -> its functional form
FORMS = {name: make_form(opt) for name, opt in _table.OPTIMIZERS.items()}
globals().update({f"{name}_": fn for name, fn in FORMS.items()})
__all__ = [f"{name}_" for name in FORMS] + __all__


# ------------------------------------------------------------------------------------ Newton
def newton_(param, grad, hessian, *, lr=1.0, damping=0.0):
    """Newton step, in place: ``param -= lr * (H + (damping + shift) I)^{-1} grad``.

    `hessian` is the (p, p) Hessian of `param` (p = param.size; one per array for lists),
    solved by Cholesky (fastopt._linalg); see :class:`fastopt.Newton`. Returns the identity
    shift that made the Hessian positive definite (0.0 when none was needed), one per array for
    lists. NumPy arrays only.
    """
    return newton_step(param, grad, hessian, lr, damping)


# -------------------------------------------------------------------------------------- Muon
def muon_(param, grad, momentum_buffer, *, lr=1e-3, weight_decay=0.1, momentum=0.95,
          nesterov=True, ns_coefficients=(3.4445, -4.7750, 2.0315), eps=1e-7, ns_steps=5,
          adjust_lr_fn=None, ns_dtype=None, workspace=None):
    """Muon step, in place, on one 2-D array or a list of them (see :class:`fastopt.Muon`):
    ``momentum_buffer`` (zeros before the first step) becomes ``lerp(buf, grad, 1 - momentum)``
    and ``param`` moves by ``-lr' NS(update)`` after the decoupled decay ``1 - lr wd``.

    NumPy or CuPy float32/float64 C-contiguous arrays; every argument is checked before
    anything is written. `workspace` (NumPy): an optional 1-D work buffer (float64 for
    ``ns_dtype="float64"``, else float32) of at least ``2 m n + 2 min(m, n)^2`` elements for
    the largest parameter, reused across calls; (CuPy) an optional
    ``fastopt._muon_cupy.Workspaces()``, reused across calls; without it one is allocated
    per call.
    """
    from . import _muon_rules as rules
    params = _listify(param, "param")
    grads = _listify(grad, "grad")
    bufs = _listify(momentum_buffer, "momentum_buffer")
    backend = backend_for(params)
    for i, p in enumerate(params):
        if not isinstance(p, np.ndarray) and backend is _kernels:
            raise TypeError(f"param[{i}] must be a numpy.ndarray or a cupy.ndarray, got "
                            f"{type(p).__module__}.{type(p).__name__}")
        rules.check_2d(p, f"param[{i}]")
    plan = backend.Plan(params, "param")
    if len(bufs) != len(params):
        raise ValueError(f"momentum_buffer has {len(bufs)} arrays but param has {len(params)}")
    plan.set_state(0, bufs)
    plan.check_grads(grads, "grad")        # also: no gradient overlaps a buffer
    hyper = dict(lr=_validate.learning_rate("lr", lr, schedule=False))
    args = dict(weight_decay=weight_decay, momentum=momentum, nesterov=nesterov,
                ns_coefficients=ns_coefficients, eps=eps, ns_steps=ns_steps,
                adjust_lr_fn=adjust_lr_fn, ns_dtype=ns_dtype)
    hyper.update(_specs.apply_rules({k: rules.RULES[k] for k in args}, args))
    if backend is not _kernels:                     # CuPy: fastopt._muon_cupy
        from . import _muon_cupy
        if workspace is None:
            workspace = _muon_cupy.Workspaces()
        elif not isinstance(workspace, _muon_cupy.Workspaces):
            raise TypeError("workspace must be a fastopt._muon_cupy.Workspaces() for CuPy "
                            f"arrays, got {type(workspace).__name__}")
        work = workspace.get(hyper["ns_dtype"], params)
        for p, g, b in zip(params, grads, bufs):
            rules.step_one(_muon_cupy, p, g, b, work, **hyper)
        return
    need = rules.workspace_elements([p.shape for p in params])
    wdt = rules.work_dtype(hyper["ns_dtype"])
    if workspace is None:
        workspace = np.empty(max(1, need), dtype=wdt)
    elif not isinstance(workspace, np.ndarray) or workspace.dtype != wdt \
            or workspace.ndim != 1 or not workspace.flags.c_contiguous \
            or not workspace.flags.writeable or workspace.size < need:
        raise ValueError(f"workspace must be a writable 1-D C-contiguous {np.dtype(wdt)} array "
                         f"of at least {need} elements")
    kernel = rules.kernel_module()
    for p, g, b in zip(params, grads, bufs):
        rules.step_one(kernel, p, g, b, workspace, **hyper)
# --------------------------------------------------------------------------------- Adafactor
def _adafactor_disjoint(params, grads, rows, cols, vars_):
    """ValueError when two arrays the step writes, or a gradient and one of them, share
    memory (every array already checked C-contiguous, so byte ranges are exact)."""
    def span(a, label):
        start = a.__array_interface__["data"][0]
        return (start, start + a.nbytes, label)
    written = [span(a, f"{name}[{k}]") for name, arrays in
               (("param", params), ("row_var", rows), ("col_var", cols), ("variance", vars_))
               for k, a in enumerate(arrays) if a is not None and a.nbytes]
    _kernels.check_spans(written, "each array the step writes must be its own")
    starts = [lo for lo, _, _ in written]
    for k, g in enumerate(grads):
        if g.nbytes:
            lo, hi, _ = span(g, "")
            j = bisect.bisect_right(starts, lo) - 1
            for a_lo, a_hi, label in written[max(j, 0):j + 2]:
                if a_lo < hi and lo < a_hi:
                    raise ValueError(f"grad[{k}] shares memory with {label}, which the step "
                                     "writes")


def adafactor_(param, grad, row_var=None, col_var=None, variance=None, *, step, lr=1e-2,
               beta2_decay=-0.8, eps1=None, eps2=1e-3, d=1.0, weight_decay=0.0,
               maximize=False):
    """Adafactor step, in place; equations in :class:`fastopt.Adafactor` (torch's
    ``torch.optim._functional.adafactor``, single-tensor path).

    For a parameter of >= 2 dims pass `row_var` and `col_var` (torch's shapes: the
    parameter's with dim -1, resp. dim -2, set to 1), else `variance` (its shape); with lists,
    one entry per parameter (None where it does not apply). `step` is the 1-based step being
    taken; eps1 None is the machine epsilon of the first parameter's dtype (as torch). NumPy
    arrays, or CuPy arrays (fastopt._adafactor_cupy; work buffers made per call, the class
    keeps them). Every array is checked before any is written. Each call allocates the column-sum scratch (threads x the widest last dim
    doubles); the class keeps one. Returns None.
    """
    params = _listify(param, "param")
    n = len(params)

    def per_param(x, name):
        if isinstance(x, (list, tuple)):
            if len(x) != n:
                raise ValueError(f"{name} has {len(x)} entries but param has {n}")
            return list(x)
        if n != 1:
            raise TypeError(f"{name} must be a list (one entry per parameter, None where it "
                            "does not apply) when param is a list")
        return [x]
    grads = per_param(grad, "grad")
    rows, cols, vars_ = (per_param(row_var, "row_var"), per_param(col_var, "col_var"),
                         per_param(variance, "variance"))
    device = bool(params) and type(params[0]).__module__.startswith("cupy")
    if not device:
        for what, arrays in (("param", params), ("grad", grads)):
            for a in arrays:
                if type(a).__module__.startswith("cupy") or \
                        hasattr(a, "__cuda_array_interface__"):
                    raise TypeError(f"{what} is a CuPy array but param is not; pass all "
                                    "NumPy or all CuPy arrays")
    step = _check_step(step)
    lr = _check_lr(lr)
    rules = _adafactor_hyper.RULES
    beta2_decay = rules["beta2_decay"]("beta2_decay", beta2_decay)
    eps1, eps2 = rules["eps"]("eps", (eps1, eps2))
    d = rules["d"]("d", d)
    weight_decay = rules["weight_decay"]("weight_decay", weight_decay)
    maximize = rules["maximize"]("maximize", maximize)
    names = lambda k: (f"param[{k}]", f"grad[{k}]", "") if n > 1 else ("param", "grad", "")
    if device:                                       # fastopt._adafactor_cupy
        from . import _adafactor_cupy
        for k in range(n):
            _adafactor_cupy.check(params[k], grads[k], rows[k], cols[k], vars_[k], names(k))
        cuda_plan = backend_for(params).Plan(params, "param")     # one device, no overlaps
        cuda_plan.check_grads(grads, "grad")
        omb, rho, decay = _adafactor_hyper.adafactor_scalars(step, lr, beta2_decay, weight_decay)
        eps1 = _adafactor_hyper.eps1_for(eps1, params[0].dtype)
        work = _adafactor_cupy.Workspaces().get(params)
        for k in range(n):
            _adafactor_cupy.step(params[k], grads[k], rows[k], cols[k], vars_[k], work,
                                 one_minus_beta2=omb, rho=rho, eps1=eps1, eps2=eps2, d=d,
                                 decay=decay, maximize=maximize)
        return
    scratch = np.zeros(_adafactor.scratch_length([getattr(p, "shape", ()) for p in params],
                                                 _kernels.get_num_threads()))
    for k in range(n):
        _adafactor.check(params[k], grads[k], rows[k], cols[k], vars_[k], scratch, *names(k))
    _adafactor_disjoint(params, grads, rows, cols, vars_)
    omb, rho, decay = _adafactor_hyper.adafactor_scalars(step, lr, beta2_decay, weight_decay)
    eps1 = _adafactor_hyper.eps1_for(eps1, params[0].dtype)
    for k in range(n):
        _adafactor.step(params[k], grads[k], rows[k], cols[k], vars_[k], scratch, omb, rho, eps1,
                        eps2, d, decay, maximize, *names(k))
