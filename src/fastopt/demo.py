r"""`fastopt demo`: every optimizer on real logistic-regression problems, as a table and figures.

For each shipped dataset (:mod:`fastopt.datasets`) the demo

1. splits the samples into a training part (75 %) and a held-out test part (25 %), stratified
   by class with ``--seed``, standardizes the features with the training part's mean and
   standard deviation and appends an intercept column;
2. builds the L2-regularized logistic regression of the training part
   (:class:`fastopt.problems.LogisticRegression`, ``l2 = 1e-2``): binary on the breast-cancer
   data, multinomial (softmax, 10 classes) on the digits;
3. computes :math:`f^\star` with Newton's method to machine precision
   (:func:`fastopt.convergence.solve`) and runs every optimizer of
   :data:`fastopt.convergence.METHODS` from zero for the same budget of gradient evaluations
   (``epochs`` passes over the training data, counted in sample gradients; Newton stops at
   machine precision) with :func:`fastopt.convergence.compare`;
4. prints, per optimizer, the final objective :math:`f(w)`, the suboptimality
   :math:`f(w) - f^\star`, the gradient evaluations spent, the wall time of the optimization
   and the accuracy of the final weights on the test part; and, when matplotlib is installed,
   draws :math:`f(w) - f^\star` against gradient evaluations and against wall time on a log
   scale (:func:`fastopt.plot.convergence_figure`), one PNG per dataset.

The problems are small (at most 650 weights), far below the size where a multithreaded BLAS
pays off; when threadpoolctl is installed the demo runs BLAS on one thread, which avoids the
thread contention that otherwise dominates its run time on a busy machine.
"""
import contextlib
import os
import sys
import time
from dataclasses import dataclass, field

import numpy as np

__all__ = ["DATASETS", "DemoDataset", "DemoResult", "run", "format_table", "subopt_at",
           "prepare", "stratified_split", "add_arguments", "run_from_args"]

#: Dataset name -> (loader name in fastopt.datasets, title, l2 penalty).
DATASETS = {
    "breast_cancer": ("load_breast_cancer", "breast cancer, binary logistic regression", 1e-2),
    "digits": ("load_digits", "digits, multinomial logistic regression (10 classes)", 1e-2),
}
TEST_FRACTION = 0.25
EPOCHS, QUICK_EPOCHS = 30, 5
PLOT_EXTRA_NOTE = ('matplotlib is not installed, so no figures were written; for them: '
                   'pip install "fastopt[plot]"')


@dataclass
class DemoDataset:
    """One dataset's run: the training problem, the test data, the comparison (one
    :class:`fastopt.convergence.Trace` per optimizer, each with its final weights ``w``) and
    each optimizer's test accuracy (a fraction)."""
    name: str
    title: str
    problem: object
    X_test: np.ndarray
    y_test: np.ndarray
    comparison: object
    test_accuracy: dict
    epochs: float
    figure: str = None


@dataclass
class DemoResult:
    """What :func:`run` did: per dataset a :class:`DemoDataset`, the printed table, the
    figures written (paths), the note printed instead of figures (if any), total seconds,
    whether BLAS ran on one thread (threadpoolctl installed), and every file written (paths:
    the table, then the figures)."""
    datasets: dict
    table: str
    figures: list = field(default_factory=list)
    note: str = None
    elapsed: float = 0.0
    single_threaded_blas: bool = False
    files: list = field(default_factory=list)


# ------------------------------------------------------------------------------------- data
def stratified_split(y, test_fraction, rng):
    """Indices ``(train, test)`` (sorted) with ``round(test_fraction * n_c)`` test samples of
    every class c (at least one, and at least one left for training when n_c >= 2)."""
    y = np.asarray(y)
    train, test = [], []
    for c in np.unique(y):
        members = rng.permutation(np.flatnonzero(y == c))
        k = int(round(test_fraction * members.size))
        k = min(max(k, 1), members.size - 1) if members.size >= 2 else 0
        test.append(members[:k])
        train.append(members[k:])
    return np.sort(np.concatenate(train)), np.sort(np.concatenate(test))


def prepare(name, seed=0):
    """The training problem and the test data of dataset `name` (see the module docstring).

    Returns ``(problem, X_test, y_test)``; both feature matrices are standardized with the
    training part's statistics and carry an intercept column of ones.
    """
    from . import datasets
    from .problems import LogisticRegression
    if name not in DATASETS:
        raise ValueError(f"dataset must be one of {list(DATASETS)}, got {name!r}")
    loader, _, l2 = DATASETS[name]
    X, y = getattr(datasets, loader)(standardize=False)
    train, test = stratified_split(y, TEST_FRACTION, np.random.default_rng(seed))
    mean = X[train].mean(axis=0)
    std = X[train].std(axis=0)
    std[std == 0] = 1.0

    def features(rows):
        Z = (X[rows] - mean) / std
        return np.ascontiguousarray(np.hstack([Z, np.ones((Z.shape[0], 1))]))

    problem = LogisticRegression(features(train), y[train], l2=l2,
                                 multinomial=True if name == "digits" else None)
    return problem, features(test), y[test]


def _accuracy(problem, w, X, y):
    return float(np.mean(np.argmax(problem.predict_proba(w, X), axis=1) == y))


# ------------------------------------------------------------------------------ the run
@contextlib.contextmanager
def _single_threaded_blas():
    try:
        from threadpoolctl import threadpool_limits
    except ImportError:
        yield False
        return
    with threadpool_limits(limits=1, user_api="blas"):
        yield True


def _progress(total, progress):
    """A tqdm bar on stderr when asked, or by default when stderr is a terminal."""
    if progress is None:
        progress = sys.stderr.isatty()
    if not progress:
        return None
    try:
        from tqdm.auto import tqdm
    except ImportError:
        return None
    return tqdm(total=total, unit="run", leave=False, file=sys.stderr)


def _method_names(optimizers):
    from .convergence import METHODS
    if optimizers is None:
        return list(METHODS)
    names = list(optimizers)
    unknown = [m for m in names if m not in METHODS]
    if unknown or not names:
        raise ValueError(f"optimizers must be names from {list(METHODS)}, got {unknown or names}")
    return list(dict.fromkeys(names))


def _dataset_names(datasets):
    if datasets is None or datasets == "all":
        return list(DATASETS)
    names = [datasets] if isinstance(datasets, str) else list(datasets)
    unknown = [d for d in names if d not in DATASETS]
    if unknown or not names:
        raise ValueError(f"dataset must be one of {list(DATASETS)} or 'all', got "
                         f"{unknown or names}")
    return list(dict.fromkeys(names))


def run(datasets=None, optimizers=None, *, quick=False, epochs=None, out=None, seed=0,
        progress=None, plot=True, stream=None):
    """Run the demo; returns a :class:`DemoResult`.

    datasets: names from :data:`DATASETS` (default all); optimizers: names from
    :data:`fastopt.convergence.METHODS` (default all); epochs: the budget in passes over the
    training data (default 30, or 5 with ``quick=True``); out: folder for the figures and
    ``demo_table.txt`` (default: write nothing); seed: the train/test split and the minibatch
    order; plot: draw figures when matplotlib is installed; stream: where the table is printed
    (default sys.stdout; ``False`` prints nothing).
    """
    from .convergence import Comparison, compare, solve
    names = _dataset_names(datasets)
    methods = _method_names(optimizers)
    epochs = (QUICK_EPOCHS if quick else EPOCHS) if epochs is None else epochs
    if isinstance(epochs, bool) or not isinstance(epochs, (int, float)) or not epochs > 0:
        raise ValueError(f"epochs must be a positive number, got {epochs!r}")
    if isinstance(seed, bool) or not isinstance(seed, (int, np.integer)) or seed < 0:
        raise ValueError(f"seed must be an integer >= 0, got {seed!r}")
    stream = sys.stdout if stream is None else stream
    if out is not None and stream is not False:
        print(f"output folder: {_folder(out)}", file=stream, flush=True)
    t_start = time.perf_counter()
    results = {}
    bar = _progress(len(names) * (len(methods) + 1), progress)
    try:
        with _single_threaded_blas() as single:
            for name in names:
                problem, X_test, y_test = prepare(name, seed)
                if bar is not None:
                    bar.set_description(f"{name}: f*")
                w_star, f_star, _ = solve(problem)
                if bar is not None:
                    bar.update(1)
                traces, accuracy = {}, {}
                for method in methods:
                    if bar is not None:
                        bar.set_description(f"{name}: {method}")
                    one = compare(problem, [method], epochs=epochs, seed=seed, f_star=f_star)
                    traces[method] = one[method]
                    accuracy[method] = _accuracy(problem, one[method].w, X_test, y_test)
                    if bar is not None:
                        bar.update(1)
                comparison = Comparison(problem=repr(problem), n_samples=problem.n_samples,
                                        f_star=float(f_star), w_star=w_star, traces=traces)
                results[name] = DemoDataset(name, DATASETS[name][1], problem, X_test, y_test,
                                            comparison, accuracy, float(epochs))
    finally:
        if bar is not None:
            bar.close()

    figures, note, files = [], None, []
    table = format_table(results)
    if out is not None:
        os.makedirs(out, exist_ok=True)
        files.append(os.path.join(out, "demo_table.txt"))
        with open(files[0], "w") as fh:
            fh.write(table + "\n")
    if plot and out is not None:
        try:
            from . import plot as fplot
            fplot.require_matplotlib()
        except ImportError:
            note = PLOT_EXTRA_NOTE
        else:
            for name, res in results.items():
                path = os.path.join(out, f"demo_{name}.png")
                fplot.convergence_figure(res.comparison, path, title=_figure_title(res))
                res.figure = path
                figures.append(path)
    files += figures
    result = DemoResult(results, table, figures, note, time.perf_counter() - t_start, single,
                        files)
    if stream is not False:
        print(result.table, file=stream)
        for path in files:
            print(f"wrote {path}", file=stream)
        if note:
            print(note, file=stream)
        threads = ("BLAS on one thread" if single else "BLAS threads left as they were; "
                   "pip install threadpoolctl to run them on one thread, faster here")
        print(f"done in {result.elapsed:.1f} s ({threads})", file=stream)
    return result


def _folder(out):
    """How the output folder is announced: as given, and where that is when relative."""
    shown = os.path.join(out, "")
    return shown if os.path.isabs(out) else f"{shown} (in {os.getcwd()})"


def _figure_title(res):
    p = res.problem
    return (f"{res.title}: n = {p.n_samples} training samples, {p.n_params} weights, "
            f"l2 = {p.l2:g}")


# ---------------------------------------------------------------------------- the table
def subopt_at(trace, evals):
    """The suboptimality of the last record with at most `evals` gradient evaluations."""
    k = int(np.searchsorted(trace.grad_evals, evals, side="right")) - 1
    if k < 0:
        raise ValueError(f"{trace.name} has no record at or below {evals} gradient evaluations")
    return float(trace.subopt[k])


COLUMNS = ("optimizer", "batch", "final loss", "f - f*", "grad evals", "time [s]", "test acc")


def _row(trace, accuracy, n):
    batch = "all" if trace.batch_size >= n else str(trace.batch_size)
    return (trace.label, batch, f"{trace.loss[-1]:.10f}", f"{trace.subopt[-1]:.3e}",
            f"{int(trace.grad_evals[-1]):d}", f"{trace.time[-1]:.4f}", f"{100 * accuracy:.1f}%")


def format_table(results):
    """The demo's text table: one block per dataset, one row per optimizer."""
    blocks = []
    for res in results.values():
        cmp, p = res.comparison, res.problem
        rows = [COLUMNS] + [_row(t, res.test_accuracy[k], p.n_samples)
                            for k, t in cmp.traces.items()]
        widths = [max(len(r[j]) for r in rows) for j in range(len(COLUMNS))]
        lines = [f"{res.title}",
                 f"  {p.n_samples} training / {len(res.y_test)} test samples, {p.n_params} "
                 f"weights, l2 = {p.l2:g}",
                 f"  f* = {cmp.f_star:.12f} (Newton's method to machine precision)",
                 f"  budget: {res.epochs:g} passes over the training data = "
                 f"{int(res.epochs * p.n_samples)} sample gradients per method",
                 "  (Newton stops at machine precision; it also forms one Hessian per step)"]
        for j, r in enumerate(rows):
            cells = [r[0].ljust(widths[0])] + [c.rjust(w) for c, w in zip(r[1:], widths[1:])]
            lines.append("  " + "  ".join(cells))
            if j == 0:
                lines.append("  " + "  ".join("-" * w for w in widths))
        blocks.append("\n".join(lines))
    return "\n\n".join(blocks)


# ------------------------------------------------------------------------------ command
def add_arguments(parser):
    """Options of `fastopt demo`."""
    from .convergence import METHODS
    parser.add_argument("--quick", action="store_true",
                        help=f"a {QUICK_EPOCHS}-pass budget instead of {EPOCHS} (a few seconds)")
    parser.add_argument("--out", default="fastopt-demo", metavar="DIR",
                        help="folder for demo_table.txt and one demo_<dataset>.png per "
                             "dataset, created if missing (default: %(default)s, in the "
                             "current directory)")
    parser.add_argument("--dataset", default="all", choices=[*DATASETS, "all"],
                        help="which dataset: " + ", ".join([*DATASETS, "all"])
                             + " (default: %(default)s)")
    parser.add_argument("--optimizers", default=None, metavar="NAMES",
                        help="comma-separated optimizers from " + ", ".join(METHODS)
                             + " (default: all)")
    parser.add_argument("--epochs", type=float, default=None,
                        help=f"budget in passes over the training data (default {EPOCHS}, "
                             f"{QUICK_EPOCHS} with --quick)")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the train/test split and minibatch order (default 0)")
    parser.add_argument("--no-plot", action="store_true", help="print the table only")


def run_from_args(args):
    """`fastopt demo` with parsed arguments; returns the exit status."""
    optimizers = None
    if args.optimizers is not None:
        optimizers = [s.strip() for s in args.optimizers.split(",") if s.strip()]
    try:
        run(args.dataset, optimizers, quick=args.quick, epochs=args.epochs, out=args.out,
            seed=args.seed, plot=not args.no_plot)
    except ValueError as exc:
        print(f"fastopt demo: error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":  # pragma: no cover
    import argparse
    _parser = argparse.ArgumentParser(prog="fastopt demo")
    add_arguments(_parser)
    sys.exit(run_from_args(_parser.parse_args()))
