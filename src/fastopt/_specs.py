"""The optimizer registry: one entry per first-order optimizer, built from the table.

An entry names the optimizer's state buffers (in the slot order of its C rule), which of them a
param group's hyperparameters need, their initial values, the hyperparameters with torch's
defaults and validity rules, and the runner (in `fastopt._runners`) that turns a group's
hyperparameters and step into the kernel call. Every entry is derived from the optimizer table
(`fastopt._table`): nothing here is written per optimizer. The classes in `fastopt.optim`,
mixed precision, the torch adapter, the tests and the benchmarks are driven by these entries;
a registry test checks that every list covers the table's optimizers.
"""
from dataclasses import dataclass, field
from typing import Callable

from . import _runners, _steps, _table, _validate

__all__ = ["Spec", "SPECS", "validate_group", "apply_rules"]


@dataclass(frozen=True)
class Spec:
    """Registry entry of one optimizer (see the module docstring)."""
    name: str
    class_name: str
    defaults: dict
    rules: dict                      # hyperparameter -> rule(name, value) -> plain value
    #                                  (the rules of fastopt._validate)
    state: tuple                     # state buffer names, in the C rule's slot order
    uses: Callable                   # group -> tuple of bools: which state buffers are needed
    run: Callable                    # (mod, plan, grads, group, step, lr, fresh, name) -> None
    kernel: str = ""                 # C kernel family (fo_<kernel>_step_*); default: name
    init: dict = field(default_factory=dict)   # state name -> (group, lr) -> fill value
    #                                            (default 0; lr: of the step creating it)
    # `fresh` (a tuple of bools, one per state buffer) marks buffers created for this step
    check: Callable = None           # extra cross-field check(group)
    counts_steps: bool = True        # torch keeps a 'step' per parameter (not SGD)
    optional_state: bool = False     # a needed buffer may be absent after steps (SGD's)
    eager_state: bool = False        # torch creates the buffers at construction (Adagrad)
    reference: str = ""              # "module.Class" whose numbers it reproduces (torch.optim's)
    # group-level scalars kept in the param group (the table's group_state, and the mode key):
    group_state: dict = field(default_factory=dict)   # name -> initial value
    group_rules: dict = field(default_factory=dict)   # name -> rule, as `rules`
    copies: tuple = ()               # state buffers that start as a copy of their parameter
    modes: object = None             # the table's Modes, or None
    mode_weight: Callable = None     # (group, "train" | "eval") -> the lerp weight of the move
    # per-parameter scalar state (the table's param_scalars: NAdam's mu_product, ASGD's eta):
    scalars: dict = field(default_factory=dict)       # name -> (group, lr) -> initial value
    scalars_in_place: bool = False   # updated in place in the stored dtype (NAdam's mu_product)
    # (group, step, lr, fresh, scalars=None, rounding=None) -> None: the table's advance of
    # `run` alone, raising its ValueError (None for optimizers without an advance)
    check_advance: Callable = None

    def validate(self, group):
        """The group's hyperparameters checked and as plain Python values (see
        `validate_group`)."""
        return validate_group(self, group)

    @property
    def kernel_name(self):
        return self.kernel or self.name


def validate_group(spec, group):
    """Check every hyperparameter of a param group; raises ValueError/TypeError naming it.

    Returns {name: value} of the hyperparameters as plain Python values (floats, ints, bools,
    a tuple of floats for betas; a schedule as it is), the form the optimizers store.
    """
    values = apply_rules({**spec.rules, **spec.group_rules} if spec.group_rules else spec.rules,
                         group)
    if spec.check is not None:
        spec.check(values)
    return values


def apply_rules(rules, group):
    """{name: rule(name, group[name])} for each hyperparameter of `rules` (name -> rule, the
    rules of fastopt._validate); ValueError naming one the group lacks."""
    values = {}
    for key, rule in rules.items():
        if key not in group:
            raise ValueError(f"param group is missing the hyperparameter {key!r}")
        values[key] = rule(key, group[key])
    return values


# ------------------------------------------------------------- entries built from the table
def _bind(opt, exclude=()):
    """Source lines binding the group's hyperparameters (as local names) for `opt`'s
    expressions, but those in `exclude`."""
    return "".join(f"    {h.name} = g[{h.name!r}]\n" for h in opt.hyper if h.name not in exclude)


def _uses_function(opt):
    """group -> which state buffers its options need (the table's flag conditions and each
    buffer's flag; `first` and the step do not change which buffers exist). Only the flags that
    some buffer needs are computed: a flag over the per-step group computation (Schedule-Free
    RAdam's RECTIFY, over its ``rho_t``) changes the arithmetic, not the buffers."""
    kernel = _table.KERNELS[opt.kernel]
    needed = {s.needs for s in kernel.state if s.needs is not None}
    inputs = {name: expr for name, expr in opt.inputs.items()}
    lines = [f"    {name} = {expr}\n" for name, expr in inputs.items()]
    lines += ["    first, step, lr = False, 1, 0.0\n", _steps.derived_lines(kernel),
              f"    flags = {_steps._flags_expr(kernel, needed)}\n",
              f"    mask = {_steps.state_mask_expr(opt.kernel)}\n",
              f"    return ({''.join(f'bool(mask & {1 << i}), ' for i in range(len(kernel.state)))})\n"]
    source = f"def uses(g):\n{_bind(opt)}{''.join(lines)}"
    return _steps.compile_function("uses", source, module=f"{__name__}.{opt.name}")


def _group_state(opt):
    """name -> (initial value, rule name) of the group-level scalars of `opt` (the table's
    group_state and the mode key)."""
    out = {s.name: (s.init, s.rule) for s in opt.group_state}
    if opt.modes is not None:
        out[opt.modes.key] = (opt.modes.initial, "boolean")
    return out


def _run_function(opt):
    """(mod, plan, grads, group, step, lr, fresh, name) -> the runner of the optimizer's rule
    with the kernel inputs the table maps the group's hyperparameters to. With an ``advance``
    (the table's per-step group computation) it runs first, and `run` returns the new values
    of the group state ({name: value}) for the caller to store in the group; else None. The
    advance sees the hyperparameters, the group state and the mapped inputs (``beta2``), as
    ``fastopt._steps.advance`` and the functional form do. An optimizer with per-parameter
    scalars (the table's ``param_scalars``) takes them as ``scalars`` ({name: value} as the
    step finds them; None: at their initial values, the state being created) and returns
    their new values with the group state's; ``rounding`` (float -> float), if given, rounds
    each new value as it is computed and is the advance's ``as_stored``, as a reference that
    stores them in another precision does (torch's float32 scalars: fastopt.torch)."""
    kernel = _table.KERNELS[opt.kernel]
    special = {"step": "step", "lr": "lr", "first": "fresh[0]"}
    defined = {name for name, _ in opt.advance}
    args = [name if name in defined else special.get(name) or opt.inputs.get(name) or name
            for name in kernel.inputs]
    scalars = [p.name for p in opt.param_scalars]
    state = [s.name for s in opt.group_state] + scalars
    advance = _steps.checked_advance(opt, ("    as_stored = _float if rounding is None "
                                           "else rounding\n" if scalars else "") + "".join(
        f"    _at = {name!r}\n    {name} = {expr}\n" + (
            f"    if rounding is not None:\n        {name} = rounding({name})\n"
            if name in scalars else "") for name, expr in opt.advance))
    # (the function's name and leading arguments are filled in below, by replace: the
    # table's expressions are not format strings)
    header = ("def @FN@(@HEAD@g, step, lr, fresh, name=\"grads\""
              + (", scalars=None, rounding=None" if scalars else "") + "):\n"
              f"{_bind(opt, exclude=special)}"
              + "".join(f"    {s.name} = g[{s.name!r}]\n" for s in opt.group_state)
              # the per-parameter scalars as the step finds them (None: created for this step)
              + "".join(f"    {p.name} = float(scalars[{p.name!r}] if scalars is not None else "
                        f"{p.init})\n" for p in opt.param_scalars)
              # the advance may read the kernel inputs mapped from hyperparameters (beta2)
              + "".join(f"    {name} = {expr}\n" for name, expr in opt.inputs.items()
                        if opt.advance)
              + advance)
    source = (header.replace("@FN@", "run").replace("@HEAD@", "mod, plan, grads, ") +
              f"    _runner(mod, plan, grads, {', '.join(args)}, name)\n"
              + (f"    return {{{', '.join(f'{n!r}: {n}' for n in state)}}}\n" if state else ""))
    namespace = {"_runner": getattr(_runners, opt.kernel), "_float": float,
                 **_steps.ADVANCE_NAMESPACE}
    run = _steps.compile_function("run", source, namespace, module=f"{__name__}.{opt.name}")
    if not opt.advance:
        return run, None
    check = _steps.compile_function("check_advance",
                                    header.replace("@FN@", "check_advance").replace("@HEAD@", "")
                                    + "    return None\n", namespace,
                                    module=f"{__name__}.{opt.name}")
    return run, check


def _check_function(opt):
    """The table's cross-field conditions as check(values): ValueError with its message."""
    if not opt.checks:
        return None
    body = "".join(f"    if {cond}:\n        raise ValueError({message!r})\n"
                   for cond, message in opt.checks)
    return _steps.compile_function("check", f"def check(g):\n{_bind(opt)}{body}",
                                   module=f"{__name__}.{opt.name}")


def _init(state):
    """state name -> (group, lr) -> fill value, for buffers that do not start at 0: a number,
    or a hyperparameter of the group; "lr" is `lr`, the learning rate of the step that creates
    the buffer (a schedule's value at that step)."""
    out = {}
    for s in state:
        if s.init == _table.PARAM:           # a copy of the parameter (Spec.copies)
            continue
        if s.init == "lr":
            out[s.name] = lambda g, lr: lr
        elif isinstance(s.init, str):
            out[s.name] = (lambda key: lambda g, lr: g[key])(s.init)
        elif s.init != 0:
            out[s.name] = (lambda value: lambda g, lr: value)(s.init)
    return out


def _scalar_init_function(opt, scalar):
    """(group, lr) -> the initial value of a per-parameter scalar (its ``init`` expression over
    the group's hyperparameters and `lr`, the learning rate of the step creating it)."""
    source = f"def init(g, lr):\n{_bind(opt, exclude=('lr',))}    return float({scalar.init})\n"
    return _steps.compile_function("init", source, module=f"{__name__}.{opt.name}")


def _mode_weight_function(opt):
    """(group, "train" | "eval") -> the weight w of the move p = lerp(p, state, w)."""
    if opt.modes is None:
        return None
    inputs = "".join(f"    {name} = {expr}\n" for name, expr in opt.inputs.items())
    source = (f"def mode_weight(g, mode):\n{_bind(opt)}{inputs}"
              f"    return float({opt.modes.train}) if mode == 'train' else "
              f"float({opt.modes.eval})\n")
    return _steps.compile_function("mode_weight", source, module=f"{__name__}.{opt.name}")


def _spec(opt):
    kernel = _table.KERNELS[opt.kernel]
    runner, check_advance = _run_function(opt)
    group_state = _group_state(opt)
    return Spec(
        name=opt.name, class_name=opt.class_name, kernel=opt.kernel,
        defaults={h.name: h.default for h in opt.hyper},
        rules={h.name: getattr(_validate, h.rule) for h in opt.hyper},
        state=tuple(s.name for s in kernel.state),
        uses=_uses_function(opt), run=runner, check_advance=check_advance,
        check=_check_function(opt),
        init=_init(kernel.state),
        counts_steps="no_step" not in opt.torch,
        optional_state="optional_state" in opt.torch,
        eager_state="eager_state" in opt.torch,
        reference=opt.reference or f"torch.optim.{opt.class_name}",
        group_state={name: init for name, (init, _) in group_state.items()},
        group_rules={name: getattr(_validate, rule) for name, (_, rule) in group_state.items()},
        copies=tuple(s.name for s in kernel.state if s.init == _table.PARAM),
        modes=opt.modes, mode_weight=_mode_weight_function(opt),
        scalars={p.name: _scalar_init_function(opt, p) for p in opt.param_scalars},
        scalars_in_place=any(p.in_place for p in opt.param_scalars),
    )


SPECS = {name: _spec(opt) for name, opt in _table.OPTIMIZERS.items()}
