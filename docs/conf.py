"""Sphinx configuration of the numba_adamax documentation (MyST Markdown pages).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html`` (warnings are
errors; ``tests/test_docs.py`` runs this build and every Python block of the pages).
"""
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # document this checkout, installed or not

import numba_adamax  # noqa: E402

project = "numba_adamax"
author = "numba_adamax developers"
copyright = "numba_adamax developers"
release = version = numba_adamax.__version__

extensions = ["myst_parser", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]
myst_heading_anchors = 3
myst_enable_extensions = ["colon_fence"]

autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# The public API's annotation names (numba_adamax/_typing.py), shown as written.
autodoc_type_aliases = {name: f"numba_adamax._typing.{name}"
                        for name in ("Array", "Variables", "Gradients", "LearningRate",
                                     "PathLike")}
autodoc_default_options = {"members": True, "show-inheritance": True}
# Without PyTorch the torch page documents a stand-in (the build needs no torch).
autodoc_mock_imports = [name for name in ("torch",) if importlib.util.find_spec(name) is None]
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_ivar = True  # "Attributes:" as fields, not as entries that clash with properties

html_theme = "alabaster"
html_title = f"numba_adamax {release}"
