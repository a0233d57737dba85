"""Low-bit optimizer state (``state_dtype="bfloat16"|"int8"``) in state_dicts and checkpoints.

- state_dict holds bfloat16 state as uint16 bits and int8 state as `Blockwise8` (codes uint8,
  absmax float32 per block of 256, the 256-value map); both round-trip through
  `load_state_dict` and `fo.save`/`fo.load`, and a run continues bit for bit after a save;
- state saved in one format loads into an optimizer keeping another (decoded and encoded);
- a file or state_dict with a malformed int8 buffer (wrong dtypes or sizes, a NaN, unsorted or
  out-of-range map) is refused with ValueError before its arrays are read where the
  declarations show it, and the optimizer is left unchanged.
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _qstate, checkpoint
from fastopt.state_format import Blockwise8, dynamic_map

from state_dicts import flatten

SHAPES = [(4100,), (33, 130), (300,)]       # two int8 tensors (one with a short block), one small
LOW = ["bfloat16", "int8"]
# every optimizer with a low-bit format, an option set that uses its low-bit slots
QUANT_CASES = [
    (fo.Adam, dict(lr=0.01, amsgrad=True)), (fo.AdamW, dict(lr=0.01)),
    (fo.SGD, dict(lr=0.1, momentum=0.9, nesterov=True)), (fo.Adagrad, dict(lr=0.1)),
    (fo.RMSprop, dict(lr=0.01, momentum=0.5)), (fo.Adadelta, dict()),
    (fo.Adamax, dict(lr=0.01)), (fo.Lion, dict(lr=1e-3)), (fo.RAdam, dict(lr=0.01)),
    (fo.NAdam, dict(lr=0.01)), (fo.ScheduleFreeAdamW, dict(lr=0.01)),
]


def _params(seed=0):
    rng = np.random.default_rng(seed)
    return [rng.standard_normal(s).astype(np.float32) for s in SHAPES]


def _grad(p, t):
    return (np.sin(np.arange(p.size).reshape(p.shape) * 0.37 + 3.0 * t) * 0.5).astype(p.dtype)


def _make(cls, hyper, fmt, seed=0, rounding="nearest"):
    params = _params(seed)
    extra = {"rounding": rounding, "seed": 7} if rounding != "nearest" else {}
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": hyper.get("lr", 1.0) / 2}],
              state_dtype=fmt, **hyper, **extra)
    if hasattr(opt, "train"):
        opt.train()
    return opt, params


def _step(opt, params, t):
    opt.step([_grad(p, t) for p in params])


def _fingerprint(opt, params):
    return flatten(opt.state_dict()), [p.tobytes() for p in params]


# ------------------------------------------------------------------------------ round trips
@pytest.mark.parametrize("fmt,rounding", [("bfloat16", "nearest"), ("int8", "nearest"),
                                          ("bfloat16", "stochastic")])
@pytest.mark.parametrize("cls, hyper", QUANT_CASES, ids=[c.__name__ for c, _ in QUANT_CASES])
def test_mid_run_save_and_load_continue_bit_for_bit(tmp_path, cls, hyper, fmt, rounding):
    """Stochastic rounding too: its noise is keyed by the group's step count, which the
    checkpoint holds."""
    opt, params = _make(cls, hyper, fmt, rounding=rounding)
    for t in range(3):
        _step(opt, params, t)
    sd = opt.state_dict()
    kinds = {type(v).__name__ if isinstance(v, Blockwise8) else str(v.dtype)
             for e in sd["state"].values() for k, v in e.items() if k != "step"
             and not np.isscalar(v) and getattr(v, "ndim", 1) > 0}
    assert ("Blockwise8" if fmt == "int8" else "uint16") in kinds
    fo.save(opt, tmp_path / "mid.npz")
    saved = [p.copy() for p in params]
    for t in range(3, 6):
        _step(opt, params, t)
    for how in ("file", "state_dict"):
        other, other_params = _make(cls, hyper, fmt, seed=1, rounding=rounding)
        if how == "file":
            fo.load(other, tmp_path / "mid.npz")
        else:
            other.load_state_dict(sd)
        for q, p in zip(other_params, saved):
            q[...] = p
        for t in range(3, 6):
            _step(other, other_params, t)
        assert [p.tobytes() for p in params] == [q.tobytes() for q in other_params], how
        assert flatten(opt.state_dict()) == flatten(other.state_dict()), how


def test_state_dict_holds_codes_absmax_and_map():
    opt, params = _make(fo.Adam, dict(lr=0.01), "int8")
    _step(opt, params, 0)
    sd = opt.state_dict()
    for i, p in enumerate(params):
        for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            buf = sd["state"][i][name]
            if p.size < fo.state_format.MIN_8BIT_SIZE:
                assert isinstance(buf, np.ndarray) and buf.dtype == np.float32
                continue
            assert isinstance(buf, Blockwise8)
            assert buf.codes.dtype == np.uint8 and buf.codes.shape == p.shape
            assert buf.absmax.dtype == np.float32 and buf.absmax.shape == (-(-p.size // 256),)
            np.testing.assert_array_equal(buf.qmap, dynamic_map(signed))
            # a copy: stepping the optimizer does not change the state_dict
            assert not np.shares_memory(buf.codes, opt.state[i][name].codes)
            assert not np.shares_memory(buf.absmax, opt.state[i][name].absmax)


# ------------------------------------------------------------------------ across formats
def _values(buf):
    if isinstance(buf, Blockwise8):
        return buf.dequantize()
    if buf.dtype == np.uint16:
        return _qstate.decode("bfloat16", buf)
    return buf


@pytest.mark.parametrize("src,dst", [("int8", "float32"), ("float32", "int8"),
                                     ("bfloat16", "float32"), ("float32", "bfloat16"),
                                     ("int8", "bfloat16"), ("bfloat16", "int8")])
def test_checkpoint_loads_into_another_state_format(tmp_path, src, dst):
    """Values decoded from the file's format and encoded into the optimizer's: exactly the
    optimizer's own encoding of the saved values; then it steps in its own format."""
    opt, params = _make(fo.Adam, dict(lr=0.01), src)
    for t in range(3):
        _step(opt, params, t)
    fo.save(opt, tmp_path / "c.npz")
    other, other_params = _make(fo.Adam, dict(lr=0.01), dst, seed=1)
    fo.load(other, tmp_path / "c.npz")
    for i, p in enumerate(params):
        for name, signed in (("exp_avg", True), ("exp_avg_sq", False)):
            mine, theirs = other.state[i][name], opt.state[i][name]
            want = _values(theirs)
            if isinstance(mine, Blockwise8):
                codes, absmax = _qstate.encode("int8", want, dynamic_map(signed))
                np.testing.assert_array_equal(mine.codes.reshape(-1), codes.reshape(-1))
                np.testing.assert_array_equal(mine.absmax, absmax)
            elif mine.dtype == np.uint16:
                np.testing.assert_array_equal(mine, _qstate.encode("bfloat16", want))
            else:
                assert mine.dtype == np.float32
                np.testing.assert_array_equal(mine, want)
            fmt = "float32" if dst == "int8" and p.size < 4096 else dst
            assert _qstate.format_of(mine) == fmt
    assert other.state_dict()["param_groups"][0]["lr"] == 0.01
    for q, p in zip(other_params, params):
        q[...] = p
    _step(other, other_params, 3)
    assert all(np.isfinite(p).all() for p in other_params)


def test_float64_optimizer_loads_low_bit_state():
    opt, params = _make(fo.Adam, dict(lr=0.01), "int8")
    _step(opt, params, 0)
    p64 = [p.astype(np.float64) for p in params]
    other = fo.Adam([{"params": p64[:2]}, {"params": p64[2:], "lr": 0.005}], lr=0.01)
    other.load_state_dict(opt.state_dict())
    np.testing.assert_array_equal(other.state[0]["exp_avg"],
                                  opt.state[0]["exp_avg"].dequantize().astype(np.float64))
    assert other.state[0]["exp_avg"].dtype == np.float64


def test_optimizers_without_low_bit_slots_refuse_low_bit_state():
    """Rprop keeps float32 state only: a uint16 buffer is not its state."""
    p = np.zeros(4, np.float32)
    opt = fo.Rprop([p], lr=0.01)
    opt.step([np.ones(4, np.float32)])
    sd = opt.state_dict()
    sd["state"][0]["prev"] = np.zeros(4, np.uint16)
    before = _fingerprint(opt, [p])
    with pytest.raises(TypeError, match="floating"):
        opt.load_state_dict(sd)
    assert _fingerprint(opt, [p]) == before


# ------------------------------------------------------------------------ refused buffers
def _bad_buffers():
    """(name, buffer replacing state[0]['exp_avg'] of an int8 Adam over SHAPES, message)."""
    n = 4100
    q = dynamic_map(True)
    codes, absmax = np.zeros(n, np.uint8), np.ones(17, np.float32)
    nan_map = q.copy()
    nan_map[5] = np.nan
    unsorted = q.copy()
    unsorted[[3, 4]] = unsorted[[4, 3]]
    wide = q.copy()
    wide[-1] = 2.0
    return [
        ("codes int8", Blockwise8(codes.astype(np.int8), absmax, q), "codes"),
        ("codes float32", Blockwise8(codes.astype(np.float32), absmax, q), "codes"),
        ("codes shape", Blockwise8(np.zeros(n - 1, np.uint8), absmax, q), "codes|shape"),
        ("absmax too short", Blockwise8(codes, absmax[:16], q), "absmax"),
        ("absmax too long", Blockwise8(codes, np.ones(18, np.float32), q), "absmax"),
        ("absmax float64", Blockwise8(codes, absmax.astype(np.float64), q), "absmax"),
        ("qmap 255", Blockwise8(codes, absmax, q[:255].copy()), "qmap"),
        ("qmap float64", Blockwise8(codes, absmax, q.astype(np.float64)), "qmap"),
        ("qmap NaN", Blockwise8(codes, absmax, nan_map), "qmap"),
        ("qmap unsorted", Blockwise8(codes, absmax, unsorted), "qmap"),
        ("qmap beyond 1", Blockwise8(codes, absmax, wide), "qmap"),
    ]


BAD = _bad_buffers()


def _int8_adam():
    opt, params = _make(fo.Adam, dict(lr=0.01), "int8")
    _step(opt, params, 0)
    return opt, params


@pytest.mark.parametrize("name,bad,match", BAD, ids=[b[0] for b in BAD])
def test_malformed_int8_buffer_in_a_state_dict_is_refused(name, bad, match):
    opt, params = _int8_adam()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = bad
    before = _fingerprint(opt, params)
    with pytest.raises(ValueError, match=match):
        opt.load_state_dict(sd)
    assert _fingerprint(opt, params) == before


@pytest.mark.parametrize("name,bad,match", BAD, ids=[b[0] for b in BAD])
def test_malformed_int8_buffer_in_a_file_is_refused(tmp_path, monkeypatch, name, bad, match):
    """A file written with the bad buffer (valid digest): refused with ValueError, nothing
    changed; when the declarations show the problem, before any state array is read."""
    opt, params = _int8_adam()
    sd = opt.state_dict()
    sd["state"][0]["exp_avg"] = bad
    path = tmp_path / "bad.npz"
    checkpoint.write_state_dict(sd, "Adam", path)
    target, target_params = _int8_adam()
    before = _fingerprint(target, target_params)
    read = []
    real = checkpoint._Archive.read

    def spy(self, member, dtype, shape):
        read.append(member)
        return real(self, member, dtype, shape)
    monkeypatch.setattr(checkpoint._Archive, "read", spy)
    with pytest.raises(ValueError, match=match):
        fo.load(target, path)
    assert _fingerprint(target, target_params) == before
    if name not in ("qmap NaN", "qmap unsorted", "qmap beyond 1"):     # seen in the data only
        assert set(read) <= {"__meta__", "__sha256__"}, read
    if name != "codes shape":          # only the parameter's shape shows that one
        with pytest.raises(ValueError, match=match):   # the reader alone refuses it too
            checkpoint.read_state_dict(path)


def test_malformed_int8_node_in_the_metadata_is_refused(tmp_path):
    """The metadata's int8 node must name exactly codes, absmax and qmap arrays."""
    import json
    import zipfile
    opt, params = _int8_adam()
    path = tmp_path / "c.npz"
    fo.save(opt, path)
    with zipfile.ZipFile(path) as z:
        members = {n: z.read(n) for n in z.namelist()}
    import io
    f = io.BytesIO(members["__meta__.npy"])
    np.lib.format.read_magic(f)
    np.lib.format.read_array_header_1_0(f)
    meta = json.loads(f.read())
    node = meta["state_dict"]["state"]["__dict__"][0][1]["exp_avg"]["__blockwise8__"]
    del node["qmap"]
    raw = json.dumps(meta).encode()
    buf = io.BytesIO()
    np.save(buf, np.frombuffer(raw, np.uint8))
    members["__meta__.npy"] = buf.getvalue()
    out = tmp_path / "edited.npz"
    with zipfile.ZipFile(out, "w") as z:
        for n, data in members.items():
            z.writestr(n, data)
    before = _fingerprint(opt, params)
    with pytest.raises(ValueError, match="malformed int8"):
        fo.load(opt, out)
    assert _fingerprint(opt, params) == before
