"""The CUDA kernels of low-bit optimizer state (fastopt._cuda_qstate).

- the generated source: include-free, one kernel per optimizer with low-bit formats calling the
  shared rule, valid CUDA (nvcc, wherever it is on PATH; no GPU needed);
- the host logic on the stand-in CuPy (tests/fake_cupy.py, no GPU): the pointer and block
  tables give, block by block through the CPU binding, exactly the CPU loop's result;
- on a GPU (marked ``gpu``, skipped without one): the kernels against the CPU loops
  (fastopt._qstate), bit for bit: parameters, int8 codes and absmax, bfloat16 bits, float32
  slots, for every option case of every such optimizer, over several steps.
"""
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

import fake_cupy as fk
from cuda_cases import CASES
from fastopt import _qstate, _steps, _table
from fastopt import _cuda_qstate as cq
from fastopt import cuda
from fastopt.state_format import Blockwise8, dynamic_map

QCASES = sorted(c for c, (binding, _) in CASES.items() if binding in cq.QKERNELS)
SHAPES = [(300,), (40, 130), (1,), (0,), (257,)]    # short last blocks, empty, one element


def test_source_is_include_free_and_complete():
    src = cq.generate_qstate_source()
    assert not re.search(r"^\s*#\s*include", src, re.M)
    assert set(cq.QKERNELS) == {k.name for k in _table.KERNELS.values()
                                if "cuda" in k.backends and len(_table.state_formats(k)) > 1}
    for opt in cq.QKERNELS:
        assert f'extern "C" __global__ void __launch_bounds__(FO_QBLOCK)\nfo_{opt}_qstate_f32(' \
            in src
        assert f"fo_{opt}_rule_f32(0, rp, rg, r[0], r[1], r[2], k)" in src
        assert f"fo_{opt}_constants_f32(&hp)" in src
    body = (cuda._header_dir() / "rules_impl.h").read_text()
    assert body in src                  # the shared rule, not a copy


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CUDA toolkit not installed)")
def test_generated_source_compiles_with_nvcc(tmp_path):
    cu = tmp_path / "fastopt_qstate.cu"
    cu.write_text(cq.generate_qstate_source())
    obj = tmp_path / "fastopt_qstate.o"
    # 177: the expanded headers hold every optimizer's rule, these kernels call some of them
    cmd = [NVCC, "-c", "-std=c++17", "--fmad=false", "-Werror", "all-warnings",
           "-diag-suppress", "177", "-o", str(obj), str(cu)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
    assert obj.stat().st_size > 0


def _state(kernel, shapes, fmt, rng, params):
    """Start state per slot: int8 (Blockwise8) or bfloat16 bits for the quantizable slots of
    tensors of >= 256 elements (float32 below, as min_8bit_size keeps small tensors), float32
    for the others (a copy of the parameter for Schedule-Free's z)."""
    out = []
    for slot in _table.KERNELS[kernel].state:
        bufs = []
        for p in params:
            v = rng.standard_normal(p.shape).astype(np.float32) * np.float32(0.1)
            if slot.quant == _table.UNSIGNED:
                v = np.abs(v)
            if slot.quant is None:
                bufs.append(p.copy() if slot.init == _table.PARAM else v)
            elif fmt == "int8" and p.size >= 256:
                bufs.append(Blockwise8.quantize(v, slot.quant == _table.SIGNED))
            elif fmt == "bfloat16":
                bufs.append(_qstate.encode("bfloat16", v).reshape(p.shape))
            else:
                bufs.append(v)
        out.append(bufs)
    return out


def _problem(kernel, fmt, seed):
    rng = np.random.default_rng(seed)
    params = [rng.standard_normal(s).astype(np.float32) for s in SHAPES]
    grads = [[rng.standard_normal(s).astype(np.float32) for s in SHAPES] for _ in range(3)]
    return params, grads, _state(kernel, SHAPES, fmt, rng, params)


def _run(mod, to_dev, case, params, grads, state):
    """Three steps of `case` with `mod`'s Plan and step function; returns the plan's arrays."""
    kernel, args = CASES[case]
    params = [to_dev(p) for p in params]
    plan = mod.Plan(params)
    moved = []
    used = _steps.state_mask(kernel, args(1)[1])
    for slot, bufs in enumerate(state):
        if not used >> slot & 1:       # as the optimizers attach them: the CPU loop re-encodes
            continue                   # every attached low-bit slot, used or not
        bufs = [Blockwise8(to_dev(b.codes), to_dev(b.absmax), to_dev(b.qmap))
                if isinstance(b, Blockwise8) else to_dev(b) for b in bufs]
        plan.set_state(slot, bufs)
        moved.append(bufs)
    for t, gs in enumerate(grads, start=1):
        scalars, flags = args(t)
        getattr(mod, kernel)(plan, [to_dev(g) for g in gs], *scalars, flags)
    return params, moved


def _host(a):
    return a.get() if hasattr(a, "get") else np.asarray(a)


def _flat(params, state):
    out = [_host(p) for p in params]
    for bufs in state:
        for b in bufs:
            out += [_host(b.codes), _host(b.absmax)] if isinstance(b, Blockwise8) else [_host(b)]
    return out


def _compare(case, fmt, to_dev, mod):
    kernel = CASES[case][0]
    params, grads, state = _problem(kernel, fmt, seed=len(case))
    cpu_p, cpu_s = _run(_qstate, lambda a: np.array(a, copy=True), case, params, grads,
                        [[b.copy() for b in bufs] for bufs in state])
    dev_p, dev_s = _run(mod, to_dev, case, params, grads, state)
    for a, b in zip(_flat(dev_p, dev_s), _flat(cpu_p, cpu_s)):
        assert a.dtype == b.dtype and a.shape == b.shape
        assert np.array_equal(a, b, equal_nan=True), case


@pytest.fixture
def fake(monkeypatch):
    """fastopt._cuda_qstate on the stand-in CuPy, fresh caches."""
    fk.reset()
    monkeypatch.setitem(sys.modules, "cupy", fk)
    monkeypatch.setattr(cq, "_KERNELS", {})
    yield fk
    fk.reset()


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("case", QCASES)
def test_tables_match_cpu_bitwise(fake, case, fmt):
    _compare(case, fmt, lambda a: fk.ndarray(np.array(a, copy=True), 0), cq)
    assert fake.log["launches"] and all(n == sum(-(-int(np.prod(s)) // 256) for s in SHAPES)
                                        for _, _, n in fake.log["launches"])


def test_plan_refuses_what_it_cannot_do(fake):
    p = fk.ndarray(np.zeros(10, np.float32), 0)
    with pytest.raises(ValueError, match="rounding='stochastic'.*CPU only"):
        cq.Plan([p], rounding="stochastic")
    with pytest.raises(TypeError, match=r"params\[0\].*float32"):
        cq.Plan([fk.ndarray(np.zeros(10), 0)])
    with pytest.raises(TypeError, match=r"params\[0\] must be a cupy.ndarray"):
        cq.Plan([np.zeros(10, np.float32)])
    plan = cq.Plan([p])
    with pytest.raises(ValueError, match="absmax"):
        plan.set_state(0, [Blockwise8(fk.ndarray(np.zeros(10, np.uint8), 0),
                                      fk.ndarray(np.zeros(3, np.float32), 0),
                                      fk.ndarray(np.array(dynamic_map(True)), 0))])
    with pytest.raises(ValueError, match="not attached"):
        cq.sgd(plan, [fk.ndarray(np.zeros(10, np.float32), 0)], 0.1, 0.9, 0.0, 0.0,
               cq_flags_momentum())


#: the tests that run the real kernel
needs_gpu = pytest.mark.skipif(not cuda.has_gpu(), reason="needs CuPy and a CUDA GPU (pip "
                               "install 'fastopt[gpu]'); none found on this machine")


def cq_flags_momentum():
    return _table.FLAG_BITS["MOMENTUM"]


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("case", QCASES)
def test_gpu_matches_cpu_bitwise(case, fmt):
    import cupy
    _compare(case, fmt, cupy.asarray, cq)


# ------------------------------------------------- the optimizer classes on CuPy parameters
QNAMES = [n for n, o in _table.OPTIMIZERS.items() if o.kernel in cq.QKERNELS]


def _classes_agree(name, fmt, to_dev, from_dev):
    """fastopt's class of `name` with `state_dtype=fmt` on device arrays and on NumPy ones:
    the same parameters, bit for bit, after three steps (small tensors keep float32 state)."""
    import fastopt as fo
    cls = getattr(fo, _table.OPTIMIZERS[name].class_name)
    rng = np.random.default_rng(5)
    host = [rng.standard_normal(s).astype(np.float32) for s in [(5000,), (300,), (3, 7)]]
    dev = [to_dev(p) for p in host]
    a, b = cls(host, state_dtype=fmt), cls(dev, state_dtype=fmt)
    for _ in range(3):
        grads = [rng.standard_normal(p.shape).astype(np.float32) for p in host]
        a.step(grads)
        b.step([to_dev(g) for g in grads])
    for x, y in zip(host, dev):
        assert np.array_equal(x, from_dev(y), equal_nan=True), name
    quant = {s.name for s in _table.KERNELS[_table.OPTIMIZERS[name].kernel].state if s.quant}
    held = [v for k, v in b.state.get(0, {}).items() if k in quant]
    assert all(isinstance(v, Blockwise8) if fmt == "int8" else v.dtype == np.uint16
               for v in held)


@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("name", QNAMES)
def test_optimizer_classes_on_the_stand_in(fake, name, fmt):
    _classes_agree(name, fmt, lambda a: fk.ndarray(np.array(a, copy=True), 0), lambda a: a.get())
    assert any(kind == "qstate" for _, kind, _ in fake.log["launches"])


def test_stochastic_rounding_is_cpu_only(fake):
    import fastopt as fo
    p = fk.ndarray(np.zeros(10, np.float32), 0)
    with pytest.raises(ValueError, match="rounding='stochastic'"):
        opt = fo.Adam([p], state_dtype="bfloat16", rounding="stochastic")
        opt.step([fk.ndarray(np.zeros(10, np.float32), 0)])


@pytest.mark.gpu
@needs_gpu
@pytest.mark.parametrize("fmt", ["int8", "bfloat16"])
@pytest.mark.parametrize("name", QNAMES)
def test_gpu_optimizer_classes_match_cpu(name, fmt):
    import cupy
    _classes_agree(name, fmt, cupy.asarray, cupy.asnumpy)
