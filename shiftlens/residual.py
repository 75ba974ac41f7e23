"""Residual-stream and output shift, and where in depth the shift lives (cross-model patching).

The public import path of the residual lens; the code lives in the lens package
:mod:`shiftlens.lenses.residual` (``core``: one model and tensors; ``compare``: a pair;
``results``: the Result classes; ``plots``: the figures). Three views of a base/tuned pair that
go beyond the three lenses of Wu et al. (2024), "From Language Modeling to Instruction
Following: Understanding the Behavior Shift in LLMs after Instruction Tuning" (NAACL 2024):

* :func:`similarity` - how far the two residual streams drift apart, layer by layer and segment
  by segment (cosine and linear CKA);
* :func:`output_shift` - the logit lens and the per-token KL(tuned || base), and the tokens the
  tuned model favours;
* :func:`patching` - cross-model activation patching: the fraction of the tuned-vs-base gap in
  the response's log-probability recovered by patching one site.

Example:
    >>> from shiftlens.residual import similarity, SimilarityResult
    >>> SimilarityResult.__module__
    'shiftlens.lenses.residual.results'
"""

from __future__ import annotations

from shiftlens.lenses.residual.compare import check_pair, output_shift, similarity
from shiftlens.lenses.residual.core import (
    COMPONENTS,
    DIRECTIONS,
    RESID_HOOKS,
    RESULT_SEGMENTS,
    cosine_per_position,
    kl_divergence,
    lens_logits,
    linear_cka,
    logit_lens,
    patched_logits,
    response_logprob,
)
from shiftlens.lenses.residual.deprecated import check_pair_compatible, greedy_response
from shiftlens.lenses.residual.patching import patching
from shiftlens.lenses.residual.results import OutputShiftResult, PatchingResult, SimilarityResult

__all__ = [
    "RESID_HOOKS",
    "COMPONENTS",
    "DIRECTIONS",
    "cosine_per_position",
    "linear_cka",
    "kl_divergence",
    "logit_lens",
    "lens_logits",
    "greedy_response",
    "response_logprob",
    "patched_logits",
    "check_pair_compatible",
    "similarity",
    "output_shift",
    "patching",
    "SimilarityResult",
    "OutputShiftResult",
    "PatchingResult",
    "RESULT_SEGMENTS",
    "check_pair",
]
