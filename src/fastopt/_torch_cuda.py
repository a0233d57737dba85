"""CUDA tensors in fastopt.torch: fastopt's CUDA kernels (fastopt.cuda, CuPy) on torch's memory.

A CUDA parameter, its gradient and its state are handed to fastopt.cuda as CuPy arrays made by
``cupy.asarray`` from the tensors' ``__cuda_array_interface__``: views of torch's memory,
nothing copied (``array``). The state buffers are torch tensors made on the parameter's device
(``torch.full_like``), so they move with torch's ``state_dict`` like torch.optim's. Each kernel
launch runs on torch's current stream of the parameters' device (``stream``: CuPy's view of
``torch.cuda.current_stream(device).cuda_stream``, by ``cupy.cuda.Stream.from_external`` on
CuPy >= 14, ``cupy.cuda.ExternalStream``, deprecated there, before), so it is
ordered after the backward pass that wrote the gradients and before whatever torch queues
next, with no synchronization.

fastopt's CUDA kernels are float32 and float64 (``check``: 16-bit CUDA parameters raise
TypeError); dense non-contiguous tensors are handled by fastopt._torch_layout as on the CPU,
with temporaries on the device. A param group holds parameters of one device only
(``check_group``).
"""
import contextlib

import torch

__all__ = ["DTYPES", "array", "tensor", "plan", "module", "on", "stream", "check", "check_group"]

DTYPES = (torch.float32, torch.float64)
_STREAMS = {}           # (device index, stream pointer) -> CuPy's stream over it


class _Handle:
    """A raw CUDA stream in the CUDA stream protocol (``__cuda_stream__``, version 0), which
    ``cupy.cuda.Stream.from_external`` reads."""
    __slots__ = ("ptr",)

    def __init__(self, ptr):
        self.ptr = ptr

    def __cuda_stream__(self):
        return (0, self.ptr)


def _external(cupy, ptr, index):
    """CuPy's stream over the raw stream `ptr` of device `index` (not owned by CuPy)."""
    from_external = getattr(cupy.cuda.Stream, "from_external", None)
    if from_external is None:                   # CuPy < 14
        return cupy.cuda.ExternalStream(ptr, index)
    with cupy.cuda.Device(index):               # it takes the current device's id
        return from_external(_Handle(ptr))


def _cuda():
    from . import cuda
    return cuda


def array(t):
    """The CuPy view of a CUDA tensor's memory (zero-copy, through __cuda_array_interface__)."""
    cupy = _cuda().require_cupy()
    return cupy.asarray(t.detach())


def tensor(a, device):
    """A torch tensor on `device` viewing CuPy array `a` (zero-copy, through its
    __cuda_array_interface__; the tensor keeps `a` alive)."""
    return torch.as_tensor(a, device=device)


def plan(arrays, name="params"):
    """A fastopt.cuda plan over the CuPy views `arrays` of a group's parameters."""
    return _cuda().Plan(arrays, name, 0)


def module():
    """The module of step functions for CUDA plans (fastopt.cuda: the names of
    fastopt._kernels)."""
    return _cuda()


@contextlib.contextmanager
def on(device):
    """A context running CuPy work on `device` (its CuPy device made current) on torch's
    current stream there (`stream`): CuPy refuses a stream of another device than the
    current one."""
    cupy = _cuda().require_cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    with cupy.cuda.Device(index), stream(device):
        yield


def stream(device):
    """torch's current stream on `device` as a CuPy stream (a context manager making it
    CuPy's current stream; enter it through `on`, which makes its device current first)."""
    cupy = _cuda().require_cupy()
    index = device.index if device.index is not None else torch.cuda.current_device()
    ptr = torch.cuda.current_stream(device).cuda_stream
    key = (index, ptr)
    s = _STREAMS.get(key)
    if s is None:
        if len(_STREAMS) > 64:
            _STREAMS.clear()
        s = _STREAMS[key] = _external(cupy, ptr, index)
    return s


def check(t, what, like=None):
    """TypeError naming `what` for a CUDA tensor fastopt's CUDA kernels cannot take (dtype,
    or another device than its parameter `like`)."""
    if like is not None and t.device != like.device:
        raise TypeError(f"{what} is on {t.device}, its parameter on {like.device}; a "
                        "parameter's gradient and state must be on its device")
    if like is None and t.dtype not in DTYPES:
        raise TypeError(f"{what} is a {t.dtype} CUDA tensor; fastopt's CUDA kernels take "
                        "float32 and float64 (16-bit parameters: on CUDA use float32 "
                        "parameters with torch.autocast, or torch.optim)")


def check_group(params, where):
    """ValueError if the parameters of one group are on more than one device."""
    devices = []
    for p in params:
        if isinstance(p, torch.Tensor) and p.device not in devices:
            devices.append(p.device)
    if len(devices) > 1:
        names = ", ".join(str(d) for d in devices)
        raise ValueError(f"{where} holds parameters on {names}; fastopt.torch runs one kernel "
                         "per group on one device: put the CPU and the CUDA parameters (and "
                         "each GPU's) in separate param groups")
