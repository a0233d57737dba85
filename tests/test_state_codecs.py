"""The int8 and bfloat16 state codecs of csrc/qstate.c, level by level.

The code of x = v * (1 / absmax) is the number of thresholds t_k <= x, t_k the smallest float32
above the exact midpoint of map entries k and k + 1 (the nearest entry, ties to the lower one;
NaN: code 0). The C codecs read it from a bucket table (csrc/qstate.c); these tests compare
them with that count, computed here in NumPy, on every value where the count can change: each
threshold and its neighbours, each bucket edge, both signs, zeros, NaN and the extremes. Every
codec level (scalar, AVX2, AVX-512F, AVX-512 VBMI byte-table decoding) must write the same codes,
absmax and parameters.
"""
import numpy as np
import pytest

import fastopt as fo
from fastopt import _kernels, _qstate
from fastopt.state_format import dynamic_map

LEVELS = _qstate.codec_levels()


def thresholds(qmap):
    """t_k, k < 255: the smallest float32 above the exact midpoint of qmap[k], qmap[k + 1]."""
    q = qmap.astype(np.float64)
    mid = (q[:-1] + q[1:]) / 2
    t = mid.astype(np.float32)
    up = t.astype(np.float64) <= mid
    t[up] = np.nextafter(t[up], np.float32(np.inf))
    return t


def count_codes(x, qmap):
    """The definition: #{k : t_k <= x}, NaN -> 0 (for a sorted threshold list)."""
    t = thresholds(qmap)
    x = np.asarray(x, np.float32)
    codes = np.searchsorted(t, x, side="right") if np.all(np.diff(t) >= 0) else \
        (x[:, None] >= t[None, :]).sum(axis=1)
    return np.where(np.isnan(x), 0, codes).astype(np.uint8)


def critical_values(qmap, rng):
    """Every x where a code can change: thresholds +- 3 ulp, bucket edges (low 15 mantissa bits
    all zero or all one, any K <= 8) from 2^-31 to 1, both signs, specials, random values."""
    bits = thresholds(qmap).view(np.int32).astype(np.int64)
    near = (bits[:, None] + np.arange(-3, 4)[None, :]).reshape(-1)
    edges = np.arange(96 << 8, 128 << 8, dtype=np.int64) << 15
    edges = np.concatenate([edges, edges + (1 << 15) - 1])
    pos = np.concatenate([near[near > 0], edges]).astype(np.uint32).view(np.float32)
    pos = pos[(pos >= 0) & (pos <= 1)]
    special = np.array([0.0, -0.0, np.nan, -np.nan, 1.0, -1.0, 1e-38, -1e-38, 1e-45,
                        np.nextafter(np.float32(1), np.float32(0))], np.float32)
    rand = (rng.uniform(-1, 1, 20000) * 10.0 ** rng.uniform(-9, 0, 20000)).astype(np.float32)
    return np.concatenate([pos, -pos, special, rand])


def encode_at_unit_absmax(x, qmap):
    """Codes of x from the C encoder, in blocks whose absmax is 1 (so x = v exactly)."""
    x = np.asarray(x, np.float32)
    blocks = -(-x.size // 255)
    where = np.zeros((blocks, 256), bool)
    where[:, :255] = True
    where = where.reshape(-1)
    where[np.flatnonzero(where)[x.size:]] = False
    flat = np.zeros(blocks * 256, np.float32)
    flat[255::256] = 1.0
    flat[where] = x
    codes, absmax = _qstate.encode("int8", flat, qmap)
    assert np.all(absmax == 1.0)
    return codes[where]


def maps():
    rng = np.random.default_rng(3)
    random_sorted = np.sort(rng.uniform(-1, 1, 256)).astype(np.float32)
    close = np.sort(np.concatenate([np.linspace(-1, 1, 250), 0.5 + 1e-6 * np.arange(6)]))
    unsorted = rng.uniform(-1, 1, 256).astype(np.float32)
    return {"signed": dynamic_map(True), "unsigned": dynamic_map(False),
            "random": random_sorted, "close": close.astype(np.float32), "unsorted": unsorted}


@pytest.mark.parametrize("level", LEVELS)
@pytest.mark.parametrize("name", list(maps()))
def test_codes_are_the_threshold_count(name, level):
    qmap = maps()[name]
    x = critical_values(qmap, np.random.default_rng(11))
    _qstate.use_codecs(level)
    try:
        got = encode_at_unit_absmax(x, qmap)
    finally:
        _qstate.use_codecs("best")
    want = count_codes(x, qmap)
    bad = np.flatnonzero(got != want)
    assert bad.size == 0, f"{bad.size} codes differ, e.g. x={x[bad[:5]]} got {got[bad[:5]]} " \
                          f"want {want[bad[:5]]}"


def bfloat16_nearest(x):
    """The definition: the top half of x's bits rounded to nearest even; a NaN keeps its top
    half with the quiet bit (0x40) set; subnormals round like any other value."""
    b = np.asarray(x, np.float32).view(np.uint32).astype(np.uint64)
    rne = ((b + 0x7FFF + ((b >> 16) & 1)) >> 16) & 0xFFFF
    return np.where(np.isnan(x), (b >> 16) | 0x40, rne).astype(np.uint16)


NORMAL_EDGES = np.array([0x3F808000, 0x3F818000, 0x3F80FFFF, 0x3F807FFF, 0x7F7FFFFF, 0x7F7F8000,
                         0x7F800000, 0x7F800001, 0x7FBFFFFF, 0x7FC00000, 0xFF800001, 0xFFC12345,
                         0x80000000, 0x00000000, 0x00800000, 0x80800000, 0xFF7FFFFF, 0x00808000,
                         0x00818000, 0xBF808000, 0xBF818000], np.uint32)  # ties, NaN, inf, max
SUBNORMAL_EDGES = np.array([0x00000001, 0x00007FFF, 0x00008000, 0x00018000, 0x007FFFFF,
                            0x007F8000, 0x80000001, 0x807FFFFF, 0x00400000], np.uint32)


def bfloat16_cases(rng):
    """Values in groups of 32 (the instruction's unit): groups without a subnormal (the edge
    values included: they reach the instruction) and groups with one (the integer path)."""
    bits = rng.integers(0, 2 ** 32, 4096, dtype=np.uint64).astype(np.uint32)
    sub = (bits & 0x7F800000) == 0
    bits[sub] |= 0x00800000                         # no stray subnormal in a clean group
    for g in (2, 5, 64, 127):                       # clean groups holding the edge values
        bits[32 * g:32 * g + NORMAL_EDGES.size] = NORMAL_EDGES
    for g, at in ((0, 3), (7, 31), (70, 0)):        # a subnormal in an otherwise normal group
        bits[32 * g + at] = SUBNORMAL_EDGES[g % SUBNORMAL_EDGES.size]
    bits[32 * 9:32 * 9 + SUBNORMAL_EDGES.size] = SUBNORMAL_EDGES
    return bits.view(np.float32)


@pytest.mark.parametrize("level", LEVELS)
def test_bfloat16_rounding_at_every_level(level):
    """Every level rounds to nearest even (the best one with the AVX-512 BF16 instruction where
    the CPU has it; it flushes subnormal inputs, so 32 values with one take the integer path)."""
    x = bfloat16_cases(np.random.default_rng(8))
    _qstate.use_codecs(level)
    try:
        for lo, hi in ((0, x.size), (0, 33), (64, 95), (32 * 64 + 1, 32 * 66), (0, 5)):
            got = _qstate.encode("bfloat16", x[lo:hi])
            np.testing.assert_array_equal(got, bfloat16_nearest(x[lo:hi]))
            back = _qstate.decode("bfloat16", got)
            np.testing.assert_array_equal(back.view(np.uint32), got.astype(np.uint32) << 16)
    finally:
        _qstate.use_codecs("best")


def _cpu_flags():
    try:
        with open("/proc/cpuinfo") as f:
            return next((line.split(":", 1)[1].split() for line in f
                         if line.startswith("flags")), None)
    except OSError:
        return None


def test_bfloat16_instruction_at_the_best_level_only():
    """The best level uses the BF16 instruction exactly where the CPU has it (Linux: its flags
    in /proc/cpuinfo); the other levels never do."""
    flags = _cpu_flags()
    if flags is not None:
        assert _qstate.bf16_instruction() == ("avx512_bf16" in flags and "avx512bw" in flags
                                              and "avx512dq" in flags)
    _qstate.use_codecs("avx512f" if _qstate.vector_codecs() else "scalar")
    try:
        assert not _qstate.bf16_instruction()
    finally:
        _qstate.use_codecs("best")


@pytest.mark.parametrize("level", LEVELS)
def test_scale_is_the_rounded_reciprocal(level):
    """x = v * fl(1 / absmax); a block whose reciprocal overflows (absmax below 2^-128)
    divides instead; an all-zero block is all code 0 (NaN)."""
    rng = np.random.default_rng(2)
    qmap = dynamic_map(True)
    v = rng.standard_normal(256 * 6).astype(np.float32) * 0.37
    v[256:512] *= np.float32(1e-39)                 # subnormal absmax
    v[512:768] = 0.0
    _qstate.use_codecs(level)
    try:
        codes, absmax = _qstate.encode("int8", v, qmap)
        back = _qstate.decode("int8", codes, absmax, qmap)
    finally:
        _qstate.use_codecs("best")
    blocks = v.reshape(-1, 256)
    np.testing.assert_array_equal(absmax, np.abs(blocks).max(axis=1))
    with np.errstate(divide="ignore", invalid="ignore"):
        r = (np.float32(1) / absmax).astype(np.float32)
        x = (blocks * r[:, None]).astype(np.float32)
        x[1] = blocks[1] / absmax[1]
    np.testing.assert_array_equal(codes.reshape(-1, 256), count_codes(x.reshape(-1), qmap)
                                  .reshape(-1, 256))
    assert np.all(codes[512:768] == 0)
    np.testing.assert_array_equal(back, qmap[codes] * np.repeat(absmax, 256))


def run(level, fmt, rounding, threads, name, hyper):
    rng = np.random.default_rng(4)
    shapes = [(5000,), (7 * 256,), (9 * 256 + 17,), (64, 70), (4096 + 300,)]
    params = [rng.standard_normal(s).astype(np.float32) for s in shapes]
    cls = getattr(fo, name)
    extra = {"rounding": rounding, "seed": 9} if fmt == "bfloat16" else {}
    opt = cls([p.copy() for p in params], **hyper, state_dtype=fmt, min_8bit_size=0, **extra)
    fo.set_num_threads(threads)
    _qstate.use_codecs(level)
    try:
        for step in range(4):
            grads = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 0, s)).astype(np.float32)
                     for s in shapes]
            if step == 2:
                grads[1][5] = np.nan
                # a NaN whose low bits would carry out of the rounding (all ones: it must
                # stay a NaN, not become -0)
                grads[1][6] = np.array(0x7FFFFFFF, np.uint32).view(np.float32)
            grads[2][: 4 * 256] *= 1e-18        # subnormal second moments (bfloat16 keeps them)
            opt.step(grads)
    finally:
        _qstate.use_codecs("best")
        fo.set_num_threads(0)
    out = [p.copy() for group in opt.param_groups for p in group["params"]]
    for st in opt.state.values():
        for buf in st.values():
            if hasattr(buf, "codes"):
                out += [buf.codes.copy(), buf.absmax.copy()]
            elif isinstance(buf, np.ndarray):
                out.append(buf.copy())
    return out


# Adam's, RAdam's and NAdam's fused loops run their common case (no maximize, no coupled weight
# decay, beta1 > 1/2) as an instance of its own (FO_PLAIN_<opt>, rules.h), the other cases
# with the branches: both are here, against the scalar level's block loop
CASES = [("Adam", dict(lr=1e-2)), ("AdamW", dict(lr=1e-2, amsgrad=True)),
         ("Adam", dict(lr=1e-2, weight_decay=0.1, maximize=True)),
         ("Adam", dict(lr=1e-2, betas=(0.3, 0.999))),
         ("RAdam", dict(lr=1e-2, weight_decay=0.05)), ("NAdam", dict(lr=1e-2)),
         ("Lion", dict(lr=1e-3)), ("RMSprop", dict(lr=1e-2, momentum=0.9)),
         ("SGD", dict(lr=1e-2, momentum=0.9, nesterov=True)), ("Adagrad", dict(lr=1e-2))]
CASE_IDS = ["-".join([name] + sorted(k for k in hyper if k != "lr")) for name, hyper in CASES]


@pytest.mark.skipif(len(LEVELS) < 2, reason="this machine has only the scalar codecs")
@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt,rounding", [("int8", "nearest"), ("bfloat16", "nearest"),
                                          ("bfloat16", "stochastic")])
@pytest.mark.parametrize("name,hyper", CASES, ids=CASE_IDS)
def test_every_codec_level_steps_alike(name, hyper, fmt, rounding, threads):
    """Scalar, AVX2, AVX-512F and AVX-512 VBMI codecs: the same parameters, codes,
    absmax and bfloat16 bits, partial blocks, NaN gradients, subnormal moments and threads
    included."""
    ref = run("scalar", fmt, rounding, threads, name, hyper)
    for level in LEVELS[1:]:
        got = run(level, fmt, rounding, threads, name, hyper)
        assert len(got) == len(ref)
        for a, b in zip(ref, got):
            np.testing.assert_array_equal(a, b, err_msg=f"{level}")


def test_codec_level_names():
    assert _qstate.codec_level() in ("scalar", "avx2", "avx512f", "avx512vbmi")
    with pytest.raises(ValueError, match="level"):
        _qstate.use_codecs("sse2")


@pytest.mark.skipif(not _kernels.has_isa_clones(),
                    reason="a build without per-instruction-set code runs the scalar codecs only")
def test_levels_are_capped_at_the_machine():
    """use_codecs("avx2") runs AVX2 where the CPU has it (every AVX-512 CPU does), the best
    level below it elsewhere; "best" is the highest level of all."""
    flags = _cpu_flags()
    try:
        _qstate.use_codecs("avx2")
        if flags is not None:
            assert _qstate.codec_level() == ("avx2" if "avx2" in flags else "scalar")
        capped = _qstate.codec_level()
        _qstate.use_codecs("avx512f")
        if flags is not None:
            assert _qstate.codec_level() == ("avx512f" if "avx512f" in flags else capped)
    finally:
        _qstate.use_codecs("best")
    order = ("scalar", "avx2", "avx512f", "avx512vbmi")
    assert all(order.index(_qstate.codec_level()) >= order.index(level)
               for level in LEVELS if level != "best")
    if flags is not None:               # codec_levels: every level this machine runs, in order
        vector = [lv for lv in ("avx2", "avx512f") if lv in flags]
        assert _qstate.codec_levels() == ["scalar"] + vector + (["best"] if vector else [])
        vbmi = "avx512vbmi" in flags and "avx512bw" in flags
        assert _qstate.codec_level() == ("avx512vbmi" if vbmi else (["scalar"] + vector)[-1])


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("name,hyper,option,off", [
    ("Adam", dict(lr=1e-2, amsgrad=True), "amsgrad", False),
    ("SGD", dict(lr=1e-2, momentum=0.9), "momentum", 0.0),
])
def test_a_slot_the_step_does_not_use_is_left_as_it_is(name, hyper, option, off, fmt):
    """State of an option switched off mid-run (amsgrad's max_exp_avg_sq, SGD's signed momentum
    buffer, whose map has no -1: re-encoding would shrink its absmax) is not touched."""
    rng = np.random.default_rng(8)
    w = rng.standard_normal(5000).astype(np.float32)
    opt = getattr(fo, name)([w], **hyper, state_dtype=fmt)
    for _ in range(3):
        opt.step([rng.standard_normal(5000).astype(np.float32)])
    key = "max_exp_avg_sq" if name == "Adam" else "momentum_buffer"
    buf = opt.state[0][key]
    before = [a.copy() for a in ((buf.codes, buf.absmax) if hasattr(buf, "codes") else (buf,))]
    opt.param_groups[0][option] = off
    for _ in range(3):
        opt.step([rng.standard_normal(5000).astype(np.float32)])
    buf = opt.state[0][key]
    after = (buf.codes, buf.absmax) if hasattr(buf, "codes") else (buf,)
    for a, b in zip(before, after):
        np.testing.assert_array_equal(a, b)
