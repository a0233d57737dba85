"""Run torch.optim on the recorded gradient sequence (used to write and to live-check goldens).

The scenario, shared with tests/test_torch_parity.py: two param groups (shapes (7, 3) and (5,)
in group 0; (11,) in group 1 with its own lr), N_STEPS steps of fixed gradients, and the lr of
group 0 halved through `param_groups` after step LR_CHANGE_AT.
"""
import importlib
import inspect

import numpy as np

SHAPES = [(7, 3), (5,), (11,)]
N_STEPS = 150
LR_CHANGE_AT = 75
RECORD_AT = (1, 2, 10, 50, 75, 76, 100, 150)


def scenario(seed=1234):
    """Initial params and the gradient sequence, in float64."""
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in SHAPES]
    grads = []
    for t in range(N_STEPS):
        scale = 10.0 ** rng.uniform(-2, 1)
        step = [scale * rng.standard_normal(s) for s in SHAPES]
        if t % 37 == 5:
            step[1][:] = 0.0          # a zero gradient now and then
        grads.append(step)
    return params, grads


def groups_for(hyper, params):
    """Two groups: group 1 overrides lr (x2); the rest comes from the constructor's keywords."""
    return [{"params": params[:2]}, {"params": params[2:], "lr": hyper.get("lr", 1e-3) * 2}]


def reference_class(name):
    """The implementation optimizer `name` reproduces (the table's ``reference``, by default
    torch.optim's class of the same name); ImportError names the package when it is absent."""
    from fastopt._specs import SPECS
    module, _, cls = SPECS[name].reference.rpartition(".")
    return getattr(importlib.import_module(module), cls)


def reference_package(name):
    """The top-level package of the reference implementation of `name` (to skip without it)."""
    from fastopt._specs import SPECS
    return SPECS[name].reference.partition(".")[0]


def run_torch(name, hyper, dtype, cls=None):
    """Trajectory {step: [params...]} and final state of the reference implementation (torch
    optimizer; or of `cls`, e.g. fastopt.torch's class) on the scenario.

    For an optimizer with train/eval modes (the table's ``modes``: Schedule-Free), ``train()``
    comes first, as the reference requires; the trajectory is then the train-mode point y,
    ``traj["eval"]`` the parameters after ``eval()`` at the end, and ``state["group<i>"]``
    the group-level scalars of group i (``group_state`` and the mode key) after the steps.

    torch's default dtype is the parameters' during the run: torch keeps per-parameter
    scalars ('step', NAdam's mu_product, ASGD's eta and mu) in it, so float64 runs keep them
    in float64, as fastopt does (with float32 a per-step scalar such as mu_product would be
    rounded to float32; 'step' is a small whole number, exact either way)."""
    import torch
    old = torch.get_default_dtype()
    torch.set_default_dtype({np.float32: torch.float32, np.float64: torch.float64}[dtype])
    try:
        return _run_torch(name, hyper, dtype, cls)
    finally:
        torch.set_default_dtype(old)


def _run_torch(name, hyper, dtype, cls):
    from fastopt._specs import SPECS
    spec = SPECS[name]
    import torch
    params0, grads = scenario()
    tdtype = {np.float32: torch.float32, np.float64: torch.float64}[dtype]
    params = [torch.tensor(p.astype(dtype), dtype=tdtype) for p in params0]
    cls = reference_class(name) if cls is None else cls
    extra = {"foreach": False} if "foreach" in inspect.signature(cls.__init__).parameters else {}
    opt = cls(groups_for(hyper, params), **extra, **hyper)
    if spec.modes is not None:
        opt.train()
    out = {}
    for t in range(1, N_STEPS + 1):
        for p, g in zip(params, grads[t - 1]):
            p.grad = torch.tensor(g.astype(dtype), dtype=tdtype)
        opt.step()
        if t == LR_CHANGE_AT:
            opt.param_groups[0]["lr"] *= 0.5
        if t in RECORD_AT:
            out[t] = [p.detach().numpy().copy() for p in params]
    state = {i: {k: v.numpy().copy() for k, v in opt.state[p].items() if k != "step"}
             for i, p in enumerate(params)}
    for gi, group in enumerate(opt.param_groups):
        if spec.group_state:
            state[f"group{gi}"] = {k: np.array(group[k]) for k in spec.group_state}
    if spec.modes is not None:
        opt.eval()
        out["eval"] = [p.detach().numpy().copy() for p in params]
    return out, state
