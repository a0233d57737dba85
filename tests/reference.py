"""The independent oracle: each optimizer's update in plain NumPy float64, from the equations.

Written from the documented equations (the docstrings of fastopt's classes and torch.optim's
documentation), never derived from the kernels. `reference_step` advances one parameter and its
state dict by one step; `ReferenceOptimizer` adds torch's param-group mechanics (one step count
per group, lr read from the group each step, buffers created when first needed).
"""
import numpy as np

from fastopt._table import OPTIMIZERS

#: every optimizer of the table; each needs a function of its name below (the registry test
#: names any that lacks one)
NAMES = tuple(OPTIMIZERS)


def _grad(p, g, h):
    g = -g if h.get("maximize", False) else g
    if h.get("weight_decay", 0) != 0 and not h.get("decoupled_weight_decay", False):
        g = g + h["weight_decay"] * p
    return g


def sgd(p, g, s, h, t, lr):
    g = _grad(p, g, h)
    mu = h.get("momentum", 0.0)
    if mu == 0:
        return p - lr * g
    if h.get("sutskever", False):
        v = mu * s.get("momentum_buffer", np.zeros_like(p)) - lr * g
        s["momentum_buffer"] = v
        return p + (mu * v - lr * g if h.get("nesterov", False) else v)
    if s.get("momentum_buffer") is None:
        b = g.copy()
    else:
        b = mu * s["momentum_buffer"] + (1 - h.get("dampening", 0.0)) * g
    s["momentum_buffer"] = b
    d = g + mu * b if h.get("nesterov", False) else b
    return p - lr * d


def adagrad(p, g, s, h, t, lr):
    g = _grad(p, g, h)
    clr = lr / (1 + (t - 1) * h.get("lr_decay", 0.0))
    total = s.get("sum", np.full_like(p, h.get("initial_accumulator_value", 0.0))) + g * g
    s["sum"] = total
    eps = h.get("eps", 1e-10)
    denom = np.sqrt(total + eps) if h.get("eps_in_sqrt", False) else np.sqrt(total) + eps
    return p - clr * g / denom


def rmsprop(p, g, s, h, t, lr):
    g = _grad(p, g, h)
    alpha, eps = h.get("alpha", 0.99), h.get("eps", 1e-8)
    v = alpha * s.get("square_avg", np.zeros_like(p)) + (1 - alpha) * g * g
    s["square_avg"] = v
    if h.get("centered", False):
        m = alpha * s.get("grad_avg", np.zeros_like(p)) + (1 - alpha) * g
        s["grad_avg"] = m
        v = v - m * m
    a = np.sqrt(v + eps) if h.get("eps_in_sqrt", False) else np.sqrt(v) + eps
    mu = h.get("momentum", 0.0)
    if mu > 0:
        b = mu * s.get("momentum_buffer", np.zeros_like(p)) + g / a
        s["momentum_buffer"] = b
        return p - lr * b
    return p - lr * g / a


def _moments(p, g, s, h, lr):
    """Adam's and RAdam's start of a step: decoupled decay of p (or coupled decay in g), then
    the running moments m, v of the gradient (stored in `s`). Returns (p, m, v)."""
    b1, b2 = h.get("betas", (0.9, 0.999))
    if h.get("decoupled_weight_decay", False):
        p = p * (1 - lr * h.get("weight_decay", 0.0))
    g = _grad(p, g, h)
    m = b1 * s.get("exp_avg", np.zeros_like(p)) + (1 - b1) * g
    v = b2 * s.get("exp_avg_sq", np.zeros_like(p)) + (1 - b2) * g * g
    s["exp_avg"], s["exp_avg_sq"] = m, v
    return p, m, v


def adam(p, g, s, h, t, lr):
    b1, b2 = h.get("betas", (0.9, 0.999))
    p, m, v = _moments(p, g, s, h, lr)
    if h.get("amsgrad", False):
        v = np.maximum(s.get("max_exp_avg_sq", np.zeros_like(p)), v)
        s["max_exp_avg_sq"] = v
    m_hat = m / (1 - b1 ** t)
    v_hat = v / (1 - b2 ** t)
    return p - lr * m_hat / (np.sqrt(v_hat) + h.get("eps", 1e-8))


def adamw(p, g, s, h, t, lr):
    return adam(p, g, s, {**h, "decoupled_weight_decay": True}, t, lr)


def adadelta(p, g, s, h, t, lr):
    g = _grad(p, g, h)
    rho, eps = h.get("rho", 0.9), h.get("eps", 1e-6)
    v = rho * s.get("square_avg", np.zeros_like(p)) + (1 - rho) * g * g
    u = s.get("acc_delta", np.zeros_like(p))
    delta = np.sqrt(u + eps) / np.sqrt(v + eps) * g
    s["square_avg"] = v
    s["acc_delta"] = rho * u + (1 - rho) * delta * delta
    return p - lr * delta


def adamax(p, g, s, h, t, lr):
    g = _grad(p, g, h)
    b1, b2 = h.get("betas", (0.9, 0.999))
    m = b1 * s.get("exp_avg", np.zeros_like(p)) + (1 - b1) * g
    u = np.maximum(b2 * s.get("exp_inf", np.zeros_like(p)), np.abs(g) + h.get("eps", 1e-8))
    s["exp_avg"], s["exp_inf"] = m, u
    return p - lr / (1 - b1 ** t) * m / u


def lion(p, g, s, h, t, lr):
    g = -g if h.get("maximize", False) else g
    b1, b2 = h.get("betas", (0.9, 0.99))
    m = s.get("exp_avg", np.zeros_like(p))
    p = p * (1 - lr * h.get("weight_decay", 0.0))        # decoupled decay
    c = b1 * m + (1 - b1) * g
    p = p - lr * np.where(np.isnan(c), 0.0, np.sign(c))     # torch's sgn: 0 at NaN
    s["exp_avg"] = b2 * m + (1 - b2) * g
    return p


def schedule_free_group(h, lr):
    """Schedule-Free's group scalars (Defazio et al. 2024, as the schedulefree package keeps
    them in the param group `h`), advanced once per step: the warmed-up lr of the step and the
    averaging weight c = w_t / sum_s w_s, w_t = t^r lr_max^q. Returns (lr, c)."""
    t = h.get("k", 0) + 1
    warmup = h.get("warmup_steps", 0)
    if t <= warmup:
        lr = lr * t / warmup
    lr_max = max(lr, h.get("lr_max", -1.0))
    w = t ** h.get("r", 0.0) * lr_max ** h.get("weight_lr_power", 2.0)
    total = h.get("weight_sum", 0.0) + w
    h.update(k=t, lr_max=lr_max, weight_sum=total, scheduled_lr=lr)
    return lr, (w / total if total != 0 else 0.0)


def _decay(d, p, h):
    """d + wd y, weight decay at the gradient point (none at all when wd = 0, as the package:
    a NaN parameter does not reach d then)."""
    wd = h.get("weight_decay", 0.0)
    return d + wd * p if wd != 0 else d


def _schedule_free(p, d, s, h, lr, beta):
    """y = (1 - c) y + c z + lr (beta (1 - c) - 1) d;  z = z - lr d (z starts at y)."""
    c = h["ckp1"]
    z = s.get("z", p.copy())
    s["z"] = z - lr * d
    return (1 - c) * p + c * z + lr * (beta * (1 - c) - 1) * d


def schedule_free_adamw(p, g, s, h, t, lr):
    b1, b2 = h.get("betas", (0.9, 0.999))
    v = b2 * s.get("exp_avg_sq", np.zeros_like(p)) + (1 - b2) * g * g
    s["exp_avg_sq"] = v
    d = g / (np.sqrt(v / (1 - b2 ** h["k"])) + h.get("eps", 1e-8))
    return _schedule_free(p, _decay(d, p, h), s, h, lr, b1)


def schedule_free_sgd(p, g, s, h, t, lr):
    return _schedule_free(p, _decay(g, p, h), s, h, lr, h.get("momentum", 0.9))


def schedule_free_radam_group(h, lr):
    """Schedule-Free RAdam's group scalars: no warmup; the lr of the step is rectified,
    lr r_t, while rho_t > 4, else lr (silent_sgd_phase=False) or 0 (True, the default: then
    w_t = t^r 0^q and the step gets no weight in the average)."""
    b2 = h.get("betas", (0.9, 0.999))[1]
    t = h.get("k", 0) + 1
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    if rho_t > 4:
        lr = lr * np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf
                          / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    elif h.get("silent_sgd_phase", True):
        lr = 0.0
    return schedule_free_group(h, lr)          # no warmup_steps in its groups


def schedule_free_radam(p, g, s, h, t, lr):
    b1, b2 = h.get("betas", (0.9, 0.999))
    t = h["k"]
    v = b2 * s.get("exp_avg_sq", np.zeros_like(p)) + (1 - b2) * g * g
    s["exp_avg_sq"] = v
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    d = g / (np.sqrt(v / (1 - b2 ** t)) + h.get("eps", 1e-8)) if rho_t > 4 else g
    return _schedule_free(p, _decay(d, p, h), s, h, lr, b1)


def schedule_free_x(y, z, beta):
    """The averaged point x where eval mode puts the parameters: y = (1 - beta) z + beta x."""
    return (y - (1 - beta) * z) / beta


def radam(p, g, s, h, t, lr):
    b1, b2 = h.get("betas", (0.9, 0.999))
    p, m, v = _moments(p, g, s, h, lr)
    m_hat = m / (1 - b1 ** t)
    rho_inf = 2 / (1 - b2) - 1
    rho_t = rho_inf - 2 * t * b2 ** t / (1 - b2 ** t)
    if rho_t <= 5:                                  # variance not tractable: momentum SGD
        return p - lr * m_hat
    r = np.sqrt((rho_t - 4) * (rho_t - 2) * rho_inf / ((rho_inf - 4) * (rho_inf - 2) * rho_t))
    adaptive = np.sqrt(1 - b2 ** t) / (np.sqrt(v) + h.get("eps", 1e-8))   # eps unscaled
    return p - lr * r * m_hat * adaptive


def rprop(p, g, s, h, t, lr):
    g = -g if h.get("maximize", False) else g
    eta_minus, eta_plus = h.get("etas", (0.5, 1.2))
    lo, hi = h.get("step_sizes", (1e-6, 50.0))
    prev = s.get("prev", np.zeros_like(p))
    size = s.get("step_size", np.full_like(p, lr))     # starts at the lr of the first step
    agree = g * prev                                    # NaN: neither grows nor shrinks
    size = np.where(agree > 0, size * eta_plus, np.where(agree < 0, size * eta_minus, size))
    size = np.minimum(np.maximum(size, lo), hi)         # np.maximum/minimum keep NaN
    g = np.where(agree < 0, 0.0, g)                     # a sign change: no step this time
    s["prev"], s["step_size"] = g, size
    return p - np.where(np.isnan(g), 0.0, np.sign(g)) * size


def nadam(p, g, s, h, t, lr):
    b1, b2 = h.get("betas", (0.9, 0.999))
    psi = h.get("momentum_decay", 4e-3)
    mu = b1 * (1 - 0.5 * 0.96 ** (t * psi))            # the momentum schedule, at t and t + 1
    mu_next = b1 * (1 - 0.5 * 0.96 ** ((t + 1) * psi))
    prod = float(s.get("mu_product", 1.0)) * mu         # kept per parameter, as torch
    s["mu_product"] = np.array(prod)
    d_g = _grad(p, g, h)                                # the gradient the moments see
    p, m, v = _moments(p, g, s, h, lr)
    denom = np.sqrt(v / (1 - b2 ** t)) + h.get("eps", 1e-8)
    return (p - lr * (1 - mu) / (1 - prod) * d_g / denom
            - lr * mu_next / (1 - prod * mu_next) * m / denom)


def asgd(p, g, s, h, t, lr):
    lambd, alpha, t0 = h.get("lambd", 1e-4), h.get("alpha", 0.75), h.get("t0", 1e6)
    eta = float(s.get("eta", lr))                       # as the previous step left them
    mu = float(s.get("mu", 1.0))
    g = _grad(p, g, h)
    p = p * (1 - lambd * eta) - eta * g
    ax = s.get("ax", np.zeros_like(p))
    s["ax"] = ax + mu * (p - ax) if mu != 1 else p.copy()    # the average from t0 + 2 on
    s["eta"] = np.array(lr / (1 + lambd * lr * t) ** alpha)
    s["mu"] = np.array(1 / max(1, t - t0))
    return p


REFERENCES = {name: globals()[name] for name in NAMES if name in globals()}

#: per-group work once per step before the per-parameter rules: name -> fn(group, lr) ->
#: (lr, c), the group's scalars (GROUP_KEYS) updated in the group dict
GROUP_STEPS = {"schedule_free_adamw": schedule_free_group,
               "schedule_free_sgd": schedule_free_group,
               "schedule_free_radam": schedule_free_radam_group}
GROUP_KEYS = ("k", "weight_sum", "lr_max", "scheduled_lr")

# torch.optim's documented defaults that differ from the neutral values used above
DEFAULTS = {"adamw": {"weight_decay": 1e-2}}


def reference_step(name, p, g, state, hyper, step, lr=None):
    """One step of optimizer `name` on float64 copies; returns the new parameter."""
    lr = hyper["lr"] if lr is None else lr
    return REFERENCES[name](np.asarray(p, np.float64), np.asarray(g, np.float64), state, hyper,
                            step, lr)


class ReferenceOptimizer:
    """torch-style groups over the reference rules, in float64."""

    def __init__(self, name, groups):
        self.name = name
        self.groups = [{**DEFAULTS.get(name, {}), **g,
                        "params": [np.array(p, np.float64) for p in g["params"]]}
                       for g in groups]
        self.states = [[{} for _ in g["params"]] for g in self.groups]
        self.steps = [0] * len(self.groups)

    def step(self, grads):
        k = 0
        for gi, group in enumerate(self.groups):
            lr = group["lr"](self.steps[gi]) if callable(group["lr"]) else group["lr"]
            self.steps[gi] += 1
            hyper = group
            if self.name in GROUP_STEPS:
                lr, c = GROUP_STEPS[self.name](group, lr)
                hyper = {**group, "ckp1": c}
            for j, p in enumerate(group["params"]):
                group["params"][j] = reference_step(self.name, p, grads[k], self.states[gi][j],
                                                    hyper, self.steps[gi], lr)
                k += 1

    @property
    def params(self):
        return [p for g in self.groups for p in g["params"]]


# ----------------------------------------------------------------- SparseAdam (not in the table)
def sparse_adam(p, indices, values, s, t, lr, beta1=0.9, beta2=0.999, eps=1e-8, maximize=False):
    """torch.optim.SparseAdam's step on a row-sparse gradient, in float64, from its equations:
    rows of one index summed (in order of appearance), then Adam on the distinct rows only,
    with ``m += (1-beta1)(g-m)``, ``v += (1-beta2)(g^2-v)`` and
    ``p -= lr sqrt(1-beta2^t)/(1-beta1^t) * m/(sqrt(v)+eps)``. Returns the new p; `s` holds
    ``exp_avg``, ``exp_avg_sq`` (created as zeros)."""
    p = np.array(p, np.float64)
    values = np.asarray(values, np.float64).reshape((len(indices),) + p.shape[1:])
    m = s.setdefault("exp_avg", np.zeros_like(p))
    v = s.setdefault("exp_avg_sq", np.zeros_like(p))
    if len(indices) == 0 or values.size == 0:
        return p
    rows = np.unique(indices)
    g = np.zeros((len(rows),) + p.shape[1:])
    np.add.at(g, np.searchsorted(rows, indices), values)
    if maximize:
        g = -g
    m[rows] += (1 - beta1) * (g - m[rows])
    v[rows] += (1 - beta2) * (g * g - v[rows])
    step_size = lr * np.sqrt(1 - beta2 ** t) / (1 - beta1 ** t)
    p[rows] -= step_size * m[rows] / (np.sqrt(v[rows]) + eps)
    return p
