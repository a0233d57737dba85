"""The contenders of `fastopt bench`: fastopt, NumPy (textbook and best effort) and torch.

Benchmark code, not part of the package: `fastopt bench` loads this file from the source
checkout it runs from (``fastopt.bench.load_impls``); the suites and scripts of bench/ import
it as ``impls``.

Design note
-----------
Every contender is built by a ``make_*`` function from the same inputs, a list of parameter
arrays (copied, so contenders never share state) and a list of gradient arrays (shared,
read-only), and returns a zero-argument callable that takes one step. All use the same
hyperparameters, ``HYPER[name]``: fastopt's and torch's defaults, with momentum 0.9 for SGD.

* textbook NumPy: the update written as array expressions, a new temporary per operation
  and the state rebound every step (how the equations read on paper);
* best-effort NumPy: in-place ufuncs with ``out=``, two preallocated temporaries, and large
  tensors walked in chunks that stay in cache, so each element crosses the memory bus about
  as often as in a fused kernel;
* torch: ``torch.optim`` with ``fused=True``, ``foreach=True`` or the single-tensor loop
  (``TORCH_VARIANTS`` says which exist); `fastopt bench` picks the fastest per case.

``TRAFFIC[name]`` is the minimal memory traffic of one step in array passes per element
(each array read once, each updated array written once): bytes = passes * itemsize * N.
"""
import functools
import math

import numpy as np

from fastopt._specs import SPECS

__all__ = ["OPTIMIZERS", "OVERRIDES", "HYPER", "TRAFFIC", "TORCH_VARIANTS", "RESNET50_SHAPES",
           "make_fastopt", "make_fastopt_flat", "make_numpy", "make_torch", "torch_variants"]

OPTIMIZERS = ("sgd", "adagrad", "rmsprop", "adam", "adamw", "adadelta", "adamax")

#: hyperparameters that differ from the defaults (fastopt's and torch's defaults agree)
OVERRIDES = {"sgd": {"momentum": 0.9}}
#: every hyperparameter of every contender (fastopt keyword names)
HYPER = {name: {**SPECS[name].defaults, **OVERRIDES.get(name, {})} for name in OPTIMIZERS}

#: reads + writes per element: parameter, gradient, state buffers in; parameter, state out
TRAFFIC = {"sgd": 5, "adagrad": 5, "rmsprop": 5, "adam": 7, "adamw": 7, "adadelta": 7,
           "adamax": 7, "stream": 3}

#: torch.optim variants per optimizer, fastest first as usually measured
TORCH_VARIANTS = {
    "sgd": ("fused", "foreach", "single"), "adagrad": ("fused", "foreach", "single"),
    "adam": ("fused", "foreach", "single"), "adamw": ("fused", "foreach", "single"),
    "rmsprop": ("foreach", "single"), "adadelta": ("foreach", "single"),
    "adamax": ("foreach", "single"),
}

#: parameter shapes of torchvision's ResNet-50, in module order (161 tensors, 25,557,032 values)
RESNET50_SHAPES = (
    # stem: conv1, bn1
    (64, 3, 7, 7), (64,), (64,),
    # layer1.0: conv1, bn1, conv2, bn2, conv3, bn3, downsample conv, bn
    (64, 64, 1, 1), (64,), (64,), (64, 64, 3, 3), (64,), (64,), (256, 64, 1, 1), (256,), (256,),
    (256, 64, 1, 1), (256,), (256,),
    # layer1.1: conv1, bn1, conv2, bn2, conv3, bn3
    (64, 256, 1, 1), (64,), (64,), (64, 64, 3, 3), (64,), (64,), (256, 64, 1, 1), (256,),
    (256,),
    # layer1.2: conv1, bn1, conv2, bn2, conv3, bn3
    (64, 256, 1, 1), (64,), (64,), (64, 64, 3, 3), (64,), (64,), (256, 64, 1, 1), (256,),
    (256,),
    # layer2.0: conv1, bn1, conv2, bn2, conv3, bn3, downsample conv, bn
    (128, 256, 1, 1), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1),
    (512,), (512,), (512, 256, 1, 1), (512,), (512,),
    # layer2.1: conv1, bn1, conv2, bn2, conv3, bn3
    (128, 512, 1, 1), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1),
    (512,), (512,),
    # layer2.2: conv1, bn1, conv2, bn2, conv3, bn3
    (128, 512, 1, 1), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1),
    (512,), (512,),
    # layer2.3: conv1, bn1, conv2, bn2, conv3, bn3
    (128, 512, 1, 1), (128,), (128,), (128, 128, 3, 3), (128,), (128,), (512, 128, 1, 1),
    (512,), (512,),
    # layer3.0: conv1, bn1, conv2, bn2, conv3, bn3, downsample conv, bn
    (256, 512, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,), (1024, 512, 1, 1), (1024,), (1024,),
    # layer3.1: conv1, bn1, conv2, bn2, conv3, bn3
    (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,),
    # layer3.2: conv1, bn1, conv2, bn2, conv3, bn3
    (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,),
    # layer3.3: conv1, bn1, conv2, bn2, conv3, bn3
    (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,),
    # layer3.4: conv1, bn1, conv2, bn2, conv3, bn3
    (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,),
    # layer3.5: conv1, bn1, conv2, bn2, conv3, bn3
    (256, 1024, 1, 1), (256,), (256,), (256, 256, 3, 3), (256,), (256,), (1024, 256, 1, 1),
    (1024,), (1024,),
    # layer4.0: conv1, bn1, conv2, bn2, conv3, bn3, downsample conv, bn
    (512, 1024, 1, 1), (512,), (512,), (512, 512, 3, 3), (512,), (512,), (2048, 512, 1, 1),
    (2048,), (2048,), (2048, 1024, 1, 1), (2048,), (2048,),
    # layer4.1: conv1, bn1, conv2, bn2, conv3, bn3
    (512, 2048, 1, 1), (512,), (512,), (512, 512, 3, 3), (512,), (512,), (2048, 512, 1, 1),
    (2048,), (2048,),
    # layer4.2: conv1, bn1, conv2, bn2, conv3, bn3
    (512, 2048, 1, 1), (512,), (512,), (512, 512, 3, 3), (512,), (512,), (2048, 512, 1, 1),
    (2048,), (2048,),
    # fc
    (1000, 2048), (1000,),

)

_CHUNK_BYTES = 256 * 1024     # best-effort NumPy: per-array chunk that stays in L2 with 7 arrays


# ------------------------------------------------------------------------------ fastopt
def _fastopt_class(name):
    import fastopt
    return getattr(fastopt, SPECS[name].class_name)


def make_fastopt(name, params, grads):
    """A fastopt optimizer over copies of `params`; returns ``opt.step`` bound to `grads`."""
    opt = _fastopt_class(name)([np.array(p, copy=True) for p in params], **OVERRIDES.get(name, {}))
    return functools.partial(opt.step, list(grads))


def make_fastopt_flat(name, params, grads):
    """As make_fastopt, with parameters and gradients as views of one buffer each (flatten)."""
    from fastopt.flat import flatten
    _, views = flatten(list(params))
    _, gviews = flatten(list(grads))
    opt = _fastopt_class(name)(views, **OVERRIDES.get(name, {}))
    return functools.partial(opt.step, gviews)


# ------------------------------------------------------------------------ textbook NumPy
def _textbook(name, p, g, s, t, h):
    """One step on one tensor as the equations read; s: state dict (rebound), t: step."""
    if name == "sgd":
        b = g.copy() if t == 1 else h["momentum"] * s["b"] + g
        s["b"] = b
        p -= h["lr"] * b
    elif name == "adagrad":
        s["sum"] = s["sum"] + g * g
        clr = h["lr"] / (1 + (t - 1) * h["lr_decay"])
        p -= clr * g / (np.sqrt(s["sum"]) + h["eps"])
    elif name == "rmsprop":
        a = h["alpha"]
        s["v"] = a * s["v"] + (1 - a) * g * g
        p -= h["lr"] * g / (np.sqrt(s["v"]) + h["eps"])
    elif name in ("adam", "adamw"):
        b1, b2 = h["betas"]
        if name == "adamw":
            p *= 1 - h["lr"] * h["weight_decay"]
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["v"] = b2 * s["v"] + (1 - b2) * g * g
        m_hat = s["m"] / (1 - b1 ** t)
        v_hat = s["v"] / (1 - b2 ** t)
        p -= h["lr"] * m_hat / (np.sqrt(v_hat) + h["eps"])
    elif name == "adadelta":
        rho, eps = h["rho"], h["eps"]
        s["v"] = rho * s["v"] + (1 - rho) * g * g
        d = np.sqrt(s["u"] + eps) / np.sqrt(s["v"] + eps) * g
        s["u"] = rho * s["u"] + (1 - rho) * d * d
        p -= h["lr"] * d
    elif name == "adamax":
        b1, b2 = h["betas"]
        s["m"] = b1 * s["m"] + (1 - b1) * g
        s["u"] = np.maximum(b2 * s["u"], np.abs(g) + h["eps"])
        p -= h["lr"] / (1 - b1 ** t) * s["m"] / s["u"]
    else:
        raise ValueError(f"unknown optimizer {name!r}")


_STATE_NAMES = {"sgd": ("b",), "adagrad": ("sum",), "rmsprop": ("v",), "adam": ("m", "v"),
                "adamw": ("m", "v"), "adadelta": ("v", "u"), "adamax": ("m", "u")}


# --------------------------------------------------------------------- best-effort NumPy
def _best(name, p, g, st, t0, t1, c):
    """One step on 1-d chunks in place: st the state chunks, t0/t1 scratch, c the scalars."""
    if name == "sgd":
        b, = st
        if c["first"]:
            np.copyto(b, g)
        else:
            b *= c["momentum"]
            b += g
        np.multiply(b, -c["lr"], out=t0)
        p += t0
    elif name == "adagrad":
        s, = st
        np.multiply(g, g, out=t0)
        s += t0
        np.sqrt(s, out=t0)
        t0 += c["eps"]
        np.divide(g, t0, out=t0)
        t0 *= -c["clr"]
        p += t0
    elif name == "rmsprop":
        v, = st
        np.multiply(g, g, out=t0)
        t0 *= c["one_minus_alpha"]
        v *= c["alpha"]
        v += t0
        np.sqrt(v, out=t0)
        t0 += c["eps"]
        np.divide(g, t0, out=t0)
        t0 *= -c["lr"]
        p += t0
    elif name in ("adam", "adamw"):
        m, v = st
        if name == "adamw":
            p *= c["decay"]
        np.subtract(g, m, out=t0)
        t0 *= c["one_minus_beta1"]
        m += t0
        np.multiply(g, g, out=t0)
        t0 *= c["one_minus_beta2"]
        v *= c["beta2"]
        v += t0
        np.sqrt(v, out=t0)
        t0 /= c["bc2_sqrt"]
        t0 += c["eps"]
        np.divide(m, t0, out=t0)
        t0 *= -c["step_size"]
        p += t0
    elif name == "adadelta":
        v, u = st
        np.multiply(g, g, out=t0)
        t0 *= c["one_minus_rho"]
        v *= c["rho"]
        v += t0
        np.add(v, c["eps"], out=t0)
        np.sqrt(t0, out=t0)
        np.add(u, c["eps"], out=t1)
        np.sqrt(t1, out=t1)
        np.divide(t1, t0, out=t1)
        t1 *= g
        np.multiply(t1, t1, out=t0)
        t0 *= c["one_minus_rho"]
        u *= c["rho"]
        u += t0
        t1 *= -c["lr"]
        p += t1
    elif name == "adamax":
        m, u = st
        np.subtract(g, m, out=t0)
        t0 *= c["one_minus_beta1"]
        m += t0
        np.abs(g, out=t0)
        t0 += c["eps"]
        u *= c["beta2"]
        np.maximum(u, t0, out=u)
        np.divide(m, u, out=t0)
        t0 *= -c["clr"]
        p += t0
    else:
        raise ValueError(f"unknown optimizer {name!r}")


def _best_scalars(name, h, t):
    """The per-step scalars of _best, computed once per step."""
    if name == "sgd":
        return dict(first=t == 1, momentum=h["momentum"], lr=h["lr"])
    if name == "adagrad":
        return dict(eps=h["eps"], clr=h["lr"] / (1 + (t - 1) * h["lr_decay"]))
    if name == "rmsprop":
        return dict(alpha=h["alpha"], one_minus_alpha=1 - h["alpha"], eps=h["eps"], lr=h["lr"])
    if name in ("adam", "adamw"):
        b1, b2 = h["betas"]
        return dict(one_minus_beta1=1 - b1, beta2=b2, one_minus_beta2=1 - b2,
                    bc2_sqrt=math.sqrt(1 - b2 ** t), eps=h["eps"],
                    step_size=h["lr"] / (1 - b1 ** t), decay=1 - h["lr"] * h["weight_decay"])
    if name == "adadelta":
        return dict(rho=h["rho"], one_minus_rho=1 - h["rho"], eps=h["eps"], lr=h["lr"])
    if name == "adamax":
        b1, b2 = h["betas"]
        return dict(one_minus_beta1=1 - b1, beta2=b2, eps=h["eps"],
                    clr=h["lr"] / (1 - b1 ** t))
    raise ValueError(f"unknown optimizer {name!r}")


def make_numpy(name, params, grads, style="best"):
    """A NumPy step over copies of `params`: style "textbook" or "best" (see the module doc).

    The returned callable also has ``.params`` (the arrays it updates), for checks.
    """
    if name not in _STATE_NAMES:
        raise ValueError(f"unknown optimizer {name!r}")
    h = HYPER[name]
    params = [np.array(p, copy=True) for p in params]
    grads = list(grads)
    init = h.get("initial_accumulator_value", 0.0) if name == "adagrad" else 0.0
    counter = [0]
    if style == "textbook":
        states = [{k: np.full_like(p, init) for k in _STATE_NAMES[name]} for p in params]

        def step():
            counter[0] += 1
            for p, g, s in zip(params, grads, states):
                _textbook(name, p, g, s, counter[0], h)
    elif style == "best":
        flat_p = [p.reshape(-1) for p in params]
        flat_g = [np.ascontiguousarray(g).reshape(-1) for g in grads]
        states = [[np.full_like(p, init) for _ in _STATE_NAMES[name]] for p in flat_p]
        dtype = params[0].dtype if params else np.float64
        chunk = max(1024, _CHUNK_BYTES // np.dtype(dtype).itemsize)
        longest = max((p.size for p in flat_p), default=0)
        t0 = np.empty(min(chunk, longest), dtype)
        t1 = np.empty_like(t0)

        def step():
            counter[0] += 1
            c = _best_scalars(name, h, counter[0])
            for p, g, st in zip(flat_p, flat_g, states):
                n = p.size
                if n <= chunk:
                    _best(name, p, g, st, t0[:n], t1[:n], c)
                    continue
                for a in range(0, n, chunk):
                    b = min(a + chunk, n)
                    _best(name, p[a:b], g[a:b], [s[a:b] for s in st], t0[:b - a], t1[:b - a], c)
    else:
        raise ValueError(f"style must be 'textbook' or 'best', got {style!r}")
    step.params = params
    return step


# -------------------------------------------------------------------------------- torch
def _torch_kwargs(name):
    h = dict(HYPER[name])
    for key in ("sutskever", "eps_in_sqrt", "decoupled_weight_decay"):   # fastopt-only options
        h.pop(key, None)
    return h


def torch_variants(name):
    """The torch.optim variants that exist for this optimizer (empty without torch)."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ()
    return TORCH_VARIANTS[name]


def make_torch(name, params, grads, variant):
    """A torch.optim step over copies of `params` (gradients share the NumPy buffers).

    `variant`: "fused", "foreach" or "single". Returns the optimizer's ``step`` (with
    ``.params``, the tensors it updates, as NumPy views), or raises if torch rejects it.
    """
    import torch
    cls = getattr(torch.optim, SPECS[name].class_name)
    if not torch.is_floating_point(torch.from_numpy(np.asarray(params[0])[:0])):
        raise TypeError("torch contender needs float arrays")
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(np.array(p, copy=True)))
        t.grad = torch.from_numpy(np.ascontiguousarray(g))
        tensors.append(t)
    kw = _torch_kwargs(name)
    if variant == "fused":
        kw["fused"] = True
    elif variant == "foreach":
        kw["foreach"] = True
    elif variant == "single":
        kw["foreach"] = False
    else:
        raise ValueError(f"unknown torch variant {variant!r}")
    opt = cls(tensors, **kw)

    def step():
        opt.step()

    step.params = [t.detach().numpy() for t in tensors]
    return step
