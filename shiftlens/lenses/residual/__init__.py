"""Lens 4, residual stream: where in depth does the shift live? (residual similarity, logit
lens, KL and cross-model patching; not in Wu et al. 2024).

Registered as ``"residual"``. The public functions load on first use.
"""

from __future__ import annotations

from typing import Any

from shiftlens.lenses.registry import LensSpec, register_lens

SPEC = register_lens(LensSpec(
    name="residual",
    title="Residual stream: where in depth does the shift live?",
    about="Cosine similarity of the two residual streams on identical tokens per layer and "
          "segment, KL(tuned || base) of the next-token distributions at the output and through "
          "the logit lens, and cross-model activation patching (not in Wu et al.).",
    section="shiftlens.report.lenses:_run_residual",
    results=("shiftlens.residual:SimilarityResult", "shiftlens.residual:OutputShiftResult",
             "shiftlens.residual:PatchingResult"),
    limits={"residual": 16, "patching": 8},
    requires=("shiftlens.residual:similarity", "shiftlens.residual:output_shift",
              "shiftlens.residual:patching"),
    order=40,
))


def __getattr__(name: str) -> Any:  # the lens's public API, loaded on first use
    import shiftlens.residual as _impl

    try:
        return getattr(_impl, name)
    except AttributeError:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}") from None
