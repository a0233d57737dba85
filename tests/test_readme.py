"""Every ```python block of README.md runs as written.

Each block is run on its own, as a user would paste it, by a fresh Python interpreter in an
empty temporary directory; a traceback points at README.md's own line numbers. A block is
skipped only when it needs what this machine may lack: CuPy and a CUDA GPU (covered by
tests/test_cuda*.py on a GPU machine), mpi4py, or torch. Setting FASTOPT_REQUIRE_TORCH=1 (as
.ci/run does) turns a missing torch into a failure (tests/conftest.py).
"""
import importlib.util
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

import fastopt

README = Path(__file__).resolve().parents[1] / "README.md"
FENCE = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.S | re.M)
#: seconds one block may take (they are meant to be quick examples)
BLOCK_TIMEOUT = 60


def python_blocks(text):
    """``[(line, heading, source)]``: every ```python fenced block of the Markdown `text`,
    with the README line of its first source line and the closest heading above it."""
    blocks = []
    for match in FENCE.finditer(text):
        line = text.count("\n", 0, match.start(1)) + 1
        headings = re.findall(r"^#+ +(.+)$", text[:match.start()], re.M)
        blocks.append((line, headings[-1] if headings else "", match.group(1)))
    return blocks


def _has_module(name):
    return importlib.util.find_spec(name) is not None


def skip_reason(source):
    """Why this machine cannot run the block (None: it must run)."""
    if re.search(r"^\s*import cupy|^\s*from cupy", source, re.M):
        try:
            from fastopt import cuda
            gpu = cuda.has_gpu()
        except ImportError:
            gpu = False
        if not gpu:
            return "needs CuPy and a CUDA GPU (covered by tests/test_cuda*.py on a GPU machine)"
    if re.search(r"\bmpi4py\b", source) and not _has_module("mpi4py"):
        return 'needs mpi4py: pip install "fastopt[mpi]"'
    if re.search(r"^\s*import torch|^\s*from torch|import .*\btorch\b", source, re.M) \
            and not _has_module("torch"):
        return "needs torch (pip install torch): the torch adapter's example"
    return None


def run_block(source, line, cwd):
    """Run `source` (README lines from `line` on) in a fresh interpreter in `cwd`; returns the
    CompletedProcess. The file is padded so that tracebacks show README.md's line numbers."""
    script = Path(cwd) / "README.md"
    script.write_text("\n" * (line - 1) + source)
    env = dict(os.environ)
    package_root = str(Path(fastopt.__file__).resolve().parents[1])
    env["PYTHONPATH"] = os.pathsep.join(p for p in (package_root, env.get("PYTHONPATH")) if p)
    env.setdefault("MPLBACKEND", "Agg")
    return subprocess.run([sys.executable, str(script)], cwd=cwd, env=env, capture_output=True,
                          text=True, timeout=BLOCK_TIMEOUT)


BLOCKS = python_blocks(README.read_text(encoding="utf-8"))


def test_the_readme_has_python_blocks():
    assert len(BLOCKS) >= 15
    for line, _, source in BLOCKS:
        assert source.strip(), f"README.md line {line}: an empty block"


@pytest.mark.parametrize("line, heading, source", BLOCKS,
                         ids=[f"L{line}-{re.sub(r'[^A-Za-z0-9]+', '_', h)[:30]}"
                              for line, h, _ in BLOCKS])
def test_block_runs_as_written(line, heading, source, tmp_path):
    reason = skip_reason(source)
    if reason is not None:
        pytest.skip(reason)
    done = run_block(source, line, tmp_path)
    assert done.returncode == 0, (
        f"README.md line {line} (section {heading!r}) failed:\n{done.stderr[-4000:]}")


def test_a_broken_block_fails(tmp_path):
    """The check can fail: a block using a name it never defines (as the README once did)."""
    source = "import numpy as np\nimport fastopt as fo\nopt = fo.Adam(params, lr=1e-3)\n"
    done = run_block(source, 10, tmp_path)
    assert done.returncode != 0
    assert "NameError" in done.stderr and "README.md\", line 12" in done.stderr


def test_blocks_are_found_with_their_lines():
    text = "# A\n\n```python\nx = 1\n```\n\n## B\n```bash\nls\n```\n```python\ny = 2\nz = 3\n```\n"
    assert python_blocks(text) == [(4, "A", "x = 1\n"), (12, "B", "y = 2\nz = 3\n")]


def test_only_gpu_mpi_and_torch_blocks_may_skip():
    """Blocks skip only for CuPy/GPU, mpi4py or torch; everything else always runs."""
    for line, _, source in BLOCKS:
        reason = skip_reason(source)
        if reason is not None:
            assert any(k in reason for k in ("CuPy", "mpi4py", "torch")), (line, reason)
    plain = [s for _, _, s in BLOCKS if not re.search(r"cupy|mpi4py|torch", s)]
    assert len(plain) >= 10


def _extras():
    pyproject = README.parent / "pyproject.toml"
    if not pyproject.exists():
        pytest.skip("no pyproject.toml beside this copy of the tests")
    try:
        import tomllib
    except ImportError:
        tomllib = pytest.importorskip("tomli")
    with open(pyproject, "rb") as fh:
        return tomllib.load(fh)["project"]["optional-dependencies"]


def _names(requirements):
    return {re.split(r"[\s<>=!;\[]", r, maxsplit=1)[0].lower().replace("_", "-")
            for r in requirements}


def test_every_extra_the_readme_names_exists():
    extras = _extras()
    text = README.read_text(encoding="utf-8")
    named = {n for group in re.findall(r'(?:fastopt|\.)\[([a-z0-9,-]+)\]', text)
             for n in group.split(",")}
    assert {"plot", "test", "mpi", "bfloat16", "all"} <= named
    assert named <= set(extras), named - set(extras)


def test_the_all_extra_is_every_cpu_extra():
    extras = _extras()
    cpu = ("test", "bench", "plot", "bfloat16", "mpi")
    assert _names(extras["all"]) == set().union(*(_names(extras[e]) for e in cpu))
    for gpu in ("gpu", "gpu-cuda13"):
        assert not _names(extras[gpu]) & _names(extras["all"])


def test_blocks_using_an_optional_module_name_its_extra():
    """A block importing ml_dtypes (or matplotlib via fastopt.demo's figures) sits in a
    section that names the extra installing it."""
    extras = _extras()
    text = README.read_text(encoding="utf-8")
    for line, heading, source in BLOCKS:
        if "ml_dtypes" in source:
            section = text[text.index(heading):text.index(source)]
            providers = [e for e, reqs in extras.items() if "ml-dtypes" in _names(reqs)]
            assert any(f"[{e}]" in section for e in providers), (line, providers)
