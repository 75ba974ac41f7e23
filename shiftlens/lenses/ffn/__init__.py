"""Lens 3, feed-forward concepts: did the MLP knowledge rotate? (Wu et al. 2024, §5).

Registered as ``"ffn"``. Modules:

* :mod:`~shiftlens.lenses.ffn.core` - one model: PCA of W_out, components read as words;
* :mod:`~shiftlens.lenses.ffn.annotators` - the annotation protocol, the generative annotator;
* :mod:`~shiftlens.lenses.ffn.lexicon` - the offline lexicon annotator;
* :mod:`~shiftlens.lenses.ffn.compare` - a pair: ``concept_shift``, ``rotation``;
* :mod:`~shiftlens.lenses.ffn.results` - ``ConceptShiftResult``, ``RotationResult``;
* :mod:`~shiftlens.lenses.ffn.plots` - the figures; :mod:`~shiftlens.lenses.ffn.section` - the
  report section; :mod:`~shiftlens.lenses.ffn.cli` - ``shiftlens concepts``.

Importing this package imports no torch: the public names below load their module on first use
(``from shiftlens.lenses.ffn import rotation``). ``shiftlens.ffn`` re-exports the same API.

Example:
    >>> from shiftlens.lenses.ffn import SPEC
    >>> SPEC.name
    'ffn'
"""

from __future__ import annotations

from shiftlens.lenses.registry import LensSpec, lazy_api, register_lens

SPEC = register_lens(LensSpec(
    name="ffn",
    title="Feed-forward concepts: did the MLP knowledge rotate?",
    about="PCA of each layer's MLP output weights W_out, each component read as its top words "
          "and annotated with a user task and linguistic level (Wu et al. 2024, §5); rotation of "
          "the principal subspace from base to tuned as principal angles.",
    section="shiftlens.lenses.ffn.section:section",
    results=("shiftlens.lenses.ffn.results:ConceptShiftResult",
             "shiftlens.lenses.ffn.results:RotationResult"),
    cli="shiftlens.lenses.ffn.cli:add_commands",
    limits={"ffn": None},
    requires=("shiftlens.lenses.ffn.compare:concept_shift",
              "shiftlens.lenses.ffn.compare:rotation"),
    examples="shiftlens.lenses.ffn.section:examples",
    order=30,
))

#: Public name -> the module of this package that defines it (loaded on first access).
_API: dict[str, str] = {
    **dict.fromkeys(("TASKS", "USER_TASKS", "LEVELS", "DEFAULT_CONCEPT_K", "DEFAULT_ROTATION_K",
                     "METHODS", "Components", "pca", "principal_components",
                     "normalized_word_vectors", "word_directions", "top_words", "ConceptWords",
                     "concept_words"), "core"),
    **dict.fromkeys(("principal_angles", "explained_share", "ComponentCache"), "subspaces"),
    **dict.fromkeys(("Annotation", "Annotator", "GenerativeAnnotator", "DESCRIBE_PROMPT",
                     "TASK_PROMPT", "LEVEL_PROMPT"), "annotators"),
    **dict.fromkeys(("Lexicons", "load_lexicons", "LexiconAnnotator"), "lexicon"),
    **dict.fromkeys(("concept_shift", "rotation"), "compare"),
    **dict.fromkeys(("ConceptShiftResult", "RotationResult", "ConceptShift", "Rotation"),
                    "results"),
    **dict.fromkeys(("concept_shift_figure", "concept_share_figure", "rotation_figure"), "plots"),
}

__all__ = ["SPEC", *_API]


__getattr__, __dir__ = lazy_api(__name__, _API)
