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
import numpy as np

from . import _kernels, _runners, _specs, _validate
from ._newton import newton_step

__all__ = ["sgd_", "adagrad_", "rmsprop_", "adam_", "adamw_", "adadelta_", "adamax_", "newton_",
           "backend_for"]


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


def _check_hyper(name, **values):
    """Check hyperparameters with the registry's rules, those the classes apply to groups;
    returns them as plain Python values (a dict in the order given)."""
    spec = _specs.SPECS[name]
    values = {key: spec.rules.get(key, _validate.unit_open)(key, value)  # beta1, beta2: [0, 1)
              for key, value in values.items()}
    if spec.check is not None:
        spec.check({**spec.defaults, **values})
    return values


# --------------------------------------------------------------------------------------- SGD
def sgd_(param, grad, momentum_buffer=None, *, lr, momentum=0.0, dampening=0.0, weight_decay=0.0,
         nesterov=False, maximize=False, sutskever=False, step=None):
    """SGD / gradient descent step, in place; equations in :class:`fastopt.SGD`.

    With momentum, pass the `momentum_buffer` and the 1-based `step` (at step 1 the buffer is
    set to the gradient, as in torch; with ``sutskever=True`` it starts from its zeros).
    """
    lr = _check_lr(lr)
    momentum, dampening, weight_decay, nesterov, maximize, sutskever = _check_hyper(
        "sgd", momentum=momentum, dampening=dampening, weight_decay=weight_decay,
        nesterov=nesterov, maximize=maximize, sutskever=sutskever).values()
    if momentum != 0:
        if momentum_buffer is None:
            raise ValueError("momentum_buffer is required when momentum != 0")
        if step is None:
            raise ValueError("step is required when momentum != 0 (1 marks the first step)")
        step = _check_step(step)
    else:
        step = 0
    mod, plan = _plan(param, [(0, "momentum_buffer", momentum_buffer if momentum != 0 else _UNUSED)])
    _runners.sgd(mod, plan, _listify(grad, "grad"), step == 1, lr, momentum, dampening,
                 weight_decay, nesterov, maximize, sutskever, "grad")


# ----------------------------------------------------------------------------------- Adagrad
def adagrad_(param, grad, state_sum, *, step, lr, lr_decay=0.0, weight_decay=0.0, eps=1e-10,
             maximize=False, eps_in_sqrt=False):
    """Adagrad step, in place; equations in :class:`fastopt.Adagrad`."""
    lr, step = _check_lr(lr), _check_step(step)
    lr_decay, weight_decay, eps, maximize, eps_in_sqrt = _check_hyper(
        "adagrad", lr_decay=lr_decay, weight_decay=weight_decay, eps=eps, maximize=maximize,
        eps_in_sqrt=eps_in_sqrt).values()
    mod, plan = _plan(param, [(0, "state_sum", state_sum)])
    _runners.adagrad(mod, plan, _listify(grad, "grad"), step, lr, lr_decay, weight_decay, eps,
                     maximize, eps_in_sqrt, "grad")


# ----------------------------------------------------------------------------------- RMSprop
def rmsprop_(param, grad, square_avg, momentum_buffer=None, grad_avg=None, *, step=1, lr,
             alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0, centered=False, maximize=False,
             eps_in_sqrt=False):
    """RMSprop step, in place; equations in :class:`fastopt.RMSprop`.

    `momentum_buffer` is required when momentum > 0, `grad_avg` when centered.
    """
    lr, step = _check_lr(lr), _check_step(step)
    alpha, eps, weight_decay, momentum, centered, maximize, eps_in_sqrt = _check_hyper(
        "rmsprop", alpha=alpha, eps=eps, weight_decay=weight_decay, momentum=momentum,
        centered=centered, maximize=maximize, eps_in_sqrt=eps_in_sqrt).values()
    if momentum > 0 and momentum_buffer is None:
        raise ValueError("momentum_buffer is required when momentum > 0")
    if centered and grad_avg is None:
        raise ValueError("grad_avg is required when centered=True")
    mod, plan = _plan(param, [(0, "square_avg", square_avg),
                              (1, "momentum_buffer", momentum_buffer if momentum > 0 else _UNUSED),
                              (2, "grad_avg", grad_avg if centered else _UNUSED)])
    _runners.rmsprop(mod, plan, _listify(grad, "grad"), step, lr, alpha, eps, weight_decay,
                     momentum, centered, maximize, eps_in_sqrt, "grad")


# -------------------------------------------------------------------------------------- Adam
def adam_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
          weight_decay=0.0, amsgrad=False, max_exp_avg_sq=None, maximize=False,
          decoupled_weight_decay=False):
    """Adam step, in place; equations in :class:`fastopt.Adam` (AdamW with decoupled decay).

    `max_exp_avg_sq` is required when amsgrad=True.
    """
    lr, step = _check_lr(lr), _check_step(step)
    beta1, beta2, eps, weight_decay, amsgrad, maximize, decoupled_weight_decay = _check_hyper(
        "adam", beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay, amsgrad=amsgrad,
        maximize=maximize, decoupled_weight_decay=decoupled_weight_decay).values()
    if amsgrad and max_exp_avg_sq is None:
        raise ValueError("max_exp_avg_sq is required when amsgrad=True")
    mod, plan = _plan(param, [(0, "exp_avg", exp_avg), (1, "exp_avg_sq", exp_avg_sq),
                              (2, "max_exp_avg_sq", max_exp_avg_sq if amsgrad else _UNUSED)])
    _runners.adam(mod, plan, _listify(grad, "grad"), step, lr, beta1, beta2, eps, weight_decay,
                  amsgrad, maximize, decoupled_weight_decay, "grad")


def adamw_(param, grad, exp_avg, exp_avg_sq, *, step, lr, beta1=0.9, beta2=0.999, eps=1e-8,
           weight_decay=1e-2, amsgrad=False, max_exp_avg_sq=None, maximize=False):
    """AdamW step (Adam with decoupled weight decay), in place; see :class:`fastopt.AdamW`."""
    adam_(param, grad, exp_avg, exp_avg_sq, step=step, lr=lr, beta1=beta1, beta2=beta2, eps=eps,
          weight_decay=weight_decay, amsgrad=amsgrad, max_exp_avg_sq=max_exp_avg_sq,
          maximize=maximize, decoupled_weight_decay=True)


# ---------------------------------------------------------------------------------- Adadelta
def adadelta_(param, grad, square_avg, acc_delta, *, step=1, lr=1.0, rho=0.9, eps=1e-6,
              weight_decay=0.0, maximize=False):
    """Adadelta step, in place; equations in :class:`fastopt.Adadelta`."""
    lr, step = _check_lr(lr), _check_step(step)
    rho, eps, weight_decay, maximize = _check_hyper(
        "adadelta", rho=rho, eps=eps, weight_decay=weight_decay, maximize=maximize).values()
    mod, plan = _plan(param, [(0, "square_avg", square_avg), (1, "acc_delta", acc_delta)])
    _runners.adadelta(mod, plan, _listify(grad, "grad"), step, lr, rho, eps, weight_decay, maximize,
                      "grad")


# ------------------------------------------------------------------------------------ Adamax
def adamax_(param, grad, exp_avg, exp_inf, *, step, lr=2e-3, beta1=0.9, beta2=0.999, eps=1e-8,
            weight_decay=0.0, maximize=False):
    """Adamax step, in place; equations in :class:`fastopt.Adamax`."""
    lr, step = _check_lr(lr), _check_step(step)
    beta1, beta2, eps, weight_decay, maximize = _check_hyper(
        "adamax", beta1=beta1, beta2=beta2, eps=eps, weight_decay=weight_decay,
        maximize=maximize).values()
    mod, plan = _plan(param, [(0, "exp_avg", exp_avg), (1, "exp_inf", exp_inf)])
    _runners.adamax(mod, plan, _listify(grad, "grad"), step, lr, beta1, beta2, eps, weight_decay,
                    maximize, "grad")


# ------------------------------------------------------------------------------------ Newton
def newton_(param, grad, hessian, *, lr=1.0, damping=0.0):
    """Newton step, in place: ``param -= lr * (H + (damping + shift) I)^{-1} grad``.

    `hessian` is the (p, p) Hessian of `param` (p = param.size; one per array for lists),
    solved by Cholesky (fastopt._linalg); see :class:`fastopt.Newton`. Returns the identity
    shift that made the Hessian positive definite (0.0 when none was needed), one per array for
    lists. NumPy arrays only.
    """
    return newton_step(param, grad, hessian, lr, damping)
