"""Lens 2, attention: do heads read the instruction more, and which word pairs do their Q/K
weights encode? (Wu et al. 2024, §4).

Registered as ``"attention"``. The package's modules:

- :mod:`~shiftlens.lenses.attention.core` - one model: :func:`segment_attention`, the
  argument checks, the verb lexicons;
- :mod:`~shiftlens.lenses.attention.qk` - one model's QK circuits: :func:`qk_word_pairs`
  (tensors), :func:`word_pairs` (a model), :func:`pair_word_counts`;
- :mod:`~shiftlens.lenses.attention.scores` - one model: the full bilinear QK score of word
  pairs, :func:`qk_scores` / :func:`qk_score`, and each head's :func:`top_pairs` by it;
- :mod:`~shiftlens.lenses.attention.filters` - the relatedness filters of the word pairs;
- :mod:`~shiftlens.lenses.attention.compare` - a pair: :func:`instruction_attention`,
  :func:`verb_shift`, :func:`pair_diff` (gained / lost pairs by full score per head);
- :mod:`~shiftlens.lenses.attention.results` - :class:`InstructionAttentionResult`,
  :class:`VerbShiftResult`;
- :mod:`~shiftlens.lenses.attention.plots`, :mod:`~shiftlens.lenses.attention.section` - the
  figures and the report section.

The public functions load on first use (importing this package imports nothing heavy).

Example:
    >>> from shiftlens.lenses.attention import SPEC
    >>> SPEC.name
    'attention'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

_P = "shiftlens.lenses.attention"

SPEC = register_lens(LensSpec(
    name="attention",
    title="Attention: do heads read the instruction more?",
    about="Attention mass that response tokens put on the instruction, context and template, per "
          "layer and head, base vs tuned with a paired test per head; and the word pairs the "
          "heads' Q/K weights encode (Wu et al. 2024, §4).",
    section=f"{_P}.section:section",
    results=(f"{_P}.results:InstructionAttentionResult", f"{_P}.results:VerbShiftResult"),
    limits={"attention": 64},
    requires=(f"{_P}.compare:instruction_attention",),
    examples=f"{_P}.section:examples",
    units=f"{_P}.units:INSTRUCTION_ATTENTION_UNITS",
    order=20,
))

#: Where each public name lives (loaded on first use).
_API: dict[str, str] = {
    **dict.fromkeys(("QUERIES", "SegmentAttention", "segment_attention", "instruction_verbs",
                     "general_verbs"), "core"),
    **dict.fromkeys(("word_embeddings", "LayerPairs", "project_vocab", "qk_word_pairs",
                     "layer_word_pairs", "word_pairs", "word_pairs_layer", "model_word_pairs",
                     "pair_word_counts"), "qk"),
    **dict.fromkeys(("qk_scores", "qk_score", "top_pairs"), "scores"),
    **dict.fromkeys(("PairFilter", "BoundFilter", "CosineThreshold", "cosine_threshold",
                     "EmbeddingFilter", "VectorFilter", "FilterSpec", "resolve_filter",
                     "bind_filter", "filter_reason"), "filters"),
    **dict.fromkeys(("instruction_attention", "head_tests", "verb_shift", "pair_diff",
                     "drop_nonfinite"), "compare"),
    **dict.fromkeys(("ROLES", "InstructionAttentionResult", "VerbShiftResult"), "results"),
    **dict.fromkeys(("head_delta_figure", "verb_shift_figure"), "plots"),
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
