"""BatchNorm: forward against the definition, backward against finite differences, running
statistics and eval mode, torch golden values (and live torch), the synchronization hooks
(two replicas in threads equal one batch), validation."""
import copy
import threading
from pathlib import Path

import numpy as np
import pytest

from fastopt.nn import BatchNorm

GOLDEN = Path(__file__).parent / "golden" / "batchnorm.npz"
EPS = 1e-5


def axes_of(x):
    return (0,) + tuple(range(2, x.ndim))


def per_channel(v, x):
    return np.asarray(v).reshape((1, -1) + (1,) * (x.ndim - 2))


def reference_forward(x, weight, bias, mean=None, var=None):
    """y = w (x - mean) / sqrt(var + eps) + b; batch mean and biased variance by default."""
    x = x.astype(np.float64)
    if mean is None:
        mean = x.mean(axis=axes_of(x))
        var = ((x - per_channel(mean, x)) ** 2).mean(axis=axes_of(x))
    return per_channel(weight, x) * (x - per_channel(mean, x)) / np.sqrt(per_channel(var, x) + EPS) + per_channel(bias, x)


def make_bn(c, rng, dtype=np.float64, **kwargs):
    bn = BatchNorm(c, eps=EPS, dtype=dtype, **kwargs)
    bn.weight[...] = rng.uniform(0.5, 1.5, c)
    bn.bias[...] = rng.standard_normal(c)
    return bn


SHAPES = [(12, 4), (5, 3, 4, 6), (6, 2, 7)]


@pytest.mark.parametrize("shape", SHAPES)
def test_forward_training_matches_definition(shape):
    rng = np.random.default_rng(0)
    bn = make_bn(shape[1], rng)
    x = rng.standard_normal(shape) * 3 + 1
    y = bn.forward(x)
    np.testing.assert_allclose(y, reference_forward(x, bn.weight, bn.bias), rtol=1e-12, atol=1e-12)
    assert y.shape == x.shape and y.dtype == x.dtype


@pytest.mark.parametrize("momentum", [0.1, 0.5, None])
def test_running_statistics_recurrence(momentum):
    rng = np.random.default_rng(1)
    bn = make_bn(3, rng, momentum=momentum)
    mean, var = np.zeros(3), np.ones(3)
    for k in range(1, 5):
        x = rng.standard_normal((4, 3, 5, 5)) * k + k
        bn.forward(x)
        m = 4 * 25
        rho = momentum if momentum is not None else 1.0 / k
        mean = (1 - rho) * mean + rho * x.mean(axis=(0, 2, 3))
        var = (1 - rho) * var + rho * x.var(axis=(0, 2, 3)) * m / (m - 1)  # unbiased
        np.testing.assert_allclose(bn.running_mean, mean, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, var, rtol=1e-12)
        assert bn.num_batches_tracked == k


def test_eval_uses_running_statistics_and_changes_nothing():
    rng = np.random.default_rng(2)
    bn = make_bn(4, rng)
    for _ in range(3):
        bn.forward(rng.standard_normal((8, 4, 3, 3)) + 2)
    state = bn.state_dict()
    x = rng.standard_normal((2, 4, 3, 3))
    y = bn.eval().forward(x)
    np.testing.assert_allclose(y, reference_forward(x, bn.weight, bn.bias, bn.running_mean, bn.running_var), rtol=1e-12, atol=1e-12)
    for key, value in bn.state_dict().items():
        np.testing.assert_array_equal(value, state[key])
    # a single example is fine in eval mode; training mode on it differs
    np.testing.assert_allclose(bn.forward(x[:1]), y[:1], rtol=1e-12)
    assert not np.allclose(bn.train().forward(x), y)


def finite_difference(f, a, h=1e-6):
    grad = np.zeros_like(a)
    for idx in np.ndindex(a.shape):
        orig = a[idx]
        a[idx] = orig + h
        fp = f()
        a[idx] = orig - h
        fm = f()
        a[idx] = orig
        grad[idx] = (fp - fm) / (2 * h)
    return grad


@pytest.mark.parametrize("shape", SHAPES)
@pytest.mark.parametrize("training", [True, False])
def test_backward_matches_finite_differences(shape, training):
    rng = np.random.default_rng(3)
    bn = make_bn(shape[1], rng)
    bn.forward(rng.standard_normal(shape) + 1)  # non-trivial running statistics
    bn.train(training)
    x = rng.standard_normal(shape) * 2
    dy = rng.standard_normal(shape)

    def loss():  # L = sum(dy * y), on a copy so the running statistics stay put
        return float(np.sum(dy * copy.deepcopy(bn).forward(x)))

    probe = copy.deepcopy(bn)
    probe.forward(x)
    dx = probe.backward(dy)
    np.testing.assert_allclose(dx, finite_difference(loss, x), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(probe.grad_weight, finite_difference(loss, bn.weight), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(probe.grad_bias, finite_difference(loss, bn.bias), rtol=1e-6, atol=1e-8)


def test_float32_and_not_affine():
    rng = np.random.default_rng(4)
    x = rng.standard_normal((6, 3, 4, 4))
    bn32 = BatchNorm(3, dtype=np.float32)
    y32 = bn32.forward(x.astype(np.float32))
    assert y32.dtype == np.float32 and bn32.running_mean.dtype == np.float32
    assert bn32.weight.dtype == bn32.grad_weight.dtype == np.float32
    np.testing.assert_allclose(y32, reference_forward(x, np.ones(3), np.zeros(3)), atol=1e-5)
    dx = bn32.backward(np.ones_like(y32))
    assert dx.dtype == np.float32
    np.testing.assert_allclose(dx, 0.0, atol=1e-5)  # dL/dx of sum(xhat) is 0
    plain = BatchNorm(3, affine=False, dtype=np.float64)
    np.testing.assert_allclose(plain.forward(x), reference_forward(x, np.ones(3), np.zeros(3)), rtol=1e-12, atol=1e-12)
    assert plain.weight is None and plain.parameters() == [] and plain.gradients() == []
    plain.backward(x)


def test_large_offset_variance_is_accurate():
    rng = np.random.default_rng(5)
    x = 1e6 + 1e-2 * rng.standard_normal((64, 2))
    bn = BatchNorm(2, momentum=1.0, dtype=np.float64)
    y = bn.forward(x)
    np.testing.assert_allclose(bn.running_var, x.var(axis=0, ddof=1), rtol=1e-6)
    np.testing.assert_allclose(y.std(axis=0), 1.0 / np.sqrt(1 + EPS / x.var(axis=0)), rtol=1e-6)


def test_gradients_feed_an_optimizer_step():
    rng = np.random.default_rng(6)
    bn = make_bn(3, rng, dtype=np.float32)
    x = rng.standard_normal((8, 3)).astype(np.float32)
    target = rng.standard_normal((8, 3)).astype(np.float32)
    losses = []
    for _ in range(50):
        y = bn.forward(x)
        losses.append(float(np.mean((y - target) ** 2)))
        bn.backward((2 * (y - target) / y.size).astype(np.float32))
        for p, g in zip(bn.parameters(), bn.gradients()):  # plain SGD on the exposed arrays
            p -= 0.5 * g
    assert losses[-1] < 0.5 * losses[0]


# -------------------------------------------------------------------------------- torch

def _golden():
    with np.load(GOLDEN) as f:
        data = {k: f[k] for k in f.files}
    return data, sorted({k.split("/")[0] for k in data if "/" in k})


CASES = {"bn1d": 0.1, "bn1d_cumulative": None, "bn2d": 0.1, "bn2d_offset": 0.3}


def _replay(data, name, momentum):
    inp = lambda key: data[f"{name}/in/{key}"]
    bn = BatchNorm(inp("weight").shape[0], eps=1e-5, momentum=momentum, dtype=np.float64)
    bn.weight[...], bn.bias[...] = inp("weight"), inp("bias")
    means, variances = [], []
    for x in inp("xs"):
        y = bn.forward(x)
        means.append(bn.running_mean.copy())
        variances.append(bn.running_var.copy())
    out = {"y": y, "dx": bn.backward(inp("dy")), "grad_weight": bn.grad_weight.copy(),
           "grad_bias": bn.grad_bias.copy(), "running_means": np.stack(means),
           "running_vars": np.stack(variances)}
    bn.eval()
    out["y_eval"] = bn.forward(inp("x_eval"))
    out["dx_eval"] = bn.backward(inp("dy"))
    return out


def test_matches_torch_golden():
    data, names = _golden()
    assert names == sorted(CASES)
    for name in names:
        ours = _replay(data, name, CASES[name])
        for key, value in ours.items():
            np.testing.assert_allclose(value, data[f"{name}/out/{key}"], rtol=1e-10, atol=1e-12,
                                       err_msg=f"{name}: {key}")


@pytest.mark.torch
def test_matches_torch_live():
    pytest.importorskip("torch")
    import importlib.util

    spec = importlib.util.spec_from_file_location("make_tricks_golden", GOLDEN.with_name("make_tricks_golden.py"))
    script = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(script)
    for name in ("bn1d_cumulative", "bn2d_offset"):
        data = {f"{name}/in/{k}": v for k, v in script.batchnorm_inputs(name).items()}
        ours = _replay(data, name, CASES[name])
        for key, value in script.torch_batchnorm(name).items():
            np.testing.assert_allclose(ours[key], value, rtol=1e-10, atol=1e-12, err_msg=f"{name}: {key}")


# ------------------------------------------------------------------------- sync hooks

class ThreadAllreduce:
    """Sum arrays across `n` threads (a stand-in for MPI Allreduce)."""

    def __init__(self, n):
        self.barrier = threading.Barrier(n)
        self.parts = [None] * n
        self.calls = 0

    def __call__(self, rank, array):
        self.parts[rank] = np.array(array, copy=True)
        self.barrier.wait()
        total = np.sum(self.parts, axis=0)
        self.barrier.wait()
        if rank == 0:
            self.calls += 1
        return total


class FakeSyncBatchNorm(BatchNorm):
    def __init__(self, c, rank, comm, **kwargs):
        super().__init__(c, **kwargs)
        self.rank, self.comm = rank, comm

    def stats_shift(self, x3):
        return self.running_mean.astype(np.float64)  # identical on every replica

    def reduce_stats(self, stats):
        return self.comm(self.rank, stats)

    def reduce_grad_sums(self, sums):
        return self.comm(self.rank, sums)


@pytest.mark.parametrize("shape", [(12, 3), (6, 3, 5, 4)])
def test_sync_hooks_two_replicas_equal_one_batch(shape):
    rng = np.random.default_rng(7)
    c = shape[1]
    x = rng.standard_normal(shape) * 2 + 3
    dy = rng.standard_normal(shape)
    weight, bias = rng.uniform(0.5, 1.5, c), rng.standard_normal(c)
    whole = BatchNorm(c, dtype=np.float64)
    whole.weight[...], whole.bias[...] = weight, bias
    y_whole = whole.forward(x)
    dx_whole = whole.backward(dy)

    comm = ThreadAllreduce(2)
    replicas = [FakeSyncBatchNorm(c, r, comm, dtype=np.float64) for r in range(2)]
    halves = [slice(0, 2 * shape[0] // 3), slice(2 * shape[0] // 3, shape[0])]  # unequal shares
    results = [None, None]

    def run(r):
        bn = replicas[r]
        bn.weight[...], bn.bias[...] = weight, bias
        y = bn.forward(x[halves[r]])
        results[r] = (y, bn.backward(dy[halves[r]]))

    threads = [threading.Thread(target=run, args=(r,)) for r in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert comm.calls == 2  # one reduction per forward, one per backward
    np.testing.assert_allclose(np.concatenate([results[0][0], results[1][0]]), y_whole, rtol=1e-11, atol=1e-11)
    np.testing.assert_allclose(np.concatenate([results[0][1], results[1][1]]), dx_whole, rtol=1e-11, atol=1e-11)
    for bn in replicas:
        np.testing.assert_allclose(bn.running_mean, whole.running_mean, rtol=1e-12)
        np.testing.assert_allclose(bn.running_var, whole.running_var, rtol=1e-12)
    np.testing.assert_allclose(replicas[0].grad_weight + replicas[1].grad_weight, whole.grad_weight, rtol=1e-11)
    np.testing.assert_allclose(replicas[0].grad_bias + replicas[1].grad_bias, whole.grad_bias, rtol=1e-11)


# ---------------------------------------------------------------------------- validation

@pytest.mark.parametrize("kwargs, error, words", [
    (dict(num_features=0), ValueError, "num_features must be >= 1"),
    (dict(num_features=2.0), TypeError, "num_features must be an integer"),
    (dict(eps=0.0), ValueError, "eps must be a finite number > 0"),
    (dict(eps="1e-5"), TypeError, "eps"),
    (dict(momentum=1.5), ValueError, "momentum must be in [0, 1]"),
    (dict(momentum="0.1"), TypeError, "momentum"),
    (dict(dtype=np.int32), TypeError, "dtype must be float32 or float64"),
])
def test_bad_constructor_arguments(kwargs, error, words):
    args = dict(num_features=3) | kwargs
    with pytest.raises(error) as info:
        BatchNorm(**args)
    assert words in str(info.value)


def test_bad_inputs_change_nothing():
    rng = np.random.default_rng(8)
    bn = make_bn(3, rng)
    bn.forward(rng.standard_normal((5, 3)))
    bn.backward(rng.standard_normal((5, 3)))
    snapshot = copy.deepcopy(bn.__dict__)

    def unchanged():
        for key, value in snapshot.items():
            if isinstance(value, np.ndarray):
                np.testing.assert_array_equal(getattr(bn, key), value, err_msg=key)
        assert bn.num_batches_tracked == snapshot["num_batches_tracked"]

    for bad, error, words in [
        (np.ones((5, 4)), ValueError, "x must have shape (N, 3, ...)"),
        (np.ones(3), ValueError, "x must have shape"),
        (np.ones((5, 3), np.int64), TypeError, "x must be float32 or float64"),
        ([[1.0, 2.0, 3.0]], TypeError, "x must be a numpy.ndarray"),
        (np.ones((1, 3)), ValueError, "more than one value per channel"),
    ]:
        with pytest.raises(error) as info:
            bn.forward(bad)
        assert words in str(info.value)
        unchanged()
    with pytest.raises(ValueError, match="dy must have the forward input's shape"):
        bn.backward(np.ones((4, 3)))
    with pytest.raises(TypeError, match="dy must be float32 or float64"):
        bn.backward(np.ones((5, 3), np.int64))
    unchanged()
    with pytest.raises(RuntimeError, match="backward called before forward"):
        BatchNorm(2).backward(np.ones((2, 2)))


def test_state_dict_roundtrip_keeps_buffers():
    rng = np.random.default_rng(9)
    bn = make_bn(2, rng)
    bn.forward(rng.standard_normal((4, 2)))
    other = BatchNorm(2, dtype=np.float64)
    weight_buffer = other.weight
    other.load_state_dict(bn.state_dict())
    assert other.weight is weight_buffer
    np.testing.assert_array_equal(other.running_var, bn.running_var)
    assert other.num_batches_tracked == 1
    with pytest.raises(ValueError, match="running_mean"):
        other.load_state_dict(dict(bn.state_dict(), running_mean=np.zeros(3)))
    np.testing.assert_array_equal(other.running_mean, bn.running_mean)
