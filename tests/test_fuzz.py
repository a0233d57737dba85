"""Fuzzing every public entry point: each call works and matches the reference, or raises
TypeError/ValueError with parameters, state and every other input bit-identical.

Each entry point has one driver, `fuzz_<entry>(ex, name)`, registered with `@entry_point(...)`
in tests/fuzz_optim.py (optimizers, functional steps, checkpoints, threads) or
tests/fuzz_extras.py (schedules, training tricks, BatchNorm). Adding an entry point is one
driver there (tests/fuzz_second_order.py: Newton, SVRG, flatten; tests/fuzz_muon.py: Muon;
tests/fuzz_sparse.py: SparseAdam, RowSparseGrad; tests/fuzz_mixed.py:
MixedPrecision, DynamicLossScale; tests/fuzz_problems.py: problems, datasets, train,
convergence). `test_entry_point` runs every (driver, name) pair under hypothesis; the arrays,
the contract that says whether a call must succeed, and the comparisons are in
tests/fuzzing.py.

Examples per test come from the hypothesis profile (tests/conftest.py): bounded in CI
(``ci``), long under scripts/fuzz.sh (``fuzz``), which runs `test_fuzz_for_a_while`.
"""
import json
import os
import time

import numpy as np
import pytest
from hypothesis import given, seed, settings
from hypothesis import strategies as st

import fastopt as fo
from fastopt import convergence, datasets
from fastopt import functional as F
from fastopt import nn, optim, problems
from fastopt import schedules as S
from fastopt import tricks as T
from fastopt._specs import SPECS
import fuzz_adafactor  # noqa: F401  (registers its drivers)
import fuzz_extras  # noqa: F401  (registers its drivers)
import fuzz_lbfgs  # noqa: F401  (registers its drivers)
import fuzz_mixed  # noqa: F401  (registers its drivers)
import fuzz_muon  # noqa: F401  (registers its drivers)
import fuzz_optim  # noqa: F401  (registers its drivers)
import fuzz_problems  # noqa: F401  (registers its drivers)
import fuzz_second_order  # noqa: F401  (registers its drivers)
import fuzz_sparse  # noqa: F401  (registers its drivers)
from fuzzing import COUNTS, ENTRY_POINTS, INVALID, KIND, run

# the float64 references meet the same NaN/Inf/overflow as the code under test; numpy's
# notes about it are noise
pytestmark = pytest.mark.filterwarnings("ignore::RuntimeWarning")


# ------------------------------------------------------------------------------- the runs
@pytest.mark.parametrize("key", sorted(ENTRY_POINTS))
@given(data=st.data())
def test_entry_point(key, data):
    run(key, data)


def test_every_public_entry_point_has_a_driver():
    """A new public class, function or module member needs a fuzz driver (or a reason here)."""
    keys = set(ENTRY_POINTS)
    names = {key.split(":", 1)[1] for key in keys}
    covered = names | {key.split(":", 1)[0] for key in keys}
    covered |= {SPECS[n].class_name for n in names if f"optimizer:{n}" in keys}
    if "base_class:base" in keys:
        covered.add("Optimizer")
    if all(f"checkpoint:{n}" in keys for n in SPECS):
        covered |= {"save", "load"}
    if "set_num_threads:threads" in keys:
        covered.add("set_num_threads")
    no_arguments = {"get_num_threads", "has_openmp",
                    # results and warning classes, nothing to call
                    "NewtonStep", "HessianShiftWarning", "LineSearchWarning"}
    # module members that are results, data or a base class (driven through its subclasses)
    not_callable = {"Problem", "BREAST_CANCER_FEATURES", "History", "Trace", "Comparison",
                    "METHODS"}
    members = {
        "optim": [n for n in optim.__all__ if n not in no_arguments],
        "functional": [f"functional:{n[:-1]}" for n in F.__all__ if n.endswith("_")],
        "schedules": [f"schedule:{n}" for n in S.__all__ if n not in ("Schedule", "SCHEDULES")],
        "tricks": [n for n in T.__all__ if n != "LAYOUTS"],
        "nn": list(nn.__all__),
        "problems": [f"problems:{n}" for n in problems.__all__ if n not in not_callable],
        "datasets": [f"datasets:{n}" for n in datasets.__all__ if n not in not_callable],
        "train": [f"train:{n}" for n in fo.train.__all__ if n not in not_callable],
        "convergence": [f"convergence:{n}" for n in convergence.__all__ if n not in not_callable],
    }
    missing = []
    for name in list(fo.__all__) + ["optim"]:
        if name in members:
            missing += [f"{name}: {m}" for m in members[name] if m not in keys and m not in covered]
        elif name not in covered and name not in no_arguments:
            missing.append(name)
    assert not missing, f"public names without a fuzz driver: {missing}"


@pytest.mark.parametrize("name", sorted(SPECS))
def test_the_fuzzers_invalid_values_are_invalid_for_their_optimizer(name):
    """Every value the drivers use as invalid for a hyperparameter is refused by that
    optimizer (the kinds are per optimizer: SGD's momentum 0 is valid, Schedule-Free SGD's
    is not)."""
    cls = getattr(fo, SPECS[name].class_name)
    for key, kind in KIND[name].items():
        for value in INVALID[kind]:
            with pytest.raises((ValueError, TypeError)):
                cls([np.zeros(3)], **{key: value})


@pytest.mark.slow
def test_fuzz_for_a_while():
    """Round-robin over every driver with fresh seeds until FASTOPT_FUZZ_SECONDS have passed.

    Run by scripts/fuzz.sh (profile ``fuzz``); writes the example counts to
    FASTOPT_FUZZ_REPORT (JSON) when set.
    """
    budget = float(os.environ.get("FASTOPT_FUZZ_SECONDS", "60"))
    batch = int(os.environ.get("FASTOPT_FUZZ_BATCH", "200"))
    end = time.monotonic() + budget
    rng = np.random.default_rng()
    COUNTS.clear()
    rounds = 0
    while time.monotonic() < end:
        for key in rng.permutation(sorted(ENTRY_POINTS)):
            if time.monotonic() >= end:
                break

            @seed(int(rng.integers(2**63)))
            @settings(max_examples=batch, derandomize=False, database=None)
            @given(data=st.data())
            def one_batch(data):
                run(key, data)
            one_batch()
        rounds += 1
    report = os.environ.get("FASTOPT_FUZZ_REPORT")
    if report:
        with open(report, "w") as f:
            json.dump({"seconds": budget, "rounds": rounds, "examples": COUNTS}, f, indent=1)
