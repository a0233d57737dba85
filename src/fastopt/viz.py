r"""`fastopt viz`: the paths of every optimizer on 2-D test functions, over contour plots.

:func:`trajectories` runs each optimizer of :data:`METHODS` (those of
:data:`fastopt.convergence.METHODS` but L-BFGS, which is compared on logistic regression, plus
Rprop, NAdam and RAdam, which are drawn here only) with
:func:`fastopt.train.train` from the function's start point and records every iterate, on

* the Rosenbrock valley :math:`(1-x)^2 + 100 (y - x^2)^2` (start (-1.5, 2), minimum (1, 1));
* Beale's function (start (1, 1.5), minimum (3, 0.5));
* the saddle :math:`\tfrac12 (x^2 - y^2)` (start (1, 0.001); no minimum: descent methods leave
  along y, Newton's identity shift keeps it from stepping to the saddle);
* an ill-conditioned quadratic (condition number 25, valley rotated by 30 degrees, start
  (-4, 2), minimum 0 at the origin),

all from :mod:`fastopt.problems`. The stochastic methods (SGD with 1/t steps, minibatch SGD,
SVRG) need a finite sum; on these deterministic functions they see the function as the mean of
``n = 16`` noisy copies :math:`f_i(w) = f(w) + \xi_i^\top w + \tfrac12\eta_i\|w\|^2` with
fixed random :math:`\xi_i, \eta_i` summing to zero (:class:`NoisySum`): the sum is still
:math:`f`, and SVRG's correction removes the noise as the iterate nears its snapshot. A step
of every method counts one iteration; the learning rates (:data:`SETTINGS`) are set per function
so that each method makes visible progress in the step budget, not tuned for speed.

:func:`fastopt.plot.trajectory_figure` and :func:`fastopt.plot.trajectory_animation` draw the
result; ``fastopt viz`` writes ``trajectories.png`` and ``trajectories.gif``.
"""
import math
import os
import sys
import warnings
from dataclasses import dataclass, field

import numpy as np

__all__ = ["FUNCTIONS", "METHODS", "SETTINGS", "NoisySum", "Panel", "trajectories", "run",
           "add_arguments", "run_from_args"]

STEPS, QUICK_STEPS = 500, 40
N_COPIES = 16
GTOL = 1e-10


def _rosenbrock():
    from .problems import Rosenbrock
    return Rosenbrock()


def _beale():
    from .problems import Beale
    return Beale()


def _saddle():
    from .problems import Saddle
    return Saddle()


def _quadratic():
    from .problems import IllConditionedQuadratic
    return IllConditionedQuadratic(kappa=25.0)


#: name -> (title, problem factory, noise scale of the stochastic methods, plotted box).
FUNCTIONS = {
    "rosenbrock": ("Rosenbrock  $(1-x)^2 + 100\\,(y-x^2)^2$", _rosenbrock, 20.0,
                   ((-2.0, 2.0), (-1.0, 3.0))),
    "beale": ("Beale  $\\sum_k (c_k - x + x y^k)^2$", _beale, 1.0, ((-0.5, 4.0), (-1.5, 2.0))),
    "saddle": ("saddle  $(x^2 - y^2)/2$", _saddle, 0.2, ((-1.5, 1.5), (-1.5, 1.5))),
    "quadratic": ("ill-conditioned quadratic ($\\kappa = 25$)", _quadratic, 2.0,
                  ((-5.0, 5.0), (-5.0, 5.0))),
}


def _methods():
    """The methods drawn: fastopt.convergence's but L-BFGS, then Rprop (full batch: its
    sign logic assumes exact gradients), NAdam and RAdam (on the noisy sums, as Adam)."""
    from .convergence import METHODS as COMPARED, Method
    drawn = {name: m for name, m in COMPARED.items() if name != "lbfgs"}
    extra = [Method("nadam", "NAdam", "NAdam", 32, lambda p: dict(lr=1e-2)),
             Method("radam", "RAdam", "RAdam", 32, lambda p: dict(lr=1e-2)),
             Method("rprop", "Rprop", "Rprop", None, lambda p: dict(lr=1e-2))]
    order = list(drawn)
    at = order.index("schedule_free_adamw") + 1
    names = order[:at] + ["nadam", "radam"] + order[at:] + ["rprop"]
    return {name: drawn.get(name) or next(m for m in extra if m.name == name)
            for name in names}


#: name -> :class:`fastopt.convergence.Method`: the optimizers `fastopt viz` draws, in
#: legend order (only their name, label, class and batch size are used here; the
#: hyperparameters come from :data:`SETTINGS`).
METHODS = _methods()


def _settings(lr_gd, momentum_lr, adagrad, rmsprop, adam, adadelta, adamax, momentum=0.9,
              lion=None, schedule_free_adamw=None, nadam=None, radam=None, rprop=None):
    """One function's optimizer keyword arguments, method name -> dict. The stochastic
    methods take gradient descent's step (SGD and minibatch SGD decaying as 1/(1 + t/100));
    Lion takes a tenth of Adam's lr, Schedule-Free AdamW, NAdam and RAdam Adam's, Rprop a
    first step of 0.01 (torch's default), unless given. RAdam's first five steps are not
    rectified (rho_t <= 5: a momentum step lr * m_hat, no division by the second moment), so
    where the gradient at the start is large (Rosenbrock, Beale, the quadratic) it takes a
    smaller lr than Adam, or those steps leave the plot; on the saddle a larger one, so that
    it leaves the saddle within the quick budget."""
    from .schedules import inverse_time
    return dict(
        gd=dict(lr=lr_gd), sgd=dict(lr=inverse_time(lr_gd, decay=0.01)),
        minibatch_sgd=dict(lr=inverse_time(lr_gd, decay=0.01)),
        momentum=dict(lr=momentum_lr, momentum=momentum),
        nesterov=dict(lr=momentum_lr, momentum=momentum, nesterov=True),
        adagrad=dict(lr=adagrad), rmsprop=dict(lr=rmsprop), adam=dict(lr=adam),
        adadelta=dict(lr=adadelta), adamax=dict(lr=adamax), svrg=dict(lr=lr_gd),
        lion=dict(lr=adam / 10 if lion is None else lion),
        schedule_free_adamw=dict(lr=adam if schedule_free_adamw is None else schedule_free_adamw),
        nadam=dict(lr=adam if nadam is None else nadam),
        radam=dict(lr=adam if radam is None else radam),
        rprop=dict(lr=1e-2 if rprop is None else rprop),
        newton=dict(lr=1.0, line_search="armijo"))


#: function name -> method name -> optimizer keyword arguments (see :func:`_settings`).
SETTINGS = {
    "rosenbrock": _settings(1e-3, 1e-3, adagrad=1.0, rmsprop=5e-2, adam=0.1, adadelta=20.0,
                            adamax=0.2, radam=7e-3),
    "beale": _settings(2e-2, 2e-3, adagrad=1.0, rmsprop=2e-2, adam=0.1, adadelta=10.0,
                       adamax=0.2, radam=7e-3),
    "saddle": _settings(5e-2, 5e-2, adagrad=0.2, rmsprop=1e-2, adam=2e-2, adadelta=20.0,
                        adamax=2e-2, radam=5e-2),
    "quadratic": _settings(0.07, 0.02, adagrad=1.5, rmsprop=5e-2, adam=0.2, adadelta=50.0,
                           adamax=0.2, momentum=0.8, radam=5e-2),
}


# ------------------------------------------------------------------------ noisy finite sum
class NoisySum:
    r"""A deterministic 2-D problem seen as a finite sum of ``n`` noisy copies.

    .. math::
        f_i(w) = f(w) + \xi_i^\top w + \tfrac12 \eta_i \|w\|^2, \qquad
        \xi_i = \sigma (z_i - \bar z), \quad \eta_i = \tfrac{\sigma}{2} (u_i - \bar u),

    with :math:`z_i \sim N(0, I_2)`, :math:`u_i \sim N(0, 1)` drawn once from `seed`. The
    noise sums to zero, so :math:`\frac1n\sum_i f_i = f` exactly; a sample gradient is
    :math:`\nabla f(w) + \xi_i + \eta_i w`. SVRG's correction
    :math:`\nabla f_i(w) - \nabla f_i(\tilde w) + \nabla f(\tilde w)` leaves
    :math:`\nabla f(w) + \eta_i (w - \tilde w)`: noise that vanishes as the iterate nears
    the snapshot. Implements the problem interface of :mod:`fastopt.problems`.
    """

    def __init__(self, problem, sigma, n=N_COPIES, seed=0):
        rng = np.random.default_rng(seed)
        z = rng.standard_normal((int(n), 2))
        u = rng.standard_normal(int(n))
        self.base = problem
        self.xi = float(sigma) * (z - z.mean(axis=0))
        self.eta = 0.5 * float(sigma) * (u - u.mean())
        self.n_samples = int(n)
        self.shape = (2,)
        self.n_params = 2
        self.dtype = np.dtype(np.float64)

    def init(self):
        return self.base.init()

    def _noise(self, idx):
        if idx is None:
            return np.zeros(2), 0.0
        return self.xi[idx].mean(axis=0), float(self.eta[idx].mean())

    def loss(self, w, idx=None):
        xi, eta = self._noise(idx)
        w64 = np.asarray(w, np.float64)
        return self.base.loss(w) + float(xi @ w64) + 0.5 * eta * float(w64 @ w64)

    def grad(self, w, idx=None):
        xi, eta = self._noise(idx)
        return self.base.grad(w) + xi + eta * np.asarray(w, np.float64)

    def hessian(self, w, idx=None):
        return self.base.hessian(w) + self._noise(idx)[1] * np.eye(2)


# ------------------------------------------------------------------------------ the runs
@dataclass
class Panel:
    """One function's runs: paths[name] is a (k + 1, 2) array of the iterates (start first)."""
    name: str
    title: str
    problem: object
    start: tuple
    bounds: tuple
    minimizer: tuple
    paths: dict = field(default_factory=dict)
    labels: dict = field(default_factory=dict)
    stop_reasons: dict = field(default_factory=dict)

    def values(self, X, Y):
        """The function on a grid (X, Y of equal shape), for contour plots."""
        W = np.stack([np.asarray(X, np.float64), np.asarray(Y, np.float64)])
        A = getattr(self.problem, "A", None)
        if A is not None:                                   # a Quadratic: 1/2 w'Aw - b'w + c
            AW = np.einsum("ij,j...->i...", A, W)
            return (0.5 * np.einsum("i...,i...->...", W, AW)
                    - np.einsum("i,i...->...", self.problem.b, W) + self.problem.c)
        return np.asarray(self.problem.loss(W), dtype=np.float64)


def _outside(w, bounds, margin=0.5):
    for v, (lo, hi) in zip(w, bounds):
        pad = margin * (hi - lo)
        if not (lo - pad <= v <= hi + pad):
            return True
    return False


def _one_path(problem, sigma, method, hyper, steps, bounds, seed):
    from . import optim
    from .train import train
    batch = method.batch_size
    if batch is not None:
        problem = NoisySum(problem, sigma, seed=seed)
        batch = {1: 1}.get(batch, N_COPIES // 4)
        steps_per_epoch = problem.n_samples // batch
    else:
        steps_per_epoch = 1
    w = np.array(problem.init(), dtype=np.float64)
    opt = getattr(optim, method.optimizer)([w], **hyper)
    path = []

    def keep(record):
        path.append(np.array(record["w"], dtype=np.float64))
        return (record["step"] >= steps or record["grad_norm"] <= GTOL
                or _outside(record["w"], bounds))

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", RuntimeWarning)   # Newton's shift / line-search notes
        hist = train(problem, opt, epochs=math.ceil(steps / steps_per_epoch), batch_size=batch,
                     seed=seed, record_every=1, callback=keep, progress=False)
    return np.array(path), hist.stop_reason


def trajectories(functions=None, optimizers=None, *, steps=STEPS, seed=0, progress=None):
    """Run every optimizer on every function; returns a list of :class:`Panel`.

    functions: names from :data:`FUNCTIONS` (default all); optimizers: names from
    :data:`METHODS` (default all); steps: iterations per run (a run also
    stops at a gradient norm <= 1e-10 or when it leaves the plotted box by half its size).
    """
    functions = list(FUNCTIONS) if functions is None else list(functions)
    optimizers = list(METHODS) if optimizers is None else list(optimizers)
    bad = [f for f in functions if f not in FUNCTIONS] + [m for m in optimizers
                                                          if m not in METHODS]
    if bad:
        raise ValueError(f"unknown function or optimizer {bad}; functions: {list(FUNCTIONS)}, "
                         f"optimizers: {list(METHODS)}")
    if isinstance(steps, bool) or not isinstance(steps, (int, np.integer)) or steps < 1:
        raise ValueError(f"steps must be a positive integer, got {steps!r}")
    bar = None
    if progress or (progress is None and sys.stderr.isatty()):
        try:
            from tqdm.auto import tqdm
            bar = tqdm(total=len(functions) * len(optimizers), unit="run", leave=False)
        except ImportError:
            bar = None
    panels = []
    try:
        for fname in functions:
            title, factory, sigma, bounds = FUNCTIONS[fname]
            problem = factory()
            minimizer = getattr(problem, "minimizer", None)
            panel = Panel(fname, title, problem, tuple(problem.init()), bounds,
                          None if minimizer is None else tuple(minimizer))
            for name in optimizers:
                method = METHODS[name]
                path, reason = _one_path(problem, sigma, method, SETTINGS[fname][name], steps,
                                         bounds, seed)
                panel.paths[name] = path
                panel.stop_reasons[name] = reason
                panel.labels[name] = method.label
                if bar is not None:
                    bar.update(1)
            panels.append(panel)
    finally:
        if bar is not None:
            bar.close()
    return panels


def run(out="fastopt-viz", *, quick=False, steps=None, functions=None, optimizers=None,
        seed=0, gif=True, stream=None):
    """Compute the trajectories and write ``trajectories.png`` (and ``trajectories.gif``)
    into `out` (created if missing); returns ``(panels, paths written)``. Prints the folder
    first and every file written last to `stream` (default sys.stdout; ``False``: nothing).
    Needs matplotlib (the [plot] extra)."""
    from . import plot
    plot.require_matplotlib()
    steps = (QUICK_STEPS if quick else STEPS) if steps is None else steps
    stream = sys.stdout if stream is None else stream
    if stream is not False:
        shown = os.path.join(out, "")
        where = "" if os.path.isabs(out) else f" (in {os.getcwd()})"
        print(f"output folder: {shown}{where}", file=stream, flush=True)
    panels = trajectories(functions, optimizers, steps=steps, seed=seed)
    os.makedirs(out, exist_ok=True)
    written = [os.path.join(out, "trajectories.png")]
    title = f"{len(panels[0].paths)} optimizers, up to {steps} steps each"
    plot.trajectory_figure(panels, written[0], title=title)
    if gif:
        written.append(os.path.join(out, "trajectories.gif"))
        plot.trajectory_animation(panels, written[1], frames=20 if quick else 60, title=title)
    if stream is not False:
        for path in written:
            print(f"wrote {path}", file=stream)
    return panels, written


# ------------------------------------------------------------------------------ command
def add_arguments(parser):
    """Options of `fastopt viz`."""
    parser.add_argument("--out", default="fastopt-viz", metavar="DIR",
                        help="folder for trajectories.png and trajectories.gif, created if "
                             "missing (default: %(default)s, in the current directory)")
    parser.add_argument("--quick", action="store_true",
                        help=f"{QUICK_STEPS} steps per optimizer instead of {STEPS}, a short GIF")
    parser.add_argument("--steps", type=int, default=None,
                        help=f"steps per optimizer (default {STEPS}, {QUICK_STEPS} with --quick)")
    parser.add_argument("--functions", default=None, metavar="NAMES",
                        help="comma-separated functions from " + ", ".join(FUNCTIONS)
                             + " (default: all)")
    parser.add_argument("--optimizers", default=None, metavar="NAMES",
                        help="comma-separated optimizers from " + ", ".join(METHODS)
                             + " (default: all)")
    parser.add_argument("--no-gif", action="store_true", help="write the PNG only")
    parser.add_argument("--seed", type=int, default=0,
                        help="seed of the stochastic methods' noise and sampling (default 0)")


def run_from_args(args):
    """`fastopt viz` with parsed arguments; returns the exit status."""
    def names(text):
        return None if text is None else [s.strip() for s in text.split(",") if s.strip()]

    try:
        run(args.out, quick=args.quick, steps=args.steps, seed=args.seed, gif=not args.no_gif,
            functions=names(args.functions), optimizers=names(args.optimizers))
    except ImportError as exc:
        print(f"fastopt viz: {exc}", file=sys.stderr)
        return 1
    except ValueError as exc:
        print(f"fastopt viz: error: {exc}", file=sys.stderr)
        return 2
    return 0
