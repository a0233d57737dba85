"""fastopt.distributed: worker scripts in tests/mpi/ launched with `mpiexec -n N`.

Each rank of a worker writes its results as JSON to a file; the assertions are made here. Needs
mpi4py and an MPI launcher (``pip install "fastopt[mpi]"`` gives both: mpi4py and the mpich
wheel, whose ``mpiexec`` lands next to the Python executable); without them the MPI tests are
skipped, saying so. Every launch runs under a timeout, so a hang fails instead of blocking.
"""
import importlib.util
import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
from pathlib import Path

import numpy as np
import pytest

import fastopt

HERE = Path(__file__).parent
WORKERS = HERE / "mpi"
TIMEOUT_S = 60


def _mpiexec():
    beside_python = Path(sys.executable).parent / "mpiexec"
    if beside_python.exists():
        return str(beside_python)
    return shutil.which("mpiexec")


MPIEXEC = _mpiexec()
HAVE_MPI = MPIEXEC is not None and importlib.util.find_spec("mpi4py") is not None
needs_mpi = pytest.mark.skipif(
    not HAVE_MPI, reason='needs mpi4py and mpiexec: pip install "fastopt[mpi]" (mpi4py + mpich)')


def run_workers(n, script, *args, timeout=TIMEOUT_S):
    """Run tests/mpi/<script> on n ranks; returns the per-rank result dicts, rank order."""
    with tempfile.TemporaryDirectory() as results_dir:
        out, err = _launch(n, script, args, timeout, results_dir)
        results = []
        for rank in range(n):
            path = Path(results_dir) / f"rank{rank}.json"
            assert path.exists(), f"rank {rank} of {script} reported nothing:\n{out}\n{err}"
            results.append(json.loads(path.read_text()))
    return results


def _launch(n, script, args, timeout, results_dir):
    env = dict(os.environ, FASTOPT_MPI_RESULTS=results_dir)
    package_root = str(Path(fastopt.__file__).resolve().parent.parent)
    env["PYTHONPATH"] = os.pathsep.join([package_root, str(WORKERS), env.get("PYTHONPATH", "")])
    env["OMP_NUM_THREADS"] = "1"
    cmd = [MPIEXEC, "-n", str(n), sys.executable, str(WORKERS / script), *map(str, args)]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, start_new_session=True)
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        out, err = proc.communicate()
        pytest.fail(f"{script} on {n} ranks did not finish in {timeout} s (a hang)\n"
                    f"stdout:\n{out}\nstderr:\n{err}")
    assert proc.returncode == 0, f"{script} on {n} ranks failed:\n{out}\n{err}"
    return out, err


# --------------------------------------------------------------------- without MPI at all
def test_import_fastopt_does_not_need_mpi4py():
    code = ("import sys; sys.modules['mpi4py'] = None; import fastopt, fastopt.distributed\n"
            "from fastopt.distributed import ShardedOptimizer\n"
            "try:\n    ShardedOptimizer(fastopt.Adam, [__import__('numpy').zeros(3)])\n"
            "except ImportError as e:\n    print(e)\n")
    env = dict(os.environ, PYTHONPATH=str(Path(fastopt.__file__).resolve().parent.parent))
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                         timeout=TIMEOUT_S)
    assert out.returncode == 0, out.stderr
    assert 'pip install "fastopt[mpi]"' in out.stdout


@pytest.mark.parametrize("total", [0, 1, 2, 7, 55, 100])
@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_shards_cover_the_buffer_contiguously(total, n):
    from fastopt.distributed._flat import Shards
    s = Shards(total, n)
    assert sum(s.counts) == total
    assert max(s.counts) - min(s.counts) <= 1
    assert [s.bounds(r)[0] for r in range(n)] == s.displs
    assert all(s.bounds(r)[1] == s.bounds(r + 1)[0] for r in range(n - 1))
    pieces = s.owner_pieces(total // 3, total)
    assert sum(b - a for _, a, b in pieces) == total - total // 3


@pytest.mark.parametrize("n", [1, 2, 3, 8])
def test_int8_shards_cut_at_whole_blocks_of_each_tensor(n):
    from fastopt.distributed._flat import FlatLayout
    from fastopt.distributed._qshard import BlockSpace, aligned_shards
    sizes = [5000, 300, 4097, 1, 1000]
    layout = FlatLayout([np.zeros(k, np.float32) for k in sizes])
    s = aligned_shards(layout, 0, n)
    total, starts = sum(sizes), list(np.cumsum([0] + sizes[:-1]))
    assert sum(s.counts) == total and s.displs[0] == 0
    assert all(s.bounds(r)[1] == s.bounds(r + 1)[0] for r in range(n - 1))
    for bound in s.displs:
        tensor = max(t for t in starts if t <= bound)
        assert (bound - tensor) % 256 == 0, (n, s.displs)
    assert all(abs(c - total / n) <= 256 for c in s.counts), s.counts   # nearest block cut
    space = BlockSpace(layout, 0)
    blocks = space.shards(s)
    assert space.total == sum(-(-k // 256) for k in sizes) == sum(blocks.counts)


def test_flat_layout_round_trip():
    from fastopt.distributed._flat import FlatLayout
    params = [np.arange(6.0).reshape(2, 3), np.arange(4, dtype=np.float32), np.arange(2.0)]
    layout = FlatLayout(params)
    assert [d.name for d in layout.dtypes] == ["float64", "float32"]
    assert layout.sizes == [8, 4]
    buffers = layout.empty()
    layout.pack(params, buffers)
    np.testing.assert_array_equal(buffers[0], [0, 1, 2, 3, 4, 5, 0, 1])
    out = [np.zeros_like(p) for p in params]
    layout.unpacker(buffers, out)()
    for a, b in zip(out, params):
        np.testing.assert_array_equal(a, b)
    assert layout.grad_problem([np.ones_like(p) for p in params]) is None
    assert "grads[1] must be a float32 array of shape (4,)" in layout.grad_problem(
        [params[0], np.ones(4), params[2]])
    assert "grads has 2 arrays" in layout.grad_problem(params[:2])


# ------------------------------------------------------------------------------ with MPI
@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def equivalence(request):
    """tests/mpi/equivalence.py on 2 and on 3 ranks, run once for the tests that read it."""
    if not HAVE_MPI:
        pytest.skip('needs mpi4py and mpiexec: pip install "fastopt[mpi]" (mpi4py + mpich)')
    return request.param, run_workers(request.param, "equivalence.py")


@pytest.mark.mpi
def test_n_ranks_equal_one_process_on_the_global_batch(equivalence):
    n, results = equivalence
    for r in results:
        assert r["size"] == n
        assert len(r["errors"]) == 6          # {Distributed, Sharded} x {SGD-momentum, Adam, Adagrad}
        for case, err in r["errors"].items():
            assert err["float64"] < 1e-12, (case, r["rank"], err)
            assert err["float32"] < 1e-5, (case, r["rank"], err)


@pytest.mark.mpi
def test_one_allreduce_for_many_small_tensors(equivalence):
    n, results = equivalence
    for r in results:           # 100 tensors of 3 elements, default bucket size
        assert r["allreduce_calls"] == 1
        assert r["small_step_ok"]


@pytest.mark.mpi
def test_sharded_state_memory_is_one_nth(equivalence):
    n, results = equivalence
    total = results[0]["total_state_nbytes"]
    assert sum(r["state_nbytes"] for r in results) == total
    for r in results:
        assert abs(r["state_nbytes"] - total / n) <= 0.05 * total / n, r


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_sync_batchnorm_equals_batchnorm_on_the_concatenated_batch(n):
    results = run_workers(n, "syncbn.py")
    for r in results:
        for layout, steps in r["errors"].items():
            for step, errs in steps.items():
                for name, e in errs.items():
                    assert e < 1e-12, (layout, step, name, r["rank"], e)
        message = r["bad_input_error"]
        assert message is not None, f"rank {r['rank']} did not raise"
        if r["rank"] == n - 1:
            assert "must have shape (N, 3, ...)" in message
        else:
            assert "rejected on 1 other rank" in message


@needs_mpi
@pytest.mark.mpi
def test_checkpoint_saved_on_3_ranks_continues_identically_on_2_and_1(tmp_path):
    run_workers(3, "checkpoint.py", "save", tmp_path)
    for n in (2, 1):
        results = run_workers(n, "checkpoint.py", "load", tmp_path)
        assert all(r["plain_file_loads_the_same_state"] for r in results)
    with np.load(tmp_path / "saved-3.npz") as z:
        saved = {k: z[k] for k in z.files}
    n_sharded = {"float64": 55, "float32": 10}      # the sharded model's part of each row
    for name in ["continued-2", "continued-1", "plain"]:
        with np.load(tmp_path / f"{name}.npz") as z:
            for dtype, tol in [("float64", 1e-12), ("float32", 1e-5)]:
                got, want = z[dtype], saved[dtype]
                if name == "plain":
                    want = want[:, :n_sharded[dtype]]
                assert got.shape == want.shape
                err = np.abs(got - want).max() / np.abs(want).max()
                assert err < tol, (name, dtype, err)
    # the trajectory moved after the checkpoint, so equality is not trivial
    assert np.abs(np.diff(saved["float64"], axis=0)).max() > 1e-4


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_mismatch_on_one_rank_raises_on_every_rank(n):
    results = run_workers(n, "mismatch.py", timeout=30)
    for r in results:
        res = r["results"]
        for case in ["distributed_shapes", "sharded_shapes"]:
            assert res[case] is not None, (case, r["rank"])
            assert res[case].startswith("ValueError: the optimizers or parameters differ across "
                                        f"ranks: params[1] is float64 array of shape (6,) on rank "
                                        f"{n - 1}"), res[case]
        assert "float32 array" in res["sharded_dtype"]
        assert res["sharded_bad_hyper"].startswith(f"ValueError: on rank {n - 1} of {n}: Invalid "
                                                   "learning rate")
        assert res["params_kept_after_failed_construction"]
        assert res["sharded_not_array"].startswith(f"TypeError: on rank {n - 1} of {n}")
        for name in ["distributed", "sharded"]:
            message = res[f"{name}_grads"]
            assert message.startswith(f"ValueError: invalid input to step on 1 of {n} "
                                      "ranks"), message
            if r["odd"]:
                assert "grads[1] must be a float64 array of shape (5,)" in message
            assert res[f"{name}_grads_unchanged"]
        assert res["load_missing_file"].startswith(f"FileNotFoundError: on rank 0 of {n}")


@pytest.fixture(scope="module", params=[2, 3], ids=lambda n: f"{n}ranks")
def nonfinite(request):
    """tests/mpi/nonfinite.py on 2 and on 3 ranks, run once for the tests that read it."""
    if not HAVE_MPI:
        pytest.skip('needs mpi4py and mpiexec: pip install "fastopt[mpi]" (mpi4py + mpich)')
    return request.param, run_workers(request.param, "nonfinite.py", timeout=30)


@pytest.mark.mpi
def test_nonfinite_average_skips_or_raises_on_every_rank_with_nothing_changed(nonfinite):
    n, results = nonfinite
    for r in results:
        assert r["size"] == n and len(r["results"]) == 6
        for case, out in r["results"].items():
            sharded = case.startswith("sharded")
            assert out["first_step_skipped"] is False, (case, r["rank"])
            assert out["first_step_no_state"], (case, r["rank"])
            assert len(out["bad"]) == 2 * 6 * 2
            for bad in out["bad"]:
                what = (case, r["rank"], bad)
                assert bad["unchanged"], what
                if bad["mode"] == "skip":
                    assert bad["got"] is False, what
                else:
                    expected = (f"ValueError: grads[{bad['first']}] averaged over the {n} ranks "
                                "contains NaN or Inf; nothing was updated (nonfinite='raise')"
                                if sharded else
                                f"ValueError: grads[{bad['first']}] contains NaN or Inf; "
                                "nothing was updated (nonfinite='raise')")
                    assert bad["got"] == expected, what


@pytest.mark.mpi
def test_steps_after_skipped_ones_equal_one_process_that_never_saw_them(nonfinite):
    n, results = nonfinite
    for r in results:
        for case, out in r["results"].items():
            what = (case, r["rank"])
            assert out["good_returns"] == [True] * 4, what
            assert set(out["steps"]) == {4}, what         # skipped steps are not counted
            assert out["same_mask"], what
            assert out["errors"]["float64"] < 1e-12, (what, out["errors"])
            assert out["errors"]["float32"] < 1e-5, (what, out["errors"])
            # "ignore": the update runs, the NaN lands where the plain optimizer puts it
            assert out["ignore_returns"] is True, what
            assert out["ignore_reached_b2"] and out["ignore_same_mask"], what
            assert out["ignore_errors"]["float64"] < 1e-12, (what, out["ignore_errors"])
            assert out["ignore_errors"]["float32"] < 1e-5, (what, out["ignore_errors"])


@pytest.mark.mpi
def test_nonfinite_check_costs_one_small_allreduce_and_none_when_ignored(nonfinite):
    n, results = nonfinite
    for r in results:
        calls = r["allreduce_calls"]
        assert calls["sharded/ignore"] == 0, calls
        assert calls["sharded/skip"] == calls["sharded/raise"] == 1, calls
        assert calls["distributed/ignore"] == calls["distributed/skip"] \
            == calls["distributed/raise"] > 0, calls


@pytest.mark.mpi
def test_invalid_nonfinite_raises_on_every_rank_instead_of_hanging(nonfinite):
    n, results = nonfinite
    for r in results:
        for wrapper, out in r["invalid_mode"].items():
            what = (wrapper, r["rank"], out)
            assert out["everywhere"] == (
                f"ValueError: invalid input to step on {n} of {n} ranks, nothing was updated: "
                "nonfinite must be one of ('ignore', 'skip', 'raise'), got 'Skip'"), what
            prefix = f"ValueError: invalid input to step on 1 of {n} ranks, nothing was updated: "
            if r["rank"] == n - 1:
                assert out["last_rank"] == prefix + ("nonfinite must be one of ('ignore', "
                                                     "'skip', 'raise'), got None"), what
            else:
                assert out["last_rank"] == prefix + "see the error on the other rank(s)", what
            assert out["everywhere_unchanged"] and out["last_rank_unchanged"], what
            assert out["usable_after"] is True, what


@pytest.mark.mpi
def test_wrapped_mixed_precision_skips_on_every_rank(nonfinite):
    n, results = nonfinite
    for r in results:
        m = r["mixed"]
        assert m["results"][:2] == [False, False], m
        assert m["results"][2].startswith("ValueError: grads[0] contains NaN or Inf after "
                                          "division by the loss scale"), m
        assert m["scale_ratio"] == 0.25 and m["skipped_steps"] == 2 and m["unchanged"], m


@needs_mpi
@pytest.mark.mpi
def test_example_distributed_logreg_runs_on_2_ranks(tmp_path):
    example = HERE.parent / "examples" / "distributed_logreg.py"
    if not example.exists():
        pytest.skip("examples/ is not shipped with this copy of the tests")
    out, _ = _launch(2, example, ["--steps", "150", "--checkpoint", tmp_path / "c.npz"],
                     TIMEOUT_S, str(tmp_path))
    accuracy = float(out.split("training accuracy")[1].split()[0])
    assert accuracy > 0.95, out
    assert (tmp_path / "c.npz").exists()


@needs_mpi
@pytest.mark.mpi
def test_crafted_checkpoints_run_no_code_under_mpiexec(tmp_path):
    results = run_workers(2, "crafted.py", tmp_path, timeout=60)
    for r in results:
        assert not r["marker_exists"], "code from a checkpoint ran"
        assert len(r["results"]) == 16
        for case, res in r["results"].items():
            assert res["outcome"].startswith("ValueError:"), (r["rank"], case, res)
            assert res["unchanged"], (r["rank"], case)
    assert not (tmp_path / "marker").exists()


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_schedule_free_train_eval_through_both_wrappers(n, tmp_path):
    """tests/mpi/schedule_free.py: y after the steps and x after eval() equal one process on
    the global batch, group scalars included; a sharded checkpoint saved in eval mode loads into
    a plain optimizer in eval mode and continues identically."""
    results = run_workers(n, "schedule_free.py", tmp_path)
    for r in results:
        assert len(r["errors"]) == 6           # {Distributed, Sharded} x {AdamW, SGD, RAdam}
        for case, err in r["errors"].items():
            for point in ("y", "x"):
                assert err[point]["float64"] < 1e-12, (case, point, r["rank"], err)
                assert err[point]["float32"] < 1e-5, (case, point, r["rank"], err)
        assert all(r["same_scalars"].values()), r["same_scalars"]
    root = results[0]["checkpoint"]
    assert root["mode"] == [False, False] and root["k"] == [10, 10]
    assert root["continued"] < 1e-12 and root["continued_float32"] < 1e-5


@needs_mpi
@pytest.mark.mpi
@pytest.mark.parametrize("n", [2, 3])
def test_low_bit_state_sharded_and_data_parallel_equal_one_process_bit_for_bit(tmp_path, n):
    """tests/mpi/state_dtype.py: Adam, SGD momentum and Schedule-Free AdamW with bfloat16
    (nearest and stochastic rounding) and int8 state through
    both wrappers equal one process bit for bit (parameters and state_dict), and continue bit
    for bit after save/load, also in a plain optimizer; int8 shards are cut at whole blocks of
    each tensor, so a tensor part below min_8bit_size keeps int8 state like its tensor."""
    results = run_workers(n, "state_dtype.py", tmp_path)
    for r in results:
        # {Adam, SGD, ScheduleFreeAdamW} x {bfloat16, int8, bfloat16 stochastic} x
        # {Sharded, Distributed}
        assert len(r["results"]) == 18
        for case, out in r["results"].items():
            assert out["params_equal"] and out["continued_equal"], (case, r["rank"], out)
            if r["rank"] == 0:
                assert out["state_equal"] and out["continued_state_equal"], (case, out)
                assert out["plain_continued_equal"], (case, out)
                # int8: the small tensor keeps float32; Schedule-Free's z is float32
                want = ["<f4", "Blockwise8"] if "int8" in case else \
                    (["<f4", "<u2"] if "sfadamw" in case else ["<u2"])
                assert out["kinds"] == want, (case, out["kinds"])
            if "int8-sharded" in case:
                starts = [0, 5000, 10200, 10500]          # the tensors in the flat buffer
                for bound in out["bounds"][0][1:-1]:
                    tensor = max(s for s in starts if s <= bound)
                    assert (bound - tensor) % 256 == 0, (case, out["bounds"])
                assert any(b not in starts for b in out["bounds"][0][1:-1])   # inside a tensor
    for case in results[0]["results"]:
        if "sharded" in case:
            nbytes = [r["results"][case]["state_nbytes"] for r in results]
            assert max(nbytes) < 0.6 * sum(nbytes), (case, nbytes)     # state is split


@pytest.fixture(scope="module", params=[2, 3])
def non_elementwise(request):
    """tests/mpi/non_elementwise.py on 2 and on 3 ranks, run once for the tests that read it."""
    if not HAVE_MPI:
        pytest.skip('needs mpi4py and mpiexec: pip install "fastopt[mpi]" (mpi4py + mpich)')
    return request.param, [r["results"] for r in run_workers(request.param,
                                                             "non_elementwise.py")]


# case -> (float64 bound, float32 bound) on the relative error against one process. Muon's
# Newton-Schulz and L-BFGS's line search amplify the rounding of the averaged gradient.
BOUNDS = {"muon/float64": (1e-12, 2e-6), "muon/float32": (1e-12, 2e-6),
          "muon/default": (1e-12, 2e-6), "adafactor": (1e-13, 1e-6),
          "sparse_adam": (1e-13, 1e-6), "lbfgs/strong_wolfe": (1e-9, None),
          "lbfgs/None": (1e-9, None)}


@pytest.mark.mpi
def test_muon_adafactor_sparse_adam_lbfgs_on_n_ranks_equal_one_process(non_elementwise):
    """DistributedOptimizer averages the gradients (SparseAdam: gathers every rank's rows;
    LBFGS: averages each closure evaluation) and every rank takes the step one process takes
    on the global batch, holding bit-identical parameters."""
    n, results = non_elementwise
    for r in results:
        for case, (tol64, tol32) in BOUNDS.items():
            got = r[case]
            assert got["same"], case
            for dtype, err in zip(got["dtypes"], got["errors"]):
                assert err < (tol64 if dtype == "float64" else tol32), (case, n, dtype, err)
        assert max(r["sparse_adam"]["state"]) < 1e-6
        assert r["sparse_adam"]["moved"] > 1e-2
        for search in ("strong_wolfe", "None"):
            lb = r[f"lbfgs/{search}"]
            assert lb["loss_error"] < 1e-9
            assert lb["calls"] == lb["evals"] == lb["ref_evals"] > 4


@pytest.mark.mpi
def test_bad_input_on_one_rank_raises_on_every_rank(non_elementwise):
    n, results = non_elementwise
    for rank, r in enumerate(results):
        sparse = r["sparse_adam"]
        assert "out of range" in sparse["bad_range"]           # found after the gather
        assert "invalid input to step on 1 of" in sparse["bad_shape"]
        if rank == n - 1:
            assert "expected (6, 4)" in sparse["bad_shape"] or "expected (4, 4)" in \
                sparse["bad_shape"]
        assert "nonfinite must be 'ignore' for SparseAdam" in sparse["nonfinite"]
        assert sparse["unchanged"]
        failure = r["lbfgs_failure"]
        assert failure["unchanged"]
        if rank == n - 1:
            assert failure["error"] == "FloatingPointError: this rank's closure failed"
        else:
            assert failure["error"].startswith("RuntimeError: the closure failed on 1 of")


@pytest.mark.mpi
def test_sharded_refuses_rules_that_are_not_elementwise(non_elementwise):
    _, results = non_elementwise
    why = {"Muon": "Newton-Schulz", "Adafactor": "row and column", "SparseAdam": "row-sparse",
           "LBFGS": "closure"}
    for r in results:
        for name, message in r["sharded_refuses"].items():
            assert "elementwise update rules only" in message, name
            assert why[name] in message and f"DistributedOptimizer({name}(params)" in message
        assert "does not drive Newton" in r["distributed_refuses_newton"]
