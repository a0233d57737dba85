"""The state format of a first-order optimizer (``state_dtype``): which plan steps a group and
what its state buffers are (see `fastopt.state_format`).

Design note
-----------
The optimizer base (`fastopt.optim.base.Optimizer`) asks its `StateFormat` (None for the
default float32 state) for a group's kernel module and plan, for new state buffers of a slot,
and to write values into one (loading a state_dict). Which slots may be low-bit comes from the
optimizer table (``State.quant``); everything else of the optimizer is unchanged, and the
kernels of every format run the same rule. A buffer is a float32 array (slots that stay
float32, and every slot of a tensor below ``min_8bit_size`` under int8), a uint16 array of
bfloat16 bits, or a `fastopt.state_format.Blockwise8`.
"""
import numpy as np

from .. import _table, _validate
from ..flat import state_like
from ..state_format import Blockwise8, STATE_FORMATS

__all__ = ["StateFormat", "STATE_KEYWORDS", "make_state_format", "saved_values",
           "store_values"]

#: the constructor keywords of the state format, with their defaults
STATE_KEYWORDS = {"state_dtype": "float32", "rounding": "nearest", "seed": 0,
                  "min_8bit_size": _table.MIN_8BIT_SIZE}

_ROUNDINGS = ("nearest", "stochastic")


def make_state_format(kernel, state_dtype, rounding, seed, min_8bit_size):
    """A checked `StateFormat`, or None for float32 state (the default)."""
    if state_dtype not in STATE_FORMATS:
        raise ValueError(f"state_dtype must be one of {STATE_FORMATS}, got {state_dtype!r}")
    if rounding not in _ROUNDINGS:
        raise ValueError(f"rounding must be one of {_ROUNDINGS}, got {rounding!r}")
    if rounding == "stochastic" and state_dtype != "bfloat16":
        raise ValueError("rounding='stochastic' is for state_dtype='bfloat16'")
    seed = _validate.seed("seed", seed)
    min_8bit_size = _validate.integer("min_8bit_size", min_8bit_size)
    if state_dtype == "float32":
        return None
    return StateFormat(kernel, state_dtype, rounding, seed, min_8bit_size)


class StateFormat:
    """A low-bit state format of one optimizer (bfloat16 or int8)."""

    def __init__(self, kernel, state_dtype, rounding, seed, min_8bit_size):
        self.dtype = state_dtype
        self.rounding = rounding
        self.seed = seed
        self.min_8bit_size = min_8bit_size
        self.quant = tuple(s.quant for s in _table.KERNELS[kernel].state)
        self.whole_sizes = {}
        #: id of a part of a tensor -> (the tensor's parameter index, the part's first element
        #: in it): the stochastic bfloat16 noise of the whole tensor (ShardedOptimizer)
        self.noise_index = {}

    def check(self, values):
        """A group's validated hyperparameters against the format: centered RMSprop subtracts
        two independently quantized moments, whose difference int8 can make negative (NaN
        steps); bitsandbytes refuses it too."""
        if self.dtype == "int8" and values.get("centered", False):
            raise ValueError("centered=True needs state_dtype 'float32' or 'bfloat16' (the "
                             "difference of two int8 moments can be negative)")

    def plan(self, params, offset):
        from .. import cuda
        if params and cuda.is_cupy_array(params[0]):      # CUDA: fastopt._cuda_qstate
            from .. import _cuda_qstate
            return _cuda_qstate, _cuda_qstate.Plan(params, "params", offset,
                                                   rounding=self.rounding, seed=self.seed)
        from .. import _qstate
        plan = _qstate.Plan(params, "params", offset, rounding=self.rounding, seed=self.seed)
        self.key_noise(plan)
        return _qstate, plan

    def key_noise(self, plan):
        """Give `plan` (a CPU low-bit plan) the noise index of each of its parameters that is a
        part of a tensor (``noise_index``)."""
        for k, p in enumerate(plan.params):
            where = self.noise_index.get(id(p))
            if where is not None:
                plan.set_noise_index(k, *where)

    def format_for(self, slot, size):
        """The format of slot `slot` of a tensor of `size` elements."""
        if self.quant[slot] is None:
            return "float32"
        if self.dtype == "int8" and size < self.min_8bit_size:
            return "float32"
        return self.dtype

    def _format(self, slot, p):
        """The format of slot `slot` of parameter `p`: of its whole tensor when `p` is a part
        of one (``whole_sizes``: id of the part -> the tensor's size; ShardedOptimizer's shard
        views, which the optimizer keeps alive)."""
        return self.format_for(slot, self.whole_sizes.get(id(p), p.size))

    def new(self, slot, params, fill=None):
        """New buffers of a slot for `params`, holding `fill` (None: zeros, to be written)."""
        value = 0.0 if fill is None else float(fill)
        from .. import cuda
        if params and cuda.is_cupy_array(params[0]):
            return self._new_on_device(slot, params, value)
        out = []
        floats = state_like(params, value)
        for p, f in zip(params, floats):
            fmt = self._format(slot, p)
            if fmt == "float32":
                out.append(f)
            elif fmt == "bfloat16":
                from .. import _qstate
                out.append(_qstate.encode("bfloat16", f).reshape(p.shape))
            else:
                out.append(Blockwise8.quantize(f, self.quant[slot] == _table.SIGNED))
        return out


    def _new_on_device(self, slot, params, value):
        """`new` for CuPy parameters: the buffers made on the host, copied to the device once
        (when the state is created)."""
        import cupy
        from .. import _qstate
        out = []
        for p in params:
            host = np.full(p.shape, value, np.float32)
            fmt = self._format(slot, p)
            with cupy.cuda.Device(p.device.id):
                if fmt == "float32":
                    out.append(cupy.asarray(host))
                elif fmt == "bfloat16":
                    out.append(cupy.asarray(_qstate.encode("bfloat16", host).reshape(p.shape)))
                else:
                    b = Blockwise8.quantize(host, self.quant[slot] == _table.SIGNED)
                    out.append(Blockwise8(cupy.asarray(b.codes), cupy.asarray(b.absmax),
                                          cupy.asarray(np.array(b.qmap))))
        return out


def store_values(dst, src):
    """Write the saved buffer `src` (float array, uint16 bfloat16 bits or Blockwise8) into the
    optimizer's buffer `dst` (of any format): codes copied when both are int8 with one map,
    otherwise decoded to float32 and encoded into dst's format."""
    if isinstance(dst, Blockwise8):
        if isinstance(src, Blockwise8) and np.array_equal(src.qmap, dst.qmap):
            np.copyto(dst.codes, np.asarray(src.codes).reshape(dst.codes.shape))
            np.copyto(dst.absmax, src.absmax)
        else:
            dst.set(saved_values(src))
        return
    if dst.dtype == np.uint16:
        if isinstance(src, np.ndarray) and src.dtype == np.uint16:
            np.copyto(dst, src)
        else:
            from .. import _qstate
            np.copyto(dst, _qstate.encode("bfloat16", saved_values(src)).reshape(dst.shape))
        return
    return NotImplemented


def saved_values(src):
    """float32 (or the saved float dtype) values of a saved buffer of any format."""
    if isinstance(src, Blockwise8):
        return src.dequantize()
    if isinstance(src, np.ndarray) and src.dtype == np.uint16:
        from .. import _qstate
        return _qstate.decode("bfloat16", src)
    return src
