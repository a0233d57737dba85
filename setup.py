"""Build the fastopt extensions: Cython bindings over the C99 kernels in csrc/.

Compiler flags are chosen per compiler in ``BuildExt`` (OpenMP: ``-fopenmp`` for gcc/clang,
``-Xpreprocessor -fopenmp`` + libomp for Apple clang, ``/openmp`` for MSVC). Switches:

* ``FASTOPT_NO_OPENMP=1``  build without OpenMP (every kernel runs on one thread).
* ``FASTOPT_SANITIZE=address``  AddressSanitizer + UBSan build (``-O1 -g``), for scripts/sanitize.sh.
* ``FASTOPT_NATIVE=1``  add ``-march=native`` (local benchmarking only; never in a wheel).
* ``FASTOPT_DEBUG_INFO=1``  keep debug info (``-g``; the same machine code). By default the
  extensions are built with ``-g0``, so a wheel carries no debug sections.
* ``FASTOPT_TEST_API=1|0``  build (or not) ``fastopt._testing``, the test-only entry points into
  the C code (tests/_testing.pyx). Default: built by ``build_ext --inplace`` (a source
  checkout), left out of wheels and other installs.

The headers csrc/fastopt/*.h are copied into the package (``fastopt/csrc/fastopt``) only in the
build directory (``build_py``), for the CUDA backend of an installed wheel; a source checkout
reads csrc/ itself, so there is one copy of the rules in the tree.
"""
import os
import runpy
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
    "fastopt._lbfgs_loops": [f"{CSRC}/lbfgs.c"],
    "fastopt._mixed": [f"{CSRC}/mixed.c"],
    "fastopt._qstate": [f"{CSRC}/qstate.c"],
    "fastopt._tricks": [f"{CSRC}/resize.c"],
    "fastopt._sparse": [f"{CSRC}/sparse_adam.c"],
    "fastopt._adafactor": [f"{CSRC}/adafactor.c"],
}


def _env_flag(name):
    return os.environ.get(name, "").strip().lower() not in ("", "0", "false", "no")


#: the test-only extension (see FASTOPT_TEST_API); its source lives outside the package
TESTING = ("fastopt._testing", "tests/_testing.pyx")


def _extensions():
    # every header, generated ones included: a changed header rebuilds the extensions
    headers = sorted(f"{CSRC}/fastopt/{h.name}" for h in (ROOT / CSRC / "fastopt").glob("*.h"))
    pyxs = [(f"fastopt.{pyx.stem}", str(pyx.relative_to(ROOT)))
            for pyx in sorted((ROOT / "src" / "fastopt").glob("*.pyx"))]
    return [
        Extension(
            name,
            sources=[pyx] + C_SOURCES.get(name, []),
            depends=headers,
            include_dirs=[CSRC, np.get_include()],
            define_macros=[("NPY_NO_DEPRECATED_API", "NPY_2_0_API_VERSION")],
        )
        for name, pyx in pyxs + ([TESTING] if (ROOT / TESTING[1]).is_file() else [])
    ]


class BuildExt(build_ext):
    """Per-compiler optimisation and OpenMP flags; fastopt._testing only where asked for."""

    def run(self):
        # (setuptools clears self.inplace while building: decide here)
        asked = os.environ.get("FASTOPT_TEST_API", "").strip()
        if not (_env_flag("FASTOPT_TEST_API") if asked else self.inplace):
            self.extensions = [e for e in self.extensions if e.name != TESTING[0]]
            for stale in Path(self.build_lib, "fastopt").glob("_testing.*"):
                stale.unlink()      # from an earlier in-place build: never into a wheel
        super().run()

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
            if not sanitize and not _env_flag("FASTOPT_DEBUG_INFO"):
                cflags.append("-g0")     # after Python's own -g: no debug sections in a wheel
        if not openmp:
            cflags.append("-DFASTOPT_NO_OPENMP=1" if ctype != "msvc" else "/DFASTOPT_NO_OPENMP=1")
        for ext in self.extensions:
            ext.extra_compile_args = cflags + list(ext.extra_compile_args or [])
            ext.extra_link_args = lflags + list(ext.extra_link_args or [])
        # in-place and wheel builds share build/: a module built with other flags (debug info,
        # sanitizers, -march=native) is never taken as up to date
        stamp = Path(self.build_temp) / "fastopt-flags.txt"
        signature = " ".join(cflags + ["|"] + lflags)
        if not stamp.is_file() or stamp.read_text() != signature:
            self.force = True
        super().build_extensions()
        stamp.parent.mkdir(parents=True, exist_ok=True)
        stamp.write_text(signature)


class BuildPy(build_py):
    """Also copy csrc/fastopt/*.h into the built package (fastopt/csrc/fastopt): the CUDA backend
    of an installed fastopt compiles the same rules. Only the build directory gets the copy."""

    def run(self):
        super().run()
        dst = Path(self.build_lib) / "fastopt" / "csrc" / "fastopt"
        dst.mkdir(parents=True, exist_ok=True)
        for header in sorted((ROOT / CSRC / "fastopt").glob("*.h")):
            shutil.copy2(header, dst / header.name)


# The per-optimizer sources (csrc/fastopt/{flags,hp,constants,instances}.h, src/fastopt/*.pxi)
# are generated from the optimizer table src/fastopt/_table.py on every build (only changed
# files are rewritten), so nothing stale is compiled or shipped.
runpy.run_path(str(ROOT / "tools" / "generate.py"))["generate"](ROOT)
setup(
    ext_modules=cythonize(
        _extensions(),
        language_level=3,
        compiler_directives={"boundscheck": False, "wraparound": False, "cdivision": True,
                             "initializedcheck": False, "embedsignature": True},
    ),
    cmdclass={"build_ext": BuildExt, "build_py": BuildPy},
)
