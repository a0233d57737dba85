"""Build the fastopt extensions: Cython bindings over the C99 kernels in csrc/.

Compiler flags are chosen per compiler in ``BuildExt`` (OpenMP: ``-fopenmp`` for gcc/clang,
``-Xpreprocessor -fopenmp`` + libomp for Apple clang, ``/openmp`` for MSVC). Switches:

* ``FASTOPT_NO_OPENMP=1``  build without OpenMP (every kernel runs on one thread).
* ``FASTOPT_SANITIZE=address``  AddressSanitizer + UBSan build (``-O1 -g``), for scripts/sanitize.sh.
* ``FASTOPT_NATIVE=1``  add ``-march=native`` (local benchmarking only; never in a wheel).
"""
import os
import shutil
import sys
from pathlib import Path

import numpy as np
from Cython.Build import cythonize
from setuptools import Extension, setup
from setuptools.command.build_ext import build_ext
from setuptools.command.build_py import build_py

ROOT = Path(__file__).parent
CSRC = "csrc"

# module name -> C sources compiled into it (besides the module's own .pyx)
C_SOURCES = {
    "fastopt._kernels": [f"{CSRC}/kernels.c", f"{CSRC}/finite.c"],
    "fastopt._linalg": [],
    "fastopt._mixed": [f"{CSRC}/mixed.c"],
    "fastopt._tricks": [f"{CSRC}/resize.c"],
}


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


def _extensions():
    exts = []
    for pyx in sorted((ROOT / "src" / "fastopt").glob("*.pyx")):
        name = f"fastopt.{pyx.stem}"
        exts.append(
            Extension(
                name,
                sources=[str(pyx.relative_to(ROOT))] + C_SOURCES.get(name, []),
                include_dirs=[CSRC, np.get_include()],
                define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
                # a header edit (the rules) rebuilds every module that includes it
                depends=sorted(str(h.relative_to(ROOT)) for h in (ROOT / CSRC / "fastopt").glob("*.h")),
            )
        )
    return exts


class BuildExt(build_ext):
    """Per-compiler optimisation and OpenMP flags."""

    def build_extensions(self):
        ctype = self.compiler.compiler_type
        openmp = not _env_flag("FASTOPT_NO_OPENMP")
        sanitize = os.environ.get("FASTOPT_SANITIZE", "").strip()
        if ctype == "msvc":
            cflags, lflags = ["/O2", "/fp:precise"], []
            if openmp:
                cflags.append("/openmp")
        else:
            cflags = ["-O3", "-fno-math-errno", "-fno-trapping-math", "-ffp-contract=off", "-Wall",
                      "-Wno-unused-function", "-Wno-unknown-pragmas"]
            lflags = []
            if openmp:
                if sys.platform == "darwin":
                    cflags += ["-Xpreprocessor", "-fopenmp"]
                    lflags += ["-lomp"]
                    for prefix in ("/opt/homebrew/opt/libomp", "/usr/local/opt/libomp"):
                        if os.path.isdir(prefix):
                            cflags.append(f"-I{prefix}/include")
                            lflags.append(f"-L{prefix}/lib")
                else:
                    cflags.append("-fopenmp")
                    lflags.append("-fopenmp")
            if sanitize:
                san = "-fsanitize=address,undefined" if sanitize == "address" else f"-fsanitize={sanitize}"
                cflags = [f for f in cflags if f != "-O3"] + [san, "-fno-omit-frame-pointer",
                                                               "-fno-sanitize-recover=undefined",
                                                               "-O1", "-g"]
                lflags.append(san)
            if _env_flag("FASTOPT_NATIVE"):
                cflags.append("-march=native")
        if not openmp:
            cflags.append("-DFASTOPT_NO_OPENMP=1" if ctype != "msvc" else "/DFASTOPT_NO_OPENMP=1")
        for ext in self.extensions:
            ext.extra_compile_args = cflags + list(ext.extra_compile_args or [])
            ext.extra_link_args = lflags + list(ext.extra_link_args or [])
        super().build_extensions()


def _copy_headers():
    """Ship csrc/fastopt/*.h inside the package: the CUDA path compiles the same rules."""
    dst = ROOT / "src" / "fastopt" / "csrc" / "fastopt"
    dst.mkdir(parents=True, exist_ok=True)
    for header in (ROOT / CSRC / "fastopt").glob("*.h"):
        shutil.copy2(header, dst / header.name)


class BuildPy(build_py):
    def run(self):
        _copy_headers()
        super().run()


_copy_headers()
setup(
    ext_modules=cythonize(
        _extensions(),
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False, "embedsignature": True},
    ),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
