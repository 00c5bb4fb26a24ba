"""Sphinx configuration: the user guide (MyST markdown) and the API reference (autodoc)."""
import os
import sys

sys.path.insert(0, os.path.abspath(".."))

project = "aitoolbox"
author = "aitoolbox developers"
release = "0.1.0"

extensions = ["sphinx.ext.autodoc", "sphinx.ext.napoleon", "sphinx.ext.viewcode", "myst_parser"]
source_suffix = {".rst": "restructuredtext", ".md": "markdown"}
exclude_patterns = ["_build"]
master_doc = "index"

autodoc_default_options = {"members": True, "show-inheritance": True}
autodoc_member_order = "bysource"
autodoc_typehints = "description"
# Optional dependencies are imported inside functions, so autodoc needs no mocks for them.
napoleon_google_docstring = True
napoleon_numpy_docstring = False
myst_heading_anchors = 3
html_theme = "alabaster"
suppress_warnings = ["myst.xref_missing"]
