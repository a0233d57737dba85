"""What the package ships: one copy of the C headers, no generated C, no debug info, no test-only
or benchmark code.

- the CUDA backend reads the headers of the source tree (csrc/fastopt) when fastopt runs from a
  checkout, and the copy made by setup.py's build_py in an installed package;
- build_py copies the headers into the build directory only, never into src/;
- (slow: builds a wheel, minutes from a clean tree) the wheel holds the headers, the compiled
  modules without debug sections, no .c file, no fastopt._testing, no benchmark
  implementations, and is under 3 MB.
"""
import filecmp
import importlib.util
import os
import shutil
import struct
import subprocess
import sys
import zipfile

import pytest

import fastopt
from fastopt import cuda

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CSRC = os.path.join(ROOT, "csrc", "fastopt")
FROM_CHECKOUT = os.path.dirname(os.path.abspath(fastopt.__file__)) == os.path.join(
    ROOT, "src", "fastopt")
needs_setup = pytest.mark.skipif(
    not os.path.isfile(os.path.join(ROOT, "setup.py")) or importlib.util.find_spec("Cython") is None,
    reason="needs the source tree's setup.py and Cython")


def headers(directory):
    return sorted(f for f in os.listdir(directory) if f.endswith(".h"))


def test_cuda_reads_the_one_copy_of_the_headers():
    hdr = str(cuda._header_dir())
    if FROM_CHECKOUT:
        assert os.path.samefile(hdr, CSRC)
    else:                        # an installed package: the copy build_py made, up to date
        assert hdr == os.path.join(os.path.dirname(os.path.abspath(fastopt.__file__)), "csrc",
                                   "fastopt")
        if os.path.isdir(CSRC):
            assert headers(hdr) == headers(CSRC)
            _, mismatch, errors = filecmp.cmpfiles(CSRC, hdr, headers(CSRC), shallow=False)
            assert (mismatch, errors) == ([], [])


@needs_setup
def test_build_py_copies_the_headers_into_the_build_directory_only(tmp_path):
    in_src = os.path.join(ROOT, "src", "fastopt", "csrc")
    existed = os.path.exists(in_src)
    subprocess.run([sys.executable, "setup.py", "-q", "build_py", "--build-lib", str(tmp_path)],
                   cwd=ROOT, check=True, capture_output=True, timeout=600)
    built = tmp_path / "fastopt" / "csrc" / "fastopt"
    assert headers(built) == headers(CSRC)
    _, mismatch, errors = filecmp.cmpfiles(CSRC, built, headers(CSRC), shallow=False)
    assert (mismatch, errors) == ([], [])
    assert os.path.exists(in_src) == existed        # setup.py wrote nothing into src/
    assert not list((tmp_path / "fastopt").glob("*.c"))
    assert not (tmp_path / "fastopt" / "_bench_impls.py").exists()


def debug_sections(data):
    """Names of the .debug_* / .zdebug_* sections of an ELF shared object (bytes)."""
    if data[:4] != b"\x7fELF" or data[4] != 2:          # 64-bit ELF only
        return None
    order = "<" if data[5] == 1 else ">"
    shoff, = struct.unpack_from(order + "Q", data, 0x28)
    shentsize, shnum, shstrndx = struct.unpack_from(order + "HHH", data, 0x3A)
    sections = [struct.unpack_from(order + "IIQQQQ", data, shoff + i * shentsize)
                for i in range(shnum)]
    strtab = sections[shstrndx]
    names = data[strtab[4]:strtab[4] + strtab[5]]
    out = []
    for sec in sections:
        name = names[sec[0]:names.index(b"\0", sec[0])].decode()
        if name.startswith((".debug", ".zdebug")):
            out.append(name)
    return out


def test_debug_section_reader_sees_debug_info(tmp_path):
    cc = shutil.which("cc") or shutil.which("gcc")
    if cc is None or sys.platform != "linux":
        pytest.skip("needs a C compiler on Linux")
    src = tmp_path / "x.c"
    src.write_text("int f(int x) { return x + 1; }\n")
    for flag, expect in (("-g", True), ("-g0", False)):
        so = tmp_path / f"x{flag}.so"
        subprocess.run([cc, "-shared", "-fPIC", flag, str(src), "-o", str(so)], check=True)
        assert (".debug_info" in debug_sections(so.read_bytes())) is expect


@pytest.mark.slow
@needs_setup
def test_wheel_contents(tmp_path):
    pytest.importorskip("pip")
    env = dict(os.environ)
    env.pop("FASTOPT_TEST_API", None)
    env.pop("FASTOPT_DEBUG_INFO", None)
    subprocess.run([sys.executable, "-m", "pip", "wheel", ROOT, "--no-deps",
                    "--no-build-isolation", "-q", "-w", str(tmp_path)],
                   check=True, capture_output=True, env=env, timeout=1800)
    wheel, = tmp_path.glob("fastopt-*.whl")
    assert wheel.stat().st_size < 3 * 1024 * 1024
    with zipfile.ZipFile(wheel) as z:
        names = z.namelist()
        assert not [n for n in names if n.endswith(".c")]
        assert not [n for n in names if "_testing" in n or "bench_impls" in n]
        shipped = sorted(n.rsplit("/", 1)[1] for n in names
                         if n.startswith("fastopt/csrc/fastopt/"))
        assert shipped == headers(CSRC)
        for h in shipped:
            with open(os.path.join(CSRC, h), "rb") as f:
                assert z.read(f"fastopt/csrc/fastopt/{h}") == f.read(), h
        modules = [n for n in names if n.endswith((".so", ".pyd"))]
        # one compiled module per Cython source of the package, and no other (not _testing)
        pyx = {f[:-len(".pyx")] for f in os.listdir(os.path.join(ROOT, "src", "fastopt"))
               if f.endswith(".pyx")}
        assert "_kernels" in pyx and "_qstate" in pyx
        assert {m.split("/")[-1].split(".")[0] for m in modules} == pyx
        if sys.platform == "linux":
            for m in modules:
                assert debug_sections(z.read(m)) == [], m
