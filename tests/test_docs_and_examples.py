"""The README's Python snippets and the examples run, and do what they claim."""
import importlib.util
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

ROOT = Path(__file__).resolve().parent.parent


def _readme_python_blocks():
    text = (ROOT / "README.md").read_text()
    return re.findall(r"```python\n(.*?)```", text, flags=re.S)


def _load_example(name):
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_has_python_snippets():
    assert len(_readme_python_blocks()) >= 2


@pytest.mark.parametrize("index", range(len(_readme_python_blocks())))
def test_readme_snippet_runs(index, capsys):
    namespace = {}
    exec(compile(_readme_python_blocks()[index], f"README block {index}", "exec"), namespace)
    assert capsys.readouterr().out.strip()  # every snippet prints its result


def test_readme_functional_snippet_learns():
    block = next(b for b in _readme_python_blocks() if "na.init(" in b)
    namespace = {}
    exec(compile(block, "README functional block", "exec"), namespace)
    np.testing.assert_allclose(namespace["w"], [1.5, -2.0, 0.5], atol=0.05)
    np.testing.assert_allclose(namespace["b"], [0.3], atol=0.05)
    assert namespace["state"].iterations == namespace["state"].raw_steps // 2


def test_readme_sparse_snippet_is_lazy_and_learns():
    block = next(b for b in _readme_python_blocks() if "IndexedSlices" in b)
    namespace = {}
    exec(compile(block, "README sparse block", "exec"), namespace)
    error, before, table = namespace["error"], namespace["before"], namespace["table"]
    assert error(table) < 0.2 * error(before)
    np.testing.assert_array_equal(table[100:], before[100:])
    assert not namespace["opt"].get_slot(table, "u")[100:].any()


def test_readme_commands_match_ci():
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    assert 'pip install -e ".[test]" && python -m pytest -q' in readme
    assert 'pip install --quiet -e ".[test]"' in ci and "python -m pytest -q" in ci


def test_quickstart_learns():
    result = _load_example("quickstart").main(epochs=30)
    assert result["ok"]
    assert result["final_loss"] < 0.5 * result["first_loss"]


def test_quickstart_script_exit_code():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "quickstart.py"),
                           "--epochs", "10"], capture_output=True, text=True, timeout=300,
                          cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "loss" in proc.stdout


def test_embeddings_sparse_learns():
    result = _load_example("embeddings_sparse").main(
        steps=60, n_items=2000, dim=16, n_groups=4, batch=256, timing_repeats=3, progress=False)
    assert result["ok"]
    assert result["final_accuracy"] > result["first_accuracy"] + 0.15
    assert result["sparse_step_s"] > 0 and result["dense_step_s"] > 0


def test_embeddings_sparse_script_exit_code():
    proc = subprocess.run([sys.executable, str(ROOT / "examples" / "embeddings_sparse.py"),
                           "--steps", "20", "--items", "2000"], capture_output=True, text=True,
                          timeout=300, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr
    assert "held-out pair accuracy after 20 steps" in proc.stdout


def test_benchmark_numpy_baseline_matches_library():
    bench = _load_example("benchmark_numpy")
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
