"""The benchmark subpackage: a small run of ``python -m numba_adamax.benchmark`` and its
JSON, the timing loop's step count, the GPU, nonfinite and NumPy commands, and that
the package proper never imports the subpackage."""
import ast
import importlib
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from numba_adamax import benchmark
from numba_adamax.benchmark import VARIANTS, mixed_shapes

ROOT = Path(__file__).resolve().parent.parent
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


@pytest.fixture(scope="module")
def small_run(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    cmd = [sys.executable, "-m", "numba_adamax.benchmark", "--sizes", "1e3", "--tensors", "6",
           "--tensors-total", "2e4", "--repeats", "3", "--batch-time", "0.001",
           "--json", str(out / "bench.json"), "--plot", str(out / "bench.png")]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    return proc, json.loads((out / "bench.json").read_text()), out / "bench.png"


def test_json_has_every_case_and_contender(small_run):
    _, report, _ = small_run
    assert report["format_version"] == 1 and report["dtype"] == "float32"
    assert [(c["case"], c["tensors"]) for c in report["cases"]] == [("dense", 1), ("tensors", 6)]
    assert report["cases"][0]["elements"] == 1000
    assert report["cases"][0]["reference"] == "numba_adamax"
    assert report["cases"][1]["reference"] == "flat"
    for case in report["cases"]:
        for name in benchmark.CONTENDERS:  # timed, or skipped with a reason
            assert (name in case["times"]) != (name in report["skipped"]), name
        for name in ("numba_adamax", "flat", "roofline", "numpy"):
            assert name in case["times"]
        for name, t in case["times"].items():
            assert 0 < t["min"] <= t["median"], name
            assert t["rounds"] >= 3 and t["steps_per_round"] >= 1
            assert t["effective_gb_per_s"] == pytest.approx(
                28 * case["elements"] / t["median"] / 1e9)
        assert case["ratios"]["numba_adamax/roofline"] == pytest.approx(
            case["times"]["numba_adamax"]["median"] / case["times"]["roofline"]["median"])
        ref = case["reference"]
        for peer in benchmark.PEERS:
            ratio = case["ratios"][f"{peer}/{ref}"]
            assert (ratio is None) == (peer not in case["times"])


def test_json_has_every_variant_against_its_roofline(small_run):
    _, report, _ = small_run
    assert [v["variant"] for v in report["variants"]] == list(benchmark.VARIANT_NAMES)
    for v in report["variants"]:
        options, calls, nbytes = VARIANTS[v["variant"]]
        assert (v["options"], v["calls_per_step"], v["bytes_per_element"]) == (options, calls,
                                                                               nbytes)
        assert v["ratio"] == pytest.approx(v["times"]["numba_adamax"]["median"]
                                           / v["times"]["roofline"]["median"])


def test_report_describes_the_machine_and_prints_tables(small_run):
    proc, report, plot = small_run
    machine = report["machine"]
    assert machine["cpu"] and machine["logical_cpus"] >= 1
    threads = machine["threads"]
    assert 1 <= threads["numba"] <= threads["cpus"]
    if "torch_foreach" in report["cases"][0]["times"]:
        assert threads["torch"] == threads["cpus"]
    assert machine["versions"]["numba_adamax"] == "0.1.0"
    assert "| elements | numba_adamax | FlatBuffer | bound step | roofline | NumPy |" in proc.stdout
    assert "bound step / roofline" in proc.stdout
    assert "numba_adamax / roofline" in proc.stdout
    for skipped in report["skipped"]:
        assert f"Skipped {benchmark.CONTENDERS[skipped]}:" in proc.stdout
    if importlib.util.find_spec("matplotlib"):
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    else:
        assert not plot.exists()


def test_measure_counts_every_step():
    calls = {"a": 0, "b": 0}

    def make(name):
        def step():
            calls[name] += 1
        return step

    result = benchmark.measure({"a": make("a"), "b": make("b")}, rounds=4, batch_time=1e-4)
    for name in calls:
        r = result[name]
        assert r["rounds"] == 4
        assert calls[name] == 3 + 3 + r["rounds"] * r["steps_per_round"]  # warm-up, single


def test_mixed_shapes_are_many_small_tensors_of_the_requested_total():
    shapes = mixed_shapes(300, 5_000_000)
    assert len(shapes) == 300
    total = sum(int(np.prod(s)) for s in shapes)
    assert 0.95 * 5_000_000 < total < 1.05 * 5_000_000
    assert shapes == mixed_shapes(300, 5_000_000)  # seeded


def test_importing_the_package_does_not_import_the_benchmark():
    code = ("import sys, numba_adamax; "
            "print(sorted(m for m in sys.modules if m == 'numba_adamax.benchmark'"
            " or m.startswith('numba_adamax.benchmark.')"
            " or m in ('torch', 'jax', 'optax')))")
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                          timeout=120, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "[]"


def _imported_modules(path):
    """The absolute names of the modules the package's source file ``path`` imports,
    at the top or inside functions."""
    package = path.relative_to(ROOT).with_suffix("").parts[:-1]
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            parent = package[:len(package) - node.level + 1] if node.level else ()
            base = ".".join(parent + ((node.module,) if node.module else ()))
            names.add(base)
            names.update(f"{base}.{alias.name}" for alias in node.names)
    return names


def test_no_runtime_module_imports_the_benchmark():
    """Nor the device check (``gpu_check``), the other command-line subpackage, which may
    use the benchmark."""
    package_dir = ROOT / "numba_adamax"
    tools = ("benchmark", "gpu_check")
    runtime = [path for path in package_dir.rglob("*.py")
               if not set(tools) & set(path.relative_to(package_dir).parts)]
    assert len(runtime) > 10 and package_dir / "_apply.py" in runtime
    # the check resolves relative imports: it sees the subpackage's own
    assert "numba_adamax.benchmark.runner" in _imported_modules(
        package_dir / "benchmark" / "__main__.py")
    for path in runtime:
        assert not {m for m in _imported_modules(path) for tool in tools
                    if m == f"numba_adamax.{tool}" or m.startswith(f"numba_adamax.{tool}.")}, path


def test_benchmark_numpy_baseline_matches_library():
    bench = importlib.import_module("numba_adamax.benchmark.numpy")
    rng = np.random.default_rng(3)
    w = rng.standard_normal(1000).astype(np.float32)
    g = rng.standard_normal(1000).astype(np.float32)
    w_np = w.copy()
    import numba_adamax as na
    opt = na.Adamax(learning_rate=1e-3)
    baseline = bench.NumpyAdamax(w_np, 1e-3)
    for _ in range(5):
        opt.apply([g], [w])
        baseline.step(w_np, g)
    np.testing.assert_allclose(w, w_np, rtol=1e-6)
    ours, theirs = bench.compare(2000, repeats=3)
    assert ours > 0 and theirs > 0


def test_benchmark_nonfinite_runs_every_policy():
    times = importlib.import_module("numba_adamax.benchmark.nonfinite").compare(2000, repeats=3)
    assert sorted(times) == ["propagate", "raise", "skip"]
    assert all(t > 0 for t in times.values())


@pytest.mark.parametrize("module, args, header", [
    ("numpy", ["--sizes", "1e3"], "speed-up"),
    ("nonfinite", ["--sizes", "1e3", "--clipnorm", "1.0"], "overhead")])
def test_benchmark_commands_print_their_table(module, args, header):
    proc = subprocess.run([sys.executable, "-m", f"numba_adamax.benchmark.{module}", *args],
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    lines = proc.stdout.splitlines()
    assert header in lines[0] and len(lines) == 2
    assert lines[1].split()[0] == "1000"


def test_gpu_benchmark_without_a_gpu_exits_cleanly():
    proc = subprocess.run([sys.executable, "-m", "numba_adamax.benchmark.gpu"],
                          capture_output=True, text=True, timeout=300, cwd=ROOT,
                          env={**ENV, "NUMBA_DISABLE_CUDA": "1"})
    assert proc.returncode == 0, proc.stderr
    assert "Skipping the GPU benchmark" in proc.stdout


def test_deduplication_contender_sums_repeated_rows():
    from numba_adamax.benchmark import embedding_batch
    from numba_adamax.benchmark.contenders import deduplication

    import numba_adamax as na
    _, indices, values = embedding_batch(1.5, rows=50, dim=3, batch=40)
    table = np.zeros((50, 3), values.dtype)
    result = deduplication(na.IndexedSlices(values, indices, dense_shape=(50, 3)), table)()
    rows, summed = result.rows, result.values.reshape(len(result.rows), 3)
    assert list(rows) == list(dict.fromkeys(indices.tolist()))  # first appearance order
    for row, total in zip(rows, summed):
        np.testing.assert_allclose(total, values[indices == row].sum(axis=0), rtol=1e-6)


def test_busy_benchmark_reports_both_passes(tmp_path):
    out = tmp_path / "busy.json"
    proc = subprocess.run([sys.executable, "-m", "numba_adamax.benchmark.busy", "--steps", "5",
                           "--workers", "1", "--rows", "2000", "--dim", "8", "--batch", "64",
                           "--json", str(out)], capture_output=True, text=True, timeout=300,
                          cwd=ROOT, env=ENV)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(out.read_text())
    assert set(report) == {"quiet", "busy"}
    for phase in report.values():
        assert set(phase) == {"dense 40000", "sparse embedding", "dense embedding"}
        assert all(0 < r["median"] <= r["p90"] for r in phase.values())
    assert "| dense 40000 | busy |" in proc.stdout and "faster than the dense one" in proc.stdout


def test_compare_reports_one_column_per_tree_with_ratios_and_fixed_costs():
    from conftest import REPO_ROOT

    from numba_adamax.benchmark import compare
    measured = compare.run_child(str(REPO_ROOT), "warm")  # this tree, kernels in the cache
    assert measured["first_step"] > 0 and measured["import"] > 0
    old = {"fixed/1000/list": 6e-6, "fixed/1000/flat": 4e-6, "fixed/1000/roofline": 1e-6,
           "busy/quiet/dense embedding/median": 8e-3,
           "busy/quiet/sparse embedding/median": 1e-3}
    new = dict(old, **{"fixed/1000/list": 3e-6, "fixed/1000/bound": 2e-6})
    table = compare.format_report({"old": old, "new": new}, ["before", "after"])
    lines = table.splitlines()
    assert lines[0] == "| | before | after |"
    row = next(line for line in lines if "1e3 float32, `apply` (list)" in line)
    assert "6.00 µs = 6.00× (+5.00 µs)" in row and "3.00 µs = 3.00× (+2.00 µs)" in row
    bound = next(line for line in lines if "1e3 float32, bound step" in line)
    assert bound.split("|")[2].strip() == "—" and "2.00×" in bound
    ratio = next(line for line in lines if "dense / sparse embedding step, on its own" in line)
    assert ratio.count("8.0×") == 2
