"""Visualizations: circuitsvis views that render offline, and the house figure style.

Interactive (self-contained HTML, ``_repr_html_`` in notebooks; :mod:`shiftlens.viz.circuits`):
:func:`attention_patterns`, :func:`importance_tokens`, :func:`token_rows`, :func:`concept_table`.
Static (:mod:`shiftlens.viz.style`): the one :func:`pyplot`, :func:`save_figure`,
:func:`figure_html`, :func:`label_models`; :func:`lens_figure` labels any Result's figure. Each
lens's own figures live in its package's ``plots.py``.

Example:
    >>> from shiftlens.viz import Visualization, token_rows
    >>> vis = token_rows(["Sort", " the", " words"], {"density": [1.0, 0.1, 0.6]})
    >>> vis.to_html().count("CircuitsVis.render(")  # one component
    1
"""

from __future__ import annotations

import importlib
import warnings
from typing import Any

from shiftlens.viz.circuits import (
    attention_patterns,
    concept_table,
    importance_tokens,
    token_rows,
    token_strings,
)
from shiftlens.viz.figures import lens_figure
from shiftlens.viz.html import Visualization, circuitsvis_js, page, props_json
from shiftlens.viz.style import figure_html, label_models, pyplot, save_figure

__all__ = [
    "Visualization",
    "circuitsvis_js",
    "page",
    "props_json",
    "attention_patterns",
    "concept_table",
    "importance_tokens",
    "token_rows",
    "token_strings",
    "figure_html",
    "label_models",
    "lens_figure",
    "pyplot",
    "save_figure",
]

#: Lens figures that lived here in 0.1, now in each lens's plots.py (deprecated aliases).
_MOVED = {
    "instruction_score_figure": "shiftlens.lenses.attribution.plots",
    "head_delta_figure": "shiftlens.lenses.attention.plots",
    "concept_share_figure": "shiftlens.lenses.ffn.plots",
    "rotation_figure": "shiftlens.lenses.ffn.plots",
    "similarity_figure": "shiftlens.lenses.residual.plots",
}


def __getattr__(name: str) -> Any:
    mod = _MOVED.get(name)
    if mod is None:
        raise AttributeError(f"module 'shiftlens.viz' has no attribute {name!r}")
    warnings.warn(f"shiftlens.viz.{name} moved to {mod}.{name}", DeprecationWarning,
                  stacklevel=2)
    # a lazy, deprecated alias: viz sits below the lenses, so it never imports them statically
    return getattr(importlib.import_module(mod), name)
