"""torch's own optimizer test inputs (``torch.testing._internal.common_optimizers.optim_db``)
run against fastopt.torch, with torch's keywords passed unchanged.

The torch wheel ships ``optim_db`` but not ``test/test_optim.py`` (``TestOptimRenewed``), so
this harness drives the database itself, on CPU, for every optimizer fastopt.torch provides:

- every configuration of ``optim_inputs_func`` with the implementation keywords torch's tests
  add (``_get_optim_inputs_including_global_cliquey_kwargs``: foreach / fused /
  differentiable, each False and True): fastopt.torch is constructed with exactly those
  keywords and run next to torch.optim for a few steps, with and without the database's
  learning-rate schedulers (float64 only), in float64 (bound 1e-10) and float32 (bound
  1e-5; errors relative to max(1, |torch|));
  the state agrees, and each optimizer's state_dict loads into the other. Configurations
  that ask for ``differentiable=True`` or ``capturable=True`` are not applicable (fastopt's
  fused kernels run outside autograd, on CPU): the harness checks that they raise
  RuntimeError naming the keyword.
- every error input of ``optim_error_inputs_func``: fastopt.torch raises (or warns) with
  torch's error type and a message matching torch's regex, at construction or at the step as
  the database says.
"""
import copy
import math
import re
import sys
import types
import unittest
import warnings

import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")
import fastopt.torch as ft
from fastopt import _table  # noqa: E402

try:
    import expecttest  # noqa: F401  (torch's test utilities import it)
except ImportError:     # only its TestCase base is needed to load the database
    sys.modules["expecttest"] = types.SimpleNamespace(TestCase=unittest.TestCase)
common = pytest.importorskip("torch.testing._internal.common_optimizers",
                             reason="this torch has no optim_db")

# the table's optimizers that torch.optim has (torch's optim_db covers those), and Muon
# (fastopt._torch_muon, outside the table: its parameters are 2-D, so its problem's bias is a
# (10, 1) matrix)
NAMES = {opt.class_name for opt in _table.OPTIMIZERS.values() if opt.reference is None} | {"Muon"}
TWO_D = {"Muon"}
NAMES |= {"Adafactor"}          # outside the table (fastopt._torch_adafactor)
NAMES |= {"LBFGS"}      # not a table entry: fastopt.torch.LBFGS is written by hand
INFOS = [info for info in common.optim_db if info.optim_cls.__name__ in NAMES]
# SparseAdam (sparse gradients only, not in the table): its own configurations below
SPARSE_INFOS = [info for info in common.optim_db if info.optim_cls.__name__ == "SparseAdam"]
UNSUPPORTED = ("differentiable", "capturable")    # True: not applicable to fastopt.torch
N_STEPS = 6
TOL = {torch.float64: 1e-10, torch.float32: 1e-5}
#: float32 L-BFGS: its stopping tests compare float32 values that cancel, so its trajectory on
#: these problems amplifies rounding: torch's own run moves by up to 1.6e-5 from a start 1 ulp
#: away (8 random 1-ulp starts, "non-default lr" and "Tensor lr"), beyond TOL; fastopt's
#: parameters are held to a few times that, as float64 holds them to 1e-10.
LBFGS_TOL32 = 5e-5


#: Muon here runs its Newton-Schulz iteration in bfloat16, as torch's (fastopt emulates it,
#: ns_dtype=None): where a float32 sum lies on a bfloat16 rounding boundary, the BLAS's summation
#: order, which differs between CPUs (as torch's own bfloat16 kernels do), may round it the other
#: way, at most one bfloat16 ulp (2^-8) of the orthogonalized update per step, times the adjusted
#: learning rate (at most lr * sqrt(10) for these 10 x 5 and 10 x 1 matrices; README, Muon).
#: Bit for bit on most configurations and CPUs; AMD EPYC (Zen 3): 4.5e-7 on "passing
#: alternative ns_coefficients" in float64.
def muon_bound(kwargs):
    return N_STEPS * float(kwargs.get("lr", 1e-3)) * math.sqrt(10) * 2.0 ** -8


def tol(name, dtype, kwargs=None):
    if name == "LBFGS" and dtype == torch.float32:
        return LBFGS_TOL32
    if name == "Muon":
        return max(TOL[dtype], muon_bound(kwargs or {}))
    return TOL[dtype]


def configs():
    out = []
    for info in INFOS:
        for inp in common._get_optim_inputs_including_global_cliquey_kwargs("cpu", None, info):
            out.append(pytest.param(info, inp, id=f"{info.name}-{inp.desc}"))
    return out


def error_inputs():
    out = []
    for info in INFOS + SPARSE_INFOS:
        for i, err in enumerate(info.optim_error_inputs_func("cpu", torch.float32)):
            desc = err.optimizer_error_input.desc
            out.append(pytest.param(info, i, id=f"{info.name}-{i}-{desc}"))
    return out


CONFIGS = configs()
ERRORS = error_inputs()


def problem(dtype, seed=0, two_d=False):
    g = torch.Generator().manual_seed(seed)
    weight = torch.nn.Parameter(torch.randn(10, 5, generator=g, dtype=dtype))
    bias = torch.nn.Parameter(torch.randn(10, generator=g, dtype=dtype))
    if two_d:
        bias = torch.nn.Parameter(bias.detach().reshape(10, 1))
    inputs = torch.randn(N_STEPS * 2, 5, generator=g, dtype=dtype)
    return weight, bias, inputs


def closure_for(opt, weight, bias, x, maximize):
    # L-BFGS runs many iterations per step: on the rank-deficient least squares alone its
    # trajectory amplifies rounding (torch's own run moves by ~1e-6 from a start 1 ulp away),
    # so it gets a ridge term that makes the problem well conditioned
    ridge = 0.1 if isinstance(opt, (torch.optim.LBFGS, ft.LBFGS)) else 0.0

    def closure():
        opt.zero_grad()
        loss = (weight.mv(x) + bias.reshape(-1)).pow(2).sum()
        if ridge:
            loss = loss + ridge * (weight.pow(2).sum() + bias.pow(2).sum())
        if maximize:            # ascend a bounded function, so that both runs stay finite
            loss = -torch.tanh(loss / 100)
        loss.backward()
        return loss
    return closure


def train(cls, kwargs, dtype, schedulers=(), state_dict=None, start=0, at=None):
    weight, bias, inputs = problem(dtype, two_d=cls.__name__ in TWO_D)
    if at is not None:          # resume from these parameter values
        with torch.no_grad():
            weight.copy_(at[0])
            bias.copy_(at[1])
    opt = cls([weight, bias], **copy.deepcopy(kwargs))
    if state_dict is not None:
        opt.load_state_dict(copy.deepcopy(state_dict))
    scheds = [make(opt) for make in schedulers]
    for t in range(start, start + N_STEPS):
        loss = opt.step(closure_for(opt, weight, bias, inputs[t], kwargs.get("maximize")))
        for s in scheds:
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(float(loss))
            else:
                s.step()
    return (weight, bias), opt


def rel(a, b):
    a, b = a.detach().double(), b.detach().double()
    return float((a - b).abs().max() / b.abs().max().clamp_min(1.0))


#: LBFGS's state besides the parameters: ro = 1 / (y . s), H_diag = y.s / y.y, al = ro s.q are
#: dot products that cancel (late pairs are nearly orthogonal), so they agree with torch's to
#: the rounding of their terms, not of their values; d and the history follow from them. The
#: parameters themselves are held to TOL.
LBFGS_STATE_TOL = {torch.float64: 1e-6, torch.float32: 1e-2}


def same_value(ours, theirs, dtype):
    """LBFGS state entries: tensors and numbers (fastopt keeps torch's 0-d tensors t, H_diag,
    ro and al as Python numbers) within LBFGS_STATE_TOL, lists of them entry by entry, None as
    None; counts exactly in float64 (in float32 a stopping test may flip on rounding)."""
    if isinstance(theirs, list):
        return isinstance(ours, list) and (len(ours) == len(theirs) or dtype == torch.float32) \
            and all(same_value(a, b, dtype) for a, b in zip(ours, theirs))
    if theirs is None or ours is None:
        return theirs is None and ours is None
    if isinstance(theirs, int) and not isinstance(theirs, bool):
        return ours == theirs or dtype == torch.float32
    return rel(torch.as_tensor(ours), torch.as_tensor(theirs)) <= LBFGS_STATE_TOL[dtype]


@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("info,inp", CONFIGS)
def test_optim_db_config_matches_torch(info, inp, dtype):
    ours = getattr(ft, info.name)
    kwargs = inp.kwargs
    asked = [k for k in UNSUPPORTED if kwargs.get(k)]
    if asked:                                   # not applicable: refused with a clear error
        weight, bias, _ = problem(dtype, two_d=info.name in TWO_D)
        with pytest.raises(RuntimeError, match=asked[0]):
            ours([weight, bias], **copy.deepcopy(kwargs))
        return
    with_schedulers = tuple(info.scheduler_inputs) if dtype == torch.float64 else ()
    for schedulers in ((),) + with_schedulers:
        (w_ref, b_ref), opt_ref = train(info.optim_cls, kwargs, dtype, schedulers)
        (w, b), opt = train(ours, kwargs, dtype, schedulers)
        assert max(rel(w, w_ref), rel(b, b_ref)) <= tol(info.name, dtype, kwargs)
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt_ref.param_groups]
        for p, q in ((w, w_ref), (b, b_ref)):
            assert opt.state[p].keys() == opt_ref.state[q].keys()
            for key, value in opt_ref.state[q].items():
                if info.name == "LBFGS" and dtype == torch.float32:
                    # float32: the stopping tests (|g| <= tolerance_grad, g.d > -tolerance_change,
                    # ...) compare float32 values that cancel, so an iteration may stop one
                    # earlier or later than torch's (n_iter, history length and H_diag follow);
                    # the parameters are held to TOL above, the state's layout here
                    assert type(opt.state[p][key]) is type(value) or key in ("t", "H_diag")
                elif info.name == "LBFGS":
                    assert same_value(opt.state[p][key], value, dtype), key
                elif isinstance(value, torch.Tensor) and key != "step":
                    assert rel(opt.state[p][key], value) <= 10 * tol(info.name, dtype, kwargs), key
                else:
                    assert float(opt.state[p][key]) == float(value), key
        sd, sd_ref = opt.state_dict(), opt_ref.state_dict()
        for key, value in sd_ref["param_groups"][0].items():
            if key != "params" and not isinstance(value, torch.Tensor):
                assert sd["param_groups"][0][key] == value, key
    # checkpoints cross over: torch -> fastopt and fastopt -> torch continue alike
    # (LBFGS resumes from the parameters it stopped at: its state, the last gradient and the
    # curvature pairs, belongs to that point, and elsewhere makes a poor Hessian model)
    at = (w_ref.detach(), b_ref.detach()) if info.name == "LBFGS" else None
    at_ours = (w.detach(), b.detach()) if info.name == "LBFGS" else None
    (w_ref, b_ref), _ = train(info.optim_cls, kwargs, dtype, state_dict=sd_ref, start=N_STEPS,
                              at=at)
    (w1, b1), _ = train(ours, kwargs, dtype, state_dict=sd_ref, start=N_STEPS, at=at)
    (w2, b2), _ = train(info.optim_cls, kwargs, dtype, state_dict=sd, start=N_STEPS,
                        at=at_ours)
    assert max(rel(w1, w_ref), rel(b1, b_ref), rel(w2, w_ref), rel(b2, b_ref)) \
        <= tol(info.name, dtype, kwargs)


@pytest.mark.parametrize("info,index", ERRORS)
def test_optim_db_error_input_raises_torchs_error(info, index):
    err = info.optim_error_inputs_func("cpu", torch.float32)[index]
    inp = err.optimizer_error_input
    ours = getattr(ft, info.name)
    params = inp.params
    if params is None:
        params = [torch.nn.Parameter(torch.randn(2, 3))]
    kwargs = copy.deepcopy(inp.kwargs)
    if issubclass(err.error_type, Warning):
        with pytest.warns(err.error_type, match=err.error_regex):
            ours(params, **kwargs)
        return
    if err.error_on == common.OptimizerErrorEnum.CONSTRUCTION_ERROR:
        with pytest.raises(err.error_type, match=err.error_regex):
            ours(params, **kwargs)
    else:
        opt = ours(params, **kwargs)
        with pytest.raises(err.error_type, match=err.error_regex):
            opt.step()


def test_harness_counts():
    """The harness covers every optimizer of fastopt.torch and says what is not applicable."""
    assert {info.name for info in INFOS} == NAMES
    applicable = [p for p in CONFIGS if not any(p.values[1].kwargs.get(k) for k in UNSUPPORTED)]
    assert len(applicable) >= 60 and len(ERRORS) >= 40
    assert all(re.compile(e.values[0].optim_error_inputs_func("cpu", torch.float32)[
        e.values[1]].error_regex) for e in ERRORS)
    warnings.warn(UserWarning(f"optim_db: {len(CONFIGS)} configurations, {len(applicable)} "
                              f"applicable; {len(ERRORS)} error inputs"))


# ----------------------------------------------------------------------------- SparseAdam
# optim_db's SparseAdam (only_supports_sparse_grads): torch's tests turn each gradient into a
# sparse one (p.grad.to_sparse(): two sparse dimensions for the weight, one for the bias);
# here also an nn.Embedding(sparse=True) whose lookups repeat rows. Every configuration applies
# (SparseAdam has no foreach/fused/differentiable/capturable variants); what optim_db's other
# tests check and does not apply: dense gradients (refused, as torch refuses them; torch skips
# test_can_load_older_state_dict for SparseAdam), complex parameters (refused, as torch),
# CUDA/MPS and multi-device tests (fastopt.torch runs on CPU tensors).
def sparse_configs():
    return [pytest.param(info, inp, id=f"{info.name}-{inp.desc}") for info in SPARSE_INFOS
            for inp in common._get_optim_inputs_including_global_cliquey_kwargs("cpu", None,
                                                                                 info)]


SPARSE_CONFIGS = sparse_configs()


def train_sparse(cls, kwargs, dtype, schedulers=(), state_dict=None, start=0, embedding=False):
    if embedding:
        g = torch.Generator().manual_seed(1)
        table = torch.nn.Parameter(torch.randn(30, 4, generator=g, dtype=dtype))
        looks = torch.randint(0, 12, (N_STEPS * 2, 40), generator=g)
        params = [table]
    else:
        weight, bias, inputs = problem(dtype)
        params = [weight, bias]
    opt = cls(params, **copy.deepcopy(kwargs))
    if state_dict is not None:
        opt.load_state_dict(copy.deepcopy(state_dict))
    scheds = [make(opt) for make in schedulers]
    for t in range(start, start + N_STEPS):
        def closure():
            opt.zero_grad()
            if embedding:
                out = torch.nn.functional.embedding(looks[t], table, sparse=True)
                loss = (out.sum(1) - 1).pow(2).sum()
            else:
                loss = (weight.mv(inputs[t]) + bias).pow(2).sum()
            if kwargs.get("maximize"):
                loss = -torch.tanh(loss / 100)
            loss.backward()
            for p in params:
                if not p.grad.is_sparse:
                    p.grad = p.grad.to_sparse()
            return loss
        loss = opt.step(closure)
        for s in scheds:
            if isinstance(s, torch.optim.lr_scheduler.ReduceLROnPlateau):
                s.step(float(loss))
            else:
                s.step()
    return params, opt


@pytest.mark.parametrize("embedding", [False, True], ids=["to_sparse", "embedding"])
@pytest.mark.parametrize("dtype", [torch.float64, torch.float32], ids=["float64", "float32"])
@pytest.mark.parametrize("info,inp", SPARSE_CONFIGS)
def test_optim_db_sparse_config_matches_torch(info, inp, dtype, embedding):
    ours, kwargs = getattr(ft, info.name), inp.kwargs
    with_schedulers = tuple(info.scheduler_inputs) if dtype == torch.float64 else ()
    for schedulers in ((),) + with_schedulers:
        ref_params, opt_ref = train_sparse(info.optim_cls, kwargs, dtype, schedulers,
                                           embedding=embedding)
        params, opt = train_sparse(ours, kwargs, dtype, schedulers, embedding=embedding)
        assert max(rel(p, q) for p, q in zip(params, ref_params)) <= TOL[dtype]
        assert [g["lr"] for g in opt.param_groups] == [g["lr"] for g in opt_ref.param_groups]
        for p, q in zip(params, ref_params):
            assert opt.state[p].keys() == opt_ref.state[q].keys()
            assert opt.state[p]["step"] == opt_ref.state[q]["step"]
            for key in ("exp_avg", "exp_avg_sq"):
                assert rel(opt.state[p][key], opt_ref.state[q][key]) <= 10 * TOL[dtype], key
        sd, sd_ref = opt.state_dict(), opt_ref.state_dict()
        for key, value in sd_ref["param_groups"][0].items():
            if key != "params" and not isinstance(value, torch.Tensor):
                assert sd["param_groups"][0][key] == value, key
    ref_next, _ = train_sparse(info.optim_cls, kwargs, dtype, state_dict=sd_ref, start=N_STEPS,
                               embedding=embedding)
    ours_next, _ = train_sparse(ours, kwargs, dtype, state_dict=sd_ref, start=N_STEPS,
                                embedding=embedding)
    cross, _ = train_sparse(info.optim_cls, kwargs, dtype, state_dict=sd, start=N_STEPS,
                            embedding=embedding)
    assert max(rel(p, q) for a in (ours_next, cross) for p, q in zip(a, ref_next)) <= TOL[dtype]


def test_sparse_adam_refuses_dense_gradients_as_torch():
    w = torch.nn.Parameter(torch.randn(3, 2))
    opt = ft.SparseAdam([w])
    w.grad = torch.ones(3, 2)
    with pytest.raises(RuntimeError, match="SparseAdam does not support dense gradients"):
        opt.step()
    assert opt.state[w] == {}


def test_sparse_harness_counts():
    assert [info.name for info in SPARSE_INFOS] == ["SparseAdam"]
    assert len(SPARSE_CONFIGS) == 4
    assert sum(p.values[0].name == "SparseAdam" for p in ERRORS) == 10
