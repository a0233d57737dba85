"""The MPI plumbing shared by the distributed classes: lazy mpi4py import, collective checks.

Design note
-----------
mpi4py is imported only when a distributed object is built (importing it initialises MPI), so
``import fastopt`` and ``import fastopt.distributed`` never need it. Every check whose outcome
could differ between ranks goes through ``agree``: each rank runs its local part, the outcomes
are all-gathered (one small pickled message), and either every rank goes on or every rank
raises the same error. A rank that fails alone therefore never leaves the others waiting in a
collective that it will not join.
"""
import numpy as np

__all__ = ["mpi", "world", "agree", "check_same", "bcast_tree", "mpi_type"]

_INSTALL_HINT = ('fastopt.distributed needs mpi4py and an MPI library: pip install "fastopt[mpi]" '
                 "(mpi4py + the mpich wheel), or pip install mpi4py built against the system's "
                 "MPI (see the README, section Distributed training)")


def mpi():
    """The mpi4py.MPI module, or an ImportError that names the [mpi] extra."""
    try:
        from mpi4py import MPI
    except ImportError as e:
        raise ImportError(f"{_INSTALL_HINT} ({e})") from e
    return MPI


def world(comm):
    """`comm`, or MPI.COMM_WORLD when it is None; TypeError for anything but a communicator."""
    MPI = mpi()
    if comm is None:
        return MPI.COMM_WORLD
    if not isinstance(comm, MPI.Comm) or comm == MPI.COMM_NULL:
        raise TypeError(f"comm must be an mpi4py communicator (e.g. MPI.COMM_WORLD), got "
                        f"{type(comm).__name__}")
    return comm


def mpi_type(dtype):
    """The MPI datatype of a float32/float64 NumPy dtype (or uint8/uint16: int8 codes and
    bfloat16 bits of low-bit optimizer state)."""
    MPI = mpi()
    return {np.dtype(np.float32): MPI.FLOAT, np.dtype(np.float64): MPI.DOUBLE,
            np.dtype(np.uint8): MPI.UINT8_T, np.dtype(np.uint16): MPI.UINT16_T}[np.dtype(dtype)]


_KINDS = (FileNotFoundError, PermissionError, TypeError, ValueError, OSError)


def agree(comm, local, *args):
    """Run `local(*args)` on every rank; return its result, or raise the same error everywhere.

    Catches the errors of bad input and of files (TypeError, ValueError, OSError); the first
    failing rank's error is raised on every rank, as the same built-in type, prefixed with
    that rank's number.
    """
    try:
        result, failure = local(*args), None
    except _KINDS as e:
        kind = next(k for k in _KINDS if isinstance(e, k))
        result, failure = None, (_KINDS.index(kind), str(e))
    failures = comm.allgather(failure)
    for rank, f in enumerate(failures):
        if f is not None:
            raise _KINDS[f[0]](f"on rank {rank} of {comm.Get_size()}: {f[1]}")
    return result


def check_same(comm, signature, what):
    """Raise ValueError on every rank unless all ranks pass an equal `signature`.

    `signature` is a list of ``(description, value)`` items (e.g. one per parameter); the error
    names the first item that differs and the two ranks it differs between.
    """
    signatures = comm.allgather(signature)
    ref = signatures[0]
    for rank, sig in enumerate(signatures):
        if sig == ref:
            continue
        if len(sig) != len(ref):
            raise ValueError(f"{what} differ across ranks: rank {rank} passes {len(sig)} items, "
                             f"rank 0 passes {len(ref)}; every rank must pass the same")
        for (name, mine), (_, theirs) in zip(sig, ref):
            if mine != theirs:
                raise ValueError(f"{what} differ across ranks: {name} is {mine} on rank {rank} "
                                 f"but {theirs} on rank 0; every rank must pass the same")
    return signatures


def bcast_tree(comm, tree, root=0):
    """Broadcast a nested dict/list of NumPy arrays and plain values from `root`.

    The structure goes as one pickled message, all array bytes as one raw buffer (so a
    checkpoint with many tensors costs two messages, whatever their number); an int8 state
    buffer (`fastopt.state_format.Blockwise8`) goes as its three arrays.
    """
    from ..state_format import Blockwise8
    arrays = []

    def strip(node):
        if isinstance(node, Blockwise8):
            return ("__blockwise8__", strip(node.codes), strip(node.absmax), strip(node.qmap))
        if isinstance(node, np.ndarray):
            arrays.append(np.ascontiguousarray(node))
            return ("__array__", len(arrays) - 1, node.dtype.str, node.shape)
        if isinstance(node, dict):
            return {k: strip(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(strip(v) for v in node)
        return node

    skeleton = strip(tree) if comm.Get_rank() == root else None
    skeleton = comm.bcast(skeleton, root=root)
    specs = []

    def collect(node):
        if isinstance(node, tuple) and len(node) == 4 and node[0] == "__array__":
            specs.append(node)
        elif isinstance(node, dict):
            for v in node.values():
                collect(v)
        elif isinstance(node, (list, tuple)):
            for v in node:
                collect(v)

    collect(skeleton)
    sizes = [int(np.prod(s[3], dtype=np.int64)) * np.dtype(s[2]).itemsize for s in specs]
    blob = np.empty(sum(sizes), np.uint8)
    if comm.Get_rank() == root:
        pos = 0
        for a, n in zip(arrays, sizes):
            blob[pos:pos + n] = a.reshape(-1).view(np.uint8)
            pos += n
    chunk = 1 << 30
    for start in range(0, blob.size, chunk):
        comm.Bcast(blob[start:start + chunk], root=root)
    starts = np.concatenate([[0], np.cumsum(sizes)]).astype(np.int64)

    def build(node):
        if isinstance(node, tuple) and len(node) == 4 and node[0] == "__blockwise8__":
            return Blockwise8(*(build(v) for v in node[1:]))
        if isinstance(node, tuple) and len(node) == 4 and node[0] == "__array__":
            i = node[1]
            raw = blob[starts[i]:starts[i + 1]]
            return raw.view(np.dtype(node[2])).reshape(node[3]).copy()
        if isinstance(node, dict):
            return {k: build(v) for k, v in node.items()}
        if isinstance(node, (list, tuple)):
            return type(node)(build(v) for v in node)
        return node

    return build(skeleton)
