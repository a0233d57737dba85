"""Low-bit state reaches float32 Adam's loss: on a ridge-regularized least-squares problem,
Adam with ``state_dtype="bfloat16"`` and ``"int8"`` ends, seed by seed, within 1% of the loss of
float32-state Adam from the same start and gradient noise, and the means over the seeds differ
by a small fraction of the spread between seeds. (The digits MLP rows of the same comparison:
examples/state_dtype_mlp.py, figures in the README.)
"""
import numpy as np
import pytest

import fastopt as fo

ROWS, COLS, STEPS, RIDGE, SEEDS = 64, 4096, 200, 1e-2, 5     # COLS = min_8bit_size: int8 state


def problem(seed):
    rng = np.random.default_rng(seed)
    a = (rng.standard_normal((ROWS, COLS)) / np.sqrt(COLS)).astype(np.float32)
    b = (a @ rng.standard_normal(COLS).astype(np.float32)
         + 0.1 * rng.standard_normal(ROWS)).astype(np.float32)
    p0 = (rng.standard_normal(COLS) * 0.1).astype(np.float32)
    return a, b, p0


def loss(a, b, p):
    r = a.astype(np.float64) @ p - b
    return float(r @ r / (2 * ROWS) + 0.5 * RIDGE * (p.astype(np.float64) @ p))


def final_loss(seed, state_dtype):
    a, b, p0 = problem(seed)
    noise = np.random.default_rng(seed + 100)
    p = p0.copy()
    opt = fo.Adam([p], lr=1e-2, state_dtype=state_dtype)
    for _ in range(STEPS):
        g = a.T @ (a @ p - b) / np.float32(ROWS) + np.float32(RIDGE) * p \
            + np.float32(1e-3) * noise.standard_normal(COLS).astype(np.float32)
        opt.step([g.astype(np.float32)])
    if state_dtype == "int8":
        assert isinstance(opt.state[0]["exp_avg"], fo.state_format.Blockwise8)
    return loss(a, b, p)


@pytest.fixture(scope="module")
def losses():
    return {fmt: np.array([final_loss(s, fmt) for s in range(SEEDS)])
            for fmt in ("float32", "bfloat16", "int8")}


@pytest.mark.parametrize("fmt", ["bfloat16", "int8"])
def test_low_bit_adam_reaches_the_float32_loss_on_least_squares(losses, fmt):
    ref, got = losses["float32"], losses[fmt]
    start = np.array([loss(*problem(s)[:2], problem(s)[2]) for s in range(SEEDS)])
    assert np.all(ref < 0.5 * start)                    # the runs did optimize
    np.testing.assert_array_less(np.abs(got - ref), 0.01 * ref)
    assert abs(got.mean() - ref.mean()) < 0.25 * ref.std(ddof=1), (got, ref)


def test_digits_example_rows_agree_in_its_quick_setting(capsys):
    """examples/state_dtype_mlp.py --quick: every state format's row is printed and its mean
    test accuracy is near float32 Adam's (2 seeds, 4 epochs)."""
    import importlib.util
    import os
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "examples", "state_dtype_mlp.py")
    spec = importlib.util.spec_from_file_location("state_dtype_mlp", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    results = module.main(["--quick"])
    printed = capsys.readouterr().out
    assert list(results) == list(module.ROWS)
    assert all(f"| {label}" in printed for label in module.ROWS)
    ref = results["Adam, float32 state"][0].mean()
    assert ref > 0.85
    for label, (acc, _) in results.items():
        assert abs(acc.mean() - ref) < 0.03, (label, acc, ref)
