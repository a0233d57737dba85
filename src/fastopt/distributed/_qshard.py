"""Optimizer state of any state format (float, bfloat16, int8 blockwise) across the shards of a
`ShardedOptimizer`: block-aligned shards, and the gather and scatter of one state slot.

Design note
-----------
An int8 state buffer is cut into blocks of 256 elements counted from its tensor's start, one
absmax per block, and a tensor below ``min_8bit_size`` keeps float32 state. For a sharded run
to equal the unsharded one bit for bit, a shard boundary inside a tensor must fall on a
multiple of 256 of that tensor (``aligned_shards``), the inner optimizer gets one parameter per
tensor part (so its blocks restart where the tensor's do), and each part takes the format of
its whole tensor (``StateFormat.whole_sizes``). The blocks of a flat buffer are then numbered
across its tensors (``BlockSpace``), and each rank's shard owns a contiguous range of block
numbers as it owns a contiguous range of elements: a slot is moved as up to three flat arrays,
each with its own ``*v`` collective -- float values (tensors with float state), uint16
(bfloat16 bits), and int8 codes (uint8, per element) with their absmax (float32, per block).
Which tensor has which format follows from the sizes and options alone, so every rank runs the
same collectives. Rank 0 builds and reads the single-process layout: per parameter a float
array, a uint16 array or a `Blockwise8`, as ``opt_cls.state_dict()`` holds them.
"""
import bisect

import numpy as np

from ..optim._state_format import saved_values, store_values
from ..state_format import QBLOCK, Blockwise8, dynamic_map, n_blocks
from .. import _table
from ._flat import Shards
from ._mpi import mpi_type

__all__ = ["aligned_shards", "BlockSpace", "slot_formats", "slot_signed", "gather_slot",
           "root_buffer", "scatter_slot", "part_buffer"]


def aligned_shards(layout, b, n_ranks):
    """`Shards` of flat buffer `b` whose inner boundaries fall on block boundaries of its tensors
    (a multiple of QBLOCK from a tensor's start, or a tensor's end), each the one nearest to the
    even split."""
    total = layout.sizes[b]
    cuts = []
    for i in layout.members[b]:
        _, off, n = layout.where[i]
        cuts.extend(range(off, off + n, QBLOCK))
    cuts.append(total)
    bounds = [0]
    for r in range(1, n_ranks):
        ideal = r * total / n_ranks
        k = bisect.bisect_left(cuts, ideal)
        near = min((c for c in cuts[max(k - 1, 0):k + 1]), key=lambda c: (abs(c - ideal), c))
        bounds.append(max(near, bounds[-1]))
    bounds.append(total)
    return Shards.from_bounds(bounds)


class BlockSpace:
    """The int8 blocks of flat buffer `b`, numbered across its tensors in order."""

    def __init__(self, layout, b):
        self.where = [layout.where[i] for i in layout.members[b]]
        self.first = {}
        count = 0
        for i in layout.members[b]:
            self.first[i] = count
            count += n_blocks(layout.where[i][2])
        self.total = count

    def before(self, x):
        """Blocks that lie before flat position x (a block boundary of every tensor)."""
        return sum(n_blocks(min(max(x - off, 0), n)) for _, off, n in self.where)

    def shards(self, shards):
        """The `Shards` of block numbers matching the element shards."""
        return Shards.from_bounds([self.before(lo) for lo in shards.displs] + [self.total])


def slot_formats(inner, layout, b, slot):
    """{parameter index: "float" | "bfloat16" | "int8"} of slot `slot` for the tensors of flat
    buffer `b` (from the inner optimizer's state format and each tensor's whole size)."""
    fmt = inner._state_format
    out = {}
    for i in layout.members[b]:
        f = "float32" if fmt is None else fmt.format_for(slot, layout.where[i][2])
        out[i] = "float" if f == "float32" else f
    return out


def _kinds(formats):
    """The flat arrays a slot moves as: (kind, dtype per element or None) in a fixed order."""
    used = set(formats.values())
    return [k for k in ("float", "bfloat16", "int8") if k in used]


def _collective_arrays(kind, dtype, n_elems, n_blocks_):
    if kind == "float":
        return {"values": np.zeros(n_elems, dtype)}
    if kind == "bfloat16":
        return {"bits": np.zeros(n_elems, np.uint16)}
    return {"codes": np.zeros(n_elems, np.uint8), "absmax": np.zeros(n_blocks_, np.float32)}


def slot_signed(inner, slot):
    """Whether slot `slot` of the inner optimizer's rule uses the signed int8 map."""
    return _table.KERNELS[inner.spec.kernel].state[slot].quant == _table.SIGNED


def gather_slot(comm, shards, space, formats, parts, dtype):
    """Collective: one state slot of a flat buffer onto rank 0.

    `parts`: this rank's (kind, flat start, flat stop, buffer) for every non-empty inner
    parameter of the buffer that has this slot. Returns on rank 0 {kind: {name: whole flat
    array}}, None elsewhere.
    """
    rank = comm.Get_rank()
    root = rank == 0
    lo, hi = shards.bounds(rank)
    bshards = space.shards(shards)
    blo = bshards.bounds(rank)[0]
    out = {}
    for kind in _kinds(formats):
        local = _collective_arrays(kind, dtype, hi - lo, bshards.counts[rank])
        for k, a, z, buf in parts:
            if k != kind:
                continue
            if kind == "float":
                local["values"][a - lo:z - lo] = np.asarray(buf).reshape(-1)
            elif kind == "bfloat16":
                local["bits"][a - lo:z - lo] = np.asarray(buf).reshape(-1)
            else:
                local["codes"][a - lo:z - lo] = buf.codes.reshape(-1)
                ba = space.before(a) - blo
                local["absmax"][ba:ba + buf.absmax.size] = buf.absmax
        whole = {}
        for name, arr in local.items():
            s = bshards if name == "absmax" else shards
            full = np.empty(sum(s.counts), arr.dtype) if root else None
            comm.Gatherv([arr, mpi_type(arr.dtype)],
                         [full, (s.counts, s.displs), mpi_type(arr.dtype)] if root else None,
                         root=0)
            whole[name] = full
        out[kind] = whole
    return out if root else None


def root_buffer(whole, kind, i, layout, space, shape, signed):
    """Rank 0: parameter i's buffer (single-process layout) from `gather_slot`'s arrays."""
    _, off, n = layout.where[i]
    if kind == "float":
        return whole["float"]["values"][off:off + n].reshape(shape).copy()
    if kind == "bfloat16":
        return whole["bfloat16"]["bits"][off:off + n].reshape(shape).copy()
    first = space.first[i]
    return Blockwise8(whole["int8"]["codes"][off:off + n].reshape(shape).copy(),
                      whole["int8"]["absmax"][first:first + n_blocks(n)].copy(),
                      dynamic_map(signed))


def _to_format(saved, kind, n, dtype, signed):
    """Rank 0: a saved buffer (any format) as flat arrays of the target `kind`."""
    if kind == "float":
        return {"values": np.asarray(saved_values(saved), dtype).reshape(-1)}
    if kind == "bfloat16":
        dst = np.empty(n, np.uint16)
        store_values(dst, saved if not isinstance(saved, np.ndarray) else saved.reshape(-1))
        return {"bits": dst}
    dst = Blockwise8.quantize(np.zeros(n, np.float32), signed)
    if isinstance(saved, Blockwise8):
        saved = Blockwise8(saved.codes.reshape(-1), saved.absmax, saved.qmap)
    else:
        saved = np.asarray(saved).reshape(-1)
    store_values(dst, saved)
    return {"codes": dst.codes, "absmax": dst.absmax}


def scatter_slot(comm, saved, shards, space, formats, layout, b, dtype, signed):
    """Collective: rank 0's saved buffers of one slot ({parameter index: buffer}, any format;
    None on other ranks) converted to each tensor's format and scattered along the shards.
    Returns this rank's {kind: {name: local flat array}}."""
    rank = comm.Get_rank()
    bshards = space.shards(shards)
    out = {}
    for kind in _kinds(formats):
        whole = None
        if rank == 0:
            whole = _collective_arrays(kind, dtype, layout.sizes[b], space.total)
            for i, buf in saved.items():
                if formats[i] != kind:
                    continue
                _, off, n = layout.where[i]
                arrays = _to_format(buf, kind, n, dtype, signed)
                for name, a in arrays.items():
                    if name == "absmax":
                        whole[name][space.first[i]:space.first[i] + a.size] = a
                    else:
                        whole[name][off:off + n] = a
        mine = {}
        for name, arr in _collective_arrays(kind, dtype, shards.counts[rank],
                                            bshards.counts[rank]).items():
            s = bshards if name == "absmax" else shards
            comm.Scatterv([whole[name], (s.counts, s.displs), mpi_type(arr.dtype)]
                          if rank == 0 else None, [arr, mpi_type(arr.dtype)], root=0)
            mine[name] = arr
        out[kind] = mine
    return out


def part_buffer(local, kind, a, z, lo, space, blo, signed):
    """This rank's buffer of the inner parameter covering flat [a, z) (shard from lo, its
    blocks from blo) out of `scatter_slot`'s arrays."""
    if kind == "float":
        return local["float"]["values"][a - lo:z - lo]
    if kind == "bfloat16":
        return local["bfloat16"]["bits"][a - lo:z - lo]
    ba = space.before(a) - blo
    return Blockwise8(local["int8"]["codes"][a - lo:z - lo],
                      local["int8"]["absmax"][ba:ba + n_blocks(z - a)], dynamic_map(signed))
