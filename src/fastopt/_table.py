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
Four places, nothing else by hand (Lion was added this way: its diff touches exactly
``csrc/fastopt/rules_impl.h``, ``src/fastopt/_table.py``, ``tests/reference.py`` and
``README.md``, plus the recorded goldens):

1. Its per-element rule: ``fo_<kernel>_rule`` and its constants struct ``fo_<kernel>_k`` in
   ``csrc/fastopt/rules_impl.h`` (written once, generic over the element type, for the CPU
   loops, mixed precision and CUDA). State buffers are the slots s0, s1, s2 of the rule; start
   from ``fo_grad`` (maximize, coupled weight decay).
2. Its entries here: a ``Kernel`` in ``KERNELS`` (the rule's scalars, constants, flags, state
   slots, loop instances, cost, backends; new option bits go in ``FLAGS``) and an
   ``Optimizer`` in ``OPTIMIZERS`` (class name, hyperparameters with the reference's
   defaults, rules and messages, the option sets to test, the class docstring with its
   algorithm box, and ``reference`` when the implementation it reproduces is not
   torch.optim's). An optimizer that reuses a rule (AdamW) needs only the ``Optimizer`` entry.
3. Its NumPy float64 reference in ``tests/reference.py``, a function of the optimizer's name
   written by hand from the equations.
4. Its README row (the optimizer table of "Optimizers").

Then regenerate and rebuild: ``python setup.py build_ext --inplace`` (it runs
``python tools/generate.py``; run that alone to look at the generated files); record the
goldens from the reference implementation, ``python tests/golden/make_golden.py`` (needs
torch and the reference's package); and run ``pytest tests/test_registry.py``, which names
whatever still lacks the new optimizer. Everything else is made from the entry: the C
structs, constants, kernel instances and option dispatch, the Cython and CUDA wrappers, the
runner, the registry entry (``fastopt._specs``), the class (``fastopt.optim.first_order``),
the functional form (``fastopt.functional``), the torch adapter's class (``fastopt.torch``),
the benchmark contenders (``bench/impls.py``) and the test lists (``tests/cases.py``,
``tests/cuda_cases.py`` and every test that iterates the table).

Fields
------
``Kernel``: one compiled rule (``fo_<name>_rule_<f32|f64>``).
  ``inputs``     the names the expressions below may use, in the order of the runner's
                 arguments (``fastopt._runners.<name>(mod, plan, grads, *inputs, name)``):
                 ``step`` (1-based), ``lr`` (this step's learning rate), ``first`` (the state
                 buffers were created for this step) and hyperparameters.
  ``derived``    named intermediate values of a step, in order: (name, Python expression over
                 ``inputs`` and the names before it), computed once per step before
                 ``scalars`` and ``flags``, which may use them (RAdam's ``rho_t``).
  ``scalars``    the double fields of ``fo_<name>_hp``, in order: (field, Python expression
                 over ``inputs`` and ``derived``), computed once per step.
  ``consts``     the fields of the rule's ``fo_<name>_k``, in the struct's order: (field, C
                 expression over the hp fields, evaluated in double and rounded once to the
                 element type); ``flags`` follows them implicitly.
  ``flags``      option flag -> Python condition over ``inputs`` and ``derived`` that sets it
                 (a flag may depend on the step: RAdam's RECTIFY).
  ``state``      the rule's state slots in order: (torch's state key, the flag that needs it or
                 None for always, initial value: a hyperparameter name, a number,
                 ``"param"``: a copy of the parameter when the buffer is created, or "lr": the
                 learning rate of the step that creates the buffer (Rprop's step_size).
                 ``quant``: SIGNED or UNSIGNED when the buffer may be held in a low-bit
                 state format (``state_dtype="bfloat16"|"int8"``; int8 uses bitsandbytes'
                 signed or unsigned dynamic map), None when it always stays float32; a
                 kernel with such a slot is compiled for every ``STATE_FORMATS`` entry
                 (``state_formats``, csrc/qstate.c), the rule itself unchanged.
  ``cases``      the flag combinations that get their own branch-free loop instance (CPU and
                 mixed precision); the union of their flags is the instance mask.
  ``cost``       relative cost per element (SGD = 1) for the serial/parallel threshold.
  ``plain``      the rule's common case, when the low-bit state loop runs it as an instance of
                 its own (csrc/qstate.c): the X of ``FO_PLAIN_X(kv, kp, SFX)`` in
                 ``csrc/fastopt/rules.h``, the test whether a call's constants are that case
                 (Adam, RAdam, NAdam: "MOMENTS"); None: no such instance.
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
  ``fixed``      hyperparameters that are not arguments (AdamW's decoupled_weight_decay=True).
  ``keyword_only`` the first keyword-only hyperparameter of the class signature (torch's).
  ``cases``      option sets tested against the reference implementation (golden files and
                 live), the NumPy oracle, every backend and precision; ``extra_cases`` those
                 the reference implementation lacks (tested against the oracle only).
  ``doc``        the class docstring: the algorithm box, defaults, state, an example.
  ``reference``  "module.Class" of the implementation whose numbers it reproduces (default
                 ``torch.optim.<class_name>``); the golden files are recorded from it.
  ``group_state`` group-level scalars the optimizer itself updates every step and keeps in the
                 param group, as its reference does (Schedule-Free's ``k``, ``weight_sum``,
                 ``lr_max``): ``GroupState(name, initial value, validity rule)``. They are
                 filled in by ``add_param_group``, checked like hyperparameters when a group or
                 a state_dict is read, saved by ``state_dict``/``fo.save`` with the group and
                 restored by ``load_state_dict``/``fo.load``; they are not constructor
                 arguments. The functional form takes them as keywords and returns their new
                 values.
  ``advance``    the per-step group computation, once per group and step before the kernel:
                 ``(name, Python expression)`` assignments in order, over the hyperparameters,
                 the group state, the ``param_scalars``, ``step`` (1-based), ``lr`` (this
                 step's learning rate) and the names assigned before. An assigned group-state name is its new value (written back to the
                 group after the kernel ran); any other name (and ``lr``, reassigned) is a
                 local the kernel's ``inputs`` may use.
  ``modes``      ``Modes(key, initial, state, train, eval)`` for optimizers whose parameters
                 sit at one of two points (Schedule-Free: the gradient point y in train mode,
                 the average x in eval mode). The class gets ``train()`` and ``eval()``: each
                 group not yet in that mode moves every parameter with state buffer ``state``
                 by ``p = lerp(p, state, w)``, ``w`` the Python expression ``train`` or
                 ``eval`` over the group's hyperparameters and kernel inputs, and sets the
                 group's bool ``key`` (kept in the group like ``group_state``, starting at
                 ``initial``). ``step`` refuses a group in eval mode (RuntimeError, nothing
                 changed).
  ``adapters``   the framework adapters made for it (``"torch"``: ``fastopt.torch``).
  ``param_scalars`` per-parameter scalar state that the reference keeps next to each
                 parameter's ``step`` (torch's 0-d tensors: NAdam's ``mu_product``, ASGD's
                 ``eta`` and ``mu``) and that depends only on the step, the hyperparameters
                 and the learning rates: ``ParamScalar(name, init)``, ``init`` a Python
                 expression over the hyperparameters and ``lr`` (the learning rate of the step
                 that creates the state). The ``advance`` reads the current value under its
                 name and assigning the name there gives the new value, so it is computed once
                 per group and step, outside the element loop; ``as_stored(x)`` there is x
                 in the precision the reference stores these scalars in (float64; in
                 ``fastopt.torch`` torch's scalar dtype, to which each new value is also
                 rounded, as torch's in-place updates of its 0-d tensors round).
                 ``in_place``: the reference updates the stored tensor in place (NAdam's
                 ``mu_product *= mu``), so after torch's load_state_dict, which casts it to
                 the parameter's dtype, it is rounded to that dtype (``fastopt.torch``);
                 otherwise each new value is made in torch's scalar dtype and copied in
                 (ASGD's ``eta``), whatever the stored tensor's dtype. The classes keep one value per
                 group (like the step count) and save it in every parameter's state entry, in
                 the reference's layout (``state_dict``, ``fo.save``); loading refuses
                 parameters of one group with different values. ``fastopt.torch`` keeps them
                 as 0-d tensors in each parameter's state, as torch. The functional form takes
                 them as keywords (None: the initial value) and returns their new values.
"""
from collections import namedtuple

Flag = namedtuple("Flag", "name bit doc")
Kernel = namedtuple("Kernel", "name title inputs scalars consts flags state cases cost backends "
                   "derived plain", defaults=((), None))
State = namedtuple("State", "name needs init arg quant", defaults=(None, None))
Optimizer = namedtuple(
    "Optimizer",
    "name class_name kernel hyper inputs checks torch fixed keyword_only cases extra_cases doc "
    "reference group_state advance modes adapters param_scalars",
    defaults=((), (), None, (), (), "", None, (), (), None, ("torch",), ()))
Hyper = namedtuple("Hyper", "name default rule torch_error")
GroupState = namedtuple("GroupState", "name init rule")
Modes = namedtuple("Modes", "key initial state train eval")
ParamScalar = namedtuple("ParamScalar", "name init in_place", defaults=(False,))

#: State.init of a buffer that starts as a copy of its parameter
PARAM = "param"

#: State.quant: the buffer may be held in a low-bit state format (``state_dtype``), with the
#: signed (first moments, momenta) or unsigned (second moments, sums of squares) int8 map
SIGNED = "signed"
UNSIGNED = "unsigned"

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
    Flag("RECTIFY", 512, "RAdam: the variance is tractable (rho_t > 5; Schedule-Free RAdam: "
                         "rho_t > 4): rectified adaptive step"),
    Flag("AVERAGE", 1024, "ASGD: averaging has started (mu != 1): ax += mu (p - ax), else ax = p"),
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
        state=(State("momentum_buffer", "MOMENTUM", 0, quant=SIGNED),),
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
        state=(State("sum", None, "initial_accumulator_value", arg="state_sum", quant=UNSIGNED),),
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
        state=(State("square_avg", None, 0, quant=UNSIGNED),
               State("momentum_buffer", "MOMENTUM", 0, quant=SIGNED),
               State("grad_avg", "CENTERED", 0, quant=SIGNED)),
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
        state=(State("exp_avg", None, 0, quant=SIGNED), State("exp_avg_sq", None, 0, quant=UNSIGNED),
               State("max_exp_avg_sq", "AMSGRAD", 0, quant=UNSIGNED)),
        cases=((), ("AMSGRAD",), ("DECOUPLED",), ("AMSGRAD", "DECOUPLED")),
        plain="MOMENTS",
        cost=3, backends=BACKENDS,
    ),
    Kernel(
        name="adadelta", title="Adadelta",
        inputs=("step", "lr", "rho", "eps", "weight_decay", "maximize"),
        scalars=(("lr", "lr"), ("rho", "rho"), ("eps", "eps"), ("weight_decay", "weight_decay")),
        consts=(("lr", "lr"), ("rho", "rho"), ("one_minus_rho", "1.0 - rho"), ("eps", "eps"),
                ("weight_decay", "weight_decay")),
        flags={"MAXIMIZE": "maximize"},
        state=(State("square_avg", None, 0, quant=UNSIGNED),
               State("acc_delta", None, 0, quant=UNSIGNED)),
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
        state=(State("exp_avg", None, 0, quant=SIGNED), State("exp_inf", None, 0, quant=UNSIGNED)),
        cases=((),),
        cost=2, backends=BACKENDS,
    ),
    Kernel(
        name="lion", title="Lion",
        inputs=("lr", "beta1", "beta2", "weight_decay", "maximize"),
        scalars=(("lr", "lr"), ("beta1", "beta1"), ("beta2", "beta2"),
                 ("decay_factor", "1 - lr * weight_decay")),
        consts=(("lr", "lr"), ("beta1", "beta1"), ("one_minus_beta1", "1.0 - beta1"),
                ("beta2", "beta2"), ("one_minus_beta2", "1.0 - beta2"),
                ("decay_factor", "decay_factor")),
        flags={"MAXIMIZE": "maximize"},
        state=(State("exp_avg", None, 0, quant=SIGNED),),
        cases=((),),
        cost=2, backends=BACKENDS,
    ),
    Kernel(
        name="schedule_free_adamw", title="Schedule-Free AdamW",
        inputs=("t", "lr", "ckp1", "beta1", "beta2", "eps", "weight_decay"),
        scalars=(("lr", "lr"), ("ckp1", "ckp1"), ("y_coef", "lr * (beta1 * (1 - ckp1) - 1)"),
                 ("beta2", "beta2"), ("bc2", "1 - beta2 ** t"), ("eps", "eps"),
                 ("weight_decay", "weight_decay")),
        consts=(("lr", "lr"), ("ckp1", "ckp1"), ("one_minus_ckp1", "1.0 - ckp1"),
                ("small_ckp1", "ckp1 < 0.5 && ckp1 > -0.5"), ("y_coef", "y_coef"),
                ("beta2", "beta2"), ("one_minus_beta2", "1.0 - beta2"), ("bc2", "bc2"),
                ("eps", "eps"), ("weight_decay", "weight_decay")),
        flags={},
        state=(State("z", None, PARAM), State("exp_avg_sq", None, 0, quant=UNSIGNED)),
        cases=((),),
        cost=3, backends=BACKENDS,
    ),
    Kernel(
        name="schedule_free_sgd", title="Schedule-Free SGD",
        inputs=("lr", "ckp1", "momentum", "weight_decay"),
        scalars=(("lr", "lr"), ("ckp1", "ckp1"),
                 ("y_coef", "lr * (momentum * (1 - ckp1) - 1)"), ("weight_decay", "weight_decay")),
        consts=(("lr", "lr"), ("ckp1", "ckp1"), ("one_minus_ckp1", "1.0 - ckp1"),
                ("small_ckp1", "ckp1 < 0.5 && ckp1 > -0.5"), ("y_coef", "y_coef"),
                ("weight_decay", "weight_decay")),
        flags={},
        state=(State("z", None, PARAM),),
        cases=((),),
        cost=2, backends=BACKENDS,
    ),
    Kernel(
        name="schedule_free_radam", title="Schedule-Free RAdam",
        inputs=("t", "lr", "ckp1", "rho_t", "beta1", "beta2", "eps", "weight_decay"),
        scalars=(("lr", "lr"), ("ckp1", "ckp1"), ("y_coef", "lr * (beta1 * (1 - ckp1) - 1)"),
                 ("beta2", "beta2"), ("bc2", "1 - beta2 ** t"), ("eps", "eps"),
                 ("weight_decay", "weight_decay")),
        consts=(("lr", "lr"), ("ckp1", "ckp1"), ("one_minus_ckp1", "1.0 - ckp1"),
                ("small_ckp1", "ckp1 < 0.5 && ckp1 > -0.5"), ("y_coef", "y_coef"),
                ("beta2", "beta2"), ("one_minus_beta2", "1.0 - beta2"), ("bc2", "bc2"),
                ("eps", "eps"), ("weight_decay", "weight_decay")),
        # the package's condition (torch's RAdam: rho_t > 5); rho_t comes from the advance
        flags={"RECTIFY": "rho_t > 4.0"},
        state=(State("z", None, PARAM), State("exp_avg_sq", None, 0, quant=UNSIGNED)),
        cases=((), ("RECTIFY",)),
        cost=3, backends=BACKENDS,
    ),
    Kernel(
        name="radam", title="RAdam",
        inputs=("step", "lr", "beta1", "beta2", "eps", "weight_decay", "maximize",
                "decoupled_weight_decay"),
        # torch's length of the approximated simple moving average, and its limit
        derived=(("rho_inf", "2 / (1 - beta2) - 1"),
                 ("rho_t", "rho_inf - 2 * step * beta2 ** step / (1 - beta2 ** step)")),
        scalars=(("lr", "lr"), ("bc1", "1 - beta1 ** step"), ("beta1", "beta1"),
                 ("beta2", "beta2"), ("bc2_sqrt", "(1 - beta2 ** step) ** 0.5"),
                 ("rect", "((rho_t - 4) * (rho_t - 2) * rho_inf"
                          " / ((rho_inf - 4) * (rho_inf - 2) * rho_t)) ** 0.5"
                          " if rho_t > 5 else 0.0"),
                 ("eps", "eps"), ("weight_decay", "weight_decay"),
                 ("decay_factor", "1 - lr * weight_decay")),
        consts=(("lr", "lr"), ("bc1", "bc1"), ("beta1", "beta1"),
                ("one_minus_beta1", "1.0 - beta1"), ("beta2", "beta2"),
                ("one_minus_beta2", "1.0 - beta2"), ("bc2_sqrt", "bc2_sqrt"), ("rect", "rect"),
                ("eps", "eps"), ("weight_decay", "weight_decay"),
                ("decay_factor", "decay_factor")),
        flags={"MAXIMIZE": "maximize", "DECOUPLED": "decoupled_weight_decay",
               "RECTIFY": "rho_t > 5"},
        state=(State("exp_avg", None, 0, quant=SIGNED), State("exp_avg_sq", None, 0, quant=UNSIGNED)),
        cases=((), ("RECTIFY",), ("DECOUPLED",), ("DECOUPLED", "RECTIFY")),
        plain="MOMENTS",
        cost=3, backends=BACKENDS,
    ),
    Kernel(
        name="rprop", title="Rprop",
        inputs=("etaminus", "etaplus", "step_size_min", "step_size_max", "maximize"),
        scalars=(("etaminus", "etaminus"), ("etaplus", "etaplus"),
                 ("step_size_min", "step_size_min"), ("step_size_max", "step_size_max")),
        consts=(("etaminus", "etaminus"), ("etaplus", "etaplus"),
                ("step_size_min", "step_size_min"), ("step_size_max", "step_size_max")),
        flags={"MAXIMIZE": "maximize"},
        # the step sizes start at the group's lr, which the rule does not read otherwise.
        # No low-bit format (quant): prev only carries a sign, and step_size is a per-element
        # step multiplied by etaplus/etaminus every step across many decades, which a
        # block-relative int8 format would round to zero (frozen) and bfloat16 would bias.
        state=(State("prev", None, 0), State("step_size", None, "lr")),
        cases=((),),
        cost=2, backends=BACKENDS,
    ),
    Kernel(
        name="nadam", title="NAdam",
        # mu, mu_next and mu_product come from the optimizer's advance (once per step)
        inputs=("step", "lr", "beta1", "beta2", "eps", "weight_decay", "mu", "mu_next",
                "mu_product", "maximize", "decoupled_weight_decay"),
        scalars=(("beta1", "beta1"), ("beta2", "beta2"), ("bc2", "1 - beta2 ** step"),
                 ("eps", "eps"), ("weight_decay", "weight_decay"),
                 ("decay_factor", "1 - lr * weight_decay"),
                 ("grad_coef", "-lr * (1.0 - mu) / (1.0 - mu_product)"),
                 ("avg_coef", "(-lr * mu_next) / (1.0 - mu_product * mu_next)")),
        consts=(("beta1", "beta1"), ("one_minus_beta1", "1.0 - beta1"), ("beta2", "beta2"),
                ("one_minus_beta2", "1.0 - beta2"), ("bc2", "bc2"), ("eps", "eps"),
                ("weight_decay", "weight_decay"), ("decay_factor", "decay_factor"),
                ("grad_coef", "grad_coef"), ("avg_coef", "avg_coef")),
        flags={"MAXIMIZE": "maximize", "DECOUPLED": "decoupled_weight_decay"},
        state=(State("exp_avg", None, 0, quant=SIGNED),
               State("exp_avg_sq", None, 0, quant=UNSIGNED)),
        cases=((), ("DECOUPLED",)),
        plain="MOMENTS",
        cost=3, backends=BACKENDS,
    ),
    Kernel(
        name="asgd", title="ASGD",
        # eta_t, mu_t: the eta and mu of the state as the step finds them (the advance)
        inputs=("eta_t", "mu_t", "lambd", "weight_decay", "maximize"),
        scalars=(("eta", "eta_t"), ("decay", "1 - lambd * eta_t"), ("mu", "mu_t"),
                 ("weight_decay", "weight_decay")),
        consts=(("eta", "eta"), ("decay", "decay"), ("mu", "mu"),
                ("weight_decay", "weight_decay")),
        flags={"MAXIMIZE": "maximize", "AVERAGE": "mu_t != 1"},
        # ax is a parameter-like iterate (the Polyak average one evaluates; ax = p before
        # averaging starts), not a moment: it stays float32, as Schedule-Free's z (no quant)
        state=(State("ax", None, 0),),
        cases=((), ("AVERAGE",)),
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



# Schedule-Free (schedulefree.AdamWScheduleFree / SGDScheduleFree): the keywords both share,
# the group-level scalars the package keeps in each param group, and its per-step weight c_t
_SF_HYPER = (Hyper("warmup_steps", 0, "integer", None), Hyper("r", 0.0, "real", None),
             Hyper("weight_lr_power", 2.0, "real", None),
             Hyper("foreach", True, "optional_boolean", None))
_SF_GROUP_STATE = (GroupState("k", 0, "whole"), GroupState("weight_sum", 0.0, "real"),
                   GroupState("lr_max", -1.0, "real"), GroupState("scheduled_lr", 0.0, "real"))
_SF_ADVANCE = (
    ("t", "k + 1"),
    ("lr", "lr * (t / warmup_steps if k < warmup_steps else 1.0)"),   # linear warmup
    ("scheduled_lr", "lr"),
    ("lr_max", "max(lr, lr_max)"),
    ("weight", "t ** r * lr_max ** weight_lr_power"),
    ("weight_sum", "weight_sum + weight"),
    ("ckp1", "weight / weight_sum if weight_sum != 0 else 0.0"),    # the package's c_{k+1}
    ("k", "t"),
)
# Schedule-Free RAdam: no warmup; the lr of a step is rectified (rho_t > 4), or while rho_t <= 4
# the step is plain SGD at lr, or with silent_sgd_phase (the default) lr = 0: only the second
# moment moves, and the weight of the step in the average is 0 (w_t = t^r 0^q)
_SF_RADAM_ADVANCE = (
    ("t", "k + 1"),
    ("rho_inf", "2 / (1 - beta2) - 1"),
    ("rho_t", "rho_inf - 2 * t * beta2 ** t / (1 - beta2 ** t)"),
    ("lr", "lr * (((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))"
           " ** 0.5 if rho_t > 4.0 else (0.0 if silent_sgd_phase else 1.0))"),
    *_SF_ADVANCE[2:],
)


_SF_WARMUP = (r"``warmup_steps`` :math:`W`, ", r"\gamma \min(1, t / W)", "warmup_steps=0, ")


def _sf_doc(base, symbols, moment, state, defaults, example, schedule=_SF_WARMUP):
    text = r"""Schedule-Free @BASE@: no learning-rate schedule; the iterate is an online average.

        With learning rate :math:`\gamma` (``lr``), momentum :math:`@SYMBOLS@, weight decay
        :math:`\lambda` (``weight_decay``), @WARMUP@``r`` and
        ``weight_lr_power`` :math:`q`, step :math:`t` (the group's ``k + 1``) with gradient
        :math:`g_t` taken at the parameters :math:`y` does

        .. math::
            \gamma_t &= @SCHEDULE@, \quad \gamma_{\max} = \max_{s \le t} \gamma_s,
            \quad w_t = t^r \gamma_{\max}^q, \quad c_t = w_t / \textstyle\sum_{s \le t} w_s \\
            @MOMENT@
            y_t &= (1 - c_t)\, y_{t-1} + c_t z_{t-1} + \gamma_t (\beta (1 - c_t) - 1)\, d_t \\
            z_t &= z_{t-1} - \gamma_t d_t

        (:math:`\beta` the momentum or :math:`\beta_1`). :math:`y` interpolates between the
        averaged point :math:`x` and the base sequence :math:`z`, :math:`y = (1 - \beta) z +
        \beta x`; no :math:`x` is stored. ``opt.train()`` puts the parameters at :math:`y`
        (where gradients are taken) and ``opt.eval()`` at :math:`x` (where the model is
        evaluated and saved), as the ``schedulefree`` package requires; a step in eval mode
        raises RuntimeError. fastopt starts in train mode (the package starts in eval mode and
        refuses a step before ``train()``; before the first step both points are the same, so
        calling ``train()`` first, as the package requires, changes nothing). The group keeps
        the package's scalars ``k``, ``weight_sum``, ``lr_max``, ``scheduled_lr`` and
        ``train_mode``; state_dict and ``fo.save`` carry them. State: @STATE@; ``foreach`` is
        accepted and ignored (one fused pass).

        Defaults: ``@DEFAULTS@, @WARMUP_DEFAULT@r=0, weight_lr_power=2``, as the
        ``schedulefree`` package, whose results it reproduces. Reference: Defazio et al., "The
        Road Less Scheduled", NeurIPS 2024.
@EXAMPLE@
        """
    for key, value in (("@BASE@", base), ("@SYMBOLS@", symbols), ("@MOMENT@", moment.strip()),
                       ("@STATE@", state), ("@DEFAULTS@", defaults), ("@EXAMPLE@", example),
                       ("@WARMUP@", schedule[0]), ("@SCHEDULE@", schedule[1]),
                       ("@WARMUP_DEFAULT@", schedule[2])):
        text = text.replace(key, value)
    return text

OPTIMIZERS = {o.name: o for o in (
    Optimizer(
        name="sgd", class_name="SGD", kernel="sgd", torch=("no_step", "optional_state"),
        keyword_only="maximize",
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
        cases=(
            dict(lr=0.05),
            dict(lr=0.05, momentum=0.9),
            dict(lr=0.02, momentum=0.9, dampening=0.1, weight_decay=0.01),
            dict(lr=0.02, momentum=0.9, nesterov=True, weight_decay=0.01),
            dict(lr=0.02, momentum=0.5, maximize=True),
        ),
        extra_cases=(
            dict(lr=0.02, momentum=0.9, sutskever=True),
            dict(lr=0.02, momentum=0.9, sutskever=True, nesterov=True),
        ),
        doc=r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

        With learning rate :math:`\gamma` (``lr``), momentum :math:`\mu` (``momentum``), dampening
        :math:`\tau` (``dampening``) and weight decay :math:`\lambda` (``weight_decay``), each step
        with gradient :math:`g_t` (negated when ``maximize``) does

        .. math::
            g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
            b_t &= g_t \ \text{if } t = 1 \text{ else } \mu b_{t-1} + (1 - \tau) g_t \\
            d_t &= g_t + \mu b_t \ \text{(nesterov)} \quad \text{else } d_t = b_t \\
            \theta_t &= \theta_{t-1} - \gamma d_t

        (with ``momentum=0``: :math:`\theta_t = \theta_{t-1} - \gamma g_t`, plain gradient descent
        on full-batch gradients). ``sutskever=True`` selects the lecture's form
        :math:`v_t = \mu v_{t-1} - \gamma g_t,\ \theta_t = \theta_{t-1} + v_t` (Nesterov:
        :math:`\theta_t = \theta_{t-1} + \mu v_t - \gamma g_t`), with :math:`v_0 = 0`; it equals the
        default form while ``lr`` is constant. State: ``momentum_buffer`` (:math:`b` or :math:`v`).

        Defaults: ``lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False``, as torch.
        Reference: Sutskever et al., "On the importance of initialization and momentum in deep
        learning", ICML 2013.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.SGD([w], lr=0.1, momentum=0.9)
        >>> opt.step([2 * w])          # gradient of ||w||^2
        True
        >>> w
        array([ 0.8, -1.6])
        """,
    ),
    Optimizer(
        name="adagrad", class_name="Adagrad", kernel="adagrad", torch=("eager_state",),
        keyword_only="maximize",
        hyper=(_lr(1e-2), Hyper("lr_decay", 0.0, "nonneg", "Invalid lr_decay value: {value}"),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("initial_accumulator_value", 0.0, "nonneg",
                     "Invalid initial_accumulator_value value: {value}"),
               Hyper("eps", 1e-10, "nonneg", _EPS), Hyper("maximize", False, "boolean", None),
               Hyper("eps_in_sqrt", False, "boolean", None)),
        inputs={}, checks=(),
        cases=(
            dict(lr=0.1),
            dict(lr=0.1, lr_decay=0.01, weight_decay=0.01, initial_accumulator_value=0.1),
            dict(lr=0.05, eps=1e-06, maximize=True),
        ),
        extra_cases=(
            dict(lr=0.1, eps=0.001, eps_in_sqrt=True),
        ),
        doc=r"""Adagrad: per-coordinate steps scaled by the root of the summed squared gradients.

        With learning rate :math:`\gamma` (``lr``), decay :math:`\eta` (``lr_decay``), weight decay
        :math:`\lambda`, :math:`\epsilon` (``eps``) and :math:`s_0` = ``initial_accumulator_value``:

        .. math::
            g_t &\leftarrow g_t + \lambda \theta_{t-1}, \qquad
            \tilde\gamma_t = \gamma / (1 + (t - 1)\eta) \\
            s_t &= s_{t-1} + g_t^2 \\
            \theta_t &= \theta_{t-1} - \tilde\gamma_t\, g_t / (\sqrt{s_t} + \epsilon)

        ``eps_in_sqrt=True`` uses the lecture's :math:`g_t / \sqrt{s_t + \epsilon}`. State: ``sum``.
        Defaults: ``lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
        eps=1e-10``, as torch. Reference: Duchi, Hazan, Singer, JMLR 12 (2011).

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.Adagrad([w], lr=0.5).step([2 * w])
        True
        >>> w
        array([ 0.5, -1.5])
        """,
    ),
    Optimizer(
        name="rmsprop", class_name="RMSprop", kernel="rmsprop",
        keyword_only="maximize",
        hyper=(_lr(1e-2), Hyper("alpha", 0.99, "nonneg", "Invalid alpha value: {value}"),
               Hyper("eps", 1e-8, "nonneg", _EPS), Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("momentum", 0.0, "nonneg", "Invalid momentum value: {value}"),
               Hyper("centered", False, "boolean", None), Hyper("maximize", False, "boolean", None),
               Hyper("eps_in_sqrt", False, "boolean", None)),
        inputs={}, checks=(),
        cases=(
            dict(lr=0.01),
            dict(lr=0.01, centered=True),
            dict(lr=0.005, momentum=0.9),
            dict(lr=0.005, alpha=0.9, centered=True, momentum=0.5, weight_decay=0.01),
            dict(lr=0.01, maximize=True),
        ),
        extra_cases=(
            dict(lr=0.01, eps=0.0001, eps_in_sqrt=True, centered=True),
        ),
        doc=r"""RMSprop: steps scaled by a running root-mean-square of the gradients.

        With learning rate :math:`\gamma`, smoothing :math:`\alpha` (``alpha``), :math:`\epsilon`,
        weight decay :math:`\lambda` and momentum :math:`\mu`:

        .. math::
            g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
            v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
            m_t &= \alpha m_{t-1} + (1 - \alpha) g_t, \quad
            a_t = \sqrt{v_t - m_t^2} + \epsilon \ \text{(centered)}
            \quad \text{else } a_t = \sqrt{v_t} + \epsilon \\
            b_t &= \mu b_{t-1} + g_t / a_t, \quad \theta_t = \theta_{t-1} - \gamma b_t
            \ \text{(momentum > 0)} \quad \text{else } \theta_t = \theta_{t-1} - \gamma g_t / a_t

        ``eps_in_sqrt=True`` uses the lecture's :math:`a_t = \sqrt{v_t + \epsilon}`. State:
        ``square_avg`` (:math:`v`), ``momentum_buffer`` (:math:`b`, when momentum > 0), ``grad_avg``
        (:math:`m`, when centered). Defaults: ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
        momentum=0, centered=False``, as torch. Reference: Hinton, Coursera lecture 6e (2012).

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.RMSprop([w], lr=0.01, alpha=0.75, eps=0.0).step([2 * w])
        True
        >>> w
        array([ 0.98, -1.98])
        """,
    ),
    Optimizer(
        name="adam", class_name="Adam", kernel="adam", hyper=_adam_hyper(0.0, False),
        keyword_only="maximize",
        inputs=_BETA_INPUTS, checks=(),
        cases=(
            dict(lr=0.01),
            dict(lr=0.01, amsgrad=True),
            dict(lr=0.01, weight_decay=0.01),
            dict(lr=0.02, betas=(0.8, 0.99), eps=1e-06, amsgrad=True, maximize=True),
            dict(lr=0.02, betas=(0.3, 0.6)),
        ),
        extra_cases=(
            dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True),
        ),
        doc=r"""Adam: bias-corrected running moments of the gradient and its square.

        With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, :math:`\epsilon`
        and weight decay :math:`\lambda` (added to the gradient; see :class:`AdamW` for the
        decoupled form):

        .. math::
            g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
            m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
            v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
            \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(amsgrad)}
            \quad \text{else } \hat v_t = v_t \\
            \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
            \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

        State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``max_exp_avg_sq``
        (:math:`\hat v`, with amsgrad). Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
        weight_decay=0, amsgrad=False``, as torch. References: Kingma & Ba, ICLR 2015; Reddi et al.
        (AMSGrad), ICLR 2018.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.Adam([w], lr=0.1).step([2 * w])
        True
        >>> w.round(6)
        array([ 0.9, -1.9])
        """,
    ),
    Optimizer(
        name="adamw", class_name="AdamW", kernel="adam", hyper=_adam_hyper(1e-2, True),
        keyword_only="maximize",
        inputs=_BETA_INPUTS, checks=(), fixed=("decoupled_weight_decay",
        ),
        cases=(
            dict(lr=0.01),
            dict(lr=0.01, weight_decay=0.1, amsgrad=True),
        ),
        doc=r"""AdamW: Adam with decoupled weight decay.

        As :class:`Adam` with :math:`\lambda = 0` in the gradient, after first shrinking the
        parameter: :math:`\theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}`.
        Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False``, as
        torch. Reference: Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.AdamW([w], lr=0.1, weight_decay=0.5).step([np.zeros(2)])
        True
        >>> w
        array([ 0.95, -1.9 ])
        """,
    ),
    Optimizer(
        name="adadelta", class_name="Adadelta", kernel="adadelta",
        keyword_only="maximize",
        hyper=(_lr(1.0), Hyper("rho", 0.9, "unit_closed", "Invalid rho value: {value}"),
               Hyper("eps", 1e-6, "nonneg", _EPS), Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("maximize", False, "boolean", None)),
        inputs={}, checks=(),
        cases=(
            dict(lr=1.0),
            dict(lr=0.5, rho=0.5, weight_decay=0.01),
            dict(lr=1.0, eps=0.0001, maximize=True),
        ),
        doc=r"""Adadelta: steps whose units come from running averages of past updates.

        With learning rate :math:`\gamma`, decay :math:`\rho` (``rho``), :math:`\epsilon` and weight
        decay :math:`\lambda`:

        .. math::
            g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
            v_t &= \rho v_{t-1} + (1 - \rho) g_t^2 \\
            \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
            u_t &= \rho u_{t-1} + (1 - \rho) \Delta_t^2, \qquad
            \theta_t = \theta_{t-1} - \gamma \Delta_t

        State: ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`). Defaults: ``lr=1.0,
        rho=0.9, eps=1e-6, weight_decay=0``, as torch. Reference: Zeiler, arXiv:1212.5701 (2012).

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.Adadelta([w], lr=1.0, rho=0.0, eps=1.0).step([np.array([1.0, 1.0])])
        True
        >>> w.round(6)
        array([ 0.292893, -2.707107])
        """,
    ),
    Optimizer(
        name="adamax", class_name="Adamax", kernel="adamax",
        keyword_only="maximize",
        hyper=(_lr(2e-3), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("maximize", False, "boolean", None)),
        inputs=_BETA_INPUTS, checks=(),
        cases=(
            dict(lr=0.01),
            dict(lr=0.01, betas=(0.3, 0.5), weight_decay=0.01, maximize=True),
        ),
        doc=r"""Adamax: Adam with the infinity norm in place of the second moment.

        With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, :math:`\epsilon`
        and weight decay :math:`\lambda`:

        .. math::
            g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
            m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
            u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon) \\
            \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\, \frac{m_t}{u_t}

        State: ``exp_avg`` (:math:`m`), ``exp_inf`` (:math:`u`). Defaults: ``lr=2e-3,
        betas=(0.9, 0.999), eps=1e-8, weight_decay=0``, as torch. Reference: Kingma & Ba, ICLR 2015,
        section 7.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.Adamax([w], lr=0.1, eps=0.0).step([2 * w])
        True
        >>> w
        array([ 0.9, -1.9])
        """,
    ),
    Optimizer(
        name="lion", class_name="Lion", kernel="lion", torch=("no_step",),
        reference="lion_pytorch.Lion", keyword_only="maximize",
        hyper=(_lr(1e-4), _BETAS._replace(default=(0.9, 0.99)),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("maximize", False, "boolean", None)),
        inputs=_BETA_INPUTS, checks=(),
        cases=(
            dict(lr=1e-3),
            dict(lr=3e-4, betas=(0.95, 0.98), weight_decay=0.1),
            dict(lr=1e-3, betas=(0.5, 0.9), weight_decay=0.01),
        ),
        extra_cases=(
            dict(lr=1e-3, weight_decay=0.01, maximize=True),
        ),
        doc=r"""Lion: the sign of an interpolated momentum, with decoupled weight decay.

        With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)` and weight decay
        :math:`\lambda`:

        .. math::
            \theta_{t-1} &\leftarrow (1 - \gamma\lambda)\,\theta_{t-1} \\
            c_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t \\
            \theta_t &= \theta_{t-1} - \gamma\,\mathrm{sign}(c_t) \\
            m_t &= \beta_2 m_{t-1} + (1 - \beta_2) g_t

        (:math:`\mathrm{sign}(0) = 0`). Every coordinate moves by exactly :math:`\gamma` (plus
        the decay), so Lion wants a learning rate 3-10x smaller than AdamW's and a weight decay
        3-10x larger for the same effective decay :math:`\gamma\lambda`. One state buffer:
        ``exp_avg`` (:math:`m`); no step count. Defaults ``lr=1e-4, betas=(0.9, 0.99),
        weight_decay=0``, as the ``lion-pytorch`` package, whose results it reproduces (its
        ``decoupled_weight_decay=True`` divides the decay by the initial lr: pass
        ``weight_decay / lr`` here for the same numbers). Reference: Chen et al., "Symbolic
        Discovery of Optimization Algorithms", NeurIPS 2023.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.Lion([w], lr=0.1).step([2 * w])
        True
        >>> w
        array([ 0.9, -1.9])
        """,
    ),    Optimizer(
        name="radam", class_name="RAdam", kernel="radam", keyword_only="maximize",
        hyper=(_lr(1e-3), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("decoupled_weight_decay", False, "boolean", None),
               Hyper("maximize", False, "boolean", None)),
        inputs=_BETA_INPUTS, checks=(),
        cases=(
            dict(lr=0.01),
            dict(lr=0.01, weight_decay=0.01),
            dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True),
            dict(lr=0.02, betas=(0.8, 0.99), eps=1e-06, maximize=True),
            dict(lr=0.02, betas=(0.3, 0.6)),
        ),
        doc=r"""RAdam: Adam with its adaptive step rectified, and plain momentum while it is not.

        With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, :math:`\epsilon`
        and weight decay :math:`\lambda` (added to the gradient, or with
        ``decoupled_weight_decay=True`` applied as :math:`\theta_{t-1} \leftarrow
        (1 - \gamma\lambda)\,\theta_{t-1}`):

        .. math::
            m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
            v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
            \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \qquad
            \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t} \\
            r_t &= \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
            {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
            \theta_t &= \theta_{t-1} - \gamma \frac{m_t}{1 - \beta_1^t}\,
            \frac{\sqrt{1 - \beta_2^t}}{\sqrt{v_t} + \epsilon}\, r_t
            \ \text{if } \rho_t > 5 \quad \text{else }
            \theta_t = \theta_{t-1} - \gamma \frac{m_t}{1 - \beta_1^t}

        Whether a step is rectified depends only on :math:`t` and :math:`\beta_2` (with the
        default :math:`\beta_2 = 0.999`, from step 6 on; never when :math:`\rho_\infty \le 5`).
        State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`). Defaults: ``lr=1e-3,
        betas=(0.9, 0.999), eps=1e-8, weight_decay=0, decoupled_weight_decay=False``, as
        torch. Reference: Liu et al., "On the Variance of the Adaptive Learning Rate and
        Beyond", ICLR 2020.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> fo.RAdam([w], lr=0.1).step([2 * w])    # step 1: not rectified, lr times the gradient
        True
        >>> w
        array([ 0.8, -1.6])
        """,
    ),    Optimizer(
        name="rprop", class_name="Rprop", kernel="rprop", keyword_only="maximize",
        hyper=(_lr(1e-2),
               Hyper("etas", (0.5, 1.2), "etas", "Invalid eta values: {value[0]}, {value[1]}"),
               Hyper("step_sizes", (1e-6, 50), "step_sizes", None),
               Hyper("maximize", False, "boolean", None)),
        inputs={"etaminus": "etas[0]", "etaplus": "etas[1]",
                "step_size_min": "step_sizes[0]", "step_size_max": "step_sizes[1]"},
        checks=(),
        cases=(
            dict(lr=0.01),
            dict(lr=0.05, etas=(0.3, 1.5), step_sizes=(1e-3, 0.2)),
            dict(lr=0.002, etas=(0.6, 1.1), step_sizes=(1e-6, 0.01), maximize=True),
        ),
        doc=r"""Rprop: per-coordinate step sizes grown or shrunk by the sign of the gradient.

        With learning rate :math:`\gamma` (the initial step size), ``etas``
        :math:`(\eta_-, \eta_+)` and ``step_sizes`` :math:`(\Gamma_{min}, \Gamma_{max})`, each
        coordinate keeps a step size :math:`\delta` (starting at :math:`\gamma`) and the previous
        gradient :math:`g_{t-1}` (starting at 0):

        .. math::
            \delta_t &= \mathrm{clamp}(\eta_+ \delta_{t-1}) \ \text{if } g_t g_{t-1} > 0,
            \quad \mathrm{clamp}(\eta_- \delta_{t-1}) \text{ and } g_t \leftarrow 0
            \ \text{if } g_t g_{t-1} < 0, \quad \delta_{t-1} \ \text{otherwise} \\
            \theta_t &= \theta_{t-1} - \mathrm{sign}(g_t)\, \delta_t, \qquad
            g_{t-1} \leftarrow g_t

        where clamp limits to :math:`[\Gamma_{min}, \Gamma_{max}]`. Only the gradient's sign
        matters, so Rprop suits full-batch training. Changing ``lr`` after the first step has no
        effect (the step sizes have their own state). No weight decay, as torch. State:
        ``prev`` (:math:`g_{t-1}`), ``step_size`` (:math:`\delta`). Defaults: ``lr=1e-2,
        etas=(0.5, 1.2), step_sizes=(1e-6, 50)``, as torch. Reference: Riedmiller & Braun, "A
        direct adaptive method for faster backpropagation learning: the RPROP algorithm", ICNN
        1993.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.Rprop([w], lr=0.1)
        >>> opt.step([2 * w]), opt.step([2 * w])    # same signs: the second step is 1.2 times
        (True, True)
        >>> w.round(6)
        array([ 0.78, -1.78])
        """,
    ),
    Optimizer(
        name="nadam", class_name="NAdam", kernel="nadam", keyword_only="maximize",
        hyper=(_lr(2e-3), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
               Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("momentum_decay", 4e-3, "nonneg", "Invalid momentum_decay value: {value}"),
               Hyper("decoupled_weight_decay", False, "boolean", None),
               Hyper("maximize", False, "boolean", None)),
        inputs=_BETA_INPUTS, checks=(),
        param_scalars=(ParamScalar("mu_product", "1.0", in_place=True),),
        # torch's momentum cache mu_t, mu_{t+1} and their running product
        advance=(("mu", "beta1 * (1.0 - 0.5 * 0.96 ** (step * momentum_decay))"),
                 ("mu_next", "beta1 * (1.0 - 0.5 * 0.96 ** ((step + 1) * momentum_decay))"),
                 # torch multiplies its stored 0-d tensor in place (mu in its dtype)
                 ("mu_product", "mu_product * as_stored(mu)")),
        cases=(
            dict(lr=0.01),
            dict(lr=0.01, weight_decay=0.01),
            dict(lr=0.01, weight_decay=0.05, decoupled_weight_decay=True),
            dict(lr=0.02, betas=(0.8, 0.99), eps=1e-06, momentum_decay=0.01, maximize=True),
            dict(lr=0.02, betas=(0.3, 0.6), momentum_decay=0.0),
        ),
        doc=r"""NAdam: Adam with Nesterov momentum and a decaying momentum schedule.

        With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, :math:`\epsilon`,
        ``momentum_decay`` :math:`\psi` and weight decay :math:`\lambda` (added to the
        gradient, or with ``decoupled_weight_decay=True`` applied as :math:`\theta_{t-1}
        \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}`):

        .. math::
            \mu_t &= \beta_1 \left(1 - \tfrac{1}{2}\, 0.96^{t \psi}\right), \qquad
            \Pi_t = \prod_{i \le t} \mu_i \\
            m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
            v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
            d_t = \sqrt{v_t / (1 - \beta_2^t)} + \epsilon \\
            \theta_t &= \theta_{t-1} - \gamma \frac{1 - \mu_t}{1 - \Pi_t} \frac{g_t}{d_t}
            - \gamma \frac{\mu_{t+1}}{1 - \Pi_t \mu_{t+1}} \frac{m_t}{d_t}

        :math:`\mu_t`, :math:`\mu_{t+1}` and :math:`\Pi_t` are computed once per step, outside
        the element loop. State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`) and, per
        parameter as torch, ``mu_product`` (:math:`\Pi_t`, a number). Defaults: ``lr=2e-3,
        betas=(0.9, 0.999), eps=1e-8, weight_decay=0, momentum_decay=4e-3,
        decoupled_weight_decay=False``, as torch. Reference: Dozat, "Incorporating Nesterov
        Momentum into Adam", ICLR 2016 workshop.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.NAdam([w], lr=0.1)
        >>> opt.step([2 * w])
        True
        >>> w.round(6)
        array([ 0.894355, -1.894355])
        >>> round(opt.state_dict()["state"][0]["mu_product"], 6)
        0.450073
        """,
    ),
    Optimizer(
        name="asgd", class_name="ASGD", kernel="asgd", keyword_only=None,
        hyper=(_lr(1e-2), Hyper("lambd", 1e-4, "real", None), Hyper("alpha", 0.75, "real", None),
               Hyper("t0", 1e6, "real", None), Hyper("weight_decay", 0.0, "nonneg", _WD),
               Hyper("maximize", False, "boolean", None)),
        inputs={}, checks=(),
        param_scalars=(ParamScalar("eta", "lr"), ParamScalar("mu", "1.0")),
        # the step uses eta and mu as the previous step left them, then sets them for the next
        advance=(("eta_t", "eta"), ("mu_t", "mu"),
                 ("eta", "lr / ((1 + lambd * lr * step) ** alpha)"),
                 ("mu", "1 / max(1, step - t0)")),
        cases=(
            dict(lr=0.01),
            dict(lr=0.05, lambd=1e-3, alpha=0.6, t0=20.0),
            dict(lr=0.02, lambd=0.01, t0=1.0, weight_decay=0.01),
            dict(lr=0.01, alpha=1.0, t0=100.0, weight_decay=0.05, maximize=True),
        ),
        doc=r"""ASGD: averaged stochastic gradient descent (Polyak-Ruppert averaging).

        With learning rate :math:`\gamma`, decay term ``lambd`` :math:`\lambda`, power
        ``alpha`` :math:`\alpha`, averaging start ``t0`` :math:`t_0` and weight decay
        :math:`w` (added to the gradient), step :math:`t` does, with :math:`\eta_1 = \gamma`
        and :math:`\mu_1 = 1`:

        .. math::
            \theta_t &= (1 - \lambda \eta_t)\, \theta_{t-1} - \eta_t g_t \\
            a_t &= a_{t-1} + \mu_t (\theta_t - a_{t-1}) \ \text{if } \mu_t \ne 1
            \quad \text{else } a_t = \theta_t \\
            \eta_{t+1} &= \frac{\gamma}{(1 + \lambda \gamma t)^\alpha}, \qquad
            \mu_{t+1} = \frac{1}{\max(1, t - t_0)}

        The parameters follow the SGD iterate; the average :math:`a` is the state ``ax``
        (evaluate with it; it equals the iterate until step :math:`t_0 + 2`). :math:`\eta` and
        :math:`\mu` are computed once per step, outside the element loop, and kept per
        parameter as torch (``eta``, ``mu``: numbers). Defaults: ``lr=1e-2, lambd=1e-4,
        alpha=0.75, t0=1e6, weight_decay=0``, as torch. Reference: Polyak & Juditsky,
        "Acceleration of Stochastic Approximation by Averaging", SIAM J. Control Optim. 1992.

        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.ASGD([w], lr=0.1)
        >>> opt.step([2 * w])
        True
        >>> w.round(6)
        array([ 0.79999, -1.59998])
        >>> opt.state[0]["ax"].round(6)
        array([ 0.79999, -1.59998])
        """,
    ),
    Optimizer(
        name="schedule_free_adamw", class_name="ScheduleFreeAdamW", kernel="schedule_free_adamw",
        torch=("no_step",), reference="schedulefree.AdamWScheduleFree",
        hyper=(_lr(0.0025), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
               Hyper("weight_decay", 0.0, "nonneg", _WD), *_SF_HYPER),
        inputs=_BETA_INPUTS, checks=(),
        group_state=_SF_GROUP_STATE, advance=_SF_ADVANCE,
        modes=Modes("train_mode", True, "z", train="1 - beta1", eval="1 - 1 / beta1"),
        cases=(
            dict(lr=0.01),
            dict(lr=0.02, betas=(0.8, 0.99), weight_decay=0.01, warmup_steps=10),
            dict(lr=0.01, betas=(0.95, 0.9), eps=1e-6, weight_decay=0.1, warmup_steps=30, r=1.0,
                 weight_lr_power=1.0),
            dict(lr=0.005, weight_decay=0.05, warmup_steps=5, weight_lr_power=0.0),
        ),
        doc=_sf_doc("AdamW", r"""\beta_1` (``betas[0]``; :math:`\beta_2` = ``betas[1]``),
        :math:`\epsilon` (``eps``)""", r"""
            v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
            d_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^{t})} + \epsilon} + \lambda y_{t-1} \\""",
            "``z`` (:math:`z`), ``exp_avg_sq`` (:math:`v`)",
            "lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0",
            r"""
        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.ScheduleFreeAdamW([w], lr=0.1)
        >>> opt.train()
        >>> opt.step([2 * w]), opt.step([2 * w])
        (True, True)
        >>> w.round(6)                 # y, where gradients are taken
        array([ 0.847965, -1.846427])
        >>> opt.eval(); w.round(6)     # the average x, where the model is evaluated
        array([ 0.852696, -1.851297])"""),
    ),
    Optimizer(
        name="schedule_free_sgd", class_name="ScheduleFreeSGD", kernel="schedule_free_sgd",
        torch=("no_step",), reference="schedulefree.SGDScheduleFree",
        hyper=(_lr(1.0), Hyper("momentum", 0.9, "open_unit",
                               "Momentum must be between 0 and 1 exclusive: {value}"),
               Hyper("weight_decay", 0.0, "nonneg", _WD), *_SF_HYPER),
        inputs={}, checks=(),
        group_state=_SF_GROUP_STATE, advance=_SF_ADVANCE,
        modes=Modes("train_mode", True, "z", train="1 - momentum", eval="1 - 1 / momentum"),
        cases=(
            dict(lr=0.1),
            dict(lr=0.05, momentum=0.8, weight_decay=0.01, warmup_steps=10),
            dict(lr=0.1, momentum=0.95, weight_decay=0.1, warmup_steps=30, r=1.0,
                 weight_lr_power=1.0),
        ),
        doc=_sf_doc("SGD", r"""\beta` (``momentum``)""", r"""
            d_t &= g_t + \lambda y_{t-1} \\""",
            "``z`` (:math:`z`)", "lr=1.0, momentum=0.9, weight_decay=0",
            r"""
        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.ScheduleFreeSGD([w], lr=0.1)
        >>> opt.train()
        >>> opt.step([2 * w]), opt.step([2 * w])
        (True, True)
        >>> w.round(6)                 # y, where gradients are taken
        array([ 0.712, -1.424])
        >>> opt.eval(); w.round(6)     # the average x, where the model is evaluated
        array([ 0.72, -1.44])"""),
    ),
    Optimizer(
        name="schedule_free_radam", class_name="ScheduleFreeRAdam", kernel="schedule_free_radam",
        torch=("no_step",), reference="schedulefree.RAdamScheduleFree",
        hyper=(_lr(0.0025), _BETAS, Hyper("eps", 1e-8, "nonneg", _EPS),
               Hyper("weight_decay", 0.0, "nonneg", _WD), *_SF_HYPER[1:],
               Hyper("silent_sgd_phase", True, "boolean", None)),
        inputs=_BETA_INPUTS, checks=(),
        group_state=_SF_GROUP_STATE, advance=_SF_RADAM_ADVANCE,
        modes=Modes("train_mode", True, "z", train="1 - beta1", eval="1 - 1 / beta1"),
        cases=(
            dict(lr=0.01, betas=(0.9, 0.8), silent_sgd_phase=False),   # SGD steps, then RAdam
            dict(lr=0.01),                                             # silent up to step 4
            dict(lr=0.02, betas=(0.8, 0.9), weight_decay=0.01),
            dict(lr=0.01, betas=(0.95, 0.99), eps=1e-6, weight_decay=0.1, r=1.0,
                 weight_lr_power=1.0, silent_sgd_phase=False),
            dict(lr=0.005, betas=(0.9, 0.95), weight_decay=0.05, weight_lr_power=0.0),
        ),
        doc=_sf_doc("RAdam", r"""\beta_1` (``betas[0]``; :math:`\beta_2` = ``betas[1]``),
        :math:`\epsilon` (``eps``)""", r"""
            \rho_\infty &= \frac{2}{1 - \beta_2} - 1, \quad
            \rho_t = \rho_\infty - \frac{2 t \beta_2^t}{1 - \beta_2^t}, \quad
            r_t = \sqrt{\frac{(\rho_t - 4)(\rho_t - 2)\rho_\infty}
            {(\rho_\infty - 4)(\rho_\infty - 2)\rho_t}} \\
            v_t &= \beta_2 v_{t-1} + (1 - \beta_2) g_t^2, \qquad
            d_t = \frac{g_t}{\sqrt{v_t / (1 - \beta_2^{t})} + \epsilon} + \lambda y_{t-1}
            \ \text{if } \rho_t > 4 \quad \text{else } d_t = g_t + \lambda y_{t-1} \\""",
            "``z`` (:math:`z`), ``exp_avg_sq`` (:math:`v`)",
            "lr=0.0025, betas=(0.9, 0.999), eps=1e-8, weight_decay=0",
            r"""
        >>> import numpy as np, fastopt as fo
        >>> w = np.array([1.0, -2.0])
        >>> opt = fo.ScheduleFreeRAdam([w], lr=0.1)
        >>> opt.train()
        >>> opt.step([2 * w])          # rho_t <= 4 (silent_sgd_phase): only v moves
        True
        >>> w
        array([ 1., -2.])
        >>> for _ in range(5):         # rectified from step 5 (rho_5 > 4 at beta2 = 0.999)
        ...     _ = opt.step([2 * w])
        >>> w.round(6)                 # y, where gradients are taken
        array([ 0.99641 , -1.996409])
        >>> opt.eval(); w.round(6)     # the average x, where the model is evaluated
        array([ 0.99649 , -1.996489])""",
            schedule=("``silent_sgd_phase``, ",
                      r"\gamma r_t \ (\rho_t > 4), \ \text{else } \gamma"
                      r" \text{ or } 0 \text{ with silent\_sgd\_phase}",
                      "silent_sgd_phase=True, ")),
    ),
)}


# ---------------------------------------------------------------------------- state formats
#: The formats optimizer state can be held in (``state_dtype``): float32 (the parameter's
#: dtype), bfloat16 (2 bytes: rounded to nearest even, or stochastically), int8 (1 byte plus a
#: float32 absmax per block of QBLOCK: bitsandbytes' blockwise dynamic quantization).
STATE_FORMATS = ("float32", "bfloat16", "int8")
#: elements per int8 block (one float32 absmax each), bitsandbytes' blocksize
QBLOCK = 256
#: tensors with fewer elements keep float32 state under state_dtype="int8" (bitsandbytes'
#: min_8bit_size)
MIN_8BIT_SIZE = 4096


def state_formats(kernel):
    """The state formats a kernel is compiled for: all of STATE_FORMATS when one of its state
    slots is quantizable (``State.quant``), else float32 only. Those kernels get a low-bit
    state loop (csrc/qstate.c, the "qstate" backend); slots without ``quant`` (a parameter-like
    iterate such as Schedule-Free's z) stay float32 in every format."""
    return STATE_FORMATS if any(s.quant for s in kernel.state) else STATE_FORMATS[:1]
