"""Visualizations: circuitsvis views that render offline, and static matplotlib figures.

Interactive (self-contained HTML, ``_repr_html_`` in notebooks; :mod:`shiftlens.viz.circuits`):
:func:`attention_patterns`, :func:`importance_tokens`, :func:`token_rows`, :func:`concept_table`.
Static (PNG/SVG; :mod:`shiftlens.viz.figures`): :func:`instruction_score_figure`,
:func:`head_delta_figure`, :func:`concept_share_figure`, :func:`rotation_figure`,
:func:`similarity_figure`, :func:`lens_figure`, :func:`save_figure`, :func:`figure_html`.

Example:
    >>> from shiftlens.viz import Visualization, token_rows
    >>> vis = token_rows(["Sort", " the", " words"], {"density": [1.0, 0.1, 0.6]})
    >>> vis.to_html().count("CircuitsVis.render(")  # one component
    1
"""

from __future__ import annotations

from shiftlens.viz.circuits import (
    attention_patterns,
    concept_table,
    importance_tokens,
    token_rows,
    token_strings,
)
from shiftlens.viz.figures import (
    concept_share_figure,
    figure_html,
    head_delta_figure,
    instruction_score_figure,
    label_models,
    lens_figure,
    pyplot,
    rotation_figure,
    save_figure,
    similarity_figure,
)
from shiftlens.viz.html import Visualization, circuitsvis_js, page, props_json

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
    "concept_share_figure",
    "figure_html",
    "head_delta_figure",
    "instruction_score_figure",
    "label_models",
    "lens_figure",
    "pyplot",
    "rotation_figure",
    "save_figure",
    "similarity_figure",
]
