"""A stand-in for torch CUDA tensors, backed by host memory (with tests/fake_cupy.py: no GPU).

``CudaTensor`` is a CPU tensor that says it lives on ``cuda:0``: ``device``, ``is_cuda`` and a
``__cuda_array_interface__`` as torch's (refused for a tensor that requires grad; byte
strides, None when contiguous) pointing at its host memory. Results of torch operations on it
are CudaTensors too (torch's default ``__torch_function__``), so state made by
``torch.full_like`` of a parameter is "on the device", and moves to a CUDA device
(``.to(device="cuda")``, as torch.optim's load_state_dict does) stay in host memory.
``current_stream`` replaces ``torch.cuda.current_stream`` with a stream whose ``cuda_stream``
is ``STREAM``, the pointer fastopt.torch should hand to CuPy.

What this can show: which backend fastopt.torch dispatches to, that the CuPy views share the
tensors' memory, where state is made, on which stream kernels launch, and the errors. What it
cannot: real device memory, real streams, the real CuPy (tests/test_torch_cuda_gpu.py).
"""
import types

import torch

STREAM = 0x5EED
_TYPESTR = {torch.float32: "<f4", torch.float64: "<f8", torch.float16: "<f2", torch.int16: "<i2",
            torch.uint8: "|u1"}


def _host(device):
    return "cpu" if device is not None and torch.device(device).type == "cuda" else device


class CudaTensor(torch.Tensor):
    @property
    def device(self):
        return torch.device("cuda", 0)

    @property
    def is_cuda(self):
        return True

    @property
    def __cuda_array_interface__(self):
        if self.requires_grad:
            raise RuntimeError("Can't get __cuda_array_interface__ on Variable that requires "
                               "grad. If gradients aren't required, use var.detach() to get "
                               "Variable that doesn't require grad.")
        if self.dtype not in _TYPESTR:
            raise TypeError(f"dtype {self.dtype} is not supported by __cuda_array_interface__")
        size = self.element_size()
        strides = None if self.is_contiguous() else tuple(s * size for s in self.stride())
        return {"typestr": _TYPESTR[self.dtype], "shape": tuple(self.shape),
                "strides": strides, "data": (self.data_ptr(), False), "version": 2}

    @classmethod
    def __torch_function__(cls, func, types_, args=(), kwargs=None):
        kwargs = dict(kwargs or {})
        if "device" in kwargs:
            kwargs["device"] = _host(kwargs["device"])
        args = tuple(_host(a) if isinstance(a, torch.device) else a for a in args)
        return super().__torch_function__(func, types_, args, kwargs)


def cuda(t):
    """A CudaTensor copy of tensor `t` (a Parameter stays a Parameter)."""
    out = t.detach().clone().as_subclass(CudaTensor)
    if isinstance(t, torch.nn.Parameter):
        return torch.nn.Parameter(out, requires_grad=t.requires_grad)
    return out


def current_stream(device=None):
    return types.SimpleNamespace(cuda_stream=STREAM)


_as_tensor = torch.as_tensor


def as_tensor(data, dtype=None, device=None):
    """torch.as_tensor, where a stand-in CuPy array (tests/fake_cupy.py) put on a CUDA device
    becomes a CudaTensor over the same host memory (zero-copy, as torch views a CuPy array
    through its __cuda_array_interface__)."""
    if type(data).__module__ in ("cupy", "fake_cupy") and hasattr(data, "_a") \
            and device is not None and torch.device(device).type == "cuda":
        out = torch.from_numpy(data._a).as_subclass(CudaTensor)
        return out if dtype is None else out.to(dtype)
    return _as_tensor(data, dtype=dtype, device=device)


def installed(monkeypatch, chunk=5):
    """For a fixture (``yield from fake_torch_cuda.installed(monkeypatch)``): the stand-in
    CuPy installed as `fake_cupy.installed` does, fastopt.cuda's kernel caches emptied (chunks
    of `chunk` elements), torch's current stream and ``torch.as_tensor`` of a CuPy array
    faked; yields fake_cupy."""
    import fake_cupy as fk
    from fastopt import _torch_cuda, cuda as fo_cuda
    for fake in fk.installed(monkeypatch):
        monkeypatch.setattr(fo_cuda, "_MODULES", {})
        monkeypatch.setattr(fo_cuda, "_KERNELS", {})
        monkeypatch.setattr(fo_cuda, "CHUNK", chunk)
        monkeypatch.setattr(torch.cuda, "current_stream", current_stream)
        monkeypatch.setattr(torch, "as_tensor", as_tensor)
        monkeypatch.setattr(_torch_cuda, "_STREAMS", {})
        yield fake
        fk.release_events()
