"""Checkpoints crafted as an attacker would: well-formed archives with a valid digest whose
values try every encoding a fastopt checkpoint has ever used to smuggle code in.

Each payload, if it ever ran, would create the file `marker`; the tests (tests/
test_checkpoint_safety.py and, under mpiexec, tests/mpi/crafted.py) load each file and check
that it is refused and that `marker` does not exist.
"""
import base64
import io
import json
import pickle

import numpy as np

from fastopt import checkpoint


class RunsCode:
    """Unpickling this object runs `exec(source)`."""

    def __init__(self, source):
        self.source = source

    def __reduce__(self):
        return (exec, (self.source,))


def payload(marker):
    return RunsCode(f"open({str(marker)!r}, 'w').write('code from a checkpoint ran')")


def _object_npy(obj):
    """The bytes of a .npy file holding a pickled object array (np.save, allow_pickle)."""
    buf = io.BytesIO()
    a = np.empty(1, dtype=object)
    a[0] = obj
    np.save(buf, a, allow_pickle=True)
    return buf.getvalue()


def _write(path, meta, arrays, raw_members=None):
    """An uncompressed .npz with the metadata, arrays and a digest that matches them."""
    meta_bytes = json.dumps(meta).encode()
    digest = checkpoint._digest(meta_bytes, arrays)
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(meta_bytes, np.uint8),
                 __sha256__=np.frombuffer(digest.encode(), np.uint8), **arrays)
    if raw_members:
        import zipfile
        with zipfile.ZipFile(path, "a") as z:
            for name, data in raw_members.items():
                z.writestr(name + ".npy", data)


def _adam_groups(lr):
    return [{"lr": lr, "betas": {"__tuple__": [0.9, 0.999]}, "eps": 1e-8, "weight_decay": 0.0,
             "amsgrad": False, "maximize": False, "decoupled_weight_decay": False,
             "params": [0]}]


def crafted_files(directory, marker, shape=(5,)):
    """Write every crafted checkpoint (for an Adam over one float64 parameter of `shape`)
    into `directory`; returns {case name: path}."""
    code = base64.b64encode(pickle.dumps(payload(marker))).decode("ascii")
    exp = np.zeros(shape)
    files = {}

    def v2(name, lr, arrays=None, state_extra=None, raw=None, declared=None):
        arrays = arrays if arrays is not None else {"state_dict/state/0/exp_avg": exp,
                                                    "state_dict/state/0/exp_avg_sq": exp}
        entry = {"step": 3.0}
        for key in arrays:
            entry[key.rsplit("/", 1)[1]] = {"__array__": key, "dtype": arrays[key].dtype.str,
                                            "shape": list(arrays[key].shape)}
        entry.update(declared or {})
        entry.update(state_extra or {})
        meta = {"format": checkpoint.FORMAT, "version": 2, "optimizer": "Adam",
                "state_dict": {"state": {"__dict__": [[0, entry]]},
                               "param_groups": _adam_groups(lr)}}
        path = directory / f"{name}.npz"
        _write(path, meta, arrays, raw)
        files[name] = path

    def v1(name, lr, raw=None):
        meta = {"format": checkpoint.FORMAT, "version": 1, "optimizer": "Adam",
                "param_groups": _adam_groups(lr), "scalars": {"0": {"step": 3.0}}}
        path = directory / f"{name}.npz"
        _write(path, meta, {"state/0/exp_avg": exp, "state/0/exp_avg_sq": exp}, raw)
        files[name] = path

    v1("v1_pickled_lr", {"__pickle__": code})
    v1("v1_object_array_member", 0.1, raw={"state/0/max_exp_avg_sq": _object_npy(payload(marker))})
    v2("v2_pickled_lr", {"__pickle__": code})
    v2("v2_pickled_state_value", 0.1, state_extra={"note": {"__pickle__": code}})
    v2("v2_schedule_named_exec", {"schedule": "exec", "args": {"source": "1"}})
    v2("v2_schedule_with_pickled_arg", {"schedule": "constant", "args": {"lr": {"__pickle__": code}}})
    v2("v2_object_dtype_declared", 0.1, arrays={},
       declared={"exp_avg": {"__array__": "obj", "dtype": "|O", "shape": [1]}},
       raw={"obj": _object_npy(payload(marker))})
    v2("v2_object_member_declared_as_float", 0.1, arrays={},
       declared={"exp_avg": {"__array__": "obj", "dtype": "<f8", "shape": [1]}},
       raw={"obj": _object_npy(payload(marker))})
    return files
