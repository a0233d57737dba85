"""`fastopt demo` in its quick mode: outputs, figures, and a table that shows what was computed."""
import os
import re
import subprocess
import sys

import numpy as np
import pytest

from fastopt import cli, demo
from fastopt.convergence import METHODS

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


@pytest.fixture(scope="module")
def quick(tmp_path_factory):
    """One quick run on both datasets with every optimizer (figures if matplotlib is here)."""
    out = tmp_path_factory.mktemp("demo")
    from io import StringIO
    stream = StringIO()
    result = demo.run(quick=True, out=str(out), seed=0, stream=stream)
    return result, stream.getvalue(), out


def _table_rows(printed):
    """{dataset title: {row label: [batch, loss, subopt, evals, time, accuracy]}} as printed."""
    blocks, current, in_rows = {}, None, False
    for line in printed.splitlines():
        if line and not line.startswith(" "):
            current, in_rows = blocks.setdefault(line, {}), False
        elif line.strip().startswith("---"):
            in_rows = True
        elif in_rows and line.strip():
            cells = re.split(r"\s{2,}", line.strip())
            current[cells[0]] = cells[1:]
        else:
            in_rows = False
    return blocks


def _accuracy(X, y, w):
    """Test accuracy from the weights, computed here from the model's definition."""
    W = np.asarray(w, np.float64)
    if W.ndim == 1:
        pred = (X @ W > 0).astype(int)
    else:
        pred = np.argmax(X @ W.T, axis=1)
    return float(np.mean(pred == y))


def test_every_optimizer_runs_on_both_datasets(quick):
    result, _, _ = quick
    assert list(result.datasets) == ["breast_cancer", "digits"]
    for res in result.datasets.values():
        assert list(res.comparison.traces) == list(METHODS)
        n = res.problem.n_samples
        budget = demo.QUICK_EPOCHS * n
        for name, tr in res.comparison.traces.items():
            assert np.all(np.isfinite(tr.loss))
            assert np.all(np.diff(tr.grad_evals) > 0)
            if name == "lbfgs":         # its last step may evaluate up to max_eval = 10 times
                assert budget <= tr.grad_evals[-1] < budget + 10 * n
            elif name != "newton":      # the same budget of sample gradients for everyone
                assert budget <= tr.grad_evals[-1] < budget + max(tr.batch_size, 2)
            assert tr.w.shape == res.problem.shape


def test_printed_table_is_the_computed_numbers(quick):
    result, printed, out = quick
    assert result.table in printed
    assert (out / "demo_table.txt").read_text().strip() == result.table.strip()
    blocks = _table_rows(printed)
    for res in result.datasets.values():
        rows = blocks[res.title]
        assert len(rows) == len(METHODS)
        for name, tr in res.comparison.traces.items():
            batch, loss, subopt, evals, seconds, acc = rows[tr.label]
            assert float(loss) == pytest.approx(res.problem.loss(tr.w), abs=1e-10)
            assert float(loss) == pytest.approx(tr.loss[-1], abs=1e-10)
            assert float(subopt) == pytest.approx(tr.loss[-1] - res.comparison.f_star,
                                                  rel=1e-3, abs=1e-300)
            assert int(evals) == tr.grad_evals[-1]
            assert float(seconds) == pytest.approx(tr.time[-1], abs=1e-4)
            expected = _accuracy(res.X_test, res.y_test, tr.w)
            assert float(acc.rstrip("%")) == pytest.approx(100 * expected, abs=0.05)
            assert batch == ("all" if tr.batch_size >= res.problem.n_samples
                             else str(tr.batch_size))


def test_newton_reaches_machine_precision(quick):
    result, printed, _ = quick
    blocks = _table_rows(printed)
    for res in result.datasets.values():
        newton = res.comparison["newton"]
        assert abs(newton.subopt[-1]) < 1e-10
        assert abs(float(blocks[res.title]["Newton"][2])) < 1e-10
        # f* is a minimum: no method ends below it by more than rounding
        for tr in res.comparison.traces.values():
            assert tr.subopt[-1] > -1e-12


def test_adam_beats_gradient_descent_at_equal_gradient_evaluations_on_digits(quick):
    """After the same number of sample gradients (the whole quick budget), Adam with batch 32
    is far closer to f* than full-batch gradient descent on the digits problem."""
    result, printed, _ = quick
    res = result.datasets["digits"]
    budget = demo.QUICK_EPOCHS * res.problem.n_samples
    adam = demo.subopt_at(res.comparison["adam"], budget + 32)
    gd = demo.subopt_at(res.comparison["gd"], budget)
    assert 0 < adam < gd / 10
    rows = _table_rows(printed)[res.title]
    assert float(rows["Adam"][2]) < float(rows["gradient descent"][2])


def test_figures_are_nonempty_pngs(quick):
    pytest.importorskip("matplotlib")
    from PIL import Image
    result, printed, out = quick
    assert result.note is None
    assert sorted(os.path.basename(p) for p in result.figures) == [
        "demo_breast_cancer.png", "demo_digits.png"]
    for path in result.figures:
        with open(path, "rb") as fh:
            assert fh.read(8) == PNG_SIGNATURE
        assert os.path.getsize(path) > 20_000
        with Image.open(path) as img:
            assert img.size[0] >= 1000 and img.size[1] >= 400
            # not blank: many distinct colours (curves, text) on the white background
            assert len(img.convert("RGB").getcolors(maxcolors=1 << 16)) > 12
        assert f"wrote {path}" in printed


def test_subopt_at_picks_the_last_record_within_the_budget(quick):
    result, _, _ = quick
    tr = result.datasets["breast_cancer"].comparison["minibatch_sgd"]
    k = len(tr.grad_evals) // 2
    assert demo.subopt_at(tr, tr.grad_evals[k]) == tr.subopt[k]
    assert demo.subopt_at(tr, tr.grad_evals[k + 1] - 1) == tr.subopt[k]
    with pytest.raises(ValueError, match="no record"):
        demo.subopt_at(tr, -1)


def test_without_matplotlib_prints_the_table_and_names_the_extra(monkeypatch, tmp_path, capsys):
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.setitem(sys.modules, name, None)
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    from fastopt import plot
    with pytest.raises(ImportError, match=r"fastopt\[plot\]"):
        plot.require_matplotlib()
    result = demo.run("breast_cancer", ["gd", "adam", "newton"], quick=True, out=str(tmp_path))
    printed = capsys.readouterr().out
    assert result.figures == []
    assert 'pip install "fastopt[plot]"' in result.note and result.note in printed
    assert result.table in printed
    assert sorted(os.listdir(tmp_path)) == ["demo_table.txt"]


def test_split_is_stratified_and_disjoint():
    y = np.repeat(np.arange(3), [10, 21, 4])
    train, test = demo.stratified_split(y, 0.25, np.random.default_rng(1))
    assert np.intersect1d(train, test).size == 0
    assert np.union1d(train, test).size == y.size
    assert [int(np.sum(y[test] == c)) for c in range(3)] == [2, 5, 1]
    problem, X_test, y_test = demo.prepare("digits", seed=3)
    assert problem.multinomial and problem.shape == (10, 65)
    assert X_test.shape == (len(y_test), 65) and np.all(X_test[:, -1] == 1)
    np.testing.assert_allclose(problem.X[:, :-1].mean(axis=0), 0, atol=1e-12)


def test_bad_arguments_are_rejected(capsys):
    with pytest.raises(ValueError, match="optimizers must be names"):
        demo.run("breast_cancer", ["adam", "bfgs"], stream=False)
    with pytest.raises(ValueError, match="dataset must be one of"):
        demo.run("mnist", stream=False)
    with pytest.raises(ValueError, match="epochs must be a positive number"):
        demo.run("breast_cancer", epochs=0, stream=False)
    assert cli.main(["demo", "--optimizers", "adam,bfgs", "--no-plot"]) == 2
    assert "bfgs" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["demo", "--dataset", "mnist"])


def test_cli_and_python_m(tmp_path):
    """`python -m fastopt demo` runs the same command; no progress bar when not interactive."""
    env = dict(os.environ)
    import fastopt
    where = os.path.dirname(os.path.dirname(os.path.abspath(fastopt.__file__)))  # the tested copy
    env["PYTHONPATH"] = os.pathsep.join([where, env.get("PYTHONPATH", "")])
    proc = subprocess.run(
        [sys.executable, "-m", "fastopt", "demo", "--quick", "--dataset", "breast_cancer",
         "--optimizers", "gd,adam,newton", "--no-plot", "--out", str(tmp_path)],
        capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert "breast cancer, binary logistic regression" in proc.stdout
    assert "Newton" in proc.stdout and "AdaGrad" not in proc.stdout
    assert proc.stderr == ""                      # stderr is a pipe: no tqdm bar
    assert (tmp_path / "demo_table.txt").exists()


def test_progress_bar_on_request_and_threadpoolctl_optional(monkeypatch, capsys):
    pytest.importorskip("tqdm")
    result = demo.run("breast_cancer", ["gd", "newton"], quick=True, progress=True)
    captured = capsys.readouterr()
    assert "breast_cancer" in captured.err and "run" in captured.err     # the tqdm bar
    assert result.table in captured.out
    monkeypatch.setitem(sys.modules, "threadpoolctl", None)
    again = demo.run("breast_cancer", ["gd", "newton"], quick=True, progress=False)
    assert again.single_threaded_blas is False
    assert capsys.readouterr().err == ""
    # the numbers do not depend on the BLAS thread count beyond rounding
    a = result.datasets["breast_cancer"].comparison["gd"]
    b = again.datasets["breast_cancer"].comparison["gd"]
    np.testing.assert_allclose(a.loss, b.loss, rtol=1e-12)
