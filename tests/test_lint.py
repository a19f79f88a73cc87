"""The type checker and the linter pass on the package (and the linter on the tests).

They run when installed (the ``lint`` extra); with ``NUMBA_ADAMAX_REQUIRE_LINT=1``, as in CI,
a missing tool fails instead of skipping.
"""
import importlib.util
import os
import subprocess
import sys

import pytest

from conftest import REPO_ROOT

REQUIRED = os.environ.get("NUMBA_ADAMAX_REQUIRE_LINT") == "1"


def _run_tool(module, *args):
    if importlib.util.find_spec(module) is None:
        if REQUIRED:
            pytest.fail(f"{module} is not installed, and NUMBA_ADAMAX_REQUIRE_LINT=1 "
                        "(install the `lint` extra)")
        pytest.skip(f"{module} is not installed (the `lint` extra)")
    return subprocess.run([sys.executable, "-m", module, *args], cwd=REPO_ROOT,
                          capture_output=True, text=True, timeout=300, check=False)


def test_mypy_passes_on_the_package():
    proc = _run_tool("mypy", "numba_adamax")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert "Success" in proc.stdout


def test_ruff_passes_on_the_package_and_the_tests():
    proc = _run_tool("ruff", "check", "numba_adamax", "tests")
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_the_package_declares_its_type_hints():
    """``py.typed`` is in the package and in its package data, so installs carry it."""
    assert (REPO_ROOT / "numba_adamax" / "py.typed").is_file()
    text = (REPO_ROOT / "pyproject.toml").read_text()
    assert 'numba_adamax = ["py.typed"]' in text
