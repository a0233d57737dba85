"""The fused update rules on CuPy arrays: CUDA kernels compiled from ``rules.h``.

Design note
-----------
This module mirrors the interface of the CPU binding ``fastopt._kernels`` exactly (``Plan``, one
step function per optimizer kernel, the flag constants), so the optimizer classes and
``fastopt.functional`` pick one module or the other by the type of the parameters and do nothing
else differently.

*One definition of each rule.* The CUDA source is generated, never written by hand: it is the
package's own headers (``fastopt/rules.h``, ``rules_impl.h``, and ``flags.h``, ``hp.h``,
``constants.h`` generated from the optimizer table; csrc/ of a source checkout, package data of
an installed wheel) with their ``#include "..."`` lines expanded, followed by one multi-tensor
kernel per (optimizer, element type) for every kernel the table (``fastopt._table``) compiles
for "cuda"; a kernel takes the fields of ``fo_<opt>_hp`` in the table's order. Each kernel calls
the same ``fo_<opt>_rule_<f32|f64>`` the OpenMP loop calls, with constants made by the same
``fo_<opt>_constants_<f32|f64>`` from the same double-precision step scalars. NVRTC compiles the
source at first use (CuPy caches the binary by source text, on disk too) with ``--fmad=false``,
so no multiply-add is contracted and a float32 step rounds as the CPU loop does.

*One launch per element type of a group.* A plan keeps, on the device, a table of pointers
(rows: parameter, gradient, state 0..2; one column per tensor) and a table of chunks (tensor,
first, last element), each chunk at most ``CHUNK`` elements of one tensor. Block ``b`` of the
launch updates chunk ``b``; its threads stride through the chunk, so loads are coalesced and
hundreds of small tensors cost one launch.

*No host synchronization inside a step.* The tables are built when the plan is made (and a
state row when state is attached); a step only validates the gradients on the host, refreshes
the gradient row when the gradient addresses changed, and launches. The refresh is an
asynchronous copy from pinned host memory on the current stream, which orders it before the
kernel that reads it and after the kernel of the previous step. A pinned buffer is reused only
once the event recorded after its copy has completed; if every buffer is still in flight a new
one is allocated (the host waits only when ``_MAX_SLOTS`` copies are queued). Buffers whose
plan is garbage-collected while a copy is pending are kept alive until their event completes.
When a step runs on another stream than the previous work on the plan, the new stream waits
on an event of the old one (device-side, no host wait). As with any CuPy operation, the arrays
must be ready on the current stream.

CuPy is imported lazily: ``import fastopt.cuda`` works without it, and anything that needs it
raises ImportError naming the extra ``fastopt[gpu]``.
"""
import bisect
import ctypes
import re
import sys
import weakref
from pathlib import Path

import numpy as np

from . import _kernels, _steps, _table, _validate

# The step functions (sgd, adam, ...) and option flags (MAXIMIZE, ...) are defined from the
# optimizer table below.
_OPTIMIZERS = tuple(k.name for k in _table.KERNELS.values() if "cuda" in k.backends)
__all__ = [
    "Plan", *_OPTIMIZERS, "newton_solve",
    "generate_cuda_source", "is_cupy_array", "check_device_array", "require_cupy", "has_gpu",
    "zeros_like",
    "to_numpy", "to_device", *_table.FLAG_BITS,
]

globals().update(_table.FLAG_BITS)      # MAXIMIZE = 1, ... (the bits of fastopt/flags.h)

FO_MAX_STATE = 3
BLOCK = 256            # threads per block (the kernels' __launch_bounds__)
CHUNK = 256 * 16       # elements per block; read when a Plan is made
MIN_BLOCKS = 0         # resident blocks per SM asked of the register allocator (0: none)
UNROLL = 4             # elements a thread loads before updating them (1: plain loop)
NVRTC_OPTIONS = ("--fmad=false",)
_MAX_SLOTS = 64        # pinned upload buffers per plan before the host waits for one
_PREALLOC_SLOTS = 8    # pinned upload buffers made with each plan

_TYPES = (("f32", "float", np.dtype(np.float32)), ("f64", "double", np.dtype(np.float64)))
_GPU_EXTRA = 'install fastopt[gpu] (cupy-cuda12x): pip install "fastopt[gpu]"'


# ----------------------------------------------------------------------------- CuPy access

def require_cupy():
    """Return the cupy module, or raise ImportError saying which extra to install."""
    try:
        import cupy
    except ImportError as exc:  # the message names the extra, the cause stays chained
        raise ImportError(f"fastopt's GPU path needs CuPy: {_GPU_EXTRA}") from exc
    return cupy


def is_cupy_array(x):
    """Whether ``x`` is a ``cupy.ndarray``, without importing CuPy (no CuPy loaded: False)."""
    cupy = sys.modules.get("cupy")
    return cupy is not None and isinstance(x, cupy.ndarray)


def check_device_array(a, label, like, like_name):
    """TypeError unless `a` is a CuPy array, ValueError unless it is on the device of CuPy
    array `like` (the messages name `label` and `like_name`)."""
    if not is_cupy_array(a):
        raise TypeError(f"{label} must be a cupy.ndarray like {like_name}, got "
                        f"{type(a).__module__}.{type(a).__name__}")
    if a.device.id != like.device.id:
        raise ValueError(f"{label} is on GPU {a.device.id} but {like_name} is on GPU "
                         f"{like.device.id}")


def has_gpu():
    """Whether CuPy is installed and sees at least one CUDA device."""
    try:
        cupy = require_cupy()
        return cupy.cuda.runtime.getDeviceCount() > 0
    except Exception:  # no CuPy, no driver, no device: all mean "no GPU here"
        return False


def zeros_like(param):
    """A zero state buffer on the parameter's device, of its dtype and shape."""
    cupy = require_cupy()
    with cupy.cuda.Device(param.device.id):
        return cupy.zeros_like(param)


def _map_arrays(tree, fn):
    if isinstance(tree, dict):
        return type(tree)((k, _map_arrays(v, fn)) for k, v in tree.items())
    if isinstance(tree, (list, tuple)):
        return type(tree)(_map_arrays(v, fn) for v in tree)
    return fn(tree)


def to_numpy(tree):
    """Copy every ``cupy.ndarray`` in ``tree`` (an array, or nested dict/list/tuple) to NumPy.

    Other leaves are returned as they are. Used to move optimizer state (``state_dict``) from
    the GPU to the host: a checkpoint written from a GPU run loads on a CPU-only machine.
    """
    return _map_arrays(tree, lambda x: x.get() if is_cupy_array(x) else x)


def to_device(tree, device=None):
    """Copy every ``numpy.ndarray`` or ``cupy.ndarray`` in ``tree`` to a GPU.

    ``device`` is a device id (default: the current device). Arrays already there are returned
    as they are; other leaves too. The inverse of :func:`to_numpy`, for resuming a CPU
    checkpoint on the GPU.
    """
    cupy = require_cupy()
    dev = cupy.cuda.Device(device) if device is not None else cupy.cuda.Device()

    def move(x):
        if isinstance(x, np.ndarray) or is_cupy_array(x):
            if is_cupy_array(x) and x.device.id == dev.id:
                return x
            with dev:
                return cupy.array(x, copy=True)
        return x

    return _map_arrays(tree, move)


# ----------------------------------------------------------------------------- CUDA source

def _header_dir():
    """The directory holding fastopt/rules.h: the source tree's csrc/fastopt when fastopt runs
    from a checkout (src/fastopt beside csrc/, an in-place or editable build), else the copy
    that setup.py's build_py puts into an installed package. A checkout holds no copy, so an
    edited header is what the next compile reads."""
    here = Path(__file__).resolve().parent
    checkout = here.parents[1] / "csrc" / "fastopt"
    if here.parent.name == "src" and (checkout / "rules.h").is_file():
        return checkout
    packaged = here / "csrc" / "fastopt"
    if (packaged / "rules.h").is_file():
        return packaged
    raise FileNotFoundError(f"fastopt/rules.h is in neither {checkout} nor {packaged}; "
                            "reinstall fastopt")


_INCLUDE = re.compile(r'^[ \t]*#[ \t]*include[ \t]+"([^"]+)"[ \t]*$', re.M)
_SYSTEM_INCLUDE = re.compile(r'^[ \t]*(#[ \t]*include[ \t]+<[^>]+>)[ \t]*$', re.M)


def _expand(name, directory):
    """Header text with its ``#include "x"`` lines replaced by the text of x (recursively)."""
    text = (directory / name).read_text()

    def sub(m):
        return (f"/* ---- begin fastopt/{m.group(1)} ---- */\n"
                + _expand(m.group(1), directory)
                + f"\n/* ---- end fastopt/{m.group(1)} ---- */")

    return _INCLUDE.sub(sub, text)


def _hp_fields(opt):
    """The double fields of fo_<opt>_hp in order (the kernels take them in this order)."""
    return [name for name, _ in _table.KERNELS[opt].scalars]


def _kernel_name(opt, sfx):
    return f"fo_{opt}_multi_{sfx}"


def _kernel_text(opt, sfx, ctype, names):
    args = "".join(f"    double {n},\n" for n in names)
    init = ", ".join(names + ["flags"])
    name = _kernel_name(opt, sfx)
    rule = f"fo_{opt}_rule_{sfx}"
    return f"""
extern "C" __global__ void __launch_bounds__(FO_BOUNDS)
{name}(const unsigned long long *__restrict__ table, long long nseg,
{" " * len(name)} const long long *__restrict__ chunks, long long nchunks,
{args}    int flags, int used)
{{
    const long long c = (long long)blockIdx.x;
    const long long s = chunks[c], lo = chunks[nchunks + c], hi = chunks[2 * nchunks + c];
    {ctype} *p = ({ctype} *)table[s];
    const {ctype} *g = (const {ctype} *)table[nseg + s];
    {ctype} *s0 = ({ctype} *)table[2 * nseg + s];
    {ctype} *s1 = ({ctype} *)table[3 * nseg + s];
    {ctype} *s2 = ({ctype} *)table[4 * nseg + s];
    const fo_{opt}_hp hp = {{{init}}};
    const fo_{opt}_k_{sfx} k = fo_{opt}_constants_{sfx}(&hp);
#if FO_UNROLL == 1
    (void)used;
    for (long long i = lo + (long long)threadIdx.x; i < hi; i += FO_BLOCK)
        {rule}(i, p, g, s0, s1, s2, k);
#else
    /* FO_UNROLL elements per thread and pass: every load is issued before any store, so each
       thread keeps several loads in flight; the rule then runs on registers. `used` says which
       state buffers the rule reads and writes (the bits of the binding's state mask). */
    for (long long base = lo + (long long)threadIdx.x; base < hi; base += FO_BLOCK * FO_UNROLL) {{
        {ctype} rp[FO_UNROLL], rg[FO_UNROLL], r0[FO_UNROLL], r1[FO_UNROLL], r2[FO_UNROLL];
#pragma unroll
        for (int u = 0; u < FO_UNROLL; ++u) {{
            const long long i = base + (long long)u * FO_BLOCK;
            const bool in = i < hi;
            rp[u] = in ? p[i] : ({ctype})0;
            rg[u] = in ? g[i] : ({ctype})0;
            r0[u] = (in && (used & 1)) ? s0[i] : ({ctype})0;
            r1[u] = (in && (used & 2)) ? s1[i] : ({ctype})0;
            r2[u] = (in && (used & 4)) ? s2[i] : ({ctype})0;
        }}
#pragma unroll
        for (int u = 0; u < FO_UNROLL; ++u)
            {rule}(u, rp, rg, r0, r1, r2, k);
#pragma unroll
        for (int u = 0; u < FO_UNROLL; ++u) {{
            const long long i = base + (long long)u * FO_BLOCK;
            if (i < hi) {{
                p[i] = rp[u];
                if (used & 1) s0[i] = r0[u];
                if (used & 2) s1[i] = r1[u];
                if (used & 4) s2[i] = r2[u];
            }}
        }}
    }}
#endif
}}
"""


_SOURCES = {}
_MODULES = {}
_KERNELS = {}


def generate_cuda_source(block=None, min_blocks=None, unroll=None):
    """The complete CUDA C++ text of fastopt's kernels, free of ``#include`` lines.

    It holds rules.h (with rules_impl.h for float and double), hp.h and constants.h expanded
    in place (the ``#include <math.h>``-style lines of their host-only branches are commented
    out), then one ``extern "C"`` kernel ``fo_<opt>_multi_<f32|f64>`` per optimizer and
    element type, taking ``(table, nseg, chunks, nchunks, <the double fields of fo_<opt>_hp in
    order>, flags, used)`` with ``used`` the bit mask of state buffers the rule touches.
    ``block`` (default ``BLOCK``) is the block size the kernels are built for, ``min_blocks``
    (default ``MIN_BLOCKS``; 0 for none) the resident blocks per multiprocessor asked of the
    register allocator, ``unroll`` (default ``UNROLL``) the elements each thread loads before
    it updates them. The text compiles with NVRTC (what :class:`Plan` uses, through CuPy) and
    with ``nvcc -c`` (tests/test_cuda_source.py).
    """
    block = int(BLOCK if block is None else block)
    min_blocks = int(MIN_BLOCKS if min_blocks is None else min_blocks)
    unroll = int(UNROLL if unroll is None else unroll)
    if block < 1 or min_blocks < 0 or unroll < 1:
        raise ValueError(f"block and unroll must be >= 1 and min_blocks >= 0, got {block}, "
                         f"{min_blocks}, {unroll}")
    key = (block, min_blocks, unroll)
    if key not in _SOURCES:
        hdr = _header_dir()
        bounds = f"{block}, {min_blocks}" if min_blocks > 0 else f"{block}"
        headers = _SYSTEM_INCLUDE.sub(r"/* \1: host builds only */", _expand("constants.h", hdr))
        parts = [
            "/* fastopt CUDA kernels: generated by fastopt.cuda.generate_cuda_source() from the\n"
            " * package's headers. Every rule below is the one the CPU loops use. */\n",
            f"#define FO_BLOCK {block}\n#define FO_BOUNDS {bounds}\n#define FO_UNROLL {unroll}\n",
            headers,
            "\n/* ---------------------------------------------- multi-tensor kernels */\n",
        ]
        for opt in _OPTIMIZERS:
            for sfx, ctype, _ in _TYPES:
                parts.append(_kernel_text(opt, sfx, ctype, _hp_fields(opt)))
        _SOURCES[key] = "".join(parts)
    return _SOURCES[key]


def _kernel(opt, sfx):
    """The compiled kernel fo_<opt>_multi_<sfx> for the current BLOCK, MIN_BLOCKS and UNROLL.

    The module is compiled once per configuration, at first use; CuPy also caches the binary
    on disk by source text and options.
    """
    key = (opt, sfx, int(BLOCK), int(MIN_BLOCKS), int(UNROLL))
    kern = _KERNELS.get(key)
    if kern is None:
        cupy = require_cupy()
        src = generate_cuda_source()
        mod = _MODULES.get(src)
        if mod is None:
            mod = _MODULES[src] = cupy.RawModule(code=src, options=NVRTC_OPTIONS)
        kern = _KERNELS[key] = mod.get_function(_kernel_name(opt, sfx))
    return kern


# ----------------------------------------------------------------------------- validation

def _describe(a):
    if is_cupy_array(a):
        return f"{a.dtype} cupy array of shape {a.shape} on GPU {a.device.id}"
    if isinstance(a, np.ndarray):
        return (f"numpy.ndarray {a.dtype} of shape {a.shape} in host memory (a GPU optimizer "
                f"takes cupy arrays; move it with cupy.asarray)")
    return f"{type(a).__module__}.{type(a).__qualname__}"


def _check_float_array(a, what):
    """Type and layout checks shared by parameters, state and gradients."""
    if not is_cupy_array(a):
        raise TypeError(f"{what} must be a cupy.ndarray of float32 or float64, got {_describe(a)}")
    if a.dtype != np.float32 and a.dtype != np.float64:
        raise TypeError(f"{what} must have dtype float32 or float64, got {a.dtype}")
    if not a.flags.c_contiguous:
        raise ValueError(f"{what} must be C-contiguous; got strides {a.strides} for shape "
                         f"{a.shape} (use cupy.ascontiguousarray)")


def _interval(a):
    ptr = int(a.data.ptr)
    return ptr, ptr + int(a.nbytes)


def _identity(a):
    """What a plan's device tables rely on about array `a`: pointer, dtype, shape, strides."""
    return int(a.data.ptr), a.dtype, a.shape, a.strides


# ----------------------------------------------------------------------------- uploads

class _Slot:
    __slots__ = ("mem", "nbytes", "event")

    def __init__(self, cupy, nbytes):
        self.nbytes = max(int(nbytes), 64)
        self.mem = cupy.cuda.alloc_pinned_memory(self.nbytes)
        self.event = cupy.cuda.Event(block=False, disable_timing=True)


_RETIRED = []   # slots of collected uploaders whose last copy may still be in flight


def _prune_retired():
    if _RETIRED:
        _RETIRED[:] = [s for s in _RETIRED if not s.event.done]


def _retire(slots):
    _RETIRED.extend(s for s in slots if not s.event.done)


class _Uploader:
    """Host -> device copies of small int64 tables that never make the host wait.

    Each copy goes through a pinned buffer that is reused only once the event recorded after
    its copy has completed (see the module's design note).
    """

    def __init__(self, cupy, prealloc=0, nbytes=64):
        self._cupy = cupy
        self._slots = [_Slot(cupy, nbytes) for _ in range(prealloc)]
        weakref.finalize(self, _retire, self._slots)

    def copy(self, dst_ptr, values, stream):
        values = np.ascontiguousarray(values, dtype=np.int64)
        nbytes = values.nbytes
        if nbytes == 0:
            return
        _prune_retired()
        slot = next((s for s in self._slots if s.nbytes >= nbytes and s.event.done), None)
        if slot is None:
            if len(self._slots) < _MAX_SLOTS:
                slot = _Slot(self._cupy, nbytes)
                self._slots.append(slot)
            else:   # the host is _MAX_SLOTS uploads ahead of the device: wait for the oldest
                slot = self._slots.pop(0)
                slot.event.synchronize()
                if slot.nbytes < nbytes:
                    slot = _Slot(self._cupy, nbytes)
                self._slots.append(slot)
        ctypes.memmove(int(slot.mem.ptr), values.ctypes.data, nbytes)
        runtime = self._cupy.cuda.runtime
        runtime.memcpyAsync(int(dst_ptr), int(slot.mem.ptr), nbytes,
                            runtime.memcpyHostToDevice, stream.ptr)
        slot.event.record(stream)


class _Group:
    """The device tables of the tensors of one element type in a plan."""

    def __init__(self, cupy, sfx, index, params, chunk):
        self.sfx = sfx
        self.index = index                        # positions of these tensors in the plan
        self.nseg = len(index)
        lens = [int(params[i].size) for i in index]
        seg, lo, hi = [], [], []
        for s, n in enumerate(lens):
            for a in range(0, n, chunk):
                seg.append(s)
                lo.append(a)
                hi.append(min(a + chunk, n))
        self.nchunks = len(seg)
        self.host = np.zeros((2 + FO_MAX_STATE, self.nseg), dtype=np.int64)
        self.host[0] = [int(params[i].data.ptr) for i in index]
        self.table = cupy.empty(max(self.host.size, 1), dtype=np.int64)
        self.chunks = cupy.empty(max(3 * self.nchunks, 1), dtype=np.int64)
        self.chunk_host = np.array([seg, lo, hi], dtype=np.int64).reshape(-1)
        self.grads = None                         # gradient addresses now in the table

    def row_ptr(self, row):
        return int(self.table.data.ptr) + 8 * row * self.nseg


class Plan:
    """The device tables of one parameter group (parameters + state buffers) on one GPU.

    The same interface and checks as ``fastopt._kernels.Plan``, for ``cupy.ndarray``:
    parameters float32/float64, C-contiguous, all on one device, no two sharing memory.
    """

    def __init__(self, params, name="params", offset=0):
        cupy = require_cupy()
        if not isinstance(params, (list, tuple)):
            raise TypeError(f"{name} must be a list of arrays, got {_describe(params)}")
        self.name = name
        self.offset = int(offset)   # index of params[0] in the caller's numbering (messages)
        self.params = list(params)
        self.states = [None] * FO_MAX_STATE
        self.n = len(self.params)
        for i, p in enumerate(self.params):
            _check_float_array(p, f"{name}[{i + self.offset}]")
        self.device_id = self.params[0].device.id if self.n else cupy.cuda.Device().id
        for i, p in enumerate(self.params):
            self._check_device(p, f"{name}[{i + self.offset}]")
        self._rebuild_intervals(self.states)
        self._record_identity()
        self._cupy = cupy
        self._device = cupy.cuda.Device(self.device_id)
        self._stream = None
        chunk = int(CHUNK)
        if chunk < 1:
            raise ValueError(f"fastopt.cuda.CHUNK must be >= 1, got {chunk}")
        with self._device:
            self._groups = []
            for sfx, _, dtype in _TYPES:
                index = [i for i, p in enumerate(self.params) if p.dtype == dtype]
                if index:
                    self._groups.append(_Group(cupy, sfx, index, self.params, chunk))
            # a few row-sized pinned buffers up front, so steps normally find one free
            row = 8 * max([grp.nseg for grp in self._groups] + [8])
            self._uploader = _Uploader(cupy, prealloc=_PREALLOC_SLOTS, nbytes=row)
            stream = self._enter_stream()
            for grp in self._groups:
                self._uploader.copy(grp.table.data.ptr, grp.host.reshape(-1), stream)
                self._uploader.copy(grp.chunks.data.ptr, grp.chunk_host, stream)

    def __len__(self):
        return self.n

    def __repr__(self):
        return f"<fastopt.cuda.Plan of {self.n} arrays on GPU {self.device_id}>"

    def _record_identity(self):
        """Remember each parameter's and state buffer's pointer, dtype, shape and strides (the
        device tables hold the pointers)."""
        labels = [f"{self.name}[{i + self.offset}]" for i in range(self.n)]
        arrays = list(self.params)
        for k in range(FO_MAX_STATE):
            if self.states[k] is not None:
                arrays += self.states[k]
                labels += [f"state buffer {k} of {self.name}[{i + self.offset}]"
                           for i in range(self.n)]
        self._identity = [(a, _identity(a)) for a in arrays]
        self._identity_labels = labels

    def check_identity(self):
        """ValueError, naming the array, if a parameter or state buffer changed its pointer,
        dtype, shape or strides since the plan recorded it (the tables would be stale)."""
        for j, (a, recorded) in enumerate(self._identity):
            if _identity(a) != recorded:
                raise ValueError(_kernels.stale_message(self._identity_labels[j]))

    def _check_device(self, a, what):
        if a.device.id != self.device_id:
            raise ValueError(f"{what} is on GPU {a.device.id} but {self.name}[0] is on GPU "
                             f"{self.device_id}; the arrays of one optimizer (parameters, "
                             f"gradients, state) must all be on one device")

    def _rebuild_intervals(self, states):
        """Sorted memory intervals of params and `states`; overlaps among them are errors (the
        plan is then left as it was)."""
        items = [(*_interval(a), f"{self.name}[{i + self.offset}]")
                 for i, a in enumerate(self.params) if a.nbytes > 0]
        for k in range(FO_MAX_STATE):
            if states[k] is not None:
                items += [(*_interval(a), f"state {k} of {self.name}[{i + self.offset}]")
                          for i, a in enumerate(states[k]) if a.nbytes > 0]
        _kernels.check_spans(items, "every parameter must be a separate buffer (pass each "
                             "parameter once)")
        self._lo = [it[0] for it in items]
        self._hi = [it[1] for it in items]

    def _overlaps(self, a, b):
        """Whether [a, b) intersects a param or state interval (binary search)."""
        j = bisect.bisect_right(self._hi, a)      # first interval whose end is > a
        return j < len(self._lo) and self._lo[j] < b

    def _enter_stream(self):
        """The current stream, made to wait (on the device) for work queued on the previous one."""
        stream = self._cupy.cuda.get_current_stream()
        if self._stream is not None and self._stream.ptr != stream.ptr:
            ev = self._cupy.cuda.Event(block=False, disable_timing=True)
            ev.record(self._stream)
            stream.wait_event(ev)
        self._stream = stream
        return stream

    def set_state(self, k, arrays, name=None):
        """Attach state buffer k (a list of arrays shaped and typed like the params), or None.

        `name` is the buffer's name in error messages (default "state buffer k of params[i]").
        """
        k = int(k)
        arrays = _kernels.state_list(k, arrays, self.n, name)
        self.check_identity()
        if arrays is not None:
            for i, (a, p) in enumerate(zip(arrays, self.params)):
                what = (f"{name}[{i + self.offset}]" if name else
                        f"state buffer {k} of {self.name}[{i + self.offset}]")
                _check_float_array(a, what)
                if a.dtype != p.dtype or a.shape != p.shape:
                    raise ValueError(f"{what} must be {_describe(p)}, got {_describe(a)}")
                self._check_device(a, what)
        states = list(self.states)
        states[k] = arrays
        self._rebuild_intervals(states)
        self.states[k] = arrays
        self._record_identity()
        with self._device:
            stream = self._enter_stream()
            for grp in self._groups:
                row = grp.host[2 + k]
                row[:] = 0 if arrays is None else [int(arrays[i].data.ptr) for i in grp.index]
                self._uploader.copy(grp.row_ptr(2 + k), row, stream)

    def check_grads(self, grads, name="grads"):
        """Check gradients against the params without keeping them (raises on any problem)."""
        self._load(grads, name)

    def _load(self, grads, name):
        """Validate the gradients; return their addresses in plan order."""
        _kernels.check_grad_list(grads, self.n, name, _describe)
        self.check_identity()
        ptrs = []
        for i, (g, p) in enumerate(zip(grads, self.params)):
            if not is_cupy_array(g):
                raise TypeError(f"{name}[{i + self.offset}] must be a cupy.ndarray of {p.dtype} like "
                                f"{self.name}[{i + self.offset}], got {_describe(g)}")
            if g.dtype != p.dtype:
                raise TypeError(f"{name}[{i + self.offset}] must have dtype {p.dtype} like {self.name}[{i + self.offset}], "
                                f"got {g.dtype}")
            if g.shape != p.shape:
                raise ValueError(f"{name}[{i + self.offset}] must have shape {p.shape} like {self.name}[{i + self.offset}], "
                                 f"got {g.shape}")
            if not g.flags.c_contiguous:
                raise ValueError(f"{name}[{i + self.offset}] must be C-contiguous and aligned; got strides "
                                 f"{g.strides} (use cupy.ascontiguousarray)")
            self._check_device(g, f"{name}[{i + self.offset}]")
            lo, hi = _interval(g)
            if hi > lo and self._overlaps(lo, hi):
                raise ValueError(f"{name}[{i + self.offset}] shares memory with a parameter or optimizer state; "
                                 f"pass a separate gradient buffer")
            ptrs.append(lo)
        return ptrs

    def _require(self, mask):
        _kernels.require_states(self.states, mask)

    def _step(self, opt, grads, name, mask, scalars, flags):
        """Validate, refresh the gradient row where it changed, launch one kernel per type."""
        self._require(mask)
        ptrs = self._load(grads, name)
        args_tail = tuple(np.float64(float(x)) for x in scalars) + (np.int32(flags),
                                                                    np.int32(mask))
        with self._device:
            stream = self._enter_stream()
            for grp in self._groups:
                gp = [ptrs[i] for i in grp.index]
                if gp != grp.grads:
                    grp.host[1] = gp
                    self._uploader.copy(grp.row_ptr(1), grp.host[1], stream)
                    grp.grads = gp
                if grp.nchunks:
                    _kernel(opt, grp.sfx)((grp.nchunks,), (int(BLOCK),),
                                          (grp.table, np.int64(grp.nseg), grp.chunks,
                                           np.int64(grp.nchunks)) + args_tail)


def _step_function(opt):
    """The binding ``opt(plan, grads, <the fields of fo_<opt>_hp>, flags, name="grads")``, with
    the signature of ``fastopt._kernels.<opt>`` (compiled from text made from the table)."""
    fields = ", ".join(_hp_fields(opt))
    source = (f"def {opt}(plan, grads, {fields}, flags, name=\"grads\"):\n"
              f"    flags = int(flags)\n"
              f"    plan._step({opt!r}, grads, name, {_steps.state_mask_expr(opt)}, ({fields},),"
              f" flags)\n")
    fn = _steps.compile_function(opt, source, module=__name__)
    fn.__doc__ = f"{_table.KERNELS[opt].title} step over the plan (see rules.h for the equations)."
    return fn


globals().update({opt: _step_function(opt) for opt in _OPTIMIZERS})


# ----------------------------------------------------------------------------- Newton

def newton_solve(hessian, grad, damping=0.0, *, max_tries=60):
    r"""Newton direction on the GPU: solve :math:`(H + (\lambda + \tau) I)\, d = g` by Cholesky.

    ``hessian`` is a symmetric (n, n) and ``grad`` an (n,) ``cupy.ndarray`` of one float dtype
    on one device; ``damping`` is :math:`\lambda \ge 0`. The factorization
    :math:`A = H + \lambda I = L L^T` runs in cuSOLVER (``cupy.linalg.cholesky``) and the two
    triangular solves in cuBLAS (``cupyx.scipy.linalg.solve_triangular``).

    When :math:`A` is not positive definite, an increasing multiple of the identity is added
    until the factorization succeeds (Nocedal & Wright, *Numerical Optimization*, Alg. 3.3):
    with :math:`\beta = 10^{-3}\,\mathrm{mean}|a_{ii}|` (:math:`10^{-3}` if that is 0), start at :math:`\tau_0 = 0` if
    :math:`\min a_{ii} > 0`, else :math:`\tau_0 = \beta - \min a_{ii}`, and try
    :math:`\tau_{j+1} = \max(2\tau_j, \beta)`. The returned ``shift`` :math:`\tau` says how much
    was added (0.0 when :math:`A` was positive definite), so callers can report it.

    Returns ``(d, shift)`` with ``d`` a new array of ``grad``'s dtype; the step is
    :math:`x \leftarrow x - \mathrm{lr}\, d`. Raises ``TypeError``/``ValueError`` for bad input
    (non-finite entries included) and ``numpy.linalg.LinAlgError`` only if ``max_tries`` shifts
    all fail. Deciding positive-definiteness reads one status word, so unlike a first-order
    step this waits for the device.
    """
    cupy = require_cupy()
    for what, a in (("hessian", hessian), ("grad", grad)):
        if not is_cupy_array(a):
            raise TypeError(f"{what} must be a cupy.ndarray, got {_describe(a)}")
        if a.dtype != np.float32 and a.dtype != np.float64:
            raise TypeError(f"{what} must have dtype float32 or float64, got {a.dtype}")
    if hessian.ndim != 2 or hessian.shape[0] != hessian.shape[1]:
        raise ValueError(f"hessian must be a square (n, n) matrix, got shape {hessian.shape}")
    n = hessian.shape[0]
    if grad.shape != (n,):
        raise ValueError(f"grad must have shape ({n},) to match hessian {hessian.shape}, "
                         f"got {grad.shape}")
    if grad.dtype != hessian.dtype:
        raise TypeError(f"grad must have dtype {hessian.dtype} like hessian, got {grad.dtype}")
    if grad.device.id != hessian.device.id:
        raise ValueError(f"grad is on GPU {grad.device.id} but hessian is on GPU "
                         f"{hessian.device.id}; both must be on one device")
    damping = _validate.nonneg("damping", damping)
    max_tries = _validate.integer("max_tries", max_tries, low=1)

    import cupyx
    from cupyx.scipy.linalg import solve_triangular

    with cupy.cuda.Device(hessian.device.id):
        if n == 0:
            return cupy.empty((0,), dtype=grad.dtype), 0.0
        if not bool(cupy.isfinite(hessian).all()) or not bool(cupy.isfinite(grad).all()):
            raise ValueError("hessian and grad must be finite (found NaN or inf)")
        a = 0.5 * (hessian + hessian.T)           # the symmetric part (what potrf reads)
        diag = cupy.diagonal(a) + damping
        dmin, dmean = float(diag.min()), float(cupy.abs(diag).mean())
        beta = 1e-3 * dmean if dmean > 0 else 1e-3
        tau = 0.0 if dmin > 0 else beta - dmin
        eye = cupy.eye(n, dtype=hessian.dtype)
        for _ in range(int(max_tries)):
            try:
                with cupyx.errstate(linalg="raise"):
                    low = cupy.linalg.cholesky(a + (damping + tau) * eye)
                if not bool(cupy.isfinite(low).all()):
                    raise np.linalg.LinAlgError("non-finite Cholesky factor")
                break
            except np.linalg.LinAlgError:
                tau = max(2.0 * tau, beta)
        else:
            raise np.linalg.LinAlgError(
                f"hessian + shift * I was not positive definite for any shift tried "
                f"(last {tau:.3g} after {max_tries} tries)")
        y = solve_triangular(low, grad, lower=True)
        d = solve_triangular(low, y, lower=True, trans=1)
        return d, float(tau)
