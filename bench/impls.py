"""The contenders of `fastopt bench`: fastopt, NumPy (textbook and best effort) and torch.

Benchmark code, not part of the package: `fastopt bench` loads this file from the source
checkout it runs from (``fastopt.bench.load_impls``); the suites and scripts of bench/ import
it as ``impls``.

Design note
-----------
Every contender is built by a ``make_*`` function from the same inputs, a list of parameter
arrays (copied, so contenders never share state) and a list of gradient arrays (shared,
read-only), and returns a zero-argument callable that takes one step. All use the same
hyperparameters, ``HYPER[name]``: fastopt's and torch's defaults, with momentum 0.9 for SGD
and t0=0 for ASGD (averaging from step 2).
Every optimizer of the optimizer table (fastopt._table) is a contender; what each contender
needs per optimizer is read from the table, the registry or the test suite's oracle:

* textbook NumPy: the optimizer's NumPy reference (tests/reference.py, the equations as
  written: a new temporary per operation, the state rebound every step), run in the arrays'
  own dtype;
* best-effort NumPy: in-place ufuncs with ``out=``, two preallocated temporaries, and large
  tensors walked in chunks that stay in cache, so each element crosses the memory bus about
  as often as in a fused kernel (hand-tuned, for the optimizers in ``NUMPY_BEST``);
* torch: ``torch.optim.<class name>`` with ``fused=True``, ``foreach=True`` or the
  single-tensor loop, those its signature takes (``torch_variants``); `fastopt bench` picks
  the fastest per case.

``TRAFFIC[name]`` is the minimal memory traffic of one step in array passes per element
(each array read once, each updated array written once: the parameter, the gradient and the
state buffers the benchmark's options use): bytes = passes * itemsize * N.
"""
import functools
import importlib.util
import inspect
import math
import os

import numpy as np

from fastopt._specs import SPECS
from fastopt._table import OPTIMIZERS as _TABLE

__all__ = ["OPTIMIZERS", "OVERRIDES", "HYPER", "TRAFFIC", "NUMPY_BEST", "RESNET50_SHAPES",
           "make_fastopt", "make_fastopt_flat", "make_numpy", "make_torch", "torch_variants"]

#: every optimizer of the table
OPTIMIZERS = tuple(_TABLE)

#: hyperparameters that differ from the defaults (fastopt's and torch's defaults agree)
OVERRIDES = {"sgd": {"momentum": 0.9},
             # ASGD averages from step t0 + 2 on: with torch's t0=1e6 a benchmark would time
             # only the copy ax = p (the average is written, never read)
             "asgd": {"t0": 0.0}}
#: packages of reference implementations whose step overwrites the gradients (schedulefree
#: normalizes p.grad in place)
WRITES_GRADS = {"schedulefree"}
#: every hyperparameter of every contender (fastopt keyword names)
HYPER = {name: {**SPECS[name].defaults, **OVERRIDES.get(name, {})} for name in OPTIMIZERS}

#: reads + writes per element: parameter, gradient, state buffers in; parameter, state out
TRAFFIC = {**{name: 3 + 2 * sum(SPECS[name].uses(HYPER[name])) for name in OPTIMIZERS},
           "stream": 3}

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
def _reference():
    """The test suite's NumPy oracle (tests/reference.py of the checkout this file is in)."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "tests",
                        "reference.py")
    spec = importlib.util.spec_from_file_location("fastopt_bench_reference", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


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


#: state buffers of the hand-tuned best-effort NumPy steps (_best), per optimizer
NUMPY_BEST = {"sgd": ("b",), "adagrad": ("sum",), "rmsprop": ("v",), "adam": ("m", "v"),
              "adamw": ("m", "v"), "adadelta": ("v", "u"), "adamax": ("m", "u")}


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

    Returns None for "best" where no hand-tuned step exists (``NUMPY_BEST``). The returned
    callable also has ``.params`` (the arrays it updates), for checks.
    """
    if name not in SPECS:
        raise ValueError(f"unknown optimizer {name!r}")
    h = HYPER[name]
    params = [np.array(p, copy=True) for p in params]
    grads = list(grads)
    counter = [0]
    if style == "textbook":
        reference = _reference()
        rule = reference.REFERENCES[name]
        group_step = reference.GROUP_STEPS.get(name)   # group-level scalars (Schedule-Free)
        group = dict(h)
        states = [{} for _ in params]

        def step():
            counter[0] += 1
            hyper, lr = group, group["lr"]
            if group_step is not None:
                lr, c = group_step(group, lr)
                hyper = {**group, "ckp1": c}
            for p, g, s in zip(params, grads, states):
                p[...] = rule(p, g, s, hyper, counter[0], lr)
    elif style == "best":
        if name not in NUMPY_BEST:
            return None
        init = h.get("initial_accumulator_value", 0.0) if name == "adagrad" else 0.0
        flat_p = [p.reshape(-1) for p in params]
        flat_g = [np.ascontiguousarray(g).reshape(-1) for g in grads]
        states = [[np.full_like(p, init) for _ in NUMPY_BEST[name]] for p in flat_p]
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
    takes = inspect.signature(_reference_class(name).__init__).parameters
    return {key: value for key, value in h.items() if key in takes}   # not fastopt-only options


def _reference_class(name):
    """The torch optimizer class `name` reproduces (``SPECS[name].reference``: torch.optim's,
    or a package's such as lion_pytorch.Lion), or None where it is not installed."""
    module, _, cls = SPECS[name].reference.rpartition(".")
    try:
        return getattr(importlib.import_module(module), cls)
    except ImportError:
        return None


def torch_variants(name):
    """The variants of the reference torch optimizer that its signature takes, fastest first
    as usually measured: "fused", "foreach", and "single" (the per-tensor loop: foreach=False,
    or the class as it is where it has no such keyword). Empty without torch or the package."""
    try:
        import torch  # noqa: F401
    except ImportError:
        return ()
    cls = _reference_class(name)
    if cls is None:
        return ()
    takes = inspect.signature(cls.__init__).parameters
    return tuple(v for v, keyword in (("fused", "fused"), ("foreach", "foreach"))
                 if keyword in takes) + ("single",)


def make_torch(name, params, grads, variant):
    """A torch.optim step over copies of `params` (gradients share the NumPy buffers).

    `variant`: "fused", "foreach" or "single". Returns the optimizer's ``step`` (with
    ``.params``, the tensors it updates, as NumPy views), or raises if torch rejects it.
    """
    import torch
    cls = _reference_class(name)
    if cls is None:
        raise ImportError(f"{SPECS[name].reference} is not installed")
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
        if "foreach" in inspect.signature(cls.__init__).parameters:
            kw["foreach"] = False
    else:
        raise ValueError(f"unknown torch variant {variant!r}")
    opt = cls(tensors, **kw)
    if SPECS[name].modes is not None:
        opt.train()                     # train/eval optimizers (Schedule-Free) step in train mode
    if cls.__module__.partition(".")[0] in WRITES_GRADS:
        # its step overwrites p.grad: give it its own gradient tensors, refilled every step
        shared = [t.grad for t in tensors]
        for t in tensors:
            t.grad = t.grad.clone()

        def step():
            for t, g in zip(tensors, shared):
                t.grad.copy_(g)
            opt.step()
    else:
        def step():
            opt.step()

    step.params = [t.detach().numpy() for t in tensors]
    return step


# ------------------------------------------------------------ SparseAdam on an embedding table
#: SparseAdam's traffic per touched element: the summed gradient read, parameter and both
#: moments read and written (the duplicate rows' extra reads not counted)
SPARSE_TRAFFIC = 7


def sparse_batches(rows, dim, batch, dtype, n=8, seed=0):
    """`n` row-sparse gradients of an embedding table (rows, dim): `batch` lookups each, a
    quarter of them among 256 hot rows (so indices repeat, as in real batches), the rest
    uniform; ``[(indices int64, values (batch, dim))]``."""
    rng = np.random.default_rng(seed)
    out = []
    for _ in range(n):
        hot = rng.random(batch) < 0.25
        idx = np.where(hot, rng.integers(0, min(rows, 256), batch), rng.integers(0, rows, batch))
        out.append((idx.astype(np.int64),
                    rng.standard_normal((batch, dim), dtype=np.float32).astype(dtype)))
    return out


def make_sparse_adam(contender, table, batches):
    """The zero-argument SparseAdam step of `contender` ("fastopt" or "torch") on its own copy
    of `table`, cycling through `batches` (default hyperparameters); None when torch is
    missing."""
    table = table.copy()
    k = [0]
    if contender == "fastopt":
        import fastopt as fo
        opt = fo.SparseAdam([table])
        grads = [[fo.RowSparseGrad(i, v)] for i, v in batches]

        def step():
            opt.step(grads[k[0] % len(grads)])
            k[0] += 1
        step.table = table
        return step
    if contender == "torch":
        try:
            import torch
        except ImportError:
            return None
        w = torch.nn.Parameter(torch.from_numpy(table))
        opt = torch.optim.SparseAdam([w])
        grads = [torch.sparse_coo_tensor(torch.from_numpy(i)[None], torch.from_numpy(v),
                                         table.shape) for i, v in batches]   # uncoalesced

        def step():
            w.grad = grads[k[0] % len(grads)]
            opt.step()
            k[0] += 1
        step.table = table
        return step
    raise ValueError(f"unknown SparseAdam contender {contender!r}")
# ------------------------------------------------------------------------------- Adafactor
# Not in the optimizer table (not elementwise): its contenders, for `fastopt bench`'s adafactor
# section. Minimal traffic: read p and g, write p (the stream kernel's 3 passes).
ADAFACTOR_TRAFFIC = 3


def make_fastopt_adafactor(params, grads):
    """fastopt.Adafactor's ``step(grads)`` over copies of `params` (defaults)."""
    import fastopt as fo
    mine = [np.array(p, copy=True) for p in params]
    opt = fo.Adafactor(mine)
    return lambda: opt.step(grads)


def adafactor_torch_variants():
    """torch.optim.Adafactor's CPU variants ("single": the for-loop; "foreach"), or ()."""
    try:
        import torch
    except ImportError:
        return ()
    return ("single", "foreach") if hasattr(torch.optim, "Adafactor") else ()


def make_torch_adafactor(params, grads, variant):
    """torch.optim.Adafactor's step over copies of `params` (gradients share the buffers)."""
    import torch
    tensors = []
    for p, g in zip(params, grads):
        t = torch.nn.Parameter(torch.from_numpy(np.array(p, copy=True)))
        t.grad = torch.from_numpy(np.ascontiguousarray(g))
        tensors.append(t)
    opt = torch.optim.Adafactor(tensors, foreach=variant == "foreach")
    return opt.step
