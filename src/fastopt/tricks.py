"""Training tricks: mixup, label smoothing, softmax cross-entropy, random batch shapes.

* :func:`mixup` -- convex combinations of example pairs and of their labels.
* :func:`smooth_labels` -- soft targets from hard labels (the lecture's or torch's variant).
* :func:`softmax_cross_entropy` -- mean loss and its gradient w.r.t. the logits, hard or soft
  targets, optional label smoothing (torch's ``cross_entropy`` semantics).
* :func:`random_resize` and :class:`RandomBatchShapes` -- bilinear resizing of a whole NCHW or
  NHWC batch (C/OpenMP kernel, GIL released), and a sampler that gives each batch a size
  chosen from a list (multi-scale training).

Everything here is vectorized NumPy or C: no per-example Python loop.
"""
import numbers

import numpy as np

__all__ = ["mixup", "smooth_labels", "softmax_cross_entropy", "random_resize",
           "RandomBatchShapes", "LAYOUTS"]

LAYOUTS = ("NCHW", "NHWC")
_FLOATS = (np.dtype(np.float32), np.dtype(np.float64))
_RESIZE_DTYPES = _FLOATS + (np.dtype(np.uint8),)
_CHUNK_ELEMENTS = 1 << 16  # scratch of mixup: at most this many elements (or one example)


# ---------------------------------------------------------------------------------- checks

def _describe(a):
    if isinstance(a, np.ndarray):
        return f"{a.dtype} array of shape {a.shape}"
    return type(a).__name__


def _unit_interval(name, value):
    """A real number in [0, 1), as float."""
    if isinstance(value, bool) or not isinstance(value, numbers.Real):
        raise TypeError(f"{name} must be a real number in [0, 1), got {type(value).__name__}")
    value = float(value)
    if not 0.0 <= value < 1.0:
        raise ValueError(f"{name} must be in [0, 1), got {value!r}")
    return value


def _count(name, value, low):
    if isinstance(value, bool) or not isinstance(value, numbers.Integral):
        raise TypeError(f"{name} must be an integer, got {type(value).__name__} {value!r}")
    value = int(value)
    if value < low:
        raise ValueError(f"{name} must be >= {low}, got {value}")
    return value


def _int_labels(name, y, n_classes, n_rows=None):
    """Check integer class labels of shape (N,) in [0, n_classes); returns them as intp."""
    if y.ndim != 1:
        raise ValueError(f"{name} as integer labels must be 1-D, got shape {y.shape}")
    if n_rows is not None and y.shape[0] != n_rows:
        raise ValueError(f"{name} must have {n_rows} rows, got {y.shape[0]}")
    if y.size and (y.min() < 0 or y.max() >= n_classes):
        raise ValueError(f"{name} must hold class indices in [0, {n_classes}), got values in "
                         f"[{y.min()}, {y.max()}]")
    return y.astype(np.intp, copy=False)


def _generator(rng):
    if not isinstance(rng, np.random.Generator):
        raise TypeError(f"rng must be a numpy.random.Generator (np.random.default_rng(seed)), "
                        f"got {type(rng).__name__}")
    return rng


# ------------------------------------------------------------------------------------ mixup

def _blend_rows(src, perm, a, b, out):
    """out[i] = a * src[i] + b * src[perm[i]] row by row in chunks (scratch: one chunk)."""
    n = src.shape[0]
    row = max(1, int(np.prod(src.shape[1:], dtype=np.int64)))
    step = max(1, _CHUNK_ELEMENTS // row)
    scratch = np.empty((min(step, n),) + src.shape[1:], src.dtype)
    for lo in range(0, n, step):
        hi = min(n, lo + step)
        tmp = scratch[: hi - lo]
        np.multiply(src[lo:hi], a, out=out[lo:hi])
        np.take(src, perm[lo:hi], axis=0, out=tmp, mode="clip")  # unbuffered; perm is valid
        np.multiply(tmp, b, out=tmp)
        np.add(out[lo:hi], tmp, out=out[lo:hi])
    return out


def mixup(x, y, alpha, rng, n_classes=None):
    r"""Mixup (Zhang et al., 2018): blend each example with a randomly chosen partner.

    Draws :math:`\lambda \sim \mathrm{Beta}(\alpha, \alpha)` once for the batch and a random
    permutation :math:`\pi` of its rows, and returns

    .. math::
        \tilde x_i = \lambda x_i + (1 - \lambda) x_{\pi(i)}, \qquad
        \tilde y_i = \lambda y_i + (1 - \lambda) y_{\pi(i)},

    computed in the dtype of ``x`` with the coefficients ``x.dtype.type(lam)`` and
    ``x.dtype.type(1 - lam)`` (``1 - lam`` taken in float64).

    Parameters
    ----------
    x : ndarray, float32 or float64, shape (N, ...)
        The batch (any number of trailing axes, any memory layout).
    y : ndarray
        Integer class labels of shape (N,) (then ``n_classes`` is required), or one-hot /
        soft labels of shape (N, C) (float32 or float64).
    alpha : float > 0
        Beta distribution parameter; small alpha keeps lambda near 0 or 1.
    rng : numpy.random.Generator
        Source of lambda and of the permutation (drawn in that order).
    n_classes : int, optional
        Number of classes for integer labels (must equal C for 2-D labels when given).

    Returns
    -------
    x_mixed : ndarray like ``x`` (C-contiguous), y_mixed : ndarray (N, C) of ``x``'s dtype,
    lam : float, perm : ndarray of intp (N,).

    Only the outputs are allocated, plus a scratch buffer of at most 65536 elements (or one
    example). Raises TypeError / ValueError naming the argument; nothing is drawn from ``rng``
    when the arguments are invalid.
    """
    if not isinstance(x, np.ndarray):
        raise TypeError(f"x must be a numpy.ndarray, got {_describe(x)}")
    if x.dtype not in _FLOATS:
        raise TypeError(f"x must be float32 or float64, got {x.dtype}")
    if x.ndim < 1 or x.shape[0] < 1:
        raise ValueError(f"x must have at least one example along axis 0, got shape {x.shape}")
    if isinstance(alpha, bool) or not isinstance(alpha, numbers.Real):
        raise TypeError(f"alpha must be a positive real number, got {type(alpha).__name__}")
    alpha = float(alpha)
    if not (alpha > 0.0 and np.isfinite(alpha)):
        raise ValueError(f"alpha must be a finite number > 0, got {alpha!r}")
    rng = _generator(rng)
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y must be a numpy.ndarray, got {_describe(y)}")
    n = x.shape[0]
    if n_classes is not None:
        n_classes = _count("n_classes", n_classes, 1)
    if np.issubdtype(y.dtype, np.integer):
        if n_classes is None:
            raise ValueError("n_classes is required with integer labels y")
        labels = _int_labels("y", y, n_classes, n)
        soft = None
    elif y.dtype in _FLOATS:
        if y.ndim != 2 or y.shape[0] != n:
            raise ValueError(f"y as one-hot/soft labels must have shape ({n}, C), got {y.shape}")
        if n_classes is not None and y.shape[1] != n_classes:
            raise ValueError(f"n_classes={n_classes} does not match y's {y.shape[1]} columns")
        soft, labels = y, None
    else:
        raise TypeError(f"y must hold integer labels or float32/float64 one-hot rows, got {y.dtype}")

    lam = float(rng.beta(alpha, alpha))
    perm = rng.permutation(n)
    a, b = x.dtype.type(lam), x.dtype.type(1.0 - lam)

    x_mixed = _blend_rows(x, perm, a, b, np.empty(x.shape, x.dtype))
    if soft is not None:
        y_mixed = _blend_rows(soft.astype(x.dtype, copy=False), perm, a, b,
                              np.empty(soft.shape, x.dtype))
    else:
        y_mixed = np.zeros((n, n_classes), x.dtype)
        rows = np.arange(n)
        y_mixed[rows, labels] = a
        y_mixed[rows, labels[perm]] += b
    return x_mixed, y_mixed, lam, perm


# -------------------------------------------------------------------------- label smoothing

def smooth_labels(y, n_classes, eps, variant="lecture", dtype=np.float64):
    r"""Soft targets from class labels with smoothing ``eps`` in [0, 1).

    ``variant="lecture"``: the true class gets :math:`1-\varepsilon` and each of the other
    :math:`n-1` classes :math:`\varepsilon/(n-1)`:

    .. math:: q = (1-\varepsilon)\,\mathbf{1}_y + \tfrac{\varepsilon}{n-1}(\mathbf{1} - \mathbf{1}_y).

    ``variant="torch"``: :math:`q = (1-\varepsilon)\,\mathbf{1}_y + \varepsilon/n` (the true
    class gets :math:`1-\varepsilon+\varepsilon/n`), the targets of
    ``torch.nn.functional.cross_entropy(..., label_smoothing=eps)``.

    ``y`` is integer labels of shape (N,), or float rows of shape (N, n_classes) (one-hot or
    soft, which are smoothed by the same affine map; rows that sum to 1 still sum to 1).
    Returns a new (N, n_classes) array of ``dtype`` (for float ``y``: ``y``'s dtype).
    """
    if variant not in ("lecture", "torch"):
        raise ValueError(f"variant must be 'lecture' or 'torch', got {variant!r}")
    n_classes = _count("n_classes", n_classes, 2 if variant == "lecture" else 1)
    eps = _unit_interval("eps", eps)
    if not isinstance(y, np.ndarray):
        raise TypeError(f"y must be a numpy.ndarray, got {_describe(y)}")
    if np.issubdtype(y.dtype, np.integer):
        dtype = np.dtype(dtype)
        if dtype not in _FLOATS:
            raise TypeError(f"dtype must be float32 or float64, got {dtype}")
        labels = _int_labels("y", y, n_classes)
        onehot = np.zeros((labels.shape[0], n_classes), dtype)
        onehot[np.arange(labels.shape[0]), labels] = 1
    elif y.dtype in _FLOATS:
        if y.ndim != 2 or y.shape[1] != n_classes:
            raise ValueError(f"y as float rows must have shape (N, {n_classes}), got {y.shape}")
        onehot = y
    else:
        raise TypeError(f"y must hold integer labels or float32/float64 rows, got {y.dtype}")
    if variant == "lecture":
        off = eps / (n_classes - 1)
        return onehot * (1.0 - eps - off) + off  # (1-eps) y + off (1 - y)
    return onehot * (1.0 - eps) + eps / n_classes


# ----------------------------------------------------------------------------- cross-entropy

def softmax_cross_entropy(logits, targets, label_smoothing=0.0):
    r"""Mean softmax cross-entropy and its gradient w.r.t. the logits.

    With :math:`p_i = \mathrm{softmax}(z_i)` and target rows :math:`q_i`,

    .. math::
        L = -\frac1N \sum_i \sum_c q_{ic} \log p_{ic}, \qquad
        \frac{\partial L}{\partial z_i} = \frac1N \Big(p_i \sum_c q_{ic} - q_i\Big)

    (:math:`= (p_i - q_i)/N` when the rows of :math:`q` sum to 1). ``targets`` is integer
    labels (N,) (:math:`q` one-hot) or float rows (N, C). ``label_smoothing`` =
    :math:`\varepsilon \in [0, 1)` replaces :math:`q` by :math:`(1-\varepsilon) q + \varepsilon/C`,
    exactly as ``torch.nn.functional.cross_entropy(z, targets, label_smoothing=eps)`` (the
    ``"torch"`` variant of :func:`smooth_labels`); to train with the lecture's variant pass
    ``smooth_labels(y, C, eps)`` as soft targets.

    :math:`\log p` is computed as :math:`z - \max z - \log\sum e^{z - \max z}`, so large or very
    negative logits neither overflow nor underflow. Works in the dtype of ``logits`` (float32 or
    float64). Returns ``(loss, grad)``: a Python float and an array like ``logits``.
    """
    if not isinstance(logits, np.ndarray):
        raise TypeError(f"logits must be a numpy.ndarray, got {_describe(logits)}")
    if logits.dtype not in _FLOATS:
        raise TypeError(f"logits must be float32 or float64, got {logits.dtype}")
    if logits.ndim != 2 or logits.shape[0] < 1 or logits.shape[1] < 1:
        raise ValueError(f"logits must have shape (N, C) with N, C >= 1, got {logits.shape}")
    n, c = logits.shape
    eps = _unit_interval("label_smoothing", label_smoothing)
    if not isinstance(targets, np.ndarray):
        raise TypeError(f"targets must be a numpy.ndarray, got {_describe(targets)}")
    if np.issubdtype(targets.dtype, np.integer):
        labels = _int_labels("targets", targets, c, n)
        soft = None
    elif targets.dtype in _FLOATS:
        if targets.shape != logits.shape:
            raise ValueError(f"targets as float rows must have the logits' shape {logits.shape}, "
                             f"got {targets.shape}")
        soft = targets.astype(logits.dtype, copy=False)
    else:
        raise TypeError(f"targets must hold integer labels or float rows, got {targets.dtype}")

    shifted = logits - logits.max(axis=1, keepdims=True)
    exp = np.exp(shifted)
    sum_exp = exp.sum(axis=1, keepdims=True)
    log_p = shifted - np.log(sum_exp)  # log-softmax
    p = exp / sum_exp
    rows = np.arange(n)
    dtype = logits.dtype.type
    if soft is None:
        # q = (1 - eps) onehot + eps / C; sum_c q_c = 1
        picked = log_p[rows, labels]
        loss = -((1.0 - eps) * picked.sum() + (eps / c) * log_p.sum()) / n
        grad = p
        grad[rows, labels] -= dtype(1.0 - eps)
        if eps:
            grad -= dtype(eps / c)
    else:
        q = soft * dtype(1.0 - eps) + dtype(eps / c) if eps else soft
        loss = -np.sum(q * log_p) / n
        grad = p * q.sum(axis=1, keepdims=True) - q
    grad /= dtype(n)
    return float(loss), grad


# ------------------------------------------------------------------------------- resizing

def _layout(layout):
    if layout not in LAYOUTS:
        raise ValueError(f"layout must be 'NCHW' or 'NHWC', got {layout!r}")
    return layout


def _size_pair(name, size):
    """An int s (-> (s, s)) or a pair (h, w) of positive integers, as a tuple."""
    if isinstance(size, numbers.Integral) and not isinstance(size, bool):
        pair = (size, size)
    elif isinstance(size, (tuple, list)) and len(size) == 2:
        pair = tuple(size)
    else:
        raise TypeError(f"{name} must be an int or an (height, width) pair, got {size!r}")
    for v in pair:
        if isinstance(v, bool) or not isinstance(v, numbers.Integral):
            raise TypeError(f"{name} must hold integers, got {size!r}")
        if v < 1:
            raise ValueError(f"{name} must be >= 1, got {size!r}")
    return (int(pair[0]), int(pair[1]))


def _check_batch(batch, layout):
    """A 4-D float32/float64/uint8 ndarray with non-empty image axes (checked before any work)."""
    if not isinstance(batch, np.ndarray):
        raise TypeError(f"batch must be a numpy.ndarray, got {_describe(batch)}")
    if batch.dtype not in _RESIZE_DTYPES:
        raise TypeError(f"batch dtype must be float32, float64 or uint8, got {batch.dtype}")
    if batch.ndim != 4:
        raise ValueError(f"batch must be 4-D ({layout}), got shape {batch.shape}")
    if 0 in batch.shape[1:]:
        raise ValueError(f"batch has an empty image axis: shape {batch.shape} ({layout})")


def _num_threads():
    from fastopt._kernels import get_num_threads

    return get_num_threads()


def random_resize(batch, size, layout="NCHW", out=None):
    r"""Resize every image of a batch to ``size`` with bilinear interpolation.

    The resizing step of random batch shapes (:class:`RandomBatchShapes` picks the size).
    ``batch`` is a 4-D array in ``layout`` "NCHW" (N, C, H, W) or "NHWC" (N, H, W, C), of
    float32, float64 or uint8; ``size`` is an int (square output) or ``(height, width)``.
    Returns a new C-contiguous array of the same dtype and layout (or writes into ``out``).

    Semantics are ``torch.nn.functional.interpolate(mode="bilinear", align_corners=False,
    antialias=False)``: an output pixel :math:`o` of an axis resized from :math:`n` to
    :math:`m` samples the input at :math:`s = \max(0, (o + \tfrac12)\,n/m - \tfrac12)` --
    pixel *centres* are aligned, not corner pixels -- and blends the pixels :math:`\lfloor s
    \rfloor` and :math:`\min(\lfloor s \rfloor + 1, n - 1)` with weights :math:`1 - (s -
    \lfloor s \rfloor)` and :math:`s - \lfloor s \rfloor`; the two axes combine bilinearly.
    Downscaling does not low-pass filter (no antialiasing). Float inputs compute in their own
    precision (coordinates in float64); uint8 computes in float32, rounds half away from zero
    and clamps to [0, 255]. An unchanged size returns an exact copy (a resize along one axis
only reproduces the other axis exactly for finite inputs).

    The kernel (csrc/resize.c) runs with the GIL released on
    ``fastopt._kernels.get_num_threads()`` OpenMP threads. A non-contiguous ``batch`` is first
    copied to C order.
    """
    layout = _layout(layout)
    out_h, out_w = _size_pair("size", size)
    _check_batch(batch, layout)
    if isinstance(out, np.ndarray) and np.shares_memory(out, batch):
        # checked here too: the batch may be copied to C order below, hiding the overlap
        raise ValueError("out must not share memory with the batch")
    from fastopt import _tricks

    return _tricks.resize_bilinear(np.ascontiguousarray(batch), out_h, out_w, layout == "NHWC",
                                   out, _num_threads())


class RandomBatchShapes:
    """Give each batch a size drawn uniformly from ``sizes`` (multi-scale training).

    ``sizes`` lists the allowed sizes, each an int (square) or ``(height, width)``, e.g.
    ``[224, 256, 288, 320]``; ``rng`` is a ``numpy.random.Generator``; ``layout`` is "NCHW" or
    "NHWC"; a new size is drawn every ``every`` batches (1: every batch). The resizing is
    :func:`random_resize`::

        shapes = RandomBatchShapes([224, 256, 288], np.random.default_rng(0))
        for x, y in shapes.wrap(loader):      # (x, y) pairs: only x is resized
            ...
        x288 = shapes(x, size=288)            # a given size, which must be one of `sizes`

    ``current_size`` holds the (height, width) of the last batch.
    """

    def __init__(self, sizes, rng, layout="NCHW", every=1):
        if isinstance(sizes, (str, bytes)) or not hasattr(sizes, "__iter__"):
            raise TypeError(f"sizes must be a sequence of sizes, got {type(sizes).__name__}")
        sizes = list(sizes)
        if not sizes:
            raise ValueError("sizes must list at least one size")
        self.sizes = tuple(_size_pair(f"sizes[{i}]", s) for i, s in enumerate(sizes))
        self.rng = _generator(rng)
        self.layout = _layout(layout)
        self.every = _count("every", every, 1)
        self.current_size = None
        self._calls = 0

    def __repr__(self):
        return (f"RandomBatchShapes(sizes={list(self.sizes)!r}, layout={self.layout!r}, "
                f"every={self.every})")

    def _pick(self):
        if self.current_size is None or self._calls % self.every == 0:
            self.current_size = self.sizes[int(self.rng.integers(len(self.sizes)))]
        self._calls += 1
        return self.current_size

    def __call__(self, batch, size=None):
        """Resize ``batch`` to a random size from ``sizes`` (or to ``size``, one of them)."""
        if size is not None:
            pair = _size_pair("size", size)
            if pair not in self.sizes:
                raise ValueError(f"unknown size {size!r}: expected one of {list(self.sizes)}")
            return random_resize(batch, pair, self.layout)
        _check_batch(batch, self.layout)  # before drawing: a bad batch changes no state
        return random_resize(batch, self._pick(), self.layout)

    def wrap(self, batches):
        """Iterate over ``batches`` resizing each: arrays directly, tuples/lists by their first item."""
        for item in batches:
            if isinstance(item, (tuple, list)) and item:
                yield type(item)([self(item[0]), *item[1:]])
            else:
                yield self(item)
