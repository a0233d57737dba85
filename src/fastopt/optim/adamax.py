"""Adamax (torch.optim.Adamax's equations)."""
from .. import _specs
from .base import Optimizer


class Adamax(Optimizer):
    r"""Adamax: Adam with the infinity norm in place of the second moment.

    With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, :math:`\epsilon`
    and weight decay :math:`\lambda`:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        u_t = \max(\beta_2 u_{t-1},\ |g_t| + \epsilon) \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\, \frac{m_t}{u_t}

    State: ``exp_avg`` (:math:`m`), ``exp_inf`` (:math:`u`). Defaults: ``lr=2e-3,
    betas=(0.9, 0.999), eps=1e-8, weight_decay=0``, as torch. Reference: Kingma & Ba, ICLR 2015,
    section 7.

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> fo.Adamax([w], lr=0.1, eps=0.0).step([2 * w])
    True
    >>> w
    array([ 0.9, -1.9])
    """

    spec = _specs.SPECS["adamax"]

    def __init__(self, params, lr=2e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0, *,
                 maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         maximize=maximize)
