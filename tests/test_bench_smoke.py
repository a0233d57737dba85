"""`fastopt bench` on tiny sizes: every section runs, the report is complete and consistent,
and the contenders it compares compute the same update as fastopt. No timing is asserted."""
import contextlib
import json
import math
import os

import numpy as np
import pytest

import fastopt as fo
from fastopt import bench, cli
from fastopt._specs import SPECS

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# the contenders are benchmark code of the checkout (bench/impls.py), not shipped in the package
impls = bench.load_impls(os.path.join(ROOT, "bench", "impls.py"))


def _tiny_config(**overrides):
    opts = dict(quick=True, sizes=(1000,), samples=2, batch_ms=0.2, cold_sizes=(1000,),
                evict_mb=1, list_scale=4000, thread_sizes=(4096,), crossover_sizes=(1024,),
                threads=(1, 2), muon_shapes=((24, 40),), sparse_shape=(2000, 8, 64),
                lbfgs_cases=((2000, 5, "float64"),), states_n=5000)
    opts.update(overrides)
    return bench.Config(**opts)


def _finite_positive(x):
    return isinstance(x, float) and math.isfinite(x) and x > 0


@pytest.fixture(scope="module")
def report():
    return bench.run(_tiny_config(), progress=False)


def test_every_section_has_rows(report):
    cfg = _tiny_config()
    assert len(report["sizes"]) == len(cfg.optimizers) * len(cfg.threads)
    assert {r["optimizer"] for r in report["sizes"]} == set(impls.OPTIMIZERS)
    assert [r["cache"] for r in report["cold"]] == ["cold"]
    assert {r["list"] for r in report["lists"]} == {"resnet50", "1000x1000"}
    assert report["threads"] and report["crossover"] and report["stream"]
    assert {(r["ns_dtype"], r["threads"]) for r in report["muon"]} == {
        (d, t) for d in ("bfloat16", "float32") for t in cfg.threads}
    (row,) = report["lbfgs"]
    assert (row["n"], row["history_size"], row["dtype"]) == (2000, 5, "float64")
    for key in ("lbfgs_ms", "dot_ms", "dot_hot_ms", "ratio", "ratio_hot", "recursion_ms",
                "ratio_recursion"):
        assert _finite_positive(row[key]), (key, row)
    assert "L-BFGS per iteration" in bench.format_report(report)


def test_case_rows_are_consistent(report):
    for row in report["sizes"] + report["cold"] + report["lists"]:
        f = row["fastopt"]
        for key in ("median_ms", "gbs", "pct_bandwidth", "cpu_per_wall"):
            assert _finite_positive(f[key]), (key, row)
        assert f["spread_pct"] >= 0
        itemsize = np.dtype(row["dtype"]).itemsize
        expected = impls.TRAFFIC[row["optimizer"]] * itemsize * row["n"] / f["median_ms"] / 1e6
        assert f["gbs"] == pytest.approx(expected)
        assert ("numpy_best" in row) == (row["optimizer"] in impls.NUMPY_BEST)
        for other in ("stream", "numpy_best", "numpy_textbook"):
            if other not in row:
                continue
            assert _finite_positive(row[other]["median_ms"])
            if other != "stream":
                assert _finite_positive(row[other]["ratio"])
        if "torch" in row:
            assert row["torch"]["variant"] in impls.torch_variants(row["optimizer"])
    for row in report["lists"]:
        assert _finite_positive(row["fastopt_flat"]["median_ms"])
    resnet = next(r for r in report["lists"] if r["list"] == "resnet50")
    assert resnet["tensors"] == len(impls.RESNET50_SHAPES)


def test_threads_and_crossover_rows(report):
    for row in report["threads"]:
        assert _finite_positive(row["speedup"]) and _finite_positive(row["cpu_per_wall_all"])
    for row in report["crossover"]:
        assert _finite_positive(row["serial_us"]) and _finite_positive(row["parallel_us"])


def test_muon_rows(report):
    for row in report["muon"]:
        assert row["shape"] == [24, 40]
        assert row["flops"] == 5 * (4 * 24 * 24 * 40 + 2 * 24 ** 3)
        for name in ("fastopt", "gemm"):
            assert _finite_positive(row[name]["median_ms"])
            assert _finite_positive(row[name]["gflops"])
        assert _finite_positive(row["pct_gemm"])
        if "torch" in row:
            assert _finite_positive(row["torch"]["ratio"])
def test_state_format_rows(report):
    """Adam with each state format against the yardstick: bytes per parameter measured from
    the state arrays, limits in the order of the bytes moved."""
    assert [r["threads"] for r in report["states"]] == [1, 2]
    for row in report["states"]:
        assert row["n"] == 5000 and _finite_positive(row["stream"]["gbs"])
        for fmt, most in (("float32", 8.0), ("bfloat16", 4.0), ("int8", 2.05)):
            e = row[fmt]
            assert _finite_positive(e["median_ms"]) and _finite_positive(e["vs_float32"])
            assert 0 < e["state_bytes"] <= most
        assert row["int8"]["limit_ms"] < row["bfloat16"]["limit_ms"] < row["float32"]["limit_ms"]
        if "torch" in row:
            assert _finite_positive(row["torch"]["over_int8"])
    assert "Adam by state format" in bench.format_report(report)
    from fastopt import _qstate
    assert report["machine"]["state_codecs"].split("+")[0] == _qstate.codec_level()
    assert f"state codecs: {report['machine']['state_codecs']}" in bench.format_report(report)


def test_sparse_rows(report):
    assert [r["threads"] for r in report["sparse"]] == [1, 2]
    for row in report["sparse"]:
        assert (row["rows"], row["dim"], row["batch"]) == (2000, 8, 64)
        assert _finite_positive(row["fastopt"]["median_ms"]) and _finite_positive(row["touched"])
        if "torch" in row:
            assert _finite_positive(row["torch"]["ratio"])
    assert "SparseAdam on an embedding table" in bench.format_report(report)


def test_sparse_contenders_compute_the_same_update():
    pytest.importorskip("torch")
    table = np.random.default_rng(0).standard_normal((500, 4)).astype(np.float32)
    batches = impls.sparse_batches(500, 4, 100, np.float32, n=3)
    mine, theirs = (impls.make_sparse_adam(c, table, batches) for c in ("fastopt", "torch"))
    for _ in range(5):
        mine()
        theirs()
    assert not np.array_equal(mine.table, table)
    np.testing.assert_allclose(mine.table, theirs.table, rtol=1e-6, atol=1e-6)


def test_report_formats_and_serializes(report):
    text = bench.format_report(report)
    for heading in ("Update bandwidth", "One tensor, warm cache", "caches evicted",
                    "Lists of tensors", "1 thread vs all threads", "Serial vs parallel",
                    "Muon step"):
        assert heading in text
    json.loads(json.dumps(report, default=str))


def test_cli_writes_json(tmp_path, capsys):
    path = tmp_path / "bench.json"
    status = cli.main(["bench", "--quick", "--sections", "sizes", "--sizes", "1e3",
                       "--optimizers", "adam,sgd", "--samples", "2", "--batch-ms", "0.2",
                       "--no-progress", "--json", str(path)])
    assert status == 0
    data = json.loads(path.read_text())
    assert {r["optimizer"] for r in data["sizes"]} == {"adam", "sgd"}
    assert {r["n"] for r in data["sizes"]} == {1000}
    assert "One tensor, warm cache" in capsys.readouterr().out


def test_contenders_are_not_shipped_and_cover_the_cli_choices():
    import importlib.util
    assert importlib.util.find_spec("fastopt._bench_impls") is None
    assert not impls.__file__.startswith(os.path.dirname(fo.__file__))
    assert bench.OPTIMIZERS == impls.OPTIMIZERS


def test_cli_without_a_checkout_says_where_to_get_the_contenders(monkeypatch, tmp_path, capsys):
    monkeypatch.setattr(bench, "_IMPLS_FILE", tmp_path / "bench" / "impls.py")
    monkeypatch.setattr(bench, "_loaded_impls", None)
    assert cli.main(["bench", "--quick", "--no-progress"]) == 2
    err = capsys.readouterr().err
    assert "source checkout" in err and "pip install -e ." in err
    with pytest.raises(ImportError, match="not with the installed package"):
        bench.run(_tiny_config(), progress=False)


def test_cli_rejects_unknown_names():
    with pytest.raises(SystemExit):
        cli.main(["bench", "--optimizers", "adam,lbfgs"])
    with pytest.raises(SystemExit):
        cli.main(["nonsense"])


def test_resnet50_shapes_are_the_real_model():
    shapes = impls.RESNET50_SHAPES
    assert len(shapes) == 161
    assert sum(math.prod(s) for s in shapes) == 25_557_032
    assert shapes[0] == (64, 3, 7, 7) and shapes[-2:] == ((1000, 2048), (1000,))
    assert sum(len(s) == 4 for s in shapes) == 53          # 49 convolutions + 4 downsamples


def test_measure_alternates_and_counts():
    calls = []
    contenders = {"a": lambda: calls.append("a"), "b": lambda: calls.append("b")}
    times = bench.measure(contenders, samples=4, batch_s=0.0)
    assert [len(times[k]) for k in "ab"] == [4, 4]
    assert all(t >= 0 for k in "ab" for t in times[k])
    evicted = []
    times = bench.measure(contenders, samples=3, evict=lambda: evicted.append(1))
    assert len(evicted) == 3 * 2



@contextlib.contextmanager
def torch_default_float64():
    """torch keeps per-parameter scalars (NAdam's mu_product, ASGD's eta and mu) in its
    default dtype: float64 here, like the parameters (as tests/golden/torch_runner.py)."""
    try:
        import torch
    except ImportError:
        yield
        return
    old = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(old)

@pytest.mark.parametrize("name", impls.OPTIMIZERS)
def test_contenders_compute_the_same_update(name):
    """Textbook and best-effort NumPy (chunked path included) and torch match fastopt."""
    rng = np.random.default_rng(0)
    shapes = [(40_000,), (3, 5), (1,)]          # 40k float64 > one best-effort chunk
    params = [rng.standard_normal(s) for s in shapes]
    grads = [[rng.standard_normal(s) for s in shapes] for _ in range(3)]
    mine = [p.copy() for p in params]
    opt = getattr(fo, SPECS[name].class_name)(mine, **impls.OVERRIDES.get(name, {}))
    current = [np.empty_like(p) for p in params]
    others = {style: impls.make_numpy(name, params, current, style)
              for style in ("textbook", "best")}
    assert (others["best"] is None) == (name not in impls.NUMPY_BEST)
    others = {label: step for label, step in others.items() if step is not None}
    with torch_default_float64():
        for variant in impls.torch_variants(name):
            others[variant] = impls.make_torch(name, params, current, variant)
        for g in grads:
            for dst, src in zip(current, g):
                dst[...] = src
            opt.step(current)
            for step in others.values():
                step()
    for label, step in others.items():
        for a, b in zip(step.params, mine):
            np.testing.assert_allclose(a, b, rtol=1e-9, atol=1e-12, err_msg=label)


def test_make_numpy_rejects_unknown_style():
    with pytest.raises(ValueError, match="style"):
        impls.make_numpy("adam", [np.ones(3)], [np.ones(3)], "fancy")
