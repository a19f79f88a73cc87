"""The asv suite in asv_benchmarks/: asv accepts it, and its setups and bodies run.

``asv check`` only imports the benchmark modules and checks their signatures, so the
other tests call the benchmark classes directly on their smallest parameters.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent
ASV_DIR = ROOT / "asv_benchmarks"
ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(ROOT), str(ASV_DIR)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))

sys.path.insert(0, str(ASV_DIR))
from benchmarks import (bench_compile, bench_many, bench_overhead, bench_sparse,
                        bench_step, common)


def _cuda_available():
    """Whether a GPU can be timed here (the suite's ``require``: not the CUDA simulator)."""
    from numba_adamax.benchmark import gpu_unavailable_reason
    return gpu_unavailable_reason() is None


def test_asv_check_accepts_the_suite():
    pytest.importorskip("asv", reason="asv is not installed (pip install -e '.[bench]')")
    proc = subprocess.run([sys.executable, "-m", "asv", "check", "-E", "existing:same"],
                          cwd=ASV_DIR, capture_output=True, text=True, timeout=300, env=ENV)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "No problems found" in proc.stdout


def test_feature_sets_are_the_benchmark_variants():
    from numba_adamax.benchmark import VARIANTS
    assert sorted(common.FEATURES) == sorted(VARIANTS)


def test_suite_imports_no_private_module_of_the_package():
    for path in sorted((ASV_DIR / "benchmarks").glob("*.py")):
        text = path.read_text()
        assert "numba_adamax._" not in text and "from numba_adamax import _" not in text, path


@pytest.mark.parametrize("feature", list(common.FEATURES))
def test_dense_step_setup_and_body_update_the_variable(feature):
    bench = bench_step.TimeDenseStep()
    bench.setup(1000, "float32", feature, "cpu")
    before = bench.w[0].copy()
    bench.time_step(1000, "float32", feature, "cpu")
    assert not np.array_equal(bench.w[0], before)
    assert bench.opt.iterations == 2  # the warm-up step and the timed one


@pytest.mark.parametrize("path", ["list", "flat"])
def test_many_tensors_setup_and_body_update_every_tensor(path):
    bench = bench_many.TimeManyTensors()
    bench.setup(path, "cpu")
    arrays = bench.params_.arrays if path == "flat" else bench.params_
    assert len(arrays) == bench_many.COUNT
    assert 0.9 * bench_many.TOTAL < sum(a.size for a in arrays) < 1.1 * bench_many.TOTAL
    before = [a.copy() for a in arrays]
    bench.time_step(path, "cpu")
    assert all(not np.array_equal(a, b) for a, b in zip(arrays, before))


@pytest.fixture
def small_embedding(monkeypatch):
    """bench_sparse on a table of 5000 rows of 8 and batches of 512 indices."""
    monkeypatch.setattr(bench_sparse, "ROWS", 5000)
    monkeypatch.setattr(bench_sparse, "DIM", 8)
    monkeypatch.setattr(bench_sparse, "BATCH", 512)


@pytest.mark.parametrize("zipf_a", bench_sparse.ZIPF_EXPONENTS)
def test_sparse_setup_and_bodies_update_the_touched_rows(small_embedding, zipf_a):
    bench = bench_sparse.TimeEmbeddingSparse()
    bench.setup(zipf_a, "cpu")
    rows = np.unique(bench.slices.indices)
    assert 1 < rows.size < bench_sparse.BATCH  # repeated indices
    before = bench.table.copy()
    bench.time_sparse_step(zipf_a, "cpu")
    bench.time_deduplicate(zipf_a, "cpu")
    changed = np.flatnonzero((bench.table != before).any(axis=1))
    np.testing.assert_array_equal(changed, rows)
    assert bench.opt.iterations == 2  # the warm-up step and the timed one
    dense = bench_sparse.TimeEmbeddingDense()
    dense.setup("cpu")
    before = dense.table.copy()
    dense.time_dense_step("cpu")
    assert (dense.table != before).all(axis=1).all() and dense.opt.iterations == 2


def test_cuda_half_is_skipped_exactly_when_there_is_no_gpu(small_embedding):
    cases = [(bench_step.TimeDenseStep(), (1000, "float32", "plain", "cuda"), "time_step"),
             (bench_step.TimeLargeDenseStep(), (10_000_000, "cuda"), "time_step"),
             (bench_many.TimeManyTensors(), ("list", "cuda"), "time_step"),
             (bench_sparse.TimeEmbeddingSparse(), (1.1, "cuda"), "time_sparse_step"),
             (bench_sparse.TimeEmbeddingSparse(), (1.1, "cuda"), "time_deduplicate"),
             (bench_sparse.TimeEmbeddingDense(), ("cuda",), "time_dense_step")]
    for bench, params, body in cases:
        if _cuda_available():
            bench.setup(*params)
            getattr(bench, body)(*params)
        else:
            with pytest.raises(NotImplementedError, match="CUDA|cuda"):
                bench.setup(*params)


def test_flat_buffer_path_has_no_cuda_half():
    with pytest.raises(NotImplementedError):
        bench_many.TimeManyTensors().setup("flat", "cuda")


_MEMORY_CHILD = """
import json, sys
from benchmarks.bench_step import MemDenseStep
bench = MemDenseStep()
bench.setup(int(sys.argv[1]), sys.argv[2])
print(json.dumps(bench.track_peak_growth(int(sys.argv[1]), sys.argv[2])))
"""


@pytest.mark.parametrize("feature", ["plain", "clipnorm", "ema", "accumulation"])
def test_a_step_allocates_no_temporary_proportional_to_the_size(feature):
    size = 10_000_000  # 40 MB of float32: a temporary that size would show in the peak
    proc = subprocess.run([sys.executable, "-c", _MEMORY_CHILD, str(size), feature],
                          capture_output=True, text=True, timeout=300, env=ENV, cwd=ASV_DIR)
    assert proc.returncode == 0, proc.stderr
    growth = json.loads(proc.stdout.strip().splitlines()[-1])
    assert growth < size * 4 // 8, f"a step raised the peak memory by {growth} bytes"


def test_compile_track_compiles_into_a_fresh_cache():
    bench = bench_compile.TrackFirstStep()
    bench.setup("plain")
    cache = Path(bench.cache_dir)
    try:
        assert not any(cache.rglob("*.nbi"))
        assert bench.track_compile_seconds("plain") > 0
        assert any(cache.rglob("*.nbi"))  # the child compiled, into this cache
    finally:
        bench.teardown("plain")
    assert not cache.exists()


def test_first_step_after_warmup_compiles_nothing_in_a_fresh_cache():
    bench = bench_compile.TrackFirstStepAfterWarmup()
    bench.setup("clipnorm")
    try:
        # A compile takes seconds; a step that compiles nothing takes well under 0.1 s.
        assert 0 < bench.track_first_step_seconds("clipnorm") < 0.1
    finally:
        bench.teardown("clipnorm")


@pytest.mark.parametrize("mode", bench_overhead.MODES)
def test_fixed_cost_benchmarks_run(mode):
    timed = bench_overhead.TimeFixedCost()
    timed.setup(1_000, mode)
    timed.time_call(1_000, mode)
    tracked = bench_overhead.TrackFixedCost()
    tracked.setup(1_000, mode)
    assert tracked.track_ratio_to_roofline(1_000, mode) > 1
