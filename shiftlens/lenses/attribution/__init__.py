"""Lens 1, attribution: does the response rest on the instruction? (Wu et al. 2024, §3).

Registered as ``"attribution"``. Importing this package imports nothing heavy; the public
functions load on first use from the layers:

- :mod:`~shiftlens.lenses.attribution.density`: sparsification, importance density,
  instruction score (the paper's formulas on a matrix);
- :mod:`~shiftlens.lenses.attribution.core`: explain one model (:func:`attribute`,
  :func:`attribution_matrix`);
- :mod:`~shiftlens.lenses.attribution.compare`: compare a pair (:func:`instruction_sensitivity`
  as validate / accumulate / assemble, :func:`response_settings` (both response settings side
  by side), followed vs unfollowed); :mod:`~shiftlens.lenses.attribution.placement`: position
  of the instruction;
- :mod:`~shiftlens.lenses.attribution.results` (one attribution, instruction sensitivity, and
  ``SensitivityResult.from_matrices`` for attributions computed elsewhere, checked by
  :mod:`~shiftlens.lenses.attribution.external`), :mod:`~shiftlens.lenses.attribution.derived`
  (both settings, followed, position), :mod:`~shiftlens.lenses.attribution.plots`,
  :mod:`~shiftlens.lenses.attribution.section` (the report),
  :mod:`~shiftlens.lenses.attribution.units` (``shiftlens run attribution``: one record per
  prompt and model) and :mod:`~shiftlens.lenses.attribution.cli` (``shiftlens attribute``).

Example:
    >>> from shiftlens.lenses import attribution as A
    >>> A.instruction_sensitivity.__module__
    'shiftlens.lenses.attribution.compare'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_PKG = "shiftlens.lenses.attribution"

SPEC = register_lens(LensSpec(
    name="attribution",
    title="Attribution: does the response rest on the instruction?",
    about="Gradient input->output attribution of each model's response, sparsified into the "
          "importance density of every prompt token; the instruction score sums the density of "
          "the instruction tokens (Wu et al. 2024, §3).",
    section=f"{_PKG}.section:section",
    results=(f"{_PKG}.results:AttributionResult", f"{_PKG}.results:SensitivityResult",
             f"{_PKG}.derived:ResponseSettingsResult", f"{_PKG}.derived:FollowedResult",
             f"{_PKG}.derived:PositionResult"),
    cli=f"{_PKG}.cli:add_commands",
    limits={"attribution": 12},
    requires=(f"{_PKG}.compare:instruction_sensitivity",),
    units=f"{_PKG}.units:SENSITIVITY_UNITS",
    examples=f"{_PKG}.section:examples",
    order=10,
))

#: Public name -> the module of this package that defines it (loaded on first access).
_API: dict[str, str] = {
    **dict.fromkeys(("sparsify", "importance_density", "instruction_score"), "density"),
    **dict.fromkeys(("MODES", "attribute", "attribution_matrix", "check_autograd",
                     "check_model", "locate_nonfinite", "greedy_response"), "core"),
    **dict.fromkeys(("ROLES", "POSITIONS", "ALTERNATIVES", "SETTINGS", "SENSITIVITY_COLUMNS",
                     "AttributionResult", "Attribution", "SensitivityResult"), "results"),
    **dict.fromkeys(("LAYOUTS",), "external"),
    **dict.fromkeys(("HEADLINES", "ResponseSettingsResult", "FollowedResult", "PositionResult"),
                    "derived"),
    **dict.fromkeys(("SensitivityPlan", "SensitivityRecord", "validate_sensitivity",
                     "accumulate_sensitivity", "assemble_sensitivity", "instruction_sensitivity",
                     "response_settings", "followed_by_reference", "followed_comparison"),
                    "compare"),
    **dict.fromkeys(("place_instruction", "position_sensitivity"), "placement"),
    **dict.fromkeys(("SensitivityUnits", "SENSITIVITY_UNITS"), "units"),
    **dict.fromkeys(("attribution_figure", "sensitivity_figure", "settings_figure",
                     "followed_figure", "position_figure", "instruction_score_figure"), "plots"),
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
