"""fastopt.torch on CUDA tensors, without a GPU: the stand-in CuPy (tests/fake_cupy.py) and the
stand-in torch CUDA tensor (tests/fake_torch_cuda.py).

Checked here: CUDA parameters go to fastopt.cuda's plans (one launch per group and dtype, on
torch's current stream), over CuPy views of the tensors' own memory (zero-copy), with the
state made as tensors on the parameters' device; the numbers are bit-identical to
fastopt.torch on CPU tensors (the stand-in applies the CPU rule chunk by chunk through the
device tables); channels_last parameters keep their layout; CPU and CUDA parameters in one
group, a gradient on another device and 16-bit CUDA parameters are clear errors with nothing
modified. The real kernels on a real GPU: tests/test_torch_cuda_gpu.py.
"""
import copy

import numpy as np
import pytest

torch = pytest.importorskip("torch", reason="fastopt.torch needs torch (pip install 'fastopt[torch]')")

import fake_cupy as fk  # noqa: E402
import fake_torch_cuda as fc  # noqa: E402
from cases import CASES  # noqa: E402
from fastopt import _table, cuda  # noqa: E402
from fastopt import torch as ft  # noqa: E402
from fastopt._specs import SPECS  # noqa: E402

ADAPTED = [name for name, opt in _table.OPTIMIZERS.items() if "torch" in opt.adapters]
PARAMS = [(name, i) for name in ADAPTED for i in range(min(2, len(CASES[name])))]
SHAPES = [(3, 4), (0,), (1,), (11,), (5, 2)]


@pytest.fixture
def fake(monkeypatch):
    """fastopt.cuda on the stand-in CuPy (chunks of 5 elements), torch's current stream faked."""
    yield from fc.installed(monkeypatch)


def make(dtype, on_cuda, seed=0, channels_last=False):
    g = torch.Generator().manual_seed(seed)
    params = [torch.randn(s, generator=g, dtype=dtype) for s in SHAPES]
    if channels_last:
        params.append(torch.randn(2, 3, 2, 2, generator=g, dtype=dtype)
                      .to(memory_format=torch.channels_last))
    params = [torch.nn.Parameter(p) for p in params]
    grads = [[torch.randn(p.shape, generator=g, dtype=dtype).to(
        memory_format=torch.channels_last if p.dim() == 4 else torch.contiguous_format)
        for p in params] for _ in range(4)]
    if on_cuda:
        params = [fc.cuda(p) for p in params]
        grads = [[fc.cuda(x) for x in gs] for gs in grads]
    return params, grads


def train(cls, hyper, params, grads):
    opt = cls([{"params": params[:2]}, {"params": params[2:], "lr": hyper["lr"] / 2}], **hyper)
    if hasattr(opt, "train"):       # Schedule-Free: gradients are taken in train mode
        opt.train()
    for gs in grads:
        for p, x in zip(params, gs):
            p.grad = x.clone()
        opt.step()
    return opt


def as_host(t):
    return t.detach().as_subclass(torch.Tensor) if isinstance(t, fc.CudaTensor) else t.detach()


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name,i", PARAMS, ids=[f"{n}-{i}" for n, i in PARAMS])
def test_cuda_tensors_run_the_cuda_plans_bitwise_like_cpu(fake, name, i, dtype):
    cls = getattr(ft, SPECS[name].class_name)
    hyper = CASES[name][i]
    cpu_p, cpu_g = make(dtype, False, channels_last=True)
    dev_p, dev_g = make(dtype, True, channels_last=True)
    ptrs = [p.data_ptr() for p in dev_p]
    cpu_opt = train(cls, hyper, cpu_p, cpu_g)
    dev_opt = train(cls, hyper, dev_p, dev_g)
    assert fk.log["launches"], "no CUDA launch: the CUDA tensors did not reach fastopt.cuda"
    assert {s for s in fk.log["streams"]} == {fc.STREAM}       # torch's current stream
    kernel = _table.OPTIMIZERS[name].kernel
    assert {(k, d) for k, d, _ in fk.log["launches"]} == {(kernel, np.dtype(str(dtype)[6:]))}
    assert [p.data_ptr() for p in dev_p] == ptrs                 # updated in place
    assert dev_p[-1].is_contiguous(memory_format=torch.channels_last)
    for a, b in zip(dev_p, cpu_p):
        assert torch.equal(as_host(a), b)
    for a, b in zip(dev_p, cpu_p):
        sa, sb = dev_opt.state[a], cpu_opt.state[b]
        assert sa.keys() == sb.keys()
        host = {"step", *(p.name for p in _table.OPTIMIZERS[name].param_scalars)}
        for key, value in sb.items():
            if key in host:         # host tensors, as torch keeps them when not capturable
                assert torch.equal(sa[key], value)
                continue
            assert isinstance(sa[key], fc.CudaTensor) and sa[key].device.type == "cuda"
            assert sa[key].stride() == a.stride()
            assert torch.equal(as_host(sa[key]), value), key


def test_plan_views_share_the_tensors_memory(fake):
    params, grads = make(torch.float32, True)
    opt = ft.Adam(params, lr=0.1)
    for p, x in zip(params, grads[0]):
        p.grad = x
    opt.step()
    (entry,) = next(iter(opt._fo_records.values())).entries.values()
    assert isinstance(entry.plan, cuda.Plan)
    full = [k for k, p in enumerate(params) if p.numel()]     # (an empty one has no address)
    assert [int(entry.plan.params[k].data.ptr) for k in full] == \
        [params[k].data_ptr() for k in full]
    state = [opt.state[params[k]]["exp_avg"].data_ptr() for k in full]
    assert [int(entry.plan.states[0][k].data.ptr) for k in full] == state


@pytest.mark.parametrize("from_external", [True, False], ids=["cupy14", "cupy13"])
def test_launches_run_on_torchs_stream_without_deprecated_api(fake, monkeypatch, from_external):
    """torch's current stream reaches CuPy through Stream.from_external (CuPy >= 14, where
    ExternalStream is deprecated: no DeprecationWarning) and through ExternalStream on older
    CuPy, either way on torch's stream of the parameters' device."""
    import warnings

    from fastopt import _torch_cuda
    monkeypatch.setattr(_torch_cuda, "_STREAMS", {})
    if not from_external:
        monkeypatch.delattr(fk._Stream, "from_external")
    params, grads = make(torch.float32, True)
    opt = ft.Adam(params, lr=0.1)
    for p, x in zip(params, grads[0]):
        p.grad = x
    with warnings.catch_warnings(record=True) as seen:
        warnings.simplefilter("always")
        opt.step()
    deprecated = [w for w in seen if issubclass(w.category, DeprecationWarning)]
    assert len(deprecated) == (0 if from_external else 1)
    assert {s for s in fk.log["streams"]} == {fc.STREAM}
    (made,) = _torch_cuda._STREAMS.values()
    assert made.ptr == fc.STREAM and made.device_id == 0
    _torch_cuda._STREAMS.clear()               # made while another device is CuPy's current
    with fk.cuda.Device(1):
        made = _torch_cuda.stream(params[0].device)
    assert made.device_id == 0


def test_one_launch_per_group_and_reuse(fake):
    params, grads = make(torch.float32, True)
    opt = ft.SGD([{"params": params[:3]}, {"params": params[3:]}], lr=0.1, momentum=0.9)
    for gs in grads:
        for p, x in zip(params, gs):
            p.grad = x
        opt.step()
    assert len(fk.log["launches"]) == 2 * len(grads)
    plans = [e.plan for rec in opt._fo_records.values() for e in rec.entries.values()]
    assert len(plans) == 2                    # planned once, reused at every step


def test_state_dict_round_trip_on_device(fake):
    params, grads = make(torch.float64, True)
    opt = train(ft.Adam, {"lr": 0.01, "amsgrad": True}, params, grads[:2])
    sd = opt.state_dict()                         # it holds the live tensors: copy them
    sd = {"state": {k: {n: v.clone() for n, v in st.items()} for k, st in sd["state"].items()},
          "param_groups": copy.deepcopy(sd["param_groups"])}
    twin = [fc.cuda(p) for p in params]
    opt2 = ft.Adam([{"params": twin[:2]}, {"params": twin[2:]}], lr=0.5, amsgrad=True)
    opt2.load_state_dict(sd)
    for gs in grads[2:]:
        for p, q, x in zip(params, twin, gs):
            p.grad, q.grad = x.clone(), x.clone()
        opt.step()
        opt2.step()
    for p, q in zip(params, twin):
        assert torch.equal(as_host(p), as_host(q))
        assert isinstance(opt2.state[q]["exp_avg"], fc.CudaTensor)


def test_cpu_and_cuda_parameters_in_one_group_is_a_clear_error(fake):
    a = torch.nn.Parameter(torch.zeros(3))
    b = fc.cuda(torch.nn.Parameter(torch.zeros(3)))
    with pytest.raises(ValueError, match=r"param_groups\[0\] holds parameters on cpu, cuda:0"):
        ft.Adam([a, b])
    opt = ft.Adam([{"params": [a]}, {"params": [b]}], lr=0.1)     # separate groups: fine
    a.grad, b.grad = torch.ones(3), fc.cuda(torch.ones(3))
    opt.step()
    assert torch.equal(a.detach(), as_host(b))
    with pytest.raises(ValueError, match="holds parameters on"):
        opt.add_param_group({"params": [torch.nn.Parameter(torch.zeros(2)),
                                        fc.cuda(torch.nn.Parameter(torch.zeros(2)))]})
    assert len(opt.param_groups) == 2


def test_gradient_on_another_device_is_refused_before_anything_moves(fake):
    params, grads = make(torch.float32, True)
    opt = ft.Adam(params, lr=0.1)
    for p, x in zip(params, grads[0]):
        p.grad = x
    opt.step()
    before = [as_host(p).clone() for p in params]
    params[3].grad = as_host(grads[1][3]).clone()        # a CPU gradient
    with pytest.raises(TypeError, match=r"param_groups\[0\]\['params'\]\[3\]\.grad is on cpu"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(as_host(p), b)


def test_16bit_cuda_parameters_are_refused(fake):
    p = fc.cuda(torch.nn.Parameter(torch.zeros(3, dtype=torch.bfloat16)))
    with pytest.raises(TypeError, match="float32 and float64"):
        ft.AdamW([p])


def test_gradient_sharing_state_memory_is_refused(fake):
    params, grads = make(torch.float32, True)
    opt = ft.SGD(params, lr=0.1, momentum=0.9)
    for p, x in zip(params, grads[0]):
        p.grad = x
    opt.step()
    before = [as_host(p).clone() for p in params]
    params[0].grad = opt.state[params[0]]["momentum_buffer"]
    with pytest.raises(ValueError, match="shares memory"):
        opt.step()
    for p, b in zip(params, before):
        assert torch.equal(as_host(p), b)
