"""The package metadata in pyproject.toml: the version in one place, the supported Python range
(its classifiers, and its ends run by CI), and dependency ranges instead of exact pins."""
import json
import re
import sys
from importlib import metadata
from pathlib import Path

import pytest
from packaging.requirements import Requirement
from packaging.specifiers import SpecifierSet

import numba_adamax as na
from conftest import REPO_ROOT

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10, where pytest itself depends on tomli
    import tomli as tomllib

PYPROJECT = tomllib.loads((REPO_ROOT / "pyproject.toml").read_text())
PROJECT = PYPROJECT["project"]
CI_SCRIPT = (REPO_ROOT / ".ci" / "run").read_text()


def _classified_pythons():
    prefix = "Programming Language :: Python :: "
    versions = [c[len(prefix):] for c in PROJECT["classifiers"] if c.startswith(prefix)]
    return sorted((v for v in versions if re.fullmatch(r"3\.\d+", v)),
                  key=lambda v: int(v.split(".")[1]))


# ----------------------------------------------------------------------------- the version

def test_the_version_is_written_once_in_the_package():
    assert "version" not in PROJECT and "version" in PROJECT["dynamic"]
    assert PYPROJECT["tool"]["setuptools"]["dynamic"]["version"] == {
        "attr": "numba_adamax.__version__"}
    source = (REPO_ROOT / "numba_adamax" / "__init__.py").read_text()
    assert re.findall(r"^__version__ = \"([^\"]+)\"$", source, re.M) == [na.__version__]
    assert re.fullmatch(r"\d+\.\d+\.\d+((a|b|rc)\d+)?(\.dev\d+)?", na.__version__)


def test_setuptools_reads_that_version():
    wanted = next(Requirement(r) for r in PYPROJECT["build-system"]["requires"]
                  if Requirement(r).name == "setuptools")
    try:
        installed = metadata.version("setuptools")
    except metadata.PackageNotFoundError:
        pytest.skip("setuptools is not installed")
    if installed not in wanted.specifier:
        pytest.skip(f"setuptools {installed} is not the {wanted} the build uses")
    from setuptools.config import pyprojecttoml

    config = pyprojecttoml.read_configuration(REPO_ROOT / "pyproject.toml", expand=True)
    assert config["project"]["version"] == na.__version__


def test_the_installed_metadata_agrees():
    """Where this checkout is installed (``pip install -e .``, as CI does), the distribution's
    version is ``numba_adamax.__version__``."""
    try:
        dist = metadata.distribution("numba_adamax")
    except metadata.PackageNotFoundError:
        pytest.skip("numba_adamax is not installed")
    origin = json.loads(dist.read_text("direct_url.json") or "{}").get("url", "")
    here = (Path(dist.locate_file("")).resolve() == REPO_ROOT  # metadata written in the checkout
            or origin.rstrip("/") == REPO_ROOT.as_uri())
    if not here:
        pytest.skip(f"the installed numba_adamax comes from {origin or dist.locate_file('')}, "
                    "not this checkout")
    assert dist.version == na.__version__


# ----------------------------------------------------------------------------- Python range

def test_the_classifiers_span_requires_python():
    versions = _classified_pythons()
    minors = [int(v.split(".")[1]) for v in versions]
    assert minors == list(range(minors[0], minors[-1] + 1)), versions  # no gap
    supported = SpecifierSet(PROJECT["requires-python"])
    assert versions[0] in supported and f"3.{minors[0] - 1}" not in supported
    assert "Programming Language :: Python :: 3 :: Only" in PROJECT["classifiers"]


def test_ci_runs_the_oldest_and_the_newest_supported_python():
    versions = _classified_pythons()
    listed = re.search(r'^EXTRA_PYTHONS="([^"]*)"', CI_SCRIPT, re.M)
    assert listed, "no EXTRA_PYTHONS line in .ci/run"
    assert {versions[0], versions[-1]} <= set(listed.group(1).split()), versions


# ----------------------------------------------------------------------------- dependencies

def _requirements():
    for extra, entries in {"": PROJECT["dependencies"],
                           **PROJECT["optional-dependencies"]}.items():
        for entry in entries:
            yield extra, Requirement(entry)


def test_dependencies_are_ranges_not_exact_pins():
    for extra, req in _requirements():
        if req.name == "numba_adamax":
            continue  # the `dev` extra names the others
        assert all(s.operator not in ("==", "===") for s in req.specifier), (extra, str(req))
    bounded = {req.name: req.specifier for _, req in _requirements()}
    for name in ("numpy", "numba", "numba-cuda", "torch"):
        assert any(s.operator == ">=" for s in bounded[name]), name

