"""The documentation: the Sphinx site builds without a warning, and every Python block of
every page (``docs/**/*.md`` and ``README.md``) runs and asserts what it says.

The convention the pages follow:
- every ```` ```python ```` block runs, in page order, in one namespace per page, in a fresh
  temporary working directory; claims are ``assert`` statements;
- shell commands are ```` ```bash ```` / ```` ```console ```` blocks, and code shown from
  ``examples/`` is a ```` ```{literalinclude} ```` block: neither runs here (the examples run
  in ``tests/test_docs_and_examples.py``);
- a first line ``% requires: torch, mpi4py`` skips the page when one of those modules is
  missing, with that reason;
- a page that imports ``numba.cuda`` runs in a new process, on Numba's CUDA simulator where
  there is no GPU (the simulator is chosen when numba starts).

The build runs when Sphinx and MyST-Parser are installed (the ``docs`` extra); with
``NUMBA_ADAMAX_REQUIRE_DOCS=1``, as in CI, their absence fails instead of skipping.
"""
import importlib.util
import json
import os
import re
import subprocess
import sys

import pytest

from conftest import REPO_ROOT, run_python, slow

DOCS = REPO_ROOT / "docs"
REQUIRED = os.environ.get("NUMBA_ADAMAX_REQUIRE_DOCS") == "1"
_BLOCK = re.compile(r"^```python[ \t]*\n(.*?)^```[ \t]*$", re.M | re.S)
_REQUIRES = re.compile(r"\A% requires:(.*)$", re.M)
_CUDA = re.compile(r"^\s*(from numba import cuda|import numba\.cuda|from numba\.cuda import)",
                   re.M)


def _pages():
    pages = sorted(p for p in DOCS.rglob("*.md") if "_build" not in p.parts)
    return [REPO_ROOT / "README.md", *pages]


def _label(page):
    return page.relative_to(REPO_ROOT).as_posix()


def python_blocks(text):
    """``(line, source)`` of each Python block of a page, ``line`` its first line (1-based)."""
    return [(text.count("\n", 0, m.start(1)) + 1, m.group(1)) for m in _BLOCK.finditer(text)]


def required_modules(text):
    """The modules the page's first line ``% requires: a, b`` names (none without one)."""
    found = _REQUIRES.match(text)
    return [] if found is None else [m.strip() for m in found.group(1).split(",") if m.strip()]


def _missing(module):
    try:
        return importlib.util.find_spec(module) is None
    except ImportError:  # a missing parent package
        return True


def _page_params():
    params = []
    for page in _pages():
        text = page.read_text()
        marks = [slow] if _CUDA.search(text) else []
        params.append(pytest.param(page, id=_label(page), marks=marks))
    return params


_RUNNER = """\
import json, os, sys
os.chdir(sys.argv[1])
namespace = {"__name__": "__docs__"}
for filename, line, source in json.loads(sys.argv[2]):
    exec(compile("\\n" * (line - 1) + source, filename, "exec"), namespace)
"""


def _gpu_environment():
    probe = run_python("from numba import cuda; print(cuda.is_available())", timeout=120)
    return {} if probe.stdout.strip() == "True" else {"NUMBA_ENABLE_CUDASIM": "1"}


@pytest.mark.parametrize("page", _page_params())
def test_page_blocks_run(page, tmp_path, monkeypatch):
    text = page.read_text()
    blocks = python_blocks(text)
    if not blocks:
        return  # nothing to run on this page
    missing = [m for m in required_modules(text) if _missing(m)]
    if missing:
        pytest.skip(f"{_label(page)} requires {', '.join(missing)}, which is not installed")
    filename = _label(page)
    if _CUDA.search(text):
        pytest.importorskip("numba.cuda", reason=f"{filename} needs numba-cuda")
        payload = json.dumps([[filename, line, source] for line, source in blocks])
        proc = run_python(["-c", _RUNNER, str(tmp_path), payload], env=_gpu_environment())
        assert proc.returncode == 0, proc.stdout + proc.stderr
        return
    monkeypatch.chdir(tmp_path)
    monkeypatch.syspath_prepend(str(REPO_ROOT / "examples"))
    namespace = {"__name__": "__docs__"}
    for line, source in blocks:
        exec(compile("\n" * (line - 1) + source, filename, "exec"), namespace)


def test_the_block_finder():
    text = ("% requires: torch, mpi4py\n# T\n```python\nx = 1\n```\n\n```bash\nls\n```\n"
            "```{literalinclude} ../examples/a.py\n```\n```python\nassert x == 1\n```\n")
    assert python_blocks(text) == [(4, "x = 1\n"), (13, "assert x == 1\n")]
    assert required_modules(text) == ["torch", "mpi4py"]
    assert required_modules("# T\n% requires: torch\n") == []
    assert _missing("no_such_module_here") and not _missing("json")


def test_pages_have_python_blocks():
    """The guide pages show running code (the front page and the guide)."""
    counts = {_label(p): len(python_blocks(p.read_text())) for p in _pages()}
    for name in ("README.md", "docs/getting_started.md", "docs/guide/class.md",
                 "docs/guide/functional.md", "docs/guide/sparse.md",
                 "docs/guide/many_tensors.md", "docs/guide/checkpoints.md",
                 "docs/guide/nonfinite.md", "docs/guide/schedules.md", "docs/guide/gpu.md"):
        assert counts[name] >= 1, name


# ----------------------------------------------------------------------------- the build

def test_sphinx_build_has_no_warning(tmp_path):
    for module in ("sphinx", "myst_parser"):
        if _missing(module):
            if REQUIRED:
                pytest.fail(f"{module} is not installed, and NUMBA_ADAMAX_REQUIRE_DOCS=1 "
                            "(install the `docs` extra)")
            pytest.skip(f"{module} is not installed (the `docs` extra)")
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(
        [str(REPO_ROOT), os.environ.get("PYTHONPATH", "")])}
    proc = subprocess.run(
        [sys.executable, "-m", "sphinx", "-W", "--keep-going", "-b", "html", "-q",
         str(DOCS), str(tmp_path / "html")],
        cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=600, check=False)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert (tmp_path / "html" / "index.html").is_file()
    assert (tmp_path / "html" / "api" / "numba_adamax.html").is_file()


def test_readme_links_into_the_docs_resolve():
    """Every relative link of the README names a file of the repository."""
    text = (REPO_ROOT / "README.md").read_text()
    links = re.findall(r"\]\((?!https?://|#)([^)#\s]+)(?:#[^)]*)?\)", text)
    assert any(link.startswith("docs/") for link in links)
    for link in links:
        assert (REPO_ROOT / link).exists(), link


def test_every_page_is_in_the_repository_layout():
    """The pages the guide's toctree lists exist."""
    listed = re.findall(r"^([a-z_]+)$", (DOCS / "guide" / "index.md").read_text(), re.M)
    missing = {name for name in listed if not (DOCS / "guide" / f"{name}.md").exists()}
    assert not missing, missing
