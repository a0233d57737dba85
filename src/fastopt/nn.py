r"""Batch normalization (Ioffe & Szegedy, 2015) for NumPy arrays: forward, backward, running stats.

:class:`BatchNorm` normalizes each channel of an (N, C) or (N, C, *spatial) input (e.g.
(N, C, H, W)) over every axis but the channel axis, with torch's semantics (``BatchNorm1d`` /
``BatchNorm2d``). Its affine parameters ``weight``, ``bias`` and their gradients
``grad_weight``, ``grad_bias`` are plain float arrays that any fastopt optimizer updates::

    bn = BatchNorm(64)
    opt = fo.SGD([*model_params, bn.weight, bn.bias], lr=0.1)
    y = bn.forward(x); ...; dx = bn.backward(dy)
    opt.step([*model_grads, bn.grad_weight, bn.grad_bias])

Synchronized batch norm
-----------------------
Every cross-example reduction goes through three hooks, so that a data-parallel variant only has
to agree on a shift and sum a few per-channel numbers across replicas:

* :meth:`BatchNorm.stats_shift` returns the per-channel shift :math:`s` (float64, C) of the
  moment sums below. Any value gives the same statistics in exact arithmetic; a value near the
  batch mean avoids cancellation in :math:`\sum (x-s)^2 / m - (\sum (x-s) / m)^2`. Here it is
  the local batch mean (a two-pass computation). It must be *identical on every replica*: a
  synchronized variant returns ``running_mean`` (kept identical on all replicas, since every
  replica applies the same reduced update), or the all-reduced batch mean (exact, one more
  message).
* :meth:`BatchNorm.reduce_stats` receives ``stats``, a float64 vector of length ``2 C + 1``
  laid out as ``[sum(x - s) (C), sum((x - s)^2) (C), count (1)]`` over this replica's
  examples and positions, and returns the same quantities summed over all replicas.
* :meth:`BatchNorm.reduce_grad_sums` receives ``sums``, a float64 vector of length ``2 C``,
  ``[sum(dy) (C), sum(dy * xhat) (C)]``, and returns it summed over all replicas.

The two reductions return their argument unchanged here. A ``SyncBatchNorm`` overrides them with
one ``Allreduce(SUM)`` each (one message per forward, one per backward) and inherits everything
else; the mean and variance are then those of the global batch and the input gradient is the
exact gradient of the global-batch normalization. ``grad_weight`` and ``grad_bias`` stay the
replica's own sums (computed before the reduction), as in torch, to be averaged with the other
parameter gradients.
"""
import numbers

import numpy as np

__all__ = ["BatchNorm"]

_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))


class BatchNorm:
    r"""Batch normalization over the channel axis 1 of (N, C) or (N, C, d1, d2, ...) inputs.

    Training mode, per channel :math:`c`, over the :math:`m` values of the batch (all
    examples and positions):

    .. math::
        \mu = \frac1m \sum x, \quad \sigma^2 = \frac1m \sum (x - \mu)^2, \quad
        \hat x = \frac{x - \mu}{\sqrt{\sigma^2 + \epsilon}}, \quad y = \gamma \hat x + \beta,

    and the running statistics move by ``momentum`` :math:`\rho`:
    :math:`\bar\mu \leftarrow (1-\rho)\bar\mu + \rho\mu`, :math:`\bar\sigma^2 \leftarrow
    (1-\rho)\bar\sigma^2 + \rho\,\frac{m}{m-1}\sigma^2` (the unbiased variance, as torch).
    ``momentum=None`` gives the cumulative average :math:`\rho = 1/k` at the k-th batch.
    Eval mode normalizes with :math:`\bar\mu, \bar\sigma^2` instead.

    Backward (training), with :math:`g = \partial L/\partial y`:

    .. math::
        \frac{\partial L}{\partial \beta} = \sum g, \quad
        \frac{\partial L}{\partial \gamma} = \sum g \hat x, \quad
        \frac{\partial L}{\partial x} = \frac{\gamma}{m\sqrt{\sigma^2+\epsilon}}
        \Big(m\,g - \sum g - \hat x \sum g \hat x\Big);

    in eval mode :math:`\partial L/\partial x = \gamma g / \sqrt{\bar\sigma^2 + \epsilon}`.

    Parameters: ``num_features`` (C), ``eps`` (:math:`\epsilon` > 0), ``momentum``
    (:math:`\rho` in [0, 1] or None), ``affine`` (learn :math:`\gamma, \beta`; otherwise
    :math:`\gamma = 1, \beta = 0` and ``weight``/``bias`` are None), ``dtype`` (float32 or
    float64: the dtype of parameters, gradients and running statistics).

    Attributes: ``weight`` (ones), ``bias`` (zeros), ``grad_weight``, ``grad_bias`` (set --
    not accumulated -- by each :meth:`backward`), ``running_mean`` (zeros), ``running_var``
    (ones), ``num_batches_tracked``, ``training``. The input may be float32 or float64; the
    output has its dtype; statistics and reductions are computed in float64.
    """

    def __init__(self, num_features, eps=1e-5, momentum=0.1, affine=True, dtype=np.float32):
        if isinstance(num_features, bool) or not isinstance(num_features, numbers.Integral):
            raise TypeError(f"num_features must be an integer, got {type(num_features).__name__}")
        if num_features < 1:
            raise ValueError(f"num_features must be >= 1, got {num_features}")
        if isinstance(eps, bool) or not isinstance(eps, numbers.Real):
            raise TypeError(f"eps must be a real number, got {type(eps).__name__}")
        if not (float(eps) > 0 and np.isfinite(eps)):
            raise ValueError(f"eps must be a finite number > 0, got {eps!r}")
        if momentum is not None:
            if isinstance(momentum, bool) or not isinstance(momentum, numbers.Real):
                raise TypeError(f"momentum must be a real number or None, got {type(momentum).__name__}")
            if not 0.0 <= float(momentum) <= 1.0:
                raise ValueError(f"momentum must be in [0, 1] or None, got {momentum!r}")
            momentum = float(momentum)
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        c = int(num_features)
        self.num_features = c
        self.eps = float(eps)
        self.momentum = momentum
        self.affine = bool(affine)
        self.dtype = dtype
        self.weight = np.ones(c, dtype) if self.affine else None
        self.bias = np.zeros(c, dtype) if self.affine else None
        self.grad_weight = np.zeros(c, dtype) if self.affine else None
        self.grad_bias = np.zeros(c, dtype) if self.affine else None
        self.running_mean = np.zeros(c, dtype)
        self.running_var = np.ones(c, dtype)
        self.num_batches_tracked = 0
        self.training = True
        self._cache = None

    def __repr__(self):
        return (f"{type(self).__name__}({self.num_features}, eps={self.eps}, "
                f"momentum={self.momentum}, affine={self.affine}, dtype={self.dtype.name})")

    # ------------------------------------------------------------------------ mode, params

    def train(self, mode=True):
        """Switch to training (default) or eval mode; returns self."""
        self.training = bool(mode)
        return self

    def eval(self):
        """Switch to eval mode (normalize with the running statistics); returns self."""
        return self.train(False)

    def parameters(self):
        """[weight, bias] (empty when affine=False), in the order of :meth:`gradients`."""
        return [self.weight, self.bias] if self.affine else []

    def gradients(self):
        """[grad_weight, grad_bias], matching :meth:`parameters`."""
        return [self.grad_weight, self.grad_bias] if self.affine else []

    # ---------------------------------------------------------------------------- hooks

    def stats_shift(self, x3):
        """Per-channel shift s (float64, C) of the moment sums; must agree across replicas.

        ``x3`` is the input viewed as (N, C, L). Here: the local batch mean. Override in a
        synchronized variant (e.g. ``return self.running_mean.astype(np.float64)``).
        """
        return x3.mean(axis=(0, 2), dtype=np.float64)

    def reduce_stats(self, stats):
        """Sum ``[sum_x (C), sum_x2 (C), count]`` (float64, 2C+1) over replicas; identity here.

        Override in a synchronized variant (one ``Allreduce(SUM)``). Must return an array of
        the same shape; it may reduce in place and return its argument.
        """
        return stats

    def reduce_grad_sums(self, sums):
        """Sum ``[sum_dy (C), sum_dy_xhat (C)]`` (float64, 2C) over replicas; identity here."""
        return sums

    # -------------------------------------------------------------------------- helpers

    def _as_ncl(self, x, name):
        """Check x and view it as (N, C, L) (L = product of the spatial axes, 1 for (N, C))."""
        if not isinstance(x, np.ndarray):
            raise TypeError(f"{name} must be a numpy.ndarray, got {type(x).__name__}")
        if x.dtype not in _FLOATS:
            raise TypeError(f"{name} must be float32 or float64, got {x.dtype}")
        if x.ndim < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"{name} must have shape (N, {self.num_features}, ...), got {x.shape}")
        return x.reshape(x.shape[0], self.num_features, int(np.prod(x.shape[2:], dtype=np.int64)))

    def _channel(self, v):
        """A per-channel float64 vector broadcast against (N, C, L)."""
        return np.asarray(v, np.float64).reshape(1, -1, 1)

    def local_stats(self, x3, shift):
        """``[sum(x - s) (C), sum((x - s)^2) (C), count]`` of this replica's input, float64."""
        c = self.num_features
        stats = np.empty(2 * c + 1)
        centered = x3 - self._channel(shift)  # float64 (N, C, L)
        stats[:c] = centered.sum(axis=(0, 2))
        stats[c:2 * c] = np.einsum("ncl,ncl->c", centered, centered)
        stats[2 * c] = x3.shape[0] * x3.shape[2]
        return stats

    # -------------------------------------------------------------------------- forward

    def forward(self, x):
        """Normalize x ((N, C) or (N, C, *spatial)); returns y of x's dtype and shape."""
        x3 = self._as_ncl(x, "x")
        c = self.num_features
        gamma = self._channel(self.weight if self.affine else np.ones(c))
        beta = self._channel(self.bias if self.affine else np.zeros(c))
        if not self.training:
            inv_std = 1.0 / np.sqrt(np.asarray(self.running_var, np.float64) + self.eps)
            xhat = (x3 - self._channel(self.running_mean)) * self._channel(inv_std)
            self._cache = ("eval", xhat, inv_std, x.shape)
            return (xhat * gamma + beta).astype(x.dtype, copy=False).reshape(x.shape)

        shift = np.asarray(self.stats_shift(x3), np.float64)
        if shift.shape != (c,):
            raise ValueError(f"stats_shift must return shape ({c},), got {shift.shape}")
        stats = np.asarray(self.reduce_stats(self.local_stats(x3, shift)), np.float64)
        if stats.shape != (2 * c + 1,):
            raise ValueError(f"reduce_stats must return shape ({2 * c + 1},), got {stats.shape}")
        count = stats[2 * c]
        if count <= 1:
            raise ValueError(f"batch norm in training mode needs more than one value per "
                             f"channel, got input of shape {x.shape}")
        mean_shifted = stats[:c] / count
        var = np.maximum(stats[c:2 * c] / count - mean_shifted ** 2, 0.0)  # biased
        mean = shift + mean_shifted
        inv_std = 1.0 / np.sqrt(var + self.eps)
        xhat = (x3 - self._channel(mean)) * self._channel(inv_std)

        self.num_batches_tracked += 1
        rho = self.momentum if self.momentum is not None else 1.0 / self.num_batches_tracked
        unbiased = var * (count / (count - 1.0))
        self.running_mean[...] = (1.0 - rho) * np.asarray(self.running_mean, np.float64) + rho * mean
        self.running_var[...] = (1.0 - rho) * np.asarray(self.running_var, np.float64) + rho * unbiased
        self._cache = ("train", xhat, inv_std, x.shape, count)
        return (xhat * gamma + beta).astype(x.dtype, copy=False).reshape(x.shape)

    __call__ = forward

    # ------------------------------------------------------------------------- backward

    def backward(self, dy):
        """Gradient w.r.t. the last forward's input; sets grad_weight and grad_bias."""
        if self._cache is None:
            raise RuntimeError("backward called before forward")
        mode, xhat, inv_std, shape = self._cache[:4]
        if not isinstance(dy, np.ndarray) or dy.shape != shape:
            got = dy.shape if isinstance(dy, np.ndarray) else type(dy).__name__
            raise ValueError(f"dy must have the forward input's shape {shape}, got {got}")
        g3 = self._as_ncl(dy, "dy")
        c = self.num_features
        local = np.empty(2 * c)
        local[:c] = g3.sum(axis=(0, 2), dtype=np.float64)
        local[c:] = np.einsum("ncl,ncl->c", g3, xhat, dtype=np.float64)
        gamma = np.asarray(self.weight, np.float64) if self.affine else np.ones(c)
        if mode == "eval":
            dx = g3 * self._channel(gamma * inv_std)
        else:
            count = self._cache[4]
            sums = np.asarray(self.reduce_grad_sums(local.copy()), np.float64)
            if sums.shape != (2 * c,):
                raise ValueError(f"reduce_grad_sums must return shape ({2 * c},), got {sums.shape}")
            sum_dy, sum_dy_xhat = self._channel(sums[:c]), self._channel(sums[c:])
            dx = (g3 - sum_dy / count - xhat * (sum_dy_xhat / count)) * self._channel(gamma * inv_std)
        if self.affine:
            self.grad_bias[...] = local[:c]
            self.grad_weight[...] = local[c:]
        return dx.astype(dy.dtype, copy=False).reshape(shape)

    # ----------------------------------------------------------------------- state dict

    def state_dict(self):
        """Copies of weight, bias (when affine), running_mean, running_var, num_batches_tracked."""
        state = {"running_mean": self.running_mean.copy(), "running_var": self.running_var.copy(),
                 "num_batches_tracked": self.num_batches_tracked}
        if self.affine:
            state["weight"] = self.weight.copy()
            state["bias"] = self.bias.copy()
        return state

    def load_state_dict(self, state):
        """Copy values into the existing arrays (optimizers keep referring to the same buffers)."""
        keys = ["running_mean", "running_var"] + (["weight", "bias"] if self.affine else [])
        for key in keys:
            if key not in state:
                raise KeyError(f"state is missing {key!r}")
            value = np.asarray(state[key])
            if value.shape != (self.num_features,):
                raise ValueError(f"state[{key!r}] must have shape ({self.num_features},), got {value.shape}")
        for key in keys:
            getattr(self, key)[...] = state[key]
        self.num_batches_tracked = int(state.get("num_batches_tracked", 0))
