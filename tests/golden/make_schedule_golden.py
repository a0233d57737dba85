"""Record torch.optim.lr_scheduler learning rates into tests/golden/schedules.npz.

Run with torch installed (``pip install torch==2.13.0``):

    python tests/golden/make_schedule_golden.py

Each case is a torch scheduler built on a one-parameter SGD whose ``lr`` is the base rate; the
recorded value at step t is the optimizer's lr used by step t (t = 0 .. N_STEPS-1), i.e. read
before the t-th ``scheduler.step()``. tests/test_schedules.py compares fastopt's schedule of
the same name against these values (and against live torch when it is importable).
"""
import sys
import warnings
from pathlib import Path

import numpy as np

N_STEPS = 1000
OUT = Path(__file__).with_name("schedules.npz")


def _cases():
    from torch.optim import lr_scheduler as L

    return {
        # name: (base lr of the optimizer, scheduler factory, optimizer steps per scheduler step)
        "constant": (0.1, lambda o: L.LambdaLR(o, lambda t: 1.0), 1),
        "inverse_time": (0.1, lambda o: L.LambdaLR(o, lambda t: 1.0 / (1.0 + t)), 1),
        "inverse_time_general": (0.1, lambda o: L.LambdaLR(o, lambda t: 1.0 / (1.0 + 0.01 * t) ** 0.75), 1),
        "step_decay": (0.1, lambda o: L.StepLR(o, step_size=100, gamma=0.5), 1),
        "multistep": (0.1, lambda o: L.MultiStepLR(o, milestones=[300, 600, 900], gamma=0.1), 1),
        "exponential": (0.1, lambda o: L.ExponentialLR(o, gamma=0.995), 1),
        "cosine_decay": (0.1, lambda o: L.CosineAnnealingLR(o, T_max=1000), 1),
        "cosine_decay_floor": (0.1, lambda o: L.CosineAnnealingLR(o, T_max=1000, eta_min=1e-3), 1),
        "linear_warmup": (0.1, lambda o: L.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=200), 1),
        "warmup_cosine": (0.1, lambda o: L.SequentialLR(o, [
            L.LinearLR(o, start_factor=0.01, end_factor=1.0, total_iters=100),
            L.CosineAnnealingLR(o, T_max=900, eta_min=1e-4)], milestones=[100]), 1),
        "cosine_restarts": (0.1, lambda o: L.CosineAnnealingWarmRestarts(o, T_0=128, T_mult=1, eta_min=0.0), 1),
        "cosine_restarts_mult": (0.1, lambda o: L.CosineAnnealingWarmRestarts(o, T_0=50, T_mult=2, eta_min=1e-4), 1),
        "one_cycle": (0.1, lambda o: L.OneCycleLR(o, max_lr=0.1, total_steps=1000, cycle_momentum=False), 1),
        "one_cycle_linear_three_phase": (0.1, lambda o: L.OneCycleLR(
            o, max_lr=0.1, total_steps=1000, pct_start=0.25, anneal_strategy="linear",
            div_factor=10.0, final_div_factor=100.0, three_phase=True, cycle_momentum=False), 1),
        "join": (0.1, lambda o: L.SequentialLR(o, [
            L.StepLR(o, step_size=50, gamma=0.5), L.ExponentialLR(o, gamma=0.99)], milestones=[400]), 1),
        "per_epoch_multistep": (0.1, lambda o: L.MultiStepLR(o, milestones=[3, 6, 9], gamma=0.1), 100),
    }


def torch_values(name, n_steps=N_STEPS):
    """The learning rate torch uses at each of n_steps optimizer steps for case `name`."""
    import torch

    base_lr, factory, every = _cases()[name]
    param = torch.nn.Parameter(torch.zeros(1, dtype=torch.float64))
    opt = torch.optim.SGD([param], lr=base_lr)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        sched = factory(opt)
        out = np.empty(n_steps)
        for t in range(n_steps):
            out[t] = opt.param_groups[0]["lr"]
            opt.step()
            if (t + 1) % every == 0:
                sched.step()
    return out


def case_names():
    return list(_cases())


def main():
    import torch

    values = {name: torch_values(name) for name in case_names()}
    np.savez(OUT, torch_version=np.array(torch.__version__), **values)
    print(f"wrote {OUT} ({len(values)} cases, {N_STEPS} steps, torch {torch.__version__})")


if __name__ == "__main__":
    sys.exit(main())
