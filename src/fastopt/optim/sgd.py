"""Stochastic gradient descent with momentum (torch.optim.SGD's equations)."""
from .. import _specs
from .base import Optimizer


class SGD(Optimizer):
    r"""Stochastic gradient descent, optionally with (Nesterov) momentum.

    With learning rate :math:`\gamma` (``lr``), momentum :math:`\mu` (``momentum``), dampening
    :math:`\tau` (``dampening``) and weight decay :math:`\lambda` (``weight_decay``), each step
    with gradient :math:`g_t` (negated when ``maximize``) does

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        b_t &= g_t \ \text{if } t = 1 \text{ else } \mu b_{t-1} + (1 - \tau) g_t \\
        d_t &= g_t + \mu b_t \ \text{(nesterov)} \quad \text{else } d_t = b_t \\
        \theta_t &= \theta_{t-1} - \gamma d_t

    (with ``momentum=0``: :math:`\theta_t = \theta_{t-1} - \gamma g_t`, plain gradient descent
    on full-batch gradients). ``sutskever=True`` selects the lecture's form
    :math:`v_t = \mu v_{t-1} - \gamma g_t,\ \theta_t = \theta_{t-1} + v_t` (Nesterov:
    :math:`\theta_t = \theta_{t-1} + \mu v_t - \gamma g_t`), with :math:`v_0 = 0`; it equals the
    default form while ``lr`` is constant. State: ``momentum_buffer`` (:math:`b` or :math:`v`).

    Defaults: ``lr=1e-3, momentum=0, dampening=0, weight_decay=0, nesterov=False``, as torch.
    Reference: Sutskever et al., "On the importance of initialization and momentum in deep
    learning", ICML 2013.

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> opt = fo.SGD([w], lr=0.1, momentum=0.9)
    >>> opt.step([2 * w])          # gradient of ||w||^2
    True
    >>> w
    array([ 0.8, -1.6])
    """

    spec = _specs.SPECS["sgd"]

    def __init__(self, params, lr=1e-3, momentum=0.0, dampening=0.0, weight_decay=0.0,
                 nesterov=False, *, maximize=False, sutskever=False):
        super().__init__(params, lr=lr, momentum=momentum, dampening=dampening,
                         weight_decay=weight_decay, nesterov=nesterov, maximize=maximize,
                         sutskever=sutskever)
