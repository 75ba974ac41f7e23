"""Lens 2: self-attention - attention to the instruction, and the word pairs each head encodes.

The lens lives in :mod:`shiftlens.lenses.attention` (Wu et al. 2024, §4); this module keeps
today's import path (``from shiftlens.attention import instruction_attention``) by re-exporting
its public API. See docs/attention.md.
"""

from __future__ import annotations

from shiftlens.lenses.attention.compare import (
    drop_nonfinite,
    head_tests,
    instruction_attention,
    pair_diff,
    verb_shift,
)
from shiftlens.lenses.attention.core import (
    QUERIES,
    SegmentAttention,
    general_verbs,
    instruction_verbs,
    segment_attention,
)
from shiftlens.lenses.attention.filters import (
    BoundFilter,
    CosineThreshold,
    EmbeddingFilter,
    FilterSpec,
    PairFilter,
    VectorFilter,
    bind_filter,
    cosine_threshold,
    filter_reason,
    resolve_filter,
)
from shiftlens.lenses.attention.plots import head_delta_figure, verb_shift_figure
from shiftlens.lenses.attention.qk import (
    LayerPairs,
    layer_word_pairs,
    model_word_pairs,
    pair_word_counts,
    project_vocab,
    qk_word_pairs,
    word_embeddings,
    word_pairs,
    word_pairs_layer,
)
from shiftlens.lenses.attention.results import ROLES, InstructionAttentionResult, VerbShiftResult
from shiftlens.lenses.attention.scores import qk_score, qk_scores, top_pairs

__all__ = [
    "SegmentAttention",
    "segment_attention",
    "instruction_attention",
    "InstructionAttentionResult",
    "PairFilter",
    "BoundFilter",
    "CosineThreshold",
    "cosine_threshold",
    "EmbeddingFilter",
    "VectorFilter",
    "resolve_filter",
    "word_embeddings",
    "LayerPairs",
    "project_vocab",
    "layer_word_pairs",
    "word_pairs",
    "word_pairs_layer",
    "model_word_pairs",
    "pair_word_counts",
    "instruction_verbs",
    "general_verbs",
    "verb_shift",
    "VerbShiftResult",
    # new in the lens package
    "QUERIES",
    "ROLES",
    "FilterSpec",
    "bind_filter",
    "qk_word_pairs",
    "head_tests",
    "head_delta_figure",
    "verb_shift_figure",
    # the full bilinear score (issue 15)
    "qk_scores",
    "qk_score",
    "top_pairs",
    "pair_diff",
    "filter_reason",
    "drop_nonfinite",
]
