"""RMSprop (torch.optim.RMSprop's equations)."""
from .. import _specs
from .base import Optimizer


class RMSprop(Optimizer):
    r"""RMSprop: steps scaled by a running root-mean-square of the gradients.

    With learning rate :math:`\gamma`, smoothing :math:`\alpha` (``alpha``), :math:`\epsilon`,
    weight decay :math:`\lambda` and momentum :math:`\mu`:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        v_t &= \alpha v_{t-1} + (1 - \alpha) g_t^2 \\
        m_t &= \alpha m_{t-1} + (1 - \alpha) g_t, \quad
        a_t = \sqrt{v_t - m_t^2} + \epsilon \ \text{(centered)}
        \quad \text{else } a_t = \sqrt{v_t} + \epsilon \\
        b_t &= \mu b_{t-1} + g_t / a_t, \quad \theta_t = \theta_{t-1} - \gamma b_t
        \ \text{(momentum > 0)} \quad \text{else } \theta_t = \theta_{t-1} - \gamma g_t / a_t

    ``eps_in_sqrt=True`` uses the lecture's :math:`a_t = \sqrt{v_t + \epsilon}`. State:
    ``square_avg`` (:math:`v`), ``momentum_buffer`` (:math:`b`, when momentum > 0), ``grad_avg``
    (:math:`m`, when centered). Defaults: ``lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0,
    momentum=0, centered=False``, as torch. Reference: Hinton, Coursera lecture 6e (2012).

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> fo.RMSprop([w], lr=0.01, alpha=0.75, eps=0.0).step([2 * w])
    True
    >>> w
    array([ 0.98, -1.98])
    """

    spec = _specs.SPECS["rmsprop"]

    def __init__(self, params, lr=1e-2, alpha=0.99, eps=1e-8, weight_decay=0.0, momentum=0.0,
                 centered=False, *, maximize=False, eps_in_sqrt=False):
        super().__init__(params, lr=lr, alpha=alpha, eps=eps, weight_decay=weight_decay,
                         momentum=momentum, centered=centered, maximize=maximize,
                         eps_in_sqrt=eps_in_sqrt)
