"""DLPack: the functional steps take any CPU array exposing __dlpack__, without copies.

Each functional step is run once on NumPy arrays and once on the same values held by another
producer (a minimal DLPack wrapper, torch CPU tensors, JAX CPU arrays when installed); the
results must be identical and the producer's memory updated in place.
"""
import numpy as np
import pytest

from fastopt import functional as F


class Producer:
    """A minimal DLPack producer over a NumPy array (stands for any framework's array)."""

    def __init__(self, a):
        self.a = a

    def __dlpack__(self, **kwargs):
        return self.a.__dlpack__(**kwargs)

    def __dlpack_device__(self):
        return self.a.__dlpack_device__()


def calls():
    """(name, function, buffer names, keywords) of every functional step, with its state."""
    return [
        ("sgd", F.sgd_, ["momentum_buffer"], dict(lr=0.1, momentum=0.9, step=2)),
        ("adagrad", F.adagrad_, ["state_sum"], dict(lr=0.1, step=1)),
        ("rmsprop", F.rmsprop_, ["square_avg", "momentum_buffer", "grad_avg"],
         dict(lr=0.01, momentum=0.9, centered=True)),
        ("adam", F.adam_, ["exp_avg", "exp_avg_sq", "max_exp_avg_sq"],
         dict(lr=0.01, step=3, amsgrad=True)),
        ("adamw", F.adamw_, ["exp_avg", "exp_avg_sq"], dict(lr=0.01, step=1)),
        ("adadelta", F.adadelta_, ["square_avg", "acc_delta"], dict(lr=1.0)),
        ("adamax", F.adamax_, ["exp_avg", "exp_inf"], dict(lr=0.01, step=2)),
    ]


CALLS = calls()


def arrays(dtype=np.float32, seed=0, n_state=3):
    rng = np.random.default_rng(seed)
    shapes = [(5, 3), (40000,)]
    params = [rng.standard_normal(s).astype(dtype) for s in shapes]
    grads = [rng.standard_normal(s).astype(dtype) for s in shapes]
    states = [[np.abs(rng.standard_normal(s)).astype(dtype) for s in shapes]
              for _ in range(n_state)]
    return params, grads, states


def run(fn, names, kw, params, grads, states, wrap):
    fn([wrap(p) for p in params], [wrap(g) for g in grads],
       **{n: [wrap(a) for a in s] for n, s in zip(names, states)}, **kw)


def expected_after(fn, names, kw, dtype=np.float32):
    params, grads, states = arrays(dtype)
    run(fn, names, kw, params, grads, states, lambda a: a)
    return params, states


@pytest.mark.parametrize("name,fn,names,kw", CALLS, ids=[c[0] for c in CALLS])
def test_generic_dlpack_producer(name, fn, names, kw):
    want_p, want_s = expected_after(fn, names, kw)
    params, grads, states = arrays()
    run(fn, names, kw, params, grads, states, Producer)
    for a, b in zip(params + sum(states[:len(names)], []), want_p + sum(want_s[:len(names)], [])):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("name,fn,names,kw", CALLS, ids=[c[0] for c in CALLS])
def test_torch_cpu_tensors(name, fn, names, kw, dtype):
    torch = pytest.importorskip("torch", reason="needs torch (pip install 'fastopt[torch]')")
    want_p, want_s = expected_after(fn, names, kw, dtype)
    params, grads, states = arrays(dtype)
    tp = [torch.from_numpy(p.copy()) for p in params]
    tg = [torch.from_numpy(g.copy()) for g in grads]
    ts = [[torch.from_numpy(a.copy()) for a in s] for s in states]
    ptrs = [t.data_ptr() for t in tp]
    fn(tp, tg, **{n: s for n, s in zip(names, ts)}, **kw)
    assert [t.data_ptr() for t in tp] == ptrs
    for t, want in zip(tp, want_p):
        np.testing.assert_array_equal(t.numpy(), want)
    for s, want in zip(ts, want_s[:len(names)]):
        for t, w in zip(s, want):
            np.testing.assert_array_equal(t.numpy(), w)
    # one tensor instead of a list; NumPy state with torch parameter and gradient
    p = torch.from_numpy(params[0].copy())
    m, v = np.zeros_like(params[0]), np.zeros_like(params[0])
    F.adam_(p, torch.from_numpy(grads[0]), m, v, step=1, lr=0.1)
    q = params[0].copy()
    F.adam_(q, grads[0], np.zeros_like(q), np.zeros_like(q), step=1, lr=0.1)
    np.testing.assert_array_equal(p.numpy(), q)


def test_read_only_params_are_rejected_but_read_only_grads_are_fine():
    params, grads, states = arrays(n_state=2)
    frozen = params[0].copy()
    frozen.flags.writeable = False
    before = [a.copy() for a in params[1:] + states[0] + states[1]]
    with pytest.raises(ValueError, match=r"param\[0\].*read-only"):
        F.adam_([Producer(frozen), params[1]], grads, states[0], states[1], step=1, lr=0.1)
    for a, b in zip(params[1:] + states[0] + states[1], before):
        np.testing.assert_array_equal(a, b)
    ro_state = states[1][1].copy()
    ro_state.flags.writeable = False
    with pytest.raises(ValueError, match=r"exp_avg_sq\[1\].*read-only"):
        F.adam_(params, grads, states[0], [states[1][0], Producer(ro_state)], step=1, lr=0.1)
    ro_grads = []
    for g in grads:
        g = g.copy()
        g.flags.writeable = False
        ro_grads.append(Producer(g))
    want = [p.copy() for p in params]
    F.adam_(want, grads, [a.copy() for a in states[0]], [a.copy() for a in states[1]],
            step=1, lr=0.1)
    F.adam_(params, ro_grads, states[0], states[1], step=1, lr=0.1)
    for a, b in zip(params, want):
        np.testing.assert_array_equal(a, b)


def test_tensors_that_cannot_be_viewed_give_a_clear_error():
    torch = pytest.importorskip("torch", reason="needs torch (pip install 'fastopt[torch]')")
    p = torch.zeros(3, requires_grad=True)
    with pytest.raises(TypeError, match="param.*detach"):
        F.sgd_(p, torch.ones(3), lr=0.1)
    with pytest.raises(TypeError, match="param.*meta"):
        F.sgd_(torch.zeros(3, device="meta"), torch.ones(3), lr=0.1)
    with pytest.raises(ValueError, match="C-contiguous"):
        F.sgd_(torch.zeros(4, 3).t(), torch.ones(3, 4), lr=0.1)


def test_jax_cpu_arrays():
    jnp = pytest.importorskip("jax.numpy", reason="JAX is not installed")
    p = np.linspace(-1, 1, 8).astype(np.float32)
    g = jnp.asarray(np.full(8, 0.5, np.float32))          # JAX arrays are immutable
    want = p - 0.1 * 0.5
    F.sgd_(p, g, lr=0.1)                                  # read-only gradient: fine
    np.testing.assert_allclose(p, want)
    with pytest.raises(ValueError, match="read-only"):
        F.sgd_(jnp.asarray(p), g, lr=0.1)
