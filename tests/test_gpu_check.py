"""``python -m numba_adamax.gpu_check`` without a GPU: the device run refuses and points at
``--offline``; its report is built from the test outcomes and the benchmark's targets
(``numba_adamax.gpu_check.device``); the benchmark's targets (``benchmark.gpu.targets``).
The ``--offline`` PTX check itself is tests/test_ptx.py."""
import os
import subprocess
import sys

from conftest import REPO_ROOT, slow
from numba_adamax.benchmark.gpu import targets
from numba_adamax.gpu_check import device

ENV = dict(os.environ, PYTHONPATH=os.pathsep.join(
    [str(REPO_ROOT)] + [p for p in [os.environ.get("PYTHONPATH")] if p]))


def _row(case, ours, adamax, adam, gbs=100.0, copy=200.0):
    return {"case": case, "elements": 10, "numba_adamax_ms": ours, "GB/s": gbs,
            "copy_GB/s": copy, "torch_adamax_ms": adamax, "torch_adam_fused_ms": adam}


def test_benchmark_targets():
    checks = targets([_row("1e6", 1.0, 2.0, 0.5), _row("1e8", 1.0, 2.0, 3.0, gbs=180.0)])
    assert [(c["case"], c["met"]) for c in checks] == [
        ("1e6", True), ("1e6", False), ("1e8", True), ("1e8", True), ("1e8", True)]
    assert checks[2]["value"] == "90.0%" and "85%" in checks[2]["target"]
    assert [c["case"] for c in targets([{k: v for k, v in _row("1e7", 1, 2, 3).items()
                                         if not k.startswith("torch")}])] == []


def _report(outcomes, met=True):
    tests = {"status": 0, "timed_out": False, "seconds": 1.0, "counts": {"passed": 2},
             "outcomes": outcomes, "log": "pytest.log", "torch_cuda_tests": 0,
             "failures": sorted(t for t, o in outcomes.items() if o == "failed")}
    bench = {"status": 0, "timed_out": False, "seconds": 1.0, "log": "benchmark.log",
             "rows": [_row("1e8", 1.0, 2.0, 3.0)],
             "targets": [{"target": "t", "case": "1e8", "value": "v", "met": met}]}
    return {"machine": {"gpu": "test"}, "budget_s": 470.0, "seconds": 2.0, "ok": met,
            "tests": tests, "benchmark": bench, "parity": device.parity(tests)}


def test_parity_table_and_markdown():
    outcomes = {
        "tests/test_cuda.py::test_every_config_matches_the_cpu[defaults]": "passed",
        "tests/test_cuda.py::test_every_config_matches_the_cpu_at_full_launch_size"
        "[defaults-float32]": "failed",
        "tests/test_cuda.py::test_nan_propagates_like_the_cpu": "passed"}
    report = _report(outcomes, met=False)
    assert report["parity"] == {
        "defaults": {"test_every_config_matches_the_cpu": "passed"},
        "defaults-float32": {"test_every_config_matches_the_cpu_at_full_launch_size": "failed"}}
    text = device.markdown(report)
    assert text.startswith("# numba_adamax device check\n\n**NOT OK**")
    assert "`tests/test_cuda.py::test_nan_propagates_like_the_cpu` passed" in text
    assert "| t | 1e8 | v | **no** |" in text
    assert "- FAILED: `tests/test_cuda.py::test_every_config_matches_the_cpu_at_full" in text
    assert "No PyTorch test is marked `cuda`" in text


def test_the_checkout_is_found():
    assert device.repository_root() == REPO_ROOT


@slow
def test_device_run_without_a_gpu_points_at_offline(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "numba_adamax.gpu_check", "--out",
                           str(tmp_path / "report")], capture_output=True, text=True,
                          timeout=300, cwd=REPO_ROOT, env={**ENV, "NUMBA_DISABLE_CUDA": "1"})
    assert proc.returncode == 1, proc.stderr
    assert "--offline" in proc.stdout and not (tmp_path / "report").exists()
