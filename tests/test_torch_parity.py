"""Parity with torch.optim 2.13 on a recorded scenario (tests/golden), and live when installed.

Scenario (tests/golden/torch_runner.py): two param groups with different lr, 150 steps of fixed
gradients, group 0's lr halved through `param_groups` after step 75. Error measure per tensor:
max|fastopt - torch| / max|torch|; bounds 2e-5 (float32) and 1e-11 (float64).
"""
import os

import numpy as np
import pytest

import fastopt as fo
from cases import CASES
from golden.torch_runner import (LR_CHANGE_AT, N_STEPS, RECORD_AT, groups_for, reference_package,
                                 run_torch, scenario)

GOLDEN = os.path.join(os.path.dirname(__file__), "golden", "torch_trajectories.npz")
TOL = {np.float32: 2e-5, np.float64: 1e-11}
CLASSES = fo.optim.first_order.CLASSES      # optimizer name -> class, one per table entry
PARAMS = [(name, i, dtype) for name, cases in CASES.items() for i in range(len(cases))
          for dtype in (np.float32, np.float64)]


def run_fastopt(name, hyper, dtype):
    params0, grads = scenario()
    params = [p.astype(dtype) for p in params0]
    opt = CLASSES[name](groups_for(hyper, params), **hyper)
    modes = opt.spec.modes
    if modes is not None:
        opt.train()
    out = {}
    for t in range(1, N_STEPS + 1):
        opt.step([g.astype(dtype) for g in grads[t - 1]])
        if t == LR_CHANGE_AT:
            opt.param_groups[0]["lr"] *= 0.5
        if t in RECORD_AT:
            out[t] = [p.copy() for p in params]
    groups = {f"group{gi}": {k: g[k] for k in opt.spec.group_state}
              for gi, g in enumerate(opt.param_groups)}
    if modes is not None:                  # train/eval optimizers: the averaged point too
        opt.eval()
        out["eval"] = [p.copy() for p in params]
    return out, opt, groups


def recorded_steps(name):
    return RECORD_AT + (("eval",) if CLASSES[name].spec.modes is not None else ())


def rel_err(a, b):
    scale = max(float(np.max(np.abs(b))), 1e-30)
    return float(np.max(np.abs(a.astype(np.float64) - b.astype(np.float64)))) / scale


@pytest.fixture(scope="module")
def golden():
    with np.load(GOLDEN) as z:
        return {k: z[k] for k in z.files}


@pytest.mark.parametrize("name,i,dtype", PARAMS,
                         ids=[f"{n}-{i}-{np.dtype(d).name}" for n, i, d in PARAMS])
def test_matches_recorded_torch_trajectory(golden, name, i, dtype):
    hyper = CASES[name][i]
    traj, opt, groups = run_fastopt(name, hyper, dtype)
    key = f"{name}/{i}/{np.dtype(dtype).name}"
    worst = 0.0
    for t in recorded_steps(name):
        for j, p in enumerate(traj[t]):
            worst = max(worst, rel_err(p, golden[f"{key}/step{t}/param{j}"]))
    assert worst <= TOL[dtype], f"{key}: max rel. error {worst:.3g} > {TOL[dtype]}"
    for j in range(3):
        # the buffers torch recorded are exactly those fastopt keeps, and each agrees
        recorded = {k.rsplit("/", 1)[1] for k in golden if k.startswith(f"{key}/state{j}/")}
        mine = {b for b, v in opt.state.get(j, {}).items() if isinstance(v, np.ndarray)}
        assert mine == recorded, f"{key} param {j}: fastopt keeps {mine}, torch {recorded}"
        for buf in recorded:
            gk = f"{key}/state{j}/{buf}"
            assert rel_err(opt.state[j][buf], golden[gk]) <= 10 * TOL[dtype], gk
    for g, values in groups.items():     # group-level scalars (Schedule-Free's k, ...)
        for k, v in values.items():
            assert np.allclose(v, golden[f"{key}/state{g}/{k}"], rtol=1e-12, atol=0), (g, k)


def test_golden_file_covers_every_case(golden):
    for name, i, dtype in PARAMS:
        assert f"{name}/{i}/{np.dtype(dtype).name}/step150/param0" in golden
        if CLASSES[name].spec.modes is not None:
            assert f"{name}/{i}/{np.dtype(dtype).name}/stepeval/param0" in golden


@pytest.mark.torch
@pytest.mark.parametrize("name,i,dtype", PARAMS,
                         ids=[f"{n}-{i}-{np.dtype(d).name}" for n, i, d in PARAMS])
def test_matches_live_torch(name, i, dtype):
    pytest.importorskip("torch", reason="live parity needs torch (pip install 'fastopt[torch]')")
    package = reference_package(name)
    pytest.importorskip(package, reason=f"live parity of {name} needs {package} "
                        f"(pip install {package.replace('_', '-')})")
    hyper = CASES[name][i]
    ours, _, groups = run_fastopt(name, hyper, dtype)
    theirs, state = run_torch(name, hyper, dtype)
    for t in recorded_steps(name):
        for a, b in zip(ours[t], theirs[t]):
            assert rel_err(a, b) <= TOL[dtype]
    for g, values in groups.items():
        for k, v in values.items():
            assert np.allclose(v, state[g][k], rtol=1e-12, atol=0), (g, k)


@pytest.mark.parametrize("name", ["radam", "rprop", "adam"])
def test_a_torch_state_dict_as_is_names_the_entry(name):
    """The NumPy classes take NumPy arrays: a torch.optim state_dict passed as it is (tensors)
    is refused with a TypeError naming the entry, nothing changed."""
    torch = pytest.importorskip("torch", reason="needs torch (pip install 'fastopt[torch]')")
    cls = getattr(fo, fo._specs.SPECS[name].class_name)
    w = np.ones((2, 3))
    opt = cls([w], lr=0.1)
    opt.step([np.ones((2, 3))])
    before = {k: np.array(v, copy=True) for k, v in opt.state[0].items()}
    tp = torch.ones((2, 3), dtype=torch.float64, requires_grad=True)
    theirs = getattr(torch.optim, fo._specs.SPECS[name].class_name)([tp], lr=0.1)
    tp.grad = torch.full((2, 3), 2.0, dtype=torch.float64)
    theirs.step()
    with pytest.raises(TypeError, match=r"state\[0\]\['\w+'\] must be .*Tensor"):
        opt.load_state_dict(theirs.state_dict())
    for k, v in before.items():
        np.testing.assert_array_equal(opt.state[0][k], v)
