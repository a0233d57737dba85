"""One validation path for every hyperparameter (fastopt._validate).

For every optimizer class, every functional form, MixedPrecision (and DynamicLossScale),
Newton, SVRG and fastopt.torch, and every numeric hyperparameter:

- any real number is accepted: NumPy scalars (np.float32, np.float16, np.int64 ...), 0-d
  arrays, fractions (and one-element tensors in fastopt.torch); the result is bit-identical to
  the run with the Python float of the same value, and the value is stored as a plain float;
- a wrong type (bool, str, None, complex, a list, an array of two elements ...) is a
  TypeError, NaN / inf / out of range / too large for a float (10**400) a ValueError, the
  same class in the class, its functional form, through ``param_groups``, ``add_param_group``
  and ``load_state_dict``; a refused call changes nothing;
- overflowing values in a state_dict (``step=inf``, ``step=10**400``, ``lr=10**400``) are a
  ValueError (never OverflowError) in ``load_state_dict`` and ``fastopt.load``, with the
  optimizer unchanged.
"""
import copy
import inspect
import re
from fractions import Fraction

import numpy as np
import pytest

import fastopt as fo
from fastopt import _table
from fastopt import _validate
from fastopt import functional as F
from fastopt._specs import SPECS
from fastopt.mixed import DynamicLossScale, MixedPrecision
from fastopt.optim import SVRG, Newton
from test_distributed import needs_mpi, run_workers     # the mpiexec launcher of tests/mpi/

try:
    import torch
    import fastopt.torch as ft
except ImportError:           # the fastopt.torch tests skip, with this reason
    torch = ft = None
needs_torch = pytest.mark.skipif(torch is None, reason="fastopt.torch needs PyTorch "
                                 '(pip install "fastopt[torch]")')

NAMES = tuple(SPECS)
CLASSES = {name: getattr(fo, spec.class_name) for name, spec in SPECS.items()}
NAN, INF = float("nan"), float("inf")

# options that make every numeric hyperparameter of a class matter
BASE = {"sgd": dict(momentum=0.7), "rmsprop": dict(momentum=0.5, centered=True)}
# a valid value for each numeric hyperparameter (not the default, so that it shows)
VALUE = dict(lr=0.0123, momentum=0.7, dampening=0.1, weight_decay=0.03, lr_decay=0.01,
             initial_accumulator_value=0.2, eps=1e-3, alpha=0.9, rho=0.85, beta1=0.8,
             beta2=0.99, r=0.5, weight_lr_power=1.5, etaminus=0.4, etaplus=1.3,
             step_size_min=1e-4, step_size_max=0.5, momentum_decay=0.01, lambd=1e-3, t0=3.0)
# the rule of each numeric key and a value out of its range (None: the rule has no range)
RULE_OF = {_validate.learning_rate: -0.1, _validate.nonneg: -0.1, _validate.unit_open: 1.0,
           _validate.unit_closed: 1.5, _validate.real: None, _validate.open_unit: 1.0,
           _validate.greater_than_one: 1.0}
# a whole number each rule accepts (integer forms are tried with it); 0.0 for the others
WHOLE = {_validate.open_unit: None, _validate.greater_than_one: 2.0}
# "betas[0]" -> "beta1", ...: the element of a pair hyperparameter -> its kernel input (the
# functional forms' argument), from the table's `inputs`
ELEMENT_ARG = {expr: arg for opt in _table.OPTIMIZERS.values()
               for arg, expr in opt.inputs.items() if re.fullmatch(r"\w+\[[01]\]", expr)}
CLASS_KEY = {arg: key for key, arg in ELEMENT_ARG.items()}
# the hyperparameters that are pairs (betas, etas, step_sizes)
PAIR_KEYS = {key for spec in SPECS.values() for key, rule in spec.rules.items()
             if rule in _validate.PAIRS}


def split_key(key):
    """("betas", 1) for "betas[1]"; (key, None) for a plain hyperparameter."""
    m = re.fullmatch(r"(\w+)\[([01])\]", key)
    return (m.group(1), int(m.group(2))) if m else (key, None)


def rule_of(name, key):
    """The rule of a numeric key (of one element, for "betas[1]")."""
    base, index = split_key(key)
    rule = SPECS[name].rules[base]
    return rule if index is None else _validate.PAIRS[rule][index]


def numeric_keys(name):
    """The numeric hyperparameters of an optimizer: ('lr', ...), a pair's elements as
    'betas[0]', 'betas[1]', ..."""
    keys = []
    for key, rule in SPECS[name].rules.items():
        if rule in _validate.PAIRS:
            keys += [f"{key}[0]", f"{key}[1]"]
        elif rule in RULE_OF:
            keys.append(key)
    return keys


def out_of_range(name, key):
    return RULE_OF[rule_of(name, key)]


def value_of(key):
    return VALUE[ELEMENT_ARG.get(key, key)]


def whole_value(name, key):
    """A whole number the key accepts (None: none)."""
    return WHOLE.get(rule_of(name, key), 0.0)


def hyper_with(name, key, value):
    """The class keywords with `key` set to `value` (betas[i] inside the pair)."""
    hyper = dict(BASE.get(name, {}))
    base, index = split_key(key)
    if index is not None:
        pair = [value_of(f"{base}[0]"), value_of(f"{base}[1]")]
        pair[index] = value
        hyper[base] = tuple(pair)
    else:
        hyper[key] = value
    return hyper


def set_in_group(group, key, value):
    base, index = split_key(key)
    if index is not None:
        pair = list(group[base])
        pair[index] = value
        group[base] = tuple(pair)
    else:
        group[key] = value


def forms(value):
    """(id, form) of a float `value`: NumPy scalars, 0-d arrays, a Fraction; integer forms
    when the value is whole."""
    out = [("np.float64", np.float64(value)), ("np.float32", np.float32(value)),
           ("np.float16", np.float16(value)), ("0-d float64", np.array(value)),
           ("0-d float32", np.array(value, np.float32)), ("Fraction", Fraction(value))]
    if float(value).is_integer():
        out += [("np.int64", np.int64(value)), ("np.uint8", np.uint8(value)),
                ("0-d int32", np.array(int(value), np.int32)), ("int", int(value))]
    return out


def plain(value):
    """The Python float of a form (what the optimizer must compute with)."""
    return float(value[()] if isinstance(value, np.ndarray) else value)


# bad values: TypeError (wrong kind) and ValueError (right kind, not allowed)
WRONG_TYPE = [("True", True), ("np.bool_", np.bool_(False)), ("str", "0.1"), ("None", None),
              ("complex", 0.1j), ("list", [0.1]), ("2-element array", np.array([0.1, 0.2])),
              ("0-d str array", np.array("0.1")), ("0-d bool array", np.array(True))]
NOT_ALLOWED = [("nan", NAN), ("inf", INF), ("-inf", -INF), ("np.float32 nan", np.float32(NAN)),
               ("0-d inf", np.array(INF)), ("10**400", 10 ** 400), ("-10**400", -10 ** 400),
               ("Fraction 10**400", Fraction(10 ** 400)), ("longdouble 1e400",
                                                          np.longdouble("1e4000"))]


def bad_values(name, key):
    """(id, value, error class) for a numeric hyperparameter."""
    out = [(i, v, TypeError) for i, v in WRONG_TYPE]
    out += [(i, v, ValueError) for i, v in NOT_ALLOWED]
    low = out_of_range(name, key)
    if low is not None:
        out += [("out of range", low, ValueError), ("np.float32 out of range", np.float32(low),
                                                    ValueError)]
    return out


def short(value):
    """Test ids: 10**400 as such (pytest's default id would spell out its 401 digits)."""
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > 10 ** 20:
        return "10**400" if value > 0 else "-10**400"
    return None


CLASS_CASES = [(name, key) for name in NAMES for key in numeric_keys(name)]
CLASS_IDS = [f"{name}-{key}" for name, key in CLASS_CASES]
# the same for the optimizers the table gives a torch adapter (Optimizer.adapters)
TORCH_CASES = [(n, k) for n, k in CLASS_CASES if "torch" in _table.OPTIMIZERS[n].adapters]
TORCH_IDS = [f"{name}-{key}" for name, key in TORCH_CASES]


# --------------------------------------------------------------------------------- helpers
def problem(seed=0, shapes=((5,), (2, 3))):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    return params, grads


def run_class(cls, hyper, steps=3, seed=0):
    params, grads = problem(seed)
    opt = cls(params, **hyper)
    for g in grads[:steps]:
        opt.step(g)
    return params, opt


def same_arrays(a, b):
    return len(a) == len(b) and all(x.dtype == y.dtype and x.shape == y.shape
                                    and x.tobytes() == y.tobytes() for x, y in zip(a, b))


def same_state(a, b):
    """Two state_dicts with equal groups and bit-identical state (buffers and steps)."""
    if a["param_groups"] != b["param_groups"] or set(a["state"]) != set(b["state"]):
        return False
    for i, entry in a["state"].items():
        other = b["state"][i]
        if set(entry) != set(other):
            return False
        for k, v in entry.items():
            w = other[k]
            if isinstance(v, np.ndarray):
                if not same_arrays([v], [w]):
                    return False
            elif v != w or type(v) is not type(w):
                return False
    return True


def assert_plain_groups(groups):
    """Every numeric hyperparameter stored as a Python float, a pair (betas, ...) as a tuple
    of floats."""
    for group in groups:
        for key, value in group.items():
            if key == "params" or callable(value) or value is None or isinstance(value, str):
                continue
            if key in PAIR_KEYS:
                assert type(value) is tuple and all(type(b) is float for b in value), value
            else:
                assert type(value) in (float, bool, int), (key, type(value))


# ================================================================ the reproductions
def test_numpy_float32_lr_is_accepted():
    a, b = np.ones(4), np.ones(4)
    fo.Adam([a], lr=np.float32(1e-3)).step([np.full(4, 0.5)])
    fo.Adam([b], lr=float(np.float32(1e-3))).step([np.full(4, 0.5)])
    assert a.tobytes() == b.tobytes()


def test_numpy_float32_eps_is_accepted():
    opt = fo.Adam([np.ones(4)], eps=np.float32(1e-8))
    assert type(opt.param_groups[0]["eps"]) is float
    assert opt.param_groups[0]["eps"] == float(np.float32(1e-8))


def test_numpy_float32_beta_is_accepted():
    opt = fo.Adam([np.ones(4)], betas=(np.float32(0.9), 0.999))
    assert opt.param_groups[0]["betas"] == (float(np.float32(0.9)), 0.999)
    assert all(type(b) is float for b in opt.param_groups[0]["betas"])


def test_zero_dim_array_lr_is_accepted():
    a, b = np.ones(4), np.ones(4)
    fo.SGD([a], lr=np.array(0.25)).step([np.ones(4)])
    fo.SGD([b], lr=0.25).step([np.ones(4)])
    assert a.tobytes() == b.tobytes()
    assert type(fo.SGD([np.ones(1)], lr=np.array(0.25)).param_groups[0]["lr"]) is float


@pytest.mark.parametrize("lr,error", [("0.1", TypeError), (None, TypeError), (True, TypeError),
                                      (-1.0, ValueError), (NAN, ValueError),
                                      (10 ** 400, ValueError)], ids=short)
def test_adam_and_adam_functional_raise_the_same_class(lr, error):
    w = np.ones(3)
    with pytest.raises(error):
        fo.Adam([w], lr=lr)
    with pytest.raises(error):
        F.adam_(w, np.ones(3), np.zeros(3), np.zeros(3), step=1, lr=lr)
    assert np.all(w == 1)


def test_schedule_returning_numpy_float32_stays_accepted():
    a, b = np.ones(3), np.ones(3)
    fo.SGD([a], lr=lambda t: np.float32(0.1) / (t + 1)).step([np.ones(3)])
    fo.SGD([b], lr=lambda t: float(np.float32(0.1) / (t + 1))).step([np.ones(3)])
    assert a.tobytes() == b.tobytes()


@pytest.mark.parametrize("where,value", [("step", INF), ("step", float("1e400")),
                                         ("step", 10 ** 400), ("lr", 10 ** 400)], ids=short)
def test_overflowing_state_dict_values_are_a_value_error(where, value):
    params, opt = run_class(fo.Adam, dict(lr=0.01), steps=2)
    sd = opt.state_dict()
    bad = copy.deepcopy(sd)
    if where == "step":
        bad["state"][0]["step"] = bad["state"][1]["step"] = value
    else:
        bad["param_groups"][0]["lr"] = value
    before = [p.copy() for p in params]
    with pytest.raises(ValueError):
        opt.load_state_dict(bad)
    assert same_arrays(params, before) and same_state(opt.state_dict(), sd)


# ================================================================== the optimizer classes
@pytest.mark.parametrize("name,key", CLASS_CASES, ids=CLASS_IDS)
def test_class_accepts_any_real_number_bit_identically(name, key):
    for value in (value_of(key), whole_value(name, key)):
        if value is None:
            continue
        ref_params, ref = run_class(CLASSES[name], hyper_with(name, key, value))
        for form_id, form in forms(value):
            params, opt = run_class(CLASSES[name], hyper_with(name, key, form))
            _, expected = run_class(CLASSES[name], hyper_with(name, key, plain(form)))
            assert same_state(opt.state_dict(), expected.state_dict()), form_id
            assert_plain_groups(opt.param_groups)
            if plain(form) == value:                   # the same value: the same run
                assert same_arrays(params, ref_params), form_id


@pytest.mark.parametrize("name,key", CLASS_CASES, ids=CLASS_IDS)
def test_class_accepts_any_real_number_through_param_groups(name, key):
    value = np.float32(value_of(key))
    params, opt = run_class(CLASSES[name], BASE.get(name, {}), steps=1)
    ref_params, ref = run_class(CLASSES[name], BASE.get(name, {}), steps=1)
    set_in_group(opt.param_groups[0], key, value)
    set_in_group(ref.param_groups[0], key, float(value))
    _, grads = problem()
    opt.step(grads[1])
    ref.step(grads[1])
    assert same_arrays(params, ref_params)
    assert_plain_groups(opt.param_groups)
    assert same_state(opt.state_dict(), ref.state_dict())


@pytest.mark.parametrize("name,key", CLASS_CASES, ids=CLASS_IDS)
def test_class_refuses_bad_values_everywhere_with_one_error_class(name, key):
    cls = CLASSES[name]
    for bad_id, bad, error in bad_values(name, key):
        # the constructor
        with pytest.raises(error, match=key.split("[")[0]):
            cls([np.ones(3)], **hyper_with(name, key, bad))
        # a param group added later: refused, the optimizer keeps its groups
        params, opt = run_class(cls, BASE.get(name, {}), steps=1)
        group = {"params": [np.ones(2)], **hyper_with(name, key, bad)}
        with pytest.raises(error):
            opt.add_param_group(group)
        assert len(opt.param_groups) == 1, bad_id
        # a value written into param_groups between steps: the step changes nothing
        sd, before = opt.state_dict(), [p.copy() for p in params]
        set_in_group(opt.param_groups[0], key, bad)
        with pytest.raises(error, match=r"param_groups\[0\]"):
            opt.step(problem()[1][1])
        assert same_arrays(params, before), bad_id
        # a state_dict holding the value: load_state_dict changes nothing
        params, opt = run_class(cls, BASE.get(name, {}), steps=2)
        sd = opt.state_dict()
        damaged = copy.deepcopy(sd)
        set_in_group(damaged["param_groups"][0], key, bad)
        before = [p.copy() for p in params]
        with pytest.raises(error):
            opt.load_state_dict(damaged)
        assert same_arrays(params, before) and same_state(opt.state_dict(), sd), bad_id


@pytest.mark.parametrize("name", NAMES)
def test_flags_take_numpy_bools_and_refuse_numbers(name):
    flags = [k for k, rule in SPECS[name].rules.items() if rule is _validate.boolean
             and not (name == "adamw" and k == "decoupled_weight_decay")]   # fixed by AdamW
    for key in flags:
        hyper = dict(BASE.get(name, {}))
        if key == "nesterov":
            hyper.update(momentum=0.9)
        for good in (np.bool_(True), np.array(True)):
            opt = CLASSES[name]([np.ones(3)], **{**hyper, key: good})
            assert opt.param_groups[0][key] is True
        for bad in (1, 0, 0.0, "yes", None, np.int64(1)):
            with pytest.raises(TypeError, match=f"{key} must be a bool"):
                CLASSES[name]([np.ones(3)], **{**hyper, key: bad})


@pytest.mark.parametrize("bad,error", [(True, TypeError), ("x", TypeError), (None, TypeError),
                                       (NAN, ValueError), (-0.1, ValueError),
                                       (10 ** 400, ValueError), (np.float32(INF), ValueError)],
                         ids=short)
def test_schedule_values_follow_the_same_rules(bad, error):
    w = np.ones(3)
    opt = fo.Adam([w], lr=lambda t: 0.1 if t == 0 else bad)
    opt.step([np.ones(3)])
    sd, before = opt.state_dict(), w.copy()
    with pytest.raises(error, match="lr schedule returned"):
        opt.step([np.ones(3)])
    assert np.array_equal(w, before) and same_state(opt.state_dict(), sd)


@pytest.mark.parametrize("form", [np.float32(0.05), np.array(0.05), np.float16(0.05),
                                  Fraction(1, 20)], ids=["np.float32", "0-d", "np.float16",
                                                         "Fraction"])
def test_schedule_may_return_any_real_number(form):
    a, b = np.ones(3), np.ones(3)
    fo.Adam([a], lr=lambda t: form).step([np.ones(3)])
    fo.Adam([b], lr=lambda t: plain(form)).step([np.ones(3)])
    assert a.tobytes() == b.tobytes()


# ========================================================================== item 10: loads
STEP_BAD = [("inf", INF), ("-inf", -INF), ("nan", NAN), ("1e400", float("1e400")),
            ("10**400", 10 ** 400), ("np inf", np.float64(INF)), ("0-d inf", np.array(INF)),
            ("1e300", 1e300), ("-1", -1.0), ("1.5", 1.5)]
STEP_WRONG_TYPE = [("str", "3"), ("None", None), ("bool", True), ("array", np.array([1.0, 2.0]))]


@pytest.mark.parametrize("name", NAMES)
@pytest.mark.parametrize("bad_id,bad", STEP_BAD, ids=[i for i, _ in STEP_BAD])
def test_load_state_dict_refuses_bad_step_counts_with_value_error(name, bad_id, bad):
    params, opt = run_class(CLASSES[name], BASE.get(name, {}), steps=2)
    sd, before = opt.state_dict(), [p.copy() for p in params]
    damaged = copy.deepcopy(sd)
    for entry in damaged["state"].values():
        entry["step"] = bad
    with pytest.raises(ValueError, match="step"):
        opt.load_state_dict(damaged)
    assert same_arrays(params, before) and same_state(opt.state_dict(), sd)


@pytest.mark.parametrize("bad_id,bad", STEP_WRONG_TYPE, ids=[i for i, _ in STEP_WRONG_TYPE])
def test_load_state_dict_refuses_step_counts_of_the_wrong_type(bad_id, bad):
    params, opt = run_class(fo.Adam, {}, steps=2)
    sd = opt.state_dict()
    damaged = copy.deepcopy(sd)
    for entry in damaged["state"].values():
        entry["step"] = bad
    with pytest.raises(TypeError, match="step"):
        opt.load_state_dict(damaged)
    assert same_state(opt.state_dict(), sd)


def test_load_state_dict_accepts_numpy_step_counts():
    params, opt = run_class(fo.Adam, {}, steps=2)
    sd = opt.state_dict()
    for form in (np.float32(2.0), np.array(2.0), np.int64(2), 2):
        damaged = copy.deepcopy(sd)
        for entry in damaged["state"].values():
            entry["step"] = form
        opt.load_state_dict(damaged)
        assert same_state(opt.state_dict(), sd)


@pytest.mark.parametrize("where,value", [("step", INF), ("step", 1e300), ("lr", 10 ** 400),
                                         ("eps", 10 ** 400), ("lr", NAN)], ids=short)
def test_fastopt_load_refuses_overflowing_values_with_value_error(tmp_path, where, value):
    """The values reach a file through fo.save (of a state_dict holding them); fo.load then
    raises ValueError, with the optimizer unchanged."""
    params, src = run_class(fo.Adam, {}, steps=2)
    damaged = src.state_dict()
    if where == "step":
        for entry in damaged["state"].values():
            entry["step"] = value
    else:
        damaged["param_groups"][0][where] = value
    src.state_dict = lambda: damaged
    path = tmp_path / "bad.npz"
    try:
        fo.save(src, path)
    except (TypeError, ValueError):
        return        # a file format that refuses to carry the value: it cannot reach load
    params, opt = run_class(fo.Adam, {}, steps=1, seed=1)
    sd, before = opt.state_dict(), [p.copy() for p in params]
    with pytest.raises(ValueError, match=where):
        fo.load(opt, path)
    assert same_arrays(params, before) and same_state(opt.state_dict(), sd)


# ===================================================================== functional forms
def functional_call(name, params, grads, state, **hyper):
    """One call of fastopt.functional.<name>_ on `params` with its state buffers `state` (one
    list per state slot of the optimizer's rule, passed by argument name; options that need an
    optional buffer, such as RMSprop's centered, turned on)."""
    step = hyper.pop("step", 1)
    opt = _table.OPTIMIZERS[name]
    kernel = _table.KERNELS[opt.kernel]
    buffers = {s.arg or s.name: state[i] for i, s in enumerate(kernel.state)}
    if name == "rmsprop":
        hyper.setdefault("centered", True)
    if "lr" not in functional_args(name):       # Rprop: its step sizes are state
        hyper.pop("lr", None)
    return getattr(F, f"{name}_")(params, grads, step=step, **buffers, **hyper)


def functional_args(name):
    return inspect.signature(getattr(F, f"{name}_")).parameters


def functional_keys(name):
    """The numeric arguments of the functional form (a pair's elements by their own names)."""
    keys = [ELEMENT_ARG.get(k, k) for k in numeric_keys(name)]
    return [k for k in keys if k in functional_args(name)]


FUNCTIONAL_CASES = [(name, key) for name in NAMES for key in functional_keys(name)]
FUNCTIONAL_IDS = [f"{name}_-{key}" for name, key in FUNCTIONAL_CASES]


def functional_run(name, **hyper):
    params, grads = problem()
    state = [[np.zeros_like(p) for p in params] for _ in range(3)]
    base = {"sgd": dict(momentum=0.7), "rmsprop": dict(momentum=0.5)}.get(name, {})
    for k, g in enumerate(grads):
        functional_call(name, params, g, state, **{"lr": 0.01, **base, "step": k + 1, **hyper})
    return params + [a for s in state for a in s]


@pytest.mark.parametrize("name,key", FUNCTIONAL_CASES, ids=FUNCTIONAL_IDS)
def test_functional_accepts_any_real_number_bit_identically(name, key):
    whole = whole_value(name, CLASS_KEY.get(key, key))
    for form_id, form in forms(VALUE[key]) + (forms(whole) if whole is not None else []):
        got = functional_run(name, **{key: form})
        expected = functional_run(name, **{key: plain(form)})
        assert same_arrays(got, expected), form_id


@pytest.mark.parametrize("name,key", FUNCTIONAL_CASES, ids=FUNCTIONAL_IDS)
def test_functional_raises_the_class_error_and_changes_nothing(name, key):
    class_key = CLASS_KEY.get(key, key)
    for bad_id, bad, error in bad_values(name, class_key):
        with pytest.raises(error) as in_class:
            CLASSES[name]([np.ones(3)], **hyper_with(name, class_key, bad))
        params, grads = problem()
        state = [[np.zeros_like(p) for p in params] for _ in range(3)]
        before = [a.copy() for a in params + [a for s in state for a in s]]
        base = {"sgd": dict(momentum=0.7), "rmsprop": dict(momentum=0.5)}.get(name, {})
        with pytest.raises(error) as in_functional:
            functional_call(name, params, grads[0], state, **{"lr": 0.01, **base, key: bad})
        assert type(in_class.value) is type(in_functional.value), bad_id
        assert same_arrays(params + [a for s in state for a in s], before), bad_id


@pytest.mark.parametrize("step,error", [(0, ValueError), (1.5, ValueError), (INF, ValueError),
                                        (10 ** 400, ValueError), (-1, ValueError),
                                        (True, TypeError), ("1", TypeError), (None, TypeError)],
                         ids=short)
def test_functional_step_rules(step, error):
    p = np.ones(3)
    with pytest.raises(error, match="step"):
        F.adam_(p, np.ones(3), np.zeros(3), np.zeros(3), step=step, lr=0.1)
    assert np.all(p == 1)


def test_functional_step_takes_any_whole_number():
    results = []
    for step in (3, 3.0, np.int64(3), np.float32(3), np.array(3)):
        p, m, v = np.ones(3), np.zeros(3), np.zeros(3)
        F.adam_(p, np.full(3, 0.5), m, v, step=step, lr=0.1)
        results.append(p.tobytes() + m.tobytes() + v.tobytes())
    assert len(set(results)) == 1


# ============================================================================= Newton, SVRG
def newton_run(**hyper):
    """Three Newton steps with the Armijo search on a quadratic; lr=2.5 overshoots, so the
    search backtracks (c1, backtrack and max_backtracks all matter)."""
    w = np.array([1.0, -2.0, 0.5])
    A = np.array([[3.0, 0.5, 0.0], [0.5, 2.0, 0.1], [0.0, 0.1, 1.0]])
    opt = Newton([w], line_search="armijo", **{"lr": 2.5, **hyper})
    for _ in range(3):
        opt.step([A @ w], [A], closure=lambda: 0.5 * float(w @ A @ w))
    return [w], opt


NEWTON_NUMERIC = [("lr", 0.7, -0.1), ("damping", 0.3, -0.1), ("c1", 0.45, 1.0),
                  ("backtrack", 0.3, 0.0)]


@pytest.mark.parametrize("key,value,low", NEWTON_NUMERIC, ids=[k for k, _, _ in NEWTON_NUMERIC])
def test_newton_hyperparameters(key, value, low):
    for form_id, form in forms(value):
        got, opt = newton_run(**{key: form})
        expected, _ = newton_run(**{key: plain(form)})
        assert same_arrays(got, expected), form_id
        assert type(opt.param_groups[0][key]) is float
    bad = [(v, TypeError) for _, v in WRONG_TYPE] + [(v, ValueError) for _, v in NOT_ALLOWED]
    for value, error in bad + [(low, ValueError)]:
        with pytest.raises(error, match=key):
            Newton([np.ones(2)], **{key: value})
        w = np.ones(2)
        opt = Newton([w])
        opt.param_groups[0][key] = value
        sd = opt.state_dict()
        with pytest.raises(error, match=key):
            opt.step([np.ones(2)], [np.eye(2)])
        assert np.all(w == 1) and opt.state_dict()["state"] == sd["state"]
        if key in ("lr", "damping"):
            with pytest.raises(error, match=key):
                F.newton_(np.ones(2), np.ones(2), np.eye(2), **{key: value})


def test_newton_counts_and_loss():
    got, opt = newton_run(max_backtracks=np.int64(5))
    expected, _ = newton_run(max_backtracks=5)
    assert same_arrays(got, expected) and type(opt.param_groups[0]["max_backtracks"]) is int
    for bad, error in [(2.0, TypeError), (True, TypeError), ("3", TypeError), (-1, ValueError)]:
        with pytest.raises(error, match="max_backtracks"):
            Newton([np.ones(2)], max_backtracks=bad)
    w = np.ones(2)
    opt = Newton([w])
    opt.step([np.ones(2)], [np.eye(2)], loss=np.float32(1.0))      # a NumPy loss is accepted
    for bad, error in [("1", TypeError), (NAN, ValueError), (10 ** 400, ValueError)]:
        with pytest.raises(error, match="loss"):
            opt.step([np.ones(2)], [np.eye(2)], loss=bad)


def svrg_run(**hyper):
    w = np.array([1.0, -2.0, 0.5])
    opt = SVRG([w], **hyper)
    for k in range(4):
        if opt.needs_snapshot:
            opt.snapshot([2 * w])
        opt.step([2 * w + k], [2 * opt.snapshot_params[0] + k])
    return [w], opt


@pytest.mark.parametrize("key,value,low", [("lr", 0.1, -0.1), ("weight_decay", 0.05, -0.1)])
def test_svrg_hyperparameters(key, value, low):
    for form_id, form in forms(value):
        got, opt = svrg_run(**{key: form})
        expected, _ = svrg_run(**{key: plain(form)})
        assert same_arrays(got, expected), form_id
        assert type(opt.param_groups[0][key]) is float
    bad = [(v, TypeError) for _, v in WRONG_TYPE] + [(v, ValueError) for _, v in NOT_ALLOWED]
    for value, error in bad + [(low, ValueError)]:
        with pytest.raises(error, match=key):
            SVRG([np.ones(2)], **{key: value})


def test_svrg_snapshot_every():
    got, opt = svrg_run(snapshot_every=np.int64(2))
    expected, _ = svrg_run(snapshot_every=2)
    assert same_arrays(got, expected) and type(opt.param_groups[0]["snapshot_every"]) is int
    for bad, error in [(2.0, TypeError), (True, TypeError), (0, ValueError),
                       (np.array([2]), TypeError)]:
        with pytest.raises(error, match="snapshot_every"):
            SVRG([np.ones(2)], snapshot_every=bad)


@pytest.mark.parametrize("cls,run", [(Newton, newton_run), (SVRG, svrg_run)],
                         ids=["Newton", "SVRG"])
@pytest.mark.parametrize("where,value", [("step", INF), ("step", 10 ** 400), ("step", 1.5),
                                         ("lr", 10 ** 400), ("lr", INF)],
                         ids=["step=inf", "step=10**400", "step=1.5", "lr=10**400", "lr=inf"])
def test_grouped_load_state_dict_refuses_bad_values(cls, run, where, value):
    params, opt = run()
    sd, before = opt.state_dict(), [p.copy() for p in params]
    damaged = copy.deepcopy(sd)
    if where == "step":
        for entry in damaged["state"].values():
            entry["step"] = value
    else:
        damaged["param_groups"][0][where] = value
    with pytest.raises(ValueError, match=where):
        opt.load_state_dict(damaged)
    assert same_arrays(params, before)
    after = opt.state_dict()
    assert after["param_groups"] == sd["param_groups"]
    assert after["state"][0]["step"] == sd["state"][0]["step"]


# =========================================================================== MixedPrecision
def mixed_run(opt_hyper=(), steps=3, **options):
    w = np.linspace(-1, 1, 7).astype(np.float16)
    opt = MixedPrecision(fo.Adam, [w], **options, **dict(opt_hyper))
    rng = np.random.default_rng(0)
    for _ in range(steps):
        opt.step([rng.standard_normal(7).astype(np.float16)])
    return w, opt


@pytest.mark.parametrize("key", ["lr", "eps", "weight_decay", "betas[0]", "betas[1]"])
def test_mixed_precision_hyperparameters(key):
    for form_id, form in forms(value_of(key)):
        got, opt = mixed_run(hyper_with("adam", key, form))
        expected, ref = mixed_run(hyper_with("adam", key, plain(form)))
        assert got.tobytes() == expected.tobytes(), form_id
        assert same_arrays(opt.master_params, ref.master_params), form_id
        assert_plain_groups(opt.param_groups)
    for bad_id, bad, error in bad_values("adam", key):
        with pytest.raises(error):
            MixedPrecision(fo.Adam, [np.zeros(3, np.float16)], **hyper_with("adam", key, bad))


def test_mixed_precision_options():
    for form in (np.float32(64.0), np.array(64.0), np.int64(64)):
        got, opt = mixed_run(loss_scale=form)
        expected, _ = mixed_run(loss_scale=64.0)
        assert got.tobytes() == expected.tobytes() and type(opt.loss_scale) is float
    got, _ = mixed_run(seed=np.int64(5), master_weights=np.bool_(True))
    expected, _ = mixed_run(seed=5, master_weights=True)
    assert got.tobytes() == expected.tobytes()
    for kwargs, error in [(dict(loss_scale=True), TypeError), (dict(loss_scale=NAN), ValueError),
                          (dict(loss_scale=0.0), ValueError),
                          (dict(loss_scale=10 ** 400), ValueError),
                          (dict(loss_scale=np.float32(-1)), ValueError),
                          (dict(seed=1.0), TypeError), (dict(seed=True), TypeError),
                          (dict(seed=-1), ValueError), (dict(master_weights=1), TypeError),
                          (dict(skip_nonfinite="yes"), TypeError)]:
        with pytest.raises(error, match=next(iter(kwargs))):
            MixedPrecision(fo.Adam, [np.zeros(3, np.float16)], **kwargs)


def test_dynamic_loss_scale_arguments():
    a = DynamicLossScale(init_scale=np.float32(1024), growth_factor=np.int64(2),
                         backoff_factor=np.array(0.5), growth_interval=np.int64(3))
    b = DynamicLossScale(init_scale=1024.0, growth_factor=2.0, backoff_factor=0.5,
                         growth_interval=3)
    assert (a.scale, a.growth_factor, a.backoff_factor, a.growth_interval) == \
        (b.scale, b.growth_factor, b.backoff_factor, b.growth_interval)
    assert type(a.scale) is float and type(a.growth_interval) is int
    for kwargs, error in [(dict(init_scale=True), TypeError), (dict(init_scale=INF), ValueError),
                          (dict(init_scale=10 ** 400), ValueError),
                          (dict(growth_factor=0.5), ValueError),
                          (dict(growth_factor="2"), TypeError),
                          (dict(backoff_factor=1.0), ValueError),
                          (dict(backoff_factor=None), TypeError),
                          (dict(growth_interval=2.0), TypeError),
                          (dict(growth_interval=0), ValueError)]:
        with pytest.raises(error, match=next(iter(kwargs))):
            DynamicLossScale(**kwargs)


@pytest.mark.parametrize("where,value", [
    ("skipped_steps", INF), ("skipped_steps", 10 ** 400), ("skipped_steps", -1),
    ("counters", [INF]), ("counters", [2 ** 64]), ("counters", [1.5]),
    ("growth_tracker", INF), ("growth_tracker", 10 ** 400), ("scale", 10 ** 400),
    ("scale", NAN), ("step", INF), ("step", 10 ** 400), ("lr", 10 ** 400)], ids=short)
def test_mixed_precision_load_state_dict_refuses_bad_values(where, value):
    w, opt = mixed_run(loss_scale="dynamic")
    sd, before = opt.state_dict(), w.copy()
    damaged = copy.deepcopy(sd)
    extra = damaged["mixed_precision"]
    if where in ("skipped_steps", "counters"):
        extra[where] = value
    elif where in ("growth_tracker", "scale"):
        extra["loss_scale"][where] = value
    elif where == "step":
        for entry in damaged["state"].values():
            entry["step"] = value
    else:
        damaged["param_groups"][0][where] = value
    with pytest.raises(ValueError, match=where):
        opt.load_state_dict(damaged)
    assert w.tobytes() == before.tobytes()
    after = opt.state_dict()
    assert after["mixed_precision"] == sd["mixed_precision"]
    assert after["param_groups"] == sd["param_groups"]
    assert same_arrays(opt.master_params, [sd["state"][0]["master"]])


# ============================================================================ fastopt.torch
def torch_run(name, hyper, module=ft, steps=3):
    torch.manual_seed(0)
    w = torch.nn.Parameter(torch.randn(5, dtype=torch.float64))
    opt = getattr(module, SPECS[name].class_name)([w], **hyper)
    if SPECS[name].modes is not None:        # Schedule-Free starts in eval mode, as schedulefree
        opt.train()
    grads = torch.randn(steps, 5, dtype=torch.float64)
    for g in grads:
        w.grad = g.clone()
        opt.step()
    return w.detach().clone(), opt


def torch_forms(value):
    return forms(value) + [("0-d tensor", torch.tensor(value, dtype=torch.float64)),
                           ("0-d float32 tensor", torch.tensor(value, dtype=torch.float32)),
                           ("1-element tensor", torch.tensor([value], dtype=torch.float64))]


def torch_plain(form):
    return float(form.item()) if isinstance(form, torch.Tensor) else plain(form)


@needs_torch
@pytest.mark.parametrize("name,key", TORCH_CASES, ids=TORCH_IDS)
def test_torch_adapter_accepts_any_real_number_bit_identically(name, key):
    value = value_of(key)
    for form_id, form in torch_forms(value):
        if key.startswith("betas") and name in ("adam", "adamw") and \
                isinstance(form, torch.Tensor):     # torch's Adam: both floats or both tensors
            with pytest.raises(ValueError, match="both floats or both Tensors"):
                torch_run(name, hyper_with(name, key, form))
            continue
        got, opt = torch_run(name, hyper_with(name, key, form))
        if isinstance(form, torch.Tensor) and key == "lr" and \
                SPECS[name].reference == f"torch.optim.{SPECS[name].class_name}":
            # torch.optim keeps a tensor lr a 0-d tensor in its per-step scalar math (float32
            # arithmetic for a float32 tensor), and so does fastopt.torch
            # (fastopt._torch_scalars): torch's numbers, to float64 rounding (tensor betas,
            # which only torch's Adam and AdamW take: tests/test_torch_drop_in.py)
            expected, _ = torch_run(name, hyper_with(name, key, form), torch.optim)
            assert torch.allclose(got, expected, rtol=1e-14, atol=1e-15), \
                (form_id, float((got - expected).abs().max()))
        else:
            expected, _ = torch_run(name, hyper_with(name, key, torch_plain(form)))
            assert torch.equal(got, expected), form_id
        base, index = split_key(key)
        stored = opt.param_groups[0][base] if index is None else opt.param_groups[0][base][index]
        if isinstance(form, torch.Tensor):
            assert stored is form, "a tensor hyperparameter stays in param_groups as given"
        else:
            assert type(stored) is float, form_id


@needs_torch
@pytest.mark.parametrize("name,key", TORCH_CASES, ids=TORCH_IDS)
def test_torch_adapter_refuses_bad_values_with_the_class_error(name, key):
    cls = getattr(ft, SPECS[name].class_name)
    # a tensor lr or beta of 2 elements: torch's ValueError "Tensor lr must be 1-element"
    wide = ValueError if key == "lr" or key.startswith("betas") else TypeError
    extra = [("2-element tensor", torch.tensor([0.1, 0.2]), wide),
             ("nan tensor", torch.tensor(NAN), ValueError),
             ("bool tensor", torch.tensor(True), TypeError)]
    for bad_id, bad, error in bad_values(name, key) + extra:
        with pytest.raises(error):
            cls([torch.zeros(3, requires_grad=True)], **hyper_with(name, key, bad))
        w, opt = torch_run(name, BASE.get(name, {}), steps=1)
        sd = copy.deepcopy(opt.state_dict())
        param = opt.param_groups[0]["params"][0]
        set_in_group(opt.param_groups[0], key, bad)
        param.grad = torch.ones_like(param)
        with pytest.raises(error, match=r"param_groups\[0\]"):
            opt.step()
        assert torch.equal(param.detach(), w), bad_id
        assert all(torch.equal(opt.state[param][k], v) for k, v in sd["state"][0].items())


@needs_torch
@pytest.mark.parametrize("value", [INF, 10 ** 400, 1.5, -1.0], ids=["inf", "10**400", "1.5",
                                                                  "-1"])
def test_torch_adapter_load_state_dict_refuses_bad_steps(value):
    w, opt = torch_run("adam", {}, steps=2)
    sd = copy.deepcopy(opt.state_dict())
    for bad in (value, torch.tensor(float(value)) if value != 10 ** 400 else value):
        damaged = copy.deepcopy(sd)
        damaged["state"][0]["step"] = bad
        with pytest.raises(ValueError, match="step"):
            opt.load_state_dict(damaged)
    damaged = copy.deepcopy(sd)
    damaged["param_groups"][0]["lr"] = 10 ** 400
    with pytest.raises(ValueError, match="lr"):
        opt.load_state_dict(damaged)
    param = opt.param_groups[0]["params"][0]
    assert torch.equal(param.detach(), w)
    assert torch.equal(opt.state[param]["step"], sd["state"][0]["step"])


# ================================================================== the distributed wrappers

@needs_mpi
@pytest.mark.mpi
def test_distributed_wrappers_take_any_real_number():
    """tests/mpi/hyperparameters.py on 2 ranks: NumPy scalars and 0-d arrays give the run of
    the Python floats, stored as floats; bad values raise the class error on every rank."""
    for r in run_workers(2, "hyperparameters.py", timeout=60):
        res = r["results"]
        for name in ("sharded", "distributed"):
            assert res[f"{name}_bit_identical"] and res[f"{name}_edit_bit_identical"], name
            assert res[f"{name}_group_types"] == ["bool", "float"], res[f"{name}_group_types"]
            assert res[f"{name}_bool_lr"].startswith("TypeError"), res[f"{name}_bool_lr"]
            assert res[f"{name}_huge_lr"].startswith("ValueError"), res[f"{name}_huge_lr"]
            assert res[f"{name}_nan_eps"].startswith("ValueError"), res[f"{name}_nan_eps"]
            if f"{name}_state_dict_lr_type" in res:
                assert res[f"{name}_state_dict_lr_type"] == "float"
        assert res["sharded_bad_edit"].startswith("ValueError: param_groups[0]: Invalid "
                                                  "learning rate"), res["sharded_bad_edit"]
        assert res["sharded_bad_edit_unchanged"]
        assert res["sharded_after_edit_lr_type"] == "float"
        assert res["bucket_bytes_numpy"] is None
        assert res["bucket_bytes_float"].startswith("TypeError"), res["bucket_bytes_float"]
        assert res["bucket_bytes_small"].startswith("ValueError"), res["bucket_bytes_small"]
