"""The shiftlens report: one self-contained HTML page, metrics.json and CSVs for a pair.

The names load their module on first use, so ``shiftlens.report.log`` (used by the command
line around every command) imports neither torch nor pandas.

Example:
    >>> from shiftlens.report import build_report, available_lenses
    >>> list(available_lenses())  # every registered lens, in report order
    ['attribution', 'attention', 'ffn', 'residual', 'activation_difference', 'weight_delta',
     'amplification', 'crosscoder']
    >>> rep = build_report(pair, prompts, "out/report", lenses="attention,ffn")  # doctest: +SKIP
"""

from __future__ import annotations

import importlib
from typing import Any

#: Public name -> the module that defines it (loaded on first access).
_LAZY = {
    **dict.fromkeys(("DEFAULT_LIMITS", "LENSES", "Finding", "LensSpec", "Report", "Section",
                     "available_lenses", "build_report", "change_sentence", "resolve_lenses",
                     "select_prompts", "ReportPlan", "plan_report", "check_output_dir"),
                    "shiftlens.report.core"),
    **dict.fromkeys(("Estimate", "estimate_report", "ESTIMATE_THRESHOLD_S"),
                    "shiftlens.report.estimate"),
    **dict.fromkeys(("LogEntry", "CapturedLog", "capture_warnings"), "shiftlens.report.log"),
}

__all__ = sorted(_LAZY)


def __getattr__(name: str) -> Any:
    mod = _LAZY.get(name)
    if mod is None:
        raise AttributeError(f"module 'shiftlens.report' has no attribute {name!r}")
    value = getattr(importlib.import_module(mod), name)
    globals()[name] = value
    return value


def __dir__() -> list[str]:
    return sorted(set(globals()) | set(_LAZY))
