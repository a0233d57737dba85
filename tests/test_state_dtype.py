"""Low-bit optimizer state (``state_dtype="bfloat16"|"int8"``) against a NumPy oracle of the
quantized algorithm: from the state the optimizer holds (decoded here, in NumPy), one float64
step of the reference rule (tests/reference.py), then the new state encoded here in NumPy
(bfloat16: round to nearest even; int8: absmax per block of 256 and the nearest map entry).
Every optimizer of the table with a low-bit format x its option cases x {bfloat16 nearest,
bfloat16 stochastic, int8} x {1, 2 threads}; parameters to the oracle's float32 allowance,
state codes equal on almost every element and never more than one code (one bfloat16 unit)
apart.
"""
import pickle

import numpy as np
import pytest

import fastopt as fo
from fastopt import _qstate, _table
from fastopt.optim.first_order import CLASSES
from fastopt.state_format import Blockwise8, dynamic_map
from cases import CASES, EXTRA_CASES
from oracle_check import OracleRun
from reference import GROUP_KEYS

QNAMES = [n for n, o in _table.OPTIMIZERS.items()
          if len(_table.state_formats(_table.KERNELS[o.kernel])) > 1]
ALL = [(n, h) for table in (CASES, EXTRA_CASES) for n in QNAMES for h in table.get(n, [])]
IDS = [f"{n}-{k}" for k, (n, _) in enumerate(ALL)]
FORMATS = [("bfloat16", "nearest"), ("bfloat16", "stochastic"), ("int8", "nearest")]
SHAPES = [(5000,), (40, 130), (300,)]      # int8: two tensors >= min_8bit_size, one below


# ------------------------------------------------------------------ the NumPy codecs (oracle)
def np_bf16_decode(bits):
    return (np.asarray(bits, np.uint16).astype(np.uint32) << 16).view(np.float32).astype(np.float64)


def np_bf16_encode(v):
    """float64 -> float32 -> bfloat16 bits, nearest even."""
    x = np.asarray(v, np.float32).view(np.uint32).astype(np.uint64)
    return ((x + 0x7FFF + ((x >> 16) & 1)) >> 16).astype(np.uint16)


def np_q8_decode(buf):
    codes = buf.codes.reshape(-1)
    absmax = np.repeat(buf.absmax.astype(np.float64), 256)[:codes.size]
    return (buf.qmap.astype(np.float64)[codes] * absmax).reshape(buf.shape)


def np_q8_encode(v, qmap):
    """Blockwise: absmax = max |v| per block of 256, code = the nearest map value to v / absmax
    (the lower on a tie)."""
    flat = np.asarray(v, np.float64).reshape(-1)
    nb = -(-flat.size // 256)
    absmax = np.array([np.abs(flat[256 * j:256 * j + 256]).max() for j in range(nb)])
    with np.errstate(invalid="ignore"):                 # an all-zero block: NaN -> code 0
        x = flat / np.repeat(absmax, 256)[:flat.size]
    codes = np.abs(x[:, None] - qmap.astype(np.float64)[None, :]).argmin(axis=1)
    return codes.astype(np.uint8), absmax


def decoded(buf):
    if isinstance(buf, Blockwise8):
        return np_q8_decode(buf)
    if buf.dtype == np.uint16:
        return np_bf16_decode(buf)
    return np.asarray(buf, np.float64)


# ------------------------------------------------------------------------------ helpers
def problem(seed, n_steps):
    rng = np.random.default_rng(seed)
    params = [(rng.standard_normal(s) * 10.0 ** rng.uniform(-2, 0, s)).astype(np.float32)
              for s in SHAPES]
    grads = [[(rng.standard_normal(s) * 10.0 ** rng.uniform(-3, 0, s)).astype(np.float32)
              for s in SHAPES] for _ in range(n_steps)]
    return params, grads


def groups(hyper, params):
    return [dict(hyper, params=params[:2]), dict(hyper, params=params[2:], lr=hyper["lr"] * 2)]


def check_codes(mine, oracle_value, what, rounding):
    """The optimizer's low-bit buffer against the oracle's float64 value encoded in NumPy."""
    if isinstance(mine, Blockwise8):
        codes, absmax = np_q8_encode(oracle_value, mine.qmap)
        got = mine.codes.reshape(-1).astype(np.int64)
        diff = np.abs(got - codes)
        assert diff.max() <= 1, f"{what}: codes {diff.max()} apart"
        assert (diff == 0).mean() >= 0.995, f"{what}: {(diff != 0).mean():.2%} codes differ"
        np.testing.assert_allclose(mine.absmax, absmax, rtol=2e-5, atol=1e-30, err_msg=what)
        return
    want = np_bf16_encode(oracle_value).astype(np.int64).reshape(-1)
    got = mine.reshape(-1).astype(np.int64)
    diff = np.abs(got - want)
    # stochastic: either neighbour of the value (one unit from the nearest at most)
    assert diff.max() <= 1, f"{what}: bfloat16 {diff.max()} units apart"
    if rounding == "nearest":
        assert (diff == 0).mean() >= 0.995, f"{what}: {(diff != 0).mean():.2%} differ"


def run_against_oracle(name, hyper, fmt, rounding, threads, n_steps=3, seed=0, **options):
    params, grads = problem(seed, n_steps)
    cls = CLASSES[name]
    opt = cls(groups(hyper, params), state_dtype=fmt, rounding=rounding, seed=3, **hyper,
              **options)
    if hasattr(opt, "train"):
        opt.train()
    old = fo._kernels.get_parallel_threshold()
    fo.set_num_threads(threads)
    fo._kernels.set_parallel_threshold(1000)
    try:
        for t, step in enumerate(grads):
            before = [p.astype(np.float64) for p in params]
            states = [{k: decoded(v) for k, v in opt.state.get(i, {}).items()}
                      for i in range(len(params))]
            init = hyper.get("initial_accumulator_value", 0.0)
            if t == 0 and init:         # Adagrad's sum starts at init, held in the format
                held = np_bf16_decode(np_bf16_encode(init)) if fmt == "bfloat16" \
                    else np.float64(np.float32(init))     # int8: init * map's 1.0
                states = [{"sum": np.full(p.shape, held)} for p in params]
            oracle = OracleRun(name, groups(hyper, before), np.float32, states=states,
                               steps=[t, t])
            oracle.start = oracle.start + (
                [{k: g[k] for k in GROUP_KEYS if k in g} for g in opt.param_groups],)
            assert opt.step(step) is True
            oracle.step([g.astype(np.float64) for g in step])
            _, _, final_s, _, _ = oracle._base()
            what = f"{name} {hyper} {fmt}/{rounding} step {t + 1}"
            mine = [opt.state.get(i, {}) for i in range(len(params))]
            # params and float32 buffers to the oracle's allowance; low-bit ones by code
            as_checked = [{k: (final_s[i][k] if not (isinstance(v, Blockwise8)
                                                    or v.dtype == np.uint16) else final_s[i][k])
                           for k, v in m.items()} for i, m in enumerate(mine)]
            for i, m in enumerate(mine):
                for k, v in m.items():
                    if isinstance(v, np.ndarray) and v.dtype == np.float32:
                        as_checked[i][k] = v
            oracle.check(params, as_checked, what)
            for i, m in enumerate(mine):
                for k, v in m.items():
                    if isinstance(v, Blockwise8) or v.dtype == np.uint16:
                        check_codes(v, final_s[i][k], f"{what} {k!r} of param {i}", rounding)
    finally:
        fo.set_num_threads(0)
        fo._kernels.set_parallel_threshold(old)
    return opt


@pytest.mark.parametrize("threads", [1, 2])
@pytest.mark.parametrize("fmt,rounding", FORMATS, ids=[f"{f}-{r}" for f, r in FORMATS])
@pytest.mark.parametrize("name,hyper", ALL, ids=IDS)
def test_each_step_follows_the_quantized_oracle(name, hyper, fmt, rounding, threads):
    if fmt == "int8" and hyper.get("centered"):
        with pytest.raises(ValueError, match="centered"):
            CLASSES[name]([np.zeros(3, np.float32)], state_dtype=fmt, **hyper)
        return
    opt = run_against_oracle(name, hyper, fmt, rounding, threads)
    quant = {s.name: s.quant for s in _table.KERNELS[_table.OPTIMIZERS[name].kernel].state}
    for i, state in opt.state.items():
        for key, buf in state.items():
            if key not in quant:        # a per-parameter scalar (NAdam's mu_product)
                continue
            small = fmt == "int8" and buf.size < fo.state_format.MIN_8BIT_SIZE
            want = "float32" if quant[key] is None or small else fmt
            assert _qstate.format_of(buf) == want, (i, key)


def test_small_tensors_and_short_blocks_with_min_8bit_size_0():
    """min_8bit_size=0: every tensor int8, a 1-element one and short last blocks included."""
    global SHAPES
    saved = SHAPES
    SHAPES = [(1,), (257,), (300,)]
    try:
        opt = run_against_oracle("adam", dict(lr=0.01), "int8", "nearest", 2, min_8bit_size=0)
    finally:
        SHAPES = saved
    assert all(isinstance(v, Blockwise8) for s in opt.state.values() for v in s.values())


@pytest.mark.parametrize("fmt,rounding", FORMATS, ids=[f"{f}-{r}" for f, r in FORMATS])
def test_threads_do_not_change_results(fmt, rounding):
    out = []
    for threads in (1, 2):
        params, grads = problem(7, 4)
        opt = fo.Adam(params, lr=0.01, state_dtype=fmt, rounding=rounding, seed=11)
        fo.set_num_threads(threads)
        old = fo._kernels.get_parallel_threshold()
        fo._kernels.set_parallel_threshold(100)
        try:
            for step in grads:
                opt.step(step)
        finally:
            fo.set_num_threads(0)
            fo._kernels.set_parallel_threshold(old)
        out.append([p.copy() for p in params] + [decoded(v) for s in opt.state.values()
                                                 for v in s.values()])
    for a, b in zip(*out):
        np.testing.assert_array_equal(a, b)


def test_dynamic_maps():
    """256 sorted values in [-1, 1]; signed: symmetric but for -1 (one zero, 1.0 the top);
    unsigned: [0, 1]; the codecs round-trip every map value exactly."""
    s, u = dynamic_map(True), dynamic_map(False)
    for m in (s, u):
        assert m.dtype == np.float32 and m.shape == (256,) and not m.flags.writeable
        assert np.all(np.diff(m) > 0) and m[-1] == 1.0
    assert u[0] == 0.0 and s[127] == 0.0 and s[0] > -1.0
    np.testing.assert_array_equal(np.sort(-s[:127]), s[128:255])
    for m in (s, u):
        codes, absmax = _qstate.encode("int8", m, m)
        assert absmax[0] == 1.0
        np.testing.assert_array_equal(codes, np.arange(256))


def test_memory_per_parameter():
    """int8 state <= 2.05 bytes per parameter for Adam's two moments; bfloat16 4."""
    n = 1 << 16
    for fmt, most in (("int8", 2.05), ("bfloat16", 4.0), ("float32", 8.0)):
        w = np.zeros(n, np.float32)
        opt = fo.Adam([w], state_dtype=fmt)
        opt.step([np.ones(n, np.float32)])
        used = sum(v.nbytes for v in opt.state[0].values())
        assert used / n <= most, (fmt, used / n)


@pytest.mark.parametrize("kwargs,error", [
    (dict(state_dtype="int4"), ValueError), (dict(state_dtype="int8", rounding="stochastic"),
                                             ValueError),
    (dict(rounding="up"), ValueError), (dict(seed=-1), ValueError),
    (dict(min_8bit_size=-5), ValueError)])
def test_bad_options_raise_naming_them(kwargs, error):
    w = np.zeros(10, np.float32)
    with pytest.raises(error, match=next(iter(kwargs)) if "rounding" not in kwargs
                       or len(kwargs) == 1 else "rounding"):
        fo.Adam([w], **kwargs)


def test_float64_parameters_are_refused_for_low_bit_state():
    w = np.zeros(10)
    with pytest.raises(TypeError, match="float32"):
        fo.Adam([w], state_dtype="bfloat16")
    fo.Adam([w], state_dtype="float32")


@pytest.mark.parametrize("cls", [fo.Rprop, fo.ASGD, fo.ScheduleFreeSGD])
def test_optimizers_without_moments_take_no_state_dtype(cls):
    """Rprop (a sign and per-element step sizes), ASGD (ax, a parameter average) and
    Schedule-Free SGD (z, a parameter-like iterate) keep no moment that a low-bit format fits
    (the table's State.quant); NAdam's moments do."""
    with pytest.raises(TypeError):
        cls([np.zeros(3, np.float32)], state_dtype="int8")
    assert "nadam" in QNAMES and "asgd" not in QNAMES and "rprop" not in QNAMES


def test_scalar_and_vector_codecs_give_the_same_codes():
    """The AVX-512 codecs and the scalar ones (other machines) agree code for code, with the
    NumPy encoder, on values across the map's range, zeros, ties and NaN."""
    rng = np.random.default_rng(5)
    for signed in (True, False):
        qmap = dynamic_map(signed)
        v = rng.standard_normal(256 * 40) * 10.0 ** rng.uniform(-8, 0, 256 * 40)
        v = np.abs(v) if not signed else v
        mids = (qmap[:-1].astype(np.float64) + qmap[1:]) / 2
        v[:255] = mids                          # at the midpoints, rounded to float32
        v[255] = 1.0                            # block 0's absmax: x == v
        v[256:512] = 0.0                        # an all-zero block
        v = v.astype(np.float32)
        out = []
        for scalar in (False, True):
            _qstate.use_codecs("scalar" if scalar else "best")
            try:
                codes, absmax = _qstate.encode("int8", v, qmap)
                back = _qstate.decode("int8", codes, absmax, qmap)
            finally:
                _qstate.use_codecs("best")
            out.append((codes, absmax, back))
        for a, b in zip(*out):
            np.testing.assert_array_equal(a, b)
        want, _ = np_q8_encode(v.astype(np.float64), qmap)
        assert (out[0][0] != want).mean() < 1e-3 and np.abs(out[0][0] - want.astype(int)).max() <= 1
        np.testing.assert_array_equal(out[0][0][:512], want[:512])     # midpoints, zeros


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("dtype", [np.float16, np.float32])
def test_mixed_precision_refuses_a_low_bit_state_dtype(fmt, dtype):
    # its state is float32 (and its plans take float32 buffers only): refused at construction,
    # not accepted and then failing at every step
    w = np.zeros(5000, dtype)
    with pytest.raises(ValueError, match="MixedPrecision keeps its optimizer state in float32"):
        fo.MixedPrecision(fo.Adam, [w], lr=1e-3, state_dtype=fmt)
    with pytest.raises(ValueError, match="min_8bit_size"):
        fo.MixedPrecision(fo.Adam, [w], lr=1e-3, min_8bit_size=0)
    opt = fo.MixedPrecision(fo.Adam, [w], lr=1e-3, state_dtype="float32")
    opt.step([np.ones(5000, dtype)])


@pytest.mark.parametrize("key,value", [("state_dtype", "int8"), ("state_dtype", "bfloat16"),
                                       ("rounding", "stochastic"), ("seed", 3),
                                       ("min_8bit_size", 0)])
def test_a_param_group_cannot_ask_for_another_state_format(key, value):
    # the NumPy classes' state format is the optimizer's: a group naming another is refused
    # (it used to be kept in param_groups and silently ignored), at construction, in
    # add_param_group and when set between steps, with nothing changed
    a, b = np.zeros(5000, np.float32), np.zeros(5000, np.float32)
    with pytest.raises(ValueError, match=f"{key}=.*in a param group"):
        fo.Adam([{"params": [a], key: value}, {"params": [b]}], lr=1e-3)
    fmt = "int8" if value == "bfloat16" else "bfloat16"
    opt = fo.Adam([a], lr=1e-3, state_dtype=fmt)
    with pytest.raises(ValueError, match=f"{key}=.*in a param group"):
        opt.add_param_group({"params": [b], key: value})
    opt.step([np.ones(5000, np.float32)])
    before = (a.copy(), pickle.dumps(opt.state_dict()))
    opt.param_groups[0][key] = value
    with pytest.raises(ValueError, match=f"{key}=.*in a param group"):
        opt.step([np.ones(5000, np.float32)])
    del opt.param_groups[0][key]
    assert np.array_equal(a, before[0]) and pickle.dumps(opt.state_dict()) == before[1]
    # the optimizer's own values are accepted in a group
    same = fo.Adam([{"params": [b], "state_dtype": "bfloat16", "rounding": "nearest"}],
                   lr=1e-3, state_dtype="bfloat16")
    same.step([np.ones(5000, np.float32)])


@pytest.mark.parametrize("bad", [-1.0, float("nan")])
def test_a_saved_absmax_must_be_nonnegative(bad):
    # a negative or NaN absmax is no state a step can make: refused on load, nothing changed
    # (+inf is kept: an infinite gradient element taken into the state makes one)
    w = np.zeros(5000, np.float32)
    opt = fo.Adam([w], lr=1e-3, state_dtype="int8")
    opt.step([np.ones(5000, np.float32)])
    sd = opt.state_dict()
    before = pickle.dumps(sd)
    bad_sd = pickle.loads(before)
    bad_sd["state"][0]["exp_avg"].absmax[3] = bad
    with pytest.raises(ValueError, match=r"absmax must hold values >= 0.*block 3"):
        opt.load_state_dict(bad_sd)
    assert pickle.dumps(opt.state_dict()) == before
    inf_sd = pickle.loads(before)
    inf_sd["state"][0]["exp_avg"].absmax[3] = np.inf
    opt.load_state_dict(inf_sd)
