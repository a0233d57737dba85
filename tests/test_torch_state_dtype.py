"""fastopt.torch with low-bit state (``state_dtype="bfloat16"|"int8"``, fastopt._torch_qstate):
bit-identical to the NumPy classes of the same state_dtype (parameters and every state code),
the state in torch tensors (bfloat16 tensors; uint8 codes with ``_absmax`` and ``_qmap``),
state_dict round trips and conversions between formats, and the errors for what low-bit state
does not apply to.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch")
import fastopt as fo  # noqa: E402
import fastopt.torch as ft  # noqa: E402
from fastopt import _table  # noqa: E402
from fastopt import _torch_qstate as tq  # noqa: E402
from cases import CASES  # noqa: E402

QNAMES = [n for n, o in _table.OPTIMIZERS.items()
          if "torch" in o.adapters and len(_table.state_formats(_table.KERNELS[o.kernel])) > 1]
FORMATS = [("int8", "nearest"), ("bfloat16", "nearest"), ("bfloat16", "stochastic")]
SHAPES = [(5000,), (40, 130), (300,)]      # int8: two tensors >= min_8bit_size, one below
CASE_IDS = [(n, k) for n in QNAMES for k in range(min(2, len(CASES.get(n, [{}]))))]


def _hyper(name, k):
    cases = CASES.get(name) or [{}]
    return dict(cases[k])


def _pair(name, hyper, state_dtype, rounding, seed=0):
    """A fastopt.torch optimizer and the NumPy one over copies of the same parameters."""
    rng = np.random.default_rng(1)
    arrays = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    tensors = [torch.tensor(a.copy()) for a in arrays]
    opt = _table.OPTIMIZERS[name]
    kw = dict(state_dtype=state_dtype, rounding=rounding, seed=seed)
    t_opt = getattr(ft, opt.class_name)(tensors, **hyper, **kw)
    n_opt = getattr(fo, opt.class_name)(arrays, **hyper, **kw)
    if opt.modes is not None:
        t_opt.train()
    return tensors, t_opt, arrays, n_opt


def _steps(tensors, t_opt, arrays, n_opt, n, seed=2):
    rng = np.random.default_rng(seed)
    for _ in range(n):
        grads = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
        for t, g in zip(tensors, grads):
            t.grad = torch.tensor(g)
        t_opt.step()
        n_opt.step(grads)


def _same_state(t_opt, tensors, n_opt):
    """Every state buffer of the NumPy optimizer equals the torch state, code for code."""
    for i, t in enumerate(tensors):
        st, ref = t_opt.state[t], n_opt.state.get(i, {})
        assert sorted(k for k in st if k in t_opt.spec.state) == \
            sorted(k for k in ref if k in t_opt.spec.state)
        for name, buf in ref.items():
            if name == "step" or not hasattr(buf, "shape"):
                continue
            mine = st[name]
            if hasattr(buf, "codes"):
                np.testing.assert_array_equal(mine.numpy(), buf.codes, err_msg=name)
                np.testing.assert_array_equal(st[name + "_absmax"].numpy(), buf.absmax)
                np.testing.assert_array_equal(st[name + "_qmap"].numpy(), buf.qmap)
            elif buf.dtype == np.uint16:
                assert mine.dtype == torch.bfloat16, name
                np.testing.assert_array_equal(mine.view(torch.int16).numpy().view(np.uint16),
                                              buf, err_msg=name)
            else:
                np.testing.assert_array_equal(mine.numpy(), buf, err_msg=name)


@pytest.mark.parametrize("fmt", FORMATS, ids=lambda f: "-".join(f))
@pytest.mark.parametrize("name,k", CASE_IDS)
def test_matches_numpy_class(name, k, fmt):
    hyper = _hyper(name, k)
    if fmt[0] == "int8" and hyper.get("centered"):
        with pytest.raises(ValueError, match="centered"):
            _pair(name, hyper, *fmt)
        return
    tensors, t_opt, arrays, n_opt = _pair(name, hyper, *fmt, seed=7)
    _steps(tensors, t_opt, arrays, n_opt, 4)
    if _table.OPTIMIZERS[name].param_scalars:
        # per-parameter scalars (NAdam's mu_product) are float32 tensors in fastopt.torch, as
        # in torch, and float64 in the NumPy class: the same algorithm, not the same bits
        for t, a in zip(tensors, arrays):
            np.testing.assert_allclose(t.numpy(), a, rtol=1e-5, atol=1e-6)
        return
    for t, a in zip(tensors, arrays):
        np.testing.assert_array_equal(t.numpy(), a)
    _same_state(t_opt, tensors, n_opt)


def test_state_tensors_and_bytes():
    tensors, opt, arrays, n_opt = _pair("adam", {}, "int8", "nearest")
    _steps(tensors, opt, arrays, n_opt, 1)
    st = opt.state[tensors[0]]
    assert st["exp_avg"].dtype == torch.uint8 and st["exp_avg"].shape == tensors[0].shape
    assert st["exp_avg_absmax"].shape == (-(-5000 // 256),)
    assert st["exp_avg_qmap"][0] < 0 <= st["exp_avg_sq_qmap"][0]
    small = opt.state[tensors[2]]         # 300 < min_8bit_size: float32
    assert small["exp_avg"].dtype == torch.float32 and "exp_avg_absmax" not in small
    # int8 state <= 2.05 bytes per parameter (the shared 256-value maps aside)
    big = [t for t in tensors if t.numel() >= 4096]
    nbytes = sum(v.numel() * v.element_size() for t in big
                 for k, v in opt.state[t].items() if k not in ("step",) and "qmap" not in k)
    assert nbytes / sum(t.numel() for t in big) <= 2.05
    tensors, opt, arrays, n_opt = _pair("adam", {}, "bfloat16", "nearest")
    _steps(tensors, opt, arrays, n_opt, 1)
    nbytes = sum(v.numel() * v.element_size() for t in tensors
                 for k, v in opt.state[t].items() if k != "step")
    assert nbytes / sum(t.numel() for t in tensors) == 4


@pytest.mark.parametrize("state_dtype", ["int8", "bfloat16"])
def test_state_dict_round_trip(state_dtype):
    tensors, opt, arrays, n_opt = _pair("adam", {}, state_dtype, "nearest")
    _steps(tensors, opt, arrays, n_opt, 2)
    sd = opt.state_dict()
    clones = [t.detach().clone() for t in tensors]
    other = ft.Adam(clones, state_dtype=state_dtype)
    other.load_state_dict(copy.deepcopy(sd))     # torch's state_dict holds references
    st = other.state[clones[0]]
    assert st["exp_avg"].dtype == (torch.uint8 if state_dtype == "int8" else torch.bfloat16)
    rng = np.random.default_rng(9)
    for _ in range(2):
        grads = [torch.tensor(rng.standard_normal(s).astype(np.float32)) for s in SHAPES]
        for a, b, g in zip(tensors, clones, grads):
            a.grad, b.grad = g.clone(), g.clone()
        opt.step()
        other.step()
    for a, b in zip(tensors, clones):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
        for key, value in opt.state[a].items():
            torch.testing.assert_close(value, other.state[b][key], rtol=0, atol=0)


def test_float32_checkpoint_into_int8_and_back():
    """A torch.optim.Adam state_dict loads into an int8 optimizer (quantized) and an int8 one
    with state_dtype='float32' in its groups into fastopt.torch.Adam (decoded; the groups of a
    state_dict are loaded as they are, as in torch)."""
    rng = np.random.default_rng(4)
    p = torch.tensor(rng.standard_normal(5000).astype(np.float32))
    ref = torch.optim.Adam([p], lr=1e-3)
    p.grad = torch.tensor(rng.standard_normal(5000).astype(np.float32))
    ref.step()
    q = p.detach().clone()
    opt = ft.Adam([q], lr=1e-3, state_dtype="int8")
    opt.load_state_dict(ref.state_dict())
    st = opt.state[q]
    assert st["exp_avg"].dtype == torch.uint8
    back = tq._values(st, "exp_avg", q)
    m = ref.state[p]["exp_avg"].numpy()
    absmax = np.repeat(st["exp_avg_absmax"].numpy(), 256)[:5000]
    assert np.all(np.abs(back - m) <= 0.02 * absmax + 1e-12)
    r = q.detach().clone()
    plain = ft.Adam([r], lr=1e-3)
    sd = copy.deepcopy(opt.state_dict())
    assert sd["param_groups"][0]["state_dtype"] == "int8"
    sd["param_groups"][0]["state_dtype"] = "float32"
    plain.load_state_dict(sd)
    assert plain.state[r]["exp_avg"].dtype == torch.float32
    np.testing.assert_array_equal(plain.state[r]["exp_avg"].numpy(), back)
    assert "exp_avg_absmax" not in plain.state[r]
    r.grad = q.grad = torch.ones(5000)
    plain.step()
    opt.step()


def test_state_dtype_changed_in_group_converts_state():
    tensors, opt, arrays, n_opt = _pair("adam", {}, "bfloat16", "nearest")
    _steps(tensors, opt, arrays, n_opt, 1)
    opt.param_groups[0]["state_dtype"] = "int8"
    for t in tensors:
        t.grad = torch.ones_like(t)
    opt.step()
    assert opt.state[tensors[0]]["exp_avg"].dtype == torch.uint8
    assert opt.state[tensors[2]]["exp_avg"].dtype == torch.float32      # below 4096


def _decoded(st, name):
    """The float32 values of slot `name` of a torch state entry, in any format."""
    t = st[name]
    if t.dtype == torch.uint8:
        return torch.from_numpy(fo.state_format.Blockwise8(
            t.numpy(), st[name + "_absmax"].numpy(), st[name + "_qmap"].numpy()).dequantize())
    return t.float().clone()


@pytest.mark.parametrize("start", ["int8", "bfloat16"])
def test_state_dtype_changed_to_float32_decodes_state(start):
    """Back to float32 state (the group's state_dtype set to "float32" between steps): the
    low-bit buffers are decoded into float32 tensors and the step continues from them."""
    tensors, opt, arrays, n_opt = _pair("adam", {}, start, "nearest")
    _steps(tensors, opt, arrays, n_opt, 2)
    m0 = [_decoded(opt.state[t], "exp_avg") for t in tensors]
    opt.param_groups[0]["state_dtype"] = "float32"
    grads = [torch.randn(t.shape, generator=torch.Generator().manual_seed(5)) for t in tensors]
    for t, g in zip(tensors, grads):
        t.grad = g
    opt.step()
    for t, m, g in zip(tensors, m0, grads):
        st = opt.state[t]
        assert st["exp_avg"].dtype == st["exp_avg_sq"].dtype == torch.float32
        assert not any(k.endswith(("_absmax", "_qmap")) for k in st)
        torch.testing.assert_close(st["exp_avg"], m.lerp(g, 0.1), rtol=1e-6, atol=1e-7)


def test_loaded_options_are_checked_against_the_parameters():
    """An int8 state_dict loaded into an optimizer whose parameter int8 state refuses (as the
    constructor and add_param_group refuse it) is refused, nothing changed."""
    src = torch.linspace(-1, 1, 5000)
    opt = ft.Adam([src], lr=1e-2, state_dtype="int8")
    src.grad = torch.ones(5000)
    opt.step()
    sd = copy.deepcopy(opt.state_dict())
    for w, err in ((torch.linspace(-1, 1, 5000, dtype=torch.float64), TypeError),
                   (torch.linspace(-1, 1, 10000)[::2], ValueError)):
        other = ft.Adam([w], lr=1e-2)
        w.grad = torch.ones_like(w)
        other.step()
        before = {k: v.clone() for k, v in other.state[w].items()}
        with pytest.raises(err, match=r"param_groups\[0\]\['params'\]\[0\].*state_dtype='int8'"):
            other.load_state_dict(copy.deepcopy(sd))
        assert other.param_groups[0]["state_dtype"] == "float32"
        for k, v in before.items():
            torch.testing.assert_close(other.state[w][k], v, rtol=0, atol=0)
        other.step()


@pytest.mark.parametrize("fault", ["qmap out of [-1, 1]", "qmap constant", "absmax 2-d",
                                   "absmax negative", "absmax NaN"])
def test_saved_maps_and_absmax_are_checked_as_the_numpy_classes_check_them(fault):
    tensors, opt, arrays, n_opt = _pair("adam", {}, "int8", "nearest")
    _steps(tensors, opt, arrays, n_opt, 1)
    sd = opt.state_dict()
    bad = {**sd, "state": {**sd["state"], 0: {**sd["state"][0]}}}
    entry = bad["state"][0]
    if fault == "qmap out of [-1, 1]":
        entry["exp_avg_qmap"] = entry["exp_avg_qmap"] * 2
    elif fault == "qmap constant":
        entry["exp_avg_qmap"] = torch.zeros(256)
    elif fault == "absmax 2-d":
        entry["exp_avg_absmax"] = entry["exp_avg_absmax"].reshape(-1, 1)
    else:
        entry["exp_avg_absmax"] = entry["exp_avg_absmax"].clone()
        entry["exp_avg_absmax"][0] = -1.0 if fault == "absmax negative" else float("nan")
    key = "exp_avg_absmax" if fault.startswith("absmax") else "exp_avg_qmap"
    before = {k: v.clone() for k, v in opt.state[tensors[0]].items()}
    with pytest.raises(ValueError, match=key):
        opt.load_state_dict(bad)
    for k, v in before.items():
        torch.testing.assert_close(opt.state[tensors[0]][k], v, rtol=0, atol=0)


def test_seed_beyond_64_bits_is_refused():
    """The noise takes a 64-bit seed: a larger one is an error, not a seed taken modulo 2^64."""
    p = torch.zeros(5000)
    for make in (lambda s: ft.Adam([p], state_dtype="bfloat16", rounding="stochastic", seed=s),
                 lambda s: fo.Adam([np.zeros(5000, np.float32)], state_dtype="bfloat16",
                                   rounding="stochastic", seed=s)):
        make(2 ** 64 - 1)
        with pytest.raises(ValueError, match="seed"):
            make(2 ** 64)


def test_errors_name_the_argument():
    p = torch.zeros(5000)
    with pytest.raises(ValueError, match="state_dtype"):
        ft.Adam([p], state_dtype="int4")
    with pytest.raises(ValueError, match="rounding"):
        ft.Adam([p], state_dtype="int8", rounding="stochastic")
    with pytest.raises(TypeError, match="min_8bit_size"):
        ft.Adam([p], state_dtype="int8", min_8bit_size=1.5)
    with pytest.raises(ValueError, match="centered"):
        ft.RMSprop([p], state_dtype="int8", centered=True)
    with pytest.raises(TypeError, match="state_dtype"):
        ft.ASGD([p], state_dtype="int8")                # ASGD keeps no low-bit state
    for bad, err in ((torch.zeros(5000, dtype=torch.float64), TypeError),
                     (torch.zeros(5000, dtype=torch.bfloat16), TypeError),
                     (torch.zeros(100, 50).t(), ValueError)):
        with pytest.raises(err, match=r"param_groups\[0\]\['params'\]\[0\].*state_dtype"):
            ft.Adam([bad], state_dtype="int8")
    # a later group is refused whole, the optimizer unchanged
    opt = ft.Adam([p], state_dtype="bfloat16")
    with pytest.raises(TypeError, match=r"param_groups\[1\]"):
        opt.add_param_group({"params": [torch.zeros(3, dtype=torch.float64)]})
    assert len(opt.param_groups) == 1


def test_parameters_off_cpu_and_cuda_are_refused():
    """Low-bit state runs on CPU and CUDA tensors (tests/test_torch_cuda_qstate.py); a tensor
    on any other device is refused, naming it."""
    fmt = tq.group_format(ft.Adam.spec, {"state_dtype": "int8"}, "g")
    with pytest.raises(TypeError, match="state_dtype='int8' is implemented for CPU and CUDA"):
        tq.check_param(torch.zeros(5000, device="meta"), "param_groups[0]['params'][0]", fmt)


def test_bad_saved_codes_change_nothing():
    tensors, opt, arrays, n_opt = _pair("adam", {}, "int8", "nearest")
    _steps(tensors, opt, arrays, n_opt, 1)
    sd = opt.state_dict()
    before = {k: v.clone() for k, v in opt.state[tensors[0]].items()}
    bad = {**sd, "state": {**sd["state"], 0: {**sd["state"][0]}}}
    bad["state"][0]["exp_avg_absmax"] = torch.zeros(3)
    with pytest.raises(ValueError, match="exp_avg_absmax"):
        opt.load_state_dict(bad)
    bad["state"][0].pop("exp_avg_absmax")
    with pytest.raises(ValueError, match="exp_avg_absmax"):
        opt.load_state_dict(bad)
    for k, v in before.items():
        torch.testing.assert_close(opt.state[tensors[0]][k], v, rtol=0, atol=0)


@pytest.mark.parametrize("name", ["Adam", "SGD", "Lion"])
def test_stochastic_bfloat16_state_dict_round_trip(name):
    """A stochastic-bfloat16 optimizer loads its own state_dict (it raised: the 16-bit
    parameters' option check ran on it) and continues with the noise of the uninterrupted run:
    by the saved step count where the torch optimizer counts steps (Adam), by the group's
    saved 'noise_calls' where it does not (SGD, Lion)."""
    hyper = dict(lr=1e-2, momentum=0.9) if name == "SGD" else dict(lr=1e-2)
    kw = dict(state_dtype="bfloat16", rounding="stochastic", seed=3)
    g = torch.Generator().manual_seed(0)
    grads = [torch.randn(5000, generator=g) for _ in range(6)]
    p = torch.nn.Parameter(torch.randn(5000, generator=g))
    q = torch.nn.Parameter(p.detach().clone())
    a = getattr(ft, name)([p], **hyper, **kw)
    for x in grads[:3]:
        p.grad = x.clone()
        a.step()
    sd = copy.deepcopy(a.state_dict())
    with torch.no_grad():
        q.copy_(p)
    b = getattr(ft, name)([q], **hyper, **kw)
    b.load_state_dict(sd)
    for x in grads[3:]:
        p.grad, q.grad = x.clone(), x.clone()
        a.step()
        b.step()
    torch.testing.assert_close(q, p, rtol=0, atol=0)
    for key, value in a.state[p].items():
        torch.testing.assert_close(b.state[q][key], value, rtol=0, atol=0)
    if name != "Adam":
        assert sd["param_groups"][0]["noise_calls"] == 3
    else:                        # counted by the steps: no key
        assert "noise_calls" not in sd["param_groups"][0]


@pytest.mark.parametrize("dtype,kw", [
    (torch.float32, dict(state_dtype="bfloat16")),
    (torch.bfloat16, dict(master_weights=False)),
], ids=["bfloat16-state", "bfloat16-parameters"])
def test_stochastic_noise_of_a_parameter_does_not_depend_on_the_others_gradients(dtype, kw):
    """A parameter draws the noise of its own index in the optimizer, also in a step where an
    earlier parameter of its group has no gradient (the plan then holds fewer parameters; it
    took its position among those with gradients): stochastic bfloat16 state, and bfloat16
    parameters rounded stochastically."""
    kw = dict(lr=1e-2, rounding="stochastic", seed=4, **kw)
    g = torch.Generator().manual_seed(1)
    start = [torch.randn(5000, generator=g).to(dtype) for _ in range(3)]
    grads = [[torch.randn(5000, generator=g).to(dtype) for _ in range(3)] for _ in range(3)]
    runs = []
    for skip_middle in (False, True):
        ps = [torch.nn.Parameter(s.clone()) for s in start]
        opt = ft.Adam(ps, **kw)
        for gs in grads:
            for k, (p, x) in enumerate(zip(ps, gs)):
                p.grad = None if skip_middle and k == 1 else x.clone()
            opt.step()
        runs.append(ps)
    as_bits = torch.int32 if dtype == torch.float32 else torch.int16
    for k in (0, 2):
        assert torch.equal(runs[1][k].detach().view(as_bits), runs[0][k].detach().view(as_bits))
