"""Optimizer checkpoints: `save(opt, path)` writes atomically, `load(opt, path)` verifies.

Threat model
------------
A checkpoint is data, never code. Loading one, even a file crafted by an attacker, runs no
code of the file's choosing: there is no `pickle` anywhere on the read path, arrays are read
with plain NumPy dtypes only (no object arrays), and the only objects a file can ask for are
fastopt's own learning-rate schedules, named from an explicit allow-list
(`fastopt.schedules.SCHEDULES`) and rebuilt through their validating constructors. The
SHA-256 digest detects accidental damage (truncation, bit flips); it proves nothing about who
wrote the file, since anyone can recompute it. A crafted file can at most hold wrong numbers
that fit the optimizer, exactly as a hand-made `state_dict` can.

Reading is bounded: the archive's member names, every array's dtype and shape (from the
metadata, its ``.npy`` header and the zip directory) are checked against each other, and by
`load` against the optimizer's parameters, before any array is read; a member is never read
past the size its header declares. An int8 buffer's codes must be uint8 with a parameter's
shape, its absmax float32 of ceil(size / 256) values and its map float32 of 256 values, all
from the declarations; the map's values (finite, strictly increasing, in [-1, 1]) are checked
once read, before the state_dict is built. Array members must be stored uncompressed (as
`save` writes them; the zip may deflate only the metadata), so the arrays read are never more
bytes than the file holds: a file refused on its layout costs memory in proportion to its
metadata, one refused after its arrays were read (keys the optimizer does not have) in
proportion to its size.

File format, version 2 (an uncompressed .npz, i.e. a zip of ``.npy`` members)
---------------------------------------------------------------------------
``__meta__``: UTF-8 JSON (as uint8) ``{"format": "fastopt-checkpoint", "version": 2,
"optimizer": class name, "state_dict": tree}``, where the tree is the optimizer's
`state_dict()` written as JSON with these encodings: dicts with string keys as JSON objects
(other keys: ``{"__dict__": [[key, value], ...]}``), lists as lists, tuples as
``{"__tuple__": [...]}``, numbers, booleans, strings and None as themselves (non-finite floats
as ``{"__float__": "nan" | "inf" | "-inf"}``), arrays as ``{"__array__": member, "dtype":
str, "shape": [...]}`` with the data in the member of that name, int8 blockwise state buffers
(`fastopt.state_format.Blockwise8`) as ``{"__blockwise8__": {"codes": array, "absmax": array,
"qmap": array}}`` (codes uint8 of the parameter's shape, absmax float32 of one value per block
of 256, the 256-value float32 map; bfloat16 state is a plain uint16 array), and schedules as
``{"schedule": name, "args": {...}}``. ``__sha256__``: the digest of the metadata bytes and of
every array's name, dtype, shape and bytes (sorted by name). Any other value is refused by
`save` with a TypeError (nothing is written). Version 1 files (state arrays as
``state/<i>/<name>``, group values in JSON) still load, unless they hold a pickled value.

Writing goes to a temporary file ``.<name>.fastopt-<pid>-<random>.tmp`` in the target's
directory, is flushed and fsync'ed, then renamed over the target (and the directory fsync'ed),
so a crash never leaves a half-written file; the next save to the same path removes such
leftovers of writers that no longer run. The file is created like any new file (mode 0666
less the umask, as `np.savez` and `torch.save` do); replacing a checkpoint does not keep the
old file's mode.
"""
import hashlib
import json
import math
import os
import re
import secrets
import zipfile

import numpy as np

from . import schedules as _schedules
from .state_format import Blockwise8, n_blocks

__all__ = ["save", "load", "write_state_dict", "read_state_dict", "read_state_dict_of",
           "FORMAT", "VERSION"]

FORMAT = "fastopt-checkpoint"
VERSION = 2
MAX_META_BYTES = 64 << 20          # the JSON metadata is read whole; more is not a checkpoint
_META, _DIGEST = "__meta__", "__sha256__"
_Q8 = "__blockwise8__"              # an int8 state buffer (fastopt.state_format.Blockwise8)
_MARKERS = ("__dict__", "__tuple__", "__float__", "__array__", "__pickle__", "schedule", _Q8)
_Q8_PARTS = {"codes": np.dtype(np.uint8), "absmax": np.dtype(np.float32),
             "qmap": np.dtype(np.float32)}
_V1_ARRAY = re.compile(r"state/\d+/[A-Za-z_]\w*\Z")


# ---------------------------------------------------------------------------------- writing
def _host(a):
    return a.get() if hasattr(a, "get") and not isinstance(a, np.ndarray) else np.asarray(a)


def _is_array(v):
    return isinstance(v, np.ndarray) or hasattr(v, "__cuda_array_interface__")


def _encode(value, path, arrays):
    """JSON-able form of one state_dict value; arrays go into `arrays` under their path."""
    if value is None or isinstance(value, (bool, str)):
        return value
    if isinstance(value, (np.bool_, np.integer, np.floating)):
        value = value.item()
    if isinstance(value, int):
        return value
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        return {"__float__": "nan" if math.isnan(value) else ("inf" if value > 0 else "-inf")}
    if isinstance(value, _schedules.Schedule):
        return _schedules.to_data(value)
    if isinstance(value, Blockwise8):
        return {_Q8: {part: _encode(getattr(value, part), f"{path}/{part}", arrays)
                      for part in _Q8_PARTS}}
    if _is_array(value):
        a = _c_order(_host(value))
        if path in arrays:                     # e.g. keys 0 and "0" in one dict
            path = f"{path}#{len(arrays)}"
        if a.dtype.kind not in "biufc" or a.dtype.hasobject or a.dtype.names is not None:
            raise TypeError(f"cannot save {path}: arrays of dtype {a.dtype} are not supported")
        arrays[path] = a
        return {"__array__": path, "dtype": a.dtype.str, "shape": list(a.shape)}
    if isinstance(value, dict):
        plain = all(isinstance(k, str) and "/" not in k for k in value) \
            and not any(k in value for k in _MARKERS)
        if plain:
            return {k: _encode(v, f"{path}/{k}", arrays) for k, v in value.items()}
        items = []
        for k, v in value.items():
            if isinstance(k, (np.integer, np.bool_)):
                k = k.item()
            if not isinstance(k, (str, int)) or isinstance(k, bool):
                raise TypeError(f"cannot save {path}: dict key {k!r} is not a string or integer")
            items.append([k, _encode(v, f"{path}/{k}", arrays)])
        return {"__dict__": items}
    if isinstance(value, list):
        return [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]
    if isinstance(value, tuple):
        return {"__tuple__": [_encode(v, f"{path}/{i}", arrays) for i, v in enumerate(value)]}
    if callable(value):
        raise TypeError(f"cannot save {path}: a {type(value).__name__} is code, and checkpoints "
                        "hold only data. Use a fastopt.schedules schedule (e.g. "
                        "fastopt.schedules.cosine_decay) as the learning rate, or set the "
                        "group's current value before saving")
    raise TypeError(f"cannot save {path}: values of type {type(value).__name__} are not "
                    "supported (numbers, booleans, strings, lists, tuples, dicts, arrays and "
                    "fastopt.schedules schedules are)")


def _c_order(a):
    """`a` if C-contiguous, else a C-ordered copy (0-d arrays stay 0-d)."""
    return a if a.flags.c_contiguous else a.copy(order="C")


def _digest(meta_bytes, arrays):
    """SHA-256 of the metadata and of each array's name, dtype, shape and bytes (by name)."""
    h = hashlib.sha256()
    h.update(meta_bytes)
    for name in sorted(arrays):
        _digest_array(h, name, _c_order(np.asarray(arrays[name])))
    return h.hexdigest()


def _digest_array(h, name, a):
    h.update(name.encode())
    h.update(a.dtype.str.encode())
    h.update(repr(a.shape).encode())
    h.update(a.data if a.size else b"")


def save(opt, path):
    """Write `opt.state_dict()` to `path` (.npz) atomically, with a format version and digest.

    Raises TypeError, before anything is written, when the state holds something that is not
    data (e.g. a lambda as `lr`: use a `fastopt.schedules` schedule instead).
    """
    write_state_dict(opt.state_dict(), type(opt).__name__, path)


def write_state_dict(sd, optimizer_name, path):
    """Write a state_dict of an `optimizer_name` optimizer to `path`, as `save` does.

    For state that does not live in one optimizer object (e.g. gathered from the ranks of a
    sharded optimizer); `load` into an `optimizer_name` instance reads it.
    """
    arrays = {}
    tree = _encode(sd, "state_dict", arrays)
    meta = {"format": FORMAT, "version": VERSION, "optimizer": optimizer_name,
            "state_dict": tree}
    meta_bytes = json.dumps(meta, sort_keys=True, allow_nan=False).encode("utf-8")
    digest = _digest(meta_bytes, arrays)
    path = os.fspath(path)
    directory = os.path.dirname(os.path.abspath(path))
    base = os.path.basename(path)
    _remove_stale_temporaries(directory, base)
    tmp = os.path.join(directory, f".{base}.fastopt-{os.getpid()}-{secrets.token_hex(6)}.tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_BINARY", 0), 0o666)
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **{_META: np.frombuffer(meta_bytes, np.uint8),
                           _DIGEST: np.frombuffer(digest.encode("ascii"), np.uint8)}, **arrays)
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


def _pid_alive(pid):
    if pid == os.getpid():
        return True               # this process's own save to the same path, on another thread
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True               # exists (another user's), or unknowable: leave it
    return True


def _remove_stale_temporaries(directory, base):
    """Delete ``.<base>.fastopt-<pid>-<hex>.tmp`` files of writers that no longer run."""
    pattern = re.compile(re.escape(f".{base}.fastopt-") + r"(\d+)-[0-9a-f]{12}\.tmp\Z")
    try:
        names = os.listdir(directory)
    except OSError:
        return
    for name in names:
        m = pattern.match(name)
        if m and not _pid_alive(int(m.group(1))):
            try:
                os.unlink(os.path.join(directory, name))
            except OSError:
                pass


# ---------------------------------------------------------------------------------- reading
class _Refused(ValueError):
    """A problem with the file's contents (the caller adds the path)."""


def _npy_header(f):
    """(dtype, shape) from a .npy member's header, refusing anything but plain numeric data."""
    try:
        version = np.lib.format.read_magic(f)
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(f)
        elif version in ((2, 0), (3, 0)):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(f)
        else:
            raise ValueError(f"npy version {version}")
    except Exception as e:
        raise _Refused(f"unreadable array header ({type(e).__name__}: {e})") from None
    if fortran or dtype.hasobject or dtype.names is not None or dtype.kind not in "biufc":
        raise _Refused(f"array of dtype {dtype} (fortran_order={fortran}) is not allowed")
    return dtype, tuple(shape)


def _nbytes(dtype, shape):
    n = dtype.itemsize
    for s in shape:
        n *= s
    return n


class _Archive:
    """The members of a checkpoint zip, read only after their layout has been checked."""

    def __init__(self, zf):
        self.zf = zf
        infos = zf.infolist()
        names = [i.filename for i in infos]
        if len(set(names)) != len(names):
            raise _Refused("the archive names a member twice")
        if any(not n.endswith(".npy") for n in names):
            raise _Refused(f"unexpected member {next(n for n in names if not n.endswith('.npy'))!r}")
        for i in infos:
            if i.compress_type not in (zipfile.ZIP_STORED, zipfile.ZIP_DEFLATED) or i.flag_bits & 1:
                raise _Refused(f"member {i.filename!r:.100} is stored with compression "
                               f"{i.compress_type} or encrypted; checkpoints are plain zips")
        self.infos = {n[:-4]: i for n, i in zip(names, infos)}

    def open_checked(self, name, dtype=None, shape=None):
        """Open member `name`, check its header (against dtype/shape when given) and size."""
        info = self.infos[name]
        f = self.zf.open(info)
        got_dtype, got_shape = _npy_header(f)
        if dtype is not None and (got_dtype != dtype or got_shape != shape):
            f.close()
            raise _Refused(f"array {name!r} holds {got_dtype}{list(got_shape)}, the metadata "
                           f"declares {dtype}{list(shape)}")
        if info.file_size != f.tell() + _nbytes(got_dtype, got_shape):
            f.close()
            raise _Refused(f"member {name!r} is {info.file_size} bytes, its header declares "
                           f"{f.tell() + _nbytes(got_dtype, got_shape)}")
        return f, got_dtype, got_shape

    def read(self, name, dtype, shape):
        f, dtype, shape = self.open_checked(name, dtype, shape)
        with f:
            n = _nbytes(dtype, shape)
            data = f.read(n)
        if len(data) != n:
            raise _Refused(f"array {name!r} is truncated")
        return np.frombuffer(data, dtype).reshape(shape).copy()


def _check_meta_member(archive):
    if _META not in archive.infos or _DIGEST not in archive.infos:
        raise _Refused("not a fastopt checkpoint (no metadata)")
    for name, limit in ((_META, MAX_META_BYTES), (_DIGEST, 4096)):
        if archive.infos[name].file_size > limit:
            raise _Refused(f"the {name} member is {archive.infos[name].file_size} bytes, more "
                           "than a checkpoint's metadata can be")
    f, dtype, shape = archive.open_checked(_META)
    f.close()
    if dtype != np.uint8 or len(shape) != 1:
        raise _Refused("not a fastopt checkpoint (metadata is not a byte string)")
    return archive.read(_META, np.dtype(np.uint8), shape).tobytes()


def _decode(node, arrays):
    """The state_dict value of an encoded node (v2); arrays by name from `arrays`."""
    if node is None or isinstance(node, (bool, int, float, str)):
        return node
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        raise _Refused(f"unexpected value {node!r:.100}")
    if "__array__" in node:
        return arrays[node["__array__"]]
    if set(node) == {_Q8}:
        parts = {k: arrays[v["__array__"]] for k, v in node[_Q8].items()}
        try:
            return Blockwise8.checked(parts["codes"], parts["absmax"], parts["qmap"],
                                      what=f"int8 buffer {node[_Q8]['codes']['__array__']!r}")
        except ValueError as e:
            raise _Refused(str(e)) from None
    if set(node) == {"__tuple__"} and isinstance(node["__tuple__"], list):
        return tuple(_decode(v, arrays) for v in node["__tuple__"])
    if set(node) == {"__float__"} and node["__float__"] in ("nan", "inf", "-inf"):
        return float(node["__float__"])
    if set(node) == {"__dict__"} and isinstance(node["__dict__"], list):
        out = {}
        for item in node["__dict__"]:
            if not (isinstance(item, list) and len(item) == 2
                    and isinstance(item[0], (str, int)) and not isinstance(item[0], bool)):
                raise _Refused(f"malformed dict item {item!r:.100}")
            out[item[0]] = _decode(item[1], arrays)
        return out
    if _schedules.is_data(node):
        return _schedules.from_data(node)
    if any(k in node for k in _MARKERS):
        raise _Refused(f"unsupported encoded value with keys {sorted(node)[:5]} (this fastopt "
                       "loads data only)")
    return {k: _decode(v, arrays) for k, v in node.items()}


def _declared_arrays(node, out, q8=None):
    """Collect {name: (dtype, shape)} of the arrays a v2 tree refers to, checking each spec;
    the int8 buffers' (codes, absmax, qmap) names go to `q8` (a list)."""
    if isinstance(node, list):
        for v in node:
            _declared_arrays(v, out, q8)
    elif isinstance(node, dict):
        if _Q8 in node:
            parts = node[_Q8]
            if set(node) != {_Q8} or not isinstance(parts, dict) or set(parts) != set(_Q8_PARTS) \
                    or not all(isinstance(v, dict) and "__array__" in v for v in parts.values()):
                raise _Refused(f"malformed int8 state buffer {node!r:.200}")
            for v in parts.values():
                _declared_arrays(v, out, q8)
            if q8 is not None:
                q8.append(tuple(parts[k]["__array__"] for k in _Q8_PARTS))
        elif "__array__" in node:
            name, dtype, shape = node.get("__array__"), node.get("dtype"), node.get("shape")
            if set(node) != {"__array__", "dtype", "shape"} or not isinstance(name, str) \
                    or not isinstance(dtype, str) or not isinstance(shape, list) \
                    or not all(isinstance(s, int) and not isinstance(s, bool) and s >= 0
                               for s in shape):
                raise _Refused(f"malformed array reference {node!r:.200}")
            try:
                dt = np.dtype(dtype)
            except (TypeError, ValueError):
                raise _Refused(f"array {name!r} has unknown dtype {dtype!r:.50}") from None
            if dt.kind not in "biufc" or dt.hasobject or dt.names is not None:
                raise _Refused(f"array {name!r} has dtype {dt}, which is not allowed")
            if name in out:
                raise _Refused(f"array {name!r} is referred to twice")
            out[name] = (dt, tuple(shape))
        else:
            for v in node.values():
                _declared_arrays(v, out, q8)


def _check_q8_layout(declared, q8):
    """Each int8 buffer's declared parts: codes uint8, absmax float32 of one value per block of
    the codes, qmap float32 (256,). Returns the names of the absmax and qmap arrays (whose
    shapes follow from their codes')."""
    tied = set()
    for codes, absmax, qmap in q8:
        (cd, cs), (ad, ash), (qd, qs) = declared[codes], declared[absmax], declared[qmap]
        n = 1
        for s in cs:
            n *= s
        if cd != _Q8_PARTS["codes"] or ad != _Q8_PARTS["absmax"] or qd != _Q8_PARTS["qmap"]:
            raise _Refused(f"int8 buffer {codes!r}: codes must be uint8, absmax and qmap "
                           f"float32, the metadata declares {cd}, {ad}, {qd}")
        if ash != (n_blocks(n),):
            raise _Refused(f"int8 buffer {codes!r}: absmax must hold {n_blocks(n)} values (one "
                           f"per block of 256 of {n} codes), the metadata declares {list(ash)}")
        if qs != (256,):
            raise _Refused(f"int8 buffer {codes!r}: qmap must hold 256 values, the metadata "
                           f"declares {list(qs)}")
        tied.update((absmax, qmap))
    return tied


def _find_pickled(node, where="param_groups"):
    if isinstance(node, dict):
        if "__pickle__" in node:
            return where
        for k, v in node.items():
            found = _find_pickled(v, f"{where}[{k!r}]")
            if found:
                return found
    elif isinstance(node, list):
        for i, v in enumerate(node):
            found = _find_pickled(v, f"{where}[{i}]")
            if found:
                return found
    return None


def _read(zf, expect):
    archive = _Archive(zf)
    meta_bytes = _check_meta_member(archive)
    f, dt, shape = archive.open_checked(_DIGEST)
    f.close()
    digest = archive.read(_DIGEST, dt, shape).tobytes().decode("ascii", "replace")
    try:
        meta = json.loads(meta_bytes.decode("utf-8"))
    except (ValueError, RecursionError) as e:
        raise _Refused(f"unreadable metadata ({type(e).__name__})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise _Refused(f"not a fastopt checkpoint (format "
                       f"{meta.get('format') if isinstance(meta, dict) else None!r:.50})")
    version = meta.get("version")
    if version not in (1, VERSION):
        raise _Refused(f"checkpoint format version {version!r:.20} is not supported (this "
                       f"fastopt reads versions 1 and {VERSION})")
    members = set(archive.infos) - {_META, _DIGEST}
    if version == 1:
        pickled = _find_pickled(meta.get("param_groups"))
        if pickled:
            raise _Refused(f"this version 1 checkpoint stores {pickled} as a pickled Python "
                           "object; fastopt no longer unpickles checkpoint contents, since "
                           "unpickling can run any code. Rebuild the optimizer with a "
                           "fastopt.schedules schedule as lr and save it again")
        declared = {}
        for name in sorted(members):
            if not _V1_ARRAY.match(name):
                raise _Refused(f"unexpected array {name!r}")
            f, dt, shape = archive.open_checked(name)
            f.close()
            declared[name] = (dt, shape)
    else:
        declared, q8 = {}, []
        _declared_arrays(meta.get("state_dict"), declared, q8)
        if set(declared) != members:
            extra, missing = sorted(members - set(declared)), sorted(set(declared) - members)
            raise _Refused(f"the archive's arrays do not match its metadata (unlisted: "
                           f"{extra[:5]}, missing: {missing[:5]})")
        for name, (dt, shape) in declared.items():
            archive.open_checked(name, dt, shape)[0].close()
    tied = set() if version == 1 else _check_q8_layout(declared, q8)
    if expect is not None:
        expect({k: v for k, v in declared.items() if k not in tied})
    compressed = sorted(n for n in declared
                        if archive.infos[n].compress_type != zipfile.ZIP_STORED)
    if compressed:
        raise _Refused(f"array {compressed[0]!r} is stored compressed; checkpoints are written "
                       "uncompressed, so that reading one takes no more memory than the file's "
                       "size")
    h = hashlib.sha256()
    h.update(meta_bytes)
    arrays = {}
    for name in sorted(declared):
        arrays[name] = archive.read(name, *declared[name])
        # version 1 digested 0-d arrays as shape (1,) (np.ascontiguousarray)
        _digest_array(h, name, np.ascontiguousarray(arrays[name]) if version == 1
                      else arrays[name])
    if h.hexdigest() != digest:
        raise _Refused("checksum mismatch, the file is corrupted")
    if version == 1:
        return _state_dict_v1(meta, arrays), meta.get("optimizer")
    try:
        sd = _decode(meta["state_dict"], arrays)
    except (KeyError, TypeError) as e:
        raise _Refused(f"malformed checkpoint contents ({type(e).__name__}: {e})") from None
    if not isinstance(sd, dict):
        raise _Refused("malformed checkpoint contents (the state_dict is not a dict)")
    return sd, meta.get("optimizer")


def _state_dict_v1(meta, arrays):
    try:
        state = {int(i): dict(scalars) for i, scalars in meta["scalars"].items()}
        for name, a in arrays.items():
            _, i, buf = name.split("/", 2)
            state.setdefault(int(i), {})[buf] = a
        groups = [{k: _decode(v, {}) for k, v in g.items()} for g in meta["param_groups"]]
    except (KeyError, TypeError, AttributeError, ValueError) as e:
        raise _Refused(f"malformed checkpoint contents ({type(e).__name__}: {e})") from None
    return {"state": state, "param_groups": groups}


def read_state_dict(path, expect=None):
    """Read and verify a checkpoint file; returns the state_dict (NumPy arrays) with the
    writer's optimizer class name under the key ``"optimizer"``.

    `expect`, when given, is called with ``{array name: (dtype, shape)}`` after the layout
    has been checked and before any array is read; it raises ValueError to refuse the file.
    Raises FileNotFoundError for a missing file and ValueError for anything wrong with it.
    """
    try:
        zf = zipfile.ZipFile(os.fspath(path))
    except FileNotFoundError:
        raise
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, RuntimeError,
            NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable fastopt checkpoint ({type(e).__name__}: {e})") \
            from None
    try:
        with zf:
            sd, optimizer = _read(zf, expect)
    except _Refused as e:
        raise ValueError(f"{path}: {e}") from None
    except (zipfile.BadZipFile, OSError, EOFError, RecursionError, ValueError, RuntimeError,
            NotImplementedError) as e:
        raise ValueError(f"{path}: not a readable fastopt checkpoint ({type(e).__name__}: {e})") \
            from None
    sd["optimizer"] = optimizer
    return sd


def read_state_dict_of(path, optimizer_name, params=None, extra_shapes=()):
    """`read_state_dict`, checking that the file holds an `optimizer_name` optimizer's state.

    With `params` (the optimizer's parameters), every array in the file must have the shape
    of one of them, or one of `extra_shapes` (e.g. LBFGS's flat vectors), or be a scalar;
    checked before any array data is read.
    """
    expect = None if params is None else _shapes_of(path, params, extra_shapes)
    sd = read_state_dict(path, expect)
    saved_cls = sd.pop("optimizer")
    if saved_cls != optimizer_name:
        raise ValueError(f"{path}: checkpoint of a {saved_cls}, cannot load into a "
                         f"{optimizer_name}")
    return sd


def _shapes_of(path, params, extra_shapes=()):
    shapes = {tuple(p.shape) for p in params} | {()} | {tuple(s) for s in extra_shapes}

    def expect(declared):
        for name, (_, shape) in sorted(declared.items()):
            if shape not in shapes:
                raise _Refused(f"the checkpoint does not fit this optimizer: array {name!r} has "
                               f"shape {list(shape)}, which no parameter has")
    return expect


class _Shape:
    """Something with a shape (what `_shapes_of` reads of a parameter)."""
    __slots__ = ("shape",)

    def __init__(self, shape):
        self.shape = shape


def _params_of(opt):
    """The parameters of `opt`, and (for optimizers whose state has other shapes, such as
    Adafactor's row and column factors) something of each state shape (``_checkpoint_shapes``)."""
    params = [p for g in opt.param_groups for p in g["params"]]
    extra = getattr(opt, "_checkpoint_shapes", None)
    if extra is not None:
        params += [_Shape(tuple(shape)) for shape in set(extra())]
    return params


def load(opt, path):
    """Load a checkpoint written by `save` into `opt` (verified; on error `opt` is unchanged)."""
    extra = getattr(opt, "_checkpoint_shapes", None)
    sd = read_state_dict_of(path, type(opt).__name__, _params_of(opt),
                            extra() if extra is not None else ())
    try:
        opt.load_state_dict(sd)
    except (TypeError, ValueError, OverflowError) as e:
        raise ValueError(f"{path}: the checkpoint does not fit this optimizer: {e}") from None
