"""The optimizer registry: one entry per first-order optimizer.

An entry names the optimizer's state buffers (in the slot order of its C rule), which of them a
param group's hyperparameters need, their initial values, the hyperparameters with torch's
defaults and validity rules, and the runner (in `fastopt._runners`) that turns a group's
hyperparameters and step into the kernel call. The classes in `fastopt.optim`, the tests and
the benchmarks are all driven from this table; a registry test checks that the specs, classes,
reference implementations and C symbols cover the same names.
"""
from dataclasses import dataclass, field
from typing import Callable

from . import _runners
from ._validate import betas, boolean, learning_rate, nonneg, real, unit_closed

__all__ = ["Spec", "SPECS", "validate_group"]


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
    init: dict = field(default_factory=dict)   # state name -> group -> fill value (default 0)
    # `fresh` (a tuple of bools, one per state buffer) marks buffers created for this step
    check: Callable = None           # extra cross-field check(group)

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
    values = {}
    for key, rule in spec.rules.items():
        if key not in group:
            raise ValueError(f"param group is missing the hyperparameter {key!r}")
        values[key] = rule(key, group[key])
    if spec.check is not None:
        spec.check(values)
    return values


def _sgd_check(group):
    if group["nesterov"] and (group["momentum"] <= 0 or group["dampening"] != 0):
        raise ValueError("Nesterov momentum requires a momentum > 0 and zero dampening")
    if group["sutskever"] and group["dampening"] != 0:
        raise ValueError("sutskever=True momentum has no dampening; set dampening=0")


SGD = Spec(
    name="sgd", class_name="SGD",
    defaults=dict(lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False,
                  maximize=False, sutskever=False),
    rules=dict(lr=learning_rate, momentum=nonneg, dampening=real, weight_decay=nonneg,
               nesterov=boolean, maximize=boolean, sutskever=boolean),
    state=("momentum_buffer",),
    uses=lambda g: (g["momentum"] != 0,),
    run=lambda mod, plan, grads, g, step, lr, fresh, name="grads": _runners.sgd(
        mod, plan, grads, fresh[0], lr, g["momentum"], g["dampening"], g["weight_decay"],
        g["nesterov"], g["maximize"], g["sutskever"], name),
    check=_sgd_check,
)

ADAGRAD = Spec(
    name="adagrad", class_name="Adagrad",
    defaults=dict(lr=1e-2, lr_decay=0.0, weight_decay=0.0, initial_accumulator_value=0.0,
                  eps=1e-10, maximize=False, eps_in_sqrt=False),
    rules=dict(lr=learning_rate, lr_decay=nonneg, weight_decay=nonneg,
               initial_accumulator_value=nonneg, eps=nonneg, maximize=boolean,
               eps_in_sqrt=boolean),
    state=("sum",),
    uses=lambda g: (True,),
    init={"sum": lambda g: g["initial_accumulator_value"]},
    run=lambda mod, plan, grads, g, step, lr, fresh, name="grads": _runners.adagrad(
        mod, plan, grads, step, lr, g["lr_decay"], g["weight_decay"], g["eps"], g["maximize"],
        g["eps_in_sqrt"], name),
)

RMSPROP = Spec(
    name="rmsprop", class_name="RMSprop",
    defaults=dict(lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False,
                  maximize=False, eps_in_sqrt=False),
    rules=dict(lr=learning_rate, alpha=nonneg, eps=nonneg, weight_decay=nonneg, momentum=nonneg,
               centered=boolean, maximize=boolean, eps_in_sqrt=boolean),
    state=("square_avg", "momentum_buffer", "grad_avg"),
    uses=lambda g: (True, g["momentum"] > 0, bool(g["centered"])),
    run=lambda mod, plan, grads, g, step, lr, fresh, name="grads": _runners.rmsprop(
        mod, plan, grads, step, lr, g["alpha"], g["eps"], g["weight_decay"], g["momentum"],
        g["centered"], g["maximize"], g["eps_in_sqrt"], name),
)

_ADAM_RULES = dict(lr=learning_rate, betas=betas, eps=nonneg, weight_decay=nonneg,
                   amsgrad=boolean, maximize=boolean, decoupled_weight_decay=boolean)


def _adam_run(mod, plan, grads, g, step, lr, fresh, name="grads"):
    beta1, beta2 = g["betas"]
    _runners.adam(mod, plan, grads, step, lr, beta1, beta2, g["eps"], g["weight_decay"],
                  g["amsgrad"], g["maximize"], g["decoupled_weight_decay"], name)


ADAM = Spec(
    name="adam", class_name="Adam",
    defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, amsgrad=False,
                  maximize=False, decoupled_weight_decay=False),
    rules=_ADAM_RULES,
    state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    uses=lambda g: (True, True, bool(g["amsgrad"])),
    run=_adam_run,
)

ADAMW = Spec(
    name="adamw", class_name="AdamW", kernel="adam",
    defaults=dict(lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False,
                  maximize=False, decoupled_weight_decay=True),
    rules=_ADAM_RULES,
    state=("exp_avg", "exp_avg_sq", "max_exp_avg_sq"),
    uses=lambda g: (True, True, bool(g["amsgrad"])),
    run=_adam_run,
)

ADADELTA = Spec(
    name="adadelta", class_name="Adadelta",
    defaults=dict(lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, maximize=False),
    rules=dict(lr=learning_rate, rho=unit_closed, eps=nonneg, weight_decay=nonneg,
               maximize=boolean),
    state=("square_avg", "acc_delta"),
    uses=lambda g: (True, True),
    run=lambda mod, plan, grads, g, step, lr, fresh, name="grads": _runners.adadelta(
        mod, plan, grads, step, lr, g["rho"], g["eps"], g["weight_decay"], g["maximize"], name),
)


def _adamax_run(mod, plan, grads, g, step, lr, fresh, name="grads"):
    beta1, beta2 = g["betas"]
    _runners.adamax(mod, plan, grads, step, lr, beta1, beta2, g["eps"], g["weight_decay"],
                    g["maximize"], name)


ADAMAX = Spec(
    name="adamax", class_name="Adamax",
    defaults=dict(lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, maximize=False),
    rules=dict(lr=learning_rate, betas=betas, eps=nonneg, weight_decay=nonneg, maximize=boolean),
    state=("exp_avg", "exp_inf"),
    uses=lambda g: (True, True),
    run=_adamax_run,
)

SPECS = {s.name: s for s in (SGD, ADAGRAD, RMSPROP, ADAM, ADAMW, ADADELTA, ADAMAX)}
