"""Every validation rule raises TypeError/ValueError naming the problem, and changes nothing.

After each rejected call the parameters and state are bit-identical to before, and the
optimizer still steps correctly.
"""
import copy

import numpy as np
import pytest

import fastopt as fo
from cases import CASES

CLASSES = fo.optim.first_order.CLASSES      # optimizer name -> class, one per table entry


def make(name="adam", dtype=np.float32, hyper=None, steps=2):
    params = [np.linspace(-1, 1, 12, dtype=dtype).reshape(3, 4), np.arange(5, dtype=dtype)]
    opt = CLASSES[name](params, **(hyper if hyper is not None else CASES[name][-1]))
    for k in range(steps):
        opt.step([np.full((3, 4), 0.1 * (k + 1), dtype), np.full(5, -0.2, dtype)])
    return opt, params


def snapshot(opt, params):
    return [p.copy() for p in params], copy.deepcopy(opt.state), opt.state_dict()


def assert_unchanged(opt, params, snap):
    before_params, before_state, before_sd = snap
    for p, q in zip(params, before_params):
        assert np.array_equal(p, q) and p.dtype == q.dtype
    assert opt.state.keys() == before_state.keys()
    for i in before_state:
        assert opt.state[i].keys() == before_state[i].keys()
        for k in before_state[i]:
            assert np.array_equal(opt.state[i][k], before_state[i][k])
    after_sd = opt.state_dict()
    assert [s["step"] for s in after_sd["state"].values()] == \
        [s["step"] for s in before_sd["state"].values()]


def good_grads(dtype=np.float32):
    return [np.ones((3, 4), dtype), np.ones(5, dtype)]


BAD_GRADS = [
    ("wrong count", lambda: good_grads()[:1], ValueError, "2 parameters"),
    ("too many", lambda: good_grads() + [np.ones(5, np.float32)], ValueError, "2 parameters"),
    ("wrong shape", lambda: [np.ones((4, 3), np.float32), np.ones(5, np.float32)], ValueError,
     r"grads\[0\] must have shape \(3, 4\)"),
    ("float16", lambda: [np.ones((3, 4), np.float16), np.ones(5, np.float32)], TypeError,
     r"grads\[0\] must have dtype float32"),
    ("integer", lambda: [np.ones((3, 4), np.float32), np.ones(5, np.int64)], TypeError,
     r"grads\[1\] must have dtype float32"),
    ("object", lambda: [np.ones((3, 4), np.float32), np.array([1.0] * 5, dtype=object)],
     TypeError, r"grads\[1\]"),
    ("float64 for float32", lambda: [np.ones((3, 4)), np.ones(5, np.float32)], TypeError,
     r"grads\[0\] must have dtype float32 like params\[0\], got float64"),
    ("non-contiguous", lambda: [np.ones((4, 3), np.float32).T, np.ones(5, np.float32)],
     ValueError, r"grads\[0\] must be C-contiguous"),
    ("strided", lambda: [np.ones((3, 4), np.float32), np.ones(10, np.float32)[::2]], ValueError,
     r"grads\[1\] must be C-contiguous"),
    ("not an array", lambda: [np.ones((3, 4), np.float32), [1.0] * 5], TypeError,
     r"grads\[1\] must be a numpy.ndarray"),
    ("None", lambda: [None, np.ones(5, np.float32)], TypeError, r"grads\[0\]"),
    ("byte-swapped", lambda: [np.ones((3, 4), np.dtype(">f4")), np.ones(5, np.float32)],
     TypeError, r"grads\[0\]"),
    ("not a list", lambda: 3.0, TypeError, "grads must be a list"),
]


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("what,make_grads,exc,msg", BAD_GRADS, ids=[b[0] for b in BAD_GRADS])
def test_bad_gradients_change_nothing(name, what, make_grads, exc, msg):
    opt, params = make(name)
    snap = snapshot(opt, params)
    with pytest.raises(exc, match=msg):
        opt.step(make_grads())
    assert_unchanged(opt, params, snap)
    steps_before = [g.get("k") for g in opt.param_groups]
    opt.step(good_grads())          # still works afterwards
    moved = not np.array_equal(params[0], snap[0][0])
    # Schedule-Free RAdam's silent phase (rho_t <= 4) takes steps that move nothing; its group
    # step count advances
    assert moved or [g.get("k") for g in opt.param_groups] != steps_before


@pytest.mark.parametrize("name", sorted(CLASSES))
def test_bad_gradient_on_first_step_creates_no_state(name):
    params = [np.zeros(4, np.float32)]
    opt = CLASSES[name](params, **CASES[name][-1])
    with pytest.raises(TypeError):
        opt.step([np.zeros(4, np.float64)])
    assert opt.state == {} and opt.state_dict()["state"] == {}
    assert np.array_equal(params[0], np.zeros(4, np.float32))


def test_grad_aliasing_param_or_state_is_rejected():
    opt, params = make("adam")
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"grads\[0\] shares memory"):
        opt.step([params[0], np.ones(5, np.float32)])
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory"):
        opt.step([np.ones((3, 4), np.float32), opt.state[1]["exp_avg"]])
    with pytest.raises(ValueError, match=r"grads\[1\] shares memory"):
        opt.step([np.ones((3, 4), np.float32), params[0].reshape(-1)[:5]])
    assert_unchanged(opt, params, snap)


def test_bad_gradient_in_second_group_leaves_first_group_unchanged():
    a, b = np.ones(4), np.ones(3)
    opt = fo.SGD([{"params": [a]}, {"params": [b], "lr": 0.5}], lr=0.1, momentum=0.9)
    opt.step([np.ones(4), np.ones(3)])
    snap = snapshot(opt, [a, b])
    with pytest.raises(ValueError, match=r"grads\[1\] must have shape \(3,\)"):
        opt.step([np.ones(4), np.ones(4)])
    assert_unchanged(opt, [a, b], snap)


def test_schedule_returning_garbage_changes_nothing():
    p = np.ones(3)
    opt = fo.Adam([p], lr=lambda t: 0.1 if t < 2 else float("nan"))
    opt.step([np.ones(3)])
    opt.step([np.ones(3)])
    snap = snapshot(opt, [p])
    with pytest.raises(ValueError, match="lr schedule returned nan at step 2"):
        opt.step([np.ones(3)])
    assert_unchanged(opt, [p], snap)


def test_param_made_read_only_after_construction():
    opt, params = make("sgd")
    params[1].flags.writeable = False
    snap = snapshot(opt, params)
    with pytest.raises(ValueError, match=r"params\[1\] became read-only"):
        opt.step(good_grads())
    assert_unchanged(opt, params, snap)


# ------------------------------------------------------------------------ constructor
BAD_PARAMS = [
    ("empty", lambda: [], ValueError, "empty parameter list"),
    ("integer", lambda: [np.zeros(3, np.int32)], TypeError, r"params\[0\] must have dtype float32 or float64"),
    ("float16", lambda: [np.zeros(3, np.float16)], TypeError, r"params\[0\] must have dtype"),
    ("broadcast view", lambda: [np.broadcast_to(np.zeros(1), (3,))], ValueError, r"params\[0\]"),
    ("read-only", lambda: [np.frombuffer(b"\0" * 24, np.float64)], ValueError,
     r"params\[0\] must be writable"),
    ("non-contiguous", lambda: [np.zeros((3, 4)).T], ValueError, r"params\[0\] must be C-contiguous"),
    ("duplicated", lambda: (lambda a: [a, a])(np.zeros(3)), ValueError, "share memory"),
    ("overlapping views", lambda: (lambda a: [a[:6], a[4:]])(np.zeros(10)), ValueError, "share memory"),
    ("single array", lambda: np.zeros(3), TypeError, "wrap it in a list"),
    ("list", lambda: [[1.0, 2.0]], TypeError, r"params\[0\] must be a numpy.ndarray"),
    ("not iterable", lambda: 3, TypeError, "params must be a list"),
]


@pytest.mark.parametrize("name", sorted(CLASSES))
@pytest.mark.parametrize("what,make_params,exc,msg", BAD_PARAMS, ids=[b[0] for b in BAD_PARAMS])
def test_bad_parameters(name, what, make_params, exc, msg):
    with pytest.raises(exc, match=msg):
        CLASSES[name](make_params())


def test_duplicate_across_groups():
    a = np.zeros(5)
    with pytest.raises(ValueError, match=r"params\[1\] shares memory with params\[0\]"):
        fo.Adam([{"params": [a]}, {"params": [a[2:]]}])


BAD_HYPER = [
    ("sgd", dict(lr=-0.1), ValueError, "Invalid learning rate"),
    ("sgd", dict(lr=float("nan")), ValueError, "Invalid learning rate"),
    ("sgd", dict(lr="0.1"), TypeError, "lr must be a number or a schedule"),
    ("sgd", dict(momentum=-0.5), ValueError, "Invalid momentum"),
    ("sgd", dict(weight_decay=-1.0), ValueError, "Invalid weight_decay"),
    ("sgd", dict(nesterov=True), ValueError, "Nesterov momentum requires"),
    ("sgd", dict(nesterov=True, momentum=0.9, dampening=0.1), ValueError, "Nesterov"),
    ("sgd", dict(maximize=1), TypeError, "maximize must be a bool"),
    ("adam", dict(betas=(1.0, 0.999)), ValueError, r"Invalid betas\[0\]"),
    ("adam", dict(betas=(0.9, -0.1)), ValueError, r"Invalid betas\[1\]"),
    ("adam", dict(betas=0.9), TypeError, "betas must be a pair"),
    ("adam", dict(eps=-1e-8), ValueError, "Invalid eps"),
    ("adam", dict(amsgrad="yes"), TypeError, "amsgrad must be a bool"),
    ("adamw", dict(weight_decay=-0.1), ValueError, "Invalid weight_decay"),
    ("adagrad", dict(lr_decay=-1.0), ValueError, "Invalid lr_decay"),
    ("adagrad", dict(initial_accumulator_value=-1.0), ValueError, "Invalid initial_accumulator_value"),
    ("rmsprop", dict(alpha=-0.5), ValueError, "Invalid alpha"),
    ("rmsprop", dict(momentum=-0.5), ValueError, "Invalid momentum"),
    ("adadelta", dict(rho=1.5), ValueError, r"Invalid rho"),
    ("adamax", dict(betas=(0.9, 1.0)), ValueError, r"Invalid betas\[1\]"),
    ("adam", dict(foo=1), TypeError, "unexpected keyword"),
]


@pytest.mark.parametrize("name,hyper,exc,msg", BAD_HYPER,
                         ids=[f"{b[0]}-{'-'.join(b[1])}" for b in BAD_HYPER])
def test_bad_hyperparameters(name, hyper, exc, msg):
    with pytest.raises(exc, match=msg):
        CLASSES[name]([np.zeros(3)], **hyper)
    with pytest.raises(exc, match=msg):      # as a param-group override too
        if "foo" in hyper:
            raise TypeError("unexpected keyword")
        CLASSES[name]([{"params": [np.zeros(3)], **hyper}])


# ------------------------------------------------------------------------ state dicts
def test_load_state_dict_checks_and_changes_nothing():
    opt, params = make("adam", hyper=dict(lr=0.01))
    good = opt.state_dict()
    snap = snapshot(opt, params)
    bad = []
    sd = copy.deepcopy(good); sd["state"][0]["exp_avg"] = np.zeros((4, 3), np.float32); bad.append((sd, "shape"))
    sd = copy.deepcopy(good); sd["param_groups"].append(dict(sd["param_groups"][0])); bad.append((sd, "param groups"))
    sd = copy.deepcopy(good); sd["param_groups"][0]["params"] = [0]; bad.append((sd, "has 1 params"))
    sd = copy.deepcopy(good); sd["param_groups"][0]["betas"] = (2.0, 0.9); bad.append((sd, r"betas\[0\]"))
    sd = copy.deepcopy(good); sd["state"][1]["step"] = 7.0; bad.append((sd, "different step counts"))
    sd = copy.deepcopy(good); del sd["state"][1]; bad.append((sd, "some parameters have state"))
    sd = copy.deepcopy(good); sd["state"][0]["bogus"] = np.zeros((3, 4)); bad.append((sd, "unknown buffer"))
    sd = copy.deepcopy(good); sd["state"][0]["exp_avg"] = np.zeros((3, 4), np.int32); bad.append((sd, "floating"))
    sd = copy.deepcopy(good); del sd["state"][0]["exp_avg_sq"]; del sd["state"][1]["exp_avg_sq"]; bad.append((sd, "missing"))
    bad.append(({"state": {}}, "must be a dict with"))
    for sd, msg in bad:
        with pytest.raises((ValueError, TypeError), match=msg):
            opt.load_state_dict(sd)
        assert_unchanged(opt, params, snap)
    opt.load_state_dict(good)
    assert_unchanged(opt, params, snap)
