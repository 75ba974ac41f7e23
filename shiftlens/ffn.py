"""Lens 3: feed-forward concepts (Wu et al. 2024, §5) - the public import path ``shiftlens.ffn``.

The lens lives in :mod:`shiftlens.lenses.ffn` (``core``: PCA of W_out and concept words;
``annotators`` and ``lexicon``: what a concept is about; ``compare``: ``concept_shift`` and
``rotation``; ``results``: ``ConceptShiftResult`` and ``RotationResult``; ``plots``: figures).
This module re-exports its public API; ``ConceptShift`` and ``Rotation`` are the older names of
the Result classes.

Example:
    >>> from shiftlens import ffn
    >>> ffn.Rotation is ffn.RotationResult
    True
"""

from __future__ import annotations

from shiftlens.lenses.ffn.annotators import (
    DESCRIBE_PROMPT,
    LEVEL_PROMPT,
    TASK_PROMPT,
    Annotation,
    Annotator,
    GenerativeAnnotator,
)
from shiftlens.lenses.ffn.compare import concept_shift, rotation
from shiftlens.lenses.ffn.core import (
    DEFAULT_CONCEPT_K,
    DEFAULT_ROTATION_K,
    LEVELS,
    METHODS,
    TASKS,
    USER_TASKS,
    Components,
    ConceptWords,
    concept_words,
    normalized_word_vectors,
    pca,
    principal_components,
    top_words,
    word_directions,
)
from shiftlens.lenses.ffn.lexicon import LexiconAnnotator, Lexicons, load_lexicons
from shiftlens.lenses.ffn.plots import concept_share_figure, concept_shift_figure, rotation_figure
from shiftlens.lenses.ffn.results import (
    ConceptShift,
    ConceptShiftResult,
    Rotation,
    RotationResult,
)
from shiftlens.lenses.ffn.subspaces import (
    ComponentCache,
    explained_share,
    principal_angles,
)

__all__ = [
    "TASKS",
    "USER_TASKS",
    "LEVELS",
    "DEFAULT_CONCEPT_K",
    "DEFAULT_ROTATION_K",
    "Components",
    "pca",
    "principal_components",
    "normalized_word_vectors",
    "word_directions",
    "top_words",
    "ConceptWords",
    "concept_words",
    "Annotation",
    "Annotator",
    "Lexicons",
    "load_lexicons",
    "LexiconAnnotator",
    "GenerativeAnnotator",
    "ConceptShift",
    "concept_shift",
    "principal_angles",
    "explained_share",
    "Rotation",
    "rotation",
    # added with the lens package (issue 13)
    "METHODS",
    "DESCRIBE_PROMPT",
    "TASK_PROMPT",
    "LEVEL_PROMPT",
    "ConceptShiftResult",
    "RotationResult",
    "concept_shift_figure",
    "concept_share_figure",
    "rotation_figure",
    # wave 2 (issues 14, 15, 17)
    "ComponentCache",
]
