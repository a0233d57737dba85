"""Adadelta (torch.optim.Adadelta's equations)."""
from .. import _specs
from .base import Optimizer


class Adadelta(Optimizer):
    r"""Adadelta: steps whose units come from running averages of past updates.

    With learning rate :math:`\gamma`, decay :math:`\rho` (``rho``), :math:`\epsilon` and weight
    decay :math:`\lambda`:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &= \rho v_{t-1} + (1 - \rho) g_t^2 \\
        \Delta_t &= \frac{\sqrt{u_{t-1} + \epsilon}}{\sqrt{v_t + \epsilon}}\, g_t \\
        u_t &= \rho u_{t-1} + (1 - \rho) \Delta_t^2, \qquad
        \theta_t = \theta_{t-1} - \gamma \Delta_t

    State: ``square_avg`` (:math:`v`), ``acc_delta`` (:math:`u`). Defaults: ``lr=1.0,
    rho=0.9, eps=1e-6, weight_decay=0``, as torch. Reference: Zeiler, arXiv:1212.5701 (2012).

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> fo.Adadelta([w], lr=1.0, rho=0.0, eps=1.0).step([np.array([1.0, 1.0])])
    True
    >>> w.round(6)
    array([ 0.292893, -2.707107])
    """

    spec = _specs.SPECS["adadelta"]

    def __init__(self, params, lr=1.0, rho=0.9, eps=1e-6, weight_decay=0.0, *, maximize=False):
        super().__init__(params, lr=lr, rho=rho, eps=eps, weight_decay=weight_decay,
                         maximize=maximize)
