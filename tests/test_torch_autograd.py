"""fastopt.torch's steps are in-place updates as far as autograd can tell: every optimizer bumps
its parameters' version counters, as torch.optim's ``p.add_`` does, so a graph that saved a
parameter before the step refuses to back-propagate through the changed values (torch's
"modified by an inplace operation" error) instead of giving a wrong gradient."""
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
import fastopt.torch as ft  # noqa: E402
from fastopt import _table  # noqa: E402

TABLE = [opt.class_name for opt in _table.OPTIMIZERS.values() if opt.reference is None]


def stale_graph(opt_cls, p, step, **kw):
    """A graph that saved `p` (p * p), then one step of `opt_cls`; returns the version
    counter's change and the error of backward() through the stale graph (None if it ran)."""
    opt = opt_cls([p], **kw)
    loss_before = (p * p).sum()
    before = p._version
    step(opt)
    change = p._version - before
    try:
        loss_before.backward()
    except RuntimeError as e:
        return change, e
    return change, None


def gradient_step(p):
    def step(opt):
        p.grad = torch.ones_like(p)
        opt.step()
    return step


@pytest.mark.parametrize("name", TABLE + ["Adafactor", "Muon"])
def test_a_step_bumps_the_version_and_a_stale_graph_refuses(name):
    p = torch.nn.Parameter(torch.randn(4, 3, dtype=torch.float64))
    change, error = stale_graph(getattr(ft, name), p, gradient_step(p), lr=0.1)
    assert change >= 1
    assert error is not None and "modified by an inplace operation" in str(error)


@pytest.mark.parametrize("line_search_fn", [None, "strong_wolfe"])
def test_lbfgs_bumps_the_version_and_a_stale_graph_refuses(line_search_fn):
    p = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))

    def step(opt):
        def closure():
            opt.zero_grad()
            loss = ((p - 1.0) ** 2).sum()
            loss.backward()
            return loss
        opt.step(closure)

    change, error = stale_graph(ft.LBFGS, p, step, max_iter=4, line_search_fn=line_search_fn)
    assert change >= 1
    assert error is not None and "modified by an inplace operation" in str(error)


def test_lbfgs_that_does_not_move_leaves_the_version():
    # at the minimum already: torch returns before any p.add_, and so does fastopt.torch
    p = torch.nn.Parameter(torch.ones(5, dtype=torch.float64))
    opt = ft.LBFGS([p])

    def closure():
        opt.zero_grad()
        loss = ((p - 1.0) ** 2).sum()
        loss.backward()
        return loss
    before = p._version
    opt.step(closure)
    assert p._version == before
