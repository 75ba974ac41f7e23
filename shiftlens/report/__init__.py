"""The shiftlens report: one self-contained HTML page, metrics.json and CSVs for a pair.

Example:
    >>> from shiftlens.report import build_report, available_lenses
    >>> sorted(available_lenses())
    ['attention', 'attribution', 'ffn', 'residual']
    >>> rep = build_report(pair, prompts, "out/report", lenses="attention,ffn")  # doctest: +SKIP
"""

from __future__ import annotations

from shiftlens.report.core import (
    DEFAULT_LIMITS,
    LENSES,
    Finding,
    LensSpec,
    Report,
    Section,
    available_lenses,
    build_report,
    change_sentence,
    resolve_lenses,
    select_prompts,
)

__all__ = [
    "DEFAULT_LIMITS",
    "LENSES",
    "Finding",
    "LensSpec",
    "Report",
    "Section",
    "available_lenses",
    "build_report",
    "change_sentence",
    "resolve_lenses",
    "select_prompts",
]
