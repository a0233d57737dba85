"""FASTOPT_REQUIRE_TORCH=1 (set by .ci/run) turns a missing torch into failures.

Each check runs pytest in a subprocess on a small test file next to a copy of
tests/conftest.py, with a stand-in ``torch`` module that fails to import.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

HERE = Path(__file__).resolve().parent

SKIPPING_TESTS = '''
import pytest

def test_function_level_skip():
    pytest.importorskip("torch", reason="needs torch")

def test_unrelated():
    pass
'''

MODULE_SKIP = '''
import pytest
torch = pytest.importorskip("torch", reason="the adapter needs torch")

def test_adapter():
    pass
'''


def _pytest(tmp_path, files, require, broken_torch=True):
    for name, text in files.items():
        (tmp_path / name).write_text(text)
    shutil.copy(HERE / "conftest.py", tmp_path / "conftest.py")
    env = dict(os.environ)
    env.pop("FASTOPT_REQUIRE_TORCH", None)
    if require:
        env["FASTOPT_REQUIRE_TORCH"] = "1"
    if broken_torch:
        stub = tmp_path / "stub"
        stub.mkdir()
        (stub / "torch.py").write_text(
            'raise ModuleNotFoundError("No module named \'torch\'", name="torch")\n')
        env["PYTHONPATH"] = os.pathsep.join(p for p in (str(stub), env.get("PYTHONPATH")) if p)
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                           "-p", "no:randomly", str(tmp_path)],
                          cwd=tmp_path, env=env, capture_output=True, text=True, timeout=120)


def test_without_the_variable_a_missing_torch_skips(tmp_path):
    done = _pytest(tmp_path, {"test_a.py": SKIPPING_TESTS}, require=False)
    assert done.returncode == 0, done.stdout + done.stderr
    assert "1 passed, 1 skipped" in done.stdout


def test_with_the_variable_a_missing_torch_stops_the_run(tmp_path):
    done = _pytest(tmp_path, {"test_a.py": SKIPPING_TESTS}, require=True)
    assert done.returncode != 0
    assert "FASTOPT_REQUIRE_TORCH=1 but torch cannot be imported" in done.stdout + done.stderr


@pytest.mark.parametrize("files", [{"test_a.py": SKIPPING_TESTS}, {"test_b.py": MODULE_SKIP}],
                         ids=["function", "module"])
def test_with_the_variable_a_torch_skip_is_a_failure(tmp_path, files):
    """Even past the import check (torch importable), a skip that names torch fails."""
    text = next(iter(files.values())).replace('"torch"', '"torch_is_not_this_module"')
    done = _pytest(tmp_path, {next(iter(files)): text}, require=True, broken_torch=False)
    if "torch cannot be imported" in done.stdout + done.stderr:
        pytest.skip("torch is not installed here")      # the import check came first
    assert done.returncode in (1, 2), done.stdout + done.stderr     # 2: at collection
    assert "FASTOPT_REQUIRE_TORCH=1, but this was skipped" in done.stdout
    assert "skipped" not in done.stdout.strip().splitlines()[-1]
