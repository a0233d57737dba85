"""Memory layouts of CPU tensors for fastopt.torch: what the kernels see of each parameter.

The kernels update flat, contiguous runs of elements in place, element by element; the order of
the elements does not matter as long as a parameter, its gradient and its state buffers agree on
it. So a parameter is handed to the kernels as

- itself, when it is contiguous (the common case; the arrays keep its shape);
- its storage, when it is *dense* in another order (channels_last, transposed, permuted: its
  elements fill one block of memory without gaps or overlap): a flat view of that block, in
  memory order. A gradient or state tensor with the same strides is handed over the same way,
  so everything is updated in place and the layout is kept;
- a contiguous temporary otherwise (a slice with gaps): gathered before the kernel, scattered
  back after it.

A gradient or state tensor whose strides differ from its parameter's order is gathered into a
temporary of the parameter's order (state is scattered back after the step). Temporaries are
allocated once per parameter and buffer, when first needed, and reused at every step.

The arrays are NumPy views of CPU tensors and CuPy views of CUDA tensors (``array_of``;
fastopt._torch_cuda); temporaries are made on the tensor's device.
"""
import torch

__all__ = ["Layout", "dense_strides", "overlaps", "numpy_of", "array_of"]


def dense_strides(t):
    """``t.stride()`` if the elements of `t` fill one block of memory without gaps or overlap
    (in any order of its dimensions), else None. Dimensions of size 1 do not count."""
    dims = sorted((st, n) for n, st in zip(t.shape, t.stride()) if n != 1)
    expected = 1
    for st, n in dims:
        if st != expected:
            return None
        expected *= n
    return tuple(t.stride())


def overlaps(t):
    """Whether two elements of `t` share memory (expand() views): it cannot be written to."""
    return t.numel() > 1 and torch._debug_has_internal_overlap(t) == 1


def _contiguous_strides(shape):
    strides, step = [], 1
    for n in reversed(shape):
        strides.append(step)
        step *= max(n, 1)
    return tuple(reversed(strides))


def _same_order(t, strides):
    return all(a == b for a, b, n in zip(t.stride(), strides, t.shape) if n != 1)


def numpy_of(t):
    """The NumPy view of a CPU tensor's memory (no copy); bfloat16 as ml_dtypes.bfloat16."""
    if t.dtype == torch.bfloat16:
        import ml_dtypes
        return t.detach().view(torch.int16).numpy().view(ml_dtypes.bfloat16)
    return t.detach().numpy() if t.requires_grad else t.numpy()


def array_of(t):
    """The array the kernels take for tensor `t`, sharing its memory: NumPy for a CPU tensor,
    CuPy for a CUDA one (fastopt._torch_cuda)."""
    if t.is_cuda:
        from . import _torch_cuda
        return _torch_cuda.array(t)
    return numpy_of(t)


_numpy = array_of


class Layout:
    """How one parameter, its gradient and its state buffers are handed to the kernels.

    ``array`` is the parameter's array for the plan; ``plain`` is True when the parameter is
    contiguous and nothing of it is staged (the arrays are then the tensors' own, shaped like
    them). ``grad(g)`` and ``state(slot, t)`` return the arrays for a gradient and a state
    tensor, in the parameter's order; ``gather()`` and ``scatter()`` move the staged tensors
    in and out of their temporaries around a kernel call.
    """
    __slots__ = ("shape", "strides", "n", "contiguous", "array", "staged", "temps")

    def __init__(self, p):
        self.shape, self.n = tuple(p.shape), p.numel()
        self.contiguous = p.is_contiguous()
        self.temps = {}                 # "grad" or a state slot -> a flat temporary
        self.staged = {}                # "param" or a state slot -> (tensor, temporary view)
        if self.contiguous:
            self.strides = _contiguous_strides(self.shape)
            self.array = _numpy(p)
            return
        strides = dense_strides(p)
        if strides is not None:
            self.strides = strides
            self.array = _numpy(self._flat(p))
        else:                           # gaps: staged through a contiguous temporary
            self.strides = _contiguous_strides(self.shape)
            self.array = self._stage("param", p)

    @property
    def plain(self):
        return self.contiguous and not self.staged

    def _flat(self, t):
        return t.detach().as_strided((self.n,), (1,))

    def _view(self, t):
        """The array of `t` in the parameter's order, sharing its memory, or None."""
        if self.contiguous:
            return _numpy(t) if t.is_contiguous() else None
        if _same_order(t, self.strides):
            return _numpy(self._flat(t))
        return None

    def _temp(self, key, like):
        temp = self.temps.get(key)
        if temp is None or temp.dtype != like.dtype:
            temp = self.temps[key] = like.new_empty((self.n,))   # on its device
        return temp

    def _ordered(self, temp):
        return temp.as_strided(self.shape, self.strides)

    def _array_of(self, temp):
        a = _numpy(temp)
        return a.reshape(self.shape) if self.contiguous else a

    def _stage(self, key, t):
        temp = self._temp(key, t)
        self.staged[key] = (t, self._ordered(temp))
        return self._array_of(temp)

    def grad(self, g):
        """The gradient's array: its own memory when in the parameter's order, else a copy in
        the parameter's order (made now)."""
        a = self._view(g)
        if a is not None:
            return a
        temp = self._temp("grad", g)
        self._ordered(temp).copy_(g)
        return self._array_of(temp)

    def state(self, slot, t):
        """The array of state tensor `t` (slot `slot`); staged when not in the parameter's
        order. ``t=None`` drops the slot."""
        self.staged.pop(slot, None)
        if t is None:
            return None
        a = self._view(t)
        return a if a is not None else self._stage(slot, t)

    def gather(self):
        for t, view in self.staged.values():
            view.copy_(t)

    def scatter(self):
        for t, view in self.staged.values():
            t.copy_(view)
