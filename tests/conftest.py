"""Helpers shared by the test modules, imported by name (``from conftest import ...``), like the
other helper modules of this folder.

* The standard problem: :data:`NAMES` / :data:`SHAPES` (five variables: odd shapes, an empty
  one and a ~1000-element one), and :func:`make_variables` with the step-dependent gradients
  :func:`make_grads` and :func:`make_ramp_grads` (two small variables of two dtypes).
* Tolerances: :func:`tolerance` against the float64 reference, :func:`recorded_tolerance`
  against the recordings of tests/data/ (tests/data/README.md).
* State snapshots: :func:`snapshot_state` copies everything a call may change,
  :func:`assert_unchanged` compares two snapshots bit for bit.
* :func:`run_python`: a fresh interpreter that imports this checkout of the package.
* MPI launches: :data:`MPIEXEC` (None without mpi4py or mpiexec), :func:`require_mpi` (skip,
  or fail under ``NUMBA_ADAMAX_REQUIRE_MPI=1``), :func:`mpi_environment` and the session
  fixture ``warm_cache`` (every kernel compiled once before ranks load them side by side).
* The ``slow`` marker (subprocess- and Hypothesis-heavy tests, the PTX compilation of every
  CUDA kernel): ``pytest -m "not slow"`` is the quick run; the default run includes them.

This module imports neither torch nor ``numba.cuda``: device arrays are recognised by their
``copy_to_host`` method.
"""
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

REPO_ROOT = Path(__file__).resolve().parent.parent

#: Marks the tests that start Python processes, draw many Hypothesis examples or compile
#: every CUDA kernel.
slow = pytest.mark.slow

# --------------------------------------------------------------------------- the problem

#: Variable names: "bias" and "big" match ``configs.EXCLUDE``, "w_" matches ``^w_``.
NAMES = ("w_a", "bias_b", "w_c", "empty", "big")
SHAPES = ((7,), (3, 5), (4, 2, 3), (0,), (37, 27))  # 7, 15, 24, 0 and 999 elements


def make_variables():
    """A float64 (2, 3) and a float32 (4,) variable, always the same values."""
    a = np.linspace(-1.0, 1.0, 6).reshape(2, 3)                      # float64, 2-D
    b = np.array([0.5, -1.5, 2.0, -0.25], dtype=np.float32)          # float32, 1-D
    return [a, b]


def make_grads(k=0):
    """Deterministic, step-dependent random gradients for ``make_variables``."""
    rng = np.random.default_rng(1000 + k)
    return [rng.standard_normal((2, 3)), rng.standard_normal(4).astype(np.float32)]


def make_ramp_grads(k=0):
    """Gradients for ``make_variables`` with fixed signs, growing with ``k`` (1 + k/2 times a
    fixed pattern)."""
    s = 1.0 + 0.5 * k
    return [np.array([[0.3, -0.2, 0.1], [-0.4, 0.5, -0.6]]) * s,
            np.array([0.25, -0.5, 0.75, -1.0], dtype=np.float32) * np.float32(s)]


# --------------------------------------------------------------------------- tolerances

F64_TOL = dict(rtol=1e-12, atol=1e-14)
F32_TOL = dict(rtol=1e-4, atol=1e-6)
#: float64 against the recorded vectors (tests/data/README.md); float32 uses ``F32_TOL``.
RECORDED_F64_TOL = dict(rtol=1e-10, atol=0.0)


def tolerance(dtype):
    """``assert_allclose`` keywords for ``dtype`` results against the float64 reference."""
    return F64_TOL if np.dtype(dtype) == np.float64 else F32_TOL


def recorded_tolerance(dtype):
    """``assert_allclose`` keywords for ``dtype`` results against the recorded vectors."""
    return RECORDED_F64_TOL if np.dtype(dtype) == np.float64 else F32_TOL


# --------------------------------------------------------------------------- snapshots

#: The slot buffers of a slot group, as attribute names.
GROUP_BUFFERS = ("m", "u", "ema", "accumulator")
COUNTERS = ("raw_steps", "iterations", "skipped_steps")


def to_host(array):
    """A NumPy copy of ``array`` (a CUDA device array, a NumPy array or anything array-like)."""
    if hasattr(array, "copy_to_host"):
        return array.copy_to_host()
    return np.array(array, copy=True)


def bit_identical(a, b):
    """Same dtype, shape and bytes (NaN payloads and the sign of zero included)."""
    a, b = np.asarray(a), np.asarray(b)
    return a.dtype == b.dtype and a.shape == b.shape and a.tobytes() == b.tobytes()


def snapshot_state(target, variables):
    """Host copies of everything an optimizer call may change, by a descriptive key.

    ``target`` is an ``Adamax`` (built or not), a functional state, or a reference optimizer
    (``ReferenceAdamax``: slot lists ``m``, ``u``, ``ema``, ``acc``). Keys:

    * ``param[i]``: the variables (``variables``, host or device arrays);
    * ``m[i]``, ``u[i]``, ``ema[i]``, ``accumulator[i]``: each variable's slots;
    * ``group[g].<buffer>``: the slot buffers of each slot group (library states);
    * ``touched_rows[i]``: the rows touched in the open accumulation window (library states);
    * ``raw_steps``, ``iterations``, ``skipped_steps``: the counters the target has, as 0-d
      arrays.

    An unbuilt ``Adamax`` has no state: only the ``param`` entries.
    """
    out = {f"param[{i}]": to_host(v) for i, v in enumerate(variables)}
    state = target if hasattr(target, "m") else target.state
    if state is None:
        return out
    accumulators = state.accumulators if hasattr(state, "accumulators") else state.acc
    for slot, arrays in (("m", state.m), ("u", state.u), ("ema", state.ema),
                         ("accumulator", accumulators)):
        for i, a in enumerate(arrays):
            out[f"{slot}[{i}]"] = to_host(a)
    for g, group in enumerate(getattr(state, "groups", ())):
        for name in GROUP_BUFFERS:
            buffer = getattr(group, name)
            if buffer is not None:
                out[f"group[{g}].{name}"] = to_host(buffer)
    for i, mask in enumerate(getattr(state, "touched_rows", ())):
        out[f"touched_rows[{i}]"] = to_host(mask)
    for name in COUNTERS:
        if hasattr(state, name):
            out[name] = np.array(getattr(state, name))
    return out


def assert_unchanged(before, after, label="", skipped=0):
    """``after`` has the keys of ``before`` and every entry bit-identical (``bit_identical``:
    NaN == NaN when the bytes agree); entries that are not arrays compare with ``==``.

    ``skipped``: calls skipped (``nonfinite="skip"``) in between; ``skipped_steps`` must have
    grown by that much.
    """
    prefix = f"{label}: " if label else ""
    if skipped:
        before = {**before, "skipped_steps": np.array(int(before["skipped_steps"]) + skipped)}
    assert before.keys() == after.keys(), (label, sorted(before), sorted(after))
    for key, want in before.items():
        got = after[key]
        if isinstance(want, np.ndarray):
            assert isinstance(got, np.ndarray) and bit_identical(got, want), \
                f"{prefix}{key} changed"
        else:
            assert got == want, f"{prefix}{key} changed"


# --------------------------------------------------------------------------- subprocesses


def run_python(code_or_args, env=None, timeout=300):
    """Run ``sys.executable`` in the repository root, output captured as text.

    ``code_or_args`` is Python source (run with ``-c``) or a list of command-line arguments
    (a script and its arguments, or ``["-c", source, argv1, ...]``). The child's environment
    is ``os.environ`` updated with ``env``, and its ``PYTHONPATH`` starts with the repository
    root, so that it imports this checkout of ``numba_adamax``. Returns the
    ``subprocess.CompletedProcess``.
    """
    args = ["-c", code_or_args] if isinstance(code_or_args, str) else [str(a) for a in
                                                                        code_or_args]
    child_env = {**os.environ, **(env or {})}
    child_env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), child_env.get("PYTHONPATH", "")])
    return subprocess.run([sys.executable, *args], cwd=REPO_ROOT, env=child_env,
                          capture_output=True, text=True, timeout=timeout)


# --------------------------------------------------------------------------- MPI launches


def _find_mpiexec():
    """The ``mpiexec`` beside this interpreter (or on PATH) when mpi4py imports, else None."""
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        return None
    beside = Path(sys.executable).with_name("mpiexec")
    return str(beside) if beside.exists() else shutil.which("mpiexec")


#: The ``mpiexec`` the MPI tests launch, or None when mpi4py or mpiexec is missing.
MPIEXEC = _find_mpiexec()


def require_mpi():
    """``MPIEXEC``; when it is missing, skip the calling test, or fail it when
    ``NUMBA_ADAMAX_REQUIRE_MPI=1`` (CI, where the distributed extra is installed)."""
    if MPIEXEC is None:
        reason = ("needs mpi4py and mpiexec (pip install numba_adamax[distributed], which "
                  "brings the mpich wheel)")
        if os.environ.get("NUMBA_ADAMAX_REQUIRE_MPI") == "1":
            pytest.fail(f"the MPI tests cannot run: {reason}")
        pytest.skip(reason)
    return MPIEXEC


def mpi_environment(**extra):
    """The environment of an MPI launch: one thread per rank, this checkout and tests/
    first on ``PYTHONPATH``, plus ``extra``."""
    env = dict(os.environ, NUMBA_NUM_THREADS="1", OMP_NUM_THREADS="1", **extra)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO_ROOT), str(REPO_ROOT / "tests"),
                                         env.get("PYTHONPATH", "")]).rstrip(os.pathsep)
    return env


@pytest.fixture(scope="session")
def warm_cache():
    """Compile (or load) every kernel the MPI scenarios run, once, in a child process, so
    that the ranks only load them from the disk cache instead of compiling side by side."""
    require_mpi()
    code = ("import numba_adamax as na\n"
            "from numba_adamax._warmup import all_configurations\n"
            "for kw in all_configurations():\n"
            "    na.warmup(('float32', 'float64'), sparse=True, parallel=False, **kw)\n")
    subprocess.run([sys.executable, "-c", code], check=True, env=mpi_environment(),
                   stdin=subprocess.DEVNULL, timeout=600)
