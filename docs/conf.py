"""Sphinx configuration: the specification, the user guide and the reference in one site."""

from distcache import __version__

project = "distcache"
author = "The distcache authors"
copyright = "the distcache authors"
release = __version__
version = ".".join(__version__.split(".")[:2])

# distcache.sphinxext renders requirements, field tables, layouts, enums and limits from the
# catalogue and from distcache.wire, so the spec never restates them.
# autodoc and napoleon build the API reference from the doc strings (no intersphinx: builds run
# without network access).
extensions = ["distcache.sphinxext", "sphinx.ext.autodoc", "sphinx.ext.napoleon"]

autodoc_member_order = "bysource"
autodoc_typehints = "description"
autodoc_default_options = {"members": True, "show-inheritance": True}
napoleon_google_docstring = True
napoleon_numpy_docstring = False

# Render the catalogue of this checkout (relative to this directory), not an installed copy.
distcache_requirements = "../conformance/requirements.toml"

# spec/ lives at the top of the repository; docs/spec is a relative symlink to it.
exclude_patterns = ["_build"]
root_doc = "index"

html_theme = "furo"
html_title = f"distcache {release}"
