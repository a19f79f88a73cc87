"""The examples run and do what they claim; the README's commands are the ones CI runs.

The README's and the docs' Python blocks run in ``tests/test_docs.py``."""
import importlib.util
import json
import re
import sys

import pytest

from conftest import REPO_ROOT as ROOT
from conftest import run_python, slow


def _load_example(name):
    if str(ROOT / "examples") not in sys.path:
        sys.path.insert(0, str(ROOT / "examples"))  # as when the script runs: its helpers
    spec = importlib.util.spec_from_file_location(name, ROOT / "examples" / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_readme_commands_match_ci():
    """The README's test command and .ci/run install the same things and run the same pytest;
    both install the docs, lint and distributed extras, so that the docs build, the linters
    and the MPI tests run too."""
    readme = (ROOT / "README.md").read_text()
    ci = (ROOT / ".ci" / "run").read_text()
    readme_run = re.findall(r"pip install (-e \"\.\[test,cuda,docs,lint,distributed\]\".*?) && "
                            r"(python -m pytest -q "
                            r"&& NUMBA_ENABLE_CUDASIM=1 python -m pytest -q tests/test_cuda.py"
                            r" tests/test_torch_cuda.py)$",
                            readme, flags=re.M)
    ci_install = re.findall(r"^python -m pip install --quiet (-e .*)$", ci, flags=re.M)
    assert [install for install, _ in readme_run] == ci_install == [
        '-e ".[test,cuda,docs,lint,distributed]" torch==2.13.0']
    # run_pytest is `python -m pytest "$@"`, failing also when nothing is collected.
    assert re.search(r'^    python -m pytest "\$@" \|\| rc=\$\?$', ci, flags=re.M)
    assert re.search(r"^run_pytest -q$", ci, flags=re.M)
    assert re.search(r"^\(NUMBA_ENABLE_CUDASIM=1 run_pytest -q tests/test_cuda.py "
                     r"tests/test_torch_cuda.py\)", ci, flags=re.M)
    for variable in ("NUMBA_ADAMAX_REQUIRE_DOCS", "NUMBA_ADAMAX_REQUIRE_LINT",
                     "NUMBA_ADAMAX_REQUIRE_MPI", "NUMBA_ADAMAX_REQUIRE_PTX"):
        assert re.search(rf"^export {variable}=1$", ci, flags=re.M), variable


def test_readme_is_a_front_page():
    """The README is short; the manual lives in docs/."""
    lines = (ROOT / "README.md").read_text().splitlines()
    assert len(lines) <= 200
    first_commands = [i for i, line in enumerate(lines) if line.startswith("python -m venv")]
    assert len(first_commands) == 2 and lines[first_commands[0]].endswith(
        "python examples/quickstart.py")


def test_quickstart_learns():
    result = _load_example("quickstart").main(epochs=30)
    assert result["ok"]
    assert result["final_loss"] < 0.5 * result["first_loss"]


@slow
def test_quickstart_script_exit_code():
    proc = run_python([ROOT / "examples" / "quickstart.py", "--epochs", "10"])
    assert proc.returncode == 0, proc.stderr
    assert "loss" in proc.stdout


def test_embeddings_sparse_learns():
    result = _load_example("embeddings_sparse").main(
        steps=60, n_items=2000, dim=16, n_groups=4, batch=256, timing_repeats=3, progress=False)
    assert result["ok"]
    assert result["final_accuracy"] > result["first_accuracy"] + 0.15
    assert result["sparse_step_s"] > 0 and result["dense_step_s"] > 0


@slow
def test_embeddings_sparse_script_exit_code():
    proc = run_python([ROOT / "examples" / "embeddings_sparse.py", "--steps", "20",
                       "--items", "2000"])
    assert proc.returncode == 0, proc.stderr
    assert "held-out pair accuracy after 20 steps" in proc.stdout


def test_custom_loop_functional_learns():
    result = _load_example("custom_loop_functional").main(steps=200, accumulation=4)
    assert result["ok"]
    assert result["raw_steps"] == 200 and result["updates"] == result["expected_updates"] == 50
    assert result["ema_loss"] < 0.5 * result["first_loss"]


def test_torch_mlp_tracks_torch_adamax(tmp_path, capsys):
    pytest.importorskip("torch", reason="the example needs PyTorch")
    plot = tmp_path / "curves.png"
    result = _load_example("torch_mlp").main(steps=60, every=20, plot=str(plot))
    assert result["ok"]
    curves = result["curves"]
    assert len(curves["numba_adamax"]) == len(curves["torch.optim.Adamax"]) == 4
    assert result["gap"] < 1e-3  # same lr and eps: only the place of eps differs
    assert "numba_adamax" in capsys.readouterr().out
    has_matplotlib = importlib.util.find_spec("matplotlib") is not None
    assert plot.exists() == has_matplotlib
    if has_matplotlib:
        assert plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


@pytest.mark.parametrize("name, args", [("custom_loop_functional", ["--steps", "100"]),
                                        ("torch_mlp", ["--steps", "40"])])
@slow
def test_example_scripts_exit_code(name, args):
    if name == "torch_mlp":
        pytest.importorskip("torch", reason="the example needs PyTorch")
    proc = run_python([ROOT / "examples" / f"{name}.py", *args])
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "loss" in proc.stdout


def _run_gpu_example(env, **kwargs):
    code = ("import importlib.util, json\n"
            "import sys; sys.path.insert(0, 'examples')\n"
            "spec = importlib.util.spec_from_file_location('gpu_cupy', 'examples/gpu_cupy.py')\n"
            "module = importlib.util.module_from_spec(spec)\n"
            "spec.loader.exec_module(module)\n"
            f"print(json.dumps(module.main(**{kwargs!r})))\n")
    return run_python(code, env=env)


@slow
def test_gpu_example_without_a_gpu_exits_cleanly():
    proc = _run_gpu_example({"NUMBA_DISABLE_CUDA": "1"}, steps=5, n=64, d=4)
    assert proc.returncode == 0, proc.stderr
    assert "Skipping the GPU example" in proc.stdout
    assert json.loads(proc.stdout.strip().splitlines()[-1])["ok"]
    script = run_python([ROOT / "examples" / "gpu_cupy.py"], env={"NUMBA_DISABLE_CUDA": "1"})
    assert script.returncode == 0 and "Skipping" in script.stdout


@slow
@pytest.mark.cuda
def test_gpu_example_learns_under_the_cuda_simulator():
    pytest.importorskip("numba.cuda", reason="the CUDA simulator needs numba.cuda")
    proc = _run_gpu_example({"NUMBA_ENABLE_CUDASIM": "1"}, steps=60, n=64, d=4)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["backend"] == "numba.cuda"
    assert result["final_loss"] < 0.1 * result["first_loss"]
