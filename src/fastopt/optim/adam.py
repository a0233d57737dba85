"""Adam, AMSGrad and AdamW (torch.optim.Adam / AdamW's equations)."""
from .. import _specs
from .base import Optimizer


class Adam(Optimizer):
    r"""Adam: bias-corrected running moments of the gradient and its square.

    With learning rate :math:`\gamma`, ``betas`` :math:`(\beta_1, \beta_2)`, :math:`\epsilon`
    and weight decay :math:`\lambda` (added to the gradient; see :class:`AdamW` for the
    decoupled form):

    .. math::
        g_t &\leftarrow g_t + \lambda \theta_{t-1} \\
        m_t &= \beta_1 m_{t-1} + (1 - \beta_1) g_t, \qquad
        v_t = \beta_2 v_{t-1} + (1 - \beta_2) g_t^2 \\
        \hat v_t &= \max(\hat v_{t-1}, v_t) \ \text{(amsgrad)} \quad \text{else } \hat v_t = v_t \\
        \theta_t &= \theta_{t-1} - \frac{\gamma}{1 - \beta_1^t}\,
        \frac{m_t}{\sqrt{\hat v_t} / \sqrt{1 - \beta_2^t} + \epsilon}

    State: ``exp_avg`` (:math:`m`), ``exp_avg_sq`` (:math:`v`), ``max_exp_avg_sq``
    (:math:`\hat v`, with amsgrad). Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8,
    weight_decay=0, amsgrad=False``, as torch. References: Kingma & Ba, ICLR 2015; Reddi et al.
    (AMSGrad), ICLR 2018.

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> fo.Adam([w], lr=0.1).step([2 * w])
    True
    >>> w.round(6)
    array([ 0.9, -1.9])
    """

    spec = _specs.SPECS["adam"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=0.0,
                 amsgrad=False, *, maximize=False, decoupled_weight_decay=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize,
                         decoupled_weight_decay=decoupled_weight_decay)


class AdamW(Optimizer):
    r"""AdamW: Adam with decoupled weight decay.

    As :class:`Adam` with :math:`\lambda = 0` in the gradient, after first shrinking the
    parameter: :math:`\theta_{t-1} \leftarrow (1 - \gamma\lambda)\,\theta_{t-1}`.
    Defaults: ``lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2, amsgrad=False``, as
    torch. Reference: Loshchilov & Hutter, "Decoupled weight decay regularization", ICLR 2019.

    >>> import numpy as np, fastopt as fo
    >>> w = np.array([1.0, -2.0])
    >>> fo.AdamW([w], lr=0.1, weight_decay=0.5).step([np.zeros(2)])
    True
    >>> w
    array([ 0.95, -1.9 ])
    """

    spec = _specs.SPECS["adamw"]

    def __init__(self, params, lr=1e-3, betas=(0.9, 0.999), eps=1e-8, weight_decay=1e-2,
                 amsgrad=False, *, maximize=False):
        super().__init__(params, lr=lr, betas=betas, eps=eps, weight_decay=weight_decay,
                         amsgrad=amsgrad, maximize=maximize)
