"""Lens 1 (attribution), the 0.x import path: re-exports :mod:`shiftlens.lenses.attribution`.

Gradient input->output attribution, importance density, instruction score and the pair
analyses of Wu et al. (2024, §3) live in the package ``shiftlens.lenses.attribution``
(``density``, ``core``, ``compare``, ``placement``, ``results``, ``derived``, ``plots``); this
module keeps
``from shiftlens.attribution import ...`` and ``from shiftlens import attribution as A`` working.
``Attribution`` is the old name of :class:`AttributionResult`.

Example:
    >>> from shiftlens.attribution import importance_density, instruction_sensitivity
"""

from __future__ import annotations

from shiftlens.lenses.attribution.compare import (
    SensitivityPlan,
    SensitivityRecord,
    accumulate_sensitivity,
    assemble_sensitivity,
    followed_by_reference,
    followed_comparison,
    instruction_sensitivity,
    response_settings,
    validate_sensitivity,
)
from shiftlens.lenses.attribution.core import (
    MODES,
    attribute,
    attribution_matrix,
    check_autograd,
    check_model,
    greedy_response,
    locate_nonfinite,
)
from shiftlens.lenses.attribution.density import (
    importance_density,
    instruction_score,
    sparsify,
)
from shiftlens.lenses.attribution.derived import (
    HEADLINES,
    FollowedResult,
    PositionResult,
    ResponseSettingsResult,
)
from shiftlens.lenses.attribution.external import LAYOUTS
from shiftlens.lenses.attribution.placement import place_instruction, position_sensitivity
from shiftlens.lenses.attribution.plots import (
    attribution_figure,
    followed_figure,
    instruction_score_figure,
    position_figure,
    sensitivity_figure,
    settings_figure,
)
from shiftlens.lenses.attribution.results import (
    ALTERNATIVES,
    POSITIONS,
    ROLES,
    SETTINGS,
    Attribution,
    AttributionResult,
    SensitivityResult,
)
from shiftlens.prompts import (  # noqa: F401 - importable from here in 0.x
    BOS,
    CONTEXT,
    INSTRUCTION,
    RESPONSE,
    SEGMENTS,
    InstructionPrompt,
    TokenizedPrompt,
    tokenize_prompt,
)

__all__ = [
    "MODES",
    "POSITIONS",
    "Attribution",
    "sparsify",
    "importance_density",
    "instruction_score",
    "greedy_response",
    "attribution_matrix",
    "attribute",
    "SensitivityResult",
    "instruction_sensitivity",
    "FollowedResult",
    "followed_by_reference",
    "followed_comparison",
    "PositionResult",
    "place_instruction",
    "position_sensitivity",
    # since the move into shiftlens.lenses.attribution
    "ROLES",
    "AttributionResult",
    "check_autograd",
    "SensitivityPlan",
    "SensitivityRecord",
    "validate_sensitivity",
    "accumulate_sensitivity",
    "assemble_sensitivity",
    "attribution_figure",
    "sensitivity_figure",
    "followed_figure",
    "position_figure",
    "instruction_score_figure",
    # issues 14-16: non-finite values named, both response settings, your own matrices
    "ALTERNATIVES",
    "SETTINGS",
    "LAYOUTS",
    "HEADLINES",
    "check_model",
    "locate_nonfinite",
    "response_settings",
    "ResponseSettingsResult",
    "settings_figure",
]
