"""Low-bit optimizer state in fastopt.torch: ``state_dtype="bfloat16"`` or ``"int8"``.

The keywords are those of the NumPy classes (`fastopt.state_format`): ``state_dtype``,
``rounding`` and ``seed`` (stochastic rounding of bfloat16 state; for 16-bit parameters the
same two keywords keep their mixed-precision meaning, and a low-bit ``state_dtype`` refuses
16-bit parameters) and ``min_8bit_size``. They are group options (``param_groups`` keys),
checked at construction and at every step. Low-bit state is for dense, contiguous float32
parameters on the CPU or a CUDA device (TypeError/ValueError naming the parameter otherwise:
other dtypes, DTensors and non-contiguous layouts keep float32 state). On CUDA the state
tensors are made on the parameter's device and the step runs fastopt's low-bit CUDA kernel
(fastopt._cuda_qstate) over CuPy views of them (rounding="nearest" only).

How the state looks in ``opt.state`` and ``state_dict()`` (torch tensors throughout, so a
checkpoint is an ordinary torch one):

- a ``"bfloat16"`` slot is a ``torch.bfloat16`` tensor shaped like the parameter;
- an ``"int8"`` slot ``name`` is bitsandbytes' blockwise layout under fastopt's names:
  ``name`` holds the codes (``torch.uint8``, the parameter's shape), ``name + "_absmax"`` one
  float32 per block of 256 and ``name + "_qmap"`` the 256-value map (bitsandbytes' ``state1``,
  ``absmax1``, ``qmap1``); tensors below ``min_8bit_size`` elements and slots that stay float32
  (Schedule-Free's ``z``) are float32 tensors.

Loading converts whatever a slot holds (a float tensor of torch.optim, bfloat16, codes with
their absmax and map) into the group's format: codes and absmax are taken as they are when the
group is int8 (the saved map too), anything else is decoded and encoded. `from_bitsandbytes`
and `to_bitsandbytes` translate the state_dicts of bitsandbytes' ``Adam8bit``/``AdamW8bit``.
"""
import numpy as np
import torch

from . import _qstate, _table, _torch_cuda, _validate
from .optim._state_format import make_state_format
from .state_format import QBLOCK, Blockwise8, check_absmax, check_qmap

__all__ = ["OPTIONS", "has_formats", "group_format", "check_param", "slot_format", "new_state",
           "conform", "conform_all", "attach", "detach", "current", "check_saved",
           "check_saved_codes", "hold_codes", "restore_codes", "is_bitsandbytes",
           "from_bitsandbytes", "to_bitsandbytes"]

#: the group options added to the classes with low-bit state formats (rounding and seed are
#: shared with the 16-bit options of fastopt._torch_mixed)
OPTIONS = {"state_dtype": "float32", "min_8bit_size": _table.MIN_8BIT_SIZE}
_SUFFIXES = ("_absmax", "_qmap")
_BNB_WRAP = "__bnb_optimizer_quant_state__"
_CACHE = {}


def _kernel(spec):
    return _table.KERNELS[spec.kernel or spec.name]


def has_formats(spec):
    """Whether the optimizer of `spec` may keep low-bit state."""
    return len(_table.state_formats(_kernel(spec))) > 1


def group_format(spec, group, where):
    """The group's checked `fastopt.optim._state_format.StateFormat`, or None (float32 state);
    ValueError/TypeError naming `where`."""
    dtype = group.get("state_dtype", "float32")
    if isinstance(dtype, str) and dtype == "float32":     # rounding and seed: 16-bit options
        size = group.get("min_8bit_size", _table.MIN_8BIT_SIZE)
        if size != _table.MIN_8BIT_SIZE:
            try:
                _validate.integer("min_8bit_size", size)
            except (TypeError, ValueError) as e:
                raise type(e)(f"{where}: {e}") from None
        return None
    key = (spec.name, dtype, group.get("rounding", "nearest"), group.get("seed", 0),
           group.get("min_8bit_size", _table.MIN_8BIT_SIZE))
    try:
        hash(key)
        fmt = _CACHE.get(key)
    except TypeError:
        fmt = None
    if fmt is None:
        if not has_formats(spec):
            raise ValueError(f"{where}: {spec.class_name} keeps no low-bit state "
                             f"(state_dtype must be 'float32', got {dtype!r})")
        try:
            fmt = make_state_format(spec.kernel or spec.name, dtype, key[2], key[3], key[4])
        except (TypeError, ValueError) as e:
            raise type(e)(f"{where}: {e}") from None
        if fmt is None:
            return None
        if len(_CACHE) < 64:
            _CACHE[key] = fmt
    return fmt


def check_param(p, what, fmt):
    """A parameter that low-bit state can go with: a dense contiguous float32 CPU or CUDA
    tensor."""
    if p.device.type not in ("cpu", "cuda"):
        raise TypeError(f"{what} is on {p.device}; state_dtype={fmt.dtype!r} is implemented "
                        "for CPU and CUDA tensors")
    if p.dtype != torch.float32:
        raise TypeError(f"{what} has dtype {p.dtype}; state_dtype={fmt.dtype!r} needs float32 "
                        "parameters (float64 and 16-bit parameters keep float32 state: use "
                        "state_dtype='float32')")
    if not p.is_contiguous():
        raise ValueError(f"{what} is not contiguous; state_dtype={fmt.dtype!r} needs "
                         "contiguous parameters (call .contiguous() on the parameter)")


def slot_format(fmt, slot, n):
    """The format ("float32", "bfloat16" or "int8") of slot `slot` of an n-element tensor."""
    if fmt is None or fmt.quant[slot] is None:
        return "float32"
    if fmt.dtype == "int8" and n < fmt.min_8bit_size:
        return "float32"
    return fmt.dtype


def _on_device_of(t, p):
    """Host tensor `t` on `p`'s device (a copy there for a CUDA parameter; made as `p`'s
    new tensor, so whatever decides `p`'s device decides the copy's)."""
    if p.device.type == "cpu":
        return t
    return p.new_empty(t.shape, dtype=t.dtype).copy_(t)


def _tensors_of(p, values, fmt, slot, name):
    """{key: tensor} of slot `name` holding `values` (float array of p's elements), on p's
    device."""
    kind = slot_format(fmt, slot, p.numel())
    values = np.asarray(values).reshape(p.shape)
    if kind == "float32":           # (decoded for a float64 parameter: its dtype)
        out = {name: torch.from_numpy(np.array(values, np.float32)).to(p.dtype)}
    elif kind == "bfloat16":
        bits = _qstate.encode("bfloat16", values).reshape(p.shape)
        out = {name: torch.from_numpy(bits.view(np.int16)).view(torch.bfloat16)}
    else:
        buf = Blockwise8.quantize(values, fmt.quant[slot] == _table.SIGNED)
        out = {name: torch.from_numpy(buf.codes),
               name + "_absmax": torch.from_numpy(buf.absmax),
               name + "_qmap": torch.from_numpy(np.array(buf.qmap))}
    return {k: _on_device_of(t, p) for k, t in out.items()}


def new_state(p, fmt, slot, name, fill=0.0, values=None):
    """The state tensors of a new slot of parameter `p`: {key: tensor}."""
    if values is None:
        values = np.full(p.numel(), fill, np.float32)
    return _tensors_of(p, values, fmt, slot, name)


def _values(st, name, p):
    """float32 values of what slot `name` holds in state dict `st` (any format)."""
    host = lambda v: v.detach().cpu().numpy()
    t = st[name]
    if t.dtype == torch.uint8:
        return Blockwise8(host(t), host(st[name + "_absmax"]),
                          host(st[name + "_qmap"])).dequantize()
    return host(t.detach().to(torch.float32).contiguous())


def _holds(st, name, p, kind, fmt, slot):
    """Whether slot `name` of `st` is already in format `kind` (with a map of its sign)."""
    t = st.get(name)
    if not isinstance(t, torch.Tensor) or t.device != p.device:
        return False
    if kind == "float32":
        return t.dtype == torch.float32 and not any(name + s in st for s in _SUFFIXES)
    if kind == "bfloat16":
        return t.dtype == torch.bfloat16 and not any(name + s in st for s in _SUFFIXES)
    a, q = st.get(name + "_absmax"), st.get(name + "_qmap")
    return (t.dtype == torch.uint8 and isinstance(a, torch.Tensor) and
            isinstance(q, torch.Tensor) and a.dtype == torch.float32 and
            q.dtype == torch.float32 and tuple(q.shape) == (256,) and q.device == p.device
            and a.device == p.device and a.numel() == -(-p.numel() // QBLOCK))


@torch.no_grad()
def conform(st, p, fmt, names, uses=None):
    """Convert the slots of state dict `st` (of parameter `p`) into the formats of `fmt`
    (None: float32): codes kept as they are when int8 is wanted, anything else decoded and
    encoded. Returns whether anything changed."""
    changed = False
    for slot, name in enumerate(names):
        if name not in st or st[name] is None or (uses is not None and not uses[slot]):
            continue
        kind = slot_format(fmt, slot, p.numel())
        if fmt is None and st[name].dtype not in (torch.uint8, torch.bfloat16):
            continue                # float32 state: the parameter's dtype, as torch's
        if _holds(st, name, p, kind, fmt, slot):
            t = st[name]
            ok = t.is_contiguous() and tuple(t.shape) == tuple(p.shape)
            if kind == "int8":
                ok = ok and all(st[name + s].is_contiguous() for s in _SUFFIXES)
            if ok:
                continue
            fresh = {k: st[k].contiguous().reshape(p.shape if k == name else -1)
                     for k in (name, *(name + s for s in _SUFFIXES)) if k in st}
        else:
            fresh = _tensors_of(p, _values(st, name, p), fmt, slot, name)
            for s in _SUFFIXES:
                st.pop(name + s, None)
        st.update(fresh)
        changed = True
    return changed


def conform_all(opt, fmts):
    """After loading: conform the state of every parameter of every group (`fmts`: the
    groups' formats)."""
    for group, fmt in zip(opt.param_groups, fmts):
        for p in group["params"]:
            st = opt.state.get(p)
            if st:
                conform(st, p, fmt, opt.spec.state)


def hold_codes(opt, sd):
    """(state_dict without its uint8 codes and bfloat16 state, [(param, name, tensor)]):
    torch.optim's load_state_dict casts every tensor of a floating parameter to its dtype,
    which would turn codes into numbers; they are put back by `restore_codes`."""
    held, state = [], dict(sd["state"])
    for saved, group in zip(sd["param_groups"], opt.param_groups):
        for pid, p in zip(saved["params"], group["params"]):
            entry = state.get(pid)
            if not isinstance(entry, dict):
                continue
            keep = {}
            for name, value in entry.items():
                if name in opt.spec.state and isinstance(value, torch.Tensor) and \
                        value.dtype in (torch.uint8, torch.bfloat16):
                    held.append((p, name, value))
                else:
                    keep[name] = value
            state[pid] = keep
    return {**sd, "state": state}, held


def restore_codes(opt, held):
    for p, name, value in held:
        opt.state[p][name] = value.to(device=p.device)


def _buffer(st, name, kind):
    """The plan's buffer of slot `name` in format `kind` (views of the state tensors: NumPy,
    or CuPy for CUDA tensors)."""
    t = st[name]
    view = _torch_cuda.array if t.device.type == "cuda" else (lambda v: v.numpy())
    if kind == "float32":
        return view(t)
    if kind == "bfloat16":
        return view(t.view(torch.int16)).view(np.uint16)
    return Blockwise8(view(t), view(st[name + "_absmax"]), view(st[name + "_qmap"]))


def attach(entry, slot, name, states, fmt, where):
    """Attach slot `slot` (`name`) of the entry's parameters (their state dicts `states`) to
    its low-bit plan; TypeError naming the state tensor if a slot is not in the group's
    format (conform first)."""
    bufs, main, extra = [], [], []
    for k, (p, st) in enumerate(zip(entry.tensors, states)):
        kind = slot_format(fmt, slot, p.numel())
        if not _holds(st, name, p, kind, fmt, slot):
            raise TypeError(f"state[{where(k)}][{name!r}] is not {kind} state as the group's "
                            f"state_dtype={fmt.dtype!r} needs")
        bufs.append(_buffer(st, name, kind))
        main.append(st[name])
        extra.append(tuple(st.get(name + s) for s in _SUFFIXES) if kind == "int8" else ())
    entry.plan.set_state(slot, bufs, name)
    entry.states[slot] = main
    entry.qextra[slot] = extra


def detach(entry, slot):
    entry.plan.set_state(slot, None)
    entry.states[slot] = None
    entry.qextra[slot] = None


def current(entry, slot, states):
    """Whether the absmax and map tensors attached to slot `slot` are the state's."""
    extra = entry.qextra[slot]
    if not extra:
        return True
    name = entry.qnames[slot]
    for st, held in zip(states, extra):
        if held and (st.get(name + "_absmax") is not held[0] or
                     st.get(name + "_qmap") is not held[1]):
            return False
    return True


def check_saved(where, name, value, p):
    """A saved state tensor of a slot: a float tensor shaped like `p`, or uint8 codes."""
    if not isinstance(value, torch.Tensor) or not (value.is_floating_point() or
                                                   value.dtype == torch.uint8):
        raise TypeError(f"{where}[{name!r}] must be a floating tensor or uint8 codes, got "
                        f"{type(value).__name__}"
                        + (f" of {value.dtype}" if isinstance(value, torch.Tensor) else ""))
    if value.shape != p.shape:
        raise ValueError(f"{where}[{name!r}] has shape {tuple(value.shape)}, expected "
                         f"{tuple(p.shape)} like its parameter")


def check_saved_codes(where, entry, name, p):
    """uint8 codes need their absmax (one float per block of 256) and a 256-value map."""
    if entry[name].dtype != torch.uint8:
        return
    blocks = -(-p.numel() // QBLOCK)
    for suffix, shape in (("_absmax", (blocks,)), ("_qmap", (256,))):
        t = entry.get(name + suffix)
        if not isinstance(t, torch.Tensor) or not t.is_floating_point():
            raise ValueError(f"{where}[{name!r}] holds uint8 codes but "
                             f"{where}[{name + suffix!r}] is not a floating tensor")
        if tuple(t.shape) != shape:
            raise ValueError(f"{where}[{name + suffix!r}] has shape {tuple(t.shape)}, expected "
                             f"{shape}")
        values = t.detach().to(torch.float32).cpu().numpy()   # as the NumPy classes check
        if suffix == "_qmap":
            check_qmap(values, f"{where}[{name + suffix!r}]")
        else:
            check_absmax(values, f"{where}[{name + suffix!r}]")


# ------------------------------------------------------------------------ bitsandbytes
def is_bitsandbytes(sd):
    """Whether `sd` is in the layout of bitsandbytes' 8-bit optimizers."""
    for entry in sd.get("state", {}).values():
        if isinstance(entry, dict) and (_BNB_WRAP in entry or "state1" in entry):
            return True
    return False


def _bnb_slots(spec):
    if spec.name not in ("adam", "adamw"):
        raise TypeError(f"{spec.class_name}: bitsandbytes state_dicts are translated for Adam "
                        "and AdamW (bitsandbytes' Adam8bit/AdamW8bit)")
    return (("exp_avg", "1"), ("exp_avg_sq", "2"))


_BNB_GROUP_ONLY = {"alpha": 0.0, "t_alpha": None, "t_beta3": None}


def from_bitsandbytes(spec, sd, decoupled):
    """A state_dict of bitsandbytes' Adam8bit/AdamW8bit in fastopt.torch's layout. bitsandbytes
    applies weight decay decoupled (as AdamW) in both classes: where `decoupled` (per group) is
    False (fastopt.torch.Adam) a nonzero weight_decay raises ValueError."""
    slots = _bnb_slots(spec)
    groups = []
    for gi, g in enumerate(sd["param_groups"]):
        g = dict(g)
        for key, plain in _BNB_GROUP_ONLY.items():
            value = g.pop(key, plain)
            if value != plain:
                raise ValueError(f"state_dict['param_groups'][{gi}][{key!r}] is {value!r}: "
                                 "bitsandbytes' AdEMAMix state has no fastopt counterpart")
        if not decoupled[gi] and g.get("weight_decay", 0) != 0:
            raise ValueError(f"state_dict['param_groups'][{gi}] has weight_decay="
                             f"{g['weight_decay']}, which bitsandbytes applies decoupled; load "
                             "it into fastopt.torch.AdamW")
        groups.append(g)
    state = {}
    for pid, entry in sd["state"].items():
        if not isinstance(entry, dict):
            state[pid] = entry
            continue
        entry = dict(entry)
        entry.update(entry.pop(_BNB_WRAP, {}))
        out = {}
        if "step" in entry:
            out["step"] = torch.tensor(float(entry.pop("step")), dtype=torch.float32)
        for name, k in slots:
            if f"state{k}" in entry:
                out[name] = entry.pop(f"state{k}")
            if f"absmax{k}" in entry:
                out[name + "_absmax"] = entry.pop(f"absmax{k}")
            if f"qmap{k}" in entry:
                out[name + "_qmap"] = entry.pop(f"qmap{k}")
        for key in ("unorm_vec", "gnorm_vec", "max1", "max2", "new_max1", "new_max2"):
            entry.pop(key, None)
        if entry:
            raise ValueError(f"state_dict['state'][{pid!r}] has keys {sorted(entry)} that "
                             "fastopt does not know from bitsandbytes' Adam8bit")
        state[pid] = out
    return {"state": state, "param_groups": groups}


def to_bitsandbytes(opt, decoupled):
    """This optimizer's state_dict in the layout of bitsandbytes' Adam8bit/AdamW8bit (codes,
    absmax and maps as they are; float32 state of small tensors as float32). `decoupled`: per
    group, whether its weight decay is decoupled (bitsandbytes' is)."""
    slots = _bnb_slots(opt.spec)
    sd = opt.state_dict()
    groups = []
    for gi, g in enumerate(sd["param_groups"]):
        if g.get("amsgrad"):
            raise ValueError(f"param_groups[{gi}] has amsgrad=True, which bitsandbytes' "
                             "Adam8bit does not have")
        if not decoupled[gi] and g.get("weight_decay", 0) != 0:
            raise ValueError(f"param_groups[{gi}] has weight_decay={g['weight_decay']} as L2 "
                             "(Adam); bitsandbytes applies it decoupled")
        if g.get("maximize"):
            raise ValueError(f"param_groups[{gi}] has maximize=True, which bitsandbytes' "
                             "Adam8bit does not have")
        out = {k: g[k] for k in ("lr", "betas", "eps", "weight_decay", "params")}
        out["betas"] = tuple(float(b) for b in out["betas"])
        out.update(_BNB_GROUP_ONLY)
        groups.append(out)
    state = {}
    for pid, entry in sd["state"].items():
        wrapped = {}
        for name, k in slots:
            if name in entry:
                t = entry[name]
                wrapped[f"state{k}"] = t.to(torch.float32) if t.dtype == torch.bfloat16 else t
            if name + "_absmax" in entry:
                wrapped[f"absmax{k}"] = entry[name + "_absmax"]
                wrapped[f"qmap{k}"] = entry[name + "_qmap"]
        out = {"step": int(entry["step"])} if "step" in entry else {}
        if wrapped:
            out[_BNB_WRAP] = {k: v.clone() for k, v in wrapped.items()}
        state[pid] = out
    return {"state": state, "param_groups": groups}

