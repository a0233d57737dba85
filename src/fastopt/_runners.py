"""The runners: the per-step scalar math of every first-order optimizer, and its kernel call.

A runner turns one step's hyperparameters (and the 1-based step count) into the scalars and
option flags of the C rule (bias corrections, decayed step sizes, ...), computed once per call,
and calls the kernel module `mod` (``fastopt._kernels``, ``fastopt._mixed`` or
``fastopt.cuda``: the same interface) on a plan. `fastopt.functional`'s in-place steps, the
registry entries (``Spec.run`` in `fastopt._specs`) and so every optimizer class, mixed
precision and the torch adapter go through these functions, so each optimizer's step math is
written once. Nothing is validated here: callers check their arguments first.
"""

__all__ = ["sgd", "adagrad", "rmsprop", "adam", "adadelta", "adamax"]


def sgd(mod, plan, grads, first, lr, momentum, dampening, weight_decay, nesterov, maximize,
        sutskever, name="grads"):
    # `first`: the momentum buffer is new; torch's form then starts it at the gradient
    flags = ((mod.MAXIMIZE if maximize else 0) | (mod.NESTEROV if nesterov else 0)
             | (mod.MOMENTUM if momentum != 0 else 0) | (mod.SUTSKEVER if sutskever else 0)
             | (mod.FIRST if first and not sutskever else 0))
    mod.sgd(plan, grads, lr, momentum, dampening, weight_decay, flags, name)


def adagrad(mod, plan, grads, step, lr, lr_decay, weight_decay, eps, maximize, eps_in_sqrt,
            name="grads"):
    clr = lr / (1 + (step - 1) * lr_decay)
    flags = (mod.MAXIMIZE if maximize else 0) | (mod.EPS_IN_SQRT if eps_in_sqrt else 0)
    mod.adagrad(plan, grads, clr, eps, weight_decay, flags, name)


def rmsprop(mod, plan, grads, step, lr, alpha, eps, weight_decay, momentum, centered, maximize,
            eps_in_sqrt, name="grads"):
    flags = ((mod.MAXIMIZE if maximize else 0) | (mod.CENTERED if centered else 0)
             | (mod.MOMENTUM if momentum > 0 else 0) | (mod.EPS_IN_SQRT if eps_in_sqrt else 0))
    mod.rmsprop(plan, grads, lr, alpha, eps, weight_decay, momentum, flags, name)


def adam(mod, plan, grads, step, lr, beta1, beta2, eps, weight_decay, amsgrad, maximize,
         decoupled_weight_decay, name="grads"):
    bias_correction1 = 1 - beta1 ** step
    bias_correction2 = 1 - beta2 ** step
    flags = ((mod.MAXIMIZE if maximize else 0) | (mod.AMSGRAD if amsgrad else 0)
             | (mod.DECOUPLED if decoupled_weight_decay else 0))
    mod.adam(plan, grads, lr / bias_correction1, beta1, beta2, bias_correction2 ** 0.5, eps,
             weight_decay, 1 - lr * weight_decay, flags, name)


def adadelta(mod, plan, grads, step, lr, rho, eps, weight_decay, maximize, name="grads"):
    mod.adadelta(plan, grads, lr, rho, eps, weight_decay, (mod.MAXIMIZE if maximize else 0), name)


def adamax(mod, plan, grads, step, lr, beta1, beta2, eps, weight_decay, maximize, name="grads"):
    clr = lr / (1 - beta1 ** step)
    mod.adamax(plan, grads, clr, beta1, beta2, eps, weight_decay, (mod.MAXIMIZE if maximize else 0),
               name)
