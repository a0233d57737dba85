"""The optimizer table: every optimizer described once, as data.

Design note
-----------
Everything per-optimizer that is not the arithmetic of its update rule is written here, once,
and the rest of the package is generated from it or reads it:

- at build time, ``tools/generate.py`` (run by ``setup.py`` on every build) renders the Tempita
  templates ``*.tp`` next to their outputs with this table: the option flags
  (``csrc/fastopt/flags.h``), the per-step scalar structs (``hp.h``), their conversion to the
  element type (``constants.h``), the list of compiled kernels with their loop instances and
  costs (``instances.h``, used by ``kernels.h``/``kernels.c`` and ``mixed.h``/``mixed.c``), the
  Cython declarations (``src/fastopt/_kernels_decl.pxi``, included by ``_kernels.pxd``) and
  wrappers (``_kernels_steps.pxi``, ``_mixed_steps.pxi``). These files are build outputs, ignored
  by git; a build never compiles a stale one.
- at import time, ``fastopt._steps`` compiles the per-step scalar and flag expressions below
  into the runners of ``fastopt.functional`` (``_sgd``, ``_adam``, ...), and ``fastopt.cuda``
  takes its flags, kernel list and kernel arguments from here.
- ``tests/test_registry.py`` checks that every generated or table-driven list (C instances,
  Cython wrappers, mixed precision, CUDA, flags, the registry ``_specs``, the oracle) covers
  every optimizer declared here, and names the piece that does not.

This module imports only the standard library, so ``setup.py`` can load it by path without
importing fastopt.

How to add an optimizer
-----------------------
1. Its per-element rule: ``fo_<kernel>_rule`` and its constants struct ``fo_<kernel>_k`` in
   ``csrc/fastopt/rules_impl.h`` (written once, generic over the element type, for the CPU
   loops, mixed precision and CUDA). State buffers are the slots s0, s1, s2 of the rule.
2. Its entries here: a ``Kernel`` in ``KERNELS`` (the rule's scalars, constants, flags, state
   slots, loop instances, cost, backends; new option bits go in ``FLAGS``) and an
   ``Optimizer`` in ``OPTIMIZERS`` (class name, hyperparameters with torch's defaults, rules
   and messages). An optimizer that reuses a rule (AdamW) needs only the ``Optimizer`` entry.
3. Its NumPy float64 reference in ``tests/reference.py``, written by hand from the equations.
4. Its docs: the class docstring (algorithm box) and its README row.

Then regenerate and rebuild: ``python setup.py build_ext --inplace`` (it runs
``python tools/generate.py``; run that alone to look at the generated files), and run
``pytest tests/test_registry.py``, which names whatever still lacks the new optimizer.
(Until the classes are generated from this table too, the class in ``fastopt.optim`` and the
``fastopt._specs`` entry are still written by hand; the registry test checks they agree.)

Fields
------
``Kernel``: one compiled rule (``fo_<name>_rule_<f32|f64>``).
  ``inputs``     the names the expressions below may use, in the order of the runner's
                 arguments (``fastopt._runners.<name>(mod, plan, grads, *inputs, name)``):
                 ``step`` (1-based), ``lr`` (this step's learning rate), ``first`` (the state
                 buffers were created for this step) and hyperparameters.
  ``scalars``    the double fields of ``fo_<name>_hp``, in order: (field, Python expression
                 over ``inputs``), computed once per step.
  ``consts``     the fields of the rule's ``fo_<name>_k``, in the struct's order: (field, C
                 expression over the hp fields, evaluated in double and rounded once to the
                 element type); ``flags`` follows them implicitly.
  ``flags``      option flag -> Python condition over ``inputs`` that sets it.
  ``state``      the rule's state slots in order: (torch's state key, the flag that needs it or
                 None for always, initial value: a hyperparameter name or a number).
  ``cases``      the flag combinations that get their own branch-free loop instance (CPU and
                 mixed precision); the union of their flags is the instance mask.
  ``cost``       relative cost per element (SGD = 1) for the serial/parallel threshold.
  ``backends``   where it is compiled: "cpu" (float32/float64), "mixed" (16-bit parameters,
                 float32 state), "cuda" (float32/float64 CuPy arrays).
``Optimizer``: one public optimizer (class, functional form, state_dict layout).
  ``hyper``      (name, torch's default, validity rule of ``fastopt._specs``, torch's error
                 text or None), in the class signature's order.
  ``inputs``     kernel input -> Python expression over the group's hyperparameters, where
                 they differ (``beta1``: ``betas[0]``).
  ``checks``     cross-field conditions that are errors: (condition, message).
  ``torch``      how torch.optim keeps this optimizer's state, where it differs from the
                 common case (a 'step' per parameter, buffers created at the first step):
                 "no_step" (no step count: SGD), "optional_state" (a buffer may be absent
                 or None after steps: SGD's momentum_buffer), "eager_state" (buffers created
                 at construction: Adagrad). The torch adapter and load_state_dict read these.
"""
from collections import namedtuple

Flag = namedtuple("Flag", "name bit doc")
Kernel = namedtuple("Kernel", "name title inputs scalars consts flags state cases cost backends")
State = namedtuple("State", "name needs init")
Optimizer = namedtuple("Optimizer", "name class_name kernel hyper inputs checks torch",
                       defaults=((),))
Hyper = namedtuple("Hyper", "name default rule torch_error")

# Option bits of `k.flags`, shared by every rule, binding and backend.
FLAGS = (
    Flag("MAXIMIZE", 1, "ascend: use -g"),
    Flag("NESTEROV", 2, "SGD: Nesterov momentum"),
    Flag("FIRST", 4, "SGD: first step, momentum buffer starts as the gradient"),
    Flag("SUTSKEVER", 8, "SGD: lecture form v = mu v - lr g, p += v"),
    Flag("AMSGRAD", 16, "Adam: keep the running max of the second moment"),
    Flag("CENTERED", 32, "RMSprop: subtract the squared mean gradient"),
    Flag("EPS_IN_SQRT", 64, "Adagrad/RMSprop: sqrt(v + eps) instead of sqrt(v) + eps"),
    Flag("MOMENTUM", 128, "SGD/RMSprop: momentum buffer in use"),
    Flag("DECOUPLED", 256, "Adam: decoupled weight decay (AdamW)"),
)

FLAG_BITS = {f.name: f.bit for f in FLAGS}

BACKENDS = ("cpu", "mixed", "cuda")

KERNELS = {k.name: k for k in (
    Kernel(
        name="sgd", title="SGD",
        inputs=("first", "lr", "momentum", "dampening", "weight_decay", "nesterov", "maximize",
                "sutskever"),
        scalars=(("lr", "lr"), ("momentum", "momentum"), ("dampening", "dampening"),
                 ("weight_decay", "weight_decay")),
        consts=(("lr", "lr"), ("momentum", "momentum"),
                ("one_minus_dampening", "1.0 - dampening"), ("weight_decay", "weight_decay")),
        # torch's form starts a new momentum buffer at the gradient; the lecture's from zeros
        flags={"MAXIMIZE": "maximize", "NESTEROV": "nesterov", "MOMENTUM": "momentum != 0",
               "SUTSKEVER": "sutskever", "FIRST": "first and not sutskever"},
        state=(State("momentum_buffer", "MOMENTUM", 0),),
        # FIRST only comes with MOMENTUM and never with SUTSKEVER; NESTEROV only with MOMENTUM
        cases=((), ("MOMENTUM",), ("MOMENTUM", "FIRST"), ("MOMENTUM", "NESTEROV"),
               ("MOMENTUM", "NESTEROV", "FIRST"), ("MOMENTUM", "SUTSKEVER"),
               ("MOMENTUM", "SUTSKEVER", "NESTEROV")),
        cost=1, backends=BACKENDS,
    ),
    Kernel(
        name="adagrad", title="Adagrad",
        inputs=("step", "lr", "lr_decay", "weight_decay", "eps", "maximize", "eps_in_sqrt"),
        scalars=(("clr", "lr / (1 + (step - 1) * lr_decay)"), ("eps", "eps"),
                 ("weight_decay", "weight_decay")),
        consts=(("clr", "clr"), ("eps", "eps"), ("weight_decay", "weight_decay")),
        flags={"MAXIMIZE": "maximize", "EPS_IN_SQRT": "eps_in_sqrt"},
        state=(State("sum", None, "initial_accumulator_value"),),
        cases=((),),
        cost=2, backends=BACKENDS,
    ),
    Kernel(
        name="rmsprop", title="RMSprop",
        inputs=("step", "lr", "alpha", "eps", "weight_decay", "momentum", "centered", "maximize",
                "eps_in_sqrt"),
        scalars=(("lr", "lr"), ("alpha", "alpha"), ("eps", "eps"),
                 ("weight_decay", "weight_decay"), ("momentum", "momentum")),
        consts=(("lr", "lr"), ("alpha", "alpha"), ("one_minus_alpha", "1.0 - alpha"),
                ("eps", "eps"), ("weight_decay", "weight_decay"), ("momentum", "momentum")),
        flags={"MAXIMIZE": "maximize", "CENTERED": "centered", "MOMENTUM": "momentum > 0",
               "EPS_IN_SQRT": "eps_in_sqrt"},
        state=(State("square_avg", None, 0), State("momentum_buffer", "MOMENTUM", 0),
               State("grad_avg", "CENTERED", 0)),
        cases=((), ("CENTERED",), ("MOMENTUM",), ("CENTERED", "MOMENTUM")),
        cost=2, backends=BACKENDS,
    ),
    Kernel(
        name="adam", title="Adam/AdamW",
        inputs=("step", "lr", "beta1", "beta2", "eps", "weight_decay", "amsgrad", "maximize",
                "decoupled_weight_decay"),
        scalars=(("step_size", "lr / (1 - beta1 ** step)"), ("beta1", "beta1"),
                 ("beta2", "beta2"), ("bc2_sqrt", "(1 - beta2 ** step) ** 0.5"),
                 ("eps", "eps"), ("weight_decay", "weight_decay"),
                 ("decay_factor", "1 - lr * weight_decay")),
        consts=(("step_size", "step_size"), ("beta1", "beta1"),
                ("one_minus_beta1", "1.0 - beta1"), ("beta2", "beta2"),
                ("one_minus_beta2", "1.0 - beta2"), ("bc2_sqrt", "bc2_sqrt"), ("eps", "eps"),
                ("weight_decay", "weight_decay"), ("decay_factor", "decay_factor")),
        flags={"MAXIMIZE": "maximize", "AMSGRAD": "amsgrad",
               "DECOUPLED": "decoupled_weight_decay"},
        state=(State("exp_avg", None, 0), State("exp_avg_sq", None, 0),
               State("max_exp_avg_sq", "AMSGRAD", 0)),
        cases=((), ("AMSGRAD",), ("DECOUPLED",), ("AMSGRAD", "DECOUPLED")),
        cost=3, backends=BACKENDS,
    ),
    Kernel(
        name="adadelta", title="Adadelta",
        inputs=("step", "lr", "rho", "eps", "weight_decay", "maximize"),
        scalars=(("lr", "lr"), ("rho", "rho"), ("eps", "eps"), ("weight_decay", "weight_decay")),
        consts=(("lr", "lr"), ("rho", "rho"), ("one_minus_rho", "1.0 - rho"), ("eps", "eps"),
                ("weight_decay", "weight_decay")),
        flags={"MAXIMIZE": "maximize"},
        state=(State("square_avg", None, 0), State("acc_delta", None, 0)),
        cases=((),),
        cost=4, backends=BACKENDS,
    ),
    Kernel(
        name="adamax", title="Adamax",
        inputs=("step", "lr", "beta1", "beta2", "eps", "weight_decay", "maximize"),
        scalars=(("clr", "lr / (1 - beta1 ** step)"), ("beta1", "beta1"), ("beta2", "beta2"),
                 ("eps", "eps"), ("weight_decay", "weight_decay")),
        consts=(("clr", "clr"), ("beta1", "beta1"), ("one_minus_beta1", "1.0 - beta1"),
                ("beta2", "beta2"), ("eps", "eps"), ("weight_decay", "weight_decay")),
        flags={"MAXIMIZE": "maximize"},
        state=(State("exp_avg", None, 0), State("exp_inf", None, 0)),
        cases=((),),
        cost=2, backends=BACKENDS,
    ),
)}

# torch's messages ({value}: the rejected value; {index}: its index in a pair)
_LR = Hyper("lr", None, "learning_rate", "Invalid learning rate: {value}")
_EPS = "Invalid epsilon value: {value}"
_WD = "Invalid weight_decay value: {value}"
_BETAS = Hyper("betas", (0.9, 0.999), "betas", "Invalid beta parameter at index {index}: {value}")
_BETA_INPUTS = {"beta1": "betas[0]", "beta2": "betas[1]"}


def _lr(default):
    return _LR._replace(default=default)


def _adam_hyper(weight_decay, decoupled):
    return (_lr(1e-3), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
            Hyper("weight_decay", weight_decay, "nonneg", _WD),
            Hyper("amsgrad", False, "boolean", None), Hyper("maximize", False, "boolean", None),
            Hyper("decoupled_weight_decay", decoupled, "boolean", None))


OPTIMIZERS = {o.name: o for o in (
    Optimizer(
        name="sgd", class_name="SGD", kernel="sgd", torch=("no_step", "optional_state"),
        hyper=(_lr(1e-3), Hyper("momentum", 0.0, "nonneg", "Invalid momentum value: {value}"),
               Hyper("dampening", 0.0, "real", None),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("nesterov", False, "boolean",
                     "Nesterov momentum requires a momentum and zero dampening"),
               Hyper("maximize", False, "boolean", None), Hyper("sutskever", False, "boolean", None)),
        inputs={},
        checks=(("nesterov and (momentum <= 0 or dampening != 0)",
                 "Nesterov momentum requires a momentum > 0 and zero dampening"),
                ("sutskever and dampening != 0",
                 "sutskever=True momentum has no dampening; set dampening=0")),
    ),
    Optimizer(
        name="adagrad", class_name="Adagrad", kernel="adagrad", torch=("eager_state",),
        hyper=(_lr(1e-2), Hyper("lr_decay", 0.0, "nonneg", "Invalid lr_decay value: {value}"),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("initial_accumulator_value", 0.0, "nonneg",
                     "Invalid initial_accumulator_value value: {value}"),
               Hyper("eps", 1e-10, "nonneg", _EPS), Hyper("maximize", False, "boolean", None),
               Hyper("eps_in_sqrt", False, "boolean", None)),
        inputs={}, checks=(),
    ),
    Optimizer(
        name="rmsprop", class_name="RMSprop", kernel="rmsprop",
        hyper=(_lr(1e-2), Hyper("alpha", 0.99, "nonneg", "Invalid alpha value: {value}"),
               Hyper("eps", 1e-8, "nonneg", _EPS), Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("momentum", 0.0, "nonneg", "Invalid momentum value: {value}"),
               Hyper("centered", False, "boolean", None), Hyper("maximize", False, "boolean", None),
               Hyper("eps_in_sqrt", False, "boolean", None)),
        inputs={}, checks=(),
    ),
    Optimizer(name="adam", class_name="Adam", kernel="adam", hyper=_adam_hyper(0.0, False),
              inputs=_BETA_INPUTS, checks=()),
    Optimizer(name="adamw", class_name="AdamW", kernel="adam", hyper=_adam_hyper(1e-2, True),
              inputs=_BETA_INPUTS, checks=()),
    Optimizer(
        name="adadelta", class_name="Adadelta", kernel="adadelta",
        hyper=(_lr(1.0), Hyper("rho", 0.9, "unit_closed", "Invalid rho value: {value}"),
               Hyper("eps", 1e-6, "nonneg", _EPS), Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("maximize", False, "boolean", None)),
        inputs={}, checks=(),
    ),
    Optimizer(
        name="adamax", class_name="Adamax", kernel="adamax",
        hyper=(_lr(2e-3), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("maximize", False, "boolean", None)),
        inputs=_BETA_INPUTS, checks=(),
    ),
)}
