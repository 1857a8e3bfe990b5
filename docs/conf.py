"""Sphinx configuration for the flask-signal documentation (Markdown pages, read by MyST).

Build: ``sphinx-build -W --keep-going -b html docs docs/_build/html``.
"""

from __future__ import annotations

import flask_signal

project = "flask-signal"
author = "flask_signal developers"
copyright = "2026, flask_signal developers"
release = flask_signal.__version__
version = release

extensions = ["myst_parser"]
source_suffix = {".md": "markdown"}
root_doc = "index"
exclude_patterns = ["_build"]

# `[text](page.md#a-heading)` links resolve to headings down to this level.
myst_heading_anchors = 3

html_theme = "alabaster"
html_title = f"flask-signal {release}"
