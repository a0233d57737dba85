"""fastopt's fused kernels as ``torch.optim`` optimizers for CPU and CUDA tensors (``fastopt[torch]``).

``fastopt.torch.SGD, Adagrad, RMSprop, Adam, AdamW, Adadelta, Adamax`` are subclasses of
``torch.optim.Optimizer`` with the keywords, defaults and equations of the fastopt classes of
the same names (which follow torch.optim; see e.g. :class:`fastopt.Adam`). Each step reads
``p.grad`` of every parameter and updates the parameters and their state in place through
fastopt's C kernels: one fused pass per param group over all its tensors, on the tensors' own
memory (``Tensor.numpy()`` shares it; nothing is copied).

What carries over from torch.optim:

- param groups, ``add_param_group``, and learning-rate schedulers (they change
  ``group['lr']``, read at every step; a one-element tensor ``lr`` works too, as does a
  one-element tensor for any other numeric hyperparameter);
- parameters whose ``grad`` is None are skipped, and each parameter counts its own steps, as
  in torch (parameters are grouped by step count, one kernel call per distinct count);
- ``state_dict()``/``load_state_dict()`` in torch's own layout: state keyed by parameter, with
  ``'step'`` a 0-d float32 tensor and the buffers (``exp_avg``, ``exp_avg_sq``,
  ``momentum_buffer``, ``sum``, ...) tensors like the parameter; a checkpoint of
  ``torch.optim.Adam`` loads into ``fastopt.torch.Adam`` and back;
- ``closure``, step hooks, ``zero_grad``, pickling.

The constructors take torch.optim's arguments, in torch's order and of torch's kinds,
including the implementation keywords of the installed torch (``foreach``, ``fused``,
``capturable``, ``differentiable``), then fastopt's own options keyword-only
(fastopt._torch_args). fastopt is always one fused pass: ``foreach``/``fused`` (None, True or
False) are recorded in ``defaults``, ``param_groups`` and state_dicts as torch does and change
no number; ``fused=True`` with ``foreach=True`` or ``differentiable=True`` raises torch's
RuntimeError; ``capturable=True`` (CUDA graphs) and ``differentiable=True`` (autograd through
the step) cannot be honoured and raise RuntimeError. AdamW stays decoupled whatever state_dict
is loaded, as torch's AdamW.

Hyperparameters follow the rules of the NumPy classes (fastopt._validate): any real number,
NumPy scalars, 0-d arrays and one-element tensors (read as Python numbers when checked, at
construction and at every step; tensors stay in ``param_groups`` as given, other values are
stored as plain Python numbers); TypeError for a wrong type, ValueError for NaN, inf or a
value out of range. Where torch.optim refuses a value too, the error has torch's type and
message first (``Invalid learning rate: -1``, ``Tensor lr must be 1-element``, the table's
``Hyper.torch_error``), then fastopt's reason and the group.

Schedule-Free (``ScheduleFreeAdamW``, ``ScheduleFreeSGD``, ``ScheduleFreeRAdam``, also exported
under the ``schedulefree`` package's names ``AdamWScheduleFree``, ``SGDScheduleFree``,
``RAdamScheduleFree``) follows that package: its keywords and defaults, ``train()``/``eval()``
moving the parameters with torch's ``lerp_``, the group scalars (``k``, ``weight_sum``,
``lr_max``, ``scheduled_lr``, ``train_mode``) in ``param_groups``, state ``z``/``exp_avg_sq``
without ``'step'``, so state_dicts move between the two both ways; it starts in eval mode, as
the package does (fastopt._torch_modes).

16-bit parameters (float16, bfloat16) run on the mixed-precision kernels of
:class:`fastopt.MixedPrecision` (fastopt._torch_mixed), with its options as keyword-only
arguments and group keys: ``master_weights=True`` keeps a float32 master copy in the state
(``'master'``), updated by the kernel, which writes the parameter rounded to nearest even in the
same pass; ``master_weights=False`` updates in 16 bits, rounded to nearest even or, for
bfloat16, ``rounding="stochastic"`` (noise keyed by ``seed``, the parameter's index over all
groups and its step count; for optimizers that count no steps, SGD, Lion and the Schedule-Free
ones, the group's stochastic kernel calls, kept in the group as ``"noise_calls"`` so that a
loaded state_dict continues the noise of the uninterrupted run). Their state buffers are
float32; float32 parameters may share the group (their own master). ``step`` follows
torch.amp.GradScaler's protocol for fused optimizers: gradients divided by ``grad_scale`` (in
the kernel for 16-bit groups), nothing done when ``found_inf`` is nonzero.

CUDA parameters (float32, float64) run fastopt's CUDA kernels (fastopt.cuda, CuPy) on CuPy
views of the tensors' memory, on torch's current stream, with their state made on the device
(fastopt._torch_cuda); a param group holds parameters of one device.

Parameters, gradients and state must be dense CPU tensors of dtype float32, float64, float16 or
bfloat16, or CUDA tensors of float32 or float64 (state: float32 for 16-bit parameters; any
strides; a parameter or state tensor must not overlap itself); anything else raises
``TypeError``/``ValueError`` naming the tensor, before anything is modified. DTensor
parameters (torch.distributed, e.g. FSDP2's ``fully_shard``) placed by ``Shard``/``Replicate``
are updated on each rank's local shard, their state kept as DTensors on the parameter's mesh
with its placements, so torch.distributed.checkpoint saves and loads it
(fastopt._torch_dtensor). A parameter that
is not contiguous but fills its memory without gaps (channels_last, transposed, permuted) is
updated in place through its storage, with its gradient and state when they share its
strides; otherwise (gaps, or a gradient/state in another order) through contiguous
temporaries made once and reused (fastopt._torch_layout); every tensor keeps its layout. The
kernel plans (the C segment tables) are cached per group and per set of
parameters that have gradients, and checked against the tensors at every step (identity, data
pointer and strides of each parameter, identity of each state tensor), so replacing ``p.data``
or a state tensor is picked up; the common step (every parameter has a gradient, one step count)
costs a pass over the gradient list and one kernel call per group. The 0-d ``'step'`` tensors
of a group are views into one counter buffer, advanced by one NumPy operation.

Low-bit state (``state_dtype="bfloat16"|"int8"`` with ``rounding``, ``seed`` and
``min_8bit_size``, as the NumPy classes; fastopt._torch_qstate): the adapters whose NumPy class
takes ``state_dtype`` run fastopt's low-bit state loops on float32 CPU tensors, the state held
in torch tensors (bfloat16; int8 as uint8 codes with ``<name>_absmax`` and ``<name>_qmap``,
bitsandbytes' blockwise layout). ``load_state_dict`` converts any format into the group's, and
reads bitsandbytes' ``Adam8bit``/``AdamW8bit`` state_dicts into Adam/AdamW, which
``bitsandbytes_state_dict()`` writes back.

``fastopt.torch.Adafactor`` is ``torch.optim.Adafactor`` (a subclass: its construction,
state creation and state_dict are torch's) whose step runs fastopt's Adafactor kernel on
CPU float32/float64 tensors (fastopt._torch_adafactor); other dtypes and devices raise
TypeError before anything is written.

>>> import torch, fastopt.torch
>>> w = torch.nn.Parameter(torch.tensor([1.0, -2.0]))
>>> opt = fastopt.torch.Adam([w], lr=0.1)
>>> (w ** 2).sum().backward()
>>> opt.step()
>>> w.detach()
tensor([ 0.9000, -1.9000])
>>> opt.state[w]["step"]
tensor(1.)
"""
try:
    import torch
except ImportError as e:  # pragma: no cover - exercised only without torch
    raise ImportError('fastopt.torch needs PyTorch: pip install "fastopt[torch]"') from e

import inspect

import numpy as np

from . import _kernels, _mixed, _qstate, _table, _torch_args, _validate
from . import _torch_cuda as _cuda
from . import _torch_dtensor as _dt
from . import _torch_layout as _layout
from . import _torch_mixed as _tm
from . import _torch_modes as _modes
from . import _torch_scalars
from . import _torch_qstate as _tq
from . import optim as _optim

__all__ = ["Optimizer", *(opt.class_name for opt in _table.OPTIMIZERS.values()
                          if "torch" in opt.adapters)]

_DTYPES = (torch.float32, torch.float64, *_tm.LOW)
_NUMPY_DTYPE = {torch.float32: np.float32, torch.float64: np.float64}
_MAX_PLANS = 8          # cached plans per group (one per distinct set of params with grads)
# the param-group key that holds the stochastic-rounding draws so far of an optimizer that
# counts no steps (SGD, Lion, the Schedule-Free ones): their noise counter, saved with the group
NOISE_CALLS = "noise_calls"


def _scalar_dtype(fused=None):
    """The dtype torch.optim gives 'step' (float32 when fused or unless the default dtype is
    float64)."""
    if fused:
        return torch.float32
    return torch.float64 if torch.get_default_dtype() == torch.float64 else torch.float32


def _where(gi, j):
    return f"param_groups[{gi}]['params'][{j}]"


def _check_tensor(t, what, like=None, written=True, dtype=None):
    """Raise a TypeError/ValueError if `t` cannot be handed to the CPU kernels (any strides
    will do; a tensor that is written must not overlap itself). With `like`, `t` must have
    its shape and `dtype` (default: its dtype)."""
    if not isinstance(t, torch.Tensor):
        raise TypeError(f"{what} must be a torch.Tensor, got {type(t).__name__}")
    if _dt.is_dtensor(t) or _dt.is_dtensor(like):      # checked on the local shards
        _dt.check(t, what, like)
        t, like = _dt.local(t), None if like is None else _dt.local(like)
    if t.layout != torch.strided:
        raise TypeError(f"{what} is a {t.layout} tensor; fastopt.torch needs dense tensors "
                        "(sparse gradients are not supported)")
    if t.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{what} is on {t.device}; fastopt.torch runs on CPU and CUDA tensors")
    if t.is_cuda or (like is not None and like.is_cuda):
        _cuda.check(t, what, like)
    elif like is not None and t.device != like.device:
        raise TypeError(f"{what} is on {t.device}, its parameter on {like.device}; a "
                        "parameter's gradient and state must be on its device")
    if like is None:
        if t.dtype not in _DTYPES:
            raise TypeError(f"{what} has dtype {t.dtype}; fastopt.torch optimizes float32, "
                            "float64, float16 and bfloat16 tensors")
    else:
        expected = like.dtype if dtype is None else dtype
        if t.dtype != expected:
            why = "like its parameter" if expected == like.dtype else \
                f"(the state of a {like.dtype} parameter is {expected})"
            raise TypeError(f"{what} has dtype {t.dtype}, expected {expected} {why}")
        if t.shape != like.shape:
            raise ValueError(f"{what} has shape {tuple(t.shape)}, expected {tuple(like.shape)} "
                             "like its parameter")
    if t.is_conj() or t.is_neg():
        raise ValueError(f"{what} has a pending conjugate/negation bit; call .resolve_conj() "
                         "/ .resolve_neg() first")
    if written and _layout.overlaps(t):
        raise ValueError(f"{what} has elements that share memory (strides {t.stride()} for "
                         f"shape {tuple(t.shape)}, e.g. from expand()); it cannot be updated "
                         "in place (call .clone())")


def _plain(value):
    """A one-element tensor as its Python number (torch accepts one for lr), tensors inside a
    pair (betas) too; anything else as it is, for the rules of fastopt._validate to judge."""
    if isinstance(value, torch.Tensor):
        if value.numel() == 1 and value.device.type != "meta":
            return value.item()
        return value
    if isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value):
        return type(value)(_plain(v) for v in value)
    return value


def _pointer(a):
    """The address of a NumPy or CuPy array's first element."""
    return a.ctypes.data if isinstance(a, np.ndarray) else int(a.data.ptr)


def _holds_tensor(value):
    return isinstance(value, torch.Tensor) or (
        isinstance(value, (tuple, list)) and any(isinstance(v, torch.Tensor) for v in value))


_array = _layout.array_of       # the NumPy (CPU) or CuPy (CUDA) view of a tensor's memory


class _Entry:
    """A kernel plan over the parameters at positions `idx` of a group, and what it holds:
    the parameters (with their data pointers and strides when planned), their layouts
    (fastopt._torch_layout) and the state tensors attached to each slot.

    A plan over 16-bit parameters is a mixed one (fastopt._mixed; ``mixed`` holds its
    (master_weights, rounding)); ``masters`` are the state's master tensors it was made with
    (None for float32 parameters, without master weights, and where the plan made the copy
    itself: those positions are in ``adopt`` until the copy becomes the state's 'master')."""
    __slots__ = ("idx", "tensors", "ptrs", "strides", "layouts", "plan", "states", "plain",
                 "mixed", "masters", "adopt", "dist", "device", "qformat", "qextra", "qnames")

    def __init__(self, idx, tensors, layouts, plan, n_state, mixed=None, masters=None,
                 adopt=()):
        self.idx = idx
        self.tensors = tensors                  # the parameters (DTensors: their local shards
        self.dist = any(map(_dt.is_dtensor, tensors))   # are planned; fastopt._torch_dtensor)
        local = [_dt.local(t) for t in tensors] if self.dist else tensors
        self.ptrs = [t.data_ptr() for t in local]
        self.strides = [t.stride() for t in local]
        self.layouts = layouts
        self.plan = plan
        self.states = [None] * n_state          # the state tensors attached to each slot
        self.plain = all(lay.plain for lay in layouts)
        self.mixed, self.masters, self.adopt = mixed, masters, list(adopt)
        self.device = local[0].device if local and local[0].is_cuda else None   # CUDA plans
        self.qformat = None                     # a low-bit state format (fastopt._torch_qstate)
        self.qextra = [None] * n_state          # its int8 slots' (absmax, qmap) tensors
        self.qnames = ()

    def holds(self, params):
        for k, j in enumerate(self.idx):
            p = params[j]
            if p is not self.tensors[k]:
                return False
            if self.dist:
                p = _dt.local(p)
            if p.data_ptr() != self.ptrs[k] or p.stride() != self.strides[k]:
                return False
        return True

    def set_state(self, slot, tensors, name=None):
        """Attach the state tensors of a slot (None: detach it) to the plan."""
        if tensors is None:
            for lay in self.layouts:
                lay.state(slot, None)
            self.plan.set_state(slot, None)
        else:
            arrays = [lay.state(slot, _dt.local(t)) for lay, t in zip(self.layouts, tensors)]
            self.plan.set_state(slot, arrays, name)
        self.states[slot] = tensors
        self.plain = all(lay.plain for lay in self.layouts)


class _Record:
    """Per-group bookkeeping: the step counters and the cached plans.

    ``steps`` holds every parameter's step count; the state's ``'step'`` tensors are 0-d views
    into it (``steps_t[j]``), so one NumPy operation advances them all and reading them costs
    nothing. A 'step' found in the state that is not such a view (after load_state_dict, or
    set by the user) is copied into a fresh buffer, which is then linked to every parameter
    (old views, perhaps held by an earlier state_dict, are left alone).

    The per-parameter scalars of the optimizer (the table's ``param_scalars``: NAdam's
    ``mu_product``, ASGD's ``eta`` and ``mu``) are kept the same way, in ``scalars[name]``
    (torch's scalar dtype, as 'step') with their 0-d views ``scalar_views[name]``.
    """
    __slots__ = ("group", "params", "steps", "views", "entries", "calls", "dist", "scalars",
                 "scalar_views")

    def __init__(self, group, scalars=()):
        self.group = group
        self.params = group["params"]
        dtype = _scalar_dtype(group.get("fused"))
        self.steps = np.zeros(len(self.params), dtype=_NUMPY_DTYPE[dtype])
        self.views = list(torch.from_numpy(self.steps).unbind(0)) if len(self.params) else []
        self.scalars = {name: np.zeros(len(self.params), dtype=_NUMPY_DTYPE[dtype])
                        for name in scalars}
        self.scalar_views = {name: list(torch.from_numpy(a).unbind(0)) if len(a) else []
                             for name, a in self.scalars.items()}
        self.entries = {}
        self.dist = any(map(_dt.is_dtensor, self.params))     # DTensor parameters
        # mixed and low-bit kernel calls: the noise counter of optimizers that count no
        # steps, kept in the group (NOISE_CALLS) so that a state_dict carries it
        self.calls = _validate.whole(f"param group's {NOISE_CALLS!r}",
                                     _plain(group.get(NOISE_CALLS, 0)))


class _Job:
    """One kernel call of a step: a plan, its gradients and the per-step values (`group`: the
    param group with its hyperparameters as checked plain Python values)."""
    __slots__ = ("gi", "group", "rec", "entry", "grads", "step", "lr", "fresh", "link",
                 "scale")

    def __init__(self, gi, group, rec, entry, grads, step, lr, fresh, link):
        self.gi, self.group, self.rec, self.entry = gi, group, rec, entry
        self.grads, self.step, self.lr, self.fresh, self.link = grads, step, lr, fresh, link
        self.scale = None           # GradScaler's grad_scale for this step

    @property
    def creates_state(self):
        return self.link or any(self.fresh)


class Optimizer(torch.optim.Optimizer):
    """Base of the fastopt.torch optimizers: torch.optim's bookkeeping, fastopt's kernels."""

    spec = None         # a fastopt._specs.Spec, set by each class
    _fo_impl = {}       # torch's implementation keywords the class takes, with their defaults
    _fo_fixed = {}      # hyperparameters the class does not take: kept at these values
    _fo_adam_like = False   # torch's class is (a subclass of) torch.optim.Adam
    _fo_torch_math = False  # torch.optim's class: tensor lr/betas in 0-d tensor arithmetic
    _fo_qopts = {}      # the low-bit state options the class takes (fastopt._torch_qstate)
    _step_supports_amp_scaling = True   # GradScaler hands over grad_scale and found_inf

    def __init__(self, params, **hyperparameters):
        unknown = set(hyperparameters) - set(self.spec.defaults) - set(self._fo_impl) \
            - set(_tm.OPTIONS) - set(self._fo_qopts)
        if unknown:
            raise TypeError(f"{type(self).__name__} got unexpected keyword argument(s) "
                            f"{sorted(unknown)}")
        defaults = {**self.spec.defaults, **_modes.defaults(self.spec), **self._fo_impl,
                    **_tm.OPTIONS, **self._fo_qopts, **hyperparameters}
        if self._fo_adam_like and "betas" in defaults:
            defaults["betas"] = _torch_args.scalar_betas(defaults["betas"])
        self._fo_records = {}
        self._fo_hyper(defaults, "defaults")
        self._fo_torch_checks(defaults)
        super().__init__(params, defaults)
        if self.spec.eager_state:                # torch.optim.Adagrad creates its state here
            for gi, group in enumerate(self.param_groups):
                self._fo_create_state(self._fo_hyper(group, f"param_groups[{gi}]"),
                                      self._fo_record(group), range(len(group["params"])),
                                      (True,), True)

    # ------------------------------------------------------------------ torch.optim protocol
    def add_param_group(self, param_group):
        super().add_param_group(param_group)
        group = self.param_groups[-1]
        gi = len(self.param_groups) - 1
        try:
            hyper = self._fo_hyper(group, f"param_groups[{gi}]")
            self._fo_torch_checks(group)
            for key in self.spec.rules:          # plain Python values; tensors stay (torch's
                if not _holds_tensor(group[key]):   # schedulers fill a tensor lr in place)
                    group[key] = hyper[key]
            for j, p in enumerate(group["params"]):
                self._fo_check_param(p, _where(gi, j), hyper)
            _cuda.check_group([_dt.local(p) for p in group["params"]], f"param_groups[{gi}]")
        except Exception:
            self.param_groups.pop()
            raise

    def __setstate__(self, state):
        super().__setstate__(state)
        for group in self.param_groups:
            for key, value in {**self.spec.defaults, **_modes.defaults(self.spec),
                               **self._fo_impl}.items():
                group.setdefault(key, value)
            for key, value in {**_tm.OPTIONS, **self._fo_qopts}.items():
                group.setdefault(key, getattr(self, "defaults", {}).get(key, value))
            group.update(self._fo_fixed)        # AdamW stays decoupled, as in torch
            if isinstance(group.get("betas"), list):
                group["betas"] = tuple(group["betas"])
        self._fo_records = {}

    def load_state_dict(self, state_dict):
        """Load a state_dict in torch's layout (of torch.optim or of fastopt.torch).

        Checks the hyperparameters, buffer shapes and step counts first; on error nothing
        changes. Buffers are cast to the parameters' dtype, as torch.optim does, except those
        of 16-bit parameters, which are float32; a 16-bit parameter with a master copy
        (``'master'``) is set to it, rounded to nearest even.
        """
        if self._fo_qopts and _tq.is_bitsandbytes(state_dict):
            state_dict = _tq.from_bitsandbytes(self.spec, state_dict, self._fo_decoupled())
        self._fo_check_state_dict(state_dict)
        state_dict, held = _tm.hold_float32(self, state_dict)
        codes = []
        if self._fo_qopts:          # uint8 codes and bfloat16 state as they are
            state_dict, codes = _tq.hold_codes(self, state_dict)
        super().load_state_dict(state_dict)
        _tm.restore_float32(self, held)
        if self._fo_qopts:          # each slot into its group's state format
            _tq.restore_codes(self, codes)
            _tq.conform_all(self, [self._fo_hyper(g, f"param_groups[{gi}]")["_fo_state"]
                                   for gi, g in enumerate(self.param_groups)])

    def bitsandbytes_state_dict(self):
        """The state_dict in the layout of bitsandbytes' ``Adam8bit``/``AdamW8bit`` (Adam and
        AdamW; codes, absmax and maps as they are, see fastopt._torch_qstate), which their
        ``load_state_dict`` takes. ``load_state_dict`` reads that layout too."""
        if not self._fo_qopts:
            raise TypeError(f"{type(self).__name__} keeps no low-bit state")
        return _tq.to_bitsandbytes(self, self._fo_decoupled())

    def _fo_decoupled(self):
        """Per group: whether weight decay is decoupled (AdamW), as bitsandbytes applies it."""
        return [bool(g.get("decoupled_weight_decay", False)) for g in self.param_groups]

    @torch.no_grad()
    def step(self, closure=None, *, grad_scale=None, found_inf=None):
        """Update every parameter that has a gradient; returns closure's loss, if given.

        `grad_scale` and `found_inf` (default: the attributes of those names that
        torch.amp.GradScaler sets) are those of torch's fused optimizers: the gradients are
        divided by `grad_scale` (16-bit groups: as the kernel reads them; the gradients are
        left divided, as torch's fused kernels leave them), and nothing happens when
        `found_inf` is nonzero."""
        if self.spec.modes is not None:       # as the package: before the closure runs
            self._fo_check_train_mode()
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        if grad_scale is None:
            grad_scale = getattr(self, "grad_scale", None)
        if found_inf is None:
            found_inf = getattr(self, "found_inf", None)
        scale = _tm.grad_scale(grad_scale)
        if _tm.found_inf(found_inf):
            return loss
        jobs = []
        advanced = {}       # group -> its new group state (Schedule-Free's k, weight_sum, ...)
        for gi, group in enumerate(self.param_groups):
            group_jobs = self._fo_prepare(gi, group)
            jobs.extend(group_jobs)
            if not group_jobs and self.spec.group_state:     # no gradients: it advances all
                hyper = self._fo_hyper(group, f"param_groups[{gi}]")    # the same (package)
                advanced[gi] = _modes.advance(self.spec, hyper, hyper["lr"])
        if len(jobs) > 1 or (jobs and (jobs[0].creates_state or not jobs[0].entry.plain)):
            for job in jobs:              # check every gradient before anything is written
                self._fo_check(job)
        if self.spec.check_advance is not None:
            for job in jobs:              # and the group computations (ASGD's eta, ...)
                self._fo_check_advance(job)
        if scale is not None:
            for job in jobs:
                job.scale = scale
                if job.entry.mixed is None:       # the float32/float64 kernels read g / S
                    self._fo_unscale(job, True)
        touched = []
        for job in jobs:
            changed = self._fo_run(job)
            if changed is not None:             # the same for every job of a group
                advanced[job.gi] = changed
            touched.extend(job.entry.tensors)
            if job.entry.dist:                  # the local shards were written too
                touched.extend(_dt.local(p) for p in job.entry.tensors)
            if scale is not None and job.entry.mixed is not None:
                self._fo_unscale(job, False)
        if touched:
            torch.autograd.graph.increment_version(touched)
        for gi, values in advanced.items():
            self.param_groups[gi].update(values)
        return loss

    # ---------------------------------------------------------------- train/eval modes
    def _fo_check_train_mode(self):
        """RuntimeError, before anything is done, unless every group is in train mode."""
        key = self.spec.modes.key
        for gi, group in enumerate(self.param_groups):
            if group.get(key) is not True:
                _modes.check_train_mode(self.spec, self._fo_hyper(group, f"param_groups[{gi}]"),
                                        gi)

    def _fo_set_mode(self, mode):
        hypers = [self._fo_hyper(group, f"param_groups[{gi}]")
                  for gi, group in enumerate(self.param_groups)]
        _modes.set_mode(self, mode, hypers)

    def _fo_unscale(self, job, staged):
        """Divide the job's gradients by its grad_scale in place (and, with `staged`, the
        copies that the kernel will read)."""
        params, scale = job.group["params"], job.scale
        for k, j in enumerate(job.entry.idx):
            g = params[j].grad
            g.div_(scale)
            a = job.grads[k]
            if staged and a.size and _pointer(a) != _dt.local(g).data_ptr():
                a /= a.dtype.type(scale)        # a staged copy (NumPy or CuPy)

    # ------------------------------------------------------------------------ validation
    def _fo_hyper(self, group, where):
        """The group with its hyperparameters checked by the rules of the NumPy classes
        (fastopt._validate) and as plain Python values (one-element tensors read); raises
        TypeError/ValueError naming `where`."""
        if callable(group.get("lr")) and not isinstance(group.get("lr"), torch.Tensor):
            raise TypeError(f"{where}: lr must be a number or a one-element tensor; for "
                            "schedules use torch.optim.lr_scheduler")
        try:
            values = self.spec.validate({key: _plain(group[key])
                                         for key in (*self.spec.rules, *self.spec.group_rules)
                                         if key in group})
        except (TypeError, ValueError) as e:
            raise _torch_args.torch_error(self.spec, group, e, where) from None
        fmt = _tq.group_format(self.spec, group, where) if self._fo_qopts else None
        if fmt is not None:
            try:
                fmt.check(values)           # centered RMSprop has no int8 state
            except ValueError as e:
                raise ValueError(f"{where}: {e}") from None
        return {**group, **values, "_fo_mixed": _tm.options(group, where, fmt is not None),
                "_fo_state": fmt}

    @staticmethod
    def _fo_check_param(p, what, hyper):
        """A parameter the kernels can take with the group's options."""
        _check_tensor(p, what)
        if hyper.get("_fo_state") is not None:
            _tq.check_param(p, what, hyper["_fo_state"])
        elif p.dtype in _tm.LOW:
            _tm.check_param(p, what, hyper["_fo_mixed"][1])

    def _fo_torch_checks(self, group):
        """torch's checks of the implementation keywords and tensor hyperparameters."""
        _torch_args.check_group(type(self).__name__, group, self._fo_impl, self._fo_adam_like)

    def _fo_check_state_dict(self, sd):
        if not isinstance(sd, dict) or "state" not in sd or "param_groups" not in sd:
            raise ValueError("state_dict must be a dict with 'state' and 'param_groups'")
        saved_groups = sd["param_groups"]
        if len(saved_groups) != len(self.param_groups):
            raise ValueError(f"state_dict has {len(saved_groups)} param groups, the optimizer "
                             f"has {len(self.param_groups)}")
        for gi, (saved, group) in enumerate(zip(saved_groups, self.param_groups)):
            if len(saved["params"]) != len(group["params"]):
                raise ValueError(f"param_groups[{gi}] has {len(saved['params'])} params in the "
                                 f"state_dict, {len(group['params'])} in the optimizer")
            hyper = {**self.spec.defaults, **_modes.defaults(self.spec), **self._fo_impl,
                     **{k: v for k, v in saved.items() if k != "params"}, **self._fo_fixed}
            checked = self._fo_hyper(hyper, f"state_dict['param_groups'][{gi}]")
            self._fo_torch_checks(hyper)
            for j, p in enumerate(group["params"]):   # the saved options on these parameters
                self._fo_check_param(p, f"{_where(gi, j)} (with state_dict['param_groups']"
                                        f"[{gi}]'s options)", checked)
            if NOISE_CALLS in saved:
                _validate.whole(f"state_dict['param_groups'][{gi}][{NOISE_CALLS!r}]",
                                _plain(saved[NOISE_CALLS]))
            for j, (pid, p) in enumerate(zip(saved["params"], group["params"])):
                entry = sd["state"].get(pid)
                if entry is None:
                    continue
                where = f"state_dict['state'][{pid!r}]"
                if not isinstance(entry, dict):
                    raise ValueError(f"{where} must be a dict, got {type(entry).__name__}")
                for name, value in entry.items():
                    if name == "step":
                        _validate.whole(f"{where}['step']", _plain(value))
                    elif name in self.spec.scalars:
                        _validate.real(f"{where}[{name!r}]", _plain(value))
                    elif name == "master" and p.dtype not in _tm.LOW:
                        raise ValueError(f"{where} has a master copy but {_where(gi, j)} is "
                                         f"{p.dtype} (only 16-bit parameters have one)")
                    elif name in self.spec.state and value is not None and self._fo_qopts:
                        _tq.check_saved(where, name, value, p)
                        _tq.check_saved_codes(where, entry, name, p)
                    elif (name in self.spec.state or name == "master") and value is not None:
                        if not isinstance(value, torch.Tensor) or not value.is_floating_point():
                            raise TypeError(f"{where}[{name!r}] must be a floating tensor, got "
                                            f"{type(value).__name__}")
                        if value.shape != p.shape:
                            raise ValueError(f"{where}[{name!r}] has shape {tuple(value.shape)}, "
                                             f"expected {tuple(p.shape)} like {_where(gi, j)}")

    def _fo_check(self, job):
        """Check a job's gradients (in another layout than their parameters': re-planned)."""
        try:
            job.entry.plan.check_grads(job.grads)
            return
        except (TypeError, ValueError) as e:
            error = e
        if self._fo_regrad(job):
            try:
                job.entry.plan.check_grads(job.grads)
                return
            except (TypeError, ValueError) as e:
                error = e
        self._fo_diagnose(job)
        raise error

    def _fo_layout_grads(self, gi, entry, params):
        """The gradients' arrays in their parameters' order (fastopt._torch_layout)."""
        out = []
        for lay, j in zip(entry.layouts, entry.idx):
            p = params[j]
            _check_tensor(p.grad, _where(gi, j) + ".grad", like=p, written=False)
            out.append(lay.grad(_dt.local(p.grad)))
        return out

    @staticmethod
    def _fo_local_grad(gi, params, j):
        """The local shard of a DTensor parameter's gradient (checked against the parameter:
        same mesh and placements); a plain parameter's gradient as it is."""
        p = params[j]
        g = p.grad
        if _dt.is_dtensor(p) or _dt.is_dtensor(g):
            _dt.check(g, _where(gi, j) + ".grad", like=p)
        return _dt.local(g)

    def _fo_regrad(self, job):
        """After a failed check of a plain entry's gradients: hand them over in their
        parameters' order if one is not contiguous; False if that is not the problem."""
        if not job.entry.plain or all(g.flags.c_contiguous for g in job.grads):
            return False
        job.grads = self._fo_layout_grads(job.gi, job.entry, job.group["params"])
        return True

    def _fo_diagnose(self, job):
        """Re-raise a failed gradient check with the name of the offending tensor."""
        params = job.group["params"]
        for j in job.entry.idx:
            p = params[j]
            _check_tensor(p.grad, _where(job.gi, j) + ".grad", like=p, written=False)
        if job.entry.device is not None:        # fastopt.cuda's message names the tensor
            return
        for k, j in enumerate(job.entry.idx):
            g = job.grads[k]
            for s in job.entry.states:
                for t in s or ():
                    if np.may_share_memory(g, _array(_dt.local(t))):
                        raise ValueError(f"{_where(job.gi, j)}.grad shares memory with "
                                         "optimizer state")
            for q in params:
                if np.may_share_memory(g, _array(_dt.local(q))):
                    raise ValueError(f"{_where(job.gi, j)}.grad shares memory with a parameter")

    # ---------------------------------------------------------------------------- steps
    def _fo_record(self, group):
        rec = self._fo_records.get(id(group))
        if rec is None or rec.group is not group or rec.params is not group["params"] \
                or len(rec.steps) != len(group["params"]):
            rec = _Record(group, self.spec.scalars)
            self._fo_records[id(group)] = rec
            self._fo_relink(rec)
        return rec

    def _fo_scalar_dtype(self, rec, name, current):
        """The dtype in which per-parameter scalar `name` is kept and rounded: for scalars
        that torch updates in place (the table's ``in_place``: NAdam's mu_product), that of
        the tensors found in the state (torch's load_state_dict casts them to the parameter's
        dtype, and torch's step then computes in it; float64 if they differ), else
        `current`."""
        if not self.spec.scalars_in_place:
            return current
        found = set()
        for j, p in enumerate(rec.params):
            t = (self.state.get(p) or {}).get(name)
            if isinstance(t, torch.Tensor) and t is not rec.scalar_views[name][j] \
                    and t.dtype in (torch.float32, torch.float64):
                found.add(_NUMPY_DTYPE[t.dtype])
        if not found:
            return current
        return np.float64 if len(found) > 1 else found.pop()

    def _fo_relink(self, rec):
        """Point every 'step' of the group at views of a fresh counter buffer (see _Record)."""
        if not self.spec.counts_steps:           # torch.optim.SGD keeps no step count
            return
        steps = rec.steps.copy()
        views = list(torch.from_numpy(steps).unbind(0)) if len(steps) else []
        scalars = {name: a.astype(self._fo_scalar_dtype(rec, name, a.dtype))
                   for name, a in rec.scalars.items()}
        scalar_views = {name: list(torch.from_numpy(a).unbind(0)) if len(a) else []
                        for name, a in scalars.items()}
        linked = []
        for j, p in enumerate(rec.params):           # check every count before relinking any
            st = self.state.get(p)
            if not st or "step" not in st:
                steps[j] = 0
                continue
            cur = st["step"]
            if cur is not rec.views[j]:
                steps[j] = _validate.whole("state['step'] of a parameter", _plain(cur))
            for name, a in scalars.items():
                cur = st.get(name)
                if cur is None:
                    raise ValueError(f"state[{_where(self.param_groups.index(rec.group), j)}] "
                                     f"has a 'step' but no {name!r}")
                if cur is not rec.scalar_views[name][j]:
                    a[j] = _validate.real(f"state[...][{name!r}] of a parameter", _plain(cur))
            linked.append((st, j))
        for st, j in linked:
            st["step"] = views[j]
            for name, v in scalar_views.items():
                st[name] = v[j]
        rec.steps, rec.views = steps, views
        rec.scalars, rec.scalar_views = scalars, scalar_views

    def _fo_prepare(self, gi, group):
        """Check a group and plan its kernel calls; changes nothing the user can observe."""
        hyper = self._fo_hyper(group, f"param_groups[{gi}]")    # plain values for the kernels
        if self._fo_torch_math:         # a tensor lr or betas: torch's 0-d tensor arithmetic
            hyper = _torch_scalars.torch_math(group, hyper, self._fo_adam_like)
        lr = hyper["lr"]
        rec = self._fo_record(group)
        params = rec.params
        idx = [j for j, p in enumerate(params) if p.grad is not None]
        if not idx:
            return []
        try:
            if rec.dist:
                grads = [_array(self._fo_local_grad(gi, params, j)) for j in idx]
            else:
                grads = [_array(params[j].grad) for j in idx]
        except (RuntimeError, TypeError, ValueError):
            for j in idx:
                _check_tensor(params[j].grad, _where(gi, j) + ".grad", like=params[j],
                              written=False)
            raise
        uses = self.spec.uses(hyper)
        # the common case: a cached plan whose tensors are all current, one step count
        entry = rec.entries.get(tuple(idx))
        if entry is not None and entry.holds(params) and self._fo_current(rec, entry, uses) \
                and (entry.mixed is None or entry.mixed == hyper["_fo_mixed"][:2]) \
                and entry.qformat is hyper["_fo_state"]:
            steps = rec.steps if len(idx) == len(params) else rec.steps[idx]
            if steps.min() == steps.max() and self._fo_uniform(rec, idx):
                if not entry.plain:
                    grads = self._fo_layout_grads(gi, entry, params)
                return [_Job(gi, hyper, rec, entry, grads, int(steps[0]) + 1, lr,
                             self._fo_no_fresh, False)]
        return self._fo_partition(gi, hyper, rec, idx, grads, uses, lr)

    @staticmethod
    def _fo_uniform(rec, idx):
        """Whether params `idx` of the group have the same per-parameter scalars."""
        for a in rec.scalars.values():
            a = a if len(idx) == len(a) else a[idx]
            if a.min() != a.max():
                return False
        return True

    @property
    def _fo_no_fresh(self):
        return (False,) * len(self.spec.state)

    def _fo_current(self, rec, entry, uses):
        """Whether the entry's attached tensors are the state's, with every 'step' linked."""
        slots = [slot for slot, used in enumerate(uses) if used]
        if any(entry.states[slot] is None for slot in slots):
            return False
        counted = self.spec.counts_steps
        masters = entry.masters if entry.mixed is not None and entry.mixed[0] else None
        if not slots and not counted and masters is None:
            return True
        expected = [(self.spec.state[slot], entry.states[slot]) for slot in slots]
        if counted:
            expected.append(("step", [rec.views[j] for j in entry.idx]))
            expected += [(name, [v[j] for j in entry.idx])
                         for name, v in rec.scalar_views.items()]
        if masters is not None:
            expected.append(("master", masters))
        get = self.state.get
        for k, p in enumerate(entry.tensors):
            st = get(p)
            if st is None:
                return False
            for name, tensors in expected:
                if st.get(name) is not tensors[k]:
                    return False
        if entry.qformat is not None:           # int8 slots: their absmax and map tensors
            states = [get(p) for p in entry.tensors]
            return all(_tq.current(entry, slot, states) for slot in slots)
        return True

    def _fo_partition(self, gi, group, rec, idx, grads, uses, lr):
        """Jobs for params of different step counts or with state still to create."""
        params, state, names = rec.params, self.state, self.spec.state
        counted = self.spec.counts_steps
        if counted and any(self._fo_unlinked(rec, j) for j in idx):
            self._fo_relink(rec)
        parts = {}
        for k, j in enumerate(idx):
            st = state.get(params[j]) or {}
            missing = tuple(bool(u) and st.get(n) is None for u, n in zip(uses, names))
            link = counted and "step" not in st
            step = float(rec.steps[j]) if counted and not link else 0.0
            # params with other per-parameter scalars (NAdam's mu_product) run apart
            values = () if link else tuple(float(a[j]) for a in rec.scalars.values())
            part = parts.setdefault((step, missing, link, values), ([], []))
            part[0].append(j)
            part[1].append(grads[k])
        jobs = []
        for (step, missing, link, _), (js, gs) in parts.items():
            entry = self._fo_entry(gi, rec, js, group["_fo_mixed"], group["_fo_state"])
            self._fo_attach(gi, entry, params, uses, missing)
            if not entry.plain:
                gs = self._fo_layout_grads(gi, entry, params)
            jobs.append(_Job(gi, group, rec, entry, gs, int(step) + 1, lr, missing, link))
        return jobs

    def _fo_unlinked(self, rec, j):
        st = self.state.get(rec.params[j])
        return bool(st) and "step" in st and (st["step"] is not rec.views[j] or any(
            st.get(name) is not v[j] for name, v in rec.scalar_views.items()))

    def _fo_masters(self, rec, js, options):
        """The state's master tensors of params `js` (None where a parameter has none or
        needs none), or None when no parameter is 16-bit."""
        tensors = [rec.params[j] for j in js]
        if not any(p.dtype in _tm.LOW for p in tensors):
            return None
        if not options[0]:
            return [None] * len(js)
        get = self.state.get
        return [(get(p) or {}).get("master") if p.dtype in _tm.LOW else None for p in tensors]

    def _fo_entry(self, gi, rec, js, options, fmt=None):
        key = tuple(js)
        entry = rec.entries.get(key)
        masters = None if fmt is not None else self._fo_masters(rec, js, options)
        if entry is not None and entry.holds(rec.params) and entry.qformat is fmt and (
                masters is None or (entry.mixed == options[:2]
                                    and all(a is b for a, b in zip(entry.masters, masters)))):
            return entry
        tensors = [rec.params[j] for j in js]
        for j, p in zip(js, tensors):
            self._fo_check_param(p, _where(gi, j), {"_fo_mixed": options, "_fo_state": fmt})
        layouts = [_layout.Layout(_dt.local(p)) for p in tensors]
        mixed = None if masters is None else options[:2]
        arrays = None
        if mixed is not None:
            arrays = []
            for j, p, lay, m in zip(js, tensors, layouts, masters):
                if m is not None:
                    _check_tensor(m, f"state[{_where(gi, j)}]['master']", like=p,
                                  dtype=torch.float32)
                arrays.append(None if m is None else lay.state("master", _dt.local(m)))
        first = sum(len(g["params"]) for g in self.param_groups[:gi])   # group's 1st index
        try:
            if fmt is not None:            # low-bit state (fastopt._torch_qstate)
                plan = fmt.plan([lay.array for lay in layouts], first + js[0])[1]
                if fmt.rounding == "stochastic":   # noise of each parameter's own index,
                    for k, j in enumerate(js):     # whichever others have gradients
                        plan.set_noise_index(k, first + j, 0)
            elif mixed is None and tensors[0].is_cuda:
                plan = _cuda.plan([lay.array for lay in layouts])
            elif mixed is None:
                plan = _kernels.Plan([lay.array for lay in layouts], "params", 0)
            else:
                plan = _mixed.Plan([lay.array for lay in layouts], "params", first + js[0],
                                   master_weights=options[0], rounding=options[1],
                                   masters=arrays)
                if options[1] == "stochastic":     # each parameter's own index, whichever
                    for k, j in enumerate(js):     # others have gradients
                        plan.set_stream(k, first + j)
        except ValueError as e:
            raise ValueError(f"param_groups[{gi}]: {e} (indices within the parameters that "
                             "have gradients)") from None
        if mixed == (False, "stochastic") and rec.dist:
            self._fo_shard_noise(gi, js, tensors, layouts, plan)
        adopt = [] if mixed is None or not options[0] else \
            [k for k, (p, m) in enumerate(zip(tensors, masters))
             if m is None and p.dtype in _tm.LOW]
        entry = _Entry(js, tensors, layouts, plan, len(self.spec.state), mixed, masters, adopt)
        if fmt is not None:
            entry.qformat, entry.qnames = fmt, self.spec.state
        if len(rec.entries) >= _MAX_PLANS:
            rec.entries.pop(next(iter(rec.entries)))
        rec.entries[key] = entry
        return entry

    @staticmethod
    def _fo_shard_noise(gi, js, tensors, layouts, plan):
        """Key the stochastic rounding of each bfloat16 DTensor shard by its elements' indices
        in the whole parameter (fastopt._torch_dtensor.noise_index)."""
        for k, (j, p, lay) in enumerate(zip(js, tensors, layouts)):
            if p.dtype != torch.bfloat16:
                continue
            index = _dt.shard_noise_index(p, _where(gi, j))
            if index is None:
                continue
            if not lay.contiguous:
                raise ValueError(f"{_where(gi, j)}: its local shard is not contiguous, so "
                                 "stochastic rounding on it would depend on the sharding; use "
                                 "rounding='nearest' or master_weights=True for it")
            plan.set_noise_index(k, *index)

    def _fo_attach(self, gi, entry, params, uses, missing):
        """Attach the existing state tensors of the entry's params to its plan."""
        for slot, (name, used) in enumerate(zip(self.spec.state, uses)):
            if not used or missing[slot]:
                if entry.states[slot] is not None:
                    if entry.qformat is not None:
                        _tq.detach(entry, slot)
                    else:
                        entry.set_state(slot, None)
                continue
            if entry.qformat is not None:       # low-bit state: in the group's format
                states = [self.state[params[j]] for j in entry.idx]
                for p, st in zip(entry.tensors, states):
                    _tq.conform(st, p, entry.qformat, self.spec.state, uses)
                if entry.states[slot] is None or not all(
                        a is st[name] for a, st in zip(entry.states[slot], states)) \
                        or not _tq.current(entry, slot, states):
                    _tq.attach(entry, slot, name, states, entry.qformat,
                               lambda k: _where(gi, entry.idx[k]))
                continue
            current = [self.state[params[j]][name] for j in entry.idx]
            attached = entry.states[slot]
            if attached is not None and all(a is b for a, b in zip(attached, current)):
                continue
            if any(t.dtype in (torch.uint8, torch.bfloat16) and t.dtype != p.dtype
                   for t, p in zip(current, entry.tensors)):
                # low-bit state of a group whose state_dtype is now "float32": decoded
                for j, p in zip(entry.idx, entry.tensors):
                    _tq.conform(self.state[params[j]], p, None, self.spec.state, uses)
                current = [self.state[params[j]][name] for j in entry.idx]
            for j, t in zip(entry.idx, current):
                _check_tensor(t, f"state[{_where(gi, j)}][{name!r}]", like=params[j],
                              dtype=_tm.state_dtype(params[j]))
            entry.set_state(slot, current, name)

    def _fo_create_state(self, group, rec, js, fresh, link):
        """State tensors for params `js` of a group: the buffers marked in `fresh`, and, when
        `link`, a 'step' (starting at 0) for those that have none. Returns {slot: tensors}."""
        params = group["params"]
        uses = self.spec.uses(group)
        created = {}
        fmt = group.get("_fo_state")
        for slot, (name, used, new) in enumerate(zip(self.spec.state, uses, fresh)):
            if used and new and fmt is not None:        # low-bit state (fastopt._torch_qstate)
                fill = 0.0 if name in self.spec.copies else \
                    float(self.spec.init.get(name, lambda g, lr: 0.0)(group, group["lr"]))
                created[slot] = []
                for j in js:
                    p = params[j]
                    values = p.detach().cpu().numpy().reshape(-1) \
                        if name in self.spec.copies else None
                    tensors = _tq.new_state(p, fmt, slot, name, fill, values)
                    self.state[p].update(tensors)
                    created[slot].append(tensors[name])
            elif used and new and name in self.spec.copies:     # starts as the parameter (z)
                created[slot] = [_modes.copy_of_param(params[j], self.state.get(params[j]))
                                 for j in js]
            elif used and new:
                fill = float(self.spec.init.get(name, lambda g, lr: 0.0)(group, group["lr"]))
                created[slot] = [torch.full_like(params[j], fill,
                                                 memory_format=torch.preserve_format,
                                                 dtype=_tm.state_dtype(params[j]))
                                 for j in js]
        for slot, tensors in created.items():
            for j, t in zip(js, tensors):
                self.state[params[j]][self.spec.state[slot]] = t   # (low-bit: already there)
        if link and self.spec.counts_steps:
            init = {name: fn(group, _plain(group["lr"])) for name, fn in self.spec.scalars.items()}
            for j in js:
                st = self.state[params[j]]
                if "step" not in st:
                    rec.steps[j] = 0
                    st["step"] = rec.views[j]
                    for name, value in init.items():   # as torch creates them
                        rec.scalars[name][j] = value
                        st[name] = rec.scalar_views[name][j]
        return created

    def _fo_run(self, job):
        entry, rec = job.entry, job.rec
        if job.creates_state:
            created = self._fo_create_state(job.group, rec, entry.idx, job.fresh, job.link)
            for slot, tensors in created.items():
                if entry.qformat is not None:
                    _tq.attach(entry, slot, self.spec.state[slot],
                               [self.state[p] for p in entry.tensors], entry.qformat,
                               lambda k: _where(job.gi, entry.idx[k]))
                else:
                    entry.set_state(slot, tensors, self.spec.state[slot])
        plain = entry.plain
        if not plain:
            for lay in entry.layouts:
                lay.gather()
        if entry.adopt:
            self._fo_adopt(entry)
        try:
            changed = self._fo_kernel(job)
        except (TypeError, ValueError):            # not checked before: the common step
            if not self._fo_regrad(job):
                self._fo_diagnose(job)
                raise
            try:
                changed = self._fo_kernel(job)
            except (TypeError, ValueError):
                self._fo_diagnose(job)
                raise
        if not plain:
            for lay in entry.layouts:
                lay.scatter()
        if entry.mixed is not None or entry.qformat is not None:
            rec.calls += 1
            if not self.spec.counts_steps and job.group["_fo_mixed"][1] == "stochastic":
                rec.group[NOISE_CALLS] = rec.calls
        if self.spec.counts_steps:
            if len(entry.idx) == len(rec.steps):
                rec.steps += 1
            else:
                rec.steps[entry.idx] += 1
        return changed

    def _fo_adopt(self, entry):
        """Make the master copies a new mixed plan made the state's 'master' tensors, set to
        the parameters' current values."""
        plan = entry.plan
        for k in entry.adopt:
            lay, m = entry.layouts[k], plan.masters[k]
            m[...] = lay.array
            t = _dt.like(torch.from_numpy(m).as_strided(lay.shape, lay.strides),
                         entry.tensors[k])
            self.state[entry.tensors[k]]["master"] = t
            entry.masters[k] = t
        entry.adopt = []

    def _fo_kernel(self, job):
        entry = job.entry
        if entry.qformat is not None:           # low-bit state (fastopt._torch_qstate)
            mod = _qstate
            entry.plan.counter = job.step - 1 if self.spec.counts_steps else job.rec.calls
        elif entry.mixed is None:
            mod = _kernels
        else:
            mod, plan = _mixed, entry.plan
            plan.seed = job.group["_fo_mixed"][2] & 0xFFFFFFFFFFFFFFFF
            plan.counter = job.step - 1 if self.spec.counts_steps else job.rec.calls
            plan.grad_scale = 1.0 if job.scale is None else job.scale
        if entry.device is not None:            # on torch's current stream of the device
            if entry.qformat is not None:
                from . import _cuda_qstate as mod
            else:
                mod = _cuda.module()
            with _cuda.on(entry.device):
                return self._fo_launch(mod, entry, job)
        return self._fo_launch(mod, entry, job)

    def _fo_check_advance(self, job):
        """The ValueError of the job's group computation (the table's ``advance``), before
        anything is written."""
        try:
            if not self.spec.scalars:
                self.spec.check_advance(job.group, job.step, job.lr, job.fresh)
                return
            rec, idx = job.rec, job.entry.idx
            scalars = {name: float(a[idx[0]]) for name, a in rec.scalars.items()}
            dtype = next(iter(rec.scalars.values())).dtype
            self.spec.check_advance(
                job.group, job.step, job.lr, job.fresh, "grads", None if job.link else scalars,
                None if dtype == np.float64 else lambda v: float(dtype.type(v)))
        except ValueError as e:
            raise ValueError(f"param_groups[{job.gi}]: {e}") from None

    def _fo_launch(self, mod, entry, job):
        """Run the step's kernel from `mod` (the CPU, mixed or CUDA module); returns the
        group state's new values (None without group state), and writes the per-parameter
        scalars (NAdam's mu_product, ASGD's eta and mu) back to their tensors."""
        if not self.spec.scalars:
            return self.spec.run(mod, entry.plan, job.grads, job.group, job.step, job.lr,
                                 job.fresh)
        rec, idx = job.rec, entry.idx
        whole = len(idx) == len(rec.steps)
        scalars = {name: float(a[idx[0]]) for name, a in rec.scalars.items()}
        dtype = next(iter(rec.scalars.values())).dtype
        new = self.spec.run(mod, entry.plan, job.grads, job.group, job.step, job.lr, job.fresh,
                            "grads", scalars, None if dtype == np.float64 else
                            lambda v: float(dtype.type(v)))
        for name, a in rec.scalars.items():   # rounded to torch's scalar dtype, as torch
            if whole:
                a[...] = new[name]
            else:
                a[idx] = new[name]


def _doc(fo_cls):
    """The adapter's docstring: fastopt's class description (equations), without its example."""
    text = inspect.getdoc(fo_cls) or ""
    cut = text.find("\n>>>")
    body = text[:cut] if cut >= 0 else text
    modes = ""
    if fo_cls.spec.modes is not None:
        modes = ("\n\nUnlike fastopt's NumPy class and as the package it replaces, this "
                 "optimizer starts in eval mode: call ``opt.train()`` before the first step "
                 "(fastopt._torch_modes).")
    return (f"torch.optim.Optimizer running fastopt's fused {fo_cls.__name__} kernel on CPU "
            f"and CUDA tensors (see the module docstring).{modes}\n\n{body.rstrip()}\n")


def _adapter(fo_cls):
    """A fastopt.torch class with the signature of torch.optim's class of the same name (its
    implementation keywords included; fastopt's own options keyword-only after them), the
    defaults and equations of fastopt's class."""
    torch_cls = getattr(torch.optim, fo_cls.__name__, None)
    sig, impl = _torch_args.signature(fo_cls, torch_cls)
    qopts = dict(_tq.OPTIONS) if _tq.has_formats(fo_cls.spec) else {}
    sig = sig.replace(parameters=[*sig.parameters.values(), *(
        inspect.Parameter(name, inspect.Parameter.KEYWORD_ONLY, default=value)
        for name, value in {**_tm.OPTIONS, **qopts}.items())])
    fixed = {k: v for k, v in fo_cls.spec.defaults.items() if k not in sig.parameters}

    def __init__(self, params, *args, **kwargs):
        try:
            bound = sig.bind(self, params, *args, **kwargs)
        except TypeError as e:
            raise TypeError(f"{fo_cls.__name__}(): {e}") from None
        hyper = {k: v for k, v in bound.arguments.items() if k not in ("self", "params")}
        Optimizer.__init__(self, params, **hyper)

    __init__.__signature__ = sig
    __init__.__qualname__ = f"{fo_cls.__name__}.__init__"
    members = {
        "spec": fo_cls.spec, "__init__": __init__, "__doc__": _doc(fo_cls),
        "_fo_impl": impl, "_fo_fixed": fixed, "_fo_qopts": qopts,
        "_fo_adam_like": torch_cls is not None and issubclass(torch_cls, torch.optim.Adam),
        "_fo_torch_math": fo_cls.spec.reference == f"torch.optim.{fo_cls.__name__}",
        "__module__": __name__, "__qualname__": fo_cls.__name__}
    if fo_cls.spec.modes is not None:
        members.update(_mode_methods(fo_cls))
    return type(fo_cls.__name__, (Optimizer,), members)


def _mode_methods(fo_cls):
    """``train()`` and ``eval()`` of an adapter with modes (fastopt._torch_modes)."""
    key = fo_cls.spec.modes.key

    def train(self):
        self._fo_set_mode("train")

    def eval(self):
        self._fo_set_mode("eval")

    train.__doc__ = (f"Train mode: parameters at the point where gradients are taken (y), in "
                     f"every group not in train mode (group[{key!r}] False); then steps are "
                     f"allowed. {fo_cls.__name__} starts in eval mode, as the package does.")
    eval.__doc__ = ("Eval mode: parameters at the average x, to evaluate and save; a step "
                    "raises RuntimeError until train() is called.")
    return {"train": train, "eval": eval}


def _aliases(name):
    """Other names of the adapter of table entry `name`: the class name of the package it
    reproduces where that differs (schedulefree's AdamWScheduleFree for ScheduleFreeAdamW)."""
    opt = _table.OPTIMIZERS[name]
    if not opt.reference:
        return ()
    other = opt.reference.rpartition(".")[2]
    return (other,) if other != opt.class_name else ()


# one adapter per first-order class, that is per entry of the optimizer table (fastopt._table)
# that declares one (adapters=("torch",))
globals().update({cls.__name__: _adapter(cls)
                  for name, cls in _optim.first_order.CLASSES.items()
                  if "torch" in _table.OPTIMIZERS[name].adapters})
# and under the names of the packages they reproduce (schedulefree.AdamWScheduleFree, ...)
_ALIASES = {alias: globals()[opt.class_name] for name, opt in _table.OPTIMIZERS.items()
            if "torch" in opt.adapters for alias in _aliases(name)}
globals().update(_ALIASES)
__all__ += list(_ALIASES)

# Muon (not an entry of the optimizer table: its step is a matrix iteration), fastopt._torch_muon
from ._torch_muon import Muon, muon_param_groups  # noqa: E402

__all__ += ["Muon", "muon_param_groups"]
# SparseAdam is not in the optimizer table (row-sparse gradients): its own adapter
from ._torch_sparse import SparseAdam  # noqa: E402

__all__ += ["SparseAdam"]
# Adafactor (not elementwise: row/column factors) subclasses torch.optim.Adafactor and replaces
# only its step (fastopt._torch_adafactor)
from ._torch_adafactor import Adafactor  # noqa: E402

Adafactor._fo_check_tensor = staticmethod(_check_tensor)

__all__ = [*__all__, "Adafactor"]

# L-BFGS is not an elementwise rule and has no table entry: its adapter is written by hand
# over fastopt.optim.LBFGS (fastopt._torch_lbfgs)
from ._torch_lbfgs import LBFGS  # noqa: E402

__all__.append("LBFGS")
