"""Flat layouts: parameters packed into one buffer per dtype, and contiguous 1/N shards of it.

Design note
-----------
Collectives are cheapest on few large contiguous buffers, so both distributed optimizers see
the parameters as one flat vector per dtype (float64 first, then float32; within a dtype, in
parameter order). ``FlatLayout`` holds where each parameter lies in its buffer; ``Shards``
splits a buffer of length T over N ranks into contiguous pieces of T // N or T // N + 1
elements (the first T % N ranks take one more), the split MPI's ``*v`` collectives take as
``(counts, displacements)``. Everything here is plain index arithmetic, computed once.
"""
import numpy as np

from .._kernels import refuse_subclass
from ..optim.base import _NONFINITE as NONFINITE

__all__ = ["check_param", "signature", "nonfinite_problem", "FlatLayout", "Shards"]

_FLOATS = (np.dtype(np.float64), np.dtype(np.float32))


def check_param(p, name):
    """TypeError/ValueError unless `p` is a float32/float64, C-contiguous, writable ndarray."""
    if not isinstance(p, np.ndarray):
        raise TypeError(f"{name} must be a numpy.ndarray of float32 or float64 (the distributed "
                        f"optimizers work on host arrays), got {type(p).__module__}."
                        f"{type(p).__qualname__}")
    refuse_subclass(p, name)
    if p.dtype not in _FLOATS:
        raise TypeError(f"{name} must have dtype float32 or float64, got {p.dtype}")
    if not p.flags.c_contiguous:
        raise ValueError(f"{name} must be C-contiguous (use numpy.ascontiguousarray)")
    if not p.flags.writeable:
        raise ValueError(f"{name} must be writable (it is updated in place)")


def nonfinite_problem(nonfinite):
    """Error message (str) unless `nonfinite` is one of "ignore", "skip", "raise", else None."""
    if isinstance(nonfinite, str) and nonfinite in NONFINITE:
        return None
    return f"nonfinite must be one of {NONFINITE}, got {nonfinite!r}"


def signature(params):
    """What every rank must agree on: each parameter's dtype and shape."""
    return [(f"params[{i}]", f"{p.dtype} array of shape {p.shape}") for i, p in enumerate(params)]


class FlatLayout:
    """Where each parameter lies in the flat buffer of its dtype.

    Attributes: ``dtypes`` (buffer order), ``sizes`` (elements per buffer), ``members[b]``
    (indices of the parameters in buffer b, in order), and per parameter
    ``where[i] = (buffer index, offset, size)``.
    """

    def __init__(self, params):
        self.dtypes = [d for d in _FLOATS if any(p.dtype == d for p in params)]
        self.sizes = [0] * len(self.dtypes)
        self.where = []
        for p in params:
            b = self.dtypes.index(p.dtype)
            self.where.append((b, self.sizes[b], p.size))
            self.sizes[b] += p.size
        self.members = [[i for i, w in enumerate(self.where) if w[0] == b]
                        for b in range(len(self.dtypes))]
        self._shapes = [p.shape for p in params]
        self._param_dtypes = [p.dtype for p in params]

    def grad_problem(self, grads):
        """Error message (str) unless `grads` matches the parameters one to one, else None."""
        if not isinstance(grads, (list, tuple)):
            return f"grads must be a list of arrays, got {type(grads).__name__}"
        if len(grads) != len(self._shapes):
            return (f"grads has {len(grads)} arrays but the optimizer has {len(self._shapes)} "
                    "parameters")
        if all(type(g) is np.ndarray for g in grads) \
                and [g.shape for g in grads] == self._shapes \
                and [g.dtype for g in grads] == self._param_dtypes:
            return None
        for i, (g, shape, dtype) in enumerate(zip(grads, self._shapes, self._param_dtypes)):
            if not isinstance(g, np.ndarray):
                return f"grads[{i}] must be a numpy.ndarray, got {type(g).__name__}"
            try:
                refuse_subclass(g, f"grads[{i}]")
            except TypeError as e:
                return str(e)
            if g.shape != shape or g.dtype != dtype:
                return (f"grads[{i}] must be a {dtype} array of shape {shape} like params[{i}], "
                        f"got {g.dtype} {g.shape}")
        return None

    def empty(self, extra=0):
        """Fresh buffers, one per dtype, each `extra` elements longer than its parameters."""
        return [np.empty(n + extra, d) for n, d in zip(self.sizes, self.dtypes)]

    def pack(self, arrays, buffers):
        """Copy the arrays (shaped like the parameters) into the head of each buffer."""
        for b, members in enumerate(self.members):
            np.concatenate([arrays[i].reshape(-1) for i in members],
                           out=buffers[b][:self.sizes[b]])

    def views(self, buffers, shapes=None):
        """Per parameter, a view of its place in `buffers` (flat, or shaped as `shapes`)."""
        out = [buffers[b][off:off + n] for b, off, n in self.where]
        return out if shapes is None else [v.reshape(s) for v, s in zip(out, shapes)]

    def unpacker(self, buffers, arrays):
        """A function copying each parameter's place in `buffers` into its array, in place."""
        pairs = [(a.reshape(-1), v) for a, v in zip(arrays, self.views(buffers))]

        def unpack():
            for dst, src in pairs:
                dst[...] = src
        return unpack


class Shards:
    """Contiguous split of `total` elements over `n` ranks: counts[r], displs[r], bounds."""

    def __init__(self, total, n):
        base, extra = divmod(total, n)
        self.counts = [base + (r < extra) for r in range(n)]
        self.displs = [0] * n
        for r in range(1, n):
            self.displs[r] = self.displs[r - 1] + self.counts[r - 1]

    @classmethod
    def from_bounds(cls, bounds):
        """The split with rank r's shard at [bounds[r], bounds[r + 1]) (non-decreasing)."""
        self = cls.__new__(cls)
        self.displs = list(bounds[:-1])
        self.counts = [z - a for a, z in zip(bounds[:-1], bounds[1:])]
        return self

    def bounds(self, rank):
        """(start, stop) of `rank`'s shard."""
        return self.displs[rank], self.displs[rank] + self.counts[rank]

    def owner_pieces(self, start, stop):
        """Split [start, stop) at shard boundaries: [(rank, piece_start, piece_stop), ...]."""
        pieces = []
        for r, (lo, n) in enumerate(zip(self.displs, self.counts)):
            a, b = max(start, lo), min(stop, lo + n)
            if a < b:
                pieces.append((r, a, b))
        return pieces
