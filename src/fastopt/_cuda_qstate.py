"""Low-bit optimizer state on CUDA: the kernels of csrc/qstate.c for CuPy arrays.

Design note
-----------
The interface of ``fastopt._qstate`` (a ``Plan`` over float32 parameters, ``set_state`` taking
per slot float32 arrays, uint16 arrays of bfloat16 bits or `fastopt.state_format.Blockwise8`
buffers, one step function per optimizer with the fields of ``fo_<opt>_hp``), so the runners of
``fastopt._runners`` drive it unchanged; the arrays are CuPy arrays on one device.

The CUDA source is generated like ``fastopt.cuda``'s: the same expanded headers (the rules of
rules_impl.h, constants.h), then one kernel ``fo_<opt>_qstate_f32`` per optimizer with
low-bit state formats. One thread block of 256 threads (8 warps) updates one quantization
block of 256 elements, thread t element t:

1. the block's int8 maps are read into shared memory, and with them the 255 thresholds of
   csrc/qstate.c (t_k: the smallest float32 above the exact midpoint of m_k and m_{k+1});
2. each thread decodes its element of every used slot (float32 as it is, bfloat16 by a shift,
   int8 as ``map[code] * absmax``), and runs the same ``fo_<opt>_rule_f32`` the CPU loop runs
   (constants from the same ``fo_<opt>_constants_f32``; NVRTC with ``--fmad=false``);
3. each int8 slot's new absmax is the block's max |v| (NaN skipped; a warp-shuffle ``fmaxf``
   tree, then the 8 warps' maxima), and each element's code the count of thresholds at or
   below ``v * (1 / absmax)`` (the reciprocal rounded once per block; a binary search over the
   thresholds in shared memory: ties go to the lower code, NaN to code 0); bfloat16 slots are rounded to nearest even (fastopt/half.h's
   ``fo_f2bf``).

So the codes, absmax and bfloat16 bits are those of the CPU loops, bit for bit (a gpu-marked
test checks it). Stochastic bfloat16 rounding is CPU-only: ``rounding="stochastic"`` raises.
The pointer table (one column per tensor: parameter, gradient, then per slot the state, absmax
and map addresses and the slot's format) is rebuilt and uploaded when a step's gradients or the
attached state change; the block table (tensor, first element) is made once per plan.
"""
import numpy as np

from . import _table
from .state_format import Blockwise8, QBLOCK

__all__ = ["QKERNELS", "Plan", "generate_qstate_source", "kernel_name"]

#: the kernels with low-bit state formats that run on CUDA
QKERNELS = tuple(k.name for k in _table.KERNELS.values()
                 if "cuda" in k.backends and len(_table.state_formats(k)) > 1)
__all__ += list(QKERNELS)

FORMATS = {"float32": 0, "bfloat16": 1, "int8": 2}
NVRTC_OPTIONS = ("--fmad=false",)
_ROWS = 14          # param, grad, state 0..2, absmax 0..2, qmap 0..2, format 0..2

_CODECS = r"""
/* ------------------------------------------- the low-bit codecs of csrc/qstate.c, on the device */
/* bfloat16 -> float32: exact */
__device__ __forceinline__ float fo_q_bf2f(unsigned short b)
{
    return __uint_as_float((unsigned int)b << 16);
}

/* float32 -> bfloat16, nearest even; NaN stays a quiet NaN (fastopt/half.h's fo_f2bf) */
__device__ __forceinline__ unsigned short fo_q_f2bf(float f)
{
    const unsigned int x = __float_as_uint(f);
    const unsigned int rne = (x + 0x7fffu + ((x >> 16) & 1u)) >> 16;
    const unsigned int nan = (x >> 16) | 0x40u;
    return (unsigned short)((x & 0x7fffffffu) > 0x7f800000u ? nan : rne);
}

/* t_k, k < 255: the smallest float32 above the exact midpoint (m_k + m_{k+1}) / 2; t_255 = inf */
__device__ __forceinline__ float fo_q_threshold(const float *m, int k)
{
    const float inf = __int_as_float(0x7f800000);
    if (k >= 255)
        return inf;
    const double mid = ((double)m[k] + (double)m[k + 1]) / 2.0;
    float f = __double2float_rn(mid);
    if ((double)f <= mid)
        f = nextafterf(f, inf);
    return f;
}

/* code = #{k < 255 : x >= t_k} (t sorted, so a binary search: 8 compares); NaN: 0 */
__device__ __forceinline__ unsigned char fo_q_code(float x, const float *t)
{
    int j = 0;
#pragma unroll
    for (int s = 128; s >= 1; s >>= 1)
        j += (x >= t[j + s - 1]) ? s : 0;
    return (unsigned char)j;
}

/* max over the block of a (every thread's value; NaN skipped as fmaxf does) */
__device__ __forceinline__ float fo_q_block_max(float a, float *warps)
{
#pragma unroll
    for (int off = 16; off >= 1; off >>= 1)
        a = fmaxf(a, __shfl_xor_sync(0xffffffffu, a, off));
    if ((threadIdx.x & 31) == 0)
        warps[threadIdx.x >> 5] = a;
    __syncthreads();
    float m = warps[0];
#pragma unroll
    for (int w = 1; w < FO_QBLOCK / 32; ++w)
        m = fmaxf(m, warps[w]);
    __syncthreads();
    return m;
}
"""


def kernel_name(opt):
    return f"fo_{opt}_qstate_f32"


def _kernel_text(opt, names):
    args = "".join(f"    double {n},\n" for n in names)
    init = ", ".join(names + ["flags"])
    name = kernel_name(opt)
    return f"""
extern "C" __global__ void __launch_bounds__(FO_QBLOCK)
{name}(const unsigned long long *__restrict__ table, long long nseg,
{" " * len(name)} const long long *__restrict__ blocks, long long nblocks,
{args}    int flags, int used)
{{
    __shared__ float qmap[3][FO_QBLOCK], thr[3][FO_QBLOCK], warps[FO_QBLOCK / 32];
    const long long b = (long long)blockIdx.x;
    const long long s = blocks[b], c = blocks[nblocks + b], n = blocks[2 * nblocks + b];
    const int t = (int)threadIdx.x;
    const long long i = c + t;
    const bool in = i < n;
    float *p = (float *)table[s];
    const float *g = (const float *)table[nseg + s];
    const fo_{opt}_hp hp = {{{init}}};
    const fo_{opt}_k_f32 k = fo_{opt}_constants_f32(&hp);
    void *st[3];
    float *absmax[3];
    int fmt[3];
#pragma unroll
    for (int q = 0; q < 3; ++q) {{
        st[q] = (used >> q) & 1 ? (void *)table[(2 + q) * nseg + s] : (void *)0;
        absmax[q] = (float *)table[(5 + q) * nseg + s];
        fmt[q] = st[q] ? (int)table[(11 + q) * nseg + s] : -1;
        if (fmt[q] == 2)
            qmap[q][t] = ((const float *)table[(8 + q) * nseg + s])[t];
    }}
    __syncthreads();
#pragma unroll
    for (int q = 0; q < 3; ++q)
        if (fmt[q] == 2)
            thr[q][t] = fo_q_threshold(qmap[q], t);
    __syncthreads();
    float rp[1], rg[1], r[3][1];
    rp[0] = in ? p[i] : 0.0f;
    rg[0] = in ? g[i] : 0.0f;
#pragma unroll
    for (int q = 0; q < 3; ++q) {{
        r[q][0] = 0.0f;
        if (in && fmt[q] == 0)
            r[q][0] = ((const float *)st[q])[i];
        else if (in && fmt[q] == 1)
            r[q][0] = fo_q_bf2f(((const unsigned short *)st[q])[i]);
        else if (in && fmt[q] == 2)
            r[q][0] = qmap[q][((const unsigned char *)st[q])[i]] * absmax[q][c / FO_QBLOCK];
    }}
    if (in)
        fo_{opt}_rule_f32(0, rp, rg, r[0], r[1], r[2], k);
    if (in)
        p[i] = rp[0];
#pragma unroll
    for (int q = 0; q < 3; ++q) {{
        const float v = r[q][0];
        if (in && fmt[q] == 0)
            ((float *)st[q])[i] = v;
        else if (in && fmt[q] == 1)
            ((unsigned short *)st[q])[i] = fo_q_f2bf(v);
        else if (fmt[q] == 2) {{              /* the whole block takes part */
            const float amax = fo_q_block_max(in ? fabsf(v) : 0.0f, warps);
            /* x = v * (1 / absmax), the reciprocal rounded once, as on the CPU (csrc/qstate.c);
             * where it overflows (absmax below 2^-128, not 0) the block divides */
            const float rcp = 1.0f / amax;
            const float x = (amax != 0.0f && !(rcp <= 3.402823466e38f)) ? v / amax : v * rcp;
            if (in)
                ((unsigned char *)st[q])[i] = fo_q_code(x, thr[q]);
            if (t == 0)
                absmax[q][c / FO_QBLOCK] = amax;
        }}
    }}
}}
"""


_SOURCE = []


def generate_qstate_source():
    """The complete CUDA C++ text of the low-bit state kernels (include-free): the headers as
    ``fastopt.cuda.generate_cuda_source`` expands them, the device codecs, then one kernel
    ``fo_<opt>_qstate_f32(table, nseg, blocks, nblocks, <fields of fo_<opt>_hp>, flags, used)``
    per kernel of `QKERNELS`."""
    if not _SOURCE:
        from . import cuda
        headers = cuda._SYSTEM_INCLUDE.sub(r"/* \1: host builds only */",
                                           cuda._expand("constants.h", cuda._header_dir()))
        parts = ["/* fastopt low-bit state CUDA kernels: generated by fastopt._cuda_qstate from\n"
                 " * the package's headers; every rule is the one the CPU loops use. */\n",
                 f"#define FO_QBLOCK {QBLOCK}\n", headers, _CODECS]
        parts += [_kernel_text(opt, cuda._hp_fields(opt)) for opt in QKERNELS]
        _SOURCE.append("".join(parts))
    return _SOURCE[0]


_KERNELS = {}


def _kernel(opt):
    kern = _KERNELS.get(opt)
    if kern is None:
        from . import cuda
        cupy = cuda.require_cupy()
        mod = _KERNELS.get(None)
        if mod is None:
            mod = _KERNELS[None] = cupy.RawModule(code=generate_qstate_source(),
                                                  options=NVRTC_OPTIONS)
        kern = _KERNELS[opt] = mod.get_function(kernel_name(opt))
    return kern


def _ptr(a):
    return int(a.data.ptr)


class Plan:
    """The low-bit state plan of a group of float32 CuPy parameters on one device (see the
    module docstring): ``Plan(params, name="params", offset=0, *, rounding="nearest", seed=0)``.
    """

    def __init__(self, params, name="params", offset=0, *, rounding="nearest", seed=0):
        from . import cuda
        if rounding != "nearest":
            raise ValueError(f"rounding={rounding!r}: stochastic rounding of bfloat16 state is "
                             "implemented on the CPU only; use rounding='nearest' on CUDA")
        self.params = list(params)
        self.name, self.offset = name, offset
        self.rounding, self.seed, self.counter = rounding, seed, 0
        devices = set()
        for i, p in enumerate(self.params):
            what = f"{name}[{i + offset}]"
            if not cuda.is_cupy_array(p):
                raise TypeError(f"{what} must be a cupy.ndarray, got {type(p).__name__}")
            if p.dtype != np.float32:
                raise TypeError(f"{what} must have dtype float32 for a low-bit state_dtype, "
                                f"got {p.dtype}")
            if not p.flags.c_contiguous:
                raise ValueError(f"{what} must be C-contiguous")
            devices.add(p.device.id)
        if len(devices) > 1:
            raise ValueError(f"{name}: every parameter of a group must be on one device")
        self.device = devices.pop() if devices else None
        self.states = [None] * 3
        seg, first, size = [], [], []
        for s, p in enumerate(self.params):
            for c in range(0, p.size, QBLOCK):
                seg.append(s)
                first.append(c)
                size.append(p.size)
        self.nblocks = len(seg)
        self._blocks_host = np.array(seg + first + size, np.int64)
        self._blocks = None
        self._table = None
        self._key = None

    def __len__(self):
        return len(self.params)

    def set_state(self, slot, arrays, name=None):
        """Attach slot `slot`: per parameter a float32 or uint16 (bfloat16 bits) CuPy array
        of its shape, or a Blockwise8 of CuPy codes, absmax and map (None: detach)."""
        if arrays is None:
            self.states[slot] = None
            self._key = None
            return
        arrays = list(arrays)
        if len(arrays) != len(self.params):
            raise ValueError(f"{len(arrays)} state buffers for {len(self.params)} parameters")
        for i, (a, p) in enumerate(zip(arrays, self.params)):
            what = f"state[{i + self.offset}][{name or slot!r}]"
            codes = a.codes if isinstance(a, Blockwise8) else a
            if codes.shape != p.shape or not codes.flags.c_contiguous or \
                    codes.dtype not in (np.float32, np.uint16, np.uint8):
                raise ValueError(f"{what} must be a C-contiguous float32, uint16 or uint8 "
                                 f"array of shape {p.shape}")
            if isinstance(a, Blockwise8) and (a.absmax.size != -(-p.size // QBLOCK)
                                              or a.qmap.size != 256):
                raise ValueError(f"{what} needs one absmax per block of {QBLOCK} and a "
                                 "256-value map")
        self.states[slot] = arrays
        self._key = None

    def check_grads(self, grads):
        from . import cuda
        if len(grads) != len(self.params):
            raise ValueError(f"grads has {len(grads)} arrays, the plan {len(self.params)}")
        for i, (g, p) in enumerate(zip(grads, self.params)):
            what = f"grads[{i + self.offset}]"
            if not cuda.is_cupy_array(g) or g.dtype != np.float32 or g.shape != p.shape \
                    or not g.flags.c_contiguous:
                raise TypeError(f"{what} must be a C-contiguous float32 cupy.ndarray of shape "
                                f"{p.shape}")

    def _rows(self, grads):
        nseg = len(self.params)
        table = np.zeros((_ROWS, max(nseg, 1)), np.uint64)
        for s, (p, g) in enumerate(zip(self.params, grads)):
            table[0, s], table[1, s] = _ptr(p), _ptr(g)
            for q, bufs in enumerate(self.states):
                if bufs is None or bufs[s].size == 0:
                    continue
                a = bufs[s]
                if isinstance(a, Blockwise8):
                    table[2 + q, s], table[5 + q, s] = _ptr(a.codes), _ptr(a.absmax)
                    table[8 + q, s], table[11 + q, s] = _ptr(a.qmap), FORMATS["int8"]
                else:
                    table[2 + q, s] = _ptr(a)
                    table[11 + q, s] = FORMATS["bfloat16" if a.dtype == np.uint16 else "float32"]
        return table

    def _step(self, opt, grads, name, used, fields, flags):
        from . import cuda
        cupy = cuda.require_cupy()
        self.check_grads(grads)
        for q in range(3):
            if (used >> q) & 1 and self.states[q] is None:
                raise ValueError(f"state slot {q} is used by the step but not attached")
        if not self.nblocks:
            self.counter += 1
            return
        with cupy.cuda.Device(self.device):
            key = tuple(_ptr(g) for g in grads)
            if self._key != key:
                self._table = cupy.asarray(self._rows(grads).reshape(-1))
                self._key = key
            if self._blocks is None:
                self._blocks = cupy.asarray(self._blocks_host)
            args = (self._table, np.int64(len(self.params)), self._blocks,
                    np.int64(self.nblocks), *(np.float64(v) for v in fields),
                    np.int32(flags), np.int32(used))
            _kernel(opt)((self.nblocks,), (QBLOCK,), args)
        self.counter += 1


def _step_function(opt):
    """``opt(plan, grads, <the fields of fo_<opt>_hp>, flags, name="grads")``, as
    ``fastopt._qstate.<opt>``: fastopt.cuda's binding text (it calls ``plan._step``)."""
    from . import cuda
    fn = cuda._step_function(opt)
    fn.__module__ = __name__
    fn.__doc__ = f"{_table.KERNELS[opt].title} step over low-bit state on CUDA."
    return fn


globals().update({opt: _step_function(opt) for opt in QKERNELS})
