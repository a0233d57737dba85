"""fastopt.torch as a drop-in for torch.optim: torch's signatures and implementation keywords,
AdamW's decoupling across state_dicts, torch's error types and messages."""
import copy
import inspect

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
import fastopt.torch as ft  # noqa: E402
from fastopt import _table, _validate  # noqa: E402

# the table's optimizers that torch.optim has (compared with torch's class of the same name)
NAMES = [opt.class_name for opt in _table.OPTIMIZERS.values() if opt.reference is None]
IMPL = ("foreach", "fused", "capturable", "differentiable")
EXTRA = {"sutskever", "eps_in_sqrt",           # fastopt's own options, keyword-only
         "master_weights", "rounding", "seed",
         "state_dtype", "min_8bit_size"}           # low-bit state (fastopt._torch_qstate)


def pair(name):
    return getattr(ft, name), getattr(torch.optim, name)


def model(seed=0, dtype=torch.float64):
    torch.manual_seed(seed)
    return torch.nn.Sequential(torch.nn.Linear(5, 7), torch.nn.Tanh(),
                               torch.nn.Linear(7, 2)).to(dtype)


def run(m, opt, steps=12, seed=1):
    g = torch.Generator().manual_seed(seed)
    dtype = next(m.parameters()).dtype
    for _ in range(steps):
        x = torch.randn(16, 5, generator=g, dtype=dtype)
        opt.zero_grad()
        (m(x) ** 2).mean().backward()
        opt.step()


def max_diff(a, b):
    return max(float((p - q).detach().abs().max()) for p, q in zip(a.parameters(), b.parameters()))


# ------------------------------------------------------------------ 1. signatures, keywords
@pytest.mark.parametrize("name", NAMES)
def test_signature_is_torchs_plus_fastopt_options(name):
    ours, theirs = pair(name)
    mine = inspect.signature(ours.__init__).parameters
    ref = inspect.signature(theirs.__init__).parameters
    assert [(n, p.kind) for n, p in mine.items() if n not in EXTRA] == \
        [(n, p.kind) for n, p in ref.items()]
    for n in EXTRA & set(mine):
        assert mine[n].kind == inspect.Parameter.KEYWORD_ONLY
    for n, p in ref.items():
        if n not in ("self", "params"):
            assert mine[n].default == p.default, n


@pytest.mark.parametrize("name", NAMES)
def test_defaults_hold_torchs_keys_and_values(name):
    ours, theirs = pair(name)
    a, b = ours(model().parameters()), theirs(model().parameters())
    assert set(b.defaults) <= set(a.defaults)
    for key, value in b.defaults.items():
        assert a.defaults[key] == value, key
        assert a.param_groups[0][key] == b.param_groups[0][key], key


def test_positional_arguments_bind_as_in_torch():
    # torch.optim.RMSprop's 7th positional argument is capturable, Adagrad's 6th is foreach
    opt = ft.RMSprop(model().parameters(), 0.01, 0.99, 1e-8, 0.0, 0.0, True, False, None, True)
    group = opt.param_groups[0]
    assert group["centered"] is True and group["capturable"] is False and group["maximize"]
    opt = ft.Adagrad(model().parameters(), 0.1, 0.0, 0.0, 0.0, 1e-10, False)
    assert opt.param_groups[0]["foreach"] is False


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("flag", ["foreach", "fused"])
@pytest.mark.parametrize("value", [True, False, None])
def test_foreach_and_fused_are_recorded_and_change_no_number(name, flag, value):
    ours, theirs = pair(name)
    if flag not in inspect.signature(theirs.__init__).parameters:
        with pytest.raises(TypeError, match=flag):
            ours(model().parameters(), **{flag: value})
        return
    ref, m = model(), model()
    opt_ref = theirs(ref.parameters())
    opt = ours(m.parameters(), **{flag: value})
    assert opt.defaults[flag] is value and opt.param_groups[0][flag] is value
    run(ref, opt_ref)
    run(m, opt)
    assert max_diff(m, ref) < 1e-12
    sd = opt.state_dict()
    assert sd["param_groups"][0][flag] is value
    again = ours(model().parameters())
    again.load_state_dict(copy.deepcopy(sd))
    assert again.param_groups[0][flag] is value
    if flag == "fused" and value and "step" in opt.state[next(m.parameters())]:
        assert opt.state[next(m.parameters())]["step"].dtype == torch.float32   # as torch


@pytest.mark.parametrize("name", NAMES)
def test_capturable_and_differentiable_true_raise(name):
    ours, theirs = pair(name)
    accepted = inspect.signature(theirs.__init__).parameters
    for flag in ("capturable", "differentiable"):
        if flag not in accepted:
            continue
        with pytest.raises(RuntimeError, match=flag):
            ours(model().parameters(), **{flag: True})
        with pytest.raises(RuntimeError, match=flag):       # a param group asking for it
            ours([{"params": list(model().parameters()), flag: True}])
        opt = ours(model().parameters(), **{flag: False})
        assert opt.param_groups[0][flag] is False


@pytest.mark.parametrize("name", ["SGD", "Adagrad", "Adam", "AdamW"])
def test_fused_conflicts_raise_torchs_errors(name):
    ours, theirs = pair(name)
    for kwargs in (dict(fused=True, foreach=True), dict(fused=True, differentiable=True)):
        with pytest.raises(RuntimeError) as ref:
            theirs(model().parameters(), **kwargs)
        with pytest.raises(RuntimeError) as mine:
            ours(model().parameters(), **kwargs)
        assert str(mine.value).startswith(str(ref.value))


def test_implementation_keywords_of_the_wrong_type_raise_typeerror():
    with pytest.raises(TypeError, match="foreach"):
        ft.Adam(model().parameters(), foreach="yes")
    with pytest.raises(TypeError, match="capturable"):
        ft.Adam(model().parameters(), capturable=None)


# ----------------------------------------------------------------------------- 2. AdamW
@pytest.mark.parametrize("source", ["torch.optim.Adam", "fastopt.torch.Adam"])
def test_adamw_stays_decoupled_after_loading_an_adam_state_dict(source):
    src_cls = torch.optim.Adam if source == "torch.optim.Adam" else ft.Adam
    m0 = model()
    first = src_cls(m0.parameters(), lr=0.05, weight_decay=0.1)
    run(m0, first, steps=5)
    sd = first.state_dict()
    assert sd["param_groups"][0]["decoupled_weight_decay"] is False

    def cont(cls):
        m = copy.deepcopy(m0)
        opt = cls(m.parameters(), lr=0.05, weight_decay=0.1)
        opt.load_state_dict(copy.deepcopy(sd))
        assert opt.param_groups[0]["decoupled_weight_decay"] is True
        run(m, opt, steps=10, seed=3)
        return m

    ref, mine = cont(torch.optim.AdamW), cont(ft.AdamW)
    assert max_diff(mine, ref) < 1e-12
    coupled = copy.deepcopy(m0)
    opt = torch.optim.Adam(coupled.parameters(), lr=0.05, weight_decay=0.1)
    opt.load_state_dict(copy.deepcopy(sd))
    run(coupled, opt, steps=10, seed=3)
    assert max_diff(mine, coupled) > 1e-6            # the decay really is decoupled


# ----------------------------------------------------------------------------- 3. errors
# values out of range for each rule of fastopt._validate that torch refuses too
_OUT_OF_RANGE = {_validate.learning_rate: (-1, -0.5), _validate.nonneg: (-1, -0.5),
                 _validate.unit_open: (1.0, -0.25), _validate.unit_closed: (1.1,),
                 _validate.open_unit: (1.0, 0.0), _validate.greater_than_one: (1.0, 0.5)}


def _bad_values():
    """(class name, kwargs) for every hyperparameter the table gives a torch text: values out
    of its rule's range (for a pair such as betas, in each element in turn)."""
    out = []
    for opt in (o for o in _table.OPTIMIZERS.values() if o.class_name in NAMES):
        for h in opt.hyper:
            if h.torch_error is None or h.name == "nesterov":    # a cross-field check: below
                continue
            rule = getattr(_validate, h.rule)
            if rule in _validate.PAIRS:
                for i, element in enumerate(_validate.PAIRS[rule]):
                    for bad in _OUT_OF_RANGE[element]:
                        pair = list(h.default)
                        pair[i] = bad
                        out.append((opt.class_name, {h.name: tuple(pair)}))
            else:
                out += [(opt.class_name, {h.name: bad}) for bad in _OUT_OF_RANGE[rule]]
    out += [("SGD", {"nesterov": True}), ("SGD", {"nesterov": True, "momentum": 0.9,
                                                  "dampening": 0.1})]
    for name in NAMES:
        out.append((name, {"lr": torch.tensor([0.1, 0.2])}))
    out += [("Adam", {"betas": (0.9, torch.tensor(0.99))}),
            ("AdamW", {"betas": (torch.tensor(0.9), 0.99)}),
            ("Adam", {"lr": torch.tensor(0.01), "foreach": True}),
            ("AdamW", {"betas": (torch.tensor(0.9), torch.tensor(0.99)), "foreach": True})]
    return out


BAD = _bad_values()


@pytest.mark.parametrize("name,kwargs", BAD, ids=[f"{n}-{k}" for n, k in BAD])
def test_invalid_arguments_raise_torchs_error_type_and_message(name, kwargs):
    ours, theirs = pair(name)
    with pytest.raises(Exception) as ref:
        theirs(model().parameters(), **kwargs)
    with pytest.raises(Exception) as mine:
        ours(model().parameters(), **kwargs)
    assert type(mine.value) is type(ref.value)
    assert str(mine.value).startswith(str(ref.value)), (str(mine.value), str(ref.value))


def test_tensor_hyperparameters_must_have_one_element():
    # torch fails here on the comparison (RuntimeError: ambiguous boolean); fastopt says why
    with pytest.raises(ValueError, match=r"^Tensor betas\[0\] must be 1-element"):
        ft.Adam(model().parameters(), betas=(torch.tensor([0.9, 0.8]), torch.tensor(0.99)))
    with pytest.raises(TypeError, match="weight_decay"):     # fastopt's rule: not a number
        ft.SGD(model().parameters(), weight_decay=torch.zeros(2))


def test_invalid_value_in_a_later_param_group_names_the_group():
    opt = ft.Adam(model().parameters())
    with pytest.raises(ValueError, match=r"^Invalid learning rate: -2 \(param_groups\[1\]"):
        opt.add_param_group({"params": [torch.zeros(2, requires_grad=True)], "lr": -2})
    assert len(opt.param_groups) == 1


# float32 tensors: torch computes its per-step scalars in float32 0-d tensor arithmetic, and so
# does fastopt.torch (fastopt._torch_scalars), so float64 parameters follow torch's to rounding
@pytest.mark.parametrize("dtype,tol", [(torch.float64, 1e-12), (torch.float32, 1e-12)],
                         ids=["float64", "float32"])
@pytest.mark.parametrize("shape", [(), (1, 1, 1)], ids=["0-d", "1-element"])
@pytest.mark.parametrize("name", ["Adam", "AdamW"])
def test_tensor_betas_and_lr_work_on_cpu_as_in_torch(name, shape, dtype, tol):
    ours, theirs = pair(name)

    def hyper():
        return dict(lr=torch.full(shape, 0.02, dtype=dtype),
                    betas=(torch.full(shape, 0.8, dtype=dtype), torch.full(shape, 0.99, dtype=dtype)))

    ref, m = model(), model()
    opt_ref = theirs(ref.parameters(), **hyper())
    opt = ours(m.parameters(), **hyper())
    for a, b in zip(opt.defaults["betas"], opt_ref.defaults["betas"]):
        assert a.shape == b.shape == () and float(a) == float(b)
    run(ref, opt_ref)
    run(m, opt)
    assert max_diff(m, ref) < tol


# every table optimizer of torch.optim with a float32 tensor lr on float64 parameters: torch's
# per-step scalars (lr / bias_correction1, 1 - lr * weight_decay, ASGD's eta, NAdam's step
# coefficients, Adagrad's decayed lr) are float32 0-d tensor arithmetic; fastopt.torch does the
# same, so the trajectories agree to float64 rounding (before: up to 8e-8 apart for AdamW)
TENSOR_LR_OPTIONS = {"Adagrad": dict(lr_decay=0.05), "AdamW": dict(weight_decay=0.1),
                     "Adam": dict(weight_decay=0.1, amsgrad=True),
                     "NAdam": dict(decoupled_weight_decay=True, weight_decay=0.1),
                     "ASGD": dict(lambd=1e-2, t0=3.0), "RMSprop": dict(momentum=0.5)}


@pytest.mark.parametrize("lr_dtype", [torch.float32, torch.float64], ids=["f32-lr", "f64-lr"])
@pytest.mark.parametrize("name", NAMES)
def test_a_tensor_lr_gives_torchs_numbers_on_float64_parameters(name, lr_dtype):
    ours, theirs = pair(name)
    kw = TENSOR_LR_OPTIONS.get(name, {})
    ref, m = model(), model()
    opt_ref = theirs(ref.parameters(), lr=torch.tensor(0.013, dtype=lr_dtype), **kw)
    opt = ours(m.parameters(), lr=torch.tensor(0.013, dtype=lr_dtype), **kw)
    run(ref, opt_ref)
    run(m, opt)
    assert max_diff(m, ref) < 1e-13


def test_a_fused_group_reads_a_tensor_lr_as_a_double_as_torch():
    ours, theirs = pair("AdamW")
    ref, m = model(), model()
    opt_ref = theirs(ref.parameters(), lr=torch.tensor(0.013), fused=True)
    opt = ours(m.parameters(), lr=torch.tensor(0.013), fused=True)
    run(ref, opt_ref)
    run(m, opt)
    assert max_diff(m, ref) < 1e-13


@pytest.mark.parametrize("source", ["torch", "fastopt"])
def test_nadam_resumes_from_a_state_dict_in_torchs_float64_mu_product(source):
    # torch's load_state_dict casts mu_product to the parameter's dtype (float64) and its step
    # then multiplies it in place in float64; a resumed fastopt.torch NAdam does the same
    ours, theirs = pair("NAdam")
    first = model()
    opt0 = (theirs if source == "torch" else ours)(first.parameters(), lr=0.01)
    run(first, opt0, steps=4)
    sd = copy.deepcopy(opt0.state_dict())
    ref, m = copy.deepcopy(first), copy.deepcopy(first)
    opt_ref, opt = theirs(ref.parameters(), lr=0.01), ours(m.parameters(), lr=0.01)
    opt_ref.load_state_dict(copy.deepcopy(sd))
    opt.load_state_dict(copy.deepcopy(sd))
    run(ref, opt_ref, seed=5)
    run(m, opt, seed=5)
    assert max_diff(m, ref) < 1e-14
    for p, q in zip(m.parameters(), ref.parameters()):
        mine, torchs = opt.state[p]["mu_product"], opt_ref.state[q]["mu_product"]
        assert mine.dtype == torchs.dtype == torch.float64
        assert float(mine) == float(torchs)
