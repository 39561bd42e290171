"""Sphinx configuration: the API reference from the docstrings, guides in MyST markdown.

Build (warnings are errors, broken cross-references included):

    pip install -e ".[docs]"
    sphinx-build -W --keep-going -n -b html docs docs/_build/html
"""

from __future__ import annotations

from typing import Any

import momentum_jax

project = "momentum_jax"
author = "momentum_jax developers"
copyright = "momentum_jax developers"
release = momentum_jax.__version__
version = release

extensions = [
    "myst_parser",
    "sphinx.ext.autodoc",
    "sphinx.ext.napoleon",
    "sphinx.ext.mathjax",
    "sphinx.ext.viewcode",
]

source_suffix = {".md": "markdown", ".rst": "restructuredtext"}
root_doc = "index"
exclude_patterns = ["_build", "README.md"]

# The docstrings are Google style (Args / Returns / Example / References).
napoleon_google_docstring = True
napoleon_numpy_docstring = False
napoleon_use_rtype = False
autodoc_member_order = "bysource"
autodoc_typehints = "signature"
# Show the aliases, not the long unions they stand for.
autodoc_type_aliases = {
    "ScalarOrSchedule": "momentum_jax.ScalarOrSchedule",
    "optax.ScalarOrSchedule": "momentum_jax.ScalarOrSchedule",
    "optax.Schedule": "optax.Schedule",
}
autodoc_default_options = {"members": False}

myst_enable_extensions = ["dollarmath", "colon_fence"]
myst_heading_anchors = 3

# Every reference must resolve (-n). Types from other packages cannot be
# linked without their online inventories, which the build does not fetch.
nitpicky = True
nitpick_ignore_regex = [
    (r"py:.*", r"(optax|jax|jnp|np|numpy|chex|typing|collections)(\..*)?"),
    (r"py:.*", r"(Any|Callable|Sequence|NamedTuple|TypeAlias|ArrayLike|Array|int|float|bool)"),
]

# The equations render with no network: MathJax 3.2.2 (Apache-2.0, its LICENSE
# beside it), the tex-chtml component and its fonts, copied from the npm
# package mathjax@3.2.2 into _static/mathjax. That component has the base and
# AMS macros built in; a macro from an extension it would autoload (\boldsymbol,
# \cancel, ...) needs that extension's file copied there too. The built site
# loads nothing from a remote URL (.ci/no_remote_assets.py checks it); furo
# uses the system fonts.
mathjax_path = "mathjax/tex-chtml.js"

html_theme = "furo"
html_title = f"momentum_jax {release}"
html_static_path = ["_static"]
# Long display equations break at their \qquad spaces (wrap.css) or, where they
# cannot, shrink to fit (fit_math.js), and wide tables wrap, so that neither
# hides behind a horizontal scrollbar. tests/test_docs.py checks that the built
# pages load both; docs/check_layout.py measures the rendered pages in Chromium.
html_css_files = ["wrap.css"]
html_js_files = ["fit_math.js"]


def _check_signature(
    app: Any,
    what: str,
    name: str,
    obj: Any,
    options: Any,
    signature: str | None,
    return_annotation: str | None,
) -> None:
    """Under -W, fail the build where a signature spells out a union that an alias names."""
    from sphinx.util import logging

    text = f"{signature or ''} -> {return_annotation or ''}"
    if "int | float | complex" in text:
        logging.getLogger(__name__).warning(
            "%s%s: a type alias is expanded into its union; add the alias to "
            "autodoc_type_aliases in docs/conf.py",
            name,
            text,
        )


def setup(app: Any) -> None:
    app.connect("autodoc-process-signature", _check_signature)
