"""Lens 4, residual stream: where in depth does the shift live? (residual similarity, logit
lens, KL and cross-model patching; not in Wu et al. 2024).

Registered as ``"residual"``. The layers of the lens:

* :mod:`.core` - one model and tensors: ``cosine_per_position``, ``linear_cka``,
  ``kl_divergence``, ``logit_lens``, ``lens_logits``, ``response_logprob``, ``patched_logits``,
  ``nonfinite_at``, ``locate_nonfinite``;
* :mod:`.compare` - a pair (validate / accumulate / assemble): ``check_pair``, ``similarity``,
  ``output_shift``; :mod:`.patching` - ``patching`` (cross-model activation patching);
  :mod:`.common` - what they share (the pair check, argument checks, the non-finite error);
* :mod:`.results` - ``SimilarityResult``, ``OutputShiftResult``, ``PatchingResult``;
* :mod:`.plots` - their figures; :mod:`.section` - the report section and contract examples;
* :mod:`.deprecated` - ``greedy_response``, ``check_pair_compatible`` (0.1 names).

The public names load on first use (importing this package imports no torch); they are also
importable from ``shiftlens.residual``.

Example:
    >>> from shiftlens.lenses.residual import SPEC
    >>> SPEC.name, SPEC.limits["patching"]
    ('residual', 8)
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_PKG = "shiftlens.lenses.residual"

SPEC = register_lens(LensSpec(
    name="residual",
    title="Residual stream: where in depth does the shift live?",
    about="Cosine similarity of the two residual streams on identical tokens per layer and "
          "segment, KL(tuned || base) of the next-token distributions at the output and through "
          "the logit lens, and cross-model activation patching (not in Wu et al.).",
    section=f"{_PKG}.section:section",
    results=(f"{_PKG}.results:SimilarityResult", f"{_PKG}.results:OutputShiftResult",
             f"{_PKG}.results:PatchingResult"),
    limits={"residual": 16, "patching": 8},
    # the public API as users import it (it loads the whole lens)
    requires=("shiftlens.residual:similarity", "shiftlens.residual:output_shift",
              "shiftlens.residual:patching"),
    examples=f"{_PKG}.section:examples",
    units=f"{_PKG}.units:UNITS",
    order=40,
))

#: Where each public name lives.
_API: dict[str, str] = {
    **dict.fromkeys(("RESID_HOOKS", "COMPONENTS", "DIRECTIONS", "RESULT_SEGMENTS",
                     "cosine_per_position", "linear_cka", "kl_divergence", "logit_lens",
                     "lens_logits", "response_logprob", "patched_logits", "nonfinite_at",
                     "locate_nonfinite"), "core"),
    **dict.fromkeys(("check_pair", "similarity", "output_shift"), "compare"),
    "patching": "patching",
    **dict.fromkeys(("SimilarityResult", "OutputShiftResult", "PatchingResult"), "results"),
    **dict.fromkeys(("similarity_figure", "output_shift_figure", "patching_figure"), "plots"),
    **dict.fromkeys(("greedy_response", "check_pair_compatible"), "deprecated"),
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
