"""Checkpoints carry no code, are read within bounds, and hold everything an optimizer keeps.

- crafted files (tests/crafted_checkpoints.py) with every encoding a checkpoint ever used for
  code are refused and run nothing;
- a decompression bomb is refused before it is inflated;
- every kind of optimizer continues bit for bit after a save and load mid-run;
- leftovers of killed writers are cleaned, the file mode follows the umask.
"""
import inspect
import json
import os
import re
import subprocess
import sys
import time
import tracemalloc
import zipfile

import numpy as np
import pytest

import fastopt as fo
from fastopt import checkpoint
from fastopt.schedules import cosine_decay, join, linear_warmup, warmup_cosine

from crafted_checkpoints import crafted_files
from state_dicts import flatten


def _adam(shape=(5,), seed=1):
    p = np.random.default_rng(seed).standard_normal(shape)
    return fo.Adam([p], lr=0.01), p


def _fingerprint(opt, params):
    sd = opt.state_dict()
    state = {i: {k: (v.tobytes() if isinstance(v, np.ndarray) else v) for k, v in e.items()}
             for i, e in sd["state"].items()}
    return repr(sd["param_groups"]), state, [p.tobytes() for p in params]


# ------------------------------------------------------------------------------- no code
def test_crafted_checkpoints_run_no_code(tmp_path):
    marker = tmp_path / "marker"
    files = crafted_files(tmp_path, marker)
    assert len(files) == 8
    for name, path in files.items():
        opt, p = _adam()
        before = _fingerprint(opt, [p])
        with pytest.raises(ValueError) as info:
            fo.load(opt, path)
        assert _fingerprint(opt, [p]) == before, name
        with pytest.raises(ValueError):
            sd = checkpoint.read_state_dict(path)
            opt.load_state_dict(sd)       # only reached if reading accepted the file
        assert _fingerprint(opt, [p]) == before, name
        assert not marker.exists(), f"{name}: code from the checkpoint ran"
        if name == "v1_pickled_lr":
            assert "pickled Python object" in str(info.value)
            assert "param_groups[0]['lr']" in str(info.value)


def test_the_crafted_payload_would_run_if_unpickled(tmp_path):
    """The test above can fail: the same payload, unpickled, does create the marker."""
    import base64
    import pickle
    marker = tmp_path / "marker"
    path = crafted_files(tmp_path, marker)["v1_pickled_lr"]
    with zipfile.ZipFile(path) as z, z.open("__meta__.npy") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        meta = json.loads(f.read())
    pickle.loads(base64.b64decode(meta["param_groups"][0]["lr"]["__pickle__"]))
    assert marker.exists()


def test_no_pickle_on_the_load_path():
    for module in (checkpoint, fo.schedules):
        source = inspect.getsource(module)
        assert not re.search(r"import\s+pickle|\bpickle\.|allow_pickle\s*=\s*True|np\.load\(",
                             source), module.__name__


def test_old_version_1_files_without_pickles_still_load(tmp_path):
    """A version 1 file (arrays as state/<i>/<name>, scalars in the metadata) loads."""
    opt, p = _adam(seed=3)
    for _ in range(3):
        opt.step([np.cos(p)])
    meta = {"format": checkpoint.FORMAT, "version": 1, "optimizer": "Adam",
            "param_groups": [{"lr": 0.01, "betas": {"__tuple__": [0.9, 0.999]}, "eps": 1e-8,
                              "weight_decay": 0.0, "amsgrad": False, "maximize": False,
                              "decoupled_weight_decay": False, "params": [0]}],
            "scalars": {"0": {"step": 3.0}}}
    arrays = {"state/0/exp_avg": opt.state[0]["exp_avg"],
              "state/0/exp_avg_sq": opt.state[0]["exp_avg_sq"]}
    meta_bytes = json.dumps(meta).encode()
    with open(tmp_path / "v1.npz", "wb") as f:
        np.savez(f, __meta__=np.frombuffer(meta_bytes, np.uint8),
                 __sha256__=np.frombuffer(checkpoint._digest(meta_bytes, arrays).encode(),
                                          np.uint8), **arrays)
    other, q = _adam(seed=4)
    fo.load(other, tmp_path / "v1.npz")
    assert _fingerprint(other, [])[:2] == _fingerprint(opt, [])[:2]


# ----------------------------------------------------------------------- values as data
@pytest.mark.parametrize("lr", [
    cosine_decay(0.1, 40), warmup_cosine(0.1, 5, 50),
    join([linear_warmup(0.1, 3), join([cosine_decay(0.1, 10), cosine_decay(0.01, 10)], [10])],
         [3]),
])
def test_schedules_are_stored_as_data_and_equal_after_load(tmp_path, lr):
    opt, _ = _adam()
    opt.param_groups[0]["lr"] = lr
    fo.save(opt, tmp_path / "c.npz")
    with zipfile.ZipFile(tmp_path / "c.npz") as z, z.open("__meta__.npy") as f:
        np.lib.format.read_magic(f)
        np.lib.format.read_array_header_1_0(f)
        meta = json.loads(f.read())
    stored = meta["state_dict"]["param_groups"][0]["lr"]
    assert stored["schedule"] == type(lr).__name__
    other, _ = _adam()
    fo.load(other, tmp_path / "c.npz")
    assert other.param_groups[0]["lr"] == lr and type(other.param_groups[0]["lr"]) is type(lr)


def test_numpy_scalars_and_tuples_round_trip(tmp_path):
    opt, _ = _adam()
    opt.param_groups[0]["eps"] = np.float64(1e-7)
    fo.save(opt, tmp_path / "c.npz")
    other, _ = _adam()
    fo.load(other, tmp_path / "c.npz")
    assert other.param_groups[0]["eps"] == 1e-7
    assert other.param_groups[0]["betas"] == (0.9, 0.999)


@pytest.mark.parametrize("edit", ["step_inf", "step_huge", "lr_huge_int", "lr_nan"])
def test_overflowing_values_in_a_file_raise_value_error(tmp_path, edit):
    opt, p = _adam()
    opt.step([np.ones(5)])
    path = tmp_path / "c.npz"
    fo.save(opt, path)
    with np.load(path) as z:
        arrays = {k: z[k] for k in z.files}
    meta = json.loads(arrays.pop("__meta__").tobytes())
    arrays.pop("__sha256__")
    entry = meta["state_dict"]["state"]["__dict__"][0][1]
    group = meta["state_dict"]["param_groups"][0]
    if edit == "step_inf":
        entry["step"] = {"__float__": "inf"}
    elif edit == "step_huge":
        entry["step"] = 10 ** 400
    elif edit == "lr_huge_int":
        group["lr"] = 10 ** 400
    else:
        group["lr"] = {"__float__": "nan"}
    meta_bytes = json.dumps(meta).encode()
    with open(path, "wb") as f:
        np.savez(f, __meta__=np.frombuffer(meta_bytes, np.uint8),
                 __sha256__=np.frombuffer(checkpoint._digest(meta_bytes, arrays).encode(),
                                          np.uint8), **arrays)
    target, q = _adam(seed=9)
    before = _fingerprint(target, [q])
    with pytest.raises(ValueError):
        fo.load(target, path)
    assert _fingerprint(target, [q]) == before


# ------------------------------------------------------------------------ bounded reading
@pytest.fixture(scope="module")
def bomb(tmp_path_factory):
    """A 1 GiB array of zeros deflated into about 1 MiB, as a checkpoint member."""
    path = tmp_path_factory.mktemp("bomb") / "bomb.npz"
    n = 1 << 28                                          # float32: 1 GiB
    meta = {"format": checkpoint.FORMAT, "version": 2, "optimizer": "Adam",
            "state_dict": {"state": {"__dict__": [[0, {
                "step": 1.0,
                "exp_avg": {"__array__": "big", "dtype": "<f4", "shape": [n]},
            }]]}, "param_groups": [{"lr": 0.01, "params": [0]}]}}
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED, compresslevel=9) as z:
        z.writestr("__meta__.npy", _npy_bytes(np.frombuffer(json.dumps(meta).encode(), np.uint8)))
        z.writestr("__sha256__.npy", _npy_bytes(np.frombuffer(b"0" * 64, np.uint8)))
        with z.open("big.npy", "w") as f:
            header = np.lib.format.header_data_from_array_1_0(np.zeros(0, np.float32))
            header["shape"] = (n,)
            np.lib.format.write_array_header_1_0(f, header)
            chunk = bytes(1 << 24)
            for _ in range((n * 4) >> 24):
                f.write(chunk)
    assert os.path.getsize(path) < 2 << 20
    return path


def _npy_bytes(a):
    import io
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _refusal_cost(opt, path):
    tracemalloc.start()
    t0 = time.perf_counter()
    try:
        with pytest.raises(ValueError) as info:
            fo.load(opt, path)
    finally:
        elapsed = time.perf_counter() - t0
        peak = tracemalloc.get_traced_memory()[1]
        tracemalloc.stop()
    return elapsed, peak, str(info.value)


def test_decompression_bomb_is_refused_before_inflating(bomb):
    opt, _ = _adam()
    elapsed, peak, message = _refusal_cost(opt, bomb)
    assert "does not fit this optimizer" in message and "'big'" in message
    assert elapsed < 1.0 and peak < 100e6, (elapsed, peak)


def test_many_deflated_arrays_at_unknown_keys_are_refused_before_inflating(tmp_path):
    """Every array fits a parameter's shape and the digest is right, but 60 deflated arrays
    of zeros (1 MiB of file, 480 MB inflated) sit at a key Adam does not have: array members
    must be stored uncompressed, so this is refused before any of them is read."""
    shape = (1000, 1000)
    opt, _ = _adam(shape)
    zeros = np.zeros(shape)
    arrays = {f"junk{i}": zeros for i in range(60)}
    junk = [{"__array__": n, "dtype": "<f8", "shape": list(shape)} for n in arrays]
    meta = {"format": checkpoint.FORMAT, "version": 2, "optimizer": "Adam",
            "state_dict": {"state": {"__dict__": [[0, {"step": 3.0}]]},
                           "param_groups": [{"lr": 0.01, "params": [0], "junk": junk}]}}
    meta_bytes = json.dumps(meta).encode()
    path = tmp_path / "many.npz"
    with zipfile.ZipFile(path, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__meta__.npy", _npy_bytes(np.frombuffer(meta_bytes, np.uint8)))
        z.writestr("__sha256__.npy", _npy_bytes(np.frombuffer(
            checkpoint._digest(meta_bytes, arrays).encode(), np.uint8)))
        member = _npy_bytes(zeros)
        for name in arrays:
            z.writestr(name + ".npy", member)
    del member, arrays, zeros
    assert os.path.getsize(path) < 2 << 20
    before = _fingerprint(opt, [opt.param_groups[0]["params"][0]])
    elapsed, peak, message = _refusal_cost(opt, path)
    assert "stored compressed" in message
    assert elapsed < 1.0 and peak < 100e6, (elapsed, peak)
    assert _fingerprint(opt, [opt.param_groups[0]["params"][0]]) == before


def test_member_larger_than_its_declaration_is_refused(tmp_path, bomb):
    """The metadata declares the parameter's shape, the member holds 1 GiB: refused from the
    headers alone."""
    with zipfile.ZipFile(bomb) as z:
        members = {i.filename: i for i in z.infolist()}
        meta_raw = z.read("__meta__.npy")
    import io
    f = io.BytesIO(meta_raw)
    np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)
    meta_bytes = f.read()
    small = meta_bytes.replace(b"[268435456]", b"[5]")
    out = tmp_path / "liar.npz"
    with zipfile.ZipFile(bomb) as src, zipfile.ZipFile(out, "w") as dst:
        dst.writestr("__meta__.npy", _npy_bytes(np.frombuffer(small, np.uint8)))
        dst.writestr("__sha256__.npy", src.read("__sha256__.npy"))
        # copy the compressed bomb member as it is (no inflating)
        info = members["big.npy"]
        with open(bomb, "rb") as f:
            f.seek(info.header_offset)
            local = f.read(30)
            skip = int.from_bytes(local[26:28], "little") + int.from_bytes(local[28:30], "little")
            f.seek(info.header_offset + 30 + skip)
            data = f.read(info.compress_size)
        dst.fp.seek(dst.start_dir)
        new = zipfile.ZipInfo("big.npy", date_time=info.date_time)
        new.compress_type, new.CRC = info.compress_type, info.CRC
        new.compress_size, new.file_size = info.compress_size, info.file_size
        new.header_offset = dst.fp.tell()
        dst.fp.write(new.FileHeader(zip64=False))
        dst.fp.write(data)
        dst.start_dir = dst.fp.tell()
        dst.filelist.append(new)
        dst.NameToInfo[new.filename] = new
    opt, _ = _adam()
    elapsed, peak, message = _refusal_cost(opt, out)
    assert "declares" in message
    assert elapsed < 1.0 and peak < 100e6, (elapsed, peak)


def test_undeclared_member_is_refused(tmp_path):
    opt, p = _adam()
    opt.step([np.ones(5)])
    path = tmp_path / "c.npz"
    fo.save(opt, path)
    with zipfile.ZipFile(path, "a") as z:
        z.writestr("extra.npy", _npy_bytes(np.zeros(3)))
    with pytest.raises(ValueError, match="do not match its metadata"):
        fo.load(_adam()[0], path)


# ----------------------------------------------------------------- everything round-trips
def _mid_run_round_trip(make, step, tmp_path, n_before=4, n_after=4):
    """Run `n_before` steps, save, continue `n_after`; a fresh optimizer loaded from the file
    must take exactly the same `n_after` steps (parameters and state bit for bit)."""
    opt, params = make(0)
    for t in range(n_before):
        step(opt, params, t)
    fo.save(opt, tmp_path / "mid.npz")
    saved_params = [p.copy() for p in params]
    for t in range(n_before, n_before + n_after):
        step(opt, params, t)
    other, other_params = make(1)
    fo.load(other, tmp_path / "mid.npz")
    for q, p in zip(other_params, saved_params):
        q[...] = p
    for t in range(n_before, n_before + n_after):
        step(other, other_params, t)
    for p, q in zip(params, other_params):
        assert p.tobytes() == q.tobytes()
    a, b = opt.state_dict(), other.state_dict()
    assert repr(a["param_groups"]) == repr(b["param_groups"])
    assert flatten(a) == flatten(b)
    return a


def _grad(p, t):
    return (np.sin(np.arange(p.size).reshape(p.shape) + 3.0 * t) * 0.5).astype(p.dtype)


FIRST_ORDER = [
    (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)),
    (fo.Adagrad, dict(lr=0.1, lr_decay=0.01)),
    (fo.RMSprop, dict(lr=0.01, momentum=0.5, centered=True)),
    (fo.Adam, dict(lr=warmup_cosine(0.1, 2, 20), amsgrad=True)),
    (fo.AdamW, dict(lr=0.01)),
    (fo.Adadelta, dict()),
    (fo.Adamax, dict(lr=0.01)),
]


@pytest.mark.parametrize("cls, hyper", FIRST_ORDER, ids=[c.__name__ for c, _ in FIRST_ORDER])
def test_first_order_continues_identically(tmp_path, cls, hyper):
    def make(seed):
        params = [np.zeros((3, 4), np.float32), np.zeros(5)]
        return cls([{"params": params[:1]}, {"params": params[1:], "lr": 0.05}], **hyper), params
    _mid_run_round_trip(make, lambda o, ps, t: o.step([_grad(p, t) for p in ps]), tmp_path)


@pytest.mark.parametrize("case", ["master_dynamic", "stochastic_static"])
def test_mixed_precision_continues_identically(tmp_path, case):
    ml_dtypes = pytest.importorskip("ml_dtypes", reason="bfloat16 needs ml_dtypes "
                                    '(pip install "fastopt[test]")')
    bf16 = ml_dtypes.bfloat16

    def make(seed):
        params = [np.full((4, 3), 0.5, bf16), np.full(7, -0.25, np.float16)]
        if case == "master_dynamic":
            opt = fo.MixedPrecision(fo.Adam, params, lr=0.01,
                                    loss_scale=fo.DynamicLossScale(init_scale=8.0,
                                                                   growth_interval=2))
        else:
            opt = fo.MixedPrecision(fo.SGD, [params[0]], lr=0.01, momentum=0.9,
                                    master_weights=False, rounding="stochastic", seed=5,
                                    loss_scale=4.0)
            params = params[:1]
        return opt, params

    def step(opt, params, t):
        grads = [(_grad(p.astype(np.float32), t) * opt.loss_scale).astype(p.dtype)
                 for p in params]
        if t == 2 and case == "master_dynamic":
            grads[0][0, 0] = np.inf             # one skipped step: the counters move
        opt.step(grads)

    sd = _mid_run_round_trip(make, step, tmp_path)
    if case == "master_dynamic":
        assert sd["mixed_precision"]["skipped_steps"] == 1
        assert sd["mixed_precision"]["loss_scale"]["scale"] != 8.0


def test_newton_continues_identically(tmp_path):
    def make(seed):
        params = [np.zeros(3), np.zeros(2)]
        return fo.Newton(params, lr=0.5, damping=0.1), params

    def step(opt, params, t):
        grads = [p - np.arange(p.size) + 0.1 * t for p in params]
        hessians = [np.eye(p.size) * (2.0 + t) for p in params]
        opt.step(grads, hessians)
    _mid_run_round_trip(make, step, tmp_path)


def test_svrg_continues_identically(tmp_path):
    def make(seed):
        params = [np.zeros(4), np.zeros((2, 2), np.float32)]
        return fo.SVRG(params, lr=0.1, snapshot_every=3), params

    def step(opt, params, t):
        if opt.needs_snapshot:
            opt.snapshot([_grad(p, 100 + t) for p in params])
        opt.step([_grad(p, t) + p for p in params],
                 [_grad(p, t) + s for p, s in zip(params, opt.snapshot_params)])
    _mid_run_round_trip(make, step, tmp_path, n_before=4, n_after=5)


# --------------------------------------------------------------------------- the files
def test_save_removes_leftovers_of_dead_writers_only(tmp_path):
    path = tmp_path / "ckpt.npz"
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"],
                          capture_output=True, text=True).stdout.strip()
    names = {
        f".ckpt.npz.fastopt-{dead}-0123456789ab.tmp": False,          # removed
        f".ckpt.npz.fastopt-{os.getppid()}-0123456789ab.tmp": True,   # a live writer's
        f".ckpt.npz.fastopt-{os.getpid()}-0123456789ab.tmp": True,    # this process's own
        f".other.npz.fastopt-{dead}-0123456789ab.tmp": True,          # another target's
        f".ckpt.npz.fastopt-{dead}-notmine.tmp": True,                # not our pattern
        "ckpt.npz.bak": True,
    }
    for name in names:
        (tmp_path / name).write_bytes(b"x")
    fo.save(_adam()[0], path)
    left = set(os.listdir(tmp_path))
    assert left == {"ckpt.npz"} | {n for n, keep in names.items() if keep}


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX file modes")
@pytest.mark.parametrize("umask", [0o022, 0o077, 0o002])
def test_file_mode_follows_the_umask(tmp_path, umask):
    old = os.umask(umask)
    try:
        fo.save(_adam()[0], tmp_path / "c.npz")
    finally:
        os.umask(old)
    assert os.stat(tmp_path / "c.npz").st_mode & 0o777 == 0o666 & ~umask
