"""Fuzz drivers of the optimizers: classes, functional steps, checkpoints, state dicts, threads.

Each driver `fuzz_<entry>(ex, name)` makes one example: it draws arguments (good ones and every
kind of bad one) through `ex`, calls the entry point, and checks that the call either matches
tests/reference.py or raises TypeError/ValueError with every input unchanged.
"""
import inspect
import os
import tempfile

import numpy as np
import pytest
from hypothesis import strategies as st

import fastopt as fo
from fastopt import _table
from fastopt import functional as F
from fastopt._specs import SPECS
from cases import CASES, EXTRA_CASES
from fuzzing import (ERRORS, KIND, Masks, assert_close, disjoint, entry_point, layout_ok, like,
                     overlapping, param_ok, same_state_dict, step_ok)
from reference import GROUP_STEPS, ReferenceOptimizer, reference_step

NAMES = tuple(SPECS)
CLASSES = {name: getattr(fo, spec.class_name) for name, spec in SPECS.items()}
ALL_CASES = {name: CASES[name] + EXTRA_CASES.get(name, []) for name in NAMES}


# ----------------------------------------------------------------------------- shared parts
def draw_case(ex, name, invalid_pct=10, fixed=()):
    """A hyperparameter dict from the option grid; maybe one value made invalid.

    `fixed`: keys not to make invalid. Returns (hyper, valid).
    """
    hyper = dict(ex.draw(st.sampled_from(ALL_CASES[name]), "case"))
    if ex.chance(invalid_pct, "invalid hyperparameter"):
        if ex.draw(st.booleans(), "unknown keyword"):
            hyper["bogus"] = 1.0
        else:
            keys = [k for k in SPECS[name].rules if k not in fixed
                    and not (name == "adamw" and k == "decoupled_weight_decay")]
            key = ex.draw(st.sampled_from(keys), "key")
            hyper[key] = ex.invalid_value(name, key)
        return hyper, False
    return hyper, True


def draw_params(ex, n_groups=None, bad=True):
    """Parameters in 1-2 groups (1-3 each), maybe rejected forms or aliases of each other."""
    n_groups = n_groups or ex.draw(st.integers(1, 2), "groups")
    groups, flat = [], []
    for _ in range(n_groups):
        group = []
        for _ in range(ex.draw(st.integers(1, 3), "params in group")):
            a = ex.array(ex.shape(), ex.dtype(), "param", targets=flat if bad else ())
            if not bad and not param_ok(a):
                a = np.zeros(3)
            group.append(a)
            flat.append(a)
        groups.append(group)
    return groups, flat


def group_lrs(ex, name, hyper, n_groups):
    """Per-group lr overrides for groups after the first (as torch's param-group dicts)."""
    return [{}] + [{"lr": ex.draw(st.sampled_from([0.0, 0.01, 0.1]), "group lr")}
                   for _ in range(n_groups - 1)]


def build_optimizer(name, groups, hyper, overrides):
    cls = CLASSES[name]
    if len(groups) == 1 and not overrides[0]:
        return cls(groups[0], **hyper)
    return cls([{"params": g, **o} for g, o in zip(groups, overrides)], **hyper)


def state_arrays(opt, written=False):
    """The optimizer's state arrays; written=True: those a gradient must not share memory
    with, the buffers the kernel writes while it reads the gradients (not the per-parameter
    scalars, NAdam's mu_product or ASGD's eta and mu, which the step writes afterwards)."""
    skip = SPECS[opt.spec.name].scalars if written and hasattr(opt, "spec") else ()
    return [a for entry in opt.state.values() for k, a in entry.items()
            if isinstance(a, np.ndarray) and k not in skip]


def assert_unchanged(ex, before, opt=None, sd=None, what="call"):
    changed = ex.changed_bytes(before)
    assert not changed, f"{what} raised but changed input bytes (first at arena offset {changed})"
    if opt is not None:
        assert same_state_dict(sd, opt.state_dict()), f"{what} raised but changed the state"


def coupled_decay(name, group):
    """The weight decay that enters the gradient (0 for AdamW's decoupled form)."""
    if name == "adamw" or group.get("decoupled_weight_decay", False):
        return 0.0
    return group.get("weight_decay", 0.0)


def mark_ill_conditioned(mask, name, g, p, state, group):
    """Mark the elements of one parameter whose step is ill-conditioned in the code's own
    precision (compared for finiteness only): coupled weight decay that cancels the gradient,
    and Lion's sign argument beta1 m + (1 - beta1) g near a tie. `p`, `state`: the float64
    reference's values before the step; `group`: the hyperparameters."""
    maximize = group.get("maximize", False)
    mask.add_decay(g, p, coupled_decay(name, group), maximize)
    if name == "lion" and state.get("exp_avg") is not None:
        beta1 = group.get("betas", SPECS[name].defaults["betas"])[0]
        g = np.asarray(g, np.float64)
        mask.add_cancel(beta1 * state["exp_avg"], (1 - beta1) * (-g if maximize else g))


def reference_before(ref):
    """Copies of the reference's params and states, to scale the comparison after a step."""
    return ([[p.copy() for p in g["params"]] for g in ref.groups],
            [[{n: v.copy() for n, v in s.items()} for s in states] for states in ref.states])


def compare_optimizer(opt, ref, masks, what, before):
    k = 0
    for gi, group in enumerate(opt.param_groups):
        for j, p in enumerate(group["params"]):
            assert_close(p, ref.groups[gi]["params"][j], masks[k], f"{what}: params[{k}]",
                         scale_from=before[0][gi][j])
            mine = {n: a for n, a in opt.state.get(k, {}).items()}
            theirs = ref.states[gi][j]
            assert set(mine) == set(theirs), f"{what}: state[{k}] holds {set(mine)}, the reference {set(theirs)}"
            for n in mine:
                if n in SPECS[ref.name].scalars:   # a per-parameter scalar: 0-d float64
                    assert mine[n].shape == () and mine[n].dtype == np.float64
                    assert np.isclose(mine[n], theirs[n], rtol=1e-12, atol=0), (what, n)
                    continue
                assert mine[n].dtype == p.dtype and mine[n].shape == p.shape
                assert_close(mine[n], theirs[n], masks[k], f"{what}: state[{k}][{n!r}]",
                             scale_from=before[1][gi][j].get(n))
            k += 1


# ----------------------------------------------------------------------- optimizer classes
def _valid_everywhere(name, key, value):
    """Whether setting `key` to `value` keeps every option set of `name` valid."""
    spec = SPECS[name]
    try:
        for case in ALL_CASES[name]:
            spec.validate({**spec.defaults, **case, key: value})
    except (TypeError, ValueError):
        return False
    return True


# per optimizer, every (hyperparameter, value) of its option sets in the table but lr that
# keeps all of them valid
VALID_MUTATIONS = {name: sorted({(k, v) for case in ALL_CASES[name] for k, v in case.items()
                                 if k != "lr" and _valid_everywhere(name, k, v)}, key=repr)
                   for name in NAMES}


@entry_point(*NAMES)
def fuzz_optimizer(ex, name):
    """Construct an optimizer class, then take 1-3 steps, changing param_groups in between."""
    hyper, hyper_ok = draw_case(ex, name)
    groups, flat = draw_params(ex)
    overrides = group_lrs(ex, name, hyper, len(groups))
    expect_ok = hyper_ok and all(param_ok(p) for p in flat) and disjoint(flat)
    before = ex.snapshot()
    try:
        opt = build_optimizer(name, groups, hyper, overrides)
    except ERRORS as e:
        assert not expect_ok, f"rejected valid construction: {e!r}"
        assert_unchanged(ex, before, what="construction")
        return
    assert expect_ok, "accepted invalid parameters or hyperparameters"
    ref = ReferenceOptimizer(name, [dict(g) for g in opt.param_groups])
    masks = [Masks(p) for p in flat]
    for t in range(ex.draw(st.integers(1, 3), "steps")):
        what = f"step {t + 1}"
        # -- a param_groups change: none, valid (mirrored in the reference) or invalid
        undo = None
        mutation_ok = True
        if ex.chance(30, "mutate group"):
            gi = ex.draw(st.integers(0, len(groups) - 1), "group")
            if ex.draw(st.booleans(), "valid mutation"):
                key, value = ex.draw(st.sampled_from(VALID_MUTATIONS[name] + [("lr", 0.05)]), "change")
                opt.param_groups[gi][key] = value
                ref.groups[gi][key] = value
            else:
                key = ex.draw(st.sampled_from([k for k in SPECS[name].rules
                                               if k in KIND[name]]), "bad key")
                undo = (gi, key, opt.param_groups[gi][key])
                opt.param_groups[gi][key] = ex.invalid_value(name, key)
                mutation_ok = False
        # -- gradients, maybe rejected forms or aliases of params, state or other grads
        grads = []
        for p in flat:
            targets = flat + grads + state_arrays(opt)
            grads.append(ex.array(p.shape, p.dtype, "grad", targets=targets))
        container_ok = True
        arg = grads
        if ex.chance(8, "container fault"):
            kind = ex.draw(st.sampled_from(["tuple", "short", "long", "dict", "none", "single"]), "container")
            arg = {"tuple": tuple(grads), "short": grads[:-1], "long": grads + grads[:1],
                   "dict": dict(enumerate(grads)), "none": None,
                   "single": grads[0]}[kind]
            container_ok = kind == "tuple" or (kind == "single" and len(grads) == 1)
        nonfinite = ex.draw(st.sampled_from(["ignore", "skip", "raise", None, "bogus"]), "nonfinite")
        owned = flat + state_arrays(opt, written=True)
        grads_ok = (container_ok and all(layout_ok(g) and like(g, p) for g, p in zip(grads, flat))
                    and not any(overlapping(g, a) for g in grads for a in owned))
        expect_ok = mutation_ok and grads_ok and nonfinite != "bogus"
        bad_values = expect_ok and not all(np.isfinite(g).all() for g in grads)
        refuse = bad_values and nonfinite == "raise"
        skip = bad_values and nonfinite == "skip"
        before, sd = ex.snapshot(), opt.state_dict()
        try:
            applied = opt.step(arg) if nonfinite is None else opt.step(arg, nonfinite=nonfinite)
        except ERRORS as e:
            assert not expect_ok or refuse, f"{what}: rejected a valid step: {e!r}"
            assert_unchanged(ex, before, opt, sd, what)
            if undo is not None:
                opt.param_groups[undo[0]][undo[1]] = undo[2]
            continue
        assert expect_ok and not refuse, f"{what}: accepted an invalid step"
        if skip:
            assert applied is False
            assert_unchanged(ex, before, opt, sd, what)
            continue
        assert applied is True
        changed = ex.changed_bytes(before, allowed=flat)
        assert not changed, f"{what}: wrote outside the parameters (arena offset {changed})"
        for m, g in zip(masks, grads):
            m.add(g)
        k = 0
        for group, states in zip(ref.groups, ref.states):
            for p, state in zip(group["params"], states):
                mark_ill_conditioned(masks[k], name, grads[k], p, state, group)
                k += 1
        before = reference_before(ref)
        ref.step([np.array(g, np.float64) for g in grads])
        compare_optimizer(opt, ref, masks, what, before)


@entry_point("base")
def fuzz_base_class(ex, name):
    """The abstract base refuses to be used directly."""
    groups, flat = draw_params(ex, 1)
    before = ex.snapshot()
    with pytest.raises(TypeError):
        fo.Optimizer(flat)
    assert_unchanged(ex, before)


# --------------------------------------------------------------------- functional steps
FUNCTIONS = {name: getattr(F, f"{name}_") for name in NAMES}
STATE_KEYWORD = {"sum": "state_sum"}
NONNEG_STATE = {"sum", "exp_avg_sq", "max_exp_avg_sq", "square_avg", "acc_delta", "exp_inf"}


def _pair_args(name):
    """{pair hyperparameter: (argument of its first element, of its second)} of the
    functional form (betas: beta1, beta2), from the table's `inputs`."""
    out = {}
    for arg, expr in _table.OPTIMIZERS[name].inputs.items():
        if expr.endswith(("[0]", "[1]")):
            out.setdefault(expr[:-3], [None, None])[int(expr[-2])] = arg
    return out


def class_only_keys(name):
    """Hyperparameters of the class that its functional form does not take (Adagrad's
    initial_accumulator_value and Rprop's lr, which only fill state; AdamW's fixed flag)."""
    takes = inspect.signature(FUNCTIONS[name]).parameters
    return tuple(k for k in SPECS[name].rules if k not in takes and k not in _pair_args(name))


def functional_kwargs(name, hyper):
    """Class-style hyperparameters -> the keywords of fastopt.functional.<name>_."""
    kw = dict(hyper)
    for key, (first, second) in _pair_args(name).items():
        if key in kw:
            pair = kw.pop(key)
            kw[first], kw[second] = pair if isinstance(pair, tuple) and len(pair) == 2 \
                else (pair, SPECS[name].defaults[key][1])
    for key in class_only_keys(name):
        kw.pop(key, None)
    return kw


@entry_point(*NAMES)
def fuzz_functional(ex, name):
    """fastopt.functional.<name>_ on one array or a list, over 1-3 consecutive steps."""
    spec, fn = SPECS[name], FUNCTIONS[name]
    hyper, hyper_ok = draw_case(ex, name, fixed=class_only_keys(name))
    for key in _pair_args(name):
        if key in hyper and hyper_ok is False and not isinstance(hyper[key], tuple):
            # keep the bad value expressible as its elements (beta1, beta2)
            hyper[key] = (SPECS[name].defaults[key][0], float("nan"))
    full = {**spec.defaults, **{k: v for k, v in hyper.items() if k != "bogus"}}
    try:
        uses = spec.uses(full)
    except Exception:
        uses = (True,) * len(spec.state)
    _, params = draw_params(ex, 1)
    single = len(params) == 1 and ex.draw(st.booleans(), "single array")
    states, missing = {}, False
    for slot, (buf, used) in enumerate(zip(spec.state, uses)):
        if not used:
            continue
        if ex.chance(3, f"missing {buf}"):
            missing = True
            continue
        fill_zero = buf == "grad_avg"
        arrays = [ex.array(p.shape, p.dtype, "state", targets=params + [a for v in states.values() for a in v],
                           nonneg=buf in NONNEG_STATE, zeros=fill_zero) if isinstance(p, np.ndarray) else np.zeros(1)
                  for p in params]
        if name == "adagrad" and not fill_zero:
            for a in arrays:
                if isinstance(a, np.ndarray) and a.flags.writeable and a.dtype.kind == "f" and a.size:
                    a += hyper.get("initial_accumulator_value", 0.0)
        states[buf] = arrays
    kwargs = functional_kwargs(name, hyper)
    t0 = ex.draw(st.integers(0, 3), "steps before")
    arrays_ok = (all(param_ok(p) for p in params)
                 and all(param_ok(a) and like(a, p) for v in states.values() for a, p in zip(v, params))
                 and disjoint(params + [a for v in states.values() for a in v]))
    ref_states = [{buf: np.array(v[j], np.float64) for buf, v in states.items()} if arrays_ok else {}
                  for j in range(len(params))]
    masks = [Masks(p) if arrays_ok else None for p in params]
    if arrays_ok:
        for j, m in enumerate(masks):
            for v in states.values():
                m.add(v[j])
    refs = [np.array(p, np.float64) if arrays_ok else None for p in params]
    group_ref = dict(full)          # the reference's group-level scalars (Schedule-Free)
    for t in range(t0 + 1, t0 + 1 + ex.draw(st.integers(1, 3), "steps")):
        what = f"{name}_ step {t}"
        step = t
        if ex.chance(5, "bad step"):
            step = ex.draw(st.sampled_from([0, -1, 1.5, True, "1", None, float("nan")]), "step")
        grads = [ex.array(p.shape, p.dtype, "grad", targets=params + [a for v in states.values() for a in v])
                 if isinstance(p, np.ndarray) else np.zeros(1) for p in params]
        needs_step = not (name == "sgd" and full.get("momentum", 0) == 0)
        owned = params + [a for v in states.values() for a in v]
        expect_ok = (hyper_ok and arrays_ok and not missing and (step_ok(step) or not needs_step)
                     and all(layout_ok(g) and like(g, p) for g, p in zip(grads, params))
                     and not any(overlapping(g, a) for g in grads for a in owned))
        state_kw = {STATE_KEYWORD.get(buf, buf): (v[0] if single else v) for buf, v in states.items()}
        before = ex.snapshot()
        try:
            out = fn(params[0] if single else params, grads[0] if single else grads,
                     step=step, **state_kw, **kwargs)
        except ERRORS as e:
            assert not expect_ok, f"{what}: rejected a valid call: {e!r}"
            assert_unchanged(ex, before, what=what)
            continue
        assert expect_ok, f"{what}: accepted an invalid call"
        # None, or the new group-level scalars of an optimizer that has them (Schedule-Free)
        # (or per-parameter scalars: NAdam's mu_product)
        assert (out is None) == (not (SPECS[name].group_state or SPECS[name].scalars)), \
            f"{what}: returned {out!r}"
        changed = ex.changed_bytes(before, allowed=owned)
        assert not changed, f"{what}: wrote outside the parameters and state (offset {changed})"
        step_hyper, step_lr = full, None
        if out is not None:             # the group scalars go into the next call
            kwargs.update(out)
        if name in GROUP_STEPS:         # the reference keeps per-parameter scalars itself
            step_lr, c = GROUP_STEPS[name](group_ref, full["lr"])
            step_hyper = {**group_ref, "ckp1": c}
        for j, (p, g) in enumerate(zip(params, grads)):
            st_ = ref_states[j]
            if name == "sgd" and not full["sutskever"] and t == 1:
                st_.pop("momentum_buffer", None)     # torch's first step: the buffer becomes g
            masks[j].add(g)
            mark_ill_conditioned(masks[j], name, g, refs[j], st_, full)
            start, start_state = refs[j], {buf: v.copy() for buf, v in st_.items()}
            refs[j] = reference_step(name, refs[j], g, st_, step_hyper, t, step_lr)
            assert_close(p, refs[j], masks[j], f"{what}: param[{j}]", scale_from=start)
            for buf, v in states.items():
                assert_close(v[j], st_[buf], masks[j], f"{what}: {buf}[{j}]",
                             scale_from=start_state.get(buf))


# ------------------------------------------------------------------- checkpoints, state dicts
def stepped_optimizer(ex, name, steps=None):
    """A valid optimizer over valid arrays, after 0-3 valid steps; returns (opt, groups, grads)."""
    hyper = dict(ex.draw(st.sampled_from(ALL_CASES[name]), "case"))
    groups, flat = draw_params(ex, bad=False)
    overrides = group_lrs(ex, name, hyper, len(groups))
    opt = build_optimizer(name, groups, hyper, overrides)
    for _ in range(ex.draw(st.integers(0, 3), "steps") if steps is None else steps):
        opt.step([np.asarray(ex.rng.integers(-80, 81, p.shape) / 8, p.dtype) for p in flat])
    return opt, groups, hyper, overrides


def twin(opt, name, groups, hyper, overrides):
    """A fresh optimizer of the same class over copies of the same parameters."""
    return build_optimizer(name, [[p.copy() for p in g] for g in groups], hyper, overrides)


@entry_point(*NAMES)
def fuzz_checkpoint(ex, name):
    """fo.save then fo.load, into a twin or a mismatched optimizer, of an intact or damaged file."""
    fault = ex.draw(st.sampled_from(["none", "none", "truncate", "flip", "class", "shape", "groups"]), "fault")
    # a shape mismatch only matters to a checkpoint that holds state (taken steps)
    opt, groups, hyper, overrides = stepped_optimizer(
        ex, name, steps=ex.draw(st.integers(1, 3), "steps") if fault == "shape" else None)
    if fault == "class":
        other = ex.draw(st.sampled_from([n for n in NAMES if CLASSES[n] is not CLASSES[name]]), "other")
        target = build_optimizer(other, [[p.copy() for p in g] for g in groups],
                                 dict(ALL_CASES[other][0]), overrides)
    elif fault == "shape":
        gi = ex.draw(st.integers(0, len(groups) - 1), "group")
        bent = [[p.copy() for p in g] for g in groups]
        bent[gi][0] = np.zeros(bent[gi][0].size + 1, bent[gi][0].dtype)
        target = build_optimizer(name, bent, hyper, overrides)
        # only a state buffer has a shape to mismatch (SGD without momentum keeps none)
        if not opt.state.get(sum(len(g) for g in groups[:gi])):
            fault = "harmless shape"
    elif fault == "groups":
        target = build_optimizer(name, [[p.copy() for g in groups for p in g], [np.zeros(2)]],
                                 hyper, [{}, {"lr": 0.1}])
    else:
        target = twin(opt, name, groups, hyper, overrides)
    with tempfile.TemporaryDirectory() as tmp:
        path = os.path.join(tmp, "ckpt.npz")
        fo.save(opt, path)
        assert os.listdir(tmp) == ["ckpt.npz"], "save left a temporary file behind"
        raw = open(path, "rb").read()
        if fault == "truncate":
            open(path, "wb").write(raw[:ex.draw(st.integers(0, len(raw) - 1), "keep bytes")])
        elif fault == "flip":
            at = ex.draw(st.integers(0, 8 * len(raw) - 1), "bit")
            bent = bytearray(raw)
            bent[at // 8] ^= 1 << (at % 8)
            open(path, "wb").write(bytes(bent))
        sd_before = target.state_dict()
        params_before = [p.copy() for g in target.param_groups for p in g["params"]]
        try:
            fo.load(target, path)
        except ValueError as e:
            assert fault != "none", f"rejected an intact checkpoint: {e!r}"
            assert same_state_dict(sd_before, target.state_dict()), "failed load changed the state"
            assert all(a.tobytes() == p.tobytes() for a, p in
                       zip(params_before, (p for g in target.param_groups for p in g["params"])))
            return
    assert fault in ("none", "flip", "truncate", "harmless shape"), f"loaded a checkpoint into a mismatched optimizer ({fault})"
    if fault == "harmless shape":
        return
    # an undetected bit flip may only hit bytes that carry no data (zip timestamps, padding)
    assert same_state_dict(opt.state_dict(), target.state_dict()), "loaded state differs from the saved"
    g = [np.linspace(-1, 1, p.size).reshape(p.shape).astype(p.dtype)
         for gr in opt.param_groups for p in gr["params"]]
    opt.step(g)
    target.step(g)
    assert same_state_dict(opt.state_dict(), target.state_dict()), "trajectories diverge after load"
    for a, b in zip((p for gr in opt.param_groups for p in gr["params"]),
                    (p for gr in target.param_groups for p in gr["params"])):
        assert a.tobytes() == b.tobytes()


SD_FAULTS = ("none", "not a dict", "no state", "extra group", "short group", "bad hyper",
             "bad shape", "bad dtype", "unknown buffer", "bad step", "uneven steps",
             "partial state", "missing buffer")


@entry_point(*NAMES)
def fuzz_load_state_dict(ex, name):
    """Optimizer.load_state_dict of an intact or damaged state_dict into a twin optimizer."""
    opt, groups, hyper, overrides = stepped_optimizer(ex, name)
    sd = opt.state_dict()
    fault = ex.draw(st.sampled_from(SD_FAULTS), "fault")
    entries = sorted(sd["state"])
    big = [gi for gi, g in enumerate(sd["param_groups"]) if len(g["params"]) >= 2
           and all(i in sd["state"] for i in g["params"])]
    if fault == "not a dict":
        sd = [sd]
    elif fault == "no state":
        del sd["state"]
    elif fault == "extra group":
        sd["param_groups"].append(dict(sd["param_groups"][0]))
    elif fault == "short group":
        sd["param_groups"][0]["params"] = sd["param_groups"][0]["params"] + [10**6]
    elif fault == "bad hyper":
        key = ex.draw(st.sampled_from([k for k in SPECS[name].rules if k in KIND[name]]), "key")
        sd["param_groups"][0][key] = ex.invalid_value(name, key)
    elif fault in ("bad shape", "bad dtype", "unknown buffer", "missing buffer") and entries \
            and len(sd["state"][entries[0]]) > 1 and (fault != "missing buffer" or name != "sgd"):
        entry = sd["state"][entries[0]]
        buf = next(k for k in entry if k in SPECS[name].state)    # a buffer, not a scalar
        if fault == "bad shape":
            entry[buf] = np.zeros(entry[buf].size + 1, entry[buf].dtype)
        elif fault == "bad dtype":
            entry[buf] = entry[buf].astype(ex.draw(st.sampled_from([np.int64, np.complex128, object]), "dtype"))
        elif fault == "unknown buffer":
            entry["bogus_buffer"] = entry[buf].copy()
        else:
            for i in entries:
                sd["state"][i].pop(buf, None)
    elif fault == "bad step" and entries:
        value = ex.draw(st.sampled_from([-1.0, 1.5, float("nan")]), "step")
        for i in entries:
            sd["state"][i]["step"] = value
    elif fault == "uneven steps" and big:
        i = sd["param_groups"][big[0]]["params"][0]
        sd["state"][i]["step"] += 1
    elif fault == "partial state" and big:
        del sd["state"][sd["param_groups"][big[0]]["params"][0]]
    else:
        fault = "none"
    target = twin(opt, name, groups, hyper, overrides)
    before = target.state_dict()
    try:
        target.load_state_dict(sd)
    except ERRORS as e:
        assert fault != "none", f"rejected an intact state_dict: {e!r}"
        assert same_state_dict(before, target.state_dict()), f"failed load ({fault}) changed the state"
        return
    assert fault == "none", f"accepted a damaged state_dict ({fault})"
    assert same_state_dict(opt.state_dict(), target.state_dict())


# ------------------------------------------------------------------------- thread settings
@entry_point("threads")
def fuzz_set_num_threads(ex, name):
    """fo.set_num_threads with any value; a valid one then steps correctly."""
    value = ex.draw(st.one_of(st.integers(-3, 70), st.sampled_from(
        [1024, 1025, 2**31, 2**63, -2**63, 2.0, True, None, "2", np.int64(3)])), "n")
    expect_ok = (not isinstance(value, bool) and isinstance(value, (int, np.integer))
                 and 0 <= value <= 1024)
    old = fo.get_num_threads()
    try:
        fo.set_num_threads(value)
    except ERRORS:
        assert not expect_ok, f"rejected {value!r}"
        assert fo.get_num_threads() == old
        return
    try:
        assert expect_ok, f"accepted {value!r}"
        assert fo.get_num_threads() == value if value > 0 else fo.get_num_threads() >= 1
        p = np.linspace(-1, 1, 100000).astype(np.float32)
        g = np.ones_like(p)
        expected = p.astype(np.float64) - 0.5
        fo.SGD([p], lr=0.5).step([g])
        np.testing.assert_allclose(p, expected, atol=1e-6)
    finally:
        fo.set_num_threads(0)
