"""The generated CUDA source: complete, include-free, in step with the headers, and valid CUDA.

The compile test runs wherever ``nvcc`` is on PATH (no GPU needed), so a change to the shared
rules header that breaks the CUDA build fails here, not on a user's GPU.
"""
import inspect
import re
import shutil
import subprocess

import pytest

from fastopt import _table, cuda

OPTIMIZERS = tuple(k.name for k in _table.KERNELS.values() if "cuda" in k.backends)


def test_source_is_include_free_and_complete():
    src = cuda.generate_cuda_source()
    assert not re.search(r"^\s*#\s*include", src, re.M)
    for opt in OPTIMIZERS:
        for sfx in ("f32", "f64"):
            assert f'extern "C" __global__ void __launch_bounds__(FO_BOUNDS)\nfo_{opt}_multi_{sfx}(' in src
            assert f"fo_{opt}_rule_{sfx}(i, p, g, s0, s1, s2, k)" in src     # FO_UNROLL == 1
            assert f"fo_{opt}_rule_{sfx}(u, rp, rg, r0, r1, r2, k)" in src   # FO_UNROLL > 1
            assert f"fo_{opt}_constants_{sfx}(&hp)" in src
    # rules_impl.h is expanded once per element type
    assert src.count("begin fastopt/rules_impl.h") == 2


def test_source_is_built_from_the_shipped_headers():
    hdr = cuda._header_dir()
    src = cuda.generate_cuda_source()
    for name in ("rules_impl.h", "hp.h"):
        body = (hdr / name).read_text()
        assert body in src, name


def _hp_h_fields(hp_text):
    """{opt: [double field names in order]} parsed from hp.h."""
    fields = {}
    for body, opt in re.findall(r"typedef\s+struct\s*\{(.*?)\}\s*fo_(\w+)_hp\s*;", hp_text, re.S):
        assert re.search(r"\bint\s+flags\s*;", body), opt
        fields[opt] = [n.strip() for decl in re.findall(r"double\s+([^;]+);", body)
                       for n in decl.split(",")]
    return fields


def test_kernel_arguments_follow_hp_h_and_the_bindings():
    fields = _hp_h_fields((cuda._header_dir() / "hp.h").read_text())
    assert set(fields) == set(OPTIMIZERS)
    for opt in OPTIMIZERS:
        assert cuda._hp_fields(opt) == fields[opt], opt
        params = list(inspect.signature(getattr(cuda, opt)).parameters)
        assert params[:2] == ["plan", "grads"] and params[-2:] == ["flags", "name"]
        assert params[2:-2] == fields[opt], opt


def test_bad_configuration():
    with pytest.raises(ValueError, match="unroll"):
        cuda.generate_cuda_source(unroll=0)


def test_flags_match_flags_h():
    assert '#include "flags.h"' in (cuda._header_dir() / "rules.h").read_text()
    text = (cuda._header_dir() / "flags.h").read_text()
    defined = dict(re.findall(r"#define FO_([A-Z_]+) (\d+)\s", text))
    for name in ("MAXIMIZE", "NESTEROV", "FIRST", "SUTSKEVER", "AMSGRAD", "CENTERED",
                 "EPS_IN_SQRT", "MOMENTUM", "DECOUPLED"):
        assert getattr(cuda, name) == int(defined[name]), name


NVCC = shutil.which("nvcc")


@pytest.mark.skipif(NVCC is None, reason="nvcc is not on PATH (CUDA toolkit not installed)")
@pytest.mark.parametrize("block, min_blocks, unroll", [(None, None, None), (128, 8, 1), (512, 0, 8)])
def test_generated_source_compiles_with_nvcc(tmp_path, block, min_blocks, unroll):
    cu = tmp_path / "fastopt_kernels.cu"
    cu.write_text(cuda.generate_cuda_source(block, min_blocks, unroll))
    obj = tmp_path / "fastopt_kernels.o"
    cmd = [NVCC, "-c", "-std=c++17", "--fmad=false", "-Werror", "all-warnings",
           "-o", str(obj), str(cu)]
    out = subprocess.run(cmd, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, f"{' '.join(cmd)}\n{out.stdout}\n{out.stderr}"
    assert obj.stat().st_size > 0
