"""torch's arithmetic on a tensor hyperparameter (a one-element tensor ``lr`` or beta), for the
per-step scalars of fastopt.torch's table optimizers.

Design note
-----------
torch.optim keeps a tensor ``lr`` (or tensor betas) a 0-d tensor through its per-step scalar
math: ``lr / bias_correction1``, ``1 - lr * weight_decay``, ``1 - beta2 ** step`` are 0-d
tensor operations in the tensor's dtype, so a float32 ``lr`` rounds each of them to float32
even when the parameters are float64 (the kernels then read the rounded value). The table's
runners evaluate the same expressions (fastopt._table: a kernel's ``scalars``, an optimizer's
``advance``) on whatever numbers they are given, so handing them a :class:`TensorScalar`
instead of the tensor's Python value reproduces torch's numbers: a TensorScalar does every
operation on the 0-d tensor it wraps, with torch's own kernels (not imitated: torch's float32
``x ** 0.5`` of a 0-d tensor, for one, is not always NumPy's correctly rounded square root),
and ``float()`` gives the value the kernels take. Tensor betas are wrapped for Adam and AdamW,
the torch.optim classes that take them. Only a group with a tensor hyperparameter pays for it (a few
microseconds per operation, a dozen operations per group and step).

torch's fused kernels read a tensor ``lr`` as a double (``lr.item()``), so a fused group keeps
plain numbers (`torch_math`).
"""
import torch

__all__ = ["TensorScalar", "torch_math"]

_NUMBER = (int, float)


def _unwrap(x):
    return x.tensor if isinstance(x, TensorScalar) else x


def _binary(op):
    def forward(self, other):
        if not isinstance(other, (TensorScalar, *_NUMBER)):
            return NotImplemented
        return TensorScalar(op(self.tensor, _unwrap(other)))

    def reverse(self, other):
        if not isinstance(other, _NUMBER):
            return NotImplemented
        return TensorScalar(op(other, self.tensor))
    return forward, reverse


def _compare(op):
    def compare(self, other):
        if not isinstance(other, (TensorScalar, *_NUMBER)):
            return NotImplemented
        return op(float(self), float(other))
    return compare


class TensorScalar:
    """A one-element floating tensor hyperparameter, as a number whose arithmetic is torch's
    on the 0-d tensor (see the module docstring)."""

    __slots__ = ("tensor",)

    def __init__(self, tensor):
        self.tensor = tensor            # a 0-d floating tensor, outside autograd

    @classmethod
    def of(cls, tensor):
        """The TensorScalar of a one-element floating tensor, else None."""
        if not tensor.is_floating_point() or tensor.numel() != 1 \
                or tensor.device.type == "meta":
            return None
        return cls(tensor.detach().reshape(()))

    __add__, __radd__ = _binary(lambda a, b: a + b)
    __sub__, __rsub__ = _binary(lambda a, b: a - b)
    __mul__, __rmul__ = _binary(lambda a, b: a * b)
    __truediv__, __rtruediv__ = _binary(lambda a, b: a / b)
    __pow__, __rpow__ = _binary(lambda a, b: a ** b)

    def __neg__(self):
        return TensorScalar(-self.tensor)

    def __pos__(self):
        return self

    def __abs__(self):
        return TensorScalar(abs(self.tensor))

    def __float__(self):
        return float(self.tensor.item())

    def __bool__(self):
        return bool(self.tensor.item())

    __lt__ = _compare(lambda a, b: a < b)
    __le__ = _compare(lambda a, b: a <= b)
    __gt__ = _compare(lambda a, b: a > b)
    __ge__ = _compare(lambda a, b: a >= b)
    __eq__ = _compare(lambda a, b: a == b)
    __ne__ = _compare(lambda a, b: a != b)
    __hash__ = None

    def __repr__(self):
        return f"TensorScalar({self.tensor!r})"


def torch_math(group, values, betas=False):
    """`values` (a group's hyperparameters as plain numbers) with its tensor ``lr`` (and, with
    `betas`, its tensor betas: torch's Adam and AdamW, the classes of torch.optim that take
    them) as TensorScalars, for the per-step scalars of a torch.optim optimizer's step;
    unchanged for a fused group (torch's fused kernels read them as doubles) or without
    tensors."""
    if values.get("fused"):
        return values
    out = values
    lr = group.get("lr")
    if isinstance(lr, torch.Tensor):
        lr = TensorScalar.of(lr)
        if lr is not None:
            out = {**out, "lr": lr}
    betas = group.get("betas") if betas else None
    if isinstance(betas, (tuple, list)) and any(isinstance(b, torch.Tensor) for b in betas):
        wrapped = [TensorScalar.of(b) if isinstance(b, torch.Tensor) else None for b in betas]
        out = {**out, "betas": tuple(v if w is None else w
                                     for w, v in zip(wrapped, values["betas"]))}
    return out
