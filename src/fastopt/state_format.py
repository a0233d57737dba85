r"""Low-bit optimizer state: the ``state_dtype`` of the optimizers with elementwise moments.

``fo.Adam(params, lr=1e-3, state_dtype="int8")`` (or ``"bfloat16"``; default ``"float32"``)
keeps the optimizer's moment buffers in fewer bytes; every step decodes them, applies the
optimizer's own float32 rule and encodes them back, in one fused pass (csrc/qstate.c). Which
buffers may be low-bit is a column of the optimizer table (``State.quant``): first moments
and momenta use the *signed* map, second moments and sums of squares the *unsigned* one; a
parameter-like buffer (Schedule-Free's ``z``) stays float32.

- ``"bfloat16"``: each state value is a bfloat16 (uint16 arrays holding the bits; view them
  as ``ml_dtypes.bfloat16`` if you like), rounded to nearest even, or with
  ``rounding="stochastic"`` up with probability equal to the remainder (noise keyed by
  ``seed``, independent of the thread count).
- ``"int8"``: blockwise dynamic quantization (Dettmers et al., "8-bit Optimizers via
  Block-wise Quantization", ICLR 2022), the format of bitsandbytes' blockwise 8-bit
  optimizers: a tensor is cut into blocks of 256 elements; block :math:`b` keeps
  :math:`a_b = \max_{i \in b} |v_i|` (float32) and per element the code
  :math:`q_i = \arg\min_j |m_j - v_i r_b|`, :math:`r_b = \mathrm{fl}(1 / a_b)` the
  reciprocal rounded to float32 once per block (ties to the lower code) of the 256-value map
  :math:`m` (:func:`dynamic_map`), so :math:`v_i \approx m_{q_i} a_b`. Tensors with fewer than
  ``min_8bit_size`` (4096) elements keep float32 state, as bitsandbytes does. A buffer is a
  :class:`Blockwise8` (``codes``, ``absmax``, ``qmap``): 1 + 4/256 bytes per element.

Parameters and gradients are float32 (float64 parameters keep float64 state: a low-bit
``state_dtype`` raises for them). float32 CuPy parameters run the CUDA kernels of
`fastopt._cuda_qstate` (the same codes and bits as the CPU loops; ``rounding="stochastic"`` is
CPU-only), and ``fastopt.torch``'s optimizers take the same keywords for CPU and CUDA tensors
(`fastopt._torch_qstate`).

``state_dict()`` holds copies of the buffers as they are (uint16 bits, `Blockwise8`);
``load_state_dict`` and ``fastopt.load`` take a buffer of any format for a slot that may be
low-bit and convert it to the optimizer's own (codes copied when both are int8 with one map).
"""
import numpy as np

__all__ = ["Blockwise8", "dynamic_map", "QBLOCK", "MIN_8BIT_SIZE", "STATE_FORMATS",
           "state_bytes", "n_blocks", "check_qmap", "check_absmax"]

from ._table import MIN_8BIT_SIZE, QBLOCK, STATE_FORMATS

_MAPS = {}


def _linspace_f32(n):
    """torch.linspace(0.1, 1, n) in float32 as torch computes it on the CPU: a fused
    ``start + step * i`` below the middle, ``end - step * (n - 1 - i)`` from it (each one
    rounding of the exact value)."""
    f = np.float32
    start, end = f(0.1), f(1.0)
    step = f((end - start) / f(n - 1))
    i = np.arange(n, dtype=np.float64)
    lo = (np.float64(start) + np.float64(step) * i).astype(f)
    hi = (np.float64(end) - np.float64(step) * (n - 1 - i)).astype(f)
    return np.where(np.arange(n) < n // 2, lo, hi).astype(f)


def dynamic_map(signed=True):
    """The 256 sorted float32 values of the dynamic (tree) quantization map with 7 exponent
    bits (Dettmers 2016, "8-Bit Approximations for Parallelism in Deep Learning"), as
    bitsandbytes' ``create_dynamic_map(signed)``: for each decade :math:`10^{e}`,
    :math:`e = -6, \\dots, 0`, the midpoints of :math:`2^{e+6}` (signed, both signs) or
    :math:`2^{e+7}` (unsigned) equal steps of [0.1, 1] scaled by :math:`10^{e}`, plus 0 and 1.
    A read-only array, shared."""
    signed = bool(signed)
    got = _MAPS.get(signed)
    if got is not None:
        return got
    f = np.float32
    data = []
    for i in range(7):
        n = 2 ** i + 1 if signed else 2 ** (i + 1) + 1
        b = _linspace_f32(n)
        means = (b[:-1] + b[1:]) / f(2)
        scale = f(10.0 ** (i - 6))
        data.append(scale * means)
        if signed:
            data.append(-scale * means)
    data.append(np.array([0.0, 1.0], f))
    out = np.sort(np.concatenate(data).astype(f))
    assert out.size == 256
    out.flags.writeable = False
    _MAPS[signed] = out
    return out


def n_blocks(n):
    """Blocks (absmax values) of an int8 buffer of `n` elements: ceil(n / QBLOCK)."""
    return -(-int(n) // QBLOCK)


def check_qmap(qmap, what="qmap"):
    """ValueError unless `qmap` is a float32 array of 256 finite values, strictly increasing,
    in [-1, 1] (what the codecs' sorted-map search needs)."""
    if not isinstance(qmap, np.ndarray) or qmap.dtype != np.float32 or qmap.shape != (256,):
        raise ValueError(f"{what} must be a float32 array of shape (256,), got "
                         f"{getattr(qmap, 'dtype', type(qmap).__name__)} "
                         f"{getattr(qmap, 'shape', '')}")
    if not np.isfinite(qmap).all():
        raise ValueError(f"{what} holds NaN or Inf")
    if not (np.all(np.diff(qmap) > 0) and qmap[0] >= -1.0 and qmap[-1] <= 1.0):
        raise ValueError(f"{what} must hold 256 strictly increasing values in [-1, 1]")


def check_absmax(absmax, what="absmax"):
    """ValueError unless every value of `absmax` is >= 0 (a block's largest magnitude; +inf
    after an infinite value was taken into the state): a negative or NaN one is no state any
    step can have made."""
    bad = ~(np.asarray(absmax) >= 0)
    if bad.any():
        raise ValueError(f"{what} must hold values >= 0 (each block's largest magnitude), got "
                         f"{np.asarray(absmax).reshape(-1)[bad.reshape(-1)][0]!r} at block "
                         f"{int(np.flatnonzero(bad)[0])}")


class Blockwise8:
    """An int8 blockwise state buffer of one tensor: ``codes`` (uint8, the tensor's shape),
    ``absmax`` (float32, one per block of 256 elements) and ``qmap`` (the 256-value map, read
    only); the values are ``qmap[codes] * absmax[block]``."""
    __slots__ = ("codes", "absmax", "qmap")

    def __init__(self, codes, absmax, qmap):
        self.codes, self.absmax, self.qmap = codes, absmax, qmap

    @classmethod
    def quantize(cls, values, signed):
        """A new buffer holding `values` (any float array) with the signed or unsigned map."""
        from . import _qstate
        qmap = dynamic_map(signed)
        values = np.asarray(values)
        codes, absmax = _qstate.encode("int8", values, qmap)
        return cls(codes.reshape(values.shape), absmax, qmap)

    @classmethod
    def checked(cls, codes, absmax, qmap, shape=None, what="buffer"):
        """A Blockwise8 of the given arrays after checking them, or ValueError naming `what`:
        codes uint8 (of `shape` when given), absmax float32 of ceil(codes.size / 256) values,
        qmap as `check_qmap`. The arrays are taken as they are (no copy)."""
        for name, a, dtype in (("codes", codes, np.uint8), ("absmax", absmax, np.float32)):
            if not isinstance(a, np.ndarray) or a.dtype != dtype:
                raise ValueError(f"{what}.{name} must be a {np.dtype(dtype)} numpy.ndarray, got "
                                 f"{getattr(a, 'dtype', type(a).__name__)}")
        if shape is not None and codes.shape != tuple(shape):
            raise ValueError(f"{what}.codes has shape {codes.shape}, expected {tuple(shape)}")
        if absmax.shape != (n_blocks(codes.size),):
            raise ValueError(f"{what}.absmax must hold {n_blocks(codes.size)} values (one per "
                             f"block of {QBLOCK}), got shape {absmax.shape}")
        check_qmap(qmap, f"{what}.qmap")
        check_absmax(absmax, f"{what}.absmax")
        return cls(codes, absmax, qmap)

    def dequantize(self):
        """The float32 values (a new array of the tensor's shape)."""
        from . import _qstate
        return _qstate.decode("int8", self.codes, self.absmax, self.qmap)

    def set(self, values):
        """Quantize `values` into this buffer, in place."""
        from . import _qstate
        codes, absmax = _qstate.encode("int8", np.asarray(values), self.qmap)
        self.codes[...] = codes.reshape(self.codes.shape)
        self.absmax[...] = absmax

    def copy(self):
        return Blockwise8(self.codes.copy(), self.absmax.copy(), self.qmap)

    @property
    def shape(self):
        return self.codes.shape

    @property
    def size(self):
        return self.codes.size

    @property
    def nbytes(self):
        """Bytes of the buffer's own arrays (codes and absmax; the shared map not counted)."""
        return self.codes.nbytes + self.absmax.nbytes

    @property
    def signed(self):
        return bool(self.qmap[0] < 0)

    def __repr__(self):
        return (f"Blockwise8(shape={self.shape}, {'signed' if self.signed else 'unsigned'}, "
                f"{self.absmax.size} blocks)")


def state_bytes(buf):
    """Bytes a state buffer holds (an array, or a Blockwise8's codes and absmax)."""
    return int(buf.nbytes)
