"""Adagrad (torch.optim.Adagrad's equations)."""
from .. import _specs
from .base import Optimizer


class Adagrad(Optimizer):
    r"""Adagrad: per-coordinate steps scaled by the root of the summed squared gradients.

    With learning rate :math:`\gamma` (``lr``), decay :math:`\eta` (``lr_decay``), weight decay
    :math:`\lambda`, :math:`\epsilon` (``eps``) and :math:`s_0` = ``initial_accumulator_value``:

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1}, \qquad
        \tilde\gamma_t = \gamma / (1 + (t - 1)\eta) \\
        s_t &= s_{t-1} + g_t^2 \\
        \theta_t &= \theta_{t-1} - \tilde\gamma_t\, g_t / (\sqrt{s_t} + \epsilon)

    ``eps_in_sqrt=True`` uses the lecture's :math:`g_t / \sqrt{s_t + \epsilon}`. State: ``sum``.
    Defaults: ``lr=1e-2, lr_decay=0, weight_decay=0, initial_accumulator_value=0,
    eps=1e-10``, as torch. Reference: Duchi, Hazan, Singer, JMLR 12 (2011).

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> fo.Adagrad([w], lr=0.5).step([2 * w])
    True
    >>> w
    array([ 0.5, -1.5])
    """

    spec = _specs.SPECS["adagrad"]

    def __init__(self, params, lr=1e-2, lr_decay=0.0, weight_decay=0.0,
                 initial_accumulator_value=0.0, eps=1e-10, *, maximize=False, eps_in_sqrt=False):
        super().__init__(params, lr=lr, lr_decay=lr_decay, weight_decay=weight_decay,
                         initial_accumulator_value=initial_accumulator_value, eps=eps,
                         maximize=maximize, eps_in_sqrt=eps_in_sqrt)
