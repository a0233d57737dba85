"""Flat parameter buffers: many tensors as views of one contiguous, cache-line-aligned buffer.

A model with hundreds of small tensors costs a fused step one segment walk per tensor; the
same tensors laid end to end in one buffer are one long segment. ``flatten`` copies arrays
into such a buffer and returns views shaped like the inputs. The kernels' plan joins tensors
whose parameter, gradient and state buffers each continue the previous tensor's in memory,
and the optimizers allocate the state of consecutive views as one buffer too, so an optimizer
over views from ``flatten`` (with gradients that are views of one buffer as well) steps the
whole model as a single segment.

>>> import numpy as np, fastopt as fo
>>> flat, (w, b) = fo.flatten([np.ones((2, 3), np.float32), np.zeros(3, np.float32)])
>>> flat.shape, w.shape, b.shape, np.shares_memory(flat, w)
((9,), (2, 3), (3,), True)
"""
import numpy as np

__all__ = ["flatten", "consecutive_runs", "state_like"]

_ALIGN = 64


def _aligned_empty(n, dtype):
    """A 1-d array of n elements whose data starts on a 64-byte boundary."""
    dtype = np.dtype(dtype)
    raw = np.empty(n * dtype.itemsize + _ALIGN, np.uint8)
    shift = (-raw.__array_interface__["data"][0]) % _ALIGN
    return raw[shift:shift + n * dtype.itemsize].view(dtype)


def flatten(arrays, dtype=None):
    """Copy `arrays` into one contiguous buffer; return ``(buffer, views)``.

    `buffer` is a 1-d, 64-byte-aligned array holding the inputs' elements end to end, in
    order; ``views[i]`` is the slice of it shaped like ``arrays[i]`` (C order). `dtype`
    defaults to the inputs' common type (``numpy.result_type``). Use the views as the
    parameters (and, for gradients, fill views of a second buffer made the same way): an
    optimizer then steps all of them as one segment.

    Raises TypeError if `arrays` is not a list/tuple of arrays or the dtype is not numeric.
    """
    if not isinstance(arrays, (list, tuple)):
        raise TypeError(f"arrays must be a list or tuple of arrays, got {type(arrays).__name__}")
    sources = []
    for i, a in enumerate(arrays):
        if not hasattr(a, "__array_interface__") and not isinstance(a, np.ndarray):
            raise TypeError(f"arrays[{i}] must be a numpy array, got {type(a).__name__}")
        sources.append(np.asarray(a))
    if dtype is None:
        dtype = np.result_type(*sources) if sources else np.dtype(np.float64)
    dtype = np.dtype(dtype)
    if dtype.kind not in "fciub":
        raise TypeError(f"dtype must be numeric, got {dtype}")
    total = sum(a.size for a in sources)
    buffer = _aligned_empty(total, dtype)
    views, start = [], 0
    for a in sources:
        view = buffer[start:start + a.size].reshape(a.shape)
        np.copyto(view, a, casting="unsafe")
        views.append(view)
        start += a.size
    return buffer, views


def _address(a):
    return a.__array_interface__["data"][0]


def consecutive_runs(arrays):
    """Group indices 0..n-1 into runs of NumPy arrays that continue each other in memory.

    Within each dtype, in index order (the order the kernels walk a group's tensors), an array
    joins the dtype's current run when it is C-contiguous and starts where the run's last
    non-empty array ends; empty arrays join any run. Other arrays (CuPy, strided) are runs of
    their own. Returns a list of index lists, ordered by their first index.
    """
    runs, current = [], {}          # dtype -> [indices, end address of the run]
    for i, a in enumerate(arrays):
        if not (isinstance(a, np.ndarray) and a.flags.c_contiguous):
            runs.append([i])
            continue
        run = current.get(a.dtype)
        if run is not None and (a.size == 0 or run[1] is None or _address(a) == run[1]):
            run[0].append(i)
        else:
            run = current[a.dtype] = [[i], None]
            runs.append(run[0])
        if a.size:
            run[1] = _address(a) + a.nbytes
    return runs


def state_like(params, fill=None):
    """New state buffers shaped and typed like `params` (filled with `fill`, or uninitialized).

    The buffers of all C-contiguous NumPy parameters of one dtype are views of one new
    64-byte-aligned buffer (an arena): parameters that continue each other in memory get state
    that continues too, so the kernels step such a run as one segment, and the other runs start
    on their own cache line. One large allocation instead of one per tensor also lets the
    operating system back the state with huge pages (NumPy asks for them on large buffers),
    which keeps the TLB out of the way of a step over many tensors. Other arrays (strided,
    CuPy) get their own buffer, as ``numpy.empty_like``/``numpy.full_like`` would.
    """
    out = [None] * len(params)
    arenas = {}                       # dtype -> [(run, offset)], total elements with padding
    for run in consecutive_runs(params):
        first = params[run[0]]
        if not (isinstance(first, np.ndarray) and first.flags.c_contiguous):
            out[run[0]] = np.empty_like(first) if fill is None else np.full_like(first, fill)
            continue
        runs, used = arenas.get(first.dtype, ([], 0))
        size = sum(params[i].size for i in run)
        runs.append((run, used))
        step = _ALIGN // first.dtype.itemsize if _ALIGN % first.dtype.itemsize == 0 else 1
        arenas[first.dtype] = (runs, used + -(-size // step) * step)
    for dtype, (runs, used) in arenas.items():
        buffer = _aligned_empty(used, dtype)
        if fill is not None:
            buffer.fill(fill)
        for run, start in runs:
            for i in run:
                p = params[i]
                out[i] = buffer[start:start + p.size].reshape(p.shape)
                start += p.size
    return out
