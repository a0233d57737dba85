"""The bag-of-tricks example (examples/tricks_mlp.py) in its reduced setting, and its MLP."""
import importlib.util
import os
import re

import numpy as np
import pytest

import fastopt as fo

EXAMPLE = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                       "examples", "tricks_mlp.py")


@pytest.fixture(scope="module")
def example():
    spec = importlib.util.spec_from_file_location("tricks_mlp", EXAMPLE)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_quick_ablation_prints_the_computed_table(example, capsys):
    results = example.main(["--quick"])
    printed = capsys.readouterr().out
    assert list(results) == [label for label, _ in example.CONFIGS]
    rows = {}
    for line in printed.splitlines():
        m = re.match(r"\| (.+?)\s+\|\s+([\d.]+) \+- ([\d.]+)\s+\|\s+([\d.]+) \+- ([\d.]+) \|", line)
        if m:
            rows[m.group(1)] = [float(v) for v in m.groups()[1:]]
    assert list(rows) == list(results)
    for label, (acc, ce) in results.items():
        assert len(acc) == example.QUICK["seeds"]
        mean_acc, std_acc, mean_ce, std_ce = rows[label]
        assert mean_acc == pytest.approx(100 * acc.mean(), abs=0.006)
        assert std_acc == pytest.approx(100 * np.std(acc, ddof=1), abs=0.006)
        assert mean_ce == pytest.approx(ce.mean(), abs=6e-5)
        assert std_ce == pytest.approx(np.std(ce, ddof=1), abs=6e-5)
        # even 4 epochs of a small MLP classify most held-out digits (chance: 10 %) with SGD;
        # Lion moves each weight by at most lr = 1e-3 a step, so its 88 quick steps only start
        if "optimizer" in dict(example.CONFIGS)[label]:
            assert np.all(acc > 0.3) and np.all(ce < np.log(10)), label   # better than chance
        else:
            assert np.all(acc > 0.8) and np.all(ce < 1.0), label


def test_same_seed_same_result(example):
    data = example.load_split(0)
    config = dict(example.CONFIGS[3][1])          # every trick of the ablation
    a = example.train_one(data, config, seed=3, epochs=1, hidden=16)
    b = example.train_one(data, config, seed=3, epochs=1, hidden=16)
    assert a == b


def test_mlp_backward_matches_finite_differences(example):
    """The MLP's gradients (batch norm in training mode) against central differences, float64."""
    rng = np.random.default_rng(0)
    model = example.MLP(5, 7, 3, rng, dtype=np.float64)
    model.bn.weight[...] = rng.uniform(0.5, 1.5, 7)
    model.bn.bias[...] = rng.normal(0, 0.3, 7)
    x = rng.standard_normal((9, 5))
    targets = fo.smooth_labels(rng.integers(0, 3, 9), 3, 0.1)

    def loss():
        return fo.softmax_cross_entropy(model.forward(x), targets)[0]

    _, dlogits = fo.softmax_cross_entropy(model.forward(x), targets)
    model.backward(dlogits)
    params = model.decayed() + model.not_decayed()
    grads = [g.copy() for g in model.grads()]
    h = 1e-6
    for p, g in zip(params, grads):
        fd = np.zeros_like(p)
        for i in np.ndindex(p.shape):
            old = p[i]
            p[i] = old + h
            up = loss()
            p[i] = old - h
            down = loss()
            p[i] = old
            fd[i] = (up - down) / (2 * h)
        np.testing.assert_allclose(g, fd, rtol=1e-5, atol=1e-8)
