"""The independent oracle of Adafactor: torch.optim.Adafactor's single-tensor step in plain
NumPy float64, written from its equations (the algorithm box of fastopt.Adafactor and torch's
documentation), never from the kernel.

`adafactor_step(p, g, state, t, lr, h)` advances one parameter (a float64 copy is returned)
and its state dict by step t; `AdafactorReference` adds torch's group mechanics (one step
count per group, eps1 None = the machine epsilon of the group's first parameter's dtype).
"""
import numpy as np

DEFAULTS = dict(lr=1e-2, beta2_decay=-0.8, eps=(None, 1e-3), d=1.0, weight_decay=0.0,
                maximize=False)


def state_shapes(shape):
    shape = tuple(shape)
    if len(shape) < 2:
        return {"variance": shape}
    return {"row_var": shape[:-1] + (1,), "col_var": shape[:-2] + (1, shape[-1])}


def _lerp(a, b, w):
    """a + w (b - a), in the form torch's lerp takes for |w| >= 1/2 (b - (b - a)(1 - w)): the
    same value, but exact at w = 1 (Adafactor's first step), where the other form loses b
    under a large a."""
    if abs(w) < 0.5:
        return a + w * (b - a)
    return b - (b - a) * (1.0 - w)


def adafactor_step(p, g, s, t, lr, h, eps1):
    """One step at 1-based t; returns the new parameter (float64) and updates `s` in place."""
    p = np.asarray(p, np.float64)
    g = -np.asarray(g, np.float64) if h["maximize"] else np.asarray(g, np.float64)
    if p.size == 0:                   # fastopt leaves empty parameters alone
        return p.copy()
    if not s:
        s.update({k: np.zeros(v) for k, v in state_shapes(p.shape).items()})
    w = float(t) ** h["beta2_decay"]                 # 1 - beta2_t
    rho = min(lr, 1.0 / np.sqrt(t))
    alpha = max(h["eps"][1], np.sqrt(np.mean(p * p))) * rho
    p = p * (1.0 - lr * h["weight_decay"])
    if p.ndim >= 2:
        s["row_var"] = _lerp(s["row_var"], np.mean(g * g, axis=-1, keepdims=True), w)
        s["col_var"] = _lerp(s["col_var"], np.mean(g * g, axis=-2, keepdims=True), w)
        r_mean = np.maximum(np.mean(s["row_var"], axis=-2, keepdims=True), eps1)
        v = s["row_var"] * s["col_var"] / r_mean
    else:
        s["variance"] = _lerp(s["variance"], g * g, w)
        v = s["variance"]
    u = g / np.sqrt(np.maximum(v, eps1 * eps1))
    denom = max(1.0, np.sqrt(np.mean(u * u)) / h["d"])
    return p - alpha / denom * u


class AdafactorReference:
    """Param groups over float64 copies of `params` (the dtypes remembered for eps1)."""

    def __init__(self, params, **hyper):
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        self.groups = []
        for grp in groups:
            h = {**DEFAULTS, **hyper, **{k: v for k, v in grp.items() if k != "params"}}
            self.groups.append(dict(h, params=[np.array(p, np.float64) for p in grp["params"]],
                                    dtypes=[np.asarray(p).dtype for p in grp["params"]],
                                    state=[{} for _ in grp["params"]], step=0))

    @property
    def params(self):
        return [p for grp in self.groups for p in grp["params"]]

    @property
    def states(self):
        return [s for grp in self.groups for s in grp["state"]]

    def step(self, grads):
        k = 0
        for grp in self.groups:
            grp["step"] += 1
            lr = grp["lr"](grp["step"] - 1) if callable(grp["lr"]) else grp["lr"]
            e1 = grp["eps"][0]
            eps1 = float(np.finfo(grp["dtypes"][0]).eps) if e1 is None else e1
            for j, p in enumerate(grp["params"]):
                grp["params"][j] = adafactor_step(p, grads[k], grp["state"][j], grp["step"], lr,
                                                  grp, eps1)
                k += 1
