"""A stand-in for the parts of CuPy that fastopt.cuda's host logic touches, backed by host memory.

It lets CI (no GPU) test what fastopt.cuda does around the kernels: validation and its
messages, the pointer and chunk tables, the gradient-row refresh, the pinned-buffer ring,
stream ordering. "Device" arrays are NumPy arrays tagged with a device id, whose ``data.ptr``
is their real host address; ``memcpyAsync`` is a memmove. A launched kernel is emulated chunk
by chunk: it reads the pointer and chunk tables it was given, views the memory they point at,
and applies the CPU binding ``fastopt._kernels`` to each chunk's slice. The per-element rule
is the same, so a correct table layout gives results bit-identical to the CPU on whole arrays,
and a wrong one (a chunk missed or applied twice, a stale gradient pointer, a state row in the
wrong place) does not. What it cannot check, the real compilation and launch, is covered by
tests/test_cuda_source.py (nvcc) and tests/test_cuda.py (a GPU).
"""
import ctypes
import re
import types
import warnings

import numpy as np

_current_device = [0]
log = {"launches": [], "waits": 0, "syncs": 0, "copies": 0, "modules": [], "streams": [],
       "ops": [], "op_streams": []}
pending_events = [False]          # when True, new events stay "in flight" until released
_in_flight = []


def reset():
    _current_device[0] = 0
    log.update(launches=[], waits=0, syncs=0, copies=0, modules=[], streams=[], ops=[],
               op_streams=[])
    pending_events[0] = False
    _in_flight.clear()
    _Stream.current = _Stream.null


def installed(monkeypatch):
    """For a fixture (``yield from fake_cupy.installed(monkeypatch)``): this module is
    ``cupy`` for one test, its arrays report ``cupy`` as their module, and the log starts and
    ends empty."""
    import sys
    reset()
    monkeypatch.setitem(sys.modules, "cupy", sys.modules[__name__])
    monkeypatch.setattr(ndarray, "__module__", "cupy")
    yield sys.modules[__name__]
    reset()


def device_copy(a):
    """A stand-in device array holding a copy of `a`."""
    return ndarray(np.array(a, copy=True))


def release_events():
    """Complete every pending event (the device catching up)."""
    for ev in _in_flight:
        ev._done = True
    _in_flight.clear()


class _Flags:
    def __init__(self, a):
        self.c_contiguous = a.flags.c_contiguous


class _Data:
    def __init__(self, ptr):
        self.ptr = ptr


class _Device:
    def __init__(self, device=None):
        self.id = _current_device[0] if device is None else int(device)
        self._prev = []

    def __enter__(self):
        self._prev.append(_current_device[0])
        _current_device[0] = self.id
        return self

    def __exit__(self, *exc):
        _current_device[0] = self._prev.pop()


class ndarray:
    def __init__(self, a, device=None):
        self._a = a
        self.device = _Device(device)

    dtype = property(lambda self: self._a.dtype)
    shape = property(lambda self: self._a.shape)
    strides = property(lambda self: self._a.strides)
    size = property(lambda self: self._a.size)
    nbytes = property(lambda self: self._a.nbytes)
    ndim = property(lambda self: self._a.ndim)
    flags = property(lambda self: _Flags(self._a))
    data = property(lambda self: _Data(self._a.ctypes.data))
    T = property(lambda self: ndarray(self._a.T, self.device.id))

    @property
    def __cuda_array_interface__(self):
        """As CuPy's (version 3), pointing at the host memory behind the stand-in."""
        a = self._a
        strides = None if a.flags.c_contiguous else a.strides
        return {"shape": a.shape, "typestr": a.dtype.str, "strides": strides,
                "data": (a.ctypes.data, not a.flags.writeable), "version": 3}

    def __getitem__(self, idx):
        return ndarray(self._a[_unwrap(idx)], self.device.id)

    def __setitem__(self, idx, value):
        self._a[_unwrap(idx)] = _unwrap(value)

    def max(self):
        return ndarray(self._a.max(), self.device.id)

    def min(self):
        return ndarray(self._a.min(), self.device.id)

    def sum(self):
        return ndarray(self._a.sum(), self.device.id)

    def __int__(self):
        return int(self._a)

    def __float__(self):
        return float(self._a)

    def __bool__(self):
        return bool(self._a)

    def __neg__(self):
        return ndarray(-self._a, self.device.id)

    def reshape(self, *shape):
        return ndarray(self._a.reshape(*shape), self.device.id)

    def get(self):
        return self._a.copy()

    def __itruediv__(self, other):
        self._a /= other
        return self

    def __iadd__(self, other):
        self._a += _unwrap(other)
        return self

    def copy(self):
        return ndarray(self._a.copy(), self.device.id)

    def astype(self, dtype):
        return ndarray(self._a.astype(dtype), self.device.id)

    def view(self, dtype):
        return ndarray(self._a.view(dtype), self.device.id)

    def __len__(self):
        return len(self._a)


def _binary(op):
    def method(self, other):
        return ndarray(op(self._a, _unwrap(other)), self.device.id)
    return method


for _op, _fn in {"add": np.add, "sub": np.subtract, "mul": np.multiply,
                 "truediv": np.divide, "lt": np.less, "le": np.less_equal,
                 "gt": np.greater, "ge": np.greater_equal}.items():
    setattr(ndarray, f"__{_op}__", _binary(_fn))
    if _op in ("add", "sub", "mul", "truediv"):
        setattr(ndarray, f"__r{_op}__", _binary(lambda a, b, f=_fn: f(b, a)))
del _op, _fn


def _from_interface(obj):
    """A view of the memory an object's ``__cuda_array_interface__`` describes (version 2/3:
    shape, typestr, data=(pointer, read-only), strides in bytes or None for C order), as CuPy
    makes one: no copy. The "device" id is the object's ``device.index`` (0 if it has none)."""
    cai = obj.__cuda_array_interface__
    dtype = np.dtype(cai["typestr"])
    shape = tuple(cai["shape"])
    ptr, readonly = cai["data"]
    strides = cai.get("strides")
    if strides is None:
        strides, step = [], dtype.itemsize
        for n in reversed(shape):
            strides.append(step)
            step *= max(n, 1)
        strides = tuple(reversed(strides))
    n = int(np.prod(shape)) if shape else 1
    if n == 0 or ptr == 0:
        a = np.empty(shape, dtype)
    else:
        span = sum((k - 1) * st for k, st in zip(shape, strides)) + dtype.itemsize
        buf = (ctypes.c_char * span).from_address(ptr)
        a = np.ndarray(shape, dtype, buffer=buf, strides=strides)
    a.flags.writeable = not readonly
    device = getattr(getattr(obj, "device", None), "index", None)
    return ndarray(a, 0 if device is None else device)


def asarray(a, dtype=None):
    if isinstance(a, ndarray):
        return a
    if hasattr(a, "__cuda_array_interface__"):
        return _from_interface(a)
    return ndarray(np.array(a, dtype=dtype, copy=True))


def array(a, copy=True):
    src = a._a if isinstance(a, ndarray) else a
    return ndarray(np.array(src, copy=True))


def empty(shape, dtype=np.float64):
    return ndarray(np.empty(shape, dtype=dtype))


def zeros_like(a):
    return ndarray(np.zeros_like(a._a), a.device.id)


# ------------------------------------------------------------------- array operations
# NumPy's functions on the host memory behind the stand-in arrays: what the CuPy paths of
# Muon, Adafactor and SparseAdam call (ufuncs with out=, matmul, reductions, scatter). Every
# call is logged by name (log["ops"]), so a test can see what a step ran.
def _unwrap(x):
    if isinstance(x, ndarray):
        return x._a
    if isinstance(x, (list, tuple)):
        return type(x)(_unwrap(v) for v in x)
    return x


def _numpy_op(name, fn):
    def op(*args, **kwargs):
        log.setdefault("ops", []).append(name)
        log.setdefault("op_streams", []).append(_Stream.current.ptr)
        device = next((a.device.id for a in list(args) + list(kwargs.values())
                       if isinstance(a, ndarray)), _current_device[0])
        out = kwargs.get("out")
        result = fn(*_unwrap(args), **{k: _unwrap(v) for k, v in kwargs.items()})
        if out is not None:
            return out
        if isinstance(result, np.ndarray) or (name == "dot" and isinstance(result, np.generic)):
            return ndarray(np.asarray(result), device)      # CuPy's dot: a 0-d device array
        return result
    op.__name__ = name
    return op


_OPS = ("add", "subtract", "multiply", "divide", "sqrt", "maximum", "minimum", "right_shift",
        "bitwise_and", "isnan", "isfinite", "copyto", "matmul", "sum", "square", "abs", "all",
        "mean", "take", "cumsum", "concatenate", "where", "empty_like", "zeros", "ones",
        "logical_or", "any", "argmax", "argsort", "not_equal", "flatnonzero", "diff",
        "negative", "ascontiguousarray", "dot", "stack")


def __getattr__(name):
    """The array operations, as attributes only (module-level names would shadow builtins
    such as sum and all in this file)."""
    if name in _OPS:
        return _numpy_op(name, getattr(np, name))
    raise AttributeError(f"module 'fake_cupy' has no attribute {name!r}")


class _Stream:
    null = None
    current = None

    def __init__(self, ptr=None):
        self.ptr = id(self) if ptr is None else ptr
        self._prev = []

    def wait_event(self, ev):
        log["waits"] += 1

    def __enter__(self):
        self._prev.append(_Stream.current)
        _Stream.current = self
        return self

    def __exit__(self, *exc):
        _Stream.current = self._prev.pop()


class _ExternalStream(_Stream):
    """cupy.cuda.ExternalStream(ptr, device_id): a stream made elsewhere (torch's); deprecated
    in CuPy 14, as here."""

    def __init__(self, ptr, device_id=-1, *, _warn=True):
        if _warn:
            warnings.warn("ExternalStream is deprecated; use Stream.from_external",
                          DeprecationWarning, stacklevel=2)
        super().__init__(int(ptr))
        self.device_id = device_id

    def __enter__(self):
        if self.device_id >= 0 and self.device_id != _current_device[0]:
            raise RuntimeError(f"The device that the stream is created on ({self.device_id}) "
                               f"does not match with the current device ({_current_device[0]})")
        return super().__enter__()


def _from_external(obj):
    """cupy.cuda.Stream.from_external(obj) (CuPy >= 14): a stream over the handle that
    obj.__cuda_stream__() returns as (0, pointer), on the current device."""
    if not hasattr(obj, "__cuda_stream__"):
        raise AttributeError(f"{type(obj).__name__} does not implement __cuda_stream__")
    got = obj.__cuda_stream__()
    if not isinstance(got, tuple) or len(got) != 2:
        raise TypeError("__cuda_stream__ must return a 2-tuple")
    version, ptr = got
    if not isinstance(version, int) or not isinstance(ptr, int):
        raise TypeError("__cuda_stream__ must return (int, int)")
    if version != 0:
        raise ValueError(f"unsupported version {version} of __cuda_stream__")
    s = _ExternalStream(ptr, _current_device[0], _warn=False)
    s._foreign_stream_ref = obj
    return s


_Stream.from_external = staticmethod(_from_external)
_Stream.null = _Stream(0)
_Stream.current = _Stream.null


class _Event:
    def __init__(self, block=False, disable_timing=False):
        self._done = True

    def record(self, stream=None):
        self._done = not pending_events[0]
        if not self._done:
            _in_flight.append(self)

    @property
    def done(self):
        return self._done

    def synchronize(self):
        log["syncs"] += 1
        self._done = True


class _Pinned:
    def __init__(self, n):
        self._buf = (ctypes.c_char * n)()
        self.ptr = ctypes.addressof(self._buf)


def _memcpy_async(dst, src, n, kind, stream):
    assert kind == 1, "only host-to-device copies are expected"
    log["copies"] += 1
    ctypes.memmove(dst, src, n)


runtime = types.SimpleNamespace(memcpyAsync=_memcpy_async, memcpyHostToDevice=1,
                                getDeviceCount=lambda: 2)


def _view(ptr, n, dtype):
    if n == 0 or ptr == 0:
        return np.empty(0, dtype)
    buf = (ctypes.c_char * (n * dtype.itemsize)).from_address(ptr)
    return np.frombuffer(buf, dtype=dtype, count=n)


class _Kernel:
    def __init__(self, name, block):
        m = re.fullmatch(r"fo_(\w+)_multi_(f32|f64)", name)
        assert m, name
        self.opt, self.dtype = m.group(1), np.dtype(np.float32 if m.group(2) == "f32" else np.float64)
        self.block = block

    def __call__(self, grid, block, args):
        from fastopt import _kernels as K
        table, nseg, chunks, nchunks, *scalars, flags, used = args
        nseg, nchunks = int(nseg), int(nchunks)
        assert isinstance(flags, np.int32) and isinstance(used, np.int32)
        assert all(isinstance(s, np.float64) for s in scalars)
        assert grid == (nchunks,) and block == (self.block,), (grid, block)
        log["launches"].append((self.opt, self.dtype, nchunks))
        log["streams"].append(_Stream.current.ptr)
        tab = table._a.view(np.uint64)
        ch = chunks._a
        for c in range(nchunks):
            s, lo, hi = (int(x) for x in ch[[c, nchunks + c, 2 * nchunks + c]])
            rows = [int(tab[r * nseg + s]) for r in range(5)]
            p, g = (_view(rows[r], hi, self.dtype)[lo:] for r in (0, 1))
            plan = K.Plan([p])
            for k in range(3):
                if rows[2 + k] and int(used) >> k & 1:   # the kernel touches only used state
                    plan.set_state(k, [_view(rows[2 + k], hi, self.dtype)[lo:]])
            getattr(K, self.opt)(plan, [g], *(float(x) for x in scalars), int(flags))


class _QKernel:
    """A low-bit state kernel (fastopt._cuda_qstate): block b of the launch is quantization
    block b of the block table; each is emulated by the CPU binding fastopt._qstate on views of
    that block's elements (its codes, its one absmax, the map) that the table points at."""

    def __init__(self, name):
        m = re.fullmatch(r"fo_(\w+)_qstate_f32", name)
        assert m, name
        self.opt = m.group(1)

    def __call__(self, grid, block, args):
        from fastopt import _qstate as Q
        from fastopt.state_format import Blockwise8
        table, nseg, blocks, nblocks, *scalars, flags, used = args
        nseg, nblocks = int(nseg), int(nblocks)
        assert isinstance(flags, np.int32) and isinstance(used, np.int32)
        assert all(isinstance(s, np.float64) for s in scalars)
        assert grid == (nblocks,) and block == (256,), (grid, block)
        log["launches"].append((self.opt, "qstate", nblocks))
        log["streams"].append(_Stream.current.ptr)
        tab = table._a.view(np.uint64)
        bl = blocks._a
        f32 = np.dtype(np.float32)
        for b in range(nblocks):
            s, c, n = (int(x) for x in bl[[b, nblocks + b, 2 * nblocks + b]])
            assert c % 256 == 0 and c < n
            rows = [int(tab[r * nseg + s]) for r in range(14)]
            m = min(256, n - c)
            p, g = (_view(rows[r], n, f32)[c:c + m] for r in (0, 1))
            plan = Q.Plan([p])
            for q in range(3):
                if not (rows[2 + q] and int(used) >> q & 1):
                    continue
                fmt = rows[11 + q]
                if fmt == 0:
                    buf = _view(rows[2 + q], n, f32)[c:c + m]
                elif fmt == 1:
                    buf = _view(rows[2 + q], n, np.dtype(np.uint16))[c:c + m]
                else:
                    assert fmt == 2, fmt
                    buf = Blockwise8(_view(rows[2 + q], n, np.dtype(np.uint8))[c:c + m],
                                     _view(rows[5 + q], -(-n // 256), f32)[c // 256:c // 256 + 1],
                                     _view(rows[8 + q], 256, f32))
                plan.set_state(q, [buf])
            getattr(Q, self.opt)(plan, [g], *(float(x) for x in scalars), int(flags))


class RawModule:
    def __init__(self, code=None, options=()):
        m = re.search(r"#define FO_BLOCK (\d+)", code)
        self.block = int(m.group(1)) if m else None     # None: the low-bit state module
        self.code = code
        log["modules"].append((code, options))

    def get_function(self, name):
        assert f" {name}(" in self.code or f"\n{name}(" in self.code, name
        if name.endswith("_qstate_f32"):
            return _QKernel(name)
        return _Kernel(name, self.block)


cuda = types.SimpleNamespace(
    Device=_Device, Event=_Event, Stream=_Stream, ExternalStream=_ExternalStream,
    runtime=runtime,
    get_current_stream=lambda: _Stream.current,
    alloc_pinned_memory=_Pinned,
)
