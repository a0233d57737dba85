"""state_dict / load_state_dict / fo.save / fo.load: round trips give bit-identical trajectories."""
import os
import pickle

import numpy as np
import pytest

import fastopt as fo
from cases import CASES, EXTRA_CASES

CLASSES = fo.optim.first_order.CLASSES      # optimizer name -> class, one per table entry
ALL = [(n, h) for n in CLASSES for h in CASES[n] + EXTRA_CASES.get(n, [])]


def grads_at(t, dtype):
    rng = np.random.default_rng(100 + t)
    return [rng.standard_normal((6, 2)).astype(dtype), rng.standard_normal(9).astype(dtype)]


def fresh(name, hyper, dtype):
    params = [np.linspace(-1, 1, 12, dtype=dtype).reshape(6, 2), np.linspace(2, 3, 9, dtype=dtype)]
    groups = [{"params": params[:1]}, {"params": params[1:], "lr": hyper["lr"] * 0.5}]
    return CLASSES[name](groups, **hyper), params


@pytest.mark.parametrize("via", ["state_dict", "file"])
@pytest.mark.parametrize("name,hyper", ALL, ids=[f"{n}-{i}" for i, (n, _) in enumerate(ALL)])
def test_resume_mid_run_is_bit_identical(tmp_path, name, hyper, via):
    for dtype in (np.float32, np.float64):
        straight, p_straight = fresh(name, hyper, dtype)
        for t in range(20):
            straight.step(grads_at(t, dtype))
        first, p_first = fresh(name, hyper, dtype)
        for t in range(8):
            first.step(grads_at(t, dtype))
        resumed, p_resumed = fresh(name, hyper, dtype)
        for a, b in zip(p_resumed, p_first):
            a[...] = b
        if via == "file":
            path = tmp_path / f"{name}.npz"
            fo.save(first, path)
            fo.load(resumed, path)
        else:
            resumed.load_state_dict(first.state_dict())
        for t in range(8, 20):
            resumed.step(grads_at(t, dtype))
        for a, b in zip(p_resumed, p_straight):
            assert np.array_equal(a, b)


def test_state_dict_layout_follows_torch():
    p = [np.zeros(3), np.zeros(2)]
    opt = fo.Adam(p, lr=0.1, amsgrad=True)
    opt.step([np.ones(3), np.ones(2)])
    sd = opt.state_dict()
    assert set(sd) == {"state", "param_groups"}
    assert set(sd["state"]) == {0, 1}
    assert set(sd["state"][0]) == {"step", "exp_avg", "exp_avg_sq", "max_exp_avg_sq"}
    assert sd["state"][0]["step"] == 1.0
    assert sd["param_groups"][0]["params"] == [0, 1]
    assert sd["param_groups"][0]["betas"] == (0.9, 0.999)
    sd["state"][0]["exp_avg"][:] = 7          # a copy, not the live buffer
    assert not np.any(opt.state[0]["exp_avg"] == 7)


def test_state_dict_before_first_step_is_empty():
    opt = fo.Adam([np.zeros(3)])
    assert opt.state_dict()["state"] == {}


def test_hyperparameters_restored_and_lr_change_kept():
    p = [np.zeros(3)]
    a = fo.SGD(p, lr=0.1, momentum=0.9)
    a.step([np.ones(3)])
    a.param_groups[0]["lr"] = 0.01
    b = fo.SGD([np.zeros(3)], lr=0.5)
    b.load_state_dict(a.state_dict())
    assert b.param_groups[0]["lr"] == 0.01 and b.param_groups[0]["momentum"] == 0.9


class HalveEvery:
    """A picklable schedule (module level)."""

    def __init__(self, lr0, every):
        self.lr0, self.every = lr0, every

    def __call__(self, step):
        return self.lr0 * 0.5 ** (step // self.every)


def test_schedule_survives_save_and_load(tmp_path):
    p1, p2 = np.ones(4), np.ones(4)
    a = fo.SGD([p1], lr=fo.schedules.step_decay(0.1, 3, gamma=0.5))
    for _ in range(5):
        a.step([np.ones(4)])
    fo.save(a, tmp_path / "ck.npz")
    b = fo.SGD([p2], lr=0.0)
    fo.load(b, tmp_path / "ck.npz")
    p2[...] = p1
    assert b.param_groups[0]["lr"] == a.param_groups[0]["lr"]
    for _ in range(5):
        a.step([np.ones(4)])
        b.step([np.ones(4)])
    assert np.array_equal(p1, p2)


def test_a_schedule_of_ones_own_is_not_saved(tmp_path):
    """Checkpoints hold data only: any other callable is refused, the file left as it was."""
    path = tmp_path / "ck.npz"
    fo.save(fo.SGD([np.ones(4)], lr=0.1), path)
    before = path.read_bytes()
    for lr in (HalveEvery(0.1, 3), lambda t: 0.1):
        with pytest.raises(TypeError, match="fastopt.schedules"):
            fo.save(fo.SGD([np.ones(4)], lr=lr), path)
        assert path.read_bytes() == before
        assert os.listdir(tmp_path) == ["ck.npz"]


def test_save_is_atomic_and_verified(tmp_path):
    p = [np.ones(5, np.float32)]
    opt = fo.Adam(p)
    opt.step([np.ones(5, np.float32)])
    path = tmp_path / "ck.npz"
    fo.save(opt, path)
    assert [f for f in os.listdir(tmp_path) if f != "ck.npz"] == []   # no temporary left
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF
    bad = tmp_path / "bad.npz"
    bad.write_bytes(bytes(data))
    before = opt.state_dict()
    with pytest.raises(ValueError):
        fo.load(opt, bad)
    (tmp_path / "short.npz").write_bytes(path.read_bytes()[:100])
    with pytest.raises(ValueError, match="not a readable fastopt checkpoint"):
        fo.load(opt, tmp_path / "short.npz")
    other = fo.SGD([np.ones(5, np.float32)])
    with pytest.raises(ValueError, match="checkpoint of a Adam"):
        fo.load(other, path)
    after = opt.state_dict()
    assert np.array_equal(before["state"][0]["exp_avg"], after["state"][0]["exp_avg"])


def test_optimizer_with_lambda_schedule_still_has_a_state_dict():
    opt = fo.Adam([np.ones(2)], lr=lambda t: 0.1)
    sd = opt.state_dict()
    assert callable(sd["param_groups"][0]["lr"])
    with pytest.raises((pickle.PicklingError, AttributeError, TypeError)):
        fo.save(opt, "/tmp/unused-fastopt-lambda.npz")
    assert not os.path.exists("/tmp/unused-fastopt-lambda.npz")


def test_option_turned_on_mid_run_creates_its_buffer():
    p = np.ones(3)
    opt = fo.SGD([p], lr=0.1)
    opt.step([np.ones(3)])
    opt.param_groups[0]["momentum"] = 0.9
    opt.step([np.ones(3)])                     # buffer starts at the gradient, as in torch
    np.testing.assert_allclose(p, 1 - 0.1 - 0.1)
    np.testing.assert_allclose(opt.state[0]["momentum_buffer"], 1.0)
    opt.step([np.ones(3)])
    np.testing.assert_allclose(p, 0.8 - 0.1 * 1.9)


def test_schedule_object_drives_the_optimizer_and_survives_checkpoints(tmp_path):
    from fastopt import schedules as S
    sched = S.warmup_cosine(peak=0.1, warmup_steps=3, total_steps=10)
    p = np.zeros(2)
    opt = fo.SGD([p], lr=sched)
    expected = np.zeros(2)
    for t in range(5):
        opt.step([np.ones(2)])
        expected -= sched(t)
    np.testing.assert_allclose(p, expected, rtol=1e-15)
    fo.save(opt, tmp_path / "s.npz")
    q = p.copy()
    other = fo.SGD([q], lr=0.5)
    fo.load(other, tmp_path / "s.npz")
    assert other.param_groups[0]["lr"] == sched
    for t in range(5, 10):
        opt.step([np.ones(2)])
        other.step([np.ones(2)])
    assert np.array_equal(p, q)
