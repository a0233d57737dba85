"""Optimizer checkpoints: `save(opt, path)` writes atomically, `load(opt, path)` verifies.

File format (an uncompressed .npz): one array per state buffer named ``state/<i>/<name>``, and
``__meta__``, a UTF-8 JSON document as uint8 holding the format name and version, the
optimizer class, the param groups (hyperparameters; a schedule or other callable `lr` is
stored pickled, base64) and per-parameter scalars (``step``), and ``__sha256__``, the digest
of the metadata and of every array's name, dtype, shape and bytes.

Writing goes to a temporary file in the same directory, is flushed and fsync'ed, then renamed
over the target (and the directory fsync'ed), so a crash never leaves a half-written file.
Reading checks the format, version and digest before touching the optimizer, then goes through
`load_state_dict`, which checks shapes and dtypes; any problem raises ValueError with the
optimizer unchanged. A schedule stored as `lr` is unpickled on load: load only checkpoints
you trust, as with any pickle.
"""
import base64
import hashlib
import json
import os
import pickle
import tempfile

import numpy as np

__all__ = ["save", "load", "write_state_dict", "read_state_dict", "read_state_dict_of",
           "FORMAT", "VERSION"]

FORMAT = "fastopt-checkpoint"
VERSION = 1


def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _encode_value(v):
    if callable(v):
        return {"__pickle__": base64.b64encode(pickle.dumps(v)).decode("ascii")}
    if isinstance(v, tuple):
        return {"__tuple__": [_encode_value(x) for x in v]}
    if isinstance(v, (np.floating, np.integer, np.bool_)):
        return v.item()
    return v


def _decode_value(v):
    if isinstance(v, dict) and "__pickle__" in v:
        return pickle.loads(base64.b64decode(v["__pickle__"]))
    if isinstance(v, dict) and "__tuple__" in v:
        return tuple(_decode_value(x) for x in v["__tuple__"])
    return v


def _digest(meta_bytes, arrays):
    h = hashlib.sha256()
    h.update(meta_bytes)
    for name in sorted(arrays):
        a = np.ascontiguousarray(arrays[name])
        h.update(name.encode())
        h.update(a.dtype.str.encode())
        h.update(repr(a.shape).encode())
        h.update(a.tobytes())
    return h.hexdigest()


def save(opt, path):
    """Write `opt.state_dict()` to `path` (.npz) atomically, with a format version and digest."""
    write_state_dict(opt.state_dict(), type(opt).__name__, path)


def write_state_dict(sd, optimizer_name, path):
    """Write a state_dict of an `optimizer_name` optimizer to `path`, as `save` does.

    For state that does not live in one optimizer object (e.g. gathered from the ranks of a
    sharded optimizer); `load` into an `optimizer_name` instance reads it.
    """
    arrays, scalars = {}, {}
    for i, entry in sd["state"].items():
        scalars[str(i)] = {}
        for name, value in entry.items():
            if name == "step" or np.ndim(_host(value)) == 0 and not hasattr(value, "shape"):
                scalars[str(i)][name] = float(_host(value))
            else:
                arrays[f"state/{i}/{name}"] = _host(value)
    meta = {
        "format": FORMAT, "version": VERSION, "optimizer": optimizer_name,
        "param_groups": [{k: _encode_value(v) for k, v in g.items()} for g in sd["param_groups"]],
        "scalars": scalars,
    }
    meta_bytes = json.dumps(meta, sort_keys=True).encode("utf-8")
    digest = _digest(meta_bytes, arrays)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=".fastopt-", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, __meta__=np.frombuffer(meta_bytes, np.uint8),
                     __sha256__=np.frombuffer(digest.encode("ascii"), np.uint8), **arrays)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.unlink(tmp)
        raise
    try:
        dir_fd = os.open(directory, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(dir_fd)
    except OSError:
        pass
    finally:
        os.close(dir_fd)


def read_state_dict(path):
    """Read and verify a checkpoint file; returns the state_dict (NumPy arrays)."""
    try:
        with np.load(os.fspath(path), allow_pickle=False) as z:
            arrays = {name: z[name] for name in z.files}
    except FileNotFoundError:
        raise
    except Exception as e:  # zipfile.BadZipFile, EOFError, ValueError, OSError, ...
        raise ValueError(f"{path}: not a readable fastopt checkpoint ({type(e).__name__}: {e})") from None
    if "__meta__" not in arrays or "__sha256__" not in arrays:
        raise ValueError(f"{path}: not a fastopt checkpoint (no metadata)")
    meta_bytes = arrays.pop("__meta__").tobytes()
    digest = arrays.pop("__sha256__").tobytes().decode("ascii", "replace")
    if _digest(meta_bytes, arrays) != digest:
        raise ValueError(f"{path}: checksum mismatch, the file is corrupted")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except ValueError as e:
        raise ValueError(f"{path}: unreadable metadata ({e})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise ValueError(f"{path}: not a fastopt checkpoint (format "
                         f"{meta.get('format') if isinstance(meta, dict) else None!r})")
    if meta.get("version") != VERSION:
        raise ValueError(f"{path}: checkpoint format version {meta.get('version')!r} is not "
                         f"supported (this fastopt reads version {VERSION})")
    try:
        state = {}
        for i, scalars in meta["scalars"].items():
            state[int(i)] = dict(scalars)
        for name, a in arrays.items():
            kind, i, buf = name.split("/", 2)
            if kind != "state":
                raise ValueError(f"unexpected array {name!r}")
            state.setdefault(int(i), {})[buf] = a
        groups = [{k: _decode_value(v) for k, v in g.items()} for g in meta["param_groups"]]
    except Exception as e:  # KeyError, TypeError, AttributeError, pickle errors, ...
        raise ValueError(f"{path}: malformed checkpoint contents ({type(e).__name__}: {e})") from None
    return {"state": state, "param_groups": groups, "optimizer": meta.get("optimizer")}


def read_state_dict_of(path, optimizer_name):
    """`read_state_dict`, checking that the file holds an `optimizer_name` optimizer's state."""
    sd = read_state_dict(path)
    saved_cls = sd.pop("optimizer")
    if saved_cls != optimizer_name:
        raise ValueError(f"{path}: checkpoint of a {saved_cls}, cannot load into a "
                         f"{optimizer_name}")
    return sd


def load(opt, path):
    """Load a checkpoint written by `save` into `opt` (verified; on error `opt` is unchanged)."""
    sd = read_state_dict_of(path, type(opt).__name__)
    try:
        opt.load_state_dict(sd)
    except (TypeError, ValueError) as e:
        raise ValueError(f"{path}: the checkpoint does not fit this optimizer: {e}") from None
