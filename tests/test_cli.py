"""The `fastopt` command as a new user meets it: the command list, each command's --help with
its allowed values, bench's row labels and cpu/wall column, the output folders of demo/viz."""
import os
import re
import subprocess
import sys
import threading
import time
from io import StringIO
from pathlib import Path

import numpy as np
import pytest

import fastopt
from fastopt import _kernels, bench, cli, demo, viz
from fastopt.convergence import METHODS

ROOT = Path(__file__).resolve().parents[1]
impls = bench.load_impls(ROOT / "bench" / "impls.py")   # the checkout's benchmark contenders


def _env():
    env = dict(os.environ)
    where = str(Path(fastopt.__file__).resolve().parents[1])          # the tested copy
    env["PYTHONPATH"] = os.pathsep.join(p for p in (where, env.get("PYTHONPATH")) if p)
    return env


def _help(argv, capsys):
    with pytest.raises(SystemExit) as exit_info:
        cli.main(argv)
    assert exit_info.value.code == 0
    return " ".join(capsys.readouterr().out.split())      # argparse wraps: join the lines


# ------------------------------------------------------------------------- command list
def test_no_command_lists_every_command_on_one_line(capsys):
    assert cli.main([]) == 2
    out = capsys.readouterr().out
    for name, (_, help_text) in cli.COMMANDS.items():
        line = next(ln for ln in out.splitlines() if ln.strip().startswith(name + " "))
        assert line.split(None, 1)[1].strip() == help_text        # the whole help, one line
        assert len(line) <= 80
    assert "fastopt COMMAND --help" in out


def test_python_m_fastopt_without_a_command(tmp_path):
    done = subprocess.run([sys.executable, "-m", "fastopt"], capture_output=True, text=True,
                          env=_env(), cwd=tmp_path, timeout=120)
    assert done.returncode == 2
    for name in cli.COMMANDS:
        assert re.search(rf"^\s+{name}\s+\S", done.stdout, re.M), done.stdout
    assert "Traceback" not in done.stderr


def test_version(capsys):
    assert _help(["--version"], capsys) == f"fastopt {fastopt.__version__}"


# ---------------------------------------------------------------------- allowed values
def test_bench_help_lists_allowed_values(capsys):
    text = _help(["bench", "--help"], capsys)
    assert "float32, float64" in text
    for section in bench.SECTIONS:
        assert f"{section}:" in text
    assert ", ".join(impls.OPTIMIZERS) in text


def test_demo_help_lists_allowed_values(capsys):
    text = _help(["demo", "--help"], capsys)
    assert ", ".join(METHODS) in text
    assert "breast_cancer, digits, all" in text
    assert "current directory" in text


def test_viz_help_lists_allowed_values(capsys):
    text = _help(["viz", "--help"], capsys)
    assert ", ".join(viz.METHODS) in text
    assert ", ".join(viz.FUNCTIONS) in text
    assert "current directory" in text


def test_bench_rejects_values_outside_the_list():
    for argv in (["bench", "--dtypes", "float16"], ["bench", "--sections", "sizes,gpu"]):
        with pytest.raises(SystemExit):
            cli.main(argv)


# ------------------------------------------------------------------------ bench labels
def test_quick_list_labels_state_the_real_sizes():
    cases = bench.list_cases(64)
    resnet = bench.list_label("resnet50", cases["resnet50"], 64)
    many = bench.list_label("1000x1000", cases["1000x1000"], 64)
    assert resnet.startswith("resnet50/64 (161 tensors, N=")
    assert many == "1000x15 (1000 tensors, N=15k)"
    total = sum(int(np.prod(s)) for s in cases["resnet50"])
    assert total < 25_557_032 // 60
    full = bench.list_cases(1)
    assert bench.list_label("resnet50", full["resnet50"]) == "resnet50 (161 tensors, N=25.6M)"
    assert bench.list_label("1000x1000", full["1000x1000"]) == "1000x1000 (1000 tensors, N=1M)"


def test_quick_report_prints_the_shrunk_lists():
    cfg = bench.Config(quick=True, sections=("lists",), samples=1, batch_ms=0.1,
                       list_scale=4000, torch=False)
    report = bench.run(cfg, progress=False)
    text = bench.format_report(report)
    assert {r["list"] for r in report["lists"]} == {"resnet50", "1000x1000"}   # JSON keys
    assert "resnet50/4000 (161 tensors" in text and "1000x1 (1000 tensors, N=1k)" in text
    assert not re.search(r"resnet50 \(|\b1000x1000\b", text)
    for row in report["lists"]:
        assert f"N={bench._fmt_n(row['n'])}" in row["label"]


# ---------------------------------------------------------------------------- cpu/wall
def test_settle_waits_for_other_threads():
    """A thread busy outside the GIL (NumPy) is still counted, so settle() waits for it."""
    stop = time.perf_counter() + 0.3
    a = np.ones(1 << 20)

    def busy():
        while time.perf_counter() < stop:
            np.sqrt(a, out=a)                  # releases the GIL

    worker = threading.Thread(target=busy)
    worker.start()
    try:
        assert bench.settle(timeout=5.0)
        assert time.perf_counter() >= stop - 0.02
    finally:
        worker.join()


@pytest.mark.skipif(not fastopt.has_openmp() or (os.cpu_count() or 1) < 2,
                    reason="needs OpenMP and two CPUs")
def test_one_thread_cpu_per_wall_ignores_earlier_parallel_steps():
    """Right after 2-thread steps, whose OpenMP workers spin-wait for a while, a 1-thread
    step's cpu/wall is about 1 (at most 1 on a busy machine), not 1 + the spinning."""
    params, grads = bench.Inputs().get([(1_000_000,)], "float32")
    step = impls.make_fastopt("adam", params, grads)
    saved = _kernels.get_num_threads()
    try:
        values = []
        for _ in range(3):
            _kernels.set_num_threads(2)
            for _ in range(20):
                step()
            _kernels.set_num_threads(1)
            values.append(bench.cpu_per_wall(step, 0.004))
    finally:
        _kernels.set_num_threads(saved)
    assert max(values) < 1.25, values


# --------------------------------------------------------------------- output folders
def _wrote(printed):
    return [ln[len("wrote "):] for ln in printed.splitlines() if ln.startswith("wrote ")]


def test_demo_announces_its_folder_and_lists_every_file(tmp_path):
    out = tmp_path / "d"
    stream = StringIO()
    result = demo.run("breast_cancer", ["gd", "newton"], quick=True, out=str(out),
                      stream=stream)
    printed = stream.getvalue()
    assert printed.splitlines()[0] == f"output folder: {os.path.join(str(out), '')}"
    written = _wrote(printed)
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(out))
    assert "demo_table.txt" in os.listdir(out)
    assert written == result.files


def test_viz_announces_its_folder_and_lists_every_file(tmp_path):
    pytest.importorskip("matplotlib")
    out = tmp_path / "v"
    stream = StringIO()
    _, written = viz.run(str(out), steps=5, functions=["quadratic"], optimizers=["gd", "adam"],
                         stream=stream)
    printed = stream.getvalue()
    assert printed.splitlines()[0] == f"output folder: {os.path.join(str(out), '')}"
    assert _wrote(printed) == written
    assert sorted(os.path.basename(p) for p in written) == sorted(os.listdir(out)) == [
        "trajectories.gif", "trajectories.png"]


def test_relative_output_folders_say_where_they_are(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    stream = StringIO()
    demo.run("breast_cancer", ["gd"], quick=True, out="fastopt-demo", plot=False,
             stream=stream)
    first = stream.getvalue().splitlines()[0]
    assert first == f"output folder: fastopt-demo{os.sep} (in {tmp_path})"


def test_default_output_folders_are_git_ignored():
    parser = cli.build_parser()
    defaults = {name: parser.parse_args([name]).out for name in ("demo", "viz")}
    assert defaults == {"demo": "fastopt-demo", "viz": "fastopt-viz"}
    ignore = ROOT / ".gitignore"
    if not ignore.exists():
        pytest.skip("no .gitignore beside this copy of the tests")
    lines = ignore.read_text().split()
    for folder in defaults.values():
        assert f"{folder}/" in lines or f"/{folder}/" in lines, folder


def test_viz_command_takes_functions_and_optimizers(tmp_path, capsys):
    pytest.importorskip("matplotlib")
    status = cli.main(["viz", "--steps", "3", "--no-gif", "--functions", "beale",
                       "--optimizers", "gd,newton", "--out", str(tmp_path)])
    assert status == 0
    assert os.listdir(tmp_path) == ["trajectories.png"]
    assert cli.main(["viz", "--functions", "himmelblau", "--out", str(tmp_path)]) == 2
    assert "himmelblau" in capsys.readouterr().err
